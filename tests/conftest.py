"""Shared fixtures: the probe guest, built from tests/guest with gcc and make."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GUEST_DIR = Path(__file__).parent / "guest"
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def probe_dir() -> Path:
    subprocess.run(["make", "-s", "-C", str(GUEST_DIR)], check=True)
    return GUEST_DIR / "build"


@pytest.fixture(scope="session")
def probe_elf(probe_dir: Path) -> Path:
    return probe_dir / "probe.elf"


@pytest.fixture(scope="session")
def native_cli(pytestconfig: pytest.Config) -> Path:
    """The native ``vmm-reference`` program the wheel installs beside this interpreter."""
    from vmm_reference.pytest_plugin import skip_or_fail

    installed = Path(sys.executable).parent / "vmm-reference"
    if installed.is_file() and installed.read_bytes()[:4] == b"\x7fELF":
        return installed
    skip_or_fail(pytestconfig, f"no native vmm-reference program at {installed}: install the package "
                 "with maturin or from its wheel (build.rs builds the program)")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def probe_bzimage(probe_dir: Path) -> Path:
    return probe_dir / "probe.bzImage"


@pytest.fixture
def agent_vm(vm_factory, guest_assets):
    """The Debian guest, started, its guest agent answering over vsock (full-boot tests)."""
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="reboot=k panic=-1 quiet", vsock=True)
    vm.start()
    vm.wait_ready(timeout=120)
    return vm


@dataclass
class ProbeReport:
    """What the probe guest printed about its boot."""

    entry: int = 0
    zero_page: int = 0
    loader: int = 0
    cmdline: str = ""
    e820: list[tuple[int, int, int]] = field(default_factory=list)
    initrd_addr: int = 0
    initrd_size: int = 0
    initrd_fnv: int = 0
    hypervisor_bit: int = 0
    signature: str = ""
    apic_id: int = -1
    logical: int = 0
    tsc_deadline: int = 0
    i8042: dict[str, int] = field(default_factory=dict)
    done: bool = False


def parse_probe(log: str) -> ProbeReport:
    r = ProbeReport()
    for line in log.splitlines():
        if not line.startswith("PROBE: "):
            continue
        body = line[len("PROBE: "):]
        if body.startswith("cmdline="):
            r.cmdline = body[len("cmdline="):]
        elif body.startswith("e820 ") and "count" not in body:
            a, s, t = body.split()[1:]
            r.e820.append((int(a, 16), int(s, 16), int(t)))
        elif body == "done":
            r.done = True
        else:
            kv = dict(re.findall(r"(\w+)=(\S+)", body))
            num = {k: int(v, 0) for k, v in kv.items() if re.fullmatch(r"0x[0-9a-f]+|\d+", v)}
            if body.startswith("entry="):
                r.entry, r.zero_page = num["entry"], num["zero_page"]
            elif body.startswith("loader="):
                r.loader = num["loader"]
            elif body.startswith("initrd "):
                r.initrd_addr, r.initrd_size, r.initrd_fnv = num["addr"], num["size"], num["fnv"]
            elif body.startswith("cpuid "):
                r.hypervisor_bit, r.apic_id, r.logical = num["hypervisor_bit"], num["apic_id"], num["logical"]
                r.signature = kv["signature"]
                r.tsc_deadline = num["tsc_deadline"]
            elif body.startswith("i8042 "):
                r.i8042 = {k: num.get(k, -1) for k in kv}
    return r


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _value(v: str):
    return int(v, 0) if re.fullmatch(r"0x[0-9a-f]+|\d+", v) else v


@dataclass
class BlkReport:
    """What the probe guest printed in ``probe.blk=test|bad|list`` mode.

    ``virtio``: one dict per ``PROBE: virtio dev=`` line (base, len, gsi, magic, version,
    device_id), in DSDT order; ``blk``: per device index, every ``key=value`` of its
    ``PROBE: blk dev=N ...`` lines merged (``serial`` is the rest of its line; ``ok``, ``timeout``
    and ``failed`` are flags); ``bad``: per hostile case of ``probe.blk=bad``, its values;
    ``survived``: the values of the final ``PROBE: blk bad survived`` line; ``dsdt``: whether
    the DSDT describes COM1 and the i8042 (``com1``, ``i8042``: 0 or 1)."""

    count: int = -1
    source: str = ""
    dsdt: dict = field(default_factory=dict)
    virtio: list[dict] = field(default_factory=list)
    blk: dict[int, dict] = field(default_factory=dict)
    bad: dict[str, dict] = field(default_factory=dict)
    survived: dict | None = None


def parse_blk(log: str) -> BlkReport:
    r = BlkReport()
    for line in log.splitlines():
        if not line.startswith("PROBE: "):
            continue
        body = line[len("PROBE: "):]
        serial = None
        if " serial=" in body:
            body, serial = body.split(" serial=", 1)
        kv = {k: _value(v) for k, v in re.findall(r"(\w+)=(\S*)", body)}
        words = body.split()
        if body.startswith("dsdt "):
            r.dsdt = kv
        elif body.startswith("virtio count="):
            r.count, r.source = kv["count"], kv["source"]
        elif body.startswith("virtio dev="):
            r.virtio.append(kv)
        elif body.startswith("blk dev="):
            d = r.blk.setdefault(kv.pop("dev"), {})
            d.update(kv)
            if serial is not None:
                d["serial"] = serial
            for flag in ("ok", "timeout", "failed"):
                if flag in words[2:3]:
                    d[flag] = True
        elif body.startswith("blk bad survived"):
            r.survived = kv
        elif body.startswith("blk bad "):
            r.bad[words[2]] = kv
    return r


@dataclass
class NetReport:
    """What the probe guest printed in ``probe.net=ping|bad`` mode (its driver is tests/guest/net.c).

    ``dev``: the ``PROBE: net dev=`` line's values (dev, base, gsi, features, mac, status,
    driver_features, max_pairs, rx_size, tx_size); ``arp``: ``peer_mac`` and ``tries``;
    ``pings``: one dict per ``PROBE: net ping`` line (seq, reply, ttl); ``udp``: the
    ``PROBE: net udp`` values (sent, tries, len); ``udp_got``: the received payload (the rest
    of its line) or None; ``stats``: the last ``PROBE: net stats`` line; ``timeouts``: where
    it timed out (the word after ``timeout``); ``failed``: the reason after ``PROBE: net
    failed``; ``bad``: per hostile case of ``probe.net=bad``, its values (``flood`` too);
    ``survived``: the ``PROBE: net bad survived`` values; ``bench``: a ``PROBE: bench nettx``
    line's values; ``done``: ``PROBE: net done`` was seen."""

    dev: dict = field(default_factory=dict)
    arp: dict = field(default_factory=dict)
    pings: list[dict] = field(default_factory=list)
    udp: dict = field(default_factory=dict)
    udp_got: str | None = None
    stats: dict = field(default_factory=dict)
    timeouts: list[str] = field(default_factory=list)
    failed: str | None = None
    bad: dict[str, dict] = field(default_factory=dict)
    survived: dict | None = None
    bench: dict | None = None
    done: bool = False


