"""vm.timeline(): a boot's events and phases, and its picture.

On the probe guest (its boot markers, its kernel-style panic line, its echo mode), on a real
Debian console (tests/data/debian-boot-console.log: the Debian cloud kernel 6.1 booting the
host-root initramfs in our VMM in the nested-KVM lab, as its console recorded it), on the
Debian kernel's early log (on PVM as far as it gets) and, in the lab, on a full boot.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
from vmm_reference import ExitStatus
from vmm_reference.timeline import BEFORE_KERNEL_CLOCK, BOOT_PHASES, KINDS, Phase, Timeline, build, kernel_phases

REAL_CONSOLE = Path(__file__).parent / "data" / "debian-boot-console.log"
PHASE_NAMES = [BEFORE_KERNEL_CLOCK, *(name for name, _ in BOOT_PHASES)]
KERNEL_LINE = re.compile(rb"\[\s*(\d+\.\d+)\]")


def arrivals(vm) -> dict[int, float]:
    """The VM's recorded console line times: {offset one past the newline: seconds}."""
    return dict(vm._native.console_times()[1])


def line_end(console: bytes, text: bytes) -> int:
    """The offset one past the newline of the first line containing ``text``."""
    return console.index(b"\n", console.index(text)) + 1


def assert_well_formed(tl: Timeline) -> None:
    times = [e.time for e in tl.events]
    assert times == sorted(times), "events by time"
    assert {e.kind for e in tl.events} <= set(KINDS)
    names = [p.name for p in tl.phases]
    kernel = names[1:] if names[:1] == [BEFORE_KERNEL_CLOCK] else names
    assert kernel == PHASE_NAMES[1:len(kernel) + 1], names  # in order, from the first
    for before, after in zip(tl.phases, tl.phases[1:]):
        assert before.end == after.start, "each phase starts where the one before ended"
    for e in tl.events:
        assert (e.kernel_time is not None) == (e.kind == "printk"), e
    # Each kernel line's offset is at least the first lines' (the kernel's clock only falls
    # behind), and never shrinks along the console.
    offsets = [e.time - e.kernel_time for e in tl.of_kind("printk")]
    assert all(b >= a - 1e-9 for a, b in zip(offsets, offsets[1:])), offsets
    assert not offsets or offsets[0] == pytest.approx(tl.kernel_offset)


def test_the_probes_markers_panic_line_and_exit(vm_factory, probe_elf):
    vm = vm_factory(memory_mib=64, kernel=probe_elf, cmdline="probe.marker=7 probe.end=panic")
    vm.start()
    assert vm.wait(timeout=60).reason == "panic"
    tl = vm.timeline()
    assert_well_formed(tl)
    assert [e.kind for e in tl.events if e.kind != "printk"] == ["console", "marker", "marker", "exit"]
    markers = tl.of_kind("marker")
    assert [(e.label, e.time) for e in markers] == [(f"marker {v}", t) for v, t in vm.events]
    assert [v for v, _ in vm.events] == [7, 8]  # the port, then the MMIO register
    first = tl.of_kind("console")[0]
    assert 0 < first.time < markers[0].time  # the probe prints its report before its markers

    # The panic line: the kernel's 0.100000, placed where that line arrived (the only one).
    console = vm.serial.log_bytes
    arrived = arrivals(vm)[line_end(console, b"Kernel panic - not syncing")]
    (panic,) = tl.of_kind("printk")
    assert panic.kernel_time == 0.1 and panic.label == "Kernel panic - not syncing: probe asked for it"
    assert tl.kernel_offset == pytest.approx(arrived - 0.1)
    assert panic.time == pytest.approx(arrived)
    (end,) = tl.of_kind("exit")
    assert end.label == "exit: panic" and end == tl.events[-1]
    assert arrived <= end.time <= vm.stats()["uptime"]  # the exit was decided on that line
    # No phase lines; before the kernel's clock only if the fake clock's zero is after start().
    assert tl.phases == ((Phase(BEFORE_KERNEL_CLOCK, 0.0, tl.kernel_offset),) if tl.kernel_offset > 0 else ())
    assert "marker 7" in tl.table() and "exit: panic" in tl.table()


