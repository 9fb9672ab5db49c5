"""The real Debian cloud kernel: assert on its own early log lines.

On PVM hosts the kernel runs its early boot slowly and stops with a KVM internal error after
printing its memory map (see README), so these tests read what it prints up to there and
then kill the VM. Where KVM is hardware-backed the same lines appear sooner.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.kernel

MIB = 1 << 20


def read_until(vm, pattern: str, timeout: float = 900) -> list[str]:
    # On PVM the stock kernel's early boot runs slowly (40-120 s to these lines, depending on
    # the host): the timeout is only a safety net, not a speed requirement.
    lines = []
    for line in vm.serial.lines(timeout=timeout):
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError("console ended before " + pattern + ":\n" + "\n".join(lines[-20:]))


def e820_lines(lines: list[str]) -> list[tuple[int, int, str]]:
    out = []
    for line in lines:
        m = re.search(r"BIOS-e820: \[mem 0x([0-9a-f]+)-0x([0-9a-f]+)\] (\w+)", line)
        if m:
            out.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
    return out


@pytest.mark.parametrize("memory_mib", [256, 4096])
def test_banner_cmdline_e820_and_ramdisk(vm_factory, guest_assets, memory_mib):
    cmdline = f"console=ttyS0 reboot=k panic=-1 earlyprintk=ttyS0 vmm.test={memory_mib}"
    vm = vm_factory(memory_mib=memory_mib, kernel=guest_assets.vmlinux, cmdline=cmdline,
                    initrd=guest_assets.initrd)
    vm.start()
    lines = read_until(vm, r"RAMDISK: \[mem")
    vm.kill()
    log = "\n".join(lines)
    assert re.search(r"Linux version 6\.\d+\.\d+-\d+-cloud-amd64 .*Debian", log), log
    assert f"Command line: {cmdline}" in log
    low_end = min(memory_mib * MIB, 0xC000_0000)
    expected = [(0, 0x9FBFF, "usable"), (0x9FC00, 0xFFFFF, "reserved"), (0x100000, low_end - 1, "usable")]
    if memory_mib * MIB > 0xC000_0000:
        expected.append((1 << 32, (1 << 32) + memory_mib * MIB - 0xC000_0000 - 1, "usable"))
    assert e820_lines(lines) == expected
    addr, size = vm.boot_info.initrd
    assert f"RAMDISK: [mem {addr:#010x}-{addr + ((size + 4095) & ~4095) - 1:#010x}]" in log


@pytest.mark.parametrize("vcpus", [1, 2, 4, 8])
def test_madt_gives_the_kernel_every_cpu(vm_factory, guest_assets, vcpus):
    vm = vm_factory(memory_mib=256, vcpus=vcpus, kernel=guest_assets.vmlinux, acpi=True,
                    cmdline="reboot=k panic=-1 earlyprintk=ttyS0")
    vm.start()
    lines = read_until(vm, r"smpboot: Allowing \d+ CPUs")
    vm.kill()
    log = "\n".join(lines)
    assert "ACPI: Using ACPI (MADT) for SMP configuration information" in log
    assert re.search(r"ACPI: RSDP 0x00000000000E0000 \w+ \(v02 VMMREF\)", log), log
    assert f"smpboot: Allowing {vcpus} CPUs, 0 hotplug CPUs" in lines[-1]


def test_a_pci_vm_gives_the_kernel_an_mcfg_and_reserves_ecam(vm_factory, guest_assets, tmp_path):
    """With a device on PCI the kernel reads an MCFG and the e820 map reserves ECAM (which Linux
    checks before it uses MMCONFIG); the rest of the PCI boot is the lab's (test_pci_full_boot)."""
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    cmdline = "console=ttyS0 reboot=k panic=-1 earlyprintk=ttyS0"
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, cmdline=cmdline, initrd=guest_assets.initrd,
                    transport="pci", disks=[disk])
    assert vm.boot_info.cmdline == cmdline, "no pci=off with a PCI device"
    vm.start()
    lines = read_until(vm, r"ACPI: MCFG 0x")
    vm.kill()
    assert (0xE000_0000, 0xE00F_FFFF, "reserved") in e820_lines(lines)
    assert re.search(r"ACPI: MCFG 0x[0-9A-F]+ 00003C \(v01 VMMREF", "\n".join(lines))