def parse_net(log: str) -> NetReport:
    r = NetReport()
    for line in log.splitlines():
        if not line.startswith("PROBE: "):
            continue
        body = line[len("PROBE: "):]
        if body.startswith("net udp got="):
            r.udp_got = body[len("net udp got="):]
            continue
        kv = {k: _value(v) for k, v in re.findall(r"(\w+)=(\S*)", body)}
        words = body.split()
        if body.startswith("net dev="):
            r.dev = kv
        elif body.startswith("net arp "):
            r.arp = kv
        elif body.startswith("net ping "):
            r.pings.append(kv)
        elif body.startswith("net udp "):
            r.udp.update(kv)
        elif body.startswith("net stats "):
            r.stats = kv
        elif body.startswith("net timeout "):
            r.timeouts.append(words[2])
        elif body.startswith("net failed "):
            r.failed = words[2]
        elif body.startswith("net bad survived"):
            r.survived = kv
        elif body.startswith("net bad ") and len(words) > 2:
            r.bad[words[2]] = kv
        elif body.startswith("bench nettx"):
            r.bench = kv
        elif body == "net done":
            r.done = True
    return r


@dataclass
class VsockReport:
    """What the probe guest printed in ``probe.vsock=info|test|bad`` mode (and its vsock benches).

    Each ``PROBE: vsock ...`` line becomes a dict of its ``key=value`` pairs (numbers as ints):
    ``dev`` (the device line: base, gsi, features, cid, ...), ``out`` (the guest's connection to
    the host: response, end, and ``got``, the rest of its line: the host's reply), ``refused``,
    ``listening`` (ports), ``echo`` and ``credit`` (one dict per connection, in the order they
    closed), ``bad`` (per hostile case of ``probe.vsock=bad``), ``reinit`` (the device set up
    again after a case), ``survived``, ``stats``, ``timeouts`` (where the probe gave up
    waiting), ``failed`` (``init=...`` when the driver could not start), ``done`` (the
    ``END`` command came), ``bench`` (a ``PROBE: bench vsockrx|vsocktx`` line)."""

    dev: dict | None = None
    out: dict | None = None
    refused: dict | None = None
    listening: list[int] = field(default_factory=list)
    echo: list[dict] = field(default_factory=list)
    credit: list[dict] = field(default_factory=list)
    bad: dict[str, dict] = field(default_factory=dict)
    reinit: list[dict] = field(default_factory=list)
    survived: dict | None = None
    stats: dict | None = None
    timeouts: list[str] = field(default_factory=list)
    failed: dict | None = None
    done: bool = False
    bench: dict | None = None