def test_console_times_are_when_the_bytes_arrived_not_when_they_are_read(vm_factory, probe_elf):
    vm = vm_factory(memory_mib=64, kernel=probe_elf, cmdline="probe.end=echo")
    vm.start()
    vm.expect("PROBE: echo ready\n")

    def echoed(word: str) -> tuple[float, float]:
        """Send ``word``; return the uptime before, and once its echo's time was recorded."""
        sent = vm.stats()["uptime"]
        vm.write(f"{word}\n")
        deadline = time.monotonic() + 30
        while True:
            console = vm.serial.log_bytes
            if f"PROBE: got {word}\n".encode() in console and line_end(console, f"got {word}".encode()) in arrivals(vm):
                return sent, vm.stats()["uptime"]
            assert time.monotonic() < deadline, console[-300:]
            time.sleep(0.01)

    sent_a, seen_a = echoed("alpha")
    sent_b, seen_b = echoed("bravo")
    console = vm.serial.log_bytes
    times = arrivals(vm)
    a, b = times[line_end(console, b"got alpha")], times[line_end(console, b"got bravo")]
    assert sent_a <= a <= seen_a <= sent_b <= b <= seen_b
    # Every line of the console so far has its time, in order, after the first byte.
    ends = [m.end() for m in re.finditer(rb"\n", console)]
    first_byte, lines = vm._native.console_times()
    assert [o for o, _ in lines] == ends
    assert [t for _, t in lines] == sorted(t for _, t in lines) and first_byte <= lines[0][1]
    vm.kill()
    vm.wait(timeout=10)
    (end,) = vm.timeline().of_kind("exit")
    assert end.label == "exit: killed" and end.time >= seen_b


def real_console() -> tuple[bytes, list[tuple[int, float]]]:
    """The real Debian console (CRLF, as a serial console has it) and made-up arrival times.

    The kernel's clock starts 0.35 s after start(); lines reach the host 1 ms after the kernel
    stamped them, except the first ones: stamped 0.000000 (before its clock ran) and printed
    early (0.05 s), or replayed late (0.5 s) with the rest of the buffer, as when the console
    comes up.
    """
    console = REAL_CONSOLE.read_bytes().replace(b"\n", b"\r\n")
    times, pos = [], 0
    for n, line in enumerate(console.split(b"\n")[:-1]):
        pos += len(line) + 1
        stamp = KERNEL_LINE.match(line)
        kernel = float(stamp.group(1)) if stamp else None
        if kernel == 0.0:
            at = 0.05
        elif n < 40:
            at = 0.5 + n * 1e-4
        else:
            at = (times[-1][1] if kernel is None else 0.35 + kernel + 0.001)
        times.append((pos, at))
    return console, times


