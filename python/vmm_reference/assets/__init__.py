"""Guest assets from Debian's packages: a kernel (bzImage and ELF vmlinux), an initramfs, a root filesystem.

Run ``python -m vmm_reference.assets`` to fetch them into the cache and print their paths.
Packages are fetched with ``apt-get download`` (no root needed, nothing is installed) and
unpacked with ``dpkg-deb``. Results are keyed by package version, so a second run is instant.
The root filesystem is an ext4 image made with e2fsprogs' ``mkfs.ext4 -d`` (no root needed
either): the host's, or else Debian's package unpacked into the cache.

The cache is ``$VMM_REFERENCE_CACHE`` or ``~/.cache/vmm-reference``.
"""

from __future__ import annotations

from .agent import AGENT_CFLAGS, AGENT_SOURCE_DIR, build_agent
from .cache import MANIFEST, _record, clear, listing, record_manifests, verify
from .cli import main
from .common import AssetError, GuestAssets, LabAssets, cache_dir
from .fetch import fetch_guest, fetch_lab
from .modules import _module_bytes, module_load_order
from .rootfs import ROOTFS_SIZE_MIB, e2fsprogs_command
from .scripts import (
    _ROOTFS_INIT,
    GUEST_DONE_MARKER,
    GUEST_POWER_BUTTON_MARKER,
    GUEST_READY_MARKER,
    GUEST_ROOT_FAILED_MARKER,
    ROOT_WAIT_SECONDS,
    ROOTFS_READY_MARKER,
)

__all__ = [
    "GUEST_DONE_MARKER",
    "GUEST_POWER_BUTTON_MARKER",
    "GUEST_READY_MARKER",
    "GUEST_ROOT_FAILED_MARKER",
    "MANIFEST",
    "ROOTFS_READY_MARKER",
    "ROOTFS_SIZE_MIB",
    "ROOT_WAIT_SECONDS",
    "AGENT_CFLAGS",
    "AGENT_SOURCE_DIR",
    "AssetError",
    "GuestAssets",
    "LabAssets",
    "build_agent",
    "cache_dir",
    "clear",
    "e2fsprogs_command",
    "fetch_guest",
    "fetch_lab",
    "listing",
    "main",
    "module_load_order",
    "record_manifests",
    "verify",
    "_ROOTFS_INIT",
    "_module_bytes",
    "_record",
]
