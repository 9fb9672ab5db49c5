"""Benchmark case 9: disks under the Debian guest, in the lab."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from common import (
    GUEST_PROMPT,
    MIB,
    RUN,
    SHELL_CMDLINE,
    ProcConsole,
    Row,
    VmConsole,
    at_least_peer,
    firecracker_config,
    lab_json,
    qemu_debian,
)
from vmm_reference import Vm
from vmm_reference.assets import GUEST_READY_MARKER, fetch_guest
from vmm_reference.lab import host_python_command, lab_available

LAB_DISK_MIB = 256


# (name, shell command timed by busybox's `time`).
DD_CASES = [
    ("read", f"echo 3 >/proc/sys/vm/drop_caches; time dd if=/dev/vda of=/dev/null bs=1M count={LAB_DISK_MIB}"),
    ("write", f"time dd if=/dev/zero of=/dev/vda bs=1M count={LAB_DISK_MIB} conv=fsync"),
]


def dd_rates(console: Any) -> dict[str, float]:
    """MB/s of each DD_CASES command, timed in the guest by busybox's ``time``."""
    console.expect(GUEST_READY_MARKER, 300)
    console.expect(GUEST_PROMPT, 60)
    rates = {}
    for name, command in DD_CASES:
        console.write(command.encode() + b"\n")
        m = console.expect(r"real\s+(\d+)m\s*([\d.]+)s", 300)
        seconds = int(m.group(1)) * 60 + float(m.group(2))
        rates[name] = LAB_DISK_MIB * MIB / 1e6 / max(seconds, 0.01)
        console.expect(GUEST_PROMPT, 60)
    return rates


def dd_ours(g: Any, image: Path, transport: str = "mmio") -> dict[str, float]:
    console = VmConsole(Vm(memory_mib=256, kernel=g.vmlinux, initrd=g.initrd, cmdline=SHELL_CMDLINE,
                           disks=[image], transport=transport))
    try:
        console.vm.start()
        return dd_rates(console)
    finally:
        console.close()


def dd_qemu(g: Any, image: Path) -> dict[str, float]:
    console = ProcConsole([*qemu_debian(g.vmlinux, g.initrd, SHELL_CMDLINE),
                           "-global", "virtio-mmio.force-legacy=false",
                           "-drive", f"id=d0,file={image},format=raw,if=none", "-device", "virtio-blk-device,drive=d0"])
    try:
        return dd_rates(console)
    finally:
        console.close()


def dd_firecracker(g: Any, image: Path, firecracker: str, pci: bool = False) -> dict[str, float]:
    path = firecracker_config(g, SHELL_CMDLINE, image.with_suffix(".firecracker.json"),
                              [{"drive_id": "data", "path_on_host": str(image), "is_root_device": False,
                                "is_read_only": False}])
    console = ProcConsole([firecracker, "--no-api", "--config-file", str(path), "--level", "Error",
                           *(["--enable-pci"] if pci else [])])
    try:
        return dd_rates(console)
    finally:
        console.close()


def inner_disks(reps: int, firecracker: Optional[str]) -> dict[str, dict[str, list[float]]]:
    """Run inside the lab: ours, QEMU's and Firecracker's dd rates, interleaved."""
    g = fetch_guest()
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as scratch:
        image = Path(scratch) / "dd.img"
        with image.open("wb") as f:
            f.write(os.urandom(LAB_DISK_MIB * MIB))
        runners: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("ours", lambda: dd_ours(g, image)), ("qemu", lambda: dd_qemu(g, image)),
            ("ours_pci", lambda: dd_ours(g, image, "pci"))]
        if firecracker:
            runners.append(("firecracker", lambda: dd_firecracker(g, image, firecracker)))
            runners.append(("firecracker_pci", lambda: dd_firecracker(g, image, firecracker, pci=True)))
        for _ in range(reps):
            for name, fn in runners:
                for case, rate in fn().items():
                    out.setdefault(case, {}).setdefault(name, []).append(rate)
    return out


def case_lab_disks(reps: int, firecracker: Optional[str]) -> list[Row]:
    metric = "Debian guest dd {}, 1 MiB blocks, nested-KVM lab (emulated: ratio only)"
    why = lab_available()
    if why:
        return [Row("9 disks, real guest", metric.format(c), "MB/s", [], note=f"not run: {why}")
                for c, _ in DD_CASES]
    fetch_guest()
    args = [str(RUN), "--inner-disks", str(reps)]
    if firecracker:
        args += ["--firecracker", str(Path(firecracker).resolve())]
    s = lab_json(host_python_command(args), "DISKS", timeout=1800)
    rows = []
    for case, _ in DD_CASES:
        rows.append(Row("9 disks, real guest", metric.format(case), "MB/s", s[case]["ours"], s[case]["qemu"],
                        "QEMU microvm in the same lab", "≥ 1.0× peer", at_least_peer))
        fc = s[case].get("firecracker", [])
        rows.append(Row("9 disks, real guest", metric.format(case), "MB/s", s[case]["ours"], fc,
                        "Firecracker in the same lab", "≥ 1.0× peer" if fc else "", at_least_peer if fc else None,
                        note="" if fc else "Firecracker not run: pass --firecracker PATH (a binary built from "
                                            "its source; none is shipped)"))
        pci = s[case].get("ours_pci", [])
        pci_metric = metric.format(case) + ", the disk on virtio-pci"
        rows.append(Row("9 disks, real guest", pci_metric, "MB/s", pci, s[case]["ours"],
                        "ours, virtio-mmio, same lab", "≥ 1.0× peer", at_least_peer))
        fc_pci = s[case].get("firecracker_pci", [])
        rows.append(Row("9 disks, real guest", pci_metric, "MB/s", pci, fc_pci,
                        "Firecracker --enable-pci in the same lab", "≥ 1.0× peer" if fc_pci else "",
                        at_least_peer if fc_pci else None,
                        note="" if fc_pci else "Firecracker not run: pass --firecracker PATH (1.13 or later, "
                                                "built from its source; none is shipped)"))
    return rows
