"""virtio-blk over virtio-mmio, driven by the probe guest's own driver (``probe.blk=...``).

The probe finds each device in the DSDT (``_HID "LNRO0005"``, its page and GSI in ``_CRS``),
initialises it, and reports what the device did; the tests compare that with the host's view
of the image files.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from conftest import BlkReport, fnv1a64, parse_blk
from vmm_reference import Disk, Vm

SECTOR = 512
MAGIC = 0x74726976
F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH = 1 << 2, 1 << 5, 1 << 6, 1 << 9
F_DISCARD, F_WRITE_ZEROES, F_EVENT_IDX, F_VERSION_1 = 1 << 13, 1 << 14, 1 << 29, 1 << 32
S_OK, S_IOERR, S_UNSUPP, UNTOUCHED = 0, 1, 2, 255
NEEDS_RESET, DRIVER_OK = 0x40, 0x4


def make_image(path: Path, size: int) -> bytes:
    """A random image with recognisable first bytes; returns its content."""
    data = bytearray(os.urandom(size))
    marker = b"vmm-reference probe disk " + path.name.encode()
    data[: len(marker)] = marker
    path.write_bytes(data)
    return bytes(data)


def pattern(sector: int) -> bytes:
    """What probe.blk=test writes to sectors 8..15: byte i of sector s is (s * 31 + i) & 0xff."""
    return bytes((sector * 31 + i) & 0xFF for i in range(SECTOR))


def sectors(data: bytes, first: int, last: int) -> bytes:
    """Sectors first..last (inclusive) of an image."""
    return data[first * SECTOR : (last + 1) * SECTOR]


def boot(vm_factory, probe_elf, disks, cmdline="probe.blk=test", **kwargs) -> tuple[Vm, object, str, BlkReport]:
    vm = vm_factory(kernel=probe_elf, cmdline=cmdline, disks=disks, **kwargs)
    vm.start()
    status = vm.wait(timeout=120)
    log = vm.console_log
    return vm, status, log, parse_blk(log)


def info(device, name: str):
    """A field of one of boot_info.devices (an object or a dict)."""
    return device[name] if isinstance(device, dict) else getattr(device, name)


def check_identity(report: BlkReport, vm: Vm, log: str) -> None:
    """The probe found the devices boot_info lists, in the same order, at the same places."""
    devices = vm.boot_info.devices
    assert report.source == "dsdt", log
    assert report.count == len(devices), log
    bases = set()
    for found, dev in zip(report.virtio, devices):
        assert info(dev, "kind") == "virtio-blk"
        assert (found["base"], found["len"], found["gsi"]) == (
            info(dev, "mmio_base"),
            info(dev, "mmio_len"),
            info(dev, "gsi"),
        ), log
        assert (found["magic"], found["version"], found["device_id"]) == (MAGIC, 2, 2), log
        assert found["len"] >= 0x200 and found["base"] % 0x1000 == 0
        bases.add(found["base"])
    assert len(bases) == len(devices)


def check_common(dev: dict, data: bytes, serial: str, log: str) -> None:
    """What every disk reports, read-only or not."""
    assert dev.get("ok"), log
    assert dev["capacity"] == len(data) // SECTOR
    assert dev["serial"] == serial
    assert dev["get_id"] == S_OK and dev["get_id_len"] == 20 + 1
    f = dev["features"]
    assert f & F_VERSION_1 and f & F_SEG_MAX and f & F_BLK_SIZE and f & F_FLUSH, hex(f)
    assert dev["driver_features"] & F_VERSION_1 and not dev["driver_features"] & F_EVENT_IDX
    assert dev["queue_num_max"] == 256
    assert dev["blk_size"] == SECTOR and dev["seg_max"] >= 2
    # The request was used: the used-ring interrupt bit is up until acknowledged.
    assert dev["isr"] & 1 and dev["isr_after_ack"] == 0
    # Sectors 0..7 in three scattered segments, sector-sized or not: the host's bytes.
    expected = fnv1a64(data[:4096])
    assert (dev["read"], dev["read_len"], dev["fnv"]) == (S_OK, 4096 + 1, expected), log
    assert (dev["read_odd"], dev["fnv_odd"]) == (S_OK, expected), log
    # Beyond the end: refused; the last whole sector: fine.
    assert (dev["past_end"], dev["straddle"], dev["last_sector"]) == (S_IOERR, S_IOERR, S_OK), log


@pytest.mark.parametrize("size", [1 << 20, 64 * 1024 + 300])
def test_writable_disk_reads_writes_flushes_and_zeroes(vm_factory, probe_elf, tmp_path, size):
    image = tmp_path / "disk.img"
    data = make_image(image, size)
    vm, status, log, report = boot(vm_factory, probe_elf, [Disk(image, serial="probe-rw-1")])
    assert status.reason == "reset", log
    check_identity(report, vm, log)
    dev = report.blk[0]
    check_common(dev, data, "probe-rw-1", log)
    assert dev["ro"] == 0 and not dev["features"] & F_RO
    assert dev["features"] & F_DISCARD and dev["features"] & F_WRITE_ZEROES
    assert (dev["write"], dev["write_len"], dev["flush"], dev["readback"]) == (S_OK, 1, S_OK, "ok"), log
    assert (dev["write_zeroes"], dev["zeroes_readback"], dev["discard"]) == (S_OK, "ok", S_OK), log

    after = image.read_bytes()
    assert len(after) == size  # neither grown nor cut (the partial last sector stays)
    assert sectors(after, 8, 15) == b"".join(pattern(s) for s in range(8, 16))
    assert sectors(after, 16, 23) == bytes(8 * SECTOR)
    # A discarded range reads back as it was or as zeroes (a punched hole), nothing else.
    assert sectors(after, 24, 31) in (sectors(data, 24, 31), bytes(8 * SECTOR))
    assert after[: 8 * SECTOR] == data[: 8 * SECTOR]
    assert after[32 * SECTOR :] == data[32 * SECTOR :]


def test_read_only_disk_refuses_writes_and_stays_unchanged(vm_factory, probe_elf, tmp_path):
    image = tmp_path / "ro.img"
    data = make_image(image, 256 * 1024)
    mtime = image.stat().st_mtime_ns
    vm, status, log, report = boot(vm_factory, probe_elf, [Disk(image, read_only=True, serial="ro")])
    assert status.reason == "reset", log
    check_identity(report, vm, log)
    assert info(vm.boot_info.devices[0], "read_only") is True
    dev = report.blk[0]
    check_common(dev, data, "ro", log)
    assert dev["ro"] == 1 and dev["features"] & F_RO
    assert not dev["features"] & (F_DISCARD | F_WRITE_ZEROES)
    assert dev["ro_write"] == S_IOERR, log
    assert dev["ro_write_zeroes"] in (S_IOERR, S_UNSUPP) and dev["ro_discard"] in (S_IOERR, S_UNSUPP), log
    assert dev["flush"] == S_OK, log
    assert image.read_bytes() == data
    assert image.stat().st_mtime_ns == mtime


def test_two_disks_appear_in_order(vm_factory, probe_elf, tmp_path):
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    data1 = make_image(first, 128 * 1024)
    data2 = make_image(second, 192 * 1024)
    vm, status, log, report = boot(
        vm_factory, probe_elf, [str(first), Disk(second, read_only=True, serial="second-disk")]
    )
    assert status.reason == "reset", log
    check_identity(report, vm, log)
    devices = vm.boot_info.devices
    assert [info(d, "path") for d in devices] == [str(first), str(second)]
    assert [info(d, "read_only") for d in devices] == [False, True]
    assert info(devices[0], "mmio_base") < info(devices[1], "mmio_base")
    assert sorted(report.blk) == [0, 1]
    assert report.blk[0]["capacity"] == len(data1) // SECTOR
    assert report.blk[1]["capacity"] == len(data2) // SECTOR
    assert report.blk[0]["fnv"] == fnv1a64(data1[:4096])
    assert report.blk[1]["fnv"] == fnv1a64(data2[:4096])
    assert (report.blk[0]["ro"], report.blk[1]["ro"]) == (0, 1)
    # A plain path: writable, and without a serial GET_ID answers 20 NULs.
    assert (report.blk[0]["get_id"], report.blk[0]["serial"]) == (S_OK, "")
    assert report.blk[1]["serial"] == "second-disk"
    assert report.blk[0].get("ok") and report.blk[1].get("ok"), log
    assert sectors(first.read_bytes(), 8, 15) == b"".join(pattern(s) for s in range(8, 16))
    assert second.read_bytes() == data2


def test_long_serial_is_cut_to_twenty_bytes_without_a_nul(vm_factory, probe_elf, tmp_path):
    image = tmp_path / "disk.img"
    make_image(image, 64 * 1024)
    _, status, log, report = boot(vm_factory, probe_elf, [Disk(image, read_only=True, serial="S" * 20)])
    assert status.reason == "reset", log
    assert report.blk[0]["serial"] == "S" * 20


def test_without_disks_the_probe_finds_no_virtio_device(vm_factory, probe_elf):
    vm, status, log, report = boot(vm_factory, probe_elf, [])
    assert status.reason == "reset", log
    assert (report.count, report.source) == (0, "none")
    assert vm.boot_info.devices == []


# What each hostile request must get. Status bytes: 0 OK, 1 IOERR, 2 UNSUPP, 255: the device
# did not write the guest's status byte (the chain had no proper place for it).
BAD_STATUS = {
    "data_outside_ram": S_IOERR,
    "data_in_mmio_gap": S_IOERR,
    "short_header": S_IOERR,
    "header_writable": S_IOERR,
    "in_readonly_data": S_IOERR,
    "out_writable_data": S_IOERR,
    "huge_len_sectors": S_IOERR,
    "odd_len": S_IOERR,
    "sector_overflow": S_IOERR,
    "unknown_type": S_UNSUPP,
    # The device cannot know which way an unknown request's buffers go: the type is what is
    # wrong, and virtio 1.2 (5.2.6) has UNSUPP for that (QEMU answers UNSUPP as well).
    "unknown_type_writable_data": S_UNSUPP,
    "get_id_short": S_OK,
    "discard_past_end": S_IOERR,
    "discard_unmap_flag": S_UNSUPP,  # virtio 1.2, 5.2.6.2: the device MUST answer UNSUPP
    "write_zeroes_unknown_flag": S_UNSUPP,
    "write_zeroes_past_end": S_IOERR,
    "discard_overflow": S_IOERR,
    "discard_short_segment": S_IOERR,
}
# Chains with nowhere to put a status byte: used with length 0 (or not used at all). A chain
# longer than 2^32 bytes (huge_len) may be cut where it overflows, status descriptor and all.
BAD_NO_STATUS = ["header_only", "status_readonly", "status_len0"]
BAD_STATUS_OR_NONE = {"huge_len": S_IOERR}
# Chains the device cannot follow: it must survive and never write outside the buffers.
BAD_LOOPS = ["loop", "next_out_of_range"]
# Queue set-ups the device must not go live with.
BAD_QUEUES = [
    "queue_too_big",
    "queue_not_pow2",
    "queue_size0",
    "queue_desc_outside_ram",
    "queue_used_outside_ram",
    "queue_avail_in_mmio_gap",
    "queue_desc_misaligned",
]


def test_hostile_requests_do_not_hurt_the_vmm(vm_factory, probe_elf, tmp_path):
    image = tmp_path / "bad.img"
    data = make_image(image, 256 * 1024)
    vm, status, log, report = boot(vm_factory, probe_elf, [image], cmdline="probe.blk=bad")
    assert status.reason == "reset", log
    assert "reinit_failed" not in log and "blk bad failed" not in log, log
    assert report.survived == {"read": S_OK, "fnv": fnv1a64(data[:4096]), "dev_status": 0xF}, log

    for name, expected in BAD_STATUS.items():
        case = report.bad[name]
        assert (case["used"], case["status"]) == (1, expected), (name, case)
        assert case["len"] == (1 + 4 if name == "get_id_short" else 1), (name, case)
    for name in BAD_NO_STATUS:
        case = report.bad[name]
        assert case["status"] == UNTOUCHED and (not case["used"] or case["len"] == 0), (name, case)
    for name, expected in BAD_STATUS_OR_NONE.items():
        case = report.bad[name]
        assert (case["status"], case["len"]) in ((expected, 1), (UNTOUCHED, 0)), (name, case)
    for name in BAD_LOOPS:
        assert name in report.bad, log
    # Nothing the device wrote went beyond what the chain let it write.
    for name, case in report.bad.items():
        assert case.get("over", 0) == 0, (name, case)

    # The avail index jumping by 1000, or naming a head beyond the queue: the device stops and
    # asks for a reset instead of serving garbage.
    for name in ("avail_jump", "avail_head_out_of_range"):
        case = report.bad[name]
        assert case["dev_status"] & NEEDS_RESET, (name, case)
        assert case["isr"] & 2, (name, case)  # the configuration-change interrupt says so
    for name in BAD_QUEUES:
        s = report.bad[name]["dev_status"]
        assert not s & DRIVER_OK and s & NEEDS_RESET, (name, hex(s))
    assert report.bad["features_unoffered"]["dev_status"] == 0x3  # FEATURES_OK did not stick
    assert report.bad["features_unoffered"]["driver_ok_without_features_ok"] == 0x3
    assert report.bad["notify_bad_queue"]["read"] == S_OK

    # Refused requests wrote nothing: only rejected writes went at the image.
    assert image.read_bytes() == data


def test_dsdt_describes_the_legacy_devices_too(vm_factory, probe_elf, tmp_path):
    """COM1 and the i8042 are in the DSDT beside the disks, which the probe tells apart."""
    images = [tmp_path / "a.img", tmp_path / "b.img"]
    for image in images:
        make_image(image, 64 * 1024)
    vm, status, log, report = boot(vm_factory, probe_elf, images, cmdline="probe.blk=list")
    assert status.reason == "reset", log
    check_identity(report, vm, log)
    assert report.count == 2 and not report.blk
    assert report.dsdt == {"com1": 1, "i8042": 1}, log


@pytest.mark.parametrize(
    "kind, bs, n, qd",
    [("blkread", 4096, 300, 1), ("blkread", 1 << 20, 6, 1), ("blkrand", 4096, 300, 4), ("blkwrite", 65536, 80, 2)],
)
def test_blk_bench_runs_without_errors(vm_factory, probe_elf, tmp_path, kind, bs, n, qd):
    image = tmp_path / "bench.img"
    data = make_image(image, 4 << 20)
    cmdline = f"probe.bench={kind} probe.n={n} probe.bs={bs} probe.qd={qd}"
    vm, status, log, _ = boot(vm_factory, probe_elf, [image], cmdline=cmdline)
    assert status.reason == "reset", log
    m = re.search(rf"PROBE: bench {kind} n=(\d+) tsc=(\d+) bs=(\d+) qd=(\d+) errors=(\d+)", log)
    assert m, log
    assert (int(m[1]), int(m[3]), int(m[5])) == (n, bs, 0), log
    assert int(m[2]) > 0 and 1 <= int(m[4]) <= qd
    after = image.read_bytes()
    if kind == "blkwrite":
        # Sequential writes wrapping at the end: every chunk holds the slot's buffer, byte i
        # of the (slot * bs + i)-th byte being (slot * bs + i) * 7.
        chunks = len(data) // bs
        written = {bytes(((s * bs + i) * 7) & 0xFF for i in range(bs)) for s in range(qd)}
        assert all(after[c * bs : (c + 1) * bs] in written for c in range(min(n, chunks)))
    else:
        assert after == data


def test_without_acpi_the_command_line_names_the_devices(vm_factory, probe_elf, tmp_path):
    """acpi=False: no DSDT, so the VMM adds virtio_mmio.device= for each disk, as Linux parses it."""
    image = tmp_path / "a.img"
    data = make_image(image, 64 * 1024)
    vm, status, log, report = boot(vm_factory, probe_elf, [image], acpi=False)
    assert status.reason == "reset", log
    assert "virtio_mmio.device=4K@0xd0010000:5" in vm.boot_info.cmdline
    assert report.source == "cmdline", log
    [dev] = report.blk.values()
    assert dev["fnv"] == fnv1a64(data[:4096]) and dev.get("ok"), log


def test_kill_during_a_request_storm(vm_factory, probe_elf, tmp_path):
    """A guest that never stops submitting requests cannot keep the VM from being killed."""
    image = tmp_path / "storm.img"
    make_image(image, 1 << 20)
    vm = vm_factory(kernel=probe_elf, disks=[image], cmdline="probe.bench=blkid probe.n=1000000000 probe.qd=8")
    vm.start()
    # Wait until the disk is really busy, then kill.
    end = time.monotonic() + 30
    while vm.stats()["disk_requests"][0] < 200:
        assert time.monotonic() < end, vm.console_log
        assert vm.state == "running", vm.console_log
        time.sleep(0.05)
    vm.kill()
    assert vm.wait(timeout=10).reason == "killed"
