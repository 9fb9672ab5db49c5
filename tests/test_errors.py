"""Every user error gets a clear exception naming the argument, the value and what is accepted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from vmm_reference import (
    KvmUnavailableError,
    Vm,
    VmConfigError,
    VmError,
    VmFileNotFoundError,
    VmPermissionError,
    max_vcpus,
)


def test_missing_kernel(tmp_path):
    with pytest.raises(VmFileNotFoundError, match=r"kernel=.*nope.*no such file") as e:
        Vm(kernel=tmp_path / "nope")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, VmError)


def test_missing_initrd(probe_elf, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"initrd=.*missing.*no such file"):
        Vm(kernel=probe_elf, initrd=tmp_path / "missing")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_kernel(tmp_path):
    k = tmp_path / "k"
    k.write_bytes(b"x")
    k.chmod(0)
    with pytest.raises(VmPermissionError, match="kernel=.*permission denied"):
        Vm(kernel=k)


def test_kernel_that_is_neither_elf_nor_bzimage(tmp_path):
    k = tmp_path / "notes.txt"
    k.write_text("hello, I am not a kernel\n" * 100)
    with pytest.raises(VmConfigError, match=r"invalid kernel=.*notes.txt: the file is neither ELF nor "
                                            r"bzImage; expected an x86-64 ELF vmlinux or a bzImage"):
        Vm(kernel=k)


def test_directory_as_kernel(tmp_path):
    with pytest.raises(VmConfigError, match="expected a regular file"):
        Vm(kernel=tmp_path)


def test_32bit_elf_is_refused(tmp_path):
    k = tmp_path / "elf32"
    k.write_bytes(b"\x7fELF\x01" + b"\0" * 100)
    with pytest.raises(VmConfigError, match="not ELF64 for x86-64"):
        Vm(kernel=k)


@pytest.mark.parametrize("memory_mib", [0, 10**9])
def test_memory_out_of_range(probe_elf, memory_mib):
    with pytest.raises(VmConfigError, match=rf"invalid memory_mib={memory_mib}: expected 1 to \d+"):
        Vm(kernel=probe_elf, memory_mib=memory_mib)


@pytest.mark.parametrize("memory_mib", [-1, 1.5, "256", True])
def test_memory_wrong_type(probe_elf, memory_mib):
    with pytest.raises(VmConfigError, match="invalid memory_mib="):
        Vm(kernel=probe_elf, memory_mib=memory_mib)


def test_memory_too_small_for_the_kernel(probe_bzimage):
    with pytest.raises(VmConfigError, match=r"invalid memory_mib=1: the bzImage needs guest RAM up to"):
        Vm(kernel=probe_bzimage, memory_mib=1)


def test_vcpus_zero_and_too_many(probe_elf):
    limit = max_vcpus()
    with pytest.raises(VmConfigError, match=r"invalid vcpus=0: expected 1 to \d+"):
        Vm(kernel=probe_elf, vcpus=0)
    with pytest.raises(VmConfigError, match=rf"invalid vcpus={limit + 1000}: expected 1 to \d+ \(KVM's limit"):
        Vm(kernel=probe_elf, vcpus=limit + 1000)


def test_cmdline_too_long_for_elf(probe_elf):
    with pytest.raises(VmConfigError, match=r"invalid cmdline=<2100 bytes>: this kernel accepts at most 2047"):
        Vm(kernel=probe_elf, cmdline="console=ttyS0 " + "x" * 2086)


def test_cmdline_limit_comes_from_the_bzimage_header(probe_bzimage):
    # The probe's bzImage declares cmdline_size=1023.
    Vm(kernel=probe_bzimage, cmdline="console=ttyS0 " + "x" * 1009).close()
    with pytest.raises(VmConfigError, match="at most 1023 bytes"):
        Vm(kernel=probe_bzimage, cmdline="console=ttyS0 " + "x" * 1010)


def test_cmdline_non_ascii(probe_elf):
    with pytest.raises(VmConfigError, match="expected printable ASCII"):
        Vm(kernel=probe_elf, cmdline="quiet \u00e9")


@pytest.mark.parametrize(
    "himem_start, kernel",
    [(1024, "bz"), (0x80000, "bz"), (0x100800, "bz"), (0x7FFF000, "bz"), (0x400000, "elf")],
)
def test_bad_himem_start(probe_elf, probe_bzimage, himem_start, kernel):
    path = probe_bzimage if kernel == "bz" else probe_elf
    with pytest.raises(VmConfigError, match=rf"invalid himem_start={himem_start:#x} \({himem_start}\): "
                                            r"expected a multiple of 0x1000 from 0x100000"):
        Vm(kernel=path, himem_start=himem_start, memory_mib=128)


def test_original_readme_example_gets_the_range(probe_bzimage):
    with pytest.raises(ValueError) as e:
        Vm(kernel=probe_bzimage, himem_start=1024)
    msg = str(e.value)
    assert "himem_start=0x400 (1024)" in msg and "from 0x100000 (1048576) to 0x" in msg


def test_bad_argument_types(probe_elf):
    with pytest.raises(VmConfigError, match="invalid kernel=None"):
        Vm()
    with pytest.raises(VmConfigError, match="invalid cmdline=42"):
        Vm(kernel=probe_elf, cmdline=42)
    with pytest.raises(VmConfigError, match="invalid console_limit=10"):
        Vm(kernel=probe_elf, console_limit=10)
    vm = Vm(kernel=probe_elf)
    with pytest.raises(VmConfigError, match="invalid timeout=-1"):
        vm.wait(timeout=-1)
    with pytest.raises(VmConfigError, match="invalid data=3"):
        vm.write(3)
    vm.close()


def _in_subprocess(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def _vm_error_under(wrapper: list[str], probe_elf, caught: str) -> subprocess.CompletedProcess[str]:
    """Build a Vm in a Python run under ``wrapper``; it prints the ``caught`` exception it got."""
    code = f"""
from vmm_reference import Vm, KvmUnavailableError
try:
    Vm(kernel={str(probe_elf)!r})
except {caught} as e:
    print("RAISED", type(e).__name__, e)
"""
    return subprocess.run([*wrapper, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hide /dev/kvm in a private mount namespace")
def test_missing_dev_kvm_has_a_hint(probe_elf):
    hide_dev = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /dev && exec "$0" "$@"']
    r = _vm_error_under(hide_dev, probe_elf, "KvmUnavailableError")
    assert "RAISED KvmUnavailableError KVM is not available at \"/dev/kvm\": the device does not exist" in r.stdout, r
    assert "load the kvm module" in r.stdout
    assert issubclass(KvmUnavailableError, OSError)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_inaccessible_dev_kvm_is_a_permission_error(probe_elf):
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    r = _vm_error_under(nobody, probe_elf, "PermissionError")
    assert "RAISED VmPermissionError kvm=\"/dev/kvm\": permission denied" in r.stdout, r
    assert "usermod -aG kvm" in r.stdout


def test_no_error_aborts_the_interpreter(tmp_path):
    # Errors raised from Rust leave a working interpreter behind (no panic, no abort).
    r = _in_subprocess(
        "from vmm_reference import Vm\n"
        "for kw in [dict(kernel='/nonexistent'), dict(kernel='/etc/hostname'), dict(kernel='/', memory_mib=0)]:\n"
        "    try:\n"
        "        Vm(**kw)\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__)\n"
        "print('alive')\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["VmFileNotFoundError", "VmConfigError", "VmConfigError", "alive"]
