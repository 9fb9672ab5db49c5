"""Write a tree the guest agent streams (``copy_from``) beneath one host path, and nowhere else.

The stream comes from the guest and is hostile: it may name entries with ``..``, make a
symbolic link and then name a path through it, send a setuid file, or repeat and reorder
entries. Everything here is created relative to directory file descriptors opened with
``O_NOFOLLOW``, one path component at a time, so no component the stream (or anybody) made a
symbolic link is ever followed; an existing entry is replaced, never written through (a hard
link in the destination keeps its other name's contents); setuid, setgid and sticky bits are
dropped. A refused entry raises :class:`~vmm_reference.VmAgentError` naming it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Optional, TypeVar

from .errors import VmAgentError

__all__ = ["TreeWriter"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MODE_BITS = 0o777  # setuid, setgid and sticky never reach the host
_T = TypeVar("_T")


class TreeWriter:
    """Create the entries of one ``GET`` stream beneath ``root`` (a path the caller chose).

    ``root`` itself is the top entry (the copied file, directory or link); its parent must
    exist. Entries arrive as :meth:`directory`, :meth:`file` + :meth:`data`... +
    :meth:`end_file`, :meth:`symlink`; :meth:`finish` applies the directories' modes (last,
    so a read-only directory can still be filled); :meth:`close` releases what is open.
    """

    def __init__(self, root: str) -> None:
        parent, self._name = os.path.split(os.path.abspath(root))
        if not self._name:
            raise VmAgentError(f"cannot copy onto {root!r}")
        # The parent is the caller's own choice of destination: it is opened as given.
        self._parent = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._file: Optional[int] = None
        self._file_rel = ""
        self._file_mode = 0
        self._dirs: list[tuple[str, int]] = []

    def close(self) -> None:
        """Close the open file (if a stream stopped inside one) and the destination's parent."""
        if self._file is not None:
            os.close(self._file)
            self._file = None
        if self._parent >= 0:
            os.close(self._parent)
            self._parent = -1

    def __enter__(self) -> TreeWriter:
        """Return the writer itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close what is open."""
        self.close()

    # ---- walking ----

    def _components(self, rel: str) -> list[str]:
        if rel == "":
            return [self._name]
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise VmAgentError(f"the guest agent sent an entry outside the copy: {rel!r}")
        return [self._name, *parts]

    def _refuse(self, rel: str, what: str, error: OSError) -> VmAgentError:
        reason = error.strerror or str(error)
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            reason = "a path component is not a directory (or is a symbolic link)"
        return VmAgentError(f"the guest agent's entry {rel!r} ({what}) was refused: {reason}")

    def _parent_of(self, rel: str, what: str) -> tuple[int, str]:
        """Open the directory that holds ``rel``'s last component, following no link; return (fd, name)."""
        parts = self._components(rel)
        fd = os.dup(self._parent)
        try:
            for part in parts[:-1]:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as e:
            os.close(fd)
            raise self._refuse(rel, what, e) from None
        return fd, parts[-1]

    @staticmethod
    def _remove_non_directory(fd: int, name: str) -> None:
        """Unlink ``name`` in ``fd`` unless it is missing or a real directory."""
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=fd)

    # ---- entries ----

    def _no_open_file(self, rel: str) -> None:
        if self._file is not None:
            raise VmAgentError(f"the guest agent sent entry {rel!r} before the end of file {self._file_rel!r}")

    def _create(self, rel: str, what: str, make: Callable[[int, str], _T]) -> _T:
        """Clear the place of ``rel`` (unless a real directory is there) and ``make(dir_fd, name)`` it."""
        self._no_open_file(rel)
        fd, name = self._parent_of(rel, what)
        try:
            self._remove_non_directory(fd, name)
            return make(fd, name)
        except OSError as e:
            raise self._refuse(rel, what, e) from None
        finally:
            os.close(fd)

    def directory(self, rel: str, mode: int) -> None:
        """Create directory ``rel`` (private until :meth:`finish`), or reuse a real directory there."""

        def make(fd: int, name: str) -> None:
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            os.close(os.open(name, _DIR_FLAGS, dir_fd=fd))  # a real directory now, not a link

        self._create(rel, "directory", make)
        self._dirs.append((rel, mode & _MODE_BITS))

    def file(self, rel: str, mode: int) -> None:
        """Start regular file ``rel``: a new file replacing whatever non-directory was there."""
        self._file = self._create(rel, "file", lambda fd, name: os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd))
        self._file_rel, self._file_mode = rel, mode & _MODE_BITS

    def data(self, payload: bytes) -> None:
        """Append to the file started last."""
        if self._file is None:
            raise VmAgentError("the guest agent sent file data outside a file")
        view = memoryview(payload)
        while view:
            view = view[os.write(self._file, view):]

    def end_file(self) -> None:
        """Finish the file started last, giving it its mode."""
        if self._file is None:
            raise VmAgentError("the guest agent ended a file it never started")
        fd, self._file = self._file, None
        try:
            os.fchmod(fd, self._file_mode)
        finally:
            os.close(fd)

    def symlink(self, rel: str, target: str) -> None:
        """Create symbolic link ``rel`` to ``target`` (made, never followed later)."""
        self._create(rel, "symbolic link", lambda fd, name: os.symlink(target, name, dir_fd=fd))

    def finish(self) -> None:
        """Give every directory its mode, deepest first; refuse a stream that stopped inside a file."""
        if self._file is not None:
            raise VmAgentError(f"the guest agent ended the copy inside file {self._file_rel!r}")
        for rel, mode in reversed(self._dirs):
            parent, name = self._parent_of(rel, "directory")
            try:
                dfd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                try:
                    os.fchmod(dfd, mode)
                finally:
                    os.close(dfd)
            except OSError as e:
                raise self._refuse(rel, "directory", e) from None
            finally:
                os.close(parent)
