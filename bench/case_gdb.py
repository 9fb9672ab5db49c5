"""Benchmark case 16: a gdb breakpoint's round trip and a single step's (probe guest, this host's KVM).

A raw client of gdb's remote protocol sets a hardware breakpoint at the probe's ``loop_target``
(``probe.end=loop`` calls it for ever), then times ``c`` to the stop reply, hit after hit; and
``s`` to its stop reply. The same client, guest and breakpoint against QEMU's gdb stub (KVM,
the same host) in the same run.
"""

from __future__ import annotations

import re
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

from common import PROBE, Row, qemu_probe
from vmm_reference import Vm

HITS = 300


def _symbol(name: str) -> int:
    out = subprocess.run(["nm", str(PROBE)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^([0-9a-f]+) \w {name}$", out, re.M)
    assert m, name
    return int(m.group(1), 16)


class _Rsp:
    """Just enough of gdb's side of the protocol: send a packet, read its reply."""

    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.s.settimeout(30)
        self.buf = b""

    def ask(self, data: bytes) -> bytes:
        self.s.sendall(b"$%s#%02x" % (data, sum(data) % 256))
        while True:
            self.buf = self.buf.lstrip(b"+")
            end = self.buf.find(b"#")
            if self.buf.startswith(b"$") and end > 0 and len(self.buf) >= end + 3:
                reply, self.buf = self.buf[1:end], self.buf[end + 3:]
                self.s.sendall(b"+")
                return reply
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("the stub hung up")
            self.buf += chunk


def _round_trips(path: Path) -> tuple[list[float], list[float]]:
    """(µs per breakpoint hit, µs per single step), from the stub listening at ``path``."""
    rsp = _Rsp(path)
    try:
        rsp.ask(b"?")
        assert rsp.ask(b"Z1,%x,1" % _symbol("loop_target")) == b"OK"
        hits, steps = [], []
        for i in range(HITS + 10):
            t = time.perf_counter()
            stop = rsp.ask(b"c")
            if i >= 10:  # the first few warm up
                hits.append((time.perf_counter() - t) * 1e6)
            assert stop[:3] in (b"T05", b"S05"), stop
        assert rsp.ask(b"z1,%x,1" % _symbol("loop_target")) == b"OK"
        for _ in range(HITS):
            t = time.perf_counter()
            stop = rsp.ask(b"s")
            steps.append((time.perf_counter() - t) * 1e6)
            assert stop[:3] in (b"T05", b"S05"), stop
        return hits, steps
    finally:
        rsp.s.close()


def _ours(scratch: Path) -> tuple[list[float], list[float]]:
    sock = scratch / "ours.gdb"
    with Vm(memory_mib=64, kernel=PROBE, cmdline="probe.end=loop", gdb=f"unix:{sock}") as vm:
        vm.start()
        return _round_trips(sock)


def _qemu(scratch: Path) -> tuple[list[float], list[float]]:
    sock = scratch / "qemu.gdb"
    qemu = subprocess.Popen([*qemu_probe("probe.end=loop"), "-gdb", f"unix:{sock},server=on,wait=off", "-S"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return _round_trips(sock)
    finally:
        qemu.kill()
        qemu.wait()


def case_gdb(reps: int, scratch: Path) -> list[Row]:
    ours_hit: list[float] = []
    ours_step: list[float] = []
    qemu_hit: list[float] = []
    qemu_step: list[float] = []
    for _ in range(reps):
        for run, hit, step in ((_ours, ours_hit, ours_step), (_qemu, qemu_hit, qemu_step)):
            h, s = run(scratch)
            hit.append(statistics.median(h))
            step.append(statistics.median(s))
    pvm = "probe guest, this host's KVM"
    at_most: Callable[[Row], bool] = lambda r: r.ratio is not None and r.ratio <= 1.0  # noqa: E731
    return [
        Row("16 gdb", f"breakpoint round trip: `continue` to the stop reply, hit after hit ({pvm})", "µs",
            ours_hit, qemu_hit, "QEMU microvm's gdb stub", "≤ 1× QEMU", at_most),
        Row("16 gdb", f"single-step round trip: `stepi` to the stop reply ({pvm})", "µs",
            ours_step, qemu_step, "QEMU microvm's gdb stub", "≤ 1× QEMU", at_most),
    ]
