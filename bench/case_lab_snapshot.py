"""Benchmark case 13: snapshot and restore of the Debian guest, in the lab, against Firecracker."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from common import MIB, RUN, ProcConsole, Row, VmConsole, firecracker_config, lab_json
from vmm_reference import Vm
from vmm_reference.assets import GUEST_READY_MARKER, fetch_guest
from vmm_reference.lab import host_python_command, lab_available


class FirecrackerApi:
    """Firecracker with its API socket: PUT/PATCH JSON bodies, as its snapshot API needs."""

    def __init__(self, binary: str, sock: Path, config: Optional[Path] = None) -> None:
        sock.unlink(missing_ok=True)
        args = [binary, "--api-sock", str(sock), "--level", "Error"]
        if config is not None:
            args += ["--config-file", str(config)]
        self.sock = sock
        self.console = ProcConsole(args)
        end = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > end:
                raise RuntimeError("Firecracker's API socket never appeared")
            time.sleep(0.001)

    def call(self, method: str, path: str, body: dict[str, Any]) -> None:
        import http.client
        import socket

        class Conn(http.client.HTTPConnection):
            def connect(inner) -> None:  # noqa: N805
                inner.sock = socket.socket(socket.AF_UNIX)
                inner.sock.connect(str(self.sock))

        conn = Conn("localhost", timeout=120)
        conn.request(method, path, json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        text = reply.read()
        conn.close()
        if reply.status >= 300:
            raise RuntimeError(f"Firecracker {method} {path}: {reply.status} {text!r}")


SNAP_CMDLINE = "reboot=k panic=-1 quiet vmm.init=shell"


def shell_answers(console: Any, word: str) -> None:
    console.write(f"echo {word}-$((6*7))\n".encode())
    console.expect(rf"{word}-42", 60)


def snapshot_ours(g: Any, scratch: Path) -> dict[str, float]:
    with Vm(memory_mib=256, kernel=g.vmlinux, initrd=g.initrd, cmdline=SNAP_CMDLINE) as vm:
        vm.start()
        console = VmConsole(vm)
        console.expect(GUEST_READY_MARKER, 300)
        shell_answers(console, "up")
        vm.pause()
        t = time.perf_counter()
        vm.snapshot(scratch / "ours")
        create = time.perf_counter() - t
    t = time.perf_counter()
    restored = Vm.restore(scratch / "ours")
    load = time.perf_counter() - t
    try:
        restored.resume()
        shell_answers(VmConsole(restored), "back")
        running = time.perf_counter() - t
    finally:
        restored.close()
    size = sum(f.stat().st_blocks * 512 for f in (scratch / "ours").iterdir()) / MIB
    shutil.rmtree(scratch / "ours")
    return {"create": create * 1e3, "load": load * 1e3, "running": running * 1e3, "size": size}


def snapshot_firecracker(g: Any, scratch: Path, firecracker: str) -> dict[str, float]:
    path = firecracker_config(g, SNAP_CMDLINE, scratch / "fc-snap.json")
    state, mem = scratch / "fc.state", scratch / "fc.mem"
    fc = FirecrackerApi(firecracker, scratch / "fc-api.sock", path)
    try:
        fc.console.expect(GUEST_READY_MARKER, 300)
        shell_answers(fc.console, "up")
        fc.call("PATCH", "/vm", {"state": "Paused"})
        t = time.perf_counter()
        fc.call("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": str(state),
                                            "mem_file_path": str(mem)})
        create = time.perf_counter() - t
    finally:
        fc.console.close()
    t = time.perf_counter()
    fc = FirecrackerApi(firecracker, scratch / "fc-api2.sock")
    try:
        fc.call("PUT", "/snapshot/load", {"snapshot_path": str(state),
                                          "mem_backend": {"backend_type": "File", "backend_path": str(mem)},
                                          "resume_vm": True})
        load = time.perf_counter() - t
        shell_answers(fc.console, "back")
        running = time.perf_counter() - t
    finally:
        fc.console.close()
    size = (state.stat().st_blocks + mem.stat().st_blocks) * 512 / MIB
    state.unlink()
    mem.unlink()
    return {"create": create * 1e3, "load": load * 1e3, "running": running * 1e3, "size": size}


def inner_snapshot(reps: int, firecracker: Optional[str]) -> dict[str, dict[str, list[float]]]:
    """Run inside the lab: ours and Firecracker's snapshot create and load, interleaved."""
    g = fetch_guest()
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as d:
        scratch = Path(d)
        runners: list[tuple[str, Callable[[], dict[str, float]]]] = [("ours", lambda: snapshot_ours(g, scratch))]
        if firecracker:
            runners.append(("firecracker", lambda: snapshot_firecracker(g, scratch, firecracker)))
        for _ in range(reps):
            for name, fn in runners:
                for case, value in fn().items():
                    out.setdefault(case, {}).setdefault(name, []).append(value)
    return out


def case_lab_snapshot(reps: int, firecracker: Optional[str]) -> list[Row]:
    metrics = {
        "create": ("snapshot of the paused Debian guest (256 MiB), nested-KVM lab (emulated: ratio only)", "ms", None),
        "size": ("snapshot size on disk (state + memory), Debian guest", "MiB", None),
        "load": ("restore: the call that loads the snapshot, nested-KVM lab", "ms", 0.25),
        "running": ("restore until the guest's shell answers, nested-KVM lab", "ms", None),
    }
    why = lab_available()
    if why:
        return [Row("13 snapshot", m, u, [], note=f"not run: {why}") for m, u, _ in metrics.values()]
    fetch_guest()
    args = [str(RUN), "--inner-snapshot", str(reps)]
    if firecracker:
        args += ["--firecracker", str(Path(firecracker).resolve())]
    s = lab_json(host_python_command(args), "SNAPSHOT", timeout=1800)
    rows = []
    for key, (metric, unit, limit) in metrics.items():
        fc = s[key].get("firecracker", [])
        target, check = "", None
        if limit is not None and fc:
            target = f"≤ {limit}× peer"
            check = (lambda lim: lambda r: r.ratio is not None and r.ratio <= lim)(limit)
        rows.append(Row("13 snapshot", metric, unit, s[key]["ours"], fc, "Firecracker's snapshots in the same lab",
                        target, check, note="" if fc else "Firecracker not run: pass --firecracker PATH"))
    return rows
