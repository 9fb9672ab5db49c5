"""Guest assets from Debian's packages: a kernel (bzImage and ELF vmlinux), an initramfs, a root filesystem.

Run ``python -m vmm_reference.assets`` to fetch them into the cache and print their paths.
Packages are fetched with ``apt-get download`` (no root needed, nothing is installed) and
unpacked with ``dpkg-deb``. Results are keyed by package version, so a second run is instant.
The root filesystem is an ext4 image made with e2fsprogs' ``mkfs.ext4 -d`` (no root needed
either): the host's, or else Debian's package unpacked into the cache.

The cache is ``$VMM_REFERENCE_CACHE`` or ``~/.cache/vmm-reference``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from .initramfs import CpioEntry, build_initramfs
from .kernel_image import extract_vmlinux

__all__ = [
    "GUEST_DONE_MARKER",
    "GUEST_POWER_BUTTON_MARKER",
    "GUEST_READY_MARKER",
    "GUEST_ROOT_FAILED_MARKER",
    "ROOTFS_READY_MARKER",
    "AGENT_SOURCE_DIR",
    "AssetError",
    "GuestAssets",
    "LabAssets",
    "build_agent",
    "cache_dir",
    "e2fsprogs_command",
    "fetch_guest",
    "fetch_lab",
    "main",
    "module_load_order",
]

#: Printed by the initramfs's /init once userspace runs, with the kernel release and the CPU
#: count. Just before it, /init logs ``vmm-reference: /init ready`` to the kernel log (not the
#: console), so that the kernel's own timestamps say when userspace got there.
GUEST_READY_MARKER = "VMM-REFERENCE-GUEST-READY"
#: Printed by /init just before it reboots.
GUEST_DONE_MARKER = "VMM-REFERENCE-GUEST-DONE"

#: Printed by the guest when its ACPI power button was pressed, just before it powers off.
GUEST_POWER_BUTTON_MARKER = "VMM-REFERENCE-GUEST-POWER-BUTTON"

#: Printed by the initramfs's /init when the command line's ``root=`` device did not appear
#: within :data:`ROOT_WAIT_SECONDS` or could not be mounted; /init then goes on as without ``root=``.
GUEST_ROOT_FAILED_MARKER = "VMM-REFERENCE-GUEST-ROOT-FAILED"

#: Printed by the root filesystem image's /sbin/init once it runs.
ROOTFS_READY_MARKER = "VMM-REFERENCE-ROOTFS-READY"

#: How long the initramfs waits for the ``root=`` block device to appear.
ROOT_WAIT_SECONDS = 5

# Kernel modules the initramfs loads, each after the modules it depends on (read from the
# modules themselves: the package has no modules.dep): the ACPI power button and the input
# device acpid reads; both virtio transports (virtio-mmio finds the VMM's devices through the DSDT,
# virtio-pci on the PCI bus of a ``transport="pci"`` VM; each finds nothing on the other kind of VM),
# virtio-blk, virtio-net and virtio-rng; ext4 and its dependencies where they are not built in (Debian's
# cloud kernel has ext4 built in, virtio as modules); vsock and its virtio transport, for the guest agent.
# Names missing from a kernel are left out.
_GUEST_MODULES = ["evdev", "button", "virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio_rng",
                  "ext4", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"]

#: Where the guest agent's sources are: in the package (``vmm_reference/guest_agent``), so an
#: installed wheel can build it too.
AGENT_SOURCE_DIR = Path(__file__).resolve().parent / "guest_agent"

#: How the agent is compiled: static, so that it runs whatever libc the guest has (or none).
AGENT_CFLAGS = ["-static", "-O2", "-Wall", "-Wextra"]

# Both inits start the guest agent (vmm-agent, on vsock port 52) before their ready line.
# With a virtio-vsock device (virtio device id 0x0013), the default init then waits, serving
# the agent, until the guest is powered off (the ACPI power button: ``vm.stop()``), instead
# of rebooting at once; ``vmm.init=shell`` gives the shell as before.
_AGENT_START = "[ -x /sbin/vmm-agent ] && /sbin/vmm-agent >/dev/null 2>&1 &"
_AGENT_WAIT = """if [ "$mode" != shell ] && grep -qx 0x0013 /sys/bus/virtio/devices/*/device 2>/dev/null; then
  while :; do sleep 3600; done
fi"""
_MODE = """mode=
case " $(cat /proc/cmdline) " in
  *" vmm.init=shell "*) mode=shell ;;
esac"""

_INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in /lib/vmm/*.ko; do insmod "$m" 2>/dev/null; done
root= fstype= flags=rw init=/sbin/init
set -f
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=/dev/*) root="${{arg#root=}}" ;;
    rootfstype=*) fstype="${{arg#rootfstype=}}" ;;
    ro|rw) flags="$arg" ;;
    init=*) init="${{arg#init=}}" ;;
  esac
done
set +f
if [ -n "$root" ]; then
  n=0
  while [ ! -b "$root" ] && [ $n -lt {ROOT_WAIT_SECONDS * 10} ]; do
    grep -q " /dev devtmpfs " /proc/mounts || mdev -s
    sleep 0.1; n=$((n + 1))
  done
  mkdir -p /newroot
  if [ ! -b "$root" ]; then
    echo "{GUEST_ROOT_FAILED_MARKER} root=$root: no such block device after {ROOT_WAIT_SECONDS} s"
  elif ! mount ${{fstype:+-t $fstype}} -o "$flags" "$root" /newroot; then
    echo "{GUEST_ROOT_FAILED_MARKER} root=$root: mount -o $flags failed"
  elif [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
    echo "{GUEST_ROOT_FAILED_MARKER} root=$root: no $init on it"
    umount /newroot
  else
    for d in dev proc sys; do
      [ -d "/newroot/$d" ] && mount --move "/$d" "/newroot/$d" || umount -l "/$d"
    done
    exec switch_root /newroot "$init"
  fi
fi
acpid -d -c /etc/acpi >/dev/null 2>&1 &
{_AGENT_START}
echo "<6>vmm-reference: /init ready" >/dev/kmsg 2>/dev/null
echo "{GUEST_READY_MARKER} kernel=$(uname -r) cpus=$(nproc)"
{_MODE}
[ "$mode" = shell ] && setsid cttyhack sh
{_AGENT_WAIT}
echo "{GUEST_DONE_MARKER}"
reboot -f
"""

# The root filesystem image's /sbin/init: like the initramfs's, on a disk. /proc, /sys and
# /dev arrive mounted from the initramfs (mounted here otherwise); / is left read-only
# before the reboot so that the image is clean when the VM ends.
_ROOTFS_INIT = f"""#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sys /sys
[ -c /dev/null ] || mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
acpid -d -c /etc/acpi >/dev/null 2>&1 &
{_AGENT_START}
echo "{ROOTFS_READY_MARKER} kernel=$(uname -r) cpus=$(nproc)"
{_MODE}
[ "$mode" = shell ] && setsid cttyhack sh
{_AGENT_WAIT}
echo "{GUEST_DONE_MARKER}"
sync
mount -o remount,ro / 2>/dev/null
reboot -f
"""

#: Size of the root filesystem image (about 23 MiB of it free).
ROOTFS_SIZE_MIB = 32


# busybox acpid runs /etc/acpi/PWRF/00000080 when the power button (KEY_POWER) is pressed.
_POWER_BUTTON_SCRIPT = f"""#!/bin/sh
echo "{GUEST_POWER_BUTTON_MARKER}" >/dev/console
poweroff -f
"""


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


def _safe(text: str) -> str:
    return re.sub(r"[^\w.+-]", "_", text)


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


def _only(paths: list[Path], what: str) -> Path:
    if len(paths) != 1:
        raise AssetError(f"expected one {what} in the package, found {len(paths)}")
    return paths[0]


def _offline() -> bool:
    return os.environ.get("VMM_REFERENCE_OFFLINE", "") not in ("", "0")


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
    modules_used = module_load_order(modules, _GUEST_MODULES)
    recipe = hashlib.sha256(_INIT_SCRIPT.encode() + _POWER_BUTTON_SCRIPT.encode() + agent.parent.name.encode()
                            + "".join(str(m) for m in modules_used).encode()).hexdigest()[:12]
    initrd = busybox.parent / f"initramfs-{_safe(modules.name)}-{recipe}.cpio.gz"
    if not initrd.exists():
        d = stat.S_IFDIR | 0o755
        extra = [CpioEntry("lib", d), CpioEntry("lib/vmm", d), CpioEntry("etc/acpi", d),
                 CpioEntry("etc/acpi/PWRF", d),
                 CpioEntry("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, _POWER_BUTTON_SCRIPT.encode()),
                 CpioEntry("sbin", d), CpioEntry("sbin/vmm-agent", stat.S_IFREG | 0o755, agent.read_bytes())]
        # Numbered so that the init's glob (/lib/vmm/*.ko) loads them in this order.
        extra += [CpioEntry(f"lib/vmm/{i:02d}-{_module_name(m)}.ko", stat.S_IFREG | 0o644, _module_bytes(m))
                  for i, m in enumerate(modules_used)]
        _say(f"building {initrd.name}")
        build_initramfs(busybox, _INIT_SCRIPT, initrd, extra)
    rootfs = _rootfs(base, busybox, agent)
    assets = GuestAssets(package, version, vmlinux, bzimage, modules, initrd, busybox, rootfs, agent)
    recorded = (busybox.parent / MANIFEST).read_text() if (busybox.parent / MANIFEST).exists() else ""
    if (not (root / MANIFEST).exists() or initrd.name not in recorded or rootfs.name not in recorded
            or not (agent.parent / MANIFEST).exists()):
        record_manifests(assets)
    return assets


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


def _rootfs(base: Path, busybox: Path, agent: Path) -> Path:
    """Build (once) the ext4 root filesystem image beside ``busybox``; return its path.

    Keyed like the initramfs: by busybox's version (its directory) and a hash of the recipe
    (the image's /sbin/init, the power-button script, the agent's build and the size).
    """
    recipe = hashlib.sha256(_ROOTFS_INIT.encode() + _POWER_BUTTON_SCRIPT.encode() + agent.parent.name.encode()
                            + str(ROOTFS_SIZE_MIB).encode()).hexdigest()[:12]
    image = busybox.parent / f"rootfs-{recipe}.ext4"
    if image.exists():
        return image
    mkfs = _e2fsprogs(base, "mkfs.ext4")
    listed = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
    if listed.returncode != 0 or not listed.stdout.strip():
        raise AssetError(f"`{busybox} --list-full` failed: {listed.stderr.strip()}")
    _say(f"building {image.name} (mkfs.ext4 -d)")
    with tempfile.TemporaryDirectory(dir=busybox.parent) as tmp:
        tree = Path(tmp) / "root"
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "mnt",
                  "var", "lib", "etc/acpi/PWRF"]:
            (tree / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(busybox, tree / "bin" / "busybox")
        (tree / "bin" / "busybox").chmod(0o755)
        for applet in listed.stdout.split():
            link = tree / applet
            if applet in ("sbin/init", "linuxrc") or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
        for path, text in (("sbin/init", _ROOTFS_INIT), ("etc/acpi/PWRF/00000080", _POWER_BUTTON_SCRIPT)):
            (tree / path).write_text(text)
            (tree / path).chmod(0o755)
        (tree / "etc" / "hostname").write_text("vmm-reference\n")
        shutil.copyfile(agent, tree / "sbin" / "vmm-agent")
        (tree / "sbin" / "vmm-agent").chmod(0o755)
        (tree / "var" / "run").symlink_to("../run")
        partial = Path(tmp) / image.name
        _run([*mkfs, "-q", "-t", "ext4", "-L", "rootfs", "-d", str(tree), "-F", str(partial), f"{ROOTFS_SIZE_MIB}M"])
        partial.replace(image)
    return image


def _agent_sources() -> list[Path]:
    sources = sorted(p for p in AGENT_SOURCE_DIR.glob("*") if p.suffix in (".c", ".h")) \
        if AGENT_SOURCE_DIR.is_dir() else []
    if not any(p.suffix == ".c" for p in sources):
        raise AssetError(f"the guest agent's sources are missing from {AGENT_SOURCE_DIR} (part of the "
                         "vmm_reference package: reinstall it)")
    return sources


def _agent_path(base: Path) -> Path:
    """Where the agent built from the current sources lives in the cache (keyed by their hash and the flags)."""
    digest = hashlib.sha256(" ".join(AGENT_CFLAGS).encode())
    for source in _agent_sources():
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return base / f"vmm-agent-{digest.hexdigest()[:12]}" / "vmm-agent"


def _build_agent(base: Path) -> Path:
    """Compile the guest agent with ``gcc -static`` into the cache, once per version of its sources."""
    out = _agent_path(base)
    if out.exists():
        return out
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if not gcc:
        raise AssetError("gcc is needed to build the guest agent (vmm_reference/guest_agent/agent.c; "
                         "Debian: apt-get install gcc libc6-dev)")
    _say(f"building the guest agent {out.parent.name} (gcc -static)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".tmp")
    sources = [str(p) for p in _agent_sources() if p.suffix == ".c"]
    _run([gcc, *AGENT_CFLAGS, "-o", str(partial), *sources])
    partial.replace(out)
    return out


def build_agent(cache: Optional[Union[str, Path]] = None) -> Path:
    """Build the guest agent ``vmm-agent`` (cached, keyed by a hash of its sources) and return its path.

    It is a static x86-64 binary: copy it into any guest and start it early (docs/guide.md),
    or run it on the host with ``--listen-unix PATH`` to talk to it over a UNIX socket. Needs
    gcc and the static C library (Debian: ``gcc``, which brings ``libc6-dev``).
    """
    base = cache_dir(cache)
    out = _agent_path(base)
    if out.exists():
        return out
    with _cache_lock(cache):
        return _build_agent(base)


def _find_tool(tool: str) -> Optional[str]:
    """Find the host's ``tool`` on ``$PATH`` or in /usr/sbin and /sbin (not on a user's PATH on Debian)."""
    return shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))


def _e2fsprogs_tree(base: Path) -> Optional[Path]:
    """Return the newest e2fsprogs unpacked in the cache, if any."""
    trees = sorted(base.glob("e2fsprogs_*/.complete"), key=lambda p: p.stat().st_mtime)
    return trees[-1].parent if trees else None


