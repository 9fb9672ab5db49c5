"""The guest's serial console as Python reads it: lines (sync and async) and raw bytes."""

from __future__ import annotations

import codecs
import time
from collections.abc import AsyncIterator, Iterator
from typing import Optional

from . import _native
from ._aio import to_thread
from .errors import VmTimeoutError

__all__ = ["Serial"]

_READ_CHUNK = 64 * 1024




class _LineSplitter:
    """Turns console chunks into lines: decodes UTF-8 across chunk boundaries, strips CR.

    An unfinished line is kept as a list of pieces (no quadratic re-joining) and never grows
    past ``limit`` characters: a guest printing without newlines gets its text handed out in
    ``limit``-sized lines, so the host holds no more than the console itself does.
    """

    def __init__(self, limit: int) -> None:
        self.offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []
        self._size = 0
        self._limit = max(1, limit)

    def _take(self) -> str:
        line = "".join(self._parts)
        self._parts, self._size = [], 0
        return line

    def feed(self, start: int, data: bytes, eof: bool) -> list[str]:
        """Take the chunk read at ``start``; return the lines it completes (and the last at ``eof``)."""
        self.offset = start + len(data)
        *complete, last = self._decoder.decode(data, final=eof).split("\n")
        out = []
        for piece in complete:
            self._parts.append(piece)
            out.append(self._take())
        if last:
            self._parts.append(last)
            self._size += len(last)
            while self._size >= self._limit:
                line = self._take()
                out.append(line[: self._limit])
                if len(line) > self._limit:
                    self._parts, self._size = [line[self._limit :]], len(line) - self._limit
        if eof and self._parts:
            out.append(self._take())
        return [line.rstrip("\r") for line in out]


class Serial:
    """The guest's serial console (COM1), as lines or raw bytes.

    Iterating yields ``str`` lines (without their newline) from the oldest retained output;
    the iteration ends once the VM has exited and all output has been read. Each iteration
    starts afresh, so a console can be read more than once. :meth:`read` returns raw bytes
    incrementally, keeping its own position. Output is retained up to the VM's
    ``console_limit`` bytes; beyond that the oldest bytes are dropped.
    """

    def __init__(self, native: _native.NativeVm, offset: int = 0) -> None:
        """Read ``native``'s console; :meth:`read` starts at byte ``offset``."""
        self._native = native
        self._offset = offset
        self._eof = False

    def __iter__(self) -> Iterator[str]:
        """Yield console lines until the VM has exited and the output is drained."""
        return self.lines()

    def lines(self, timeout: Optional[float] = None) -> Iterator[str]:
        """Yield console lines; raise :class:`VmTimeoutError` if ``timeout`` seconds pass first.

        A final line without a newline is yielded when the console ends.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        splitter = _LineSplitter(self._native.console_limit)
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            start, data, eof = self._native.read_console(splitter.offset, _READ_CHUNK, remaining)
            yield from splitter.feed(start, data, eof)
            if eof:
                return
            if deadline is not None and time.monotonic() >= deadline and not data:
                raise VmTimeoutError(
                    f"no end of console output within timeout={timeout}s; last lines:\n"
                    + self._tail()
                )

    async def __aiter__(self) -> AsyncIterator[str]:
        """Yield console lines without blocking the event loop; ends like iteration does."""
        splitter = _LineSplitter(self._native.console_limit)
        while True:
            start, data, eof = await to_thread(self._native.read_console, splitter.offset, _READ_CHUNK, 0.2)
            for line in splitter.feed(start, data, eof):
                yield line
            if eof:
                return

    def read(self, timeout: Optional[float] = 0.0) -> bytes:
        """Return console bytes printed since the previous :meth:`read`.

        Waits up to ``timeout`` seconds (forever if None) for at least one byte; returns
        ``b""`` when none arrived or the console has ended (see :attr:`at_eof`).
        """
        start, data, eof = self._native.read_console(self._offset, _READ_CHUNK, timeout)
        self._offset = start + len(data)
        self._eof = eof
        return data

    @property
    def at_eof(self) -> bool:
        """Whether :meth:`read` has returned everything the guest will ever print."""
        return self._eof

    @property
    def log_bytes(self) -> bytes:
        """All retained console output, as bytes."""
        return self._native.console_snapshot()[1]

    @property
    def log(self) -> str:
        """All retained console output, decoded as UTF-8 (invalid bytes replaced)."""
        return self.log_bytes.decode("utf-8", errors="replace")

    def _tail(self, n: int = 10) -> str:
        return "\n".join(self.log.splitlines()[-n:])
