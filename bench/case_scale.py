"""Benchmark case 5: scale."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from common import PROBE, Row, qemu_probe
from vmm_reference import Vm


def tiny_vm(_: int = 0) -> None:
    with Vm(memory_mib=64, kernel=PROBE, cmdline="probe.tiny=1") as vm:
        vm.start()
        status = vm.wait(timeout=30)
        assert status.reason == "reset", status


def tiny_qemu(_: int = 0) -> None:
    subprocess.run(qemu_probe("probe.tiny=1"), capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


def per_second(fn: Callable[[int], None], count: int, workers: int) -> float:
    """Runs ``fn`` ``count`` times on ``workers`` threads (inline for one); returns runs/s/worker."""
    t0 = time.perf_counter()
    if workers == 1:
        for i in range(count):
            fn(i)
    else:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(fn, range(count)))
    return count / (time.perf_counter() - t0) / workers


def case_scale(reps: int, count: int) -> list[Row]:
    cores = os.cpu_count() or 1
    qemu_count = max(4, count // 10)
    seq, pool, qemu_seq, qemu_pool = [], [], [], []
    for _ in range(reps):
        seq.append(per_second(tiny_vm, count, 1))
        pool.append(per_second(tiny_vm, count, cores))
        qemu_seq.append(per_second(tiny_qemu, qemu_count, 1))
        qemu_pool.append(per_second(tiny_qemu, qemu_count, cores))
    target = lambda r: statistics.median(r.ours) >= 150  # noqa: E731
    return [
        Row("5 scale", f"create, run, exit {count} tiny VMs (a 13-byte hello) one after another", "VMs/s/core",
            seq, qemu_seq, "QEMU processes", "≥ 150", target),
        Row("5 scale", f"the same on a pool of {cores} threads", "VMs/s/core", pool, qemu_pool,
            "QEMU processes", "≥ 150", target),
    ]
