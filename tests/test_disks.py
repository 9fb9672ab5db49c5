"""Disks from the outside: the Python API's checks, the CLI's --blk and the plugin's --vmm-disk.

What the guest sees of a disk is tested through the probe guest's driver in
tests/test_virtio_blk.py and through full boots in tests/test_full_boot.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from vmm_reference import Disk, Vm, VmConfigError, VmFileNotFoundError, VmPermissionError
from vmm_reference.cli import CliError, parse_disk

SECTOR = 512


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(64 * 1024))
    return path


def test_devices_get_pages_and_gsis_in_order(vm_factory, probe_elf, image):
    vm = vm_factory(kernel=probe_elf, disks=[image, Disk(image, read_only=True, serial="second")])
    devices = vm.boot_info.devices
    assert [d.kind for d in devices] == ["virtio-blk", "virtio-blk"]
    assert [d.mmio_base for d in devices] == [0xD001_0000, 0xD001_1000]
    assert [d.mmio_len for d in devices] == [0x1000, 0x1000]
    assert [d.gsi for d in devices] == [5, 6]
    assert devices[1].read_only and devices[1].serial == "second" and devices[1].path == str(image)
    assert "virtio-blk" in vm._repr_html_() and "0xd0011000" in vm._repr_html_()


def test_no_disks_no_devices(vm_factory, probe_elf):
    assert vm_factory(kernel=probe_elf).boot_info.devices == []


@pytest.mark.parametrize(
    "disks, error, message",
    [
        (["/nonexistent/disk.img"], VmFileNotFoundError, 'disks[0]="/nonexistent/disk.img": no such file'),
        ("disk.img", VmConfigError, "invalid disks='disk.img': expected a list"),
        ([3], VmConfigError, "invalid disks[0]=3: expected a path or a Disk"),
        ([Disk("x", read_only="yes")], VmConfigError, "invalid disks[0].read_only='yes'"),  # type: ignore[arg-type]
    ],
)
def test_bad_disk_arguments_name_the_argument(probe_elf, disks, error, message):
    with pytest.raises(error) as e:
        Vm(kernel=probe_elf, disks=disks)
    assert message in str(e.value)


def test_empty_directory_and_long_serial_are_refused(probe_elf, tmp_path, image):
    empty = tmp_path / "empty.img"
    empty.touch()
    with pytest.raises(VmConfigError, match=r"invalid disks\[1\]=.*empty.img: expected a raw disk image of at "
                                            r"least 512 bytes \(it has 0\)"):
        Vm(kernel=probe_elf, disks=[image, empty])
    with pytest.raises(VmConfigError, match=r"invalid disks\[0\]=.*: expected a regular file"):
        Vm(kernel=probe_elf, disks=[tmp_path])
    with pytest.raises(VmConfigError, match=r'invalid disks\[0\]\.serial="x{21}": expected at most 20 ASCII'):
        Vm(kernel=probe_elf, disks=[Disk(image, serial="x" * 21)])
    with pytest.raises(VmConfigError, match=r"expected at most 16 devices in all"):
        Vm(kernel=probe_elf, disks=[image] * 17)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open any file")
def test_unwritable_image_needs_read_only(probe_elf, image):
    image.chmod(0o444)
    with pytest.raises(VmPermissionError, match=r"disks\[0\]=.*attach it read-only"):
        Vm(kernel=probe_elf, disks=[image])
    Vm(kernel=probe_elf, disks=[Disk(image, read_only=True)]).close()


def test_read_only_image_opens_without_write_access(probe_elf, image):
    # A read-only disk is opened read-only: it works on an image nobody may write.
    image.chmod(0o444)
    vm = Vm(kernel=probe_elf, disks=[Disk(image, read_only=True)])
    assert vm.boot_info.devices[0].read_only
    vm.close()


@pytest.mark.parametrize(
    "text, disk",
    [
        ("path=/a.img", Disk("/a.img")),
        ("path=/a.img,read_only=on", Disk("/a.img", read_only=True)),
        ("path=/a.img,read_only=true,serial=abc", Disk("/a.img", read_only=True, serial="abc")),
        ("path=/a.img,read_only=OFF", Disk("/a.img")),
        ("path=/a.img,read_only=false", Disk("/a.img")),
    ],
)
def test_blk_option_syntax(text, disk):
    assert parse_disk(text) == disk


@pytest.mark.parametrize(
    "text, message",
    [
        ("read_only=on", "--blk: path=PATH is required"),
        ("path=/a.img,read_only=maybe", "--blk: invalid read_only='maybe': expected on, off, true or false"),
        ("path=/a.img,ro=on", "--blk: unknown key 'ro'"),
    ],
)
def test_bad_blk_options(text, message):
    with pytest.raises(CliError) as e:
        parse_disk(text)
    assert message in str(e.value)


def test_cli_attaches_disks_in_order(probe_elf, image):
    r = subprocess.run(
        [sys.executable, "-m", "vmm_reference", "--kernel", f"path={probe_elf}",
         "--blk", f"path={image}", "--blk", "path=/nonexistent.img,read_only=on"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2, r.stderr  # a missing file is a usage error
    assert 'disks[1]="/nonexistent.img": no such file' in r.stderr


def test_plugin_vmm_disk_option(pytester, probe_elf, image):
    pytester.makepyfile(f"""
def test_disks(vm):
    disks = [d for d in vm.boot_info.devices if d.kind == "virtio-blk"]
    assert [(d.path, d.read_only, d.serial) for d in disks] == [
        ({str(image)!r}, False, None), ({str(image)!r}, True, "s1")]
""")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--vmm-kernel={probe_elf}", f"--vmm-disk={image}",
        f"--vmm-disk=path={image},read_only=on,serial=s1")
    result.assert_outcomes(passed=1)
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--vmm-kernel={probe_elf}",
                                        "--vmm-disk=path=x,read_only=perhaps")
    assert "--vmm-disk: --blk: invalid read_only='perhaps'" in bad.stderr.str() + bad.stdout.str()
