"""The host side of the guest agent's protocol: run commands in the guest, copy files in and out.

The guest runs ``vmm-agent`` (``python/vmm_reference/guest_agent/agent.c``; the asset initramfs and root filesystem
start it), which listens on vsock port :data:`AGENT_PORT`. :class:`Client` speaks its protocol
over any connected stream socket: :meth:`Vm.run <vmm_reference.Vm.run>` and friends give it one
from :attr:`Vm.vsock <vmm_reference.Vm.vsock>`; the tests give it a UNIX socket to an agent
running on the host (``vmm-agent --listen-unix PATH``). ``docs/agent.md`` describes the frames.

Memory stays bounded: output is handed on (or appended to the result) one chunk of at most
64 KiB at a time, input is sent one chunk at a time as the agent acknowledges the previous one,
and files are streamed in chunks.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any, Callable, Optional, Union

from .errors import VmAgentError, VmConfigError, VmTimeoutError
from .tree_writer import TreeWriter

__all__ = ["AGENT_PORT", "CHUNK", "DEFAULT_MAX_OUTPUT", "Client", "Command", "Input", "argv_of"]

AGENT_PORT = 52
"""The vsock port ``vmm-agent`` listens on."""

CHUNK = 64 * 1024
"""The largest data payload in a frame (output, input, file data)."""

DEFAULT_MAX_OUTPUT = 1 << 30
"""How many bytes of stdout and stderr together :meth:`Client.run` captures by default (1 GiB)."""

_HDR = 5
_MAX_FRAME = 1 << 20
_POLL = 0.5  # seconds between liveness checks while waiting

# Frame types (docs/agent.md). Requests and host-sent frames below 0x80, agent-sent from 0x80.
PING, EXEC, STDIN, KILL, PUT, GET, ENTRY, DATA, END = range(0x01, 0x0A)
PONG, STDOUT, STDERR, EXIT, STDIN_ACK, OK, ERROR = range(0x81, 0x88)

Command = Union[str, Sequence[Union[str, bytes, "os.PathLike[str]"]]]
"""What :meth:`Client.run` takes: a shell command line (run by ``/bin/sh -c``) or an argv list."""

Input = Union[bytes, bytearray, memoryview, str, IO[bytes], None]
"""A command's stdin: bytes (or str, UTF-8 encoded), a binary file object, or None (empty)."""


class _Cancelled(Exception):
    """The request was abandoned (its asyncio task was cancelled)."""


def _frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack("<BI", kind, len(payload)) + payload


def _cstr(value: Union[str, bytes, os.PathLike[str]], what: str) -> bytes:
    raw = os.fsencode(value)
    if b"\0" in raw:
        raise VmConfigError(f"invalid {what}={value!r}: contains a NUL byte")
    return raw + b"\0"


def argv_of(cmd: Command) -> list[bytes]:
    """Return the argv a command runs as: ``/bin/sh -c CMD`` for a str, the list itself otherwise."""
    if isinstance(cmd, str):
        return [b"/bin/sh", b"-c", _cstr(cmd, "cmd")[:-1]]
    if isinstance(cmd, bytes) or not isinstance(cmd, Sequence) or not cmd:
        raise VmConfigError(f"invalid cmd={cmd!r}: expected a str (a shell command) or a non-empty list")
    return [_cstr(a, f"cmd[{i}]")[:-1] for i, a in enumerate(cmd)]


