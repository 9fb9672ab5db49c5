"""Benchmark case 7: boot to userspace."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from common import (
    EXTRA_SECTIONS,
    GUEST_PROMPT,
    MIB,
    RUN,
    ProcConsole,
    Row,
    VmConsole,
    firecracker_config,
    fmt,
    lab_json,
    qemu_debian,
)
from vmm_reference import Vm
from vmm_reference.assets import GUEST_READY_MARKER, fetch_guest
from vmm_reference.lab import host_python_command, lab_available
from vmm_reference.timeline import BEFORE_KERNEL_CLOCK, BOOT_PHASES, kernel_phases

BOOT_CMDLINE = "reboot=k panic=-1 quiet vmm.init=shell"

# The phases of a boot are the package's (vm.timeline() draws them): each ends at the first
# kernel log line matching its pattern (guest timestamps, read back here with dmesg once the
# shell runs, the boot being `quiet`). The host's time to the ready line less the kernel's is
# the time before the kernel's clock started, plus the ready line's way to the host.
BEFORE_KERNEL = f"{BEFORE_KERNEL_CLOCK}, and the ready line reaching the host"


def boot_phases(console: Any, t0: float) -> dict[str, float]:
    """Host seconds from ``t0`` to the ready line, and the guest's own timestamps split by phase."""
    console.expect(GUEST_READY_MARKER, 300)
    total = time.perf_counter() - t0
    console.expect(GUEST_PROMPT, 60)
    wanted = "|".join(pattern for _, pattern in BOOT_PHASES)
    console.write(f"dmesg | grep -E '{wanted}'; echo DMESG-E''ND\n".encode())
    log = console.expect(r"(?s)(\[\s*\d+\.\d+\].*?)DMESG-END", 120).group(1)
    log = log.decode(errors="replace") if isinstance(log, bytes) else log
    spans = kernel_phases(log)
    if len(spans) < len(BOOT_PHASES):
        raise RuntimeError(f"no kernel log line matches {BOOT_PHASES[len(spans)][1]!r}: {log[-800:]!r}")
    phases = {"total": total}
    for name, start, end in spans:
        phases[name] = end - start
    phases[BEFORE_KERNEL] = total - spans[-1][2]
    return phases


def boot_ours(g: Any, transport: str = "mmio", disk: Optional[Path] = None) -> dict[str, float]:
    t0 = time.perf_counter()
    console = VmConsole(Vm(memory_mib=256, kernel=g.vmlinux, initrd=g.initrd, cmdline=BOOT_CMDLINE,
                           transport=transport, disks=[] if disk is None else [disk]))
    try:
        console.vm.start()
        return boot_phases(console, t0)
    finally:
        console.close()


def boot_qemu(g: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    console = ProcConsole(qemu_debian(g.vmlinux, g.initrd, BOOT_CMDLINE))
    try:
        return boot_phases(console, t0)
    finally:
        console.close()


def boot_firecracker(g: Any, firecracker: str, scratch: Path) -> dict[str, float]:
    path = firecracker_config(g, BOOT_CMDLINE, scratch / "boot.firecracker.json")
    t0 = time.perf_counter()
    console = ProcConsole([firecracker, "--no-api", "--config-file", str(path), "--level", "Error"])
    try:
        return boot_phases(console, t0)
    finally:
        console.close()


def userspace_samples(reps: int, firecracker: Optional[str]) -> dict[str, list[dict[str, float]]]:
    """Each VMM's boots (phases and total), interleaved: ours, QEMU, Firecracker, ours, ..."""
    g = fetch_guest()
    out: dict[str, list[dict[str, float]]] = {"ours": [], "qemu": []}
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as scratch:
        # With one disk, on each transport: what PCI costs the boot (a bus to enumerate, MSI-X).
        disk = Path(scratch) / "boot-disk.img"
        disk.write_bytes(bytes(8 * MIB))
        out["ours_mmio_disk"], out["ours_pci_disk"] = [], []
        runners: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("ours", lambda: boot_ours(g)), ("qemu", lambda: boot_qemu(g)),
            ("ours_mmio_disk", lambda: boot_ours(g, "mmio", disk)),
            ("ours_pci_disk", lambda: boot_ours(g, "pci", disk))]
        if firecracker:
            out["firecracker"] = []
            runners.append(("firecracker", lambda: boot_firecracker(g, firecracker, Path(scratch))))
        for _ in range(reps):
            for name, fn in runners:
                out[name].append(fn())
    return out


def phase_table(s: dict[str, list[dict[str, float]]]) -> str:
    """Median seconds per boot phase, per VMM, as markdown."""
    names = {"ours": "ours", "qemu": "QEMU microvm", "firecracker": "Firecracker"}
    vmms = [v for v in names if s.get(v)]
    phases = [BEFORE_KERNEL, *(name for name, _ in BOOT_PHASES), "total"]
    out = ["Case 7, where the boot's time goes (medians, seconds): the kernel's own timestamps between "
           "its log lines, and the host's time to the ready line less the kernel's:", "",
           "| phase | " + " | ".join(names[v] for v in vmms) + " |", "|---" * (len(vmms) + 1) + "|"]
    for phase in phases:
        cells = [fmt(statistics.median(b[phase] for b in s[v])) for v in vmms]
        out.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def case_userspace(reps: int, kvm_kind: str, firecracker: Optional[str]) -> list[Row]:
    metric = "start to the initramfs's ready line (Debian cloud kernel, `quiet`)"
    where = "hardware KVM" if kvm_kind == "hardware" else "nested-KVM lab (emulated: ratio only)"
    fc_note = "" if firecracker else ("Firecracker not run: pass --firecracker PATH or set "
                                      "VMM_REFERENCE_FIRECRACKER")
    if kvm_kind == "hardware":
        s = userspace_samples(reps, firecracker)
    else:
        why = lab_available()
        if why:
            return [Row("7 userspace", f"{metric}, {where}", "s", [], note=f"not run: {why}")]
        fetch_guest()
        args = [str(RUN), "--inner-userspace", str(reps)]
        if firecracker:
            args += ["--firecracker", str(Path(firecracker).resolve())]
        s = lab_json(host_python_command(args), "USERSPACE", timeout=1800)
    EXTRA_SECTIONS.append(phase_table(s))
    ours = [b["total"] for b in s["ours"]]
    fc = [b["total"] for b in s.get("firecracker", [])]
    return [
        Row("7 userspace", f"{metric}, {where}", "s", ours, [b["total"] for b in s["qemu"]],
            "QEMU microvm, same run", "≤ 0.5× peer", lambda r: r.ratio is not None and r.ratio <= 0.5),
        Row("7 userspace", f"{metric}, {where}", "s", ours, fc, "Firecracker, same run",
            "≤ 0.8× peer" if fc else "", (lambda r: r.ratio is not None and r.ratio <= 0.8) if fc else None,
            note=fc_note),
        Row("7 userspace", f"the same with a disk on virtio-pci (MSI-X), {where}", "s",
            [b["total"] for b in s.get("ours_pci_disk", [])], [b["total"] for b in s.get("ours_mmio_disk", [])],
            "ours, the disk on virtio-mmio, same run", "≤ 1.05× peer",
            lambda r: r.ratio is not None and r.ratio <= 1.05),
    ]
