"""Benchmark case 6: real kernel to `Memory:`."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from common import Row, qemu_debian
from vmm_reference import Vm
from vmm_reference.assets import fetch_guest


def kernel_until_ours(vmlinux: Path, initrd: Path, cmdline: str, pattern: str) -> float:
    """Seconds from ``Vm(...)`` to ``pattern`` on the Debian kernel's console."""
    t0 = time.perf_counter()
    with Vm(memory_mib=256, kernel=vmlinux, initrd=initrd, cmdline=cmdline) as vm:
        vm.start()
        vm.expect(pattern, timeout=180)
        return time.perf_counter() - t0


def kernel_until_qemu(vmlinux: Path, initrd: Path, cmdline: str, pattern: str) -> float:
    """Seconds from starting QEMU microvm on the same kernel to ``pattern`` on its console."""
    t0 = time.perf_counter()
    p = subprocess.Popen(qemu_debian(vmlinux, initrd, cmdline), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        for raw in p.stdout:
            if re.search(pattern.encode(), raw):
                return time.perf_counter() - t0
        raise RuntimeError(f"QEMU's guest never printed {pattern!r}")
    finally:
        p.kill()
        p.wait()


MEMORY_LINE = (r"Memory: \d+K", "reboot=k panic=-1 earlyprintk=ttyS0")


def kernel_samples(reps: int, until: tuple[str, str]) -> dict[str, list[float]]:
    """Ours and QEMU's seconds to ``until`` = (pattern, command line), interleaved."""
    g = fetch_guest()
    pattern, cmdline = until
    samples: dict[str, list[float]] = {"ours": [], "qemu": []}
    for _ in range(reps):
        samples["ours"].append(kernel_until_ours(g.vmlinux, g.initrd, cmdline, pattern))
        samples["qemu"].append(kernel_until_qemu(g.vmlinux, g.initrd, cmdline, pattern))
    return samples


def case_kernel(reps: int, kvm_kind: str) -> list[Row]:
    s = kernel_samples(reps, MEMORY_LINE)
    note = ("on PVM, dominated by PVM's slow emulated early boot, the same for both VMMs"
            if kvm_kind == "pvm" else "")
    return [Row("6 real kernel", "start to the Debian cloud kernel's `Memory:` line", "s", s["ours"], s["qemu"],
                "QEMU microvm", note=note)]
