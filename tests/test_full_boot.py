"""Full boots of the Debian cloud kernel to its initramfs, where KVM is hardware-backed.

On PVM hosts stock kernels cannot finish booting; the ``full_boot`` marker makes the pytest
plugin run these inside the nested-KVM lab instead (one ``vmm-lab::full_boot`` item).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from vmm_reference import Vm
from vmm_reference.assets import GUEST_DONE_MARKER, GUEST_POWER_BUTTON_MARKER, GUEST_READY_MARKER

# Run directly where KVM is hardware-backed; on PVM hosts the plugin runs them in the lab.
pytestmark = pytest.mark.full_boot


def test_boot_to_userspace_then_reboot_ends_wait(vm_factory, guest_assets):
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd)
    vm.start()
    lines = []
    for line in vm.serial.lines(timeout=120):
        lines.append(line)
        if line.startswith(GUEST_READY_MARKER):
            break
    assert lines[-1] == f"{GUEST_READY_MARKER} kernel={guest_assets.modules.name} cpus=1", lines[-30:]
    assert any("Run /init as init process" in line for line in lines)
    status = vm.wait(timeout=60)
    assert status.reason == "reset", status
    assert GUEST_DONE_MARKER in vm.console_log
    assert "reboot: Restarting system" in vm.console_log


def test_bzimage_boots_too(guest_assets):
    with Vm(memory_mib=256, kernel=guest_assets.bzimage, initrd=guest_assets.initrd) as vm:
        assert vm.boot_info.format == "bzImage"
        vm.start()
        assert vm.wait(timeout=180).reason == "reset"
        assert GUEST_READY_MARKER in vm.console_log


def test_cli_boots_the_guest(guest_assets):
    r = subprocess.run(
        [sys.executable, "-m", "vmm_reference", "--memory", "mem_size_mib=512", "--kernel",
         f"path={guest_assets.vmlinux},initrd={guest_assets.initrd},cmdline=reboot=k panic=-1 quiet"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert GUEST_READY_MARKER in r.stdout


def shell(vm_factory, guest_assets, vcpus: int = 1) -> Vm:
    vm = vm_factory(memory_mib=256, vcpus=vcpus, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="reboot=k panic=-1 quiet vmm.init=shell")
    vm.start()
    vm.expect(GUEST_READY_MARKER, timeout=120)
    # The shell prompt: a partial line, which busybox's line editing may follow at once with a
    # cursor-position query (ESC [6n).
    vm.expect(r"# (\x1b\[6n)?$", timeout=60)
    return vm


def test_shell_command_then_reboot(vm_factory, guest_assets):
    vm = shell(vm_factory, guest_assets)
    vm.write("echo result=$((6 * 7))\n")
    assert vm.expect(r"result=(\d+)\r?\n").group(1) == "42"
    vm.write("reboot -f\n")
    assert vm.wait(timeout=60).reason == "reset"


def test_exit_code_through_devmem(vm_factory, guest_assets):
    vm = shell(vm_factory, guest_assets)
    vm.write("devmem 0xd0000000 32 7\n")
    status = vm.wait(timeout=60)
    assert (status.reason, status.code) == ("poweroff", 7), status


def test_boot_marker_from_the_shell_then_poweroff(vm_factory, guest_assets):
    vm = shell(vm_factory, guest_assets)
    vm.write("devmem 0xd0001000 8 42; echo marked=$((6 * 7))\n")
    vm.expect("marked=42")  # not the echo of the command line itself
    assert [value for value, _ in vm.events] == [42]
    vm.write("poweroff -f\n")
    status = vm.wait(timeout=60)  # through ACPI's PM1a_CNT (S5), not the exit device: no code
    assert (status.reason, status.code) == ("poweroff", None)


def test_stop_presses_the_power_button_and_the_guest_powers_off(vm_factory, guest_assets):
    vm = shell(vm_factory, guest_assets)
    status = vm.stop(timeout=60)
    assert status.reason == "poweroff", vm.console_log[-2000:]
    assert GUEST_POWER_BUTTON_MARKER in vm.console_log


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_nproc_equals_vcpus(vm_factory, guest_assets, vcpus):
    vm = shell(vm_factory, guest_assets, vcpus=vcpus)
    vm.write("echo nproc=$(nproc) online=$(cat /sys/devices/system/cpu/online)\n")
    m = vm.expect(r"nproc=(\d+) online=(\S+)\r?\n")
    assert int(m.group(1)) == vcpus
    assert m.group(2) == ("0" if vcpus == 1 else f"0-{vcpus - 1}")
    vm.write("reboot -f\n")
    assert vm.wait(timeout=60).reason == "reset"
