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
        ([Share("/tmp", tag="a", protocol="p9")], 'invalid shares[0].protocol="p9": expected "virtiofs" or "9p"'),
        ([Share("/tmp", tag="a", protocol=9)], "invalid shares[0].protocol=9: expected"),
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
        ("path=/tmp,tag=a,protocol=nfs", "--fs: invalid protocol='nfs': expected virtiofs or 9p"),
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
    r = subprocess.run([str(native_cli), "--kernel", f"path={probe_elf},cmdline=probe.fs=list probe.p9=list",
                        "--fs", f"path={tmp_path / 'a'},tag=from-cli,read_only=on",
                        "--fs", f"path={tmp_path / 'a'},tag=nine-from-cli,protocol=9p"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert "PROBE: fs dev=0" in r.stdout and "tag=from-cli" in r.stdout, r.stdout
    assert "PROBE: p9 dev=1" in r.stdout and "tag=nine-from-cli" in r.stdout, r.stdout


def test_plugin_vmm_share_option(pytester, probe_elf, tmp_path):
    (tmp_path / "s").mkdir()
    pytester.makepyfile("""
def test_shares(vm):
    assert [d.kind for d in vm.boot_info.devices if d.kind in ("virtio-fs", "virtio-9p")] == ["virtio-fs", "virtio-9p"]
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--vmm-kernel={probe_elf}",
                                           f"--vmm-share=path={tmp_path / 's'},tag=src,read_only=on",
                                           f"--vmm-share=path={tmp_path / 's'},tag=nine,protocol=9p")
    result.assert_outcomes(passed=1)
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--vmm-kernel={probe_elf}",
                                        "--vmm-share=path=x")
    assert "--vmm-share: --fs: path=DIR and tag=TAG are required" in bad.stderr.str() + bad.stdout.str()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--root", "guest"], "--root: invalid value 'guest': expected host"),
        (["--rw-cwd"], "--rw-cwd, --modules and --root-protocol need --root host"),
        (["--modules", "/lib/modules"], "--rw-cwd, --modules and --root-protocol need --root host"),
        (["--root-protocol", "9p"], "--rw-cwd, --modules and --root-protocol need --root host"),
        (["--root", "host", "--root-protocol", "nfs"], "--root-protocol: invalid value 'nfs': expected virtiofs or 9p"),
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
    # Over 9p, for kernels without virtio-fs: the same shares as 9p devices, and the init told.
    vm = Vm(kernel=probe_elf, initrd=probe_elf, root="host", cwd=tmp_path, root_protocol="9p")
    assert [d.kind for d in vm.boot_info.devices] == ["virtio-vsock", "virtio-9p", "virtio-9p"]
    assert f"vmm.root=host vmm.share=9p vmm.cwd={tmp_path}" in vm.boot_info.cmdline
    vm.close()
    with pytest.raises(VmConfigError, match='invalid root_protocol="nfs": expected "virtiofs" or "9p"'):
        Vm(kernel=probe_elf, initrd=probe_elf, root="host", root_protocol="nfs")
    with pytest.raises(VmConfigError, match="expected them only with root"):
        Vm(kernel=probe_elf, root_protocol="9p")
