"""Benchmark case 11: TCP over a TAP under the Debian guest, in the lab."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from common import GUEST_PROMPT, MIB, RUN, SHELL_CMDLINE, ProcConsole, Row, VmConsole, at_least_peer, lab_json
from vmm_reference import Vm
from vmm_reference.assets import GUEST_READY_MARKER, fetch_guest
from vmm_reference.lab import host_python_command, lab_available

TAP_MIB = 16


class TcpSink:
    """Counts what one TCP connection at a time sends to ``addr``:5555 and how fast."""

    def __init__(self, addr: str) -> None:
        import socket
        import threading

        # No accept timeout: a sink waits as long as the other VMM's runs take (the thread is a daemon).
        self.server = socket.create_server((addr, 5555))
        self.rates: list[float] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                n, first = 0, None
                while chunk := conn.recv(1 << 20):
                    first = first or time.perf_counter()
                    n += len(chunk)
                if first is not None and n == TAP_MIB * MIB:
                    self.rates.append(n / 1e6 / max(time.perf_counter() - first, 1e-6))

    def wait_for(self, count: int, timeout: float = 300) -> float:
        end = time.monotonic() + timeout
        while len(self.rates) < count and time.monotonic() < end:
            self.thread.join(0.1)
        if len(self.rates) < count:
            raise RuntimeError("the guest's transfer never completed")
        return self.rates[-1]


def tap_transfer(console: Any, guest_ip: str, host_ip: str, sink: TcpSink) -> float:
    """In the guest's shell: bring eth0 up and send TAP_MIB MiB to the host's sink."""
    console.expect(GUEST_READY_MARKER, 300)
    console.expect(GUEST_PROMPT, 60)
    before = len(sink.rates)
    console.write(f"ip addr add {guest_ip}/24 dev eth0 && ip link set eth0 up && "
                  f"dd if=/dev/zero bs=1M count={TAP_MIB} 2>/dev/null | nc {host_ip} 5555; echo SENT=$?\n".encode())
    console.expect(r"SENT=0", 300)
    return sink.wait_for(before + 1)


def inner_tap_ns(reps: int, firecracker: Optional[str]) -> dict[str, list[float]]:
    """Inside a private network namespace in the lab: ours on tap0, Firecracker on tap1."""
    def sh(cmd: str) -> None:
        subprocess.run(cmd, shell=True, check=True)

    sh("ip link set lo up")
    for i, tap in enumerate(["tap0", "tap1"]):
        sh(f"ip tuntap add dev {tap} mode tap && ip addr add 10.0.{2 + i}.1/24 dev {tap} && ip link set {tap} up")
    sinks = [TcpSink("10.0.2.1"), TcpSink("10.0.3.1")]
    g = fetch_guest()
    out: dict[str, list[float]] = {"ours": [], "firecracker": []}
    for _ in range(reps):
        from vmm_reference import Tap

        vm = Vm(memory_mib=256, kernel=g.vmlinux, initrd=g.initrd, cmdline=SHELL_CMDLINE,
                net=[Tap("tap0", mac="06:00:ac:10:00:02")])
        try:
            vm.start()
            out["ours"].append(tap_transfer(VmConsole(vm), "10.0.2.15", "10.0.2.1", sinks[0]))
            print(f"TAP ours {out['ours'][-1]:.1f} MB/s", file=sys.stderr, flush=True)
        finally:
            vm.close()
        if firecracker:
            with tempfile.TemporaryDirectory(prefix="vmm-bench-") as d:
                config = {
                    "boot-source": {"kernel_image_path": str(g.vmlinux), "initrd_path": str(g.initrd),
                                    "boot_args": f"console=ttyS0 {SHELL_CMDLINE}"},
                    "drives": [],
                    "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
                    "network-interfaces": [{"iface_id": "eth0", "guest_mac": "06:00:ac:10:00:03",
                                            "host_dev_name": "tap1"}],
                }
                path = Path(d) / "fc-net.json"
                path.write_text(json.dumps(config))
                console = ProcConsole([firecracker, "--no-api", "--config-file", str(path), "--level", "Error"])
                try:
                    out["firecracker"].append(tap_transfer(console, "10.0.3.15", "10.0.3.1", sinks[1]))
                    print(f"TAP firecracker {out['firecracker'][-1]:.1f} MB/s", file=sys.stderr, flush=True)
                finally:
                    console.close()
    return out


def case_lab_tap(reps: int, firecracker: Optional[str]) -> list[Row]:
    metric = f"Debian guest sends {TAP_MIB} MiB over TCP through a TAP, nested-KVM lab (emulated: ratio only)"
    why = lab_available()
    if why:
        return [Row("11 network", metric, "MB/s", [], note=f"not run: {why}")]
    fetch_guest()
    args = [str(RUN), "--inner-tap", str(reps)]
    if firecracker:
        args += ["--firecracker", str(Path(firecracker).resolve())]
    s = lab_json(host_python_command(args), "TAP", timeout=1800)
    fc = s.get("firecracker", [])
    return [Row("11 network", metric, "MB/s", s["ours"], fc, "Firecracker's virtio-net in the same lab",
                "≥ 1.0× peer" if fc else "", at_least_peer if fc else None,
                note="" if fc else "Firecracker not run: pass --firecracker PATH")]
