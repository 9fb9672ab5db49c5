"""Benchmark case 10: commands and vsock under the Debian guest, in the lab."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from common import MIB, RUN, ProcConsole, Row, at_least_peer, lab_json
from vmm_reference import Vm
from vmm_reference.assets import GUEST_READY_MARKER, fetch_guest
from vmm_reference.lab import host_python_command, lab_available

RUN_REPS = 200


STREAM_MIB = 128


AGENT_CMDLINE = "reboot=k panic=-1 quiet"


def agent_client(uds: str, timeout: float = 180.0) -> Any:
    """An agent client over a Firecracker-protocol vsock socket at ``uds``, once the agent answers."""
    from vmm_reference.agent import AGENT_PORT, Client
    from vmm_reference.vsock import VsockEndpoint

    end = time.monotonic() + timeout
    while True:
        try:
            client = Client(VsockEndpoint(3, uds).connect(AGENT_PORT, timeout=5))
            client.ping()
            return client
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def agent_rates(uds: str) -> dict[str, float]:
    """``run("true")`` round trip (ms, median of RUN_REPS) and command output over vsock (MB/s)."""
    times = []
    for _ in range(RUN_REPS):
        with agent_client(uds) as c:
            t0 = time.perf_counter()
            c.run(["true"])
            times.append((time.perf_counter() - t0) * 1e3)
    with agent_client(uds) as c:
        t0 = time.perf_counter()
        r = c.run(["head", "-c", str(STREAM_MIB * MIB), "/dev/zero"])
        dt = time.perf_counter() - t0
    assert len(r.stdout) == STREAM_MIB * MIB
    return {"run": statistics.median(times), "stream": STREAM_MIB * MIB / 1e6 / dt}


def agent_ours(g: Any, scratch: Path) -> dict[str, float]:
    uds = str(scratch / "ours.sock")
    from vmm_reference import Vsock

    with Vm(memory_mib=256, kernel=g.vmlinux, initrd=g.initrd, cmdline=AGENT_CMDLINE,
            vsock=Vsock(cid=3, uds=uds)) as vm:
        vm.start()
        return agent_rates(uds)


def agent_firecracker(g: Any, scratch: Path, firecracker: str) -> dict[str, float]:
    uds = str(scratch / "fc.sock")
    config = {
        "boot-source": {"kernel_image_path": str(g.vmlinux), "initrd_path": str(g.initrd),
                        "boot_args": f"console=ttyS0 {AGENT_CMDLINE}"},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "vsock": {"guest_cid": 3, "uds_path": uds},
    }
    path = scratch / "fc-agent.json"
    path.write_text(json.dumps(config))
    console = ProcConsole([firecracker, "--no-api", "--config-file", str(path), "--level", "Error"])
    try:
        console.expect(GUEST_READY_MARKER, 300)
        return agent_rates(uds)
    finally:
        console.close()
        Path(uds).unlink(missing_ok=True)


def inner_agent(reps: int, firecracker: Optional[str]) -> dict[str, dict[str, list[float]]]:
    """Run inside the lab: ours and Firecracker's agent round trip and vsock stream, interleaved."""
    g = fetch_guest()
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as d:
        scratch = Path(d)
        runners: list[tuple[str, Callable[[], dict[str, float]]]] = [("ours", lambda: agent_ours(g, scratch))]
        if firecracker:
            runners.append(("firecracker", lambda: agent_firecracker(g, scratch, firecracker)))
        for _ in range(reps):
            for name, fn in runners:
                for case, value in fn().items():
                    out.setdefault(case, {}).setdefault(name, []).append(value)
    return out


def case_lab_agent(reps: int, firecracker: Optional[str]) -> list[Row]:
    run_metric = "`vm.run([\"true\"])` round trip through the guest agent, nested-KVM lab (emulated: ratio only)"
    stream_metric = f"{STREAM_MIB} MiB of command output over vsock, nested-KVM lab (emulated: ratio only)"
    why = lab_available()
    if why:
        return [Row("10 vsock", m, u, [], note=f"not run: {why}") for m, u in
                ((run_metric, "ms"), (stream_metric, "MB/s"))]
    fetch_guest()
    args = [str(RUN), "--inner-agent", str(reps)]
    if firecracker:
        args += ["--firecracker", str(Path(firecracker).resolve())]
    s = lab_json(host_python_command(args), "AGENT", timeout=1800)
    note = "" if firecracker else "Firecracker not run: pass --firecracker PATH"
    fc_run, fc_stream = s["run"].get("firecracker", []), s["stream"].get("firecracker", [])
    return [
        Row("10 vsock", run_metric, "ms", s["run"]["ours"], fc_run, "Firecracker's vsock in the same lab",
            "≤ 1.0× peer" if fc_run else "", (lambda r: r.ratio is not None and r.ratio <= 1.0) if fc_run else None,
            note=note),
        Row("10 vsock", stream_metric, "MB/s", s["stream"]["ours"], fc_stream, "Firecracker's vsock in the same lab",
            "≥ 1.0× peer" if fc_stream else "", at_least_peer if fc_stream else None, note=note),
    ]
