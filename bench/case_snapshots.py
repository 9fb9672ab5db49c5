"""Benchmark case 12: snapshot, restore, fork and dump_core (probe guest, this host's KVM)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import MIB, PROBE, Row
from vmm_reference import Vm

_FORK_CHILD = r"""
import sys, time
from pathlib import Path
from vmm_reference import Vm

def pss() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0

n = int(sys.argv[2])
template = Vm(memory_mib=64, kernel=sys.argv[1], cmdline="probe.end=halt")
template.start()
template.expect("PROBE: halting", timeout=30)
template.pause()
t = time.perf_counter(); warm = template.fork(1); first = time.perf_counter() - t
warm[0].close()
before = pss()
t = time.perf_counter(); clones = template.fork(n); per_clone = (time.perf_counter() - t) / n
for c in clones:
    c.resume()
time.sleep(0.5)  # idle: each clone sits in hlt
print("FORK", first * 1e3, per_clone * 1e3, (pss() - before) / n / (1 << 20), flush=True)
"""


def snapshot_restore_probe(scratch: Path) -> tuple[float, float, float]:
    """(ms to snapshot a running 256 MiB guest, MiB written, ms from restore to its next console line).

    The guest prints a counter without pause (`probe.end=flood`), so its next line after
    `resume()` shows when it runs again.
    """
    with Vm(memory_mib=256, kernel=PROBE, cmdline="probe.end=flood") as vm:
        vm.start()
        vm.expect("PROBE: flood 1000\n", timeout=30)
        t = time.perf_counter()
        written = vm.snapshot(scratch / "snap")
        took = time.perf_counter() - t
    t = time.perf_counter()
    restored = Vm.restore(scratch / "snap")
    try:
        restored.resume()
        restored.expect("PROBE: flood \\d+\n", timeout=30)
        running = time.perf_counter() - t
    finally:
        restored.close()
    shutil.rmtree(scratch / "snap")
    return took * 1e3, written / MIB, running * 1e3


def dump_probe(scratch: Path) -> tuple[float, float]:
    """(ms to ``dump_core`` a running 256 MiB guest, MiB the core takes on disk)."""
    with Vm(memory_mib=256, kernel=PROBE, cmdline="probe.end=flood") as vm:
        vm.start()
        vm.expect("PROBE: flood 1000\n", timeout=30)
        t = time.perf_counter()
        vm.dump_core(scratch / "guest.core")
        took = time.perf_counter() - t
    size = (scratch / "guest.core").stat().st_blocks * 512
    (scratch / "guest.core").unlink()
    return took * 1e3, size / MIB


def case_fork(reps: int, scratch: Path) -> list[Row]:
    first, per_clone, memory, snap_ms, snap_mib, restore_ms = [], [], [], [], [], []
    dump_ms, dump_mib = [], []
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", _FORK_CHILD, str(PROBE), "8"], capture_output=True, text=True,
                             timeout=300, check=True).stdout
        m = re.search(r"FORK (\S+) (\S+) (\S+)", out)
        assert m, out
        first.append(float(m.group(1)))
        per_clone.append(float(m.group(2)))
        memory.append(float(m.group(3)))
        a, b, c = snapshot_restore_probe(scratch)
        snap_ms.append(a)
        snap_mib.append(b)
        restore_ms.append(c)
        d, e = dump_probe(scratch)
        dump_ms.append(d)
        dump_mib.append(e)
    pvm = "probe guest, this host's KVM"
    return [
        Row("12 fork", f"fork latency per clone, 8 clones of a paused 64 MiB guest ({pvm})", "ms", per_clone,
            target="≤ 2 ms", check=lambda r: statistics.median(r.ours) <= 2.0),
        Row("12 fork", f"first fork (copies the guest's memory into the sealed base) ({pvm})", "ms", first),
        Row("12 fork", f"host memory per idle clone (PSS, guest pages shared) ({pvm})", "MiB", memory,
            target="≤ 0.5 MiB", check=lambda r: statistics.median(r.ours) <= 0.5),
        Row("12 fork", f"snapshot of a running 256 MiB guest ({pvm})", "ms", snap_ms),
        Row("12 fork", f"snapshot size on disk, 256 MiB guest ({pvm})", "MiB", snap_mib),
        Row("12 fork", f"restore to running (restore, resume, next console line) ({pvm})", "ms", restore_ms),
        Row("12 fork", f"`dump_core` of a running 256 MiB guest (ELF core, sparse) ({pvm})", "ms", dump_ms,
            snap_ms, "a snapshot of the same guest, same run"),
        Row("12 fork", f"`dump_core` size on disk, 256 MiB guest ({pvm})", "MiB", dump_mib),
    ]
