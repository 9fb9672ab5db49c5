"""What every benchmark case shares: paths, peers' command lines, the Row of results, consoles."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from vmm_reference import Vm
from vmm_reference.lab import run_in_lab

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tests" / "guest" / "build" / "probe.elf"
RAW_LOOP = REPO / "target" / "release" / "examples" / "raw_kvm_loop"
#: The runner, which the lab cases run inside the lab (``--inner-*``).
RUN = REPO / "bench" / "run.py"
QEMU = ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot"]
MIB = 1 << 20
# Tables printed after the main one (e.g. case 7's boot phases), filled in as cases run.
EXTRA_SECTIONS: list[str] = []


@dataclass
class Row:
    """One measured quantity: ours and a peer's samples, and the target for their ratio or ours."""

    case: str
    metric: str
    unit: str
    ours: list[float]
    peer: list[float] = field(default_factory=list)
    peer_name: str = ""
    target: str = ""
    """What PASS means, as text for the table."""
    check: Optional[Callable[[Row], bool]] = None
    note: str = ""

    @property
    def ratio(self) -> Optional[float]:
        """Median ours / median peer."""
        if not self.peer or not self.ours or statistics.median(self.peer) == 0:
            return None
        return statistics.median(self.ours) / statistics.median(self.peer)

    @property
    def verdict(self) -> str:
        """PASS, MISS, or empty without a target."""
        if self.check is None:
            return ""
        return "PASS" if self.check(self) else "MISS"


def spread(values: list[float]) -> str:
    """min / median / max, compactly."""
    if not values:
        return "–"
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f"{fmt(lo)} / **{fmt(med)}** / {fmt(hi)}"


def fmt(v: float) -> str:
    """A number with three significant digits."""
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def fmt_ratio(ratio: Optional[float]) -> str:
    """A ratio with two decimals, or two significant digits when small."""
    if ratio is None:
        return "–"
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def tsc_hz() -> float:
    """The host's TSC frequency, which the guest's TSC also runs at under KVM."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) * 1e6
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def bench_rate(text: str, hz: float) -> float:
    """Operations per second from the probe's ``PROBE: bench KIND n=N tsc=T`` line."""
    m = re.search(r"PROBE: bench \w+ n=(\d+) tsc=(\d+)", text)
    if not m:
        raise RuntimeError(f"no bench line in the guest's output: {text[-500:]!r}")
    return int(m.group(1)) / (int(m.group(2)) / hz)




def qemu_probe(cmdline: str, memory_mib: int = 64) -> list[str]:
    return [*QEMU, "-m", str(memory_mib), "-kernel", str(PROBE), "-append", cmdline]


def qemu_debian(vmlinux: Path, initrd: Path, cmdline: str) -> list[str]:
    """QEMU microvm booting the Debian guest (256 MiB, console on stdio) with ``cmdline``."""
    return [*QEMU, "-m", "256", "-kernel", str(vmlinux), "-initrd", str(initrd), "-append",
            f"console=ttyS0 {cmdline}"]


def exits_ours(kind: str, n: int, hz: float) -> float:
    with Vm(memory_mib=64, kernel=PROBE, cmdline=f"probe.bench={kind} probe.n={n}") as vm:
        vm.start()
        vm.wait(timeout=120)
        return bench_rate(vm.console_log, hz)


def lab_json(command: str, tag: str, timeout: float) -> Any:
    """Run ``command`` in the lab and return the JSON it printed on its last ``TAG {...}`` line."""
    result = run_in_lab(command, timeout=timeout, cwd=str(REPO))
    found = re.findall(rf"^{tag} (\{{.*\}})\s*$", result.output, re.M)
    if result.status != 0 or not found:
        tail = "\n".join(result.output.splitlines()[-15:])
        raise RuntimeError(f"the lab run failed (status {result.status}):\n{tail}")
    return json.loads(found[-1])


def firecracker_config(g: Any, cmdline: str, path: Path, drives: Optional[list[dict[str, Any]]] = None) -> Path:
    """Write a Firecracker configuration file for the Debian guest (1 vCPU, 256 MiB) at ``path``."""
    config = {
        "boot-source": {"kernel_image_path": str(g.vmlinux), "initrd_path": str(g.initrd),
                        "boot_args": f"console=ttyS0 {cmdline}"},
        "drives": drives or [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
    }
    path.write_text(json.dumps(config))
    return path


GUEST_PROMPT = r"# (\x1b\[6n)?$"


SHELL_CMDLINE = "reboot=k panic=-1 quiet vmm.init=shell"


class ProcConsole:
    """A VMM process whose serial console is its stdin and stdout (QEMU, Firecracker)."""

    def __init__(self, args: list[str]) -> None:
        import threading

        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = bytearray()
        self.pos = 0
        self.cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            with self.cond:
                self.out += chunk
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def expect(self, pattern: str, timeout: float) -> re.Match[bytes]:
        regex = re.compile(pattern.encode(), re.M)
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                m = regex.search(self.out, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{pattern!r} not seen; last output: {bytes(self.out[-800:])!r}")
                self.cond.wait(min(left, 0.5))

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class VmConsole:
    """Ours, with the same two methods."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm

    def expect(self, pattern: str, timeout: float) -> re.Match[Any]:
        return self.vm.expect(pattern.encode(), timeout=timeout)

    def write(self, data: bytes) -> None:
        self.vm.write(data)

    def close(self) -> None:
        self.vm.close()


def at_least_peer(row: Row) -> bool:
    """Ours is at least as good as the peer (higher is better)."""
    return row.ratio is not None and row.ratio >= 1.0
