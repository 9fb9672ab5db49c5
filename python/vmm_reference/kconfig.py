"""``python -m vmm_reference.kconfig``: a kernel configuration fragment for vmm-reference guests.

It turns ``make defconfig`` (or ``make defconfig kvm_guest.config``) into a kernel with
everything the VMM offers built in, so that such a kernel boots with no modules at all: both
virtio transports, the block, network, vsock, file system and entropy devices, 9p, the 8250
console, ACPI's power button, devtmpfs, tmpfs, overlayfs and cgroups (what ``root="host"``
mounts), debugfs and tracefs::

    python -m vmm_reference.kconfig > .config-fragment
    make defconfig
    scripts/kconfig/merge_config.sh -m .config .config-fragment
    make olddefconfig && make -j"$(nproc)" bzImage
    vmm-reference --kernel path=arch/x86/boot/bzImage --root host -- ./my-test.sh

``--check FILE`` reads a ``.config`` and lists what it lacks (exit status 1 if anything).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

__all__ = ["FRAGMENT", "OPTIONS", "main", "missing"]

#: The options, each with why the VMM's guests want it.
OPTIONS: dict[str, str] = {
    "HYPERVISOR_GUEST": "a KVM guest",
    "PARAVIRT": "paravirtualized clock and spinlocks",
    "KVM_GUEST": "kvmclock, paravirtual EOI",
    "ACPI": "the DSDT (virtio-mmio devices, the PCI host bridge), MADT, PM1",
    "ACPI_BUTTON": "the power button (vm.stop())",
    "INPUT_EVDEV": "the power button's input device",
    "PCI": "virtio-pci (transport=\"pci\")",
    "PCI_MSI": "MSI-X vectors per queue",
    "VIRTIO": "the virtio core",
    "VIRTIO_MENU": "the virtio drivers' menu",
    "VIRTIO_MMIO": "virtio-mmio (the default transport), found in the DSDT",
    "VIRTIO_MMIO_CMDLINE_DEVICES": "virtio-mmio devices named on the command line (acpi=False)",
    "VIRTIO_PCI": "virtio-pci",
    "VIRTIO_BLK": "disks (/dev/vda, ...)",
    "NETDEVICES": "network devices",
    "NET_CORE": "network devices",
    "VIRTIO_NET": "virtio-net (TAP, passt)",
    "INET": "TCP/IP",
    "UNIX": "UNIX sockets",
    "VSOCKETS": "vsock (the guest agent: vm.run, -- COMMAND)",
    "VIRTIO_VSOCKETS": "virtio-vsock",
    "FUSE_FS": "FUSE, under virtio-fs",
    "VIRTIO_FS": "shares (Share, --fs) and root=\"host\"",
    "NET_9P": "9p",
    "NET_9P_VIRTIO": "9p over virtio",
    "9P_FS": "9p file systems",
    "9P_FS_POSIX_ACL": "9p ACLs",
    "HW_RANDOM": "hardware random number generators",
    "HW_RANDOM_VIRTIO": "virtio-rng (rng=True)",
    "SERIAL_8250": "COM1",
    "SERIAL_8250_CONSOLE": "the console on COM1 (console=ttyS0)",
    "BLK_DEV_INITRD": "the initramfs",
    "RD_GZIP": "a gzip initramfs (the package's)",
    "BINFMT_ELF": "programs",
    "BINFMT_SCRIPT": "scripts (#!)",
    "PROC_FS": "/proc",
    "SYSFS": "/sys",
    "DEVTMPFS": "/dev",
    "DEVTMPFS_MOUNT": "/dev mounted before init",
    "TMPFS": "/tmp, /run (root=\"host\")",
    "OVERLAY_FS": "writable /etc, /var, /root, /home over the host's (root=\"host\")",
    "CGROUPS": "cgroups",
    "MEMCG": "the memory controller",
    "CGROUP_PIDS": "the pids controller",
    "EXT4_FS": "ext4 disks (the package's root file system image)",
    "DEBUG_FS": "debugfs",
    "FTRACE": "tracefs",
}

#: The fragment ``main`` prints.
FRAGMENT: str = "".join(f"# {why}\nCONFIG_{name}=y\n" for name, why in OPTIONS.items())


def missing(config_text: str) -> list[str]:
    """Return the options of :data:`OPTIONS` that ``config_text`` (a ``.config``) does not build in."""
    built_in = {line.split("=", 1)[0] for line in config_text.splitlines() if line.endswith("=y")}
    return [name for name in OPTIONS if f"CONFIG_{name}" not in built_in]


def main(argv: Optional[list[str]] = None) -> int:
    """Print the fragment, or with ``--check FILE`` what a ``.config`` lacks."""
    p = argparse.ArgumentParser(prog="python -m vmm_reference.kconfig", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", metavar="FILE", help="list the options a .config does not build in")
    args = p.parse_args(argv)
    if args.check is None:
        sys.stdout.write(FRAGMENT)
        return 0
    lacking = missing(Path(args.check).read_text())
    for name in lacking:
        print(f"CONFIG_{name} is not built in ({OPTIONS[name]})")
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
