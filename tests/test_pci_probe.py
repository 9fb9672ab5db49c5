"""The PCI platform and virtio-pci, driven by the probe guest's own driver (``probe.pci=...``,
tests/guest/pci.c) in a VM built with ``Vm(transport="pci")``.

The probe reads configuration space through both CF8/CFC and ECAM (its base from the MCFG
table), finds each virtio function's regions by walking its capabilities, runs probe.blk=test's
checks on virtio-pci disks (probe.c's driver through a register shim), and checks interrupts
without taking them blindly: the LAPIC's IRR says whether a vector is pending, a small IDT takes
it in a short ``sti`` window. Every wait in the guest has a deadline (a timeout prints a line);
the host waits on ``vm.wait`` and ``vm.expect`` with timeouts.

What the platform should look like is docs' PCI section (ECAM at 0xe0000000, devices from
00:01.0 in registration order, BAR0 a 64-bit 32 KiB BAR at 0xc0000000 + 0x8000 * (slot - 1),
its regions at fixed offsets, MSI-X with num_queues + 1 vectors).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import fnv1a64, parse_blk, parse_probe
from test_virtio_blk import SECTOR, make_image, pattern, sectors
from vmm_reference import Disk, Vm

ECAM = 0xE000_0000
BAR_BASE, BAR_SIZE = 0xC000_0000, 0x8000
VIRTIO_VENDOR = 0x1AF4
BLK_ID, RNG_ID = 0x1042, 0x1044
F_VERSION_1 = 1 << 32
S_OK, S_IOERR = 0, 1
NO_VECTOR = 0xFFFF
BDF = r"[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"


def _value(v: str):
    return int(v, 0) if re.fullmatch(r"0x[0-9a-f]+|\d+", v) else v


class PciReport:
    """The ``PROBE: pci ...`` lines.

    ``fns``: per BDF, the ``fn`` line's values (``id`` is "vvvv:dddd"; ``bar0`` the address and
    ``bar0_size`` from "addr/size"); ``caps``: per BDF, one dict per capability (``at``, ``id``,
    ``type``, ...); ``virtio``: per BDF, the ``virtio`` line's values; ``checks``: per (kind,
    BDF, check), the values of the lines that carry ``check=`` (blk, msix, intx);
    ``hostile``: per step name (the word after ``hostile``), its values (``bdf`` if it had one);
    ``lines``: every other line's values by its first word (mcfg, dsdt, absent, rng, blk ...);
    ``agree``: ``mechanisms agree`` was printed; ``done``: ``pci done`` was printed."""

    def __init__(self, log: str) -> None:
        self.fns: dict[str, dict] = {}
        self.caps: dict[str, list[dict]] = {}
        self.virtio: dict[str, dict] = {}
        self.checks: dict[tuple[str, str, str], dict] = {}
        self.hostile: dict[str, dict] = {}
        self.lines: dict[str, list[dict]] = {}
        self.agree = self.done = False
        self.mechanisms = ""
        for raw in log.splitlines():
            if not raw.startswith("PROBE: pci "):
                continue
            body = raw[len("PROBE: pci "):].strip()
            words = body.split()
            kind = words[0]
            vals = {k: _value(v) for k, v in re.findall(r"(\w+)=(\S*)", body)}
            bdf = next((w for w in words[1:3] if re.fullmatch(BDF, w)), None)
            if bdf:
                vals["bdf"] = bdf
            if body == "done":
                self.done = True
            elif kind == "mechanisms":
                self.mechanisms = words[1]
                self.agree = words[1] == "agree"
            elif kind == "fn":
                vals["id"] = words[2]
                addr, _, size = str(vals.get("bar0", "0")).partition("/")
                vals["bar0"], vals["bar0_size"] = int(addr, 0), int(size, 0) if size else 0
                self.fns[bdf] = vals
            elif kind == "cap":
                self.caps.setdefault(bdf, []).append(vals)
            elif kind == "virtio":
                self.virtio[bdf] = vals
            elif kind == "hostile":
                self.hostile[words[1]] = vals
            elif "check" in vals:
                self.checks[(kind, bdf, vals["check"])] = vals
            else:
                self.lines.setdefault(kind, []).append(vals)

    def check(self, kind: str, bdf: str, name: str) -> dict:
        return self.checks[(kind, bdf, name)]

    def cap(self, bdf: str, type_: str) -> dict:
        found = [c for c in self.caps.get(bdf, []) if c.get("type") == type_]
        assert len(found) == 1, (bdf, type_, self.caps.get(bdf))
        return found[0]


def info(device, name: str):
    return device[name] if isinstance(device, dict) else getattr(device, name)


def bdf(slot: int) -> str:
    return f"00:{slot:02x}.0"


def boot(vm_factory, probe_elf, mode: str, end: str = "", timeout: float = 120, **kwargs) -> tuple[Vm, object, str]:
    """Runs ``probe.pci=<mode>`` to its end (the probe resets the VM) and returns the log."""
    cmdline = f"probe.pci={mode}" + (f" probe.end={end}" if end else "")
    vm = vm_factory(kernel=probe_elf, cmdline=cmdline, **kwargs)
    vm.start()
    vm.expect(r"PROBE: pci done\r?\n", timeout=timeout, fail=r"PROBE: pci failed[^\n]*")
    status = vm.wait(timeout=60)
    return vm, status, vm.console_log


@pytest.fixture
def disks(tmp_path: Path) -> tuple[list[Disk], list[bytes]]:
    """A writable disk with a serial and a read-only one."""
    rw, ro = tmp_path / "rw.img", tmp_path / "ro.img"
    data = [make_image(rw, 256 * 1024), make_image(ro, 128 * 1024)]
    return [Disk(rw, serial="pci-rw"), Disk(ro, read_only=True, serial="pci-ro")], data


def check_pci_devices(vm: Vm, kinds: list[str]) -> None:
    """boot_info lists the devices on PCI, at 00:01.0, 00:02.0, ... in order."""
    devices = vm.boot_info.devices
    assert [info(d, "kind") for d in devices] == kinds
    for i, dev in enumerate(devices):
        assert info(dev, "transport") == "pci"
        assert info(dev, "bdf") == bdf(i + 1)


def test_list_shows_the_host_bridge_and_each_virtio_function(vm_factory, probe_elf, disks):
    vm, status, log = boot(vm_factory, probe_elf, "list", disks=disks[0], rng=True, transport="pci")
    assert status.reason == "reset", log
    r = PciReport(log)
    assert r.done, log
    check_pci_devices(vm, ["virtio-blk", "virtio-blk", "virtio-rng"])
    # With a PCI device the kernel gets no pci=off.
    assert "pci=off" not in parse_probe(log).cmdline

    (mcfg,) = r.lines["mcfg"]
    assert (mcfg["entries"], mcfg["base"], mcfg["segment"]) == (1, ECAM, 0), log
    assert (mcfg["bus_start"], mcfg["bus_end"]) == (0, 0), log
    (dsdt,) = r.lines["dsdt"]
    assert (dsdt["pnp0a08"], dsdt["pnp0a03"], dsdt["pnp0c02"]) == (1, 1, 1), log

    assert sorted(r.fns) == [bdf(0), bdf(1), bdf(2), bdf(3)], log
    host = r.fns[bdf(0)]
    assert (host["id"], host["class"], host["hdr"]) == ("8086:0d57", 0x060000, 0), log
    assert (host["bar0"], host["other_bars"]) == (0, 0), log
    ids = {bdf(1): BLK_ID, bdf(2): BLK_ID, bdf(3): RNG_ID}
    for slot, (b, device) in enumerate(ids.items(), start=1):
        fn, dev = r.fns[b], vm.boot_info.devices[slot - 1]
        assert fn["id"] == f"{VIRTIO_VENDOR:04x}:{device:04x}", log
        assert fn["via"] == "cf8+ecam" and fn["rev"] == 1 and fn["hdr"] == 0, log
        assert fn["subsys"] == 0x0040 << 16 | VIRTIO_VENDOR, log
        assert fn["pin"] == 1 and fn["line"] == info(dev, "gsi"), log
        assert fn["status"] & 0x10 and fn["capptr"] == 0x40, log
        assert fn["cmd"] & 0x6 == 0x6, log  # memory decode and bus master, as the VMM starts
        # BAR0: 64-bit non-prefetchable memory, 32 KiB, pre-assigned by slot; sizing the standard way.
        assert (fn["bar0"], fn["bar0_size"], fn["bar0_flags"]) == (BAR_BASE + BAR_SIZE * (slot - 1), BAR_SIZE, 0x4), log
        assert (fn["sized_lo"], fn["sized_hi"]) == (0xFFFF8004, 0xFFFFFFFF), log
        assert fn["other_bars"] == 0, log
        assert fn["msix"] == 2, log  # one queue (blk, rng) + the configuration vector

        msix = r.cap(b, "msix")
        assert (msix["at"], msix["size"], msix["table"], msix["pba"]) == (0x40, 2, 0x4000, 0x6000), log
        assert msix["ctl"] & 0xC000 == 0, log  # neither enabled nor masked yet
        regions = {t: r.cap(b, t) for t in ("common", "notify", "isr", "device")}
        assert all(c["bar"] == 0 for c in regions.values()), log
        assert (regions["common"]["offset"], regions["common"]["length"]) == (0, 0x38), log
        assert (regions["isr"]["offset"], regions["device"]["offset"]) == (0x1000, 0x2000), log
        assert (regions["notify"]["offset"], regions["notify"]["multiplier"]) == (0x3000, 4), log
        assert regions["notify"]["cap_len"] >= 20, log
        assert r.cap(b, "pcicfg")["cap_len"] >= 20, log

        v = r.virtio[b]
        assert v["ok"] == 1 and v["device"] == device, log
        assert v["features_hi"] & 1, log  # VERSION_1: a modern device
        assert (v["num_queues"], v["queue0_notify_off"], v["status"]) == (1, 0, 0), log
        assert (v["queue0_msix"], v["config_msix"]) == (NO_VECTOR, NO_VECTOR), log
        assert v["queue0_size"] > 0, log
        # The PCI configuration access capability reads the same registers as the BAR.
        assert (v["pcicfg_numq"], v["pcicfg_queue0_size"]) == (1, v["queue0_size"]), log

    assert r.agree, log  # every config byte, word and dword the same through CF8 and ECAM
    (absent,) = r.lines["absent"]
    assert (absent["bad"], absent["bus1"], absent["ext_nonzero"]) == (0, 0xFFFFFFFF, 0), log


@pytest.mark.parametrize("transport", ["mmio", None])
def test_the_mmio_transport_has_no_virtio_pci_function(vm_factory, probe_elf, tmp_path, transport):
    image = tmp_path / "disk.img"
    make_image(image, 64 * 1024)
    kwargs = {} if transport is None else {"transport": transport}  # None: the default
    vm, status, log = boot(vm_factory, probe_elf, "list", disks=[image], **kwargs)
    assert status.reason == "reset", log
    r = PciReport(log)
    assert r.done, log
    # The host bridge may be there; no virtio function is.
    assert not [f for f in r.fns.values() if f["id"].startswith(f"{VIRTIO_VENDOR:04x}:")], log
    assert r.virtio == {}, log
    assert "pci=off" in parse_probe(log).cmdline
    (dev,) = vm.boot_info.devices
    assert info(dev, "transport") == "mmio"


@pytest.mark.parametrize("image", ["probe_elf", "probe_bzimage"])  # the bzImage runs away from its link address
def test_blk_over_virtio_pci_with_msix(vm_factory, request, disks, image):
    (rw, ro), (data_rw, data_ro) = disks
    vm, status, log = boot(vm_factory, request.getfixturevalue(image), "blk", disks=[rw, ro], transport="pci")
    assert status.reason == "reset", log
    check_pci_devices(vm, ["virtio-blk", "virtio-blk"])
    r, blk = PciReport(log), parse_blk(log)
    assert r.lines["blk"][-1]["count"] == 2, log
    for i, (data, serial) in enumerate([(data_rw, "pci-rw"), (data_ro, "pci-ro")]):
        b = bdf(i + 1)
        # MSI-X: the vectors the probe gave read back; a read's completion is pending in the
        # IRR (queue vector only), taken once, then gone.
        (setup,) = [v for v in r.lines["blk"] if v.get("bdf") == b]
        assert (setup["config_vector"], setup["queue_vector"]) == (0, 1), log
        assert setup["msix_ctl"] & 0xC000 == 0x8000, log
        first = r.check("blk", b, "msix-read")
        assert (first["read"], first["fnv"]) == (S_OK, fnv1a64(data[:4096])), log
        assert (first["irr"], first["config_irr"], first["taken"], first["irr_after"]) == (1, 0, 1, 0), log
        after = r.check("blk", b, "msix-after-test")
        assert (after["irr"], after["config_irr"], after["taken"]) == (1, 0, 1), log

        # probe.blk=test's checks, as over virtio-mmio.
        dev = blk.blk[i]
        assert dev.get("ok"), log
        assert dev["capacity"] == len(data) // SECTOR and dev["serial"] == serial, log
        assert dev["get_id"] == S_OK and dev["get_id_len"] == 20 + 1, log
        assert dev["features"] & F_VERSION_1 and dev["driver_features"] & F_VERSION_1, log
        assert dev["vendor"] == VIRTIO_VENDOR and dev["blk_size"] == SECTOR and dev["seg_max"] >= 2, log
        assert dev["queue_num_max"] > 0, log
        assert dev["isr_after_ack"] == 0, log  # reading the ISR byte cleared it
        expected = fnv1a64(data[:4096])
        assert (dev["read"], dev["read_len"], dev["fnv"]) == (S_OK, 4096 + 1, expected), log
        assert (dev["read_odd"], dev["fnv_odd"]) == (S_OK, expected), log
        assert (dev["past_end"], dev["straddle"], dev["last_sector"]) == (S_IOERR, S_IOERR, S_OK), log
    w, ro_dev = blk.blk[0], blk.blk[1]
    assert (w["ro"], w["write"], w["write_len"], w["flush"], w["readback"]) == (0, S_OK, 1, S_OK, "ok"), log
    assert (w["write_zeroes"], w["zeroes_readback"], w["discard"]) == (S_OK, "ok", S_OK), log
    assert ro_dev["ro"] == 1 and ro_dev["ro_write"] == S_IOERR and ro_dev["flush"] == S_OK, log

    after = Path(rw.path).read_bytes()
    assert sectors(after, 8, 15) == b"".join(pattern(s) for s in range(8, 16))
    assert sectors(after, 16, 23) == bytes(8 * SECTOR)
    assert sectors(after, 24, 31) in (sectors(data_rw, 24, 31), bytes(8 * SECTOR))
    assert after[: 8 * SECTOR] == data_rw[: 8 * SECTOR] and after[32 * SECTOR :] == data_rw[32 * SECTOR :]
    assert Path(ro.path).read_bytes() == data_ro


def test_rng_over_virtio_pci(vm_factory, probe_elf):
    vm, status, log = boot(vm_factory, probe_elf, "rng", rng=True, transport="pci")
    assert status.reason == "reset", log
    check_pci_devices(vm, ["virtio-rng"])
    (rng,) = PciReport(log).lines["rng"]
    assert rng["bdf"] == bdf(1) and "failed" not in rng, log
    assert rng["features"] & F_VERSION_1, log
    assert (rng["len1"], rng["len2"], rng["timeouts"]) == (64, 64, 0), log
    assert (rng["nonzero"], rng["differ"]) == (1, 1), log


def test_msix_masking_pending_bits_and_vector_range(vm_factory, probe_elf, tmp_path):
    image = tmp_path / "disk.img"
    make_image(image, 64 * 1024)
    vm, status, log = boot(vm_factory, probe_elf, "msix", disks=[image], transport="pci")
    assert status.reason == "reset", log
    r = PciReport(log)
    b = bdf(1)
    c = lambda name: r.check("msix", b, name)  # noqa: E731
    assert "PROBE: pci msix done" in log, log
    assert (c("baseline")["read"], c("baseline")["irr"], c("baseline")["taken"]) == (S_OK, 1, 1), log
    # Masked (the entry, then the function): no message, the pending bit set; unmasked: the
    # message goes out and the pending bit clears.
    for what in ("entry", "function"):
        masked, unmasked = c(f"{what}-masked"), c(f"{what}-unmasked")
        assert (masked["read"], masked["irr"], masked["pba"]) == (S_OK, 0, 1), (what, log)
        assert (unmasked["irr"], unmasked["pba"], unmasked["taken"]) == (1, 0, 1), (what, log)
    # Rewritten while pending and masked: sent with the entry's data at unmask time.
    rt = c("retarget")
    assert (rt["pba"], rt["irr_old"], rt["irr_new"], rt["taken"]) == (1, 0, 1, 1), log
    # Vectors the table does not have (2 entries) read back as NO_VECTOR (written during set-up).
    vr = c("vector-range")
    assert vr["table_size"] == 2, log
    for v in ("0x2", "0x7ff", "0xfffe", "0x8000"):
        assert vr[f"queue_{v}"] == NO_VECTOR, (v, log)
    assert (vr["queue_in_range"], vr["config_beyond"], vr["config_back"]) == (1, NO_VECTOR, 0), log
    live = c("vector-live")  # while DRIVER_OK: either refused (NO_VECTOR) or kept; never the bad value
    assert live["queue_beyond"] in (NO_VECTOR, 1) and live["queue_back"] == 1, log
    # Queue 0 on NO_VECTOR: no message, nothing pending.
    nv = c("no-vector")
    assert (nv["queue_vector"], nv["read"], nv["irr"], nv["pba"]) == (NO_VECTOR, S_OK, 0, 0), log
    # MSI-X off: no message; the ISR byte says "queue" (virtio 1.2, 4.1.4.5.1).
    off = c("disabled")
    assert (off["read"], off["irr"], off["isr"] & 1) == (S_OK, 0, 1), log


def intx_report(vm_factory, probe_elf, tmp_path) -> tuple[Vm, PciReport, str]:
    image = tmp_path / "disk.img"
    make_image(image, 64 * 1024)
    vm, status, log = boot(vm_factory, probe_elf, "intx", disks=[image], transport="pci")
    assert status.reason == "reset", log
    assert "PROBE: pci intx done" in log, log
    return vm, PciReport(log), log


def test_intx_is_level_triggered_through_the_ioapic(vm_factory, probe_elf, tmp_path):
    vm, r, log = intx_report(vm_factory, probe_elf, tmp_path)
    c = lambda name: r.check("intx", bdf(1), name)  # noqa: E731
    setup = c("setup")
    assert setup["pin"] == 1 and setup["gsi"] == info(vm.boot_info.devices[0], "gsi"), log
    d = c("delivered")
    assert (d["read"], d["irr"], d["tmr"]) == (S_OK, 1, 1), log  # pending, level-triggered (TMR)
    # Taken and EOI'd without reading ISR: the line is still up, so unmasking the pin delivers again.
    lv = c("level")
    assert (lv["taken"], lv["masked"], lv["redelivered"]) == (1, 1, 1), log
    # Reading ISR says "queue", clears it and deasserts: after the EOI nothing comes back.
    isr = c("isr")
    assert (isr["isr"], isr["isr_again"]) == (1, 0), log
    assert (isr["taken"], isr["irr_after_eoi"], isr["remote_irr"]) == (1, 0, 0), log
    second = c("second")
    assert (second["read"], second["irr"], second["isr"], second["taken"]) == (S_OK, 1, 1, 1), log


def test_intx_status_bit_follows_the_isr(vm_factory, probe_elf, tmp_path):
    """virtio 1.2, 4.1.4.5.1: with MSI-X off the PCI status register's Interrupt Status bit
    is the OR of the ISR bits."""
    _, r, log = intx_report(vm_factory, probe_elf, tmp_path)
    assert r.check("intx", bdf(1), "delivered")["pci_int_status"] == 1, log
    assert r.check("intx", bdf(1), "isr")["pci_int_status"] == 0, log


def test_intx_disable_in_the_command_register_holds_the_interrupt(vm_factory, probe_elf, tmp_path):
    """PCI 3.0, 6.2.2: with Interrupt Disable (command bit 10) set the function must not
    assert INTx; the ISR byte still says why."""
    _, r, log = intx_report(vm_factory, probe_elf, tmp_path)
    dis = r.check("intx", bdf(1), "disabled")
    assert (dis["read"], dis["irr"], dis["isr"] & 1) == (S_OK, 0, 1), log


def test_hostile_config_space_bars_and_msix_leave_a_working_device(vm_factory, probe_elf, disks):
    (rw, ro), (data_rw, data_ro) = disks
    vm = vm_factory(kernel=probe_elf, cmdline="probe.pci=hostile probe.end=echo", disks=[rw, ro], rng=True,
                    transport="pci")
    vm.start()
    vm.expect(r"PROBE: pci hostile done\r?\n", timeout=600, fail=r"PROBE: pci (hostile )?failed[^\n]*")
    # Still alive and answering.
    vm.expect(r"PROBE: echo ready", timeout=60)
    assert vm.state == "running"
    vm.write("still-alive\n")
    vm.expect(r"PROBE: got still-alive", timeout=30)
    vm.write("reset\n")
    assert vm.wait(timeout=60).reason == "reset"
    log = vm.console_log
    h = PciReport(log).hostile

    assert h["baseline"]["read"] == S_OK, log
    fnv0 = fnv1a64(data_rw[:4096])
    assert h["baseline"]["fnv"] == fnv0, log
    # Sweeps through ECAM and CF8: everything that must work could be written back.
    assert h["sweep"]["restore_mismatches"] == 0, log
    assert h["sweep"]["absent_fn_id"] == 0xFFFFFFFF and h["sweep"]["absent_dev_id"] == 0xFFFFFFFF, log
    cf8 = h["cf8"]
    assert cf8["bus1"] == 0xFFFFFFFF and cf8["id_now"] == BLK_ID << 16 | VIRTIO_VENDOR, log
    assert cf8["disabled_read"] != BLK_ID << 16 | VIRTIO_VENDOR, log  # CF8 bit 31 clear: no config cycle
    # Sizing: 32 KiB, 64-bit; BARs 2..5 and the ROM unimplemented.
    s = h["bar-sizing"]
    assert (s["size"], s["sized_lo"], s["sized_hi"]) == (BAR_SIZE, 0xFFFF8004, 0xFFFFFFFF), log
    assert (s["live_lo"], s["live_hi"]) == (0xFFFF8004, 0xFFFFFFFF), log
    assert (s["bar2"], s["bar3"], s["bar4"], s["bar5"], s["rom"]) == (0, 0, 0, 0, 0), log
    assert s["bar0_now"] == BAR_BASE, log
    # Moves: the BAR takes any (aligned) address; its old place no longer answers; at a free
    # place in the window the device works there, notifications included.
    assert "bar-move" in h, log
    for line in log.splitlines():
        if line.startswith("PROBE: pci hostile bar-move"):
            m = dict(re.findall(r"(\w+)=(\S+)", line))
            target = {"other-device": BAR_BASE + BAR_SIZE, "ram-0": 0, "ecam": ECAM, "exit-device": 0xD000_0000,
                      "lapic": 0xFEE0_0000, "top": 0xFFFF_FFFF_FFFF_8000, "free": 0xC010_0000}[m["to"]]
            assert int(m["bar0"], 0) == target, line
            if "numq_home" in m:  # nothing there now: all ones (master abort) or 0
                assert int(m["numq_home"], 0) in (0, 0xFFFF), line
            if m["to"] == "free":
                assert (int(m["read"]), int(m["fnv_same"])) == (S_OK, 1), line
    assert h["other-after-overlap"]["numq"] == 1, log
    # MSI-X table abuse: the entries still hold what is written, nothing pending; a message
    # to a non-LAPIC address does not stop the request.
    t = h["msix-table"]
    assert (t["table_ok"], t["pba_after_write"], t["read_with_bad_address"]) == (1, 0, S_OK), log
    assert h["bar-sweep"]["status"] == 0, log
    # Memory decode off: the BAR does not answer, a notification goes nowhere; on again, the
    # request completes once notified.
    d = h["decode-off"]
    assert (d["used_while_off"], d["read_after"], d["numq_after"]) == (0, S_OK, 1), log
    assert d["numq_while_off"] in (0, 0xFFFF), log
    assert "pcicfg" in h, log
    # Put back: the disk works, with MSI-X.
    w = h["device-works"]
    assert (w["restore_mismatches"], w["bar0"], w["read"], w["fnv_same"]) == (0, BAR_BASE, S_OK, 1), log
    assert (w["irr"], w["taken"]) == (1, 1), log
    # The guest only read the disks.
    assert Path(rw.path).read_bytes() == data_rw
    assert Path(ro.path).read_bytes() == data_ro
