"""Benchmark case 3: console throughput."""

from __future__ import annotations

import time

from common import PROBE, Row, exits_ours
from vmm_reference import Vm


def console_ours(n: int, raw_bytes: bool) -> float:
    with Vm(memory_mib=64, kernel=PROBE, cmdline=f"probe.bench=console probe.n={n} probe.end=halt") as vm:
        t0 = time.perf_counter()
        vm.start()
        got = 0
        if raw_bytes:
            seen = b""
            while b"PROBE: bench console" not in seen:
                chunk = vm.serial.read(timeout=60)
                if not chunk:
                    raise RuntimeError("the console ended early")
                got += len(chunk)
                seen = seen[-64:] + chunk
        else:
            for line in vm.serial.lines(timeout=120):
                got += len(line) + 1
                if line.startswith("PROBE: bench console"):
                    break
        dt = time.perf_counter() - t0
        assert got >= n
        return got / dt


def case_console(reps: int, n: int, hz: float) -> list[Row]:
    # The peer is the exit rate of the very loop the console bench runs (a byte loaded from
    # memory, written to a port), aimed at the UART's scratch register, which prints nothing:
    # under kvm_pvm that memory load alone makes each exit ~30% dearer than case 2's
    # register-only loop, whatever the VMM does with the byte.
    lines, raw, loop = [], [], []
    for _ in range(reps):
        loop.append(exits_ours("scratchtext", n, hz))
        lines.append(console_ours(n, raw_bytes=False))
        raw.append(console_ours(n, raw_bytes=True))
    ok = lambda r: r.ratio is not None and r.ratio >= 0.9  # noqa: E731
    peer = "exit rate of the same guest loop, no output"
    return [
        Row("3 console", "guest text to Python, `for line in vm.serial`", "bytes/s", lines, loop, peer,
            "≥ 0.9× exit rate", ok),
        Row("3 console", "guest text to Python, `vm.serial.read()`", "bytes/s", raw, loop, peer,
            "≥ 0.9× exit rate", ok),
    ]
