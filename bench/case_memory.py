"""Benchmark case 4: memory overhead."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

from common import MIB, PROBE, Row, qemu_probe

_MEMORY_CHILD = r"""
import sys
from vmm_reference import Vm
print("BASE", flush=True)
sys.stdin.readline()
vms = []
for i in range(int(sys.argv[2])):
    vm = Vm(memory_mib=64, kernel=sys.argv[1], cmdline="probe.end=halt")
    vm.start()
    vm.expect("PROBE: halting", timeout=30)
    vms.append(vm)
print("READY", flush=True)
sys.stdin.readline()
"""


def rss_less_guest(pid: int) -> tuple[int, int]:
    """(resident bytes of process ``pid``, of which in 64 MiB mappings: guest RAM it touched)."""
    rss = guest = size = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            a, b = (int(x, 16) for x in head.split("-"))
            size = b - a
        elif line.startswith("Rss:"):
            kb = int(line.split()[1]) * 1024
            rss += kb
            if size == 64 * MIB:
                guest += kb
    return rss, guest


def ours_memory(k: int) -> tuple[int, int, int]:
    """(baseline RSS, RSS, guest RAM touched) of a process running ``k`` idle probe VMs."""
    p = subprocess.Popen([sys.executable, "-c", _MEMORY_CHILD, str(PROBE), str(k)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        assert p.stdout.readline().strip() == "BASE"
        base, _ = rss_less_guest(p.pid)
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "READY"
        rss, guest = rss_less_guest(p.pid)
        return base, rss, guest
    finally:
        p.kill()
        p.wait()


def qemu_overhead() -> float:
    p = subprocess.Popen(qemu_probe("probe.end=halt"), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        while b"halting" not in p.stdout.readline():
            pass
        rss, guest = rss_less_guest(p.pid)
        return (rss - guest) / MIB
    finally:
        p.kill()
        p.wait()


def case_memory(reps: int) -> list[Row]:
    per_vm: dict[int, list[float]] = {1: [], 8: [], 32: []}
    additional: list[float] = []
    qemu: list[float] = []
    for _ in range(reps):
        net = {}
        for k in per_vm:
            base, rss, guest = ours_memory(k)
            net[k] = rss - guest
            per_vm[k].append((rss - guest - base) / k / MIB)
        additional.append((net[32] - net[1]) / 31 / MIB)
        qemu.append(qemu_overhead())
    rows = [Row("4 memory", f"host memory per VM, {k} idle 64 MiB VMs in one process, less guest RAM touched",
                "MiB", v, qemu, "one QEMU process per VM") for k, v in per_vm.items()]
    rows.append(Row("4 memory", "host memory per additional VM (32 vs 1), less guest RAM touched", "MiB",
                    additional, qemu, "one QEMU process per VM", "≤ 2 MiB",
                    lambda r: statistics.median(r.ours) <= 2.0))
    return rows