def test_phase_math_on_a_real_debian_console():
    text = REAL_CONSOLE.read_text()
    assert kernel_phases(text) == [
        ("CPU, memory and timers up", 0.0, 1.059331),
        ("ACPI and core initcalls", 1.059331, 1.404153),
        ("device initcalls (serial, i8042, ...) to /init", 1.404153, 2.982124),
        ("/init to the ready line (modules, agent)", 2.982124, 4.135146),
    ]
    assert kernel_phases(text.replace("Run /init", "Ran /init"))[-1][0] == "ACPI and core initcalls"

    console, times = real_console()
    tl = build(console, 0, first_byte=0.04, line_times=times, markers=[(42, 4.6)], agent_ready=4.55,
               exit=(4.9, ExitStatus("poweroff")))
    assert_well_formed(tl)
    assert tl.kernel_offset == pytest.approx(0.351)  # neither the early 0.000000 lines nor the replayed ones
    assert [p.name for p in tl.phases] == PHASE_NAMES
    assert tl.phases[0] == Phase(BEFORE_KERNEL_CLOCK, 0.0, tl.kernel_offset)
    assert [round(p.duration, 6) for p in tl.phases[1:]] == [1.059331, 0.344822, 1.577971, 1.153022]
    assert tl.phase("/init to the ready line (modules, agent)").end == pytest.approx(4.135146 + 0.351)
    printk = tl.of_kind("printk")
    assert len(printk) == len(KERNEL_LINE.findall(console)) == 323
    arrived = dict(times)
    placed = {e.kernel_time: e.time for e in printk}
    for end, line in zip([o for o, _ in times], console.split(b"\n")):
        stamp = KERNEL_LINE.match(line)
        if stamp and float(stamp.group(1)) > 0:  # those stamped 0.000000 go at the clock's zero
            assert placed[float(stamp.group(1))] <= arrived[end] + 1e-9, "no line placed after it arrived"
    assert printk[0].label.startswith("Linux version 6.1.0-")
    (ready,) = tl.of_kind("ready")
    assert ready.time == arrived[line_end(console, b"VMM-REFERENCE-GUEST-READY")]
    assert ready.time >= tl.phases[-1].end
    assert [e.kind for e in tl.events if e.kind != "printk"] == ["console", "ready", "agent", "marker", "exit"]
    assert tl.events[-1].label == "exit: poweroff"
    # Lines the host has no time for (past the VMM's bound) are placed by the offset all the same.
    late = build(console, 0, line_times=times[:100])
    assert len(late.of_kind("printk")) == 323 and not late.of_kind("ready")
    assert Timeline.from_dict(json.loads(json.dumps(tl.to_dict()))) == tl


def test_a_kernel_clock_that_fell_behind():
    """From kernel time 1.2 on, the lines arrive a second later than before: the kernel's clock
    lost that second (ticks missed while its console printed). They are placed that much later,
    the lines before them as before, and the phase the second went in spans it."""
    console, times = real_console()
    stamps = [KERNEL_LINE.match(line) for line in console.split(b"\n")[:-1]]
    lagged = [(end, at + 1.0 if m and float(m.group(1)) >= 1.2 else at) for (end, at), m in zip(times, stamps)]
    lagged = [(end, at if m else lagged[i - 1][1]) for i, ((end, at), m) in enumerate(zip(lagged, stamps))]
    tl = build(console, 0, line_times=lagged)
    assert_well_formed(tl)
    assert tl.kernel_offset == pytest.approx(0.351)
    for e in tl.of_kind("printk"):
        assert e.time - e.kernel_time == pytest.approx(1.351 if e.kernel_time >= 1.2 else 0.351), e
    durations = [round(p.duration, 6) for p in tl.phases]
    assert durations == [0.351, 1.059331, round(0.344822 + 1.0, 6), 1.577971, 1.153022]


def test_no_kernel_clock_no_kernel_events():
    tl = build(b"[    0.000000] Linux version\r\nplain\r\n", 0, first_byte=0.1, line_times=[(23, 0.2), (30, 0.3)])
    assert tl.kernel_offset is None and tl.phases == () and [e.kind for e in tl.events] == ["console"]
    assert repr(tl) == "<Timeline 1 events, 0 phases, 0 to 0.100 s>"


@pytest.fixture
def real_timeline() -> Timeline:
    console, times = real_console()
    return build(console, 0, first_byte=0.04, line_times=times, markers=[(42, 4.6)], agent_ready=4.55,
                 exit=(4.9, ExitStatus("poweroff")), title="a Debian boot")


def test_the_plot_draws_phases_as_bars_and_events_as_ticks(real_timeline):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = real_timeline.plot()
    try:
        bars = [p for p in ax.patches if p.get_height() == 0.5]
        assert [(round(b.get_x(), 6), round(b.get_width(), 6)) for b in bars] == [
            (round(p.start, 6), round(p.duration, 6)) for p in real_timeline.phases]
        texts = {t.get_text() for t in ax.texts}
        assert {"first console byte", "ready line", "agent answers", "marker 42", "exit: poweroff"} <= texts
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == [f"{p.name}: {p.duration:.3f} s" for p in real_timeline.phases]
        assert ax.get_title() == "a Debian boot"
    finally:
        plt.close(ax.figure)
    png = real_timeline.png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 150_000
    bundle = real_timeline._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "image/png"}
    assert "<img" in bundle["text/html"] and "ACPI and core initcalls" in bundle["text/html"]
    assert bundle["text/plain"] == real_timeline.table()


