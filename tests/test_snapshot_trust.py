"""A snapshot file does not decide the sandbox: seccomp comes from the caller of Vm.restore, and
the caller can name the host resources (disks, networks) a restored VM gets."""

from __future__ import annotations

import re

import pytest
from test_seccomp import seccomp_modes
from vmm_reference import Disk, UserNet, Vm, VmConfigError

TICK = re.compile(r"PROBE: tick (\d+) ")


def saved_unfiltered_vm(vm_factory, probe_elf, tmp_path, **kwargs) -> Vm:
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=tick", memory_mib=64, seccomp=False, **kwargs)
    vm.start()
    vm.expect(TICK, timeout=30)
    vm.snapshot(tmp_path / "snap")
    vm.kill()
    vm.close()
    return vm


def restored_threads_modes(restored: Vm) -> dict[str, set[int]]:
    restored.resume()
    restored.expect(TICK, timeout=30)
    return seccomp_modes()


def test_a_snapshot_of_an_unfiltered_vm_restores_filtered(vm_factory, probe_elf, tmp_path):
    saved_unfiltered_vm(vm_factory, probe_elf, tmp_path)
    restored = Vm.restore(tmp_path / "snap")
    try:
        modes = restored_threads_modes(restored)
        assert modes["vcpu0"] == {2} and modes["vmm-event-loop"] == {2}, modes
    finally:
        restored.close()


def test_only_the_caller_turns_seccomp_off_on_restore(vm_factory, probe_elf, tmp_path):
    saved_unfiltered_vm(vm_factory, probe_elf, tmp_path)
    restored = Vm.restore(tmp_path / "snap", seccomp=False)
    try:
        modes = restored_threads_modes(restored)
        assert modes["vcpu0"] == {0} and modes["vmm-event-loop"] == {0}, modes
    finally:
        restored.close()


def test_the_caller_names_the_disks_of_a_restored_vm(vm_factory, probe_elf, tmp_path):
    saved_image = tmp_path / "saved.img"
    saved_image.write_bytes(b"\0" * (1 << 20))
    saved_unfiltered_vm(vm_factory, probe_elf, tmp_path, disks=[saved_image])
    saved_image.unlink()  # what the snapshot names is gone; the caller's image is used instead
    mine = tmp_path / "mine.img"
    mine.write_bytes(b"\0" * (1 << 20))
    restored = Vm.restore(tmp_path / "snap", disks=[Disk(mine, read_only=True)])
    try:
        disks = [(d.path, d.read_only) for d in restored.boot_info.devices if d.kind == "virtio-blk"]
        assert disks == [(str(mine), True)]
    finally:
        restored.close()
    with pytest.raises(VmConfigError, match=r"invalid disks=2 disks: one per disk the snapshot's VM had: 1"):
        Vm.restore(tmp_path / "snap", disks=[mine, mine])
    with pytest.raises(VmConfigError, match=r"invalid net=1 devices: one per network device.*: 0"):
        Vm.restore(tmp_path / "snap", disks=[mine], net=[UserNet()])
