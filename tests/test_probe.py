"""The probe guest, entered like Linux, reports what the VMM gave it; compare with the config."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import fnv1a64, parse_probe
from vmm_reference import Vm, VmConfigError, VmStateError

GAP_START = 0xC000_0000
MIB = 1 << 20


def expected_e820(memory_mib: int, himem_start: int = 0x100000) -> list[tuple[int, int, int]]:
    mem = memory_mib * MIB
    low = min(mem, GAP_START)
    e = [(0, 0x9FC00, 1), (0x9FC00, 0x100000 - 0x9FC00, 2), (himem_start, low - himem_start, 1)]
    if mem > GAP_START:
        e.append((1 << 32, mem - GAP_START, 1))
    return e


def boot(vm_factory, **kwargs) -> tuple[Vm, str]:
    vm = vm_factory(**kwargs)
    vm.start()
    status = vm.wait(timeout=300)  # a safety net: 64 APs taking turns on 2 loaded host cores
    return vm, status, vm.console_log


@pytest.mark.parametrize("memory_mib", [64, 256, 3072, 3584, 4096, 6144])
def test_e820_matches_memory_size(vm_factory, probe_elf, memory_mib):
    vm, status, log = boot(vm_factory, memory_mib=memory_mib, kernel=probe_elf)
    assert status.reason == "reset", log
    report = parse_probe(log)
    assert report.done
    assert report.e820 == expected_e820(memory_mib)
    assert [tuple(e) for e in vm.boot_info.e820] == report.e820
    assert sum(s for _, s, t in report.e820 if t == 1) == memory_mib * MIB - (0x100000 - 0x9FC00)


@pytest.mark.parametrize(
    "cmdline, seen",
    [
        ("", "console=ttyS0 pci=off"),
        ("reboot=k panic=-1", "reboot=k panic=-1 console=ttyS0 pci=off"),
        ("console=ttyS0,115200 quiet", "console=ttyS0,115200 quiet pci=off"),
        ("pci=noacpi console=ttyS0", "pci=noacpi console=ttyS0"),
        ("a=" + "x" * 1900, "a=" + "x" * 1900 + " console=ttyS0 pci=off"),
    ],
)
def test_cmdline_reaches_the_guest(vm_factory, probe_elf, cmdline, seen):
    vm, status, log = boot(vm_factory, kernel=probe_elf, cmdline=cmdline)
    report = parse_probe(log)
    assert report.cmdline == seen
    assert vm.boot_info.cmdline == seen
    assert report.loader == 0xFF
    assert report.zero_page == 0x7000


def test_initrd_is_loaded_high_and_intact(vm_factory, probe_elf, tmp_path):
    data = os.urandom(300_000)
    initrd = tmp_path / "initrd.bin"
    initrd.write_bytes(data)
    vm, status, log = boot(vm_factory, memory_mib=128, kernel=probe_elf, initrd=initrd)
    report = parse_probe(log)
    assert report.initrd_size == len(data)
    assert report.initrd_fnv == fnv1a64(data)
    assert report.initrd_addr % 4096 == 0
    assert report.initrd_addr + len(data) <= 128 * MIB
    assert report.initrd_addr >= 128 * MIB - len(data) - 4096
    assert vm.boot_info.initrd == (report.initrd_addr, len(data))


def test_initrd_above_3g_stays_below_the_gap(vm_factory, probe_elf, tmp_path):
    initrd = tmp_path / "initrd.bin"
    initrd.write_bytes(b"x" * 5000)
    _, _, log = boot(vm_factory, memory_mib=4096, kernel=probe_elf, initrd=initrd)
    report = parse_probe(log)
    assert report.initrd_addr + 5000 <= GAP_START
    assert report.initrd_fnv == fnv1a64(b"x" * 5000)


@pytest.mark.parametrize("himem_start", [0x100000, 0x400000, 0x1234000])
def test_bzimage_loads_at_himem_start(vm_factory, probe_bzimage, himem_start):
    vm, status, log = boot(vm_factory, memory_mib=128, kernel=probe_bzimage, himem_start=himem_start)
    assert status.reason == "reset", log
    report = parse_probe(log)
    assert report.entry == himem_start + 0x200
    assert vm.boot_info.format == "bzImage"
    assert report.e820[2] == (himem_start, 128 * MIB - himem_start, 1)


def test_cpuid_announces_kvm(vm_factory, probe_elf):
    _, _, log = boot(vm_factory, kernel=probe_elf, vcpus=2)
    report = parse_probe(log)
    assert report.hypervisor_bit == 1
    assert report.signature == "KVMKVMKVM"
    assert report.apic_id == 0
    assert report.logical == 2
    # KVM's in-kernel LAPIC emulates the TSC-deadline timer; KVM_GET_SUPPORTED_CPUID omits it.
    assert report.tsc_deadline == 1


def test_i8042_answers_linux_probe_on_the_first_poll(vm_factory, probe_elf):
    _, status, log = boot(vm_factory, kernel=probe_elf, cmdline="probe.i8042=test")
    assert status.reason == "reset", log
    k = parse_probe(log).i8042
    assert k, log
    # No byte waiting, system flag and keyboard unlocked; the CTR as firmware leaves it, and as
    # written back; both self-tests pass.
    assert (k["status"], k["ctr"], k["ctr2"], k["selftest"], k["kbdtest"]) == (0x14, 0x65, 0x74, 0x55, 0)
    # No AUX port: the loop test comes back without the AUX-data flag and the interface test fails.
    assert k["auxloop"] == 0x5A and k["auxloop_status"] & 0x20 == 0 and k["auxtest"] not in (0, 0xFA, 0xFF)
    # The keyboard acks GETID and answers an MF2 id (translated, as the CTR asks).
    assert (k["ack"], k["id"]) == (0xFA, 0xAB41)
    assert k["polls_max"] == 0, "every answer was there on the first status read"


def test_triple_fault_is_shutdown(vm_factory, probe_elf):
    _, status, log = boot(vm_factory, kernel=probe_elf, cmdline="probe.end=triple")
    assert "PROBE: triple fault" in log
    assert status.reason == "shutdown"
    assert "triple-faulted" in status.detail


def test_unknown_ports_and_mmio_are_ignored(vm_factory, probe_elf):
    vm, status, log = boot(vm_factory, kernel=probe_elf, cmdline="probe.end=unknown")
    assert status.reason == "reset", log
    assert "PROBE: unknown pci=0x0000000000000000 cmos=0x0000000000000000 mmio=0x0000000000000000" in log
    exits = vm.stats()["exits"]
    assert exits["io_unhandled"] >= 4 and exits["mmio_unhandled"] >= 2


def test_serial_input_is_echoed(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=echo")
    vm.start()
    lines = vm.serial.lines(timeout=30)
    assert "PROBE: echo ready" in list(_until(lines, "PROBE: echo ready"))
    long = "y" * 100  # longer than the UART's 64-byte FIFO
    assert vm.write(f"hello\n{long}\n") == 6 + 101
    assert next(lines) == "PROBE: got hello"
    assert next(lines) == f"PROBE: got {long}"
    vm.write(b"reset\n")
    assert vm.wait(timeout=30).reason == "reset"


def _until(lines, marker):
    for line in lines:
        yield line
        if line == marker:
            return


def test_states_kill_and_start_twice(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt")
    assert vm.state == "created"
    assert vm.exit_status is None
    with pytest.raises(VmStateError):
        vm.wait(timeout=1)
    vm.start()
    assert vm.state == "running"
    with pytest.raises(VmStateError, match="cannot start: the VM is running"):
        vm.start()
    with pytest.raises(TimeoutError, match="PROBE: halting"):
        vm.wait(timeout=0.5)
    vm.kill()
    assert vm.wait(timeout=10).reason == "killed"
    assert vm.state == "exited"
    with pytest.raises(VmStateError):
        vm.start()
    assert vm.serial.log.endswith("PROBE: halting\n")


def test_iteration_ends_when_the_vm_exits(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf)
    vm.start()
    lines = list(vm.serial)
    assert lines[0] == "PROBE: hello" and lines[-1] == "PROBE: reset"
    assert list(vm.serial) == lines  # a second iteration reads it all again


def test_raw_reads_are_incremental_and_lossless(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf)
    vm.start()
    chunks = []
    while True:
        data = vm.serial.read(timeout=5)
        if not data and vm.serial.at_eof:
            break
        chunks.append(data)
    assert b"".join(chunks) == vm.serial.log_bytes


def test_console_flood_keeps_memory_bounded(vm_factory, probe_elf):
    limit = 4096
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=flood", console_limit=limit)
    vm.start()
    deadline = time.monotonic() + 60
    while vm.stats()["console_bytes"] <= 4 * limit and time.monotonic() < deadline:
        vm.serial.read(timeout=1)
    vm.kill()
    vm.wait(timeout=10)
    assert vm.stats()["console_bytes"] > 4 * limit
    assert len(vm.serial.log_bytes) == limit
    # The window holds the newest output: whole flood lines between a cut first line and a
    # last line the kill may have cut short.
    lines = vm.serial.log.splitlines()
    assert all(re.fullmatch(r"PROBE: flood \d+", line) for line in lines[1:-1]), lines[-3:]
    last = lines[-1]
    assert re.fullmatch(r"PROBE: flood \d*", last) or "PROBE: flood ".startswith(last), last


def test_several_vms_run_at_once(probe_elf):
    results = {}

    def run(i: int) -> None:
        with Vm(memory_mib=64, kernel=probe_elf, cmdline=f"id={i}") as vm:
            vm.start()
            status = vm.wait(timeout=60)
            results[i] = (status.reason, parse_probe(vm.console_log).cmdline)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: ("reset", f"id={i} console=ttyS0 pci=off") for i in range(6)}


def test_context_manager_kills_on_exception(probe_elf):
    with pytest.raises(RuntimeError):
        with Vm(kernel=probe_elf, cmdline="probe.end=spin") as vm:
            vm.start()
            raise RuntimeError("boom")
    assert vm.state == "exited"
    assert vm.exit_status.reason == "killed"


def test_probe_files_exist(probe_elf, probe_bzimage):
    assert Path(probe_elf).read_bytes()[:4] == b"\x7fELF"
    assert Path(probe_bzimage).read_bytes()[0x202:0x206] == b"HdrS"


@pytest.mark.parametrize("code", [0, 3, 255, 4000000000])
def test_exit_device_returns_the_guest_code(vm_factory, probe_elf, code):
    _, status, log = boot(vm_factory, kernel=probe_elf, cmdline=f"probe.exit={code}")
    assert (status.reason, status.code) == ("poweroff", code), log
    assert status.ok == (code == 0)


def test_kernel_panic_is_detected(vm_factory, probe_elf):
    _, status, log = boot(vm_factory, kernel=probe_elf, cmdline="probe.end=panic")
    assert status.reason == "panic"
    assert status.detail == "Kernel panic - not syncing: probe asked for it"


def test_boot_markers_are_timestamped(vm_factory, probe_elf):
    vm, status, _ = boot(vm_factory, kernel=probe_elf, cmdline="probe.marker=123")
    [(port_value, port_seconds), (mmio_value, mmio_seconds)] = vm.events
    assert (port_value, mmio_value) == (123, 124)  # port 0x440, then MMIO 0xd0001000
    assert 0 < port_seconds <= mmio_seconds < vm.stats()["uptime"]


def test_stats_are_cheap_and_count_exits(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=spin")
    vm.start()
    vm.expect("spinning")
    t0 = time.monotonic()
    for _ in range(1000):
        s = vm.stats()
    assert time.monotonic() - t0 < 1.0
    assert s["exits"]["io"] > 500 and s["console_bytes"] > 400 and s["rss_bytes"] > 0


def test_pause_really_stops_the_guest(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=flood", vcpus=2)
    with pytest.raises(VmStateError, match="cannot pause: the VM is created"):
        vm.pause()
    vm.start()
    vm.expect("flood 100\n")
    with pytest.raises(VmStateError, match="cannot resume: the VM is running"):
        vm.resume()
    vm.pause()
    assert vm.state == "paused"
    with pytest.raises(VmStateError, match="cannot pause: the VM is paused"):
        vm.pause()
    before = vm.stats()["console_bytes"]
    time.sleep(0.3)
    assert vm.stats()["console_bytes"] == before
    vm.resume()
    assert vm.state == "running"
    last = int(re.findall(r"flood (\d+)\n", vm.console_log)[-1])
    vm.expect(f"flood {last + 50}\n")
    assert vm.stats()["console_bytes"] > before
    vm.pause()
    vm.kill()
    assert vm.wait(timeout=10).reason == "killed"
    with pytest.raises(VmStateError, match="cannot resume: the VM is exited"):
        vm.resume()


def test_acpi_soft_off_is_poweroff(vm_factory, probe_elf):
    _, status, log = boot(vm_factory, kernel=probe_elf, cmdline="probe.end=acpi-off", acpi=True)
    assert "PROBE: acpi soft-off" in log
    assert (status.reason, status.code) == ("poweroff", None)


def test_acpi_tables_are_in_reserved_memory(vm_factory, probe_elf):
    vm, _, log = boot(vm_factory, kernel=probe_elf, vcpus=4, acpi=True)
    reserved = [(a, a + s) for a, s, t in parse_probe(log).e820 if t == 2]
    assert any(a <= 0xE0000 < e for a, e in reserved)


def test_without_acpi_the_pm1_port_is_not_there(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=acpi-off", acpi=False)
    vm.start()
    vm.expect("acpi soft-off")
    with pytest.raises(TimeoutError):
        vm.wait(timeout=0.5)
    assert vm.stats()["exits"]["io_unhandled"] >= 1


def started_aps(log: str) -> tuple[list[int], list[int], str]:
    """(APIC ids the table listed, APIC ids of the APs that reported, the summary line)."""
    listed = re.search(r"PROBE: cpus source=\w+ count=(\d+) apic_ids=([\d,]+)", log)
    assert listed, log
    aps = sorted(int(i) for i in re.findall(r"PROBE: ap apic_id=(\d+)", log))
    summary = re.search(r"PROBE: smp started=\d+ expected=\d+", log)
    assert summary, log
    return [int(i) for i in listed.group(2).split(",")], aps, summary.group(0)


@pytest.mark.parametrize("vcpus", [1, 2, 4, 8, 64])
def test_aps_start_from_the_madt_and_report_their_apic_ids(vm_factory, probe_elf, vcpus):
    _, status, log = boot(vm_factory, kernel=probe_elf, vcpus=vcpus, cmdline="probe.smp=madt")
    assert status.reason == "reset", log
    listed, aps, summary = started_aps(log)
    assert listed == list(range(vcpus))
    assert aps == list(range(1, vcpus))
    assert summary == f"PROBE: smp started={vcpus - 1} expected={vcpus - 1}"


@pytest.mark.parametrize("acpi", [True, False])
def test_aps_start_from_the_mp_table_with_or_without_acpi(vm_factory, probe_elf, acpi):
    _, status, log = boot(vm_factory, kernel=probe_elf, vcpus=4, acpi=acpi, cmdline="probe.smp=mptable")
    listed, aps, summary = started_aps(log)
    assert (listed, aps) == ([0, 1, 2, 3], [1, 2, 3]), log
    assert summary == "PROBE: smp started=3 expected=3"


def test_without_acpi_there_is_no_madt(vm_factory, probe_elf):
    _, status, log = boot(vm_factory, kernel=probe_elf, vcpus=2, acpi=False, cmdline="probe.smp=madt")
    assert "PROBE: cpus source=madt count=none" in log
    assert "ap apic_id" not in log


def test_power_button_needs_acpi_and_a_running_vm(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=spin")
    with pytest.raises(VmStateError, match="cannot press_power_button: the VM is created"):
        vm.press_power_button()
    vm.start()
    vm.expect("PROBE: spinning")
    # The probe has no ACPI driver: it never enables the event, so the press goes unseen.
    assert vm.press_power_button() is False
    no_acpi = vm_factory(kernel=probe_elf, cmdline="probe.end=spin", acpi=False)
    no_acpi.start()
    with pytest.raises(VmConfigError, match=r"invalid acpi=False.*acpi=True \(the default\)"):
        no_acpi.press_power_button()


@pytest.mark.parametrize("acpi", [True, False])
def test_stop_kills_a_guest_that_does_not_listen_for_the_power_button(vm_factory, probe_elf, acpi):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=spin", acpi=acpi)
    vm.start()
    vm.expect("PROBE: spinning")
    started = time.monotonic()
    assert vm.stop(timeout=30).reason == "killed"
    assert time.monotonic() - started < 5  # at once: nobody listens, no need to wait 30 s
    assert vm.stop().reason == "killed"  # exited: keeps its status


def test_stop_powers_off_a_guest_that_listens_for_the_power_button(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=power", memory_mib=64)
    vm.start()
    vm.expect("PROBE: power waiting 2\n")  # PWRBTN_EN is set before the first line
    started = time.monotonic()
    status = vm.stop(timeout=30)
    assert (status.reason, status.code) == ("poweroff", None), vm.console_log[-500:]
    assert time.monotonic() - started < 10  # the guest answered: stop did not wait out its timeout
    assert "PROBE: power button\n" in vm.console_log
    assert vm.state == "exited"


def test_stop_on_a_paused_or_unstarted_vm(vm_factory, probe_elf):
    unstarted = vm_factory(kernel=probe_elf)
    assert unstarted.stop().reason == "killed"
    assert unstarted.state == "exited"
    paused = vm_factory(kernel=probe_elf, cmdline="probe.end=spin")
    paused.start()
    paused.expect("PROBE: spinning")
    paused.pause()
    assert paused.stop(timeout=1).reason == "killed"
    with pytest.raises(VmConfigError, match="timeout=-1"):
        paused.stop(timeout=-1)
