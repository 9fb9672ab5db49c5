"""Snapshot, restore and fork with the Debian guest (its own kvmclock, LAPIC timer, virtio
drivers and the guest agent over vsock), where KVM is hardware-backed (the nested-KVM lab
on PVM hosts)."""

from __future__ import annotations

import time

import pytest
from vmm_reference import Vm

pytestmark = pytest.mark.full_boot

PROMPT = r"# (\x1b\[6n)?$"


def guest_seconds(vm: Vm) -> float:
    return float(vm.run("cat /proc/uptime", text=True, timeout=60).stdout.split()[0])


def test_restore_answers_and_the_guest_clock_goes_on(agent_vm, tmp_path):
    vm = agent_vm
    assert vm.run("echo before > /tmp/mark").returncode == 0
    up_at_snapshot = guest_seconds(vm)
    vm.snapshot(tmp_path / "snap")
    vm.close()

    restored = Vm.restore(tmp_path / "snap")
    try:
        restored.resume()
        restored.wait_ready(timeout=60)
        assert restored.run("cat /tmp/mark", text=True, timeout=60).stdout == "before\n"
        first = guest_seconds(restored)
        assert up_at_snapshot <= first < up_at_snapshot + 60, (up_at_snapshot, first)
        time.sleep(1.5)
        second = guest_seconds(restored)
        assert 1.0 <= second - first < 30, (first, second)  # time moves on, at a sane pace
        # The serial console works too: the restored guest's shell on ttyS0 answers.
        assert restored.run("echo console-ok > /dev/ttyS0").returncode == 0
        restored.expect("console-ok", timeout=30)
    finally:
        restored.close()


def test_four_clones_each_run_their_own_command(agent_vm):
    vm = agent_vm
    vm.run("echo parent > /tmp/who")
    clones = vm.fork(4)
    try:
        for c in clones:
            c.resume()
        for i, c in enumerate(clones):
            c.wait_ready(timeout=60)
            assert c.run(f"echo clone{i} > /tmp/who").returncode == 0
        answers = [c.run("cat /tmp/who; echo $((6 * 7))", text=True, timeout=60).stdout for c in clones]
        assert answers == [f"clone{i}\n42\n" for i in range(4)]
        assert vm.run("cat /tmp/who", text=True).stdout == "parent\n", "clones' writes stay theirs"
    finally:
        for c in clones:
            c.close()


def test_restored_shell_answers_on_the_console(vm_factory, guest_assets, tmp_path):
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="reboot=k panic=-1 quiet vmm.init=shell")
    vm.start()
    vm.expect(PROMPT, timeout=120)
    vm.write("export MARK=kept\n")
    vm.expect(PROMPT, timeout=30)
    vm.pause()
    vm.snapshot(tmp_path / "shell")
    vm.close()
    restored = Vm.restore(tmp_path / "shell")
    try:
        restored.resume()
        restored.write("echo mark=$MARK sum=$((40 + 2)); date +%s\n")
        m = restored.expect(r"mark=kept sum=42\r?\n(\d+)\r?\n", timeout=60)
        first = int(m.group(1))
        time.sleep(2)
        restored.write("date +%s\n")
        second = int(restored.expect(r"\n(\d{9,})\r?\n", timeout=60).group(1))
        assert 1 <= second - first <= 30, (first, second)
    finally:
        restored.close()
