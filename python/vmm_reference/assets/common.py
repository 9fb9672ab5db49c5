"""What every part of the asset cache shares: the error, the assets' descriptions, the cache, running tools."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union


class AssetError(RuntimeError):
    """Assets could not be fetched or built; the message says what to provide instead."""


@dataclass(frozen=True)
class GuestAssets:
    """A Debian cloud kernel, a busybox initramfs and an ext4 root filesystem image, ready to boot."""

    kernel_package: str
    kernel_version: str
    vmlinux: Path
    """The uncompressed ELF kernel (the fast one to boot)."""
    bzimage: Path
    """The compressed bzImage, as Debian ships it."""
    modules: Path
    """The kernel's ``lib/modules/<release>`` directory."""
    initrd: Path
    """A gzip-compressed cpio initramfs whose /init prints :data:`GUEST_READY_MARKER` and reboots."""
    busybox: Path
    """The static busybox binary inside the initramfs."""
    rootfs: Path
    """An ext4 root filesystem image (busybox; /sbin/init prints :data:`ROOTFS_READY_MARKER`).

    Boot it with ``root=/dev/vda`` on the command line and :attr:`initrd`, which loads the
    virtio modules and switches to it. Give the VM a copy: the guest writes to its disks.
    """
    agent: Path
    """The guest agent (``vmm-agent``, static), which the initramfs and the root filesystem hold as /sbin/vmm-agent."""


@dataclass(frozen=True)
class LabAssets:
    """Debian's generic kernel, whose modules include kvm and kvm-amd: the nested-KVM lab's."""

    kernel_package: str
    kernel_version: str
    bzimage: Path
    modules: Path
    busybox: Path
    initrd: Path
    """The guests' initramfs (as :attr:`GuestAssets.initrd`) with this kernel's modules, 9p
    among them (Debian's cloud kernel has none): the generic kernel boots as a guest with it."""


def cache_dir(override: Optional[Union[str, Path]] = None) -> Path:
    """Return the asset cache directory: ``override``, ``$VMM_REFERENCE_CACHE`` or ``~/.cache/vmm-reference``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("VMM_REFERENCE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmm-reference"


_NO_APT = (
    "apt-get and dpkg-deb are needed to fetch Debian's kernel and busybox. On other hosts, "
    "provide the files yourself: an x86-64 Linux kernel (ELF vmlinux or bzImage) with "
    "CONFIG_SERIAL_8250_CONSOLE, and optionally an initramfs, then run "
    "`vmm-reference --kernel path=VMLINUX,initrd=INITRD`."
)


def _say(step: str) -> None:
    """Report a slow step on stderr, when a person is watching it."""
    if sys.stderr.isatty():
        print(f"vmm_reference.assets: {step} ...", file=sys.stderr, flush=True)


def _run(args: list[str], cwd: Optional[Path] = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise AssetError(_NO_APT) from e
    if done.returncode != 0:
        raise AssetError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _safe(text: str) -> str:
    return re.sub(r"[^\w.+-]", "_", text)


def _only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise AssetError(f"expected one {what} in the package, found {len(paths)}")
    return paths[0]


def _offline() -> bool:
    return os.environ.get("VMM_REFERENCE_OFFLINE", "") not in ("", "0")
