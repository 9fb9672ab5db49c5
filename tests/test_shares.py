"""Shares from the caller's side: what ``Vm(shares=...)`` and ``--fs`` accept and refuse, in one
set of words (the core's), and what a VM with shares cannot do (snapshot, fork)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from vmm_reference import Share, Vm, VmConfigError, VmFileNotFoundError, VmSnapshotError


@pytest.mark.parametrize(
    "shares, message",
    [
        ("/tmp", "invalid shares='/tmp': expected a list of Share objects"),
        (["/tmp"], "invalid shares[0]='/tmp': expected a Share"),
        ([Share("/tmp", tag="")], 'invalid shares[0].tag="": expected 1 to 36 bytes'),
        ([Share("/tmp", tag="x" * 37)], "invalid shares[0].tag="),
        ([Share("/tmp", tag="a"), Share("/", tag="a")], 'invalid shares[1].tag="a": expected 1 to 36 bytes, no NUL, '
                                                        "unique among the VM's shares"),
        ([Share("/tmp", tag="a", read_only="yes")], "invalid shares[0].read_only='yes': expected True or False"),
        ([Share("/tmp", tag="a", protocol="9p")], "invalid shares[0].protocol='9p'"),
    ],
)
def test_bad_shares_name_the_argument(probe_elf, shares, message):
    with pytest.raises(VmConfigError) as e:
        Vm(kernel=probe_elf, shares=shares)
    assert message in str(e.value)


def test_a_share_must_be_an_existing_directory(probe_elf, tmp_path):
    with pytest.raises(VmFileNotFoundError) as e:
        Vm(kernel=probe_elf, shares=[Share(tmp_path / "missing", tag="a")])
    assert (e.value.argument, e.value.path) == ("shares[0]", str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(VmConfigError, match=r"invalid shares\[0\]=.*: expected a directory to share"):
        Vm(kernel=probe_elf, shares=[Share(tmp_path / "file", tag="a")])


def test_a_vm_with_shares_is_not_snapshotted_or_forked(vm_factory, probe_elf, tmp_path):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt", shares=[Share(tmp_path, tag="t")])
    vm.start()
    vm.expect("PROBE: done", timeout=30)
    assert [d.kind for d in vm.boot_info.devices] == ["virtio-fs"]
    with pytest.raises(VmSnapshotError, match="cannot snapshot or fork a VM with shares"):
        vm.snapshot(tmp_path / "snap")
    with pytest.raises(VmSnapshotError, match="shares"):
        vm.fork(1)
    assert vm.state == "running"


@pytest.mark.parametrize(
    "value, message",
    [
        ("tag=a", "--fs: path=DIR and tag=TAG are required"),
        ("path=/tmp", "--fs: path=DIR and tag=TAG are required"),
        ("path=/tmp,tag=a,read_only=maybe", "--fs: invalid read_only='maybe': expected on, off, true or false"),
        ("path=/tmp,tag=a,protocol=9p", "--fs: invalid protocol='9p': expected virtiofs"),
        ("path=/tmp,tag=a,ro=on", "--fs: unknown key 'ro'"),
        (f"path=/tmp,tag={'x' * 40}", "invalid shares[0].tag="),
        ("path=/nonexistent-share,tag=a", 'shares[0]="/nonexistent-share": no such file'),
    ],
)
def test_cli_fs_errors(native_cli, probe_elf, value, message):
    for prefix in ([str(native_cli)], [sys.executable, "-m", "vmm_reference"]):
        r = subprocess.run([*prefix, "--kernel", f"path={probe_elf}", "--fs", value], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and message in r.stderr, (prefix, r.stderr)


def test_cli_fs_gives_the_guest_a_share(native_cli, probe_elf, tmp_path):
    (tmp_path / "a").mkdir()
    r = subprocess.run([str(native_cli), "--kernel", f"path={probe_elf},cmdline=probe.fs=list",
                        "--fs", f"path={tmp_path / 'a'},tag=from-cli,read_only=on"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "tag=from-cli" in r.stdout, r.stdout


def test_plugin_vmm_share_option(pytester, probe_elf, tmp_path):
    (tmp_path / "s").mkdir()
    pytester.makepyfile("""
def test_shares(vm):
    assert [d.kind for d in vm.boot_info.devices if d.kind == "virtio-fs"] == ["virtio-fs"]
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--vmm-kernel={probe_elf}",
                                           f"--vmm-share=path={tmp_path / 's'},tag=src,read_only=on")
    result.assert_outcomes(passed=1)
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--vmm-kernel={probe_elf}",
                                        "--vmm-share=path=x")
    assert "--vmm-share: --fs: path=DIR and tag=TAG are required" in bad.stderr.str() + bad.stdout.str()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--root", "guest"], "--root: invalid value 'guest': expected host"),
        (["--rw-cwd"], "--rw-cwd and --modules need --root host"),
        (["--modules", "/lib/modules"], "--rw-cwd and --modules need --root host"),
        (["--root", "host", "--modules", "/nonexistent-modules"], 'modules="/nonexistent-modules": no such file'),
    ],
)
def test_cli_root_errors(native_cli, probe_elf, args, message):
    for prefix in ([str(native_cli)], [sys.executable, "-m", "vmm_reference"]):
        r = subprocess.run([*prefix, "--kernel", f"path={probe_elf},initrd={probe_elf}", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and message in r.stderr, (prefix, r.stderr)


def test_root_host_arguments(probe_elf, tmp_path):
    with pytest.raises(VmConfigError, match='invalid root=\'guest\': expected "host" or None'):
        Vm(kernel=probe_elf, root="guest")
    with pytest.raises(VmConfigError, match="expected them only with root"):
        Vm(kernel=probe_elf, cwd=tmp_path)
    with pytest.raises(VmConfigError, match="without spaces"):
        (tmp_path / "a b").mkdir()
        Vm(kernel=probe_elf, initrd=probe_elf, root="host", cwd=tmp_path / "a b")
    vm = Vm(kernel=probe_elf, initrd=probe_elf, root="host", cwd=tmp_path)
    assert [d.kind for d in vm.boot_info.devices] == ["virtio-vsock", "virtio-fs", "virtio-fs"]
    assert f"vmm.root=host vmm.cwd={tmp_path}" in vm.boot_info.cmdline
    vm.close()
