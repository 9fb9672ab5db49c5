"""Shares in the Debian cloud kernel (``virtiofs`` from its package), where KVM is hardware-backed.

A tree on the host is mounted in the guest and read back with its sha256s; the guest's writes
appear on the host; a read-only share refuses them on the host's side; links out of the share and
``..`` lead nowhere outside it; both virtio transports.
"""

from __future__ import annotations

import os

import pytest
from share_probe import lab_tree, sh
from vmm_reference import Share, Vm, VmSnapshotError

pytestmark = pytest.mark.full_boot


def _boot(vm_factory, guest_assets, shares, transport: str = "mmio") -> Vm:
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="reboot=k panic=-1 quiet", vsock=True, transport=transport, shares=shares)
    vm.start()
    vm.wait_ready(timeout=180)
    return vm


@pytest.mark.parametrize("transport", ["mmio", "pci"])
def test_a_share_reads_back_and_takes_writes(vm_factory, guest_assets, tmp_path, transport):
    share = tmp_path / "share"
    share.mkdir()
    sums = lab_tree(share)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_bytes(b"keep\n")
    vm = _boot(vm_factory, guest_assets, [Share(share, tag="src"), Share(ro, tag="ro", read_only=True)], transport)
    assert [d.kind for d in vm.boot_info.devices].count("virtio-fs") == 2
    sh(vm, "mkdir -p /mnt/src /mnt/ro && mount -t virtiofs src /mnt/src && mount -t virtiofs ro /mnt/ro")
    got = dict(line.split()[::-1] for line in sh(vm, "cd /mnt/src && sha256sum hello.txt dir/inner.txt "
                                                     "dir/deeper/big.bin").splitlines())
    assert got == sums
    # Writes land on the host, renames and removals too.
    sh(vm, "cd /mnt/src && echo from-the-guest > new.txt && mkdir made && mv new.txt made/moved.txt && "
           "rm hello.txt && ln made/moved.txt hard && sync")
    assert (share / "made" / "moved.txt").read_bytes() == b"from-the-guest\n"
    assert not (share / "hello.txt").exists() and os.stat(share / "hard").st_nlink == 2
    # A read-only share is refused by the host: nothing changes whatever the mount says.
    out = sh(vm, "cd /mnt/ro && echo x > new.txt; rm keep.txt; mkdir d; echo y >> keep.txt", ok=False)
    assert "Read-only file system" in out, out
    assert sorted(os.listdir(ro)) == ["keep.txt"] and (ro / "keep.txt").read_bytes() == b"keep\n"
    # Links are the guest's to resolve: "escape" is the guest's own /etc, "up" leads nowhere.
    assert sh(vm, "readlink /mnt/src/escape").strip() == "/etc"
    assert "do not read me" not in sh(vm, "cat /mnt/src/up; cat /mnt/src/../outside-secret; "
                                          "ls /mnt/src/..", ok=False)
    assert sh(vm, "ls /mnt/src/escape/") == sh(vm, "ls /etc/")  # the guest's own /etc
    with pytest.raises(VmSnapshotError, match="shares"):
        vm.snapshot(tmp_path / "snap")
