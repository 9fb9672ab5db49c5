"""Waiting for patterns in a VM's console output, as pexpect does for a terminal."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Optional, Union

from .errors import VmError, VmTimeoutError

if TYPE_CHECKING:
    from . import _native

__all__ = ["ExpectFailure", "Pattern", "VmExitedError", "expect"]

Pattern = Union[str, bytes, "re.Pattern[str]", "re.Pattern[bytes]"]

_READ_CHUNK = 64 * 1024


class VmExitedError(VmError):
    """The VM stopped before the expected output appeared."""


class ExpectFailure(VmError):
    """A failure pattern appeared before the expected one; ``match`` is what matched."""

    def __init__(self, message: str, match: re.Match[str] | re.Match[bytes]) -> None:
        super().__init__(message)
        self.match = match


def _compile(p: Pattern) -> re.Pattern[str] | re.Pattern[bytes]:
    if isinstance(p, re.Pattern):
        return p
    if isinstance(p, (str, bytes)):
        return re.compile(p, re.M)
    raise TypeError(f"invalid pattern={p!r}: expected str, bytes or a compiled regex")


def _search(
    rx: re.Pattern[str] | re.Pattern[bytes], buf: bytes
) -> tuple[re.Match[str] | re.Match[bytes], int, int] | None:
    """Search ``buf``; return the match and the byte offsets in ``buf`` where it starts and ends."""
    if isinstance(rx.pattern, bytes):
        mb = rx.search(buf)
        return (mb, mb.start(), mb.end()) if mb else None
    text = buf.decode("utf-8", errors="replace")
    ms = rx.search(text)
    if not ms:
        return None
    start = len(text[: ms.start()].encode("utf-8", errors="replace"))
    return ms, start, start + len(ms.group(0).encode("utf-8", errors="replace"))


def _tail(buf: bytes, n: int = 10) -> str:
    return "\n".join(buf.decode("utf-8", errors="replace").splitlines()[-n:])


def expect(
    native: _native.NativeVm,
    offset: int,
    pattern: Pattern,
    timeout: Optional[float],
    fail: Optional[Union[Pattern, list[Pattern]]] = None,
) -> tuple[re.Match[str] | re.Match[bytes], int]:
    """Wait for ``pattern`` in the console from byte ``offset``; return the match and the new offset.

    Partial lines (a shell prompt) match too. Raises :class:`VmTimeoutError`,
    :class:`VmExitedError` or :class:`ExpectFailure`; every message ends with the last
    console lines.
    """
    rx = _compile(pattern)
    fails = [_compile(f) for f in ([] if fail is None else fail if isinstance(fail, list) else [fail])]
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = b""
    base = offset
    while True:
        found = _search(rx, buf)
        for frx in fails:
            failed = _search(frx, buf)
            # Only a failure pattern that starts before the pattern's match counts: both may
            # arrive in one read.
            if failed and (found is None or failed[1] < found[1]):
                raise ExpectFailure(
                    f"failure pattern {frx.pattern!r} appeared before {rx.pattern!r}; last console lines:\n"
                    + _tail(buf), failed[0])
        if found:
            return found[0], base + found[2]
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise VmTimeoutError(f"{rx.pattern!r} did not appear within timeout={timeout}s; last console lines:\n"
                                 + _tail(buf))
        start, data, eof = native.read_console(base + len(buf), _READ_CHUNK, remaining)
        if start > base + len(buf):  # output was dropped beyond the console limit
            buf, base = b"", start
        buf += data
        if eof and not data:
            status = native.exit_status
            reason = status[0] if status else "unknown"
            raise VmExitedError(f"the VM exited (reason {reason}) before {rx.pattern!r} appeared; "
                                f"last console lines:\n" + _tail(buf))