class Client:
    """A connection to a guest agent: :meth:`ping`, :meth:`exec`, :meth:`run`, :meth:`put`, :meth:`get`.

    ``sock`` is a connected stream socket (the client makes it non-blocking and owns it:
    :meth:`close`, or use ``with``). ``check`` is called about every half second while the
    client waits, and whenever the connection breaks: it raises if the other end is known to
    be gone (:class:`~vmm_reference.Vm` passes one raising
    :class:`~vmm_reference.VmExitedError` once the VM has exited). Requests run one at a time.
    """

    def __init__(self, sock: socket.socket, check: Optional[Callable[[], None]] = None) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._check = check
        self._rbuf = bytearray()

    def close(self) -> None:
        """Close the connection (a command still running in the guest is killed)."""
        self._sock.close()

    def __enter__(self) -> Client:
        """Return the client itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connection."""
        self.close()

    # ---- low-level I/O ----

    def _lost(self, detail: str = "") -> VmAgentError:
        """Handle a broken connection: raise the checker's error if it has one, else return a VmAgentError."""
        if self._check is not None:
            self._check()
        message = self._pending_error()
        return VmAgentError(message or f"the guest agent closed the connection{detail}")

    def _pending_error(self) -> Optional[str]:
        """Return the ERROR frame the agent sent before it closed the connection, if one can still be read."""
        try:
            while True:
                data = self._sock.recv(CHUNK)
                if not data:
                    break
                self._rbuf += data
        except OSError:
            pass
        buf = self._rbuf
        while len(buf) >= _HDR:
            kind, n = struct.unpack_from("<BI", buf)
            if len(buf) < _HDR + n:
                break
            if kind == ERROR:
                return bytes(buf[_HDR:_HDR + n]).decode("utf-8", "replace")
            del buf[:_HDR + n]
        return None

    def _wait(self, read: bool, write: bool, deadline: Optional[float], extra: Sequence[int] = (),
              cancel: Optional[threading.Event] = None) -> tuple[bool, bool, list[int]]:
        """Wait until the socket is readable/writable (or an ``extra`` fd readable); check liveness."""
        while True:
            if cancel is not None and cancel.is_set():
                raise _Cancelled()
            wait = _POLL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise _Deadline()
            # poll, not select: select cannot wait on a descriptor numbered 1024 or above.
            poller = select.poll()
            mine = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
            if mine:
                poller.register(self._sock.fileno(), mine)
            for fd in extra:
                poller.register(fd, select.POLLIN)
            events = dict(poller.poll(max(0, int(wait * 1000) + 1)))
            if events:
                sock_events = events.pop(self._sock.fileno(), 0)
                broken = bool(sock_events & (select.POLLERR | select.POLLHUP | select.POLLNVAL))
                return (bool(sock_events & select.POLLIN) or (read and broken),
                        bool(sock_events & select.POLLOUT) or (write and broken), list(events))
            if self._check is not None:
                self._check()

    def _send_all(self, data: bytes, deadline: Optional[float] = None) -> None:
        view = memoryview(data)
        while view:
            try:
                n = self._sock.send(view)
            except BlockingIOError:
                self._wait(False, True, deadline)
                continue
            except (BrokenPipeError, ConnectionResetError) as e:
                raise self._lost(f" ({e.strerror})") from None
            view = view[n:]

    def _fill(self) -> None:
        """Read what the socket has (at most one frame's worth beyond what is buffered)."""
        need = _HDR + CHUNK
        if len(self._rbuf) >= _HDR:
            need = max(1, _HDR + struct.unpack_from("<I", self._rbuf, 1)[0] - len(self._rbuf))
        try:
            data = self._sock.recv(min(max(need, CHUNK), _MAX_FRAME))
        except BlockingIOError:
            return
        except ConnectionResetError as e:
            raise self._lost(f" ({e.strerror})") from None
        if not data:
            raise self._lost()
        self._rbuf += data

    def _next_frame(self) -> Optional[tuple[int, bytes]]:
        """Take one complete frame out of the buffer, if there is one."""
        buf = self._rbuf
        if len(buf) < _HDR:
            return None
        kind, n = struct.unpack_from("<BI", buf)
        if n > _MAX_FRAME:
            raise VmAgentError(f"the guest agent sent a frame of {n} bytes (type 0x{kind:02x}): not the agent?")
        if len(buf) < _HDR + n:
            return None
        payload = bytes(buf[_HDR:_HDR + n])
        del buf[:_HDR + n]
        return kind, payload

    def _recv_frame(self, deadline: Optional[float] = None) -> tuple[int, bytes]:
        while True:
            frame = self._next_frame()
            if frame is not None:
                if frame[0] == ERROR:
                    raise VmAgentError(f"the guest agent: {frame[1].decode('utf-8', 'replace')}")
                return frame
            self._wait(True, False, deadline)
            self._fill()

    @staticmethod
    def _deadline(timeout: Optional[float]) -> Optional[float]:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise VmConfigError(f"invalid timeout={timeout!r}: expected None or seconds >= 0")
        return time.monotonic() + timeout

    # ---- requests ----

    def ping(self, timeout: Optional[float] = 10.0) -> str:
        """Check that the agent answers; return its version string. :class:`VmTimeoutError` if it does not."""
        deadline = self._deadline(timeout)
        try:
            self._send_all(_frame(PING), deadline)
            kind, payload = self._recv_frame(deadline)
        except _Deadline:
            raise VmTimeoutError(f"the guest agent did not answer PING within {timeout} s") from None
        if kind != PONG:
            raise VmAgentError(f"the guest agent answered PING with frame type 0x{kind:02x}")
        return payload.decode("utf-8", "replace")

    def exec(
        self,
        argv: Sequence[Union[str, bytes, os.PathLike[str]]],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Union[str, os.PathLike[str], None] = None,
        input: Input = None,
        timeout: Optional[float] = None,
        stdout: Optional[Callable[[bytes], object]] = None,
        stderr: Optional[Callable[[bytes], object]] = None,
        cancel: Optional[threading.Event] = None,
        max_output: Optional[int] = None,
    ) -> int:
        """Run ``argv`` in the guest and return its exit code (``-N`` when killed by signal N).

        Each chunk of output (at most 64 KiB) is passed to ``stdout``/``stderr`` as it arrives
        (dropped when None). ``input`` is sent to the command's stdin, then end-of-file. After
        ``timeout`` seconds the command (its whole process group) is killed and
        :class:`VmTimeoutError` raised once the agent reports it ended. ``env`` adds to (or
        replaces variables of) the agent's environment; ``cwd`` is the working directory (the
        agent's, ``/``, by default). Once stdout and stderr together pass ``max_output`` bytes
        (None: no limit), the command is killed, the rest of its output dropped, and
        :class:`VmAgentError` raised naming ``max_output``.
        """
        if max_output is not None and (isinstance(max_output, bool) or not isinstance(max_output, int)
                                       or max_output < 0):
            raise VmConfigError(f"invalid max_output={max_output!r}: expected None or a number of bytes >= 0")
        if isinstance(argv, (str, bytes)) or not argv:
            raise VmConfigError(f"invalid argv={argv!r}: expected a non-empty list")
        env_items = []
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
                raise VmConfigError(f"invalid env entry {key!r}={value!r}: expected str names (without '=') "
                                    "and str values")
            env_items.append(_cstr(f"{key}={value}", "env"))
        payload = (struct.pack("<III", len(argv), len(env_items), 0) + _cstr(cwd if cwd is not None else "", "cwd")
                   + b"".join(_cstr(a, "argv") for a in argv) + b"".join(env_items))
        if len(payload) > _MAX_FRAME:
            raise VmConfigError(f"the command line and environment take {len(payload)} bytes; at most {_MAX_FRAME}")
        deadline = self._deadline(timeout)
        source: Optional[memoryview] = None
        fd: Optional[int] = None
        reader: Optional[IO[bytes]] = None
        if isinstance(input, str):
            source = memoryview(input.encode())
        elif isinstance(input, (bytes, bytearray, memoryview)):
            source = memoryview(input).cast("B")
        elif input is not None:
            try:
                fd = input.fileno()
            except (AttributeError, OSError, ValueError):
                reader = input
        sent_input = 0
        out = bytearray(_frame(EXEC, payload))
        awaiting_ack = False
        input_done = input is None
        if input_done:
            out += _frame(STDIN)
        killed_at: Optional[float] = None
        kill_reason = ""
        output = 0
        while True:
            if not awaiting_ack and not input_done and fd is None and len(out) < CHUNK:
                if source is not None:
                    chunk = bytes(source[sent_input:sent_input + CHUNK])
                    sent_input += len(chunk)
                else:
                    assert reader is not None
                    chunk = reader.read(CHUNK) or b""
                out += _frame(STDIN, chunk)
                awaiting_ack = bool(chunk)
                input_done = not chunk
            now = time.monotonic()
            if deadline is not None and now >= deadline and killed_at is None:
                kill_reason = "timeout"
            if kill_reason and killed_at is None:
                out += _frame(KILL, struct.pack("<I", 9))
                killed_at = now
            if killed_at is not None and now - killed_at > 10:
                raise VmAgentError("the guest agent did not report the end of a command it was asked to kill")
            want_input = fd is not None and not awaiting_ack and not input_done and not out
            wait_until = deadline if killed_at is None else killed_at + 11
            try:
                readable, writable, ready = self._wait(True, bool(out), wait_until,
                                                       [fd] if want_input and fd is not None else [], cancel)
            except _Deadline:
                continue
            if writable:
                try:
                    n = self._sock.send(out)
                except BlockingIOError:
                    n = 0
                except (BrokenPipeError, ConnectionResetError) as e:
                    raise self._lost(f" ({e.strerror})") from None
                del out[:n]
            if ready and fd is not None:
                chunk = os.read(fd, CHUNK)
                out += _frame(STDIN, chunk)
                awaiting_ack = bool(chunk)
                input_done = not chunk
            if readable:
                self._fill()
                while True:
                    frame = self._next_frame()
                    if frame is None:
                        break
                    kind, data = frame
                    if kind in (STDOUT, STDERR):
                        output += len(data)
                        if max_output is not None and output > max_output:
                            kill_reason = kill_reason or "output"
                        if kill_reason != "output":
                            sink = stdout if kind == STDOUT else stderr
                            if sink is not None:
                                sink(data)
                    elif kind == STDIN_ACK:
                        awaiting_ack = False
                    elif kind == EXIT:
                        if len(data) < 4:
                            raise VmAgentError(f"the guest agent sent a malformed EXIT frame ({len(data)} bytes)")
                        (code,) = struct.unpack_from("<i", data)
                        shown = list(map(os.fsdecode, argv))
                        if kill_reason == "timeout":
                            raise VmTimeoutError(f"the command {shown!r} did not finish "
                                                 f"within timeout={timeout} s; it was killed")
                        if kill_reason == "output":
                            raise VmAgentError(f"the command {shown!r} wrote more than max_output={max_output} "
                                               "bytes; it was killed")
                        return int(code)
                    elif kind == ERROR:
                        raise VmAgentError(f"the guest agent: {data.decode('utf-8', 'replace')}")
                    else:
                        raise VmAgentError(f"the guest agent sent frame type 0x{kind:02x} during EXEC")

    def run(
        self,
        cmd: Command,
        *,
        timeout: Optional[float] = None,
        input: Input = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Union[str, os.PathLike[str], None] = None,
        check: bool = False,
        text: bool = False,
        cancel: Optional[threading.Event] = None,
        max_output: Optional[int] = DEFAULT_MAX_OUTPUT,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``cmd`` and capture its output, as :meth:`Vm.run <vmm_reference.Vm.run>` documents."""
        argv = argv_of(cmd)
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            code = self.exec(argv, env=env, cwd=cwd, input=input, timeout=timeout, stdout=out.append,
                             stderr=err.append, cancel=cancel, max_output=max_output)
        except (VmTimeoutError, VmAgentError) as e:
            e.stdout, e.stderr = _output(out, text), _output(err, text)
            raise
        result: subprocess.CompletedProcess[Any] = subprocess.CompletedProcess(
            cmd, code, _output(out, text), _output(err, text))
        if check:
            result.check_returncode()
        return result

    def put(self, src: Union[str, os.PathLike[str]], dest: Union[str, os.PathLike[str]],
            timeout: Optional[float] = None) -> None:
        """Copy the host's file or directory tree ``src`` to ``dest`` in the guest (modes kept).

        Like ``cp -r``: into ``dest/<name of src>`` when ``dest`` is an existing directory.
        Symbolic links inside a tree are copied as links; other special files are skipped.
        """
        src_path = os.fspath(src)
        top = os.stat(src_path)  # FileNotFoundError and the like, before anything is sent
        if not (stat.S_ISREG(top.st_mode) or stat.S_ISDIR(top.st_mode)):
            raise VmConfigError(f"invalid src={src_path!r}: not a regular file or a directory")
        deadline = self._deadline(timeout)
        name = os.path.basename(src_path.rstrip("/"))
        try:
            self._send_all(_frame(PUT, _cstr(dest, "dest") + _cstr(name, "src")), deadline)
            self._put_tree(src_path, "", top, deadline)
            self._send_all(_frame(END), deadline)
            kind, payload = self._recv_frame(deadline)
        except _Deadline:
            raise VmTimeoutError(f"copying {src_path} to the guest's {os.fspath(dest)} took over {timeout} s") from None
        if kind != OK:
            raise VmAgentError(f"the guest agent answered PUT with frame type 0x{kind:02x}")

    def _put_tree(self, path: str, rel: str, st: os.stat_result, deadline: Optional[float]) -> None:
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode):
            self._send_all(_frame(ENTRY, b"f" + struct.pack("<I", mode) + _cstr(rel, "path")), deadline)
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(CHUNK)
                    self._send_all(_frame(DATA, chunk), deadline)
                    if not chunk:
                        break
        elif stat.S_ISDIR(st.st_mode):
            self._send_all(_frame(ENTRY, b"d" + struct.pack("<I", mode) + _cstr(rel, "path")), deadline)
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                child = f"{rel}/{entry.name}" if rel else entry.name
                self._put_tree(entry.path, child, entry.stat(follow_symlinks=False), deadline)
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            self._send_all(_frame(ENTRY, b"l" + struct.pack("<I", 0o777) + _cstr(rel, "path")
                                  + _cstr(target, "link")), deadline)

    def get(self, src: Union[str, os.PathLike[str]], dest: Union[str, os.PathLike[str]],
            timeout: Optional[float] = None) -> None:
        """Copy the guest's file or directory tree ``src`` to ``dest`` on the host (modes kept).

        Like ``cp -r``: into ``dest/<name of src>`` when ``dest`` is an existing directory.
        A missing ``src`` raises :class:`~vmm_reference.VmAgentError` naming it.
        """
        src_text = os.fspath(src)
        dest_path = os.fspath(dest)
        name = os.path.basename(src_text.rstrip("/"))
        root = os.path.join(dest_path, name) if name and os.path.isdir(dest_path) else dest_path
        deadline = self._deadline(timeout)
        try:
            self._send_all(_frame(GET, _cstr(src, "src")), deadline)
            with TreeWriter(root) as tree:
                while True:
                    kind, payload = self._recv_frame(deadline)
                    if kind == ENTRY:
                        entry_kind, mode, names = _parse_entry(payload)
                        rel = os.fsdecode(names[0])
                        if entry_kind == b"f":
                            tree.file(rel, mode)
                        elif entry_kind == b"d":
                            tree.directory(rel, mode)
                        elif entry_kind == b"l":
                            if len(names) < 2 or not names[1]:
                                raise VmAgentError(f"the guest agent sent link {rel!r} without a target")
                            tree.symlink(rel, os.fsdecode(names[1]))
                        else:
                            raise VmAgentError(f"the guest agent sent entry {rel!r} of unknown kind {entry_kind!r}")
                    elif kind == DATA:
                        if payload:
                            tree.data(payload)
                        else:
                            tree.end_file()
                    elif kind == END:
                        tree.finish()
                        return
                    else:
                        raise VmAgentError(f"the guest agent sent frame type 0x{kind:02x} during GET")
        except _Deadline:
            raise VmTimeoutError(f"copying the guest's {src_text} to {dest_path} took over {timeout} s") from None


def _parse_entry(payload: bytes) -> tuple[bytes, int, list[bytes]]:
    """Split an ENTRY frame into (kind, mode, NUL-terminated names); a malformed one is a VmAgentError."""
    if len(payload) < 6 or not payload.endswith(b"\0"):
        raise VmAgentError(f"the guest agent sent a malformed ENTRY frame ({len(payload)} bytes)")
    (mode,) = struct.unpack_from("<I", payload, 1)
    return payload[:1], mode, payload[5:-1].split(b"\0")


class _Deadline(Exception):
    """A request's timeout passed (turned into :class:`VmTimeoutError` by the caller)."""


def _output(chunks: list[bytes], text: bool) -> Union[bytes, str]:
    data = b"".join(chunks)
    chunks.clear()
    return data.decode("utf-8", errors="replace") if text else data