def _e2fsprogs_download(base: Path) -> Path:
    """Download e2fsprogs and the libraries it links (not libc) and unpack them into one directory."""
    version = _version("e2fsprogs")
    tree = base / f"e2fsprogs_{_safe(version)}"
    if (tree / ".complete").exists():
        return tree
    deps = re.findall(r"^\s*\|?(?:Pre)?Depends: (lib[\w.+-]+)$", _run(["apt-cache", "depends", "e2fsprogs"]), re.M)
    packages = ["e2fsprogs", *dict.fromkeys(d for d in deps if not d.startswith("libc6"))]
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        _say(f"downloading and unpacking {' '.join(packages)} (apt-get download): no mkfs.ext4 on this host")
        unpacked = _download(packages, Path(tmp))
        merged = Path(tmp) / "merged"
        for directory in unpacked.values():
            shutil.copytree(directory, merged, symlinks=True, dirs_exist_ok=True)
        if tree.exists():
            shutil.rmtree(tree)
        merged.rename(tree)
    (tree / ".complete").touch()
    return tree


def _e2fsprogs(base: Path, tool: str, download: bool = True) -> list[str]:
    """Return the command that runs e2fsprogs' ``tool``: the host's, else the cache's (downloaded if allowed)."""
    found = _find_tool(tool)
    if found:
        return [found]
    tree = _e2fsprogs_tree(base)
    if tree is None:
        if not download:
            raise AssetError(f"no {tool} on this host and no e2fsprogs in {base}: install e2fsprogs, or run "
                             "`python -m vmm_reference.assets` (it unpacks Debian's e2fsprogs into the cache)")
        tree = _e2fsprogs_download(base)
    binaries = [tree / d / tool for d in ("sbin", "usr/sbin", "bin", "usr/bin") if (tree / d / tool).exists()]
    if not binaries:
        raise AssetError(f"e2fsprogs in {tree} has no {tool}")
    libs = sorted({str(p.parent) for p in tree.rglob("*.so*")})
    env = [f"LD_LIBRARY_PATH={os.pathsep.join(libs)}"]
    if (tree / "etc" / "mke2fs.conf").exists():
        env.append(f"MKE2FS_CONFIG={tree / 'etc' / 'mke2fs.conf'}")
    return ["env", *env, str(binaries[0])]


