"""Kernel modules for the initramfs: which ones, and in which order (dependencies read from the modules)."""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Optional

from .common import AssetError

# Kernel modules every guest's initramfs loads, each after the modules it depends on (read from
# the modules themselves: the package has no modules.dep): the ACPI power button and the input
# device acpid reads; both virtio transports (virtio-mmio finds the VMM's devices through the
# DSDT, virtio-pci on the PCI bus of a ``transport="pci"`` VM; each finds nothing on the other
# kind of VM); ``overlay`` (for the host's root). Names missing from a kernel are left out.
_BASE_MODULES = ["evdev", "button", "virtio_mmio", "virtio_pci", "overlay"]

# The drivers of each kind of virtio device, by virtio device ID, which the init loads only for
# the devices the transports found (a module costs the guest its load and init time; a VM has
# a few of these kinds, not all): net; blk with ext4 where it is not built in (the cloud kernel
# has it built in, the generic one as modules); rng; 9p (``9pnet_virtio`` and ``9p``, which
# Debian's cloud kernel does not have); vsock and its virtio transport, for the guest agent;
# virtio-fs (``virtiofs``, over ``fuse``).
_DEVICE_MODULES: dict[int, list[str]] = {
    1: ["virtio_net"],
    2: ["virtio_blk", "ext4"],
    4: ["virtio_rng"],
    9: ["9pnet_virtio", "9p"],
    19: ["vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"],
    26: ["fuse", "virtiofs"],
}


def guest_modules(modules: Path) -> dict[Optional[int], list[Path]]:
    """Return the module files a guest's initramfs holds, by when the init loads them.

    Under ``None`` what every guest loads; under each virtio device ID that kind's drivers
    (without what every guest loads already). Each list is in load order.
    """
    base = module_load_order(modules, _BASE_MODULES)
    groups: dict[Optional[int], list[Path]] = {None: base}
    for device, names in _DEVICE_MODULES.items():
        found = [m for m in module_load_order(modules, names) if m not in base]
        if found:
            groups[device] = found
    return groups


def _module_name(path: Path) -> str:
    """Return a module's name as the kernel knows it: ``virtio_blk`` for ``.../virtio_blk.ko.xz``."""
    return path.name.split(".ko")[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    """Return a module file's contents, decompressed (busybox's insmod takes plain ELF modules)."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        if not shutil.which("zstd"):
            raise AssetError(f"{path} is zstd-compressed: install zstd to unpack it")
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def _modinfo(image: bytes) -> dict[str, list[str]]:
    """Return the ``key=value`` strings of a module's ``.modinfo`` ELF section, by key."""
    if image[:5] != b"\x7fELF\x02" or image[5] != 1:
        raise AssetError("not a 64-bit little-endian ELF kernel module")
    (shoff,) = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)

    def section(i: int) -> tuple[int, bytes]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", image, shoff + i * shentsize)
        return name, image[offset:offset + size]

    strings = section(shstrndx)[1]
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_at, body = section(i)
        if strings[name_at:strings.find(b"\0", name_at)] == b".modinfo":
            for item in body.split(b"\0"):
                key, eq, value = item.decode("utf-8", errors="replace").partition("=")
                if eq:
                    info.setdefault(key, []).append(value)
    return info


def module_load_order(modules: Path, names: list[str]) -> list[Path]:
    """Return the module files of ``names`` and of all they depend on, each after its dependencies.

    ``modules`` is a kernel's ``lib/modules/<release>`` directory as Debian's package ships it
    (without the ``modules.dep`` that ``depmod`` writes on installation): dependencies are
    read from each module's ``depends=`` (and ``softdep=`` ``pre:``) information. Modules built
    into the kernel (``modules.builtin``) and names the kernel does not have are left out.
    """
    index = {_module_name(p): p for p in sorted((modules / "kernel").rglob("*.ko*"))
             if re.search(r"\.ko(\.xz|\.gz|\.zst)?$", p.name)}
    builtin_list = modules / "modules.builtin"
    builtin = {_module_name(Path(line)) for line in builtin_list.read_text().split()} \
        if builtin_list.exists() else set()
    order: list[Path] = []
    done: set[str] = set()

    def visit(name: str, needed_by: Optional[str], optional: bool) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        path = index.get(name)
        if path is None:
            if needed_by is None or optional:
                return
            raise AssetError(f"module {needed_by} depends on {name}, which {modules} does not have")
        done.add(name)
        info = _modinfo(_module_bytes(path))
        for softdep in info.get("softdep", []):
            pre = re.search(r"pre:\s*(.*?)\s*(post:|$)", softdep)
            for dep in pre.group(1).split() if pre else []:
                visit(dep, name, optional=True)
        for depends in info.get("depends", []):
            for dep in filter(None, depends.split(",")):
                visit(dep, name, optional=False)
        order.append(path)

    for name in names:
        visit(name, None, optional=True)
    return order
