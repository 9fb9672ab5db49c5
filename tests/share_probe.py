"""What the probe's two share clients (tests/guest/fs.c for virtio-fs, p9.c for virtio-9p)
have in common on the host side: the tree each test shares, a snapshot of it to compare
after, and the parsing of their ``PROBE: fs|p9 ...`` report lines."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmm_reference import Vm

HELLO = b"hello from the host\n"
INNER = b"inner\n"
WRITTEN = b"written by the guest\n"
BIG = bytes((i * 7 + 3) & 0xFF for i in range((1 << 20) + 123))
IN_NAMES = {"hello.txt", "dir", "escape", "up", "big.bin"}
F_VERSION_1 = 1 << 32
LIVE, NEEDS_RESET = 0xF, 0x40
EROFS, EMFILE, ENFILE, ENOSYS, EOPNOTSUPP, ELOOP, EINVAL, ENOENT, EBADF = 30, 24, 23, 38, 95, 40, 22, 2, 9


def _number(v: str):
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    if re.fullmatch(r"0x[0-9a-f]+", v):
        return int(v, 16)
    return v


def unescape(text: str) -> bytes:
    """data= as the probe prints it: printable ASCII, ``\\n``, ``\\\\`` and ``\\xHH``."""
    def one(m: re.Match) -> bytes:
        e = m.group(1)
        return b"\n" if e == b"n" else b"\\" if e == b"\\" else bytes([int(e[1:], 16)])
    return re.sub(rb"\\(n|\\|x[0-9a-f]{2})", one, text.encode("latin-1"))


def values(body: str) -> dict:
    """The ``key=value`` pairs of a report line (numbers as ints); ``data=`` is the rest of the
    line, as bytes."""
    data = None
    if " data=" in body:
        body, data = body.split(" data=", 1)
    kv = {k: _number(v) for k, v in re.findall(r"(\w+)=(\S*)", body)}
    if data is not None:
        kv["data"] = unescape(data)
    return kv


@dataclass
class Report:
    """What a share client printed (``PROBE: <client> ...`` lines).

    ``devs``: one dict per ``dev=`` line; ``named``: the lines with a ``name=`` (read, release,
    getattr), by their first word and name; ``escape``/``bad``: by ``case=``; ``reinits``:
    ``bad reinit`` lines; ``lines``: the other one-of-a-kind lines by their first word;
    ``malformed``: replies that broke the protocol; ``timeouts``: where the probe gave up
    waiting; ``failed``: why it could not start."""

    devs: list[dict] = field(default_factory=list)
    lines: dict[str, dict] = field(default_factory=dict)
    named: dict[str, dict[str, dict]] = field(default_factory=dict)
    escape: dict[str, dict] = field(default_factory=dict)
    bad: dict[str, dict] = field(default_factory=dict)
    reinits: list[dict] = field(default_factory=list)
    malformed: list[dict] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def reads(self) -> dict[str, dict]:
        return self.named.get("read", {})

    @property
    def releases(self) -> dict[str, dict]:
        return self.named.get("release", {})


def parse_report(log: str, client: str) -> Report:
    """The ``PROBE: <client> ...`` lines of ``log``."""
    r = Report()
    prefix = f"PROBE: {client} "
    for line in log.splitlines():
        line = line.rstrip("\r")
        if not line.startswith(prefix):
            continue
        body = line[len("PROBE: "):]
        words = body.split()
        kind = words[1]
        kv = values(body)
        if kind.startswith("dev="):
            r.devs.append(kv)
        elif "name" in kv and kind in ("read", "release", "getattr"):
            r.named.setdefault(kind, {})[kv["name"]] = kv
        elif kind == "escape":
            r.escape[kv["case"]] = kv
        elif kind == "bad" and words[2] == "reinit":
            r.reinits.append(kv)
        elif kind == "bad":
            r.bad[kv["case"]] = kv
        elif kind == "malformed":
            r.malformed.append(kv)
        elif kind == "timeout":
            r.timeouts.append(words[2])
        elif kind == "failed":
            r.failed.append(" ".join(words[2:]))
        elif kind == "done":
            r.done = True
        else:
            r.lines[kind] = kv
    return r


@dataclass
class Run:
    """One ``probe.<client>=test`` run on a fresh share: the tree before and after, beside it
    too, the VM's devices, how it stopped, its console and the parsed report."""

    rw: bool
    root: Path
    share: Path
    secret: bytes
    before: dict
    after: dict
    outside_before: list[str]
    outside_after: list[str]
    devices: list
    reason: str
    log: str
    report: Report

    def __repr__(self) -> str:  # pytest prints fixtures' values
        return f"<probe run rw={self.rw} reason={self.reason} lines={len(self.log.splitlines())}>"


