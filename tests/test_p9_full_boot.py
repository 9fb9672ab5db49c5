"""9p shares in Debian's generic kernel (``9pnet_virtio`` and ``9p`` from its package; the cloud
kernel has no 9p), where KVM is hardware-backed: the lab's own kernel boots as the guest with
the guests' initramfs built for its modules (``fetch_lab().initrd``).

A tree on the host is mounted with ``mount -t 9p -o trans=virtio,version=9p2000.L`` and read
back with its sha256s; the guest's writes, renames, links and removals appear on the host; a
read-only share refuses them on the host's side; links out of the share and ``..`` lead
nowhere outside it; both virtio transports. Then the host's root over 9p
(``root_protocol="9p"``): the host's own ``python3`` runs in the guest, in a shared working
directory.
"""

from __future__ import annotations

import os
import sys

import pytest
from share_probe import lab_tree, sh
from vmm_reference import Share, Vm

pytestmark = pytest.mark.full_boot

MOUNT = "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000"


@pytest.fixture(scope="module")
def generic():
    """Debian's generic kernel and an initramfs with its modules (9p among them)."""
    from vmm_reference.assets import fetch_lab

    return fetch_lab()


@pytest.mark.parametrize("transport", ["mmio", "pci"])
def test_a_9p_share_reads_back_and_takes_writes(vm_factory, generic, tmp_path, transport):
    share = tmp_path / "share"
    share.mkdir()
    sums = lab_tree(share)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_bytes(b"keep\n")
    vm = vm_factory(memory_mib=384, kernel=generic.bzimage, initrd=generic.initrd,
                    cmdline="reboot=k panic=-1 quiet", vsock=True, transport=transport,
                    shares=[Share(share, tag="src", protocol="9p"),
                            Share(ro, tag="ro", read_only=True, protocol="9p")])
    assert [d.kind for d in vm.boot_info.devices].count("virtio-9p") == 2
    vm.start()
    vm.wait_ready(timeout=300)
    sh(vm, f"mkdir -p /mnt/src /mnt/ro && {MOUNT} src /mnt/src && {MOUNT},ro ro /mnt/ro")
    assert " /mnt/src 9p " in sh(vm, "cat /proc/mounts")
    got = dict(line.split()[::-1] for line in sh(vm, "cd /mnt/src && sha256sum hello.txt dir/inner.txt "
                                                     "dir/deeper/big.bin").splitlines())
    assert got == sums
    assert sorted(sh(vm, "ls -a /mnt/src").split()) == [".", "..", "dir", "escape", "hello.txt", "up"]
    # Writes land on the host, renames, links and removals too.
    sh(vm, "cd /mnt/src && echo from-the-guest > new.txt && mkdir made && mv new.txt made/moved.txt && "
           "rm hello.txt && ln made/moved.txt hard && chmod 600 hard && sync")
    assert (share / "made" / "moved.txt").read_bytes() == b"from-the-guest\n"
    assert not (share / "hello.txt").exists() and os.stat(share / "hard").st_nlink == 2
    assert os.stat(share / "hard").st_mode & 0o777 == 0o600
    # What the host changes, the guest sees (no cache on the read-write mount).
    (share / "from-host.txt").write_bytes(b"made on the host\n")
    assert sh(vm, "cat /mnt/src/from-host.txt") == "made on the host\n"
    # A read-only share is refused by the host: nothing changes, even with the mount read-write.
    sh(vm, f"umount /mnt/ro && {MOUNT} ro /mnt/ro")
    out = sh(vm, "cd /mnt/ro && echo x > new.txt; rm keep.txt; mkdir d; echo y >> keep.txt", ok=False)
    assert "Read-only file system" in out, out
    assert sorted(os.listdir(ro)) == ["keep.txt"] and (ro / "keep.txt").read_bytes() == b"keep\n"
    # Links are the guest's to resolve: "escape" is the guest's own /etc, "up" leads nowhere.
    assert sh(vm, "readlink /mnt/src/escape").strip() == "/etc"
    assert "do not read me" not in sh(vm, "cat /mnt/src/up; cat /mnt/src/../outside-secret; "
                                          "ls /mnt/src/..", ok=False)
    assert sh(vm, "ls /mnt/src/escape/") == sh(vm, "ls /etc/")  # the guest's own /etc
    sh(vm, "umount /mnt/src /mnt/ro")
    assert vm.stop(timeout=60).reason == "poweroff"


def test_host_root_over_9p_runs_the_hosts_userspace(vm_factory, generic, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    vm: Vm = vm_factory(memory_mib=384, kernel=generic.bzimage, initrd=generic.initrd,
                        cmdline="reboot=k panic=-1 quiet", root="host", cwd=work, root_protocol="9p")
    assert [d.kind for d in vm.boot_info.devices].count("virtio-9p") == 2
    vm.start()
    vm.wait_ready(timeout=300)
    r = vm.run([sys.executable, "-c", "import os, sys; print(os.getcwd(), sys.executable); "
                "open('from-guest.txt', 'w').write('hi')"], cwd=work, text=True, timeout=180)
    assert (r.returncode, r.stdout) == (0, f"{work} {sys.executable}\n"), r.stderr
    assert (work / "from-guest.txt").read_text() == "hi"
    mounts = vm.run("cat /proc/mounts", text=True, timeout=60).stdout
    assert "vmm-root / 9p ro" in mounts and f"vmm-cwd {work} 9p rw" in mounts, mounts
    assert " /etc overlay rw" in mounts, mounts
    r = vm.run(f"touch {tmp_path}/outside.txt; echo x > /etc/guest-only && cat /etc/guest-only", text=True,
               timeout=60)
    assert r.stdout == "x\n" and not (tmp_path / "outside.txt").exists() and not os.path.exists("/etc/guest-only")
    assert vm.stop(timeout=60).reason == "poweroff"
