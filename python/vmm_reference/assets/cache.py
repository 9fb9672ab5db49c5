"""The cache's lock, manifests (SHA-256 of every built file), listing and clearing."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

from .common import GuestAssets, cache_dir


@contextlib.contextmanager
def _cache_lock(cache: Optional[Union[str, Path]]) -> Iterator[None]:
    """Hold the cache's lock file: processes sharing a cache (pytest-xdist workers) fetch one at a time."""
    base = cache_dir(cache)
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


MANIFEST = "SHA256SUMS"
"""Each asset directory's list of ``sha256  relative/path`` for the files the cache built."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(directory: Path, files: list[Path]) -> None:
    """Add ``files`` (inside ``directory``) to its manifest."""
    manifest = directory / MANIFEST
    entries = dict(line.split("  ", 1)[::-1] for line in manifest.read_text().splitlines()) if manifest.exists() else {}
    for f in files:
        entries[str(f.relative_to(directory))] = _sha256(f)
    manifest.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items())))


def record_manifests(assets: GuestAssets) -> None:
    """Write the checksums of a guest's kernel, initramfs and root filesystem files, for :func:`verify`."""
    root = assets.vmlinux.parent
    _record(root, [assets.vmlinux, assets.bzimage])
    _record(assets.busybox.parent, [assets.busybox, assets.initrd, assets.rootfs])
    _record(assets.agent.parent, [assets.agent])


def verify(cache: Optional[Union[str, Path]] = None) -> list[str]:
    """Check every file listed in the cache's manifests; return the problems (empty: all good)."""
    problems = []
    for manifest in sorted(cache_dir(cache).glob(f"*/{MANIFEST}")):
        for line in manifest.read_text().splitlines():
            digest, name = line.split("  ", 1)
            path = manifest.parent / name
            if not path.exists():
                problems.append(f"{path}: missing")
            elif _sha256(path) != digest:
                problems.append(f"{path}: sha256 differs from the one recorded when it was built")
    return problems


def listing(cache: Optional[Union[str, Path]] = None) -> list[tuple[str, int, bool]]:
    """List the cache's entries: ``(name, bytes, complete)``; complete means fetched to the end."""
    base = cache_dir(cache)
    rows = []
    for entry in sorted(base.iterdir()) if base.exists() else []:
        if not entry.is_dir():
            continue
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not f.is_symlink())
        complete = (entry / ".complete").exists() or (entry / "busybox").exists() or (entry / "vmm-agent").exists()
        rows.append((entry.name, size, complete))
    return rows


def clear(cache: Optional[Union[str, Path]] = None) -> int:
    """Delete everything in the cache (under its lock); return how many bytes were freed."""
    freed = sum(size for _, size, _ in listing(cache))
    with _cache_lock(cache):
        for entry in cache_dir(cache).iterdir():
            if entry.name == ".lock":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return freed
