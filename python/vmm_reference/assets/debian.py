"""Debian's packages: resolving, downloading (``apt-get download``, no root) and unpacking them (``dpkg-deb``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import _NO_APT, AssetError, _only, _run, _safe, _say


def _resolve(metapackage: str) -> tuple[str, str]:
    """Return (unsigned image package, version) that Debian's ``metapackage`` points at."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise AssetError(_NO_APT)
    deps = _run(["apt-cache", "depends", metapackage])
    match = re.search(r"Depends: (linux-image-[\w.+-]+)", deps)
    if not match:
        raise AssetError(
            f"apt knows no {metapackage}; run `apt-get update` (Debian's main archive must be a source)"
        )
    package = match.group(1)
    if not package.endswith("-unsigned"):
        package += "-unsigned"
    return package, _version(package)


def _version(package: str) -> str:
    show = _run(["apt-cache", "show", "--no-all-versions", package])
    match = re.search(r"^Version: (\S+)", show, re.M)
    if not match:
        raise AssetError(f"apt has no version of {package}; run `apt-get update`")
    return match.group(1)


def _download_size(packages: list[str]) -> int:
    """Bytes ``apt-get download`` will fetch for ``packages`` (0 if apt does not say)."""
    total = 0
    for name in packages:
        found = re.search(r"^Size: (\d+)", _run(["apt-cache", "show", "--no-all-versions", name]), re.M)
        total += int(found.group(1)) if found else 0
    return total


def _apt_download(packages: list[str], into: Path) -> None:
    """``apt-get download``, with a progress bar on a terminal when tqdm is installed."""
    args = ["apt-get", "download", "-o", "APT::Sandbox::User=root", *packages]
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        tqdm = None
    if tqdm is None or not sys.stderr.isatty():
        _run(args, cwd=into)
        return
    total = _download_size(packages)
    with tqdm(total=total or None, unit="B", unit_scale=True, desc=" ".join(packages), leave=False) as bar:
        proc = subprocess.Popen(args, cwd=into, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None:
            time.sleep(0.2)
            done = sum(f.stat().st_size for f in into.rglob("*") if f.is_file())
            bar.update(max(0, min(done, total or done) - bar.n))
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise AssetError(f"`{' '.join(args)}` failed: {err.strip()}")


def _download(packages: list[str], into: Path) -> dict[str, Path]:
    into.mkdir(parents=True, exist_ok=True)
    _apt_download(packages, into)
    found: dict[str, Path] = {}
    for name in packages:
        debs = sorted(into.glob(f"{name}_*.deb"))
        if not debs:
            raise AssetError(f"apt-get download did not produce {name}_*.deb")
        target = into / f"{name}.unpacked"
        _run(["dpkg-deb", "-x", str(debs[-1]), str(target)])
        found[name] = target
    return found


def _busybox(cache: Path) -> Path:
    version = _version("busybox-static")
    dest = cache / f"busybox-static_{_safe(version)}" / "busybox"
    if not dest.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            unpacked = _download(["busybox-static"], Path(tmp))["busybox-static"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(unpacked / "bin" / "busybox", dest.with_suffix(".tmp"))
            dest.with_suffix(".tmp").replace(dest)
    return dest


def _kernel_package(cache: Path, metapackage: str) -> tuple[str, str, Path]:
    """Download and unpack a kernel package once; return (package, version, directory)."""
    package, version = _resolve(metapackage)
    root = cache / f"{package}_{_safe(version)}"
    done = root / ".complete"
    if not done.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            _say(f"downloading and unpacking {package} {version} (apt-get download)")
            unpacked = _download([package], Path(tmp))[package]
            if root.exists():
                shutil.rmtree(root)
            unpacked.rename(root)
        done.touch()
    return package, version, root


def _kernel_files(root: Path) -> tuple[Path, Path]:
    """Return an unpacked kernel package's bzImage and its ``lib/modules/<release>`` directory."""
    return (_only(sorted((root / "boot").glob("vmlinuz-*")), "vmlinuz"),
            _only(sorted((root / "lib" / "modules").glob("*")), "modules directory"))
