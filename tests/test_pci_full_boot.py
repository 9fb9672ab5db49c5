"""The Debian cloud kernel on virtio-pci, where KVM is hardware-backed (the nested-KVM lab on PVM).

The guest finds every device through the PCI bus (ECAM from the MCFG, ``virtio_pci`` from the kernel
package's modules): disks, vsock with the guest agent, the entropy device; with MSI-X, and with
``pci=nomsi`` on INTx. Snapshot/restore and fork carry the PCI state (BARs, MSI-X table, routes).
"""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from vmm_reference import Disk, Rng, Vm

pytestmark = pytest.mark.full_boot

IMAGE_BYTES = 8 << 20


def _image(path) -> str:
    """An image whose first MiB is a known pattern; the rest zeros."""
    block = hashlib.sha256(b"pci").digest() * (1 << 15)  # 1 MiB
    with open(path, "wb") as f:
        f.write(block)
        f.truncate(IMAGE_BYTES)
    return str(path)


def _boot(vm_factory, guest_assets, tmp_path, nomsi: bool = False, writable: bool = True) -> Vm:
    cmdline = "reboot=k panic=-1 quiet" + (" pci=nomsi" if nomsi else "")
    vm = vm_factory(memory_mib=256, vcpus=2, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline=cmdline, transport="pci", vsock=True, rng=Rng(rate=1 << 20),
                    disks=[Disk(_image(tmp_path / "a.img"), read_only=not writable),
                           Disk(_image(tmp_path / "b.img"), read_only=True, serial="pci-ro")])
    vm.start()
    vm.wait_ready(timeout=180)
    return vm


def sh(vm: Vm, cmd: str) -> str:
    r = vm.run(["sh", "-c", cmd], text=True, timeout=120)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


@pytest.mark.parametrize("nomsi", [False, True], ids=["msix", "intx"])
def test_disks_vsock_and_rng_on_pci(vm_factory, guest_assets, tmp_path, nomsi):
    vm = _boot(vm_factory, guest_assets, tmp_path, nomsi)
    info = vm.boot_info
    assert [d.bdf for d in info.devices] == ["00:01.0", "00:02.0", "00:03.0", "00:04.0"]
    assert {d.transport for d in info.devices} == {"pci"}
    assert "pci=off" not in info.cmdline
    # Every virtio device hangs off the PCI bus, driven by virtio_pci.
    paths = sh(vm, "for d in /sys/bus/virtio/devices/*; do readlink -f $d; done").split()
    assert len(paths) == 4 and all("/pci0000:00/0000:00:0" in p for p in paths), paths
    assert sh(vm, "ls /sys/bus/pci/drivers/virtio-pci").count("0000:00:0") == 4
    # Disks: read the pattern, write through the writable one, refuse writes on the other.
    first = hashlib.sha256(hashlib.sha256(b"pci").digest() * (1 << 15)).hexdigest()
    assert sh(vm, "dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum").split()[0] == first
    assert sh(vm, "cat /sys/block/vdb/serial") == "pci-ro"
    sh(vm, "echo written-over-pci | dd of=/dev/vda bs=512 seek=4096 conv=fsync 2>/dev/null")
    with open(tmp_path / "a.img", "rb") as f:
        f.seek(4096 * 512)
        assert f.read(17) == b"written-over-pci\n"
    refused = vm.run(["sh", "-c", "echo x | dd of=/dev/vdb bs=512 count=1 oflag=direct"], text=True, timeout=60)
    assert refused.returncode != 0
    # Entropy through hw_random.
    assert sh(vm, "cat /sys/class/misc/hw_random/rng_current").strip() == "virtio_rng.0"
    assert sh(vm, "head -c 4096 /dev/hwrng | wc -c").strip() == "4096"
    # Interrupts: MSI-X vectors per queue, or the IOAPIC line with pci=nomsi.
    interrupts = sh(vm, "cat /proc/interrupts")
    virtio = [line for line in interrupts.splitlines() if "virtio" in line]
    assert virtio, interrupts
    if nomsi:
        assert not any("PCI-MSI" in line for line in virtio), virtio
        assert any("IO-APIC" in line for line in virtio), virtio
    else:
        assert all("PCI-MSI" in line for line in virtio), virtio
        assert any(re.search(r"virtio\d+-(req|input)", line) for line in virtio), virtio
    # The interrupts were delivered: requests completed, so their counters moved.
    counts = [sum(int(x) for x in line.split()[1:3] if x.isdigit()) for line in virtio]
    assert sum(counts) > 0, virtio


def test_snapshot_restore_and_fork_of_a_pci_guest(vm_factory, guest_assets, tmp_path):
    vm = _boot(vm_factory, guest_assets, tmp_path, writable=False)  # clones share read-only disks
    sh(vm, "echo before > /tmp/mark")
    vm.snapshot(tmp_path / "snap")
    clones = vm.fork(2)
    vm.close()
    try:
        for i, c in enumerate(clones):
            c.resume()
            c.wait_ready(timeout=120)
            assert sh(c, f"cat /tmp/mark; echo clone{i}") == f"before\nclone{i}\n"
            assert sh(c, "dd if=/dev/vda bs=4k count=1 2>/dev/null | wc -c").strip() == "4096"
            assert sh(c, "head -c 64 /dev/hwrng | wc -c").strip() == "64"
    finally:
        for c in clones:
            c.close()
    restored = Vm.restore(tmp_path / "snap")
    try:
        restored.resume()
        restored.wait_ready(timeout=120)
        assert sh(restored, "cat /tmp/mark") == "before\n"
        assert sh(restored, "dd if=/dev/vdb bs=4k count=1 2>/dev/null | wc -c").strip() == "4096"
        assert [d.transport for d in restored.boot_info.devices] == ["pci"] * 4
    finally:
        restored.close()
    assert os.path.exists(tmp_path / "snap")
