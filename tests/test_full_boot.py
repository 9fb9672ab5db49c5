"""Full boots of the Debian cloud kernel to its initramfs (or the root filesystem image), where
KVM is hardware-backed.

On PVM hosts stock kernels cannot finish booting; the ``full_boot`` marker makes the pytest
plugin run these inside the nested-KVM lab instead (one ``vmm-lab::full_boot`` item). The
lab sees the host (and its asset cache) read-only: everything a test writes is in tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from vmm_reference import Disk, Vm, VmAgentError, VmTimeoutError
from vmm_reference.assets import (
    GUEST_DONE_MARKER,
    GUEST_POWER_BUTTON_MARKER,
    GUEST_READY_MARKER,
    GUEST_ROOT_FAILED_MARKER,
    ROOTFS_READY_MARKER,
    AssetError,
    e2fsprogs_command,
)
from vmm_reference.pytest_plugin import skip_or_fail

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


@pytest.mark.parametrize("impl", ["native", "python"])
def test_cli_boots_the_guest(guest_assets, impl, native_cli):
    prefix = [str(native_cli)] if impl == "native" else [sys.executable, "-m", "vmm_reference"]
    r = subprocess.run(
        [*prefix, "--memory", "mem_size_mib=512", "--kernel",
         f"path={guest_assets.vmlinux},initrd={guest_assets.initrd},cmdline=reboot=k panic=-1 quiet"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    assert GUEST_READY_MARKER in r.stdout


# The shell prompt: a partial line, which busybox's line editing may follow at once with a
# cursor-position query (ESC [6n).
PROMPT = r"# (\x1b\[6n)?$"


def shell(vm_factory, guest_assets, vcpus: int = 1, disks=()) -> Vm:
    vm = vm_factory(memory_mib=256, vcpus=vcpus, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="reboot=k panic=-1 quiet vmm.init=shell", disks=list(disks))
    vm.start()
    vm.expect(GUEST_READY_MARKER, timeout=120)
    vm.expect(PROMPT, timeout=60)
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


# Disks (virtio-blk, found by the guest's virtio_mmio driver through the DSDT).


@pytest.fixture
def e2fs(request):
    """Run e2fsprogs' tools on the host: ``e2fs("mkfs.ext4", ...)`` returns the finished process."""

    def run(tool: str, *args: object) -> subprocess.CompletedProcess:
        try:
            command = e2fsprogs_command(tool)
        except AssetError as e:
            skip_or_fail(request.config, str(e))
        return subprocess.run([*command, *map(str, args)], capture_output=True, timeout=60, check=False)

    return run


def ext4_image(e2fs, directory: Path, files: dict[str, bytes], size_mib: int = 16) -> Path:
    """An ext4 image of ``size_mib`` holding ``files``, made without root (``mkfs.ext4 -d``)."""
    tree = directory / "tree"
    tree.mkdir()
    for name, data in files.items():
        (tree / name).write_bytes(data)
    image = directory / "disk.ext4"
    done = e2fs("mkfs.ext4", "-q", "-F", "-d", tree, image, f"{size_mib}M")
    assert done.returncode == 0, done.stderr
    return image


def debugfs_cat(e2fs, image: Path, path: str) -> bytes:
    """A file's contents inside an ext4 image, read on the host."""
    done = e2fs("debugfs", "-R", f"cat {path}", image)
    assert done.returncode == 0, done.stderr
    return done.stdout


