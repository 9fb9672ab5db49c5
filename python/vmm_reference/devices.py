"""Devices a VM can be given, and what the VM reports about the devices it has."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from .errors import VmConfigError

__all__ = ["DeviceInfo", "Disk", "DiskArg", "NetArg", "Rng", "Share", "Tap", "UserNet", "Vsock"]


@dataclass(frozen=True)
class Disk:
    """A raw disk image the guest sees as a virtio-blk device (``/dev/vda``, ``/dev/vdb``, ...).

    The image's size, rounded down to 512-byte sectors, is the disk's capacity; it must be
    at least one sector. The guest's writes go straight to the file (``read_only=True``
    opens it read-only and fails the guest's writes with an I/O error). ``serial`` (at most
    20 ASCII characters) is what the guest reads in ``/sys/block/vdX/serial``.
    """

    path: Union[str, os.PathLike[str]]
    read_only: bool = False
    serial: Optional[str] = None


DiskArg = Union[str, "os.PathLike[str]", Disk]
"""What ``Vm(disks=[...])`` takes: a :class:`Disk`, or a path for a writable disk."""


def disk_tuples(disks: object) -> list[tuple[str, bool, Optional[str]]]:
    """Turn ``disks`` into what the native layer takes; type errors name ``disks[i]``."""
    if isinstance(disks, (str, bytes, os.PathLike, Disk)) or not hasattr(disks, "__iter__"):
        raise VmConfigError(f"invalid disks={disks!r}: expected a list of paths or Disk objects")
    out = []
    for i, disk in enumerate(disks):
        if isinstance(disk, (str, os.PathLike)):
            disk = Disk(disk)
        if not isinstance(disk, Disk):
            raise VmConfigError(f"invalid disks[{i}]={disk!r}: expected a path or a Disk")
        path = os.fspath(disk.path)
        if not isinstance(path, str):
            raise VmConfigError(f"invalid disks[{i}].path={disk.path!r}: expected a str path")
        if not isinstance(disk.read_only, bool):
            raise VmConfigError(f"invalid disks[{i}].read_only={disk.read_only!r}: expected True or False")
        if disk.serial is not None and not isinstance(disk.serial, str):
            raise VmConfigError(f"invalid disks[{i}].serial={disk.serial!r}: expected a str or None")
        out.append((path, disk.read_only, disk.serial))
    return out


@dataclass(frozen=True)
class Share:
    """A host directory the guest mounts by its tag: ``mount -t virtiofs TAG /mnt``.

    Served in the VMM's process (no daemon) as a virtio-fs device; the guest needs
    ``CONFIG_VIRTIO_FS`` (the Debian kernel's ``virtiofs`` module). The guest reaches nothing
    outside ``path`` (not through ``..``, symbolic links, hard links or renames) and acts as
    the VMM's own user; ``read_only=True`` is enforced by the host, not only by the guest's
    mount flags. See ``docs/security.md``.
    """

    path: Union[str, os.PathLike[str]]
    """The host directory."""
    tag: str
    """What the guest mounts it by: 1 to 36 bytes, unique among the VM's shares."""
    read_only: bool = False
    """Refuse every change the guest asks for."""
    protocol: str = "virtiofs"
    """``"virtiofs"`` (``mount -t virtiofs TAG DIR``) or ``"9p"`` (``mount -t 9p -o
    trans=virtio,version=9p2000.L TAG DIR``, for kernels without virtio-fs, as ``make
    defconfig kvm_guest.config`` builds them)."""


def share_tuples(shares: object) -> list[tuple[str, str, bool, str]]:
    """Turn ``shares`` into what the native layer takes; type errors name ``shares[i]``."""
    if isinstance(shares, (str, bytes, os.PathLike, Share)) or not hasattr(shares, "__iter__"):
        raise VmConfigError(f"invalid shares={shares!r}: expected a list of Share objects")
    out = []
    for i, share in enumerate(shares):
        if not isinstance(share, Share):
            raise VmConfigError(f"invalid shares[{i}]={share!r}: expected a Share")
        path = os.fspath(share.path)
        if not isinstance(path, str):
            raise VmConfigError(f"invalid shares[{i}].path={share.path!r}: expected a str path")
        if not isinstance(share.tag, str):
            raise VmConfigError(f"invalid shares[{i}].tag={share.tag!r}: expected a str")
        if not isinstance(share.read_only, bool):
            raise VmConfigError(f"invalid shares[{i}].read_only={share.read_only!r}: expected True or False")
        if not isinstance(share.protocol, str):
            raise VmConfigError(f'invalid shares[{i}].protocol={share.protocol!r}: expected "virtiofs" or "9p"')
        out.append((path, share.tag, share.read_only, share.protocol))
    return out


@dataclass(frozen=True)
class DeviceInfo:
    """A device of the VM, as :attr:`Vm.boot_info` lists it."""

    kind: str
    """``"virtio-blk"``, ``"virtio-net"``, ``"virtio-vsock"``, ``"virtio-rng"`` or ``"virtio-fs"``."""
    mmio_base: int
    """Guest-physical address of its registers: the virtio-mmio page, or on PCI its BAR 0
    where the VMM placed it (the guest may move it)."""
    mmio_len: int
    """Length of that range."""
    gsi: int
    """Its interrupt line (IOAPIC pin); on PCI, INTx's, for drivers without MSI-X."""
    path: Optional[str] = None
    """The backing file (disks)."""
    read_only: bool = False
    """Whether the guest's writes are refused (disks)."""
    serial: Optional[str] = None
    """The disk's serial."""
    transport: str = "mmio"
    """How the guest reaches it: ``"mmio"`` or ``"pci"``."""
    bdf: Optional[str] = None
    """On PCI, its bus, device and function as Linux writes them (``"00:01.0"``)."""
    msix_vectors: int = 0
    """On PCI, its MSI-X vectors: one per queue and one for configuration changes."""


@dataclass(frozen=True)
class Rng:
    """A virtio-rng device: entropy for the guest from the host's ``getrandom``.

    ``Vm(rng=True)`` gives one without a limit; ``Vm(rng=Rng(rate=4096))`` at most ``rate``
    bytes per second (a bucket of one second's worth). The guest's ``hw_random`` uses it as
    ``virtio_rng.0``.
    """

    rate: Optional[int] = None


@dataclass(frozen=True)
class Vsock:
    """A virtio-vsock device: sockets between the host and the guest, without a network.

    The host side is a UNIX socket at ``uds`` (by default one in a private temporary
    directory, removed with the VM), with Firecracker's protocol: a host program connects to
    it and writes ``CONNECT <port>`` and a newline to reach the guest's listener on ``port``; a guest
    connecting to the host (CID 2) port ``P`` reaches whoever listens on ``<uds>_<P>``.
    :attr:`Vm.vsock <vmm_reference.Vm.vsock>` does both for you.
    """

    cid: int = 3
    """The guest's context id, 3 to 2**32 - 2."""
    uds: Optional[Union[str, os.PathLike[str]]] = None
    """Where the VMM listens for host connections (must not exist yet)."""


@dataclass(frozen=True)
class Tap:
    """A virtio-net device on a TAP interface of the host (``eth0`` in the guest for the first).

    The TAP is opened by ``name`` and created if it does not exist and this process may
    (``CAP_NET_ADMIN``); otherwise create it beforehand with ``ip tuntap add dev NAME mode tap
    user $USER``. Checksum and segmentation offloads pass through when the guest takes them.
    ``mac``: the guest's MAC address (random locally administered when ``None``).
    """

    name: str
    mac: Optional[str] = None


@dataclass(frozen=True)
class UserNet:
    """A virtio-net device with user-mode networking through passt: no root needed.

    The guest gets an address by DHCP and reaches the host's services and the outside
    through the host's own sockets; ``forward={8080: 80}`` makes the host's TCP port 8080
    reach the guest's port 80. Needs ``passt`` (Debian: ``apt-get install passt``).
    """

    forward: Optional[dict[int, int]] = None
    mac: Optional[str] = None


NetArg = Union[Tap, UserNet]
"""What ``Vm(net=[...])`` takes."""


def net_tuples(net: object) -> list[tuple[str, str, Optional[str], list[tuple[int, int]]]]:
    """Turn ``net`` into what the native layer takes; type errors name ``net[i]``."""
    if isinstance(net, (str, bytes, Tap, UserNet)) or not hasattr(net, "__iter__"):
        raise VmConfigError(f"invalid net={net!r}: expected a list of Tap or UserNet objects")
    out = []
    for i, dev in enumerate(net):
        if isinstance(dev, Tap):
            if not isinstance(dev.name, str):
                raise VmConfigError(f"invalid net[{i}].name={dev.name!r}: expected a str")
            kind, name, forward = "tap", dev.name, []
        elif isinstance(dev, UserNet):
            pairs = dict(dev.forward or {})
            if not all(isinstance(p, int) and not isinstance(p, bool) for kv in pairs.items() for p in kv):
                raise VmConfigError(f"invalid net[{i}].forward={dev.forward!r}: expected {{host port: guest port}}")
            kind, name, forward = "user", "", sorted(pairs.items())
        else:
            raise VmConfigError(f"invalid net[{i}]={dev!r}: expected a Tap or a UserNet")
        if dev.mac is not None and not isinstance(dev.mac, str):
            raise VmConfigError(f"invalid net[{i}].mac={dev.mac!r}: expected a str like 06:00:ac:10:00:02")
        out.append((kind, name, dev.mac, forward))
    return out
