"""Writing initramfs archives (cpio "newc", gzip-compressed) without external tools."""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

__all__ = ["CpioEntry", "build_initramfs", "write_cpio"]


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: a directory, a regular file, a symlink or a character device."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, entry: CpioEntry, namesize: int) -> bytes:
    fields = [
        ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], namesize, 0,
    ]
    return b"070701" + b"".join(b"%08x" % f for f in fields)


def _pad(buf: io.BytesIO) -> None:
    buf.write(b"\0" * (-buf.tell() % 4))


def write_cpio(entries: list[CpioEntry]) -> bytes:
    """Return a newc cpio archive of ``entries`` (uid/gid 0, mtime 0: reproducible)."""
    buf = io.BytesIO()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.lstrip("/").encode() + b"\0"
        buf.write(_header(ino if entry.mode else 0, entry, len(name)))
        buf.write(name)
        _pad(buf)
        buf.write(entry.data)
        _pad(buf)
    return buf.getvalue()


def build_initramfs(
    busybox: Union[str, Path], init_script: str, out: Union[str, Path], extra: Sequence[CpioEntry] = ()
) -> Path:
    """Write a gzip-compressed initramfs with a static ``busybox`` and ``init_script`` as /init.

    The archive has the directories an init needs and a /dev/console node, so the kernel can
    give /init its console before devtmpfs is mounted. ``extra`` entries (their parent
    directories first) are appended.
    """
    dirs = ["bin", "dev", "proc", "sys", "tmp", "root", "etc", "mnt"]
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries += [
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes()),
        CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        CpioEntry("init", stat.S_IFREG | 0o755, init_script.encode()),
        *extra,
    ]
    out = Path(out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(write_cpio(entries))
    tmp.replace(out)
    return out
