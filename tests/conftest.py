"""Shared fixtures: the probe guest, built from tests/guest with gcc and make."""

from __future__ import annotations

import re
import subprocess
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
def probe_bzimage(probe_dir: Path) -> Path:
    return probe_dir / "probe.bzImage"


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
