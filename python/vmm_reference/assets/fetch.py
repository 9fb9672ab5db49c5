"""Fetching and building a guest's (and the lab's) assets, online or from the cache only."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Optional, Union

from ..initramfs import CpioEntry, build_initramfs
from ..kernel_image import extract_vmlinux
from .agent import _agent_path, _build_agent
from .cache import MANIFEST, _cache_lock, record_manifests
from .common import AssetError, GuestAssets, LabAssets, _offline, _safe, _say, cache_dir
from .debian import _busybox, _kernel_files, _kernel_package
from .modules import _module_bytes, _module_name, guest_modules
from .rootfs import _rootfs
from .scripts import _HOST_INIT_SCRIPT, _INIT_SCRIPT, _POWER_BUTTON_SCRIPT


def _cached_guest(base: Path) -> GuestAssets:
    """Return the newest complete guest assets already in the cache, without asking apt."""
    missing = AssetError(f"VMM_REFERENCE_OFFLINE is set but {base} holds no complete guest assets; "
                         "run `python -m vmm_reference.assets` first")
    roots = sorted(base.glob("linux-image-*-cloud-amd64-unsigned_*/.complete"))
    if not roots or not (roots[-1].parent / "vmlinux").exists():
        raise missing
    root = roots[-1].parent
    bzimage, modules = _kernel_files(root)
    initrds = sorted(base.glob(f"busybox-static_*/initramfs-{_safe(modules.name)}-*.cpio.gz"),
                     key=lambda p: p.stat().st_mtime)
    if not initrds:
        raise missing
    rootfses = sorted(initrds[-1].parent.glob("rootfs-*.ext4"), key=lambda p: p.stat().st_mtime)
    if not rootfses:
        raise missing
    agent = _agent_path(base)
    if not agent.exists():
        agents = sorted(base.glob("vmm-agent-*/vmm-agent"), key=lambda p: p.stat().st_mtime)
        if not agents:
            raise missing
        agent = agents[-1]
    package, _, version = root.name.partition("_")
    return GuestAssets(
        package, version, root / "vmlinux", bzimage, modules, initrds[-1], initrds[-1].parent / "busybox",
        rootfses[-1], agent,
    )


def _initramfs(busybox: Path, agent: Path, modules: Path) -> Path:
    """Build (once per recipe) the guests' initramfs for the kernel whose modules are ``modules``.

    It holds busybox, the init scripts, the agent and that kernel's ``lib/modules/<release>``
    modules the guests need.
    """
    groups = guest_modules(modules)
    modules_used = [m for group in groups.values() for m in group]
    recipe = hashlib.sha256(_INIT_SCRIPT.encode() + _POWER_BUTTON_SCRIPT.encode() + _HOST_INIT_SCRIPT.encode()
                            + agent.parent.name.encode()
                            + "".join(str(m) for m in modules_used).encode()).hexdigest()[:12]
    initrd = busybox.parent / f"initramfs-{_safe(modules.name)}-{recipe}.cpio.gz"
    if not initrd.exists():
        d = stat.S_IFDIR | 0o755
        extra = [CpioEntry("lib", d), CpioEntry("lib/vmm", d), CpioEntry("etc/acpi", d),
                 CpioEntry("etc/acpi/PWRF", d),
                 CpioEntry("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, _POWER_BUTTON_SCRIPT.encode()),
                 CpioEntry("sbin", d), CpioEntry("sbin/vmm-agent", stat.S_IFREG | 0o755, agent.read_bytes()),
                 CpioEntry("lib/vmm/host-init.sh", stat.S_IFREG | 0o755, _HOST_INIT_SCRIPT.encode())]
        # Numbered so that the init's globs (/lib/vmm/*.ko, then /lib/vmm/virtio-ID/*.ko for each
        # kind of virtio device the VM has) load them in this order.
        for device, group in groups.items():
            where = "lib/vmm" if device is None else f"lib/vmm/virtio-{device}"
            if device is not None:
                extra.append(CpioEntry(where, d))
            extra += [CpioEntry(f"{where}/{i:02d}-{_module_name(m)}.ko", stat.S_IFREG | 0o644, _module_bytes(m))
                      for i, m in enumerate(group)]
        _say(f"building {initrd.name}")
        build_initramfs(busybox, _INIT_SCRIPT, initrd, extra)
    return initrd


def _fetch_guest(cache: Optional[Union[str, Path]] = None) -> GuestAssets:
    base = cache_dir(cache)
    base.mkdir(parents=True, exist_ok=True)
    package, version, root = _kernel_package(base, "linux-image-cloud-amd64")
    bzimage, modules = _kernel_files(root)
    vmlinux = root / "vmlinux"
    if not vmlinux.exists():
        _say(f"extracting the ELF vmlinux from {bzimage.name}")
        vmlinux.with_suffix(".tmp").write_bytes(extract_vmlinux(bzimage))
        vmlinux.with_suffix(".tmp").replace(vmlinux)
    busybox = _busybox(base)
    agent = _build_agent(base)
    initrd = _initramfs(busybox, agent, modules)
    rootfs = _rootfs(base, busybox, agent)
    assets = GuestAssets(package, version, vmlinux, bzimage, modules, initrd, busybox, rootfs, agent)
    recorded = (busybox.parent / MANIFEST).read_text() if (busybox.parent / MANIFEST).exists() else ""
    if (not (root / MANIFEST).exists() or initrd.name not in recorded or rootfs.name not in recorded
            or not (agent.parent / MANIFEST).exists()):
        record_manifests(assets)
    return assets


def _fetch_lab(cache: Optional[Union[str, Path]] = None) -> LabAssets:
    base = cache_dir(cache)
    base.mkdir(parents=True, exist_ok=True)
    package, version, root = _kernel_package(base, "linux-image-amd64")
    bzimage, modules = _kernel_files(root)
    busybox = _busybox(base)
    return LabAssets(package, version, bzimage, modules, busybox, _initramfs(busybox, _build_agent(base), modules))


def _cached_lab(base: Path) -> LabAssets:
    """Return the newest complete lab assets already in the cache, without asking apt."""
    roots = [p.parent for p in sorted(base.glob("linux-image-*-amd64-unsigned_*/.complete"))
             if "-cloud-" not in p.parent.name]
    if not roots:
        raise AssetError(f"VMM_REFERENCE_OFFLINE is set but {base} holds no generic kernel; "
                         "run `python -m vmm_reference.assets --lab` first")
    root = roots[-1]
    bzimage, modules = _kernel_files(root)
    initrds = sorted(base.glob(f"busybox-static_*/initramfs-{_safe(modules.name)}-*.cpio.gz"),
                     key=lambda p: p.stat().st_mtime)
    if not initrds:
        raise AssetError(f"VMM_REFERENCE_OFFLINE is set but {base} holds no initramfs for {modules.name}; "
                         "run `python -m vmm_reference.assets --lab` first")
    package, _, version = root.name.partition("_")
    return LabAssets(package, version, bzimage, modules, initrds[-1].parent / "busybox", initrds[-1])


def fetch_guest(cache: Optional[Union[str, Path]] = None) -> GuestAssets:
    """Fetch Debian's cloud kernel and busybox; build the vmlinux and initramfs (cached).

    With ``VMM_REFERENCE_OFFLINE=1`` in the environment, apt is not consulted and the newest
    complete assets in the cache are returned. Safe to call from several processes at once.
    """
    if _offline():
        return _cached_guest(cache_dir(cache))
    with _cache_lock(cache):
        return _fetch_guest(cache)


def fetch_lab(cache: Optional[Union[str, Path]] = None) -> LabAssets:
    """Fetch Debian's generic kernel (with kvm/kvm-amd modules) and busybox for the nested-KVM lab.

    The guests' initramfs is built for it too, so that it boots as a guest (with 9p).

    With ``VMM_REFERENCE_OFFLINE=1`` (inside the lab), the newest complete ones in the cache.
    """
    if _offline():
        return _cached_lab(cache_dir(cache))
    with _cache_lock(cache):
        return _fetch_lab(cache)
