"""Benchmark case 8: disks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Callable

from common import MIB, PROBE, QEMU, Row, at_least_peer, qemu_probe
from vmm_reference import Vm

DISK_MIB = 64


# (kind, request size, requests, requests in flight, unit, what).
DISK_CASES = [
    ("blkread", 1 << 20, 256, 1, "MB/s", "sequential read, 1 MiB requests"),
    ("blkwrite", 1 << 20, 128, 1, "MB/s", "sequential write, 1 MiB requests"),
    ("blkrand", 4096, 4000, 8, "IOPS", "4 KiB random reads, 8 in flight"),
]


# The virtio-pci rows: each against QEMU's virtio-blk-pci and against our own virtio-mmio.
PCI_DISK_CASES = [
    ("blkrand", 4096, 4000, 1, "IOPS", "4 KiB random reads, 1 in flight"),
    ("blkrand", 4096, 8000, 32, "IOPS", "4 KiB random reads, 32 in flight"),
    ("blkread", 1 << 20, 256, 1, "MB/s", "sequential read, 1 MiB requests"),
    ("blkwrite", 1 << 20, 128, 1, "MB/s", "sequential write, 1 MiB requests"),
]


# QEMU's microvm with its PCIe host bridge (GPEX: ECAM at 0xe0000000, 32-bit window
# 0xc0000000..0xe0000000, both only in the DSDT) and no firmware: the probe assigns the BARs.
QEMU_PCIE = [a if a != "microvm" else "microvm,pcie=on" for a in QEMU]


def disk_image(path: Path) -> Path:
    """A raw image of DISK_MIB MiB of random bytes (so no VMM can skip reading holes)."""
    with path.open("wb") as f:
        for _ in range(DISK_MIB):
            f.write(os.urandom(MIB))
    return path


def disk_rate(text: str, unit: str, hz: float) -> float:
    """MB/s or IOPS from ``PROBE: bench KIND n=N tsc=T bs=B qd=Q errors=E``."""
    m = re.search(r"PROBE: bench \w+ n=(\d+) tsc=(\d+) bs=(\d+) qd=\d+ errors=(\d+)", text)
    if not m or int(m.group(4)):
        raise RuntimeError(f"no clean disk bench line in the guest's output: {text[-500:]!r}")
    n, seconds, bs = int(m.group(1)), int(m.group(2)) / hz, int(m.group(3))
    return n / seconds if unit == "IOPS" else n * bs / seconds / 1e6


def disk_cmdline(kind: str, bs: int, n: int, qd: int) -> str:
    return f"probe.bench={kind} probe.n={n} probe.bs={bs} probe.qd={qd}"


def disk_ours(image: Path, case: tuple[str, int, int, int, str, str], hz: float) -> float:
    kind, bs, n, qd, unit, _ = case
    with Vm(memory_mib=64, kernel=PROBE, cmdline=disk_cmdline(kind, bs, n, qd), disks=[image]) as vm:
        vm.start()
        vm.wait(timeout=300)
        return disk_rate(vm.console_log, unit, hz)


def polled_cmdline(case: tuple[str, int, int, int, str, str], transport: str) -> str:
    """The transport comparisons' command line: the probe's polled driver asks for no
    interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT; on PCI also MSI-X on with no vector for the queue,
    as Linux sets up its polled queues), so neither transport nor VMM pays for unused ones."""
    kind, bs, n, qd, _, _ = case
    return f"{disk_cmdline(kind, bs, n, qd)} probe.nointr=1 probe.transport={transport}"


def disk_ours_on(image: Path, case: tuple[str, int, int, int, str, str], hz: float, transport: str) -> float:
    """Ours on ``transport`` ("pci" or "mmio"), polled as polled_cmdline says."""
    with Vm(memory_mib=64, kernel=PROBE, cmdline=polled_cmdline(case, transport), disks=[image],
            transport=transport) as vm:
        vm.start()
        vm.wait(timeout=300)
        return disk_rate(vm.console_log, case[4], hz)


def disk_qemu(image: Path, case: tuple[str, int, int, int, str, str], hz: float) -> float:
    kind, bs, n, qd, unit, _ = case
    # virtio-mmio 1.x (microvm defaults to the legacy layout), the image through the page
    # cache like ours (cache=writeback, QEMU's default).
    args = [*qemu_probe(disk_cmdline(kind, bs, n, qd)), "-global", "virtio-mmio.force-legacy=false",
            "-drive", f"id=d0,file={image},format=raw,if=none", "-device", "virtio-blk-device,drive=d0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return disk_rate(done.stdout, unit, hz)


def disk_qemu_pci(image: Path, case: tuple[str, int, int, int, str, str], hz: float) -> float:
    # Modern-only virtio-blk-pci (disable-legacy=on: device 0x1042 like ours; its capabilities
    # in BAR4, MSI-X in BAR1), the image through the page cache like ours.
    args = [*QEMU_PCIE, "-m", "64", "-kernel", str(PROBE), "-append", polled_cmdline(case, "pci"),
            "-drive", f"id=d0,file={image},format=raw,if=none", "-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    return disk_rate(done.stdout, case[4], hz)


def at_least_times(k: float) -> Callable[[Row], bool]:
    """Ours is at least ``k`` times the peer (higher is better)."""
    return lambda r: r.ratio is not None and r.ratio >= k


def case_disks(reps: int, hz: float, scratch: Path) -> list[Row]:
    image = disk_image(scratch / "bench-disk.img")
    rows = []
    try:
        for case in DISK_CASES:
            ours, qemu = [], []
            for _ in range(reps):
                ours.append(disk_ours(image, case, hz))
                qemu.append(disk_qemu(image, case, hz))
            rows.append(Row("8 disks", f"virtio-blk {case[5]}, probe guest", case[4], ours, qemu, "QEMU microvm",
                            "≥ 1.0× QEMU", at_least_peer))
        note = ("virtio-pci rows: the probe's driver polls and asks for no interrupts (the avail ring's "
                "NO_INTERRUPT flag; on PCI MSI-X on, no queue vector), on both transports and both VMMs; "
                "QEMU: `-M microvm,pcie=on`, `virtio-blk-pci,disable-legacy=on`, BARs assigned by the probe")
        for case in PCI_DISK_CASES:
            pci, qemu, mmio = [], [], []
            for _ in range(reps):
                pci.append(disk_ours_on(image, case, hz, "pci"))
                qemu.append(disk_qemu_pci(image, case, hz))
                mmio.append(disk_ours_on(image, case, hz, "mmio"))
            what = f"virtio-blk {case[5]}, virtio-pci, probe guest"
            rows.append(Row("8 disks", what, case[4], pci, qemu, "QEMU microvm, virtio-blk-pci", "≥ 1.0× QEMU",
                            at_least_peer, note=note))
            k = 1.2 if case[3] >= 32 else 1.0
            rows.append(Row("8 disks", what, case[4], pci, mmio, "ours, virtio-mmio", f"≥ {k}× MMIO",
                            at_least_times(k)))
            note = ""
    finally:
        image.unlink()
    return rows
