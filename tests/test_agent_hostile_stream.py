"""A hostile guest agent: what its replies and tree streams (``copy_from``) can and cannot do on the host.

The other end of the connection is a real peer speaking the agent protocol with crafted frames
(what a compromised guest can send); the client is the very code ``vm.copy_from`` and
``vm.run`` use. Nothing it sends may create, change or reach a host file outside the
destination, plant setuid/setgid bits, or escape as anything but :class:`VmAgentError`.
"""

from __future__ import annotations

import os
import resource
import socket
import stat
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vmm_reference import VmAgentError
from vmm_reference.agent import DATA, END, ENTRY, EXIT, GET, STDOUT, Client


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BI", kind, len(payload)) + payload


def entry(kind: bytes, mode: int, rel: str, target: str = "") -> bytes:
    payload = kind + struct.pack("<I", mode) + rel.encode() + b"\0"
    if target:
        payload += target.encode() + b"\0"
    return frame(ENTRY, payload)


class HostileAgent:
    """The guest side of one connection: reads the request, answers with the given bytes, then hangs up."""

    def __init__(self, reply: bytes) -> None:
        self.host, self.guest = socket.socketpair()
        self.reply = reply
        self.request = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.guest:
            header = self.guest.recv(5, socket.MSG_WAITALL)
            if len(header) < 5:
                return  # the client sent nothing (it refused its own arguments)
            (n,) = struct.unpack_from("<I", header, 1)
            self.request = header + self.guest.recv(n, socket.MSG_WAITALL) if n else header
            try:
                self.guest.sendall(self.reply)
            except OSError:
                pass

    def client(self) -> Client:
        return Client(self.host)


def copy_from(reply: bytes, dest: Path) -> None:
    agent = HostileAgent(reply)
    with agent.client() as client:
        try:
            client.get("/guest/tree", dest, timeout=10)
        finally:
            agent.thread.join(10)
    assert agent.request[0] == GET


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory the guest must not reach; it holds one file."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious").write_text("host data")
    return d


def test_a_file_through_a_symlink_the_stream_made_is_refused(tmp_path, outside):
    dest = tmp_path / "dest"
    reply = (entry(b"d", 0o755, "") + entry(b"l", 0o777, "x", str(outside))
             + entry(b"f", 0o644, "x/planted") + frame(DATA, b"pwned") + frame(DATA) + frame(END))
    with pytest.raises(VmAgentError, match=r"'x/planted'.*symbolic link"):
        copy_from(reply, dest)
    assert files_under(outside) == {"precious"}
    assert os.readlink(dest / "x") == str(outside)  # the link itself is made, never followed


def test_a_directory_entry_over_a_symlink_is_not_followed(tmp_path, outside):
    dest = tmp_path / "dest"
    reply = (entry(b"d", 0o755, "") + entry(b"l", 0o777, "x", str(outside)) + entry(b"d", 0o777, "x")
             + entry(b"f", 0o644, "x/precious") + frame(DATA, b"pwned") + frame(DATA) + frame(END))
    copy_from(reply, dest)
    # The directory entry replaced the link: the file landed in dest/x, not in outside/.
    assert (outside / "precious").read_text() == "host data"
    assert (dest / "x" / "precious").read_bytes() == b"pwned"
    assert not (dest / "x").is_symlink()


def test_a_top_level_symlink_then_files_beneath_it_are_refused(tmp_path, outside):
    dest = tmp_path / "dest"
    reply = entry(b"l", 0o777, "", str(outside)) + entry(b"f", 0o644, "planted") + frame(DATA, b"x") + frame(DATA)
    with pytest.raises(VmAgentError, match="'planted'"):
        copy_from(reply + frame(END), dest)
    assert files_under(outside) == {"precious"}


@pytest.mark.parametrize("rel", ["../escape", "/abs/path", "a/../../escape", "a//b", "./a", "a/."])
def test_entries_outside_the_copy_are_refused(tmp_path, outside, rel):
    reply = entry(b"d", 0o755, "") + entry(b"f", 0o644, rel) + frame(DATA, b"x") + frame(DATA) + frame(END)
    with pytest.raises(VmAgentError, match="outside the copy"):
        copy_from(reply, tmp_path / "dest")
    assert files_under(tmp_path) - {"dest"} == {"outside", "outside/precious"}


def test_setuid_setgid_and_sticky_bits_never_reach_the_host(tmp_path):
    dest = tmp_path / "dest"
    reply = (entry(b"d", 0o1777, "") + entry(b"f", 0o104755, "suid") + frame(DATA, b"#!") + frame(DATA)
             + entry(b"f", 0o2755, "sgid") + frame(DATA) + entry(b"d", 0o3777, "dir") + frame(END))
    copy_from(reply, dest)
    for name, mode in (("", 0o777), ("suid", 0o755), ("sgid", 0o755), ("dir", 0o777)):
        assert stat.S_IMODE((dest / name).stat().st_mode) == mode, name


def test_an_existing_hard_link_is_replaced_not_written_through(tmp_path, outside):
    dest = tmp_path / "dest"
    (dest / "tree").mkdir(parents=True)  # a copy of the guest's /guest/tree made earlier
    os.link(outside / "precious", dest / "tree" / "f")
    copy_from(entry(b"d", 0o755, "") + entry(b"f", 0o644, "f") + frame(DATA, b"new") + frame(DATA) + frame(END),
              dest)  # an existing directory: into dest/tree, as cp -r does
    assert (dest / "tree" / "f").read_bytes() == b"new"
    assert (outside / "precious").read_text() == "host data"


