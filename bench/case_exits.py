"""Benchmark case 2: exit-path throughput."""

from __future__ import annotations

import re
import subprocess

from common import PROBE, RAW_LOOP, Row, bench_rate, exits_ours, qemu_probe


def exits_qemu(kind: str, n: int, hz: float) -> float:
    done = subprocess.run(qemu_probe(f"probe.bench={kind} probe.n={n}"), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    return bench_rate(done.stdout, hz)


def exits_raw(n: int, hz: float) -> float:
    """The same probe VM as ours, run by a bare KVM_RUN loop (examples/raw_kvm_loop.rs), guest-timed."""
    done = subprocess.run([str(RAW_LOOP), "--probe", str(PROBE), str(n)], capture_output=True, text=True,
                          timeout=120, check=True)
    return bench_rate(done.stdout, hz)


def exits_raw_real_mode(n: int) -> float:
    """A different, smaller VM: real-mode code, no irqchip, no CPUID, timed on the host."""
    done = subprocess.run([str(RAW_LOOP), str(n)], capture_output=True, text=True, timeout=120, check=True)
    m = re.search(r"rate=(\d+)", done.stdout)
    assert m, done.stdout
    return float(m.group(1))


def case_exits(reps: int, n: int, hz: float) -> list[Row]:
    ours, raw, bare, qemu, ours_uart, qemu_uart = [], [], [], [], [], []
    for _ in range(reps):
        ours.append(exits_ours("pio", n, hz))
        raw.append(exits_raw(n, hz))
        bare.append(exits_raw_real_mode(n))
        qemu.append(exits_qemu("pio", n, hz))
        ours_uart.append(exits_ours("scratch", n, hz))
        qemu_uart.append(exits_qemu("scratch", n, hz))
    return [
        Row("2 exit path", "port writes to an unused port", "exits/s", ours, raw,
            "raw KVM_RUN loop, same VM", "≥ 0.95× raw loop", lambda r: r.ratio is not None and r.ratio >= 0.95),
        Row("2 exit path", "port writes to an unused port", "exits/s", ours, bare,
            "raw loop, bare real-mode VM", note="a different VM (real mode, no irqchip, no CPUID, "
            "host-timed): on kvm_pvm such a VM exits faster whatever runs it; shown for comparison only"),
        Row("2 exit path", "port writes to an unused port", "exits/s", ours, qemu, "QEMU microvm"),
        Row("2 exit path", "port writes to the UART scratch register", "exits/s", ours_uart, qemu_uart,
            "QEMU microvm"),
    ]