def e2fsprogs_command(tool: str, cache: Optional[Union[str, Path]] = None) -> list[str]:
    """Return the command (a list to extend with arguments) that runs e2fsprogs' ``tool`` here.

    ``tool`` is ``mkfs.ext4``, ``debugfs``, ``e2fsck`` and so on. The host's own is used when
    it is installed (also from /usr/sbin when that is not on ``$PATH``); otherwise the copy
    of Debian's e2fsprogs package the asset cache holds, fetched with ``apt-get download``
    unless ``VMM_REFERENCE_OFFLINE`` is set. No root is needed: for example
    ``subprocess.run([*e2fsprogs_command("mkfs.ext4"), "-d", "tree/", "disk.img", "64M"])``
    makes an ext4 image holding ``tree/``.
    """
    if _find_tool(tool) or _offline():
        return _e2fsprogs(cache_dir(cache), tool, download=False)
    with _cache_lock(cache):
        return _e2fsprogs(cache_dir(cache), tool)


def _fetch_lab(cache: Optional[Union[str, Path]] = None) -> LabAssets:
    base = cache_dir(cache)
    base.mkdir(parents=True, exist_ok=True)
    package, version, root = _kernel_package(base, "linux-image-amd64")
    return LabAssets(package, version, *_kernel_files(root), _busybox(base))


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
    """Fetch Debian's generic kernel (with kvm/kvm-amd modules) and busybox for the nested-KVM lab."""
    with _cache_lock(cache):
        return _fetch_lab(cache)


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


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: fetch the assets and print their paths (``--json`` for machines)."""
    parser = argparse.ArgumentParser(
        prog="python -m vmm_reference.assets",
        description="Fetch Debian's cloud kernel and busybox into the cache and build a bootable initramfs "
                    "and an ext4 root filesystem image; or list, verify or clear the cache.",
    )
    parser.add_argument("action", nargs="?", default="fetch", choices=["fetch", "agent", "list", "verify", "clear"],
                        help="fetch (the default) and print the paths; agent: build the guest agent and print "
                             "its path; list the cache's entries; verify the built files' sha256 against their "
                             "manifests; clear the cache")
    parser.add_argument("--cache-dir", help="cache directory (default: $VMM_REFERENCE_CACHE or "
                        "~/.cache/vmm-reference)")
    parser.add_argument("--lab", action="store_true", help="also fetch the nested-KVM lab's generic kernel")
    parser.add_argument("--json", action="store_true", help="print the paths as JSON")
    parser.add_argument("--env", action="store_true",
                        help="print shell exports (VMM_VMLINUX, VMM_BZIMAGE, VMM_INITRD, VMM_ROOTFS) for eval")
    args = parser.parse_args(argv)
    if args.action == "list":
        print(f"{cache_dir(args.cache_dir)}:")
        for name, size, complete in listing(args.cache_dir):
            print(f"  {name}  {size / (1 << 20):.1f} MiB{'' if complete else '  (incomplete)'}")
        return 0
    if args.action == "verify":
        problems = verify(args.cache_dir)
        for problem in problems:
            print(f"vmm_reference.assets: {problem}", file=sys.stderr)
        print("ok" if not problems else f"{len(problems)} problem(s); `clear` and fetch again")
        return 1 if problems else 0
    if args.action == "clear":
        print(f"freed {clear(args.cache_dir) / (1 << 20):.1f} MiB from {cache_dir(args.cache_dir)}")
        return 0
    if args.action == "agent":
        try:
            print(build_agent(args.cache_dir))
        except AssetError as e:
            print(f"vmm_reference.assets: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        result: dict[str, object] = {"guest": asdict(fetch_guest(args.cache_dir))}
        if args.lab:
            result["lab"] = asdict(fetch_lab(args.cache_dir))
    except AssetError as e:
        print(f"vmm_reference.assets: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, default=str, indent=2))
    elif args.env:
        guest = result["guest"]
        assert isinstance(guest, dict)
        for name, key in (("VMM_VMLINUX", "vmlinux"), ("VMM_BZIMAGE", "bzimage"), ("VMM_INITRD", "initrd"),
                          ("VMM_ROOTFS", "rootfs")):
            print(f"export {name}={shlex.quote(str(guest[key]))}")
    else:
        for group, values in result.items():
            assert isinstance(values, dict)
            for key, value in values.items():
                print(f"{group}.{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