def vsock_values(body: str) -> dict:
    """The ``key=value`` pairs of a vsock report line (after ``PROBE: ``); ``got=`` takes the rest."""
    got = None
    if " got=" in body:
        body, got = body.split(" got=", 1)
    kv = {k: _value(v) for k, v in re.findall(r"(\w+)=(\S*)", body)}
    if got is not None:
        kv["got"] = got
    return kv


def parse_vsock(log: str) -> VsockReport:
    r = VsockReport()
    for line in log.splitlines():
        if not line.startswith("PROBE: "):
            continue
        body = line[len("PROBE: "):].rstrip("\r")
        words = body.split()
        if body.startswith("bench vsock"):
            r.bench = {"kind": words[1], "failed": words[3] if words[2:3] == ["failed"] else None, **vsock_values(body)}
            continue
        if not body.startswith("vsock "):
            continue
        kv = vsock_values(body)
        kind = words[1]
        if kind.startswith("dev="):
            r.dev = kv
        elif kind == "out":
            r.out = kv
        elif kind == "refused":
            r.refused = kv
        elif kind == "listening":
            r.listening.append(kv["port"])
        elif kind == "echo":
            r.echo.append(kv)
        elif kind == "credit":
            r.credit.append(kv)
        elif kind == "bad" and words[2] == "reinit":
            r.reinit.append(kv)
        elif kind == "bad" and words[2] == "survived":
            r.survived = kv
        elif kind == "bad":
            r.bad[words[2]] = kv
        elif kind == "stats":
            r.stats = kv
        elif kind == "timeout":
            r.timeouts.append(words[2])
        elif kind == "failed":
            r.failed = kv
        elif kind == "done":
            r.done = True
    return r


@pytest.fixture
def adopt():
    """Closes the VMs a test restores or forks (``adopt([vm, ...])``) when it ends."""
    made: list = []
    yield made.extend
    for vm in made:
        vm.close()


@pytest.fixture
def gdb_bin(request) -> str:
    """Debian's gdb, which .ci/run installs."""
    from vmm_reference.pytest_plugin import skip_or_fail

    path = shutil.which("gdb")
    if not path:
        skip_or_fail(request.config, "gdb is missing (Debian's gdb, which .ci/run installs)")
    return path