def test_without_matplotlib_a_table(real_timeline, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert real_timeline.png() is None
    with pytest.raises(ImportError):
        real_timeline.plot()
    bundle = real_timeline._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    page = bundle["text/html"]
    assert "<img" not in page and "<table>" in page
    assert all(name.replace("'", "&#x27;") in page for name in PHASE_NAMES)
    assert real_timeline._repr_html_() == page
    assert "exit: poweroff" in str(real_timeline)


@pytest.mark.kernel
def test_the_debian_kernels_early_log(vm_factory, guest_assets):
    """The real kernel's own timestamps, as far as it gets on PVM (to its RAMDISK line)."""
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="console=ttyS0 reboot=k panic=-1 earlyprintk=ttyS0")
    vm.start()
    vm.expect(r"RAMDISK: \[mem [^\n]*\n", timeout=900)  # on PVM slow: a safety net, not a speed requirement
    vm.kill()
    vm.wait(timeout=30)
    tl = vm.timeline()
    assert_well_formed(tl)
    printk = tl.of_kind("printk")
    assert printk[0].label.startswith("Linux version 6.") and len(printk) > 10
    assert tl.kernel_offset > 0
    assert tl.phases == (Phase(BEFORE_KERNEL_CLOCK, 0.0, tl.kernel_offset),)  # the next ends later
    console, arrived = vm.serial.log_bytes, arrivals(vm)
    ramdisk = next(e for e in printk if e.label.startswith("RAMDISK:"))
    assert ramdisk.time <= arrived[line_end(console, b"RAMDISK: [mem")]
    first = tl.of_kind("console")[0]
    assert 0 < first.time < tl.kernel_offset + ramdisk.kernel_time
    assert tl.events[-1].label == "exit: killed"


@pytest.mark.full_boot
def test_a_full_boots_timeline_has_every_phase_and_the_agent(vm_factory, guest_assets):
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd, vsock=True)
    vm.start()
    vm.wait_ready(timeout=180)
    vm.run("devmem 0xd0001000 8 42", check=True, timeout=60)
    # A kernel line written while the host watches: placed within that window (the kernel's
    # clock may have fallen behind the host's earlier in the boot: the placement allows for it).
    before = vm.stats()["uptime"]
    vm.run("echo vmm-timeline-check > /dev/kmsg", check=True, timeout=60)
    after = vm.stats()["uptime"]
    vm.expect(r"\] vmm-timeline-check\r?\n", timeout=60)
    assert vm.stop(timeout=60).reason == "poweroff"
    tl = vm.timeline()
    (check,) = [e for e in tl.of_kind("printk") if e.label == "vmm-timeline-check"]
    arrived = arrivals(vm)[line_end(vm.serial.log_bytes, b"] vmm-timeline-check")]
    assert before <= check.time <= arrived, (before, check, arrived)
    assert check.time <= after or arrived > after, (check, after)  # unless the console came late
    print(tl)
    assert_well_formed(tl)
    assert [p.name for p in tl.phases] == PHASE_NAMES
    assert tl.phases[0].start == 0 and all(p.duration > 0 for p in tl.phases)
    (agent,) = tl.of_kind("agent")
    (ready,) = tl.of_kind("ready")
    assert tl.phases[-1].end <= ready.time  # the kernel logged /init's line before it echoed the ready line
    assert [e.label for e in tl.of_kind("marker")] == ["marker 42"]
    assert agent.time < tl.of_kind("marker")[0].time < tl.events[-1].time
    assert tl.events[-1].label == "exit: poweroff"
    png = tl.png()
    assert png is None or png.startswith(b"\x89PNG")