@pytest.mark.parametrize("reply, message", [
    (frame(ENTRY, b"f\x00"), "malformed ENTRY"),
    (frame(ENTRY, b"f" + struct.pack("<I", 0o644) + b"no-terminator"), "malformed ENTRY"),
    (entry(b"l", 0o777, ""), "without a target"),
    (entry(b"?", 0o644, "x"), "unknown kind"),
    (frame(DATA, b"orphan"), "outside a file"),
    (frame(DATA), "never started"),
    (entry(b"f", 0o644, "") + frame(DATA, b"x") + frame(END), "inside file"),
    (entry(b"d", 0o755, "") + entry(b"f", 0o644, "a") + entry(b"f", 0o644, "b"), "before the end of file"),
    (frame(EXIT, b"\x01"), "frame type 0x84 during GET"),
    (struct.pack("<BI", DATA, 1 << 30), "frame of 1073741824 bytes"),
    (entry(b"d", 0o755, "")[:7], "closed the connection"),
    (b"", "closed the connection"),
])
def test_malformed_streams_raise_vm_agent_error(tmp_path, reply, message):
    with pytest.raises(VmAgentError, match=message):
        copy_from(reply, tmp_path / "dest")


def test_a_short_exit_frame_is_a_vm_agent_error():
    agent = HostileAgent(frame(STDOUT, b"hi") + frame(EXIT, b"\x00\x00"))
    with agent.client() as client, pytest.raises(VmAgentError, match="malformed EXIT") as e:
        client.run(["true"], timeout=10)
    assert e.value.stdout == b"hi"


def test_output_past_max_output_is_dropped_and_the_command_killed():
    # This peer never stops writing until told: the client must send KILL, keep at most
    # max_output bytes, and raise once the agent reports the end.
    host, guest = socket.socketpair()
    killed = threading.Event()

    def serve() -> None:
        with guest:
            guest.settimeout(10)
            chunk = frame(STDOUT, b"y" * 65536)
            buf = b""
            while not killed.is_set():
                guest.sendall(chunk)
                try:
                    guest.setblocking(False)
                    buf += guest.recv(65536)
                except BlockingIOError:
                    pass
                finally:
                    guest.setblocking(True)
                if b"\x04" in buf:  # a KILL frame
                    killed.set()
            guest.sendall(frame(EXIT, struct.pack("<i", -9)))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with Client(host) as client, pytest.raises(VmAgentError, match=r"max_output=1000000 bytes; it was killed") as e:
        client.run(["yes"], max_output=1_000_000, timeout=30)
    t.join(10)
    assert killed.is_set()
    assert 0 < len(e.value.stdout) <= 1_000_000


def test_max_output_is_checked():
    agent = HostileAgent(b"")
    with agent.client() as client, pytest.raises(ValueError, match=r"max_output=-1: expected None or a number"):
        client.run(["true"], max_output=-1)


def test_the_client_waits_on_descriptors_above_1023(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
    try:
        agent = HostileAgent(entry(b"f", 0o644, "") + frame(DATA, b"data") + frame(DATA) + frame(END))
        assert agent.host.fileno() > 1023
        with agent.client() as client:
            client.get("/guest/f", tmp_path / "f", timeout=10)
        assert (tmp_path / "f").read_bytes() == b"data"
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


_names = st.sampled_from(["a", "b", "x", "..", ".", "", "a/b", "x/y", "/abs", "a/../b", "x/precious"])
_entries = st.one_of(
    st.tuples(st.just(b"d"), st.integers(0, 0xFFFFFFFF), _names).map(lambda t: entry(t[0], t[1], t[2])),
    st.tuples(st.just(b"f"), st.integers(0, 0xFFFFFFFF), _names, st.binary(max_size=64)).map(
        lambda t: entry(t[0], t[1], t[2]) + frame(DATA, t[3]) + frame(DATA)),
    st.tuples(_names, st.sampled_from(["OUTSIDE", "..", "/", "a", "OUTSIDE/precious"])).map(
        lambda t: (t[0], t[1])),
    st.binary(max_size=24).map(lambda b: frame(ENTRY, b)),
    st.binary(max_size=16).map(lambda b: frame(DATA, b)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(_entries, max_size=8))
def test_any_stream_stays_inside_the_destination(tmp_path_factory, stream):
    """Property: whatever entries arrive in whatever order, nothing outside dest changes, no
    setuid/setgid bit appears, and the only exception is VmAgentError."""
    base = tmp_path_factory.mktemp("tree")
    outside = base / "outside"
    outside.mkdir()
    (outside / "precious").write_text("host data")
    reply = b""
    for part in stream:
        if isinstance(part, tuple):  # a symlink, whose target may point outside
            reply += entry(b"l", 0o777, part[0], part[1].replace("OUTSIDE", str(outside)))
        else:
            reply += part
    try:
        copy_from(reply + frame(END), base / "dest")
    except VmAgentError:
        pass
    assert files_under(outside) == {"precious"}
    assert (outside / "precious").read_text() == "host data"
    assert set(os.listdir(base)) <= {"outside", "dest"}
    # Walked without following links: a link the stream made may point anywhere (even "/").
    dest = base / "dest"
    if dest.is_dir() and not dest.is_symlink():
        for root, dirs, files in os.walk(dest, followlinks=False):
            for name in [*dirs, *files]:
                st_mode = os.lstat(os.path.join(root, name)).st_mode
                assert stat.S_ISLNK(st_mode) or st_mode & 0o7000 == 0, os.path.join(root, name)
        assert os.lstat(dest).st_mode & 0o7000 == 0