def status(vm: Vm, command: str) -> int:
    """Run ``command`` in the guest's shell and return its exit status."""
    vm.write(f"{command}; echo status=$?\n")  # the echoed command line shows `status=$?`, not a number
    return int(vm.expect(r"status=(\d+)\r?\n").group(1))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_disk_is_found_through_acpi_then_read_and_written(vm_factory, guest_assets, tmp_path, e2fs):
    payload = os.urandom((3 << 20) + 123)
    image = ext4_image(e2fs, tmp_path, {"payload": payload})
    vm = shell(vm_factory, guest_assets, disks=[image])
    [dev] = vm.boot_info.devices
    assert (dev.kind, dev.mmio_base, dev.gsi, dev.path, dev.read_only) == (
        "virtio-blk", 0xD0010000, 5, str(image), False)
    # virtio_mmio bound the DSDT's LNRO0005 device; virtio_blk made /dev/vda on it.
    vm.write("readlink -f /sys/block/vda\n")
    vm.expect(r"/sys/devices/platform/LNRO0005:00/virtio\d+/block/vda\r?\n")
    vm.write("echo ro=$(cat /sys/block/vda/ro) size=$(cat /sys/block/vda/size)\n")
    assert vm.expect(r"ro=(\d) size=(\d+)\r?\n").groups() == ("0", str(16 * 2048))
    assert status(vm, "mount -t ext4 /dev/vda /mnt") == 0
    vm.write("sha256sum /mnt/payload\n")
    assert vm.expect(r"([0-9a-f]{64})  /mnt/payload").group(1) == sha256(payload)
    token = os.urandom(16).hex()
    assert status(vm, f"echo {token} >/mnt/newfile && sync && umount /mnt") == 0
    vm.write("poweroff -f\n")
    assert vm.wait(timeout=60).reason == "poweroff"
    assert debugfs_cat(e2fs, image, "/newfile") == f"{token}\n".encode()
    assert debugfs_cat(e2fs, image, "/payload") == payload
    check = e2fs("e2fsck", "-fn", image)
    assert check.returncode == 0, check.stdout.decode()


def test_read_only_disk_refuses_writes(vm_factory, guest_assets, tmp_path, e2fs):
    payload = os.urandom(1 << 20)
    image = ext4_image(e2fs, tmp_path, {"payload": payload})
    before = sha256(image.read_bytes())
    vm = shell(vm_factory, guest_assets, disks=[Disk(image, read_only=True)])
    assert vm.boot_info.devices[0].read_only
    vm.write("echo ro=$(cat /sys/block/vda/ro)\n")
    assert vm.expect(r"ro=(\d)\r?\n").group(1) == "1"
    assert status(vm, "dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync") != 0
    # A read-write mount fails, or busybox's mount falls back to read-only: either way no write.
    assert status(vm, "mount -t ext4 -o rw /dev/vda /mnt && touch /mnt/written") != 0
    assert status(vm, "grep -q ' /mnt ' /proc/mounts || mount -t ext4 -o ro /dev/vda /mnt") == 0
    vm.write("sha256sum /mnt/payload\n")
    assert vm.expect(r"([0-9a-f]{64})  /mnt/payload").group(1) == sha256(payload)
    assert status(vm, "umount /mnt") == 0
    vm.write("poweroff -f\n")
    assert vm.wait(timeout=60).reason == "poweroff"
    assert sha256(image.read_bytes()) == before


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_boots_the_rootfs_image_with_root_dev_vda(vm_factory, guest_assets, tmp_path, e2fs, mode):
    rootfs = tmp_path / "rootfs.ext4"  # a copy: the guest writes to its disks
    shutil.copyfile(guest_assets.rootfs, rootfs)
    before = sha256(rootfs.read_bytes())
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    disks=[Disk(rootfs, read_only=mode == "ro")],
                    cmdline=f"reboot=k panic=-1 quiet root=/dev/vda {mode} vmm.init=shell")
    vm.start()
    m = vm.expect(rf"{ROOTFS_READY_MARKER} kernel=(\S+) cpus=(\d+)\r?\n", timeout=120,
                  fail=[GUEST_ROOT_FAILED_MARKER, GUEST_READY_MARKER])
    assert m.groups() == (guest_assets.modules.name, "1")
    vm.expect(PROMPT)
    vm.write("grep ' / ' /proc/mounts\n")
    assert vm.expect(r"/dev/vda / ext4 (r[ow])[,\s]").group(1) == mode
    token = os.urandom(16).hex()
    assert (status(vm, f"echo {token} >/root/token") == 0) == (mode == "rw")
    if mode == "rw":
        vm.write("exit\n")  # the rootfs's init remounts / read-only, then reboots
        assert vm.wait(timeout=60).reason == "reset"
        assert GUEST_DONE_MARKER in vm.console_log
        assert debugfs_cat(e2fs, rootfs, "/root/token") == f"{token}\n".encode()
    else:
        assert vm.stop(timeout=60).reason == "poweroff"  # the rootfs's acpid handles the power button
        assert GUEST_POWER_BUTTON_MARKER in vm.console_log
        assert sha256(rootfs.read_bytes()) == before
    check = e2fs("e2fsck", "-fn", rootfs)
    assert check.returncode == 0, check.stdout.decode()


