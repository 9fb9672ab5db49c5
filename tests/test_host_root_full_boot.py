"""The host's root as the guest's (``Vm(root="host")``, ``--root host -- CMD``), where KVM is
hardware-backed: the host's own ``python3`` runs in the guest, in the host's working directory,
writes there when it is shared read-write, and nowhere else on the host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from vmm_reference import Vm

pytestmark = pytest.mark.full_boot


def test_host_root_runs_the_hosts_userspace(vm_factory, guest_assets, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    vm: Vm = vm_factory(kernel=guest_assets.vmlinux, cmdline="reboot=k panic=-1 quiet", root="host", cwd=work)
    vm.start()
    vm.wait_ready(timeout=180)
    r = vm.run([sys.executable, "-c", "import os, sys; print(os.getcwd(), sys.executable); "
                "open('from-guest.txt', 'w').write('hi')"], cwd=work, text=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, f"{work} {sys.executable}\n"), r.stderr
    assert (work / "from-guest.txt").read_text() == "hi"
    mounts = vm.run("cat /proc/mounts", text=True, timeout=60).stdout
    assert "vmm-root / virtiofs ro" in mounts and " /etc overlay rw" in mounts and " /tmp overlay rw" in mounts
    assert " /sys/kernel/tracing tracefs" in mounts and " /sys/fs/cgroup cgroup2" in mounts
    # The host's / is read-only; the guest's /etc is its own overlay.
    r = vm.run(f"touch {tmp_path}/outside.txt; echo x > /etc/guest-only && cat /etc/guest-only", text=True, timeout=60)
    assert r.stdout == "x\n" and not (tmp_path / "outside.txt").exists() and not os.path.exists("/etc/guest-only")
    assert vm.stop(timeout=60).reason == "poweroff"


def test_cli_root_host_runs_a_command_in_the_working_directory(guest_assets, tmp_path):
    kernel = f"path={guest_assets.vmlinux},cmdline=reboot=k panic=-1 quiet"
    r = subprocess.run([sys.executable, "-m", "vmm_reference", "--kernel", kernel, "--root", "host", "--rw-cwd",
                        "--", "python3", "-c", "import os; open('made.txt', 'w').write(os.getcwd()); exit(7)"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 7, r.stderr
    assert (tmp_path / "made.txt").read_text() == str(tmp_path)


def test_cli_root_host_without_a_command_is_a_shell_on_the_console(guest_assets, tmp_path):
    kernel = f"path={guest_assets.vmlinux},cmdline=reboot=k panic=-1 quiet"
    r = subprocess.run([sys.executable, "-m", "vmm_reference", "--kernel", kernel, "--root", "host"],
                       cwd=tmp_path, input="echo shell-in-$(cat /proc/sys/kernel/hostname | wc -c); exit\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "shell-in-" in r.stdout, r.stdout[-2000:]


def test_host_vm_fixture(host_vm, tmp_path):
    r = host_vm.run(["sh", "-c", "pwd; echo made > here.txt"], cwd=tmp_path, text=True, timeout=60)
    assert r.stdout == f"{tmp_path}\n" and (tmp_path / "here.txt").read_text() == "made\n"