def probe_run(root: Path, probe_elf: Path, client: str, tag: str, rw: bool, protocol: str, timeout: float) -> Run:
    """Boots the probe with ``probe.<client>=test`` (and ``probe.<client>_rw=1`` when ``rw``) on
    a fresh tree under ``root`` shared as ``tag`` over ``protocol``; waits for it to end."""
    from vmm_reference import Share, Vm

    share, secret = make_tree(root)
    before, outside_before = snapshot(share), sorted(os.listdir(root))
    cmdline = f"probe.{client}=test" + (f" probe.{client}_rw=1" if rw else "")
    with Vm(kernel=probe_elf, cmdline=cmdline, transport="mmio",
            shares=[Share(share, tag=tag, read_only=not rw, protocol=protocol)]) as vm:
        devices = list(vm.boot_info.devices)
        vm.start()
        status = vm.wait(timeout=timeout)
        log = vm.console_log
    return Run(rw, root, share, secret, before, snapshot(share), outside_before, sorted(os.listdir(root)),
               devices, status.reason, log, parse_report(log, client))


def make_tree(root: Path) -> tuple[Path, bytes]:
    """The share and the secret beside it, under `root`; returns the share and the secret."""
    secret = b"outside-secret-" + secrets.token_hex(16).encode() + b"\n"
    (root / "outside-secret").write_bytes(secret)
    share = root / "share"
    share.mkdir()
    (share / "hello.txt").write_bytes(HELLO)
    (share / "dir").mkdir()
    (share / "dir" / "inner.txt").write_bytes(INNER)
    (share / "escape").symlink_to("/etc")
    (share / "up").symlink_to("../outside-secret")
    (share / "big.bin").write_bytes(BIG)
    return share, secret


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry under `top` (links not followed): kind, mode, link count, content or target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                v: tuple = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                v = ("dir", stat.S_IMODE(st.st_mode))
            else:
                v = ("file", stat.S_IMODE(st.st_mode), st.st_nlink, p.read_bytes())
            out[str(p.relative_to(top))] = v
    return out


def lab_tree(root: Path) -> dict[str, str]:
    """The full-boot tests' tree: a big file, nested directories and links out of it (and a
    secret beside it, outside the share); its sha256s by path."""
    (root / "dir" / "deeper").mkdir(parents=True)
    files = {"hello.txt": b"hello from the host\n", "dir/inner.txt": b"inner\n",
             "dir/deeper/big.bin": bytes((i * 7 + 3) & 0xFF for i in range(3 << 20))}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root.parent / "outside-secret").write_bytes(b"do not read me\n")
    os.symlink("/etc", root / "escape")
    os.symlink("../outside-secret", root / "up")
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def sh(vm: Vm, cmd: str, ok: bool = True) -> str:
    """``cmd`` in the guest's shell, through the agent: its output (and errors); asserts it
    succeeded unless ``ok`` is False."""
    r = vm.run(["sh", "-c", cmd], text=True, timeout=120)
    if ok:
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout + r.stderr