def test_missing_root_device_falls_back_to_the_initramfs(vm_factory, guest_assets):
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="reboot=k panic=-1 quiet root=/dev/vda")  # and no disk
    vm.start()
    vm.expect(rf"{GUEST_ROOT_FAILED_MARKER} root=/dev/vda: no such block device", timeout=120,
              fail=[ROOTFS_READY_MARKER, GUEST_READY_MARKER])
    vm.expect(GUEST_READY_MARKER, timeout=60)
    assert vm.wait(timeout=60).reason == "reset"


def test_two_disks_appear_in_order_with_serials_and_sizes(vm_factory, guest_assets, tmp_path):
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    sizes = {first: 4 << 20, second: (1 << 20) + 1536 + 100}  # a partial last sector is not part of the disk
    for path, size in sizes.items():
        with open(path, "wb") as f:
            f.truncate(size)
    vm = shell(vm_factory, guest_assets,
               disks=[Disk(first, serial="first-disk"), Disk(second, read_only=True, serial="second")])
    assert [(d.path, d.serial, d.mmio_base, d.gsi) for d in vm.boot_info.devices] == [
        (str(first), "first-disk", 0xD0010000, 5), (str(second), "second", 0xD0011000, 6)]
    for name, path, serial, ro in (("vda", first, "first-disk", "0"), ("vdb", second, "second", "1")):
        b = f"/sys/block/{name}"
        vm.write(f'echo "{name}: serial=$(cat {b}/serial) size=$(cat {b}/size) ro=$(cat {b}/ro)"\n')
        m = vm.expect(rf"{name}: serial=([\w-]*) size=(\d+) ro=(\d)\r?\n")
        assert m.groups() == (serial, str(sizes[path] // 512), ro)
    vm.write("reboot -f\n")
    assert vm.wait(timeout=60).reason == "reset"


# The guest agent (vmm-agent, started by the initramfs) over vsock: vm.run, copies, the CLI.


def test_agent_runs_commands_with_their_codes_and_output(agent_vm):
    vm = agent_vm
    assert [vm.run(cmd).returncode for cmd in ("true", "false", "no-such-command")] == [0, 1, 127]
    assert vm.run(["/no/such/program"]).returncode == 127
    assert vm.run("kill -KILL $$").returncode == -9
    assert vm.run(["sh", "-c", "kill -TERM $$"]).returncode == -15
    r = vm.run("echo out; echo err >&2; echo out2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\nout2\n", b"err\n")
    assert vm.run(["uname", "-r"], text=True).stdout.strip() == vm.run("uname -r", text=True).stdout.strip()
    data = os.urandom((1 << 20) + 3)
    assert vm.run("sha256sum", input=data).stdout.split()[0].decode() == sha256(data)
    r = vm.run('echo "$GREETING from $(pwd)"', env={"GREETING": "hello"}, cwd="/proc", text=True)
    assert r.stdout == "hello from /proc\n"
    with pytest.raises(subprocess.CalledProcessError):
        vm.run("exit 2", check=True)
    import asyncio

    assert asyncio.run(vm.run_async("echo async")).stdout == b"async\n"


def test_agent_streams_64_mib_of_output(agent_vm):
    size = 64 << 20
    # $PPID is the agent's handler for this connection: its peak RSS after streaming it all.
    r = agent_vm.run(f"head -c {size} /dev/zero; grep VmHWM /proc/$PPID/status >&2", timeout=900)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == size and r.stdout.count(0) == size
    assert int(r.stderr.split()[1]) < 16 * 1024, r.stderr  # kB


def test_agent_timeout_kills_the_command_and_keeps_partial_output(agent_vm):
    vm = agent_vm
    with pytest.raises(VmTimeoutError) as e:
        vm.run("echo partial; echo err >&2; exec sleep 1234", timeout=3)
    assert (e.value.stdout, e.value.stderr) == (b"partial\n", b"err\n")
    assert "sleep 1234" not in vm.run("ps", text=True).stdout  # (the init's own loop sleeps 3600)


def test_agent_copies_32_mib_both_ways(agent_vm, tmp_path):
    vm = agent_vm
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(32 << 20))
    src.chmod(0o640)
    vm.copy_to(src, "/tmp/blob", timeout=900)
    r = vm.run("sha256sum /tmp/blob; stat -c %a /tmp/blob", text=True)
    assert r.stdout.split() == [sha256(src.read_bytes()), "/tmp/blob", "640"]
    vm.run("cp /tmp/blob /tmp/blob2 && chmod 604 /tmp/blob2", check=True)
    back = tmp_path / "back"
    vm.copy_from("/tmp/blob2", back, timeout=900)
    assert sha256(back.read_bytes()) == sha256(src.read_bytes())
    assert back.stat().st_mode & 0o777 == 0o604
    with pytest.raises(VmAgentError, match="/no/such/file: No such file or directory"):
        vm.copy_from("/no/such/file", tmp_path / "x")


def test_agent_guest_powers_off_on_stop(agent_vm):
    # With a vsock device the init serves the agent until the power button, instead of rebooting.
    assert agent_vm.stop(timeout=60).reason == "poweroff"
    assert GUEST_DONE_MARKER not in agent_vm.console_log


def test_agent_runs_in_the_rootfs_too(vm_factory, guest_assets, tmp_path):
    rootfs = tmp_path / "rootfs.ext4"
    shutil.copyfile(guest_assets.rootfs, rootfs)
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd, disks=[rootfs],
                    cmdline="reboot=k panic=-1 quiet root=/dev/vda", vsock=True)
    vm.start()
    vm.wait_ready(timeout=120)
    assert ROOTFS_READY_MARKER in vm.console_log
    assert vm.run("cat /etc/hostname; grep ' / ' /proc/mounts", text=True).stdout.split()[:2] == [
        "vmm-reference", "/dev/vda"]


def test_cli_runs_a_command_and_exits_with_its_code(guest_assets):
    kernel = f"path={guest_assets.vmlinux},initrd={guest_assets.initrd},cmdline=reboot=k panic=-1 quiet"
    r = subprocess.run([sys.executable, "-m", "vmm_reference", "--kernel", kernel, "--",
                        "sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (3, "to-stdout\n"), r.stderr
    assert "to-stderr\n" in r.stderr and GUEST_READY_MARKER not in r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "vmm_reference", "--kernel", kernel, "--", "uname", "-r"],
                       capture_output=True, text=True, timeout=300, input="")
    assert (r.returncode, r.stdout) == (0, f"{guest_assets.modules.name}\n"), r.stderr


def test_native_cli_hands_a_command_to_the_python_package(guest_assets, native_cli):
    kernel = f"path={guest_assets.vmlinux},initrd={guest_assets.initrd},cmdline=reboot=k panic=-1 quiet"
    r = subprocess.run([str(native_cli), "--kernel", kernel, "--", "sh", "-c", "uname -r; exit 4"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stdout) == (4, f"{guest_assets.modules.name}\n"), r.stderr
