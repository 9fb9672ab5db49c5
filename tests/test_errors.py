"""Every user error gets a clear exception naming the argument, the value and what is accepted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

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
    assert (e.value.argument, e.value.path) == ("kernel", str(tmp_path / "nope"))


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


def host_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20


@pytest.mark.parametrize("memory_mib", [0, -1, 10**9, 2**64, -(2**70), 10**50])
def test_memory_out_of_range_states_this_hosts_limit(probe_elf, memory_mib):
    # The real limit (this host's RAM), whatever the value's size or sign: one check, in Rust.
    limit = host_mib()
    message = rf"invalid memory_mib={memory_mib}: expected 1 to (\d+) \(this host's RAM"
    with pytest.raises(VmConfigError, match=message) as e:
        Vm(kernel=probe_elf, memory_mib=memory_mib)
    stated = int(re.search(r"expected 1 to (\d+)", str(e.value)).group(1))
    assert abs(stated - limit) <= limit // 100, (stated, limit)
    # The message's parts, as attributes.
    assert (e.value.argument, e.value.value) == ("memory_mib", str(memory_mib))
    assert e.value.accepted.startswith("expected 1 to ") and str(stated) in e.value.accepted


@pytest.mark.parametrize("memory_mib", [1.5, "256", True])
def test_memory_wrong_type(probe_elf, memory_mib):
    with pytest.raises(VmConfigError, match="invalid memory_mib="):
        Vm(kernel=probe_elf, memory_mib=memory_mib)


def test_memory_too_small_for_the_kernel(probe_bzimage):
    with pytest.raises(VmConfigError, match=r"invalid memory_mib=1: the bzImage needs guest RAM up to"):
        Vm(kernel=probe_bzimage, memory_mib=1)


def test_vcpus_zero_and_too_many(probe_elf):
    limit = min(max_vcpus(), 254)  # KVM's limit, and the xAPIC's 8-bit APIC ids
    for vcpus in (0, -1, limit + 1, limit + 1000, 2**40):
        with pytest.raises(VmConfigError, match=rf"invalid vcpus={vcpus}: expected 1 to {limit} \("):
            Vm(kernel=probe_elf, vcpus=vcpus)


def test_cmdline_too_long_for_elf(probe_elf):
    # 2100 bytes and the " pci=off" the VMM adds (no pci= in it)
    with pytest.raises(VmConfigError, match=r"invalid cmdline=<2108 bytes>: this kernel accepts at most 2047"):
        Vm(kernel=probe_elf, cmdline="console=ttyS0 " + "x" * 2086)


def test_cmdline_limit_comes_from_the_bzimage_header(probe_bzimage):
    # The probe's bzImage declares cmdline_size=1023; "pci=off" in the line keeps the VMM from
    # adding it, so the user's bytes are the whole line.
    Vm(kernel=probe_bzimage, cmdline="console=ttyS0 pci=off " + "x" * 1001).close()
    with pytest.raises(VmConfigError, match="at most 1023 bytes"):
        Vm(kernel=probe_bzimage, cmdline="console=ttyS0 pci=off " + "x" * 1002)


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


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "loop"])
@pytest.mark.parametrize("arg", ["kernel", "initrd", "disks"])
def test_non_regular_files_are_refused_at_once(probe_elf, tmp_path, kind, arg):
    """A FIFO used to hang Vm() for ever (opened before it was checked); none of these may block."""
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/null")
    else:
        os.symlink(tmp_path / "loop-b", tmp_path / "loop-a")
        os.symlink(tmp_path / "loop-a", tmp_path / "loop-b")
        path = tmp_path / "loop-a"
    what = {"fifo": "a FIFO", "directory": "a directory", "device": "a character device",
            "loop": "a loop of symbolic links"}[kind]
    name = "disks[0]" if arg == "disks" else arg
    kwargs = {"kernel": probe_elf, arg: [path] if arg == "disks" else path}
    if arg == "kernel":
        kwargs["kernel"] = path
    t0 = time.monotonic()
    with pytest.raises(VmConfigError, match=rf"invalid {re.escape(name)}=.*expected a regular file, this is {what}"):
        Vm(**kwargs)
    assert time.monotonic() - t0 < 5


def test_a_bzimage_header_cannot_stretch_the_command_line_over_the_mp_table(probe_bzimage, tmp_path):
    data = bytearray(probe_bzimage.read_bytes())
    data[0x238:0x23C] = (0xFFFFFFF0).to_bytes(4, "little")  # cmdline_size: "4 GiB"
    k = tmp_path / "bzImage"
    k.write_bytes(data)
    room = 0x9FC00 - 0x20000  # from the command line's address to the MP table
    Vm(kernel=k, cmdline="x" * 1000).close()
    with pytest.raises(VmConfigError, match=f"this kernel accepts at most {room - 1} bytes"):
        Vm(kernel=k, cmdline="x" * room)


def test_an_elf_entry_outside_its_segments_is_refused(probe_elf, tmp_path):
    data = bytearray(probe_elf.read_bytes())
    data[0x18:0x20] = (0x7FFF_0000_0000).to_bytes(8, "little")  # e_entry
    k = tmp_path / "vmlinux"
    k.write_bytes(data)
    with pytest.raises(VmConfigError, match=r"invalid kernel=.*entry point 0x7fff00000000 is not inside any segment"):
        Vm(kernel=k)


def test_an_elf_loading_below_1_mib_is_a_kernel_error(tmp_path):
    # ELF64 x86-64 header + one PT_LOAD at physical 0x1000.
    eh = bytearray(64)
    eh[0:4] = b"\x7fELF"
    eh[4], eh[5], eh[6] = 2, 1, 1
    eh[0x12:0x14] = (62).to_bytes(2, "little")
    eh[0x18:0x20] = (0x1000).to_bytes(8, "little")
    eh[0x20:0x28] = (64).to_bytes(8, "little")
    eh[0x36:0x38] = (56).to_bytes(2, "little")
    eh[0x38:0x3A] = (1).to_bytes(2, "little")
    ph = bytearray(56)
    ph[0:4] = (1).to_bytes(4, "little")
    ph[0x08:0x10] = (0x1000).to_bytes(8, "little")  # offset
    ph[0x18:0x20] = (0x1000).to_bytes(8, "little")  # paddr
    ph[0x20:0x28] = (0x100).to_bytes(8, "little")   # filesz
    ph[0x28:0x30] = (0x100).to_bytes(8, "little")   # memsz
    k = tmp_path / "low.elf"
    k.write_bytes(bytes(eh + ph) + b"\0" * (0x1100 - 120))
    message = r"invalid kernel=<ELF loading at 0x1000>: expected an ELF kernel that loads at or above 0x100000"
    with pytest.raises(VmConfigError, match=message):
        Vm(kernel=k)


def test_a_bzimage_needing_more_than_low_memory_is_a_kernel_error(probe_bzimage, tmp_path):
    data = bytearray(probe_bzimage.read_bytes())
    data[0x260:0x264] = (0xFFFF_0000).to_bytes(4, "little")  # init_size: ~4 GiB
    k = tmp_path / "bzImage"
    k.write_bytes(data)
    with pytest.raises(VmConfigError, match=r"invalid kernel=<bzImage needing guest RAM up to .*below the MMIO gap"):
        Vm(kernel=k, memory_mib=8192 if host_mib() > 16384 else 1024)


def test_every_exception_is_a_vm_error_with_its_builtin_base_and_fields():
    """The extension makes the classes: one hierarchy, shared by Rust and Python raisers."""
    import pickle

    from vmm_reference import _native, errors

    bases = {"VmConfigError": ValueError, "VmFileNotFoundError": FileNotFoundError,
             "VmPermissionError": PermissionError, "KvmUnavailableError": OSError,
             "VmStateError": RuntimeError, "VmTimeoutError": TimeoutError, "CliError": ValueError}
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls is getattr(_native, name) and issubclass(cls, errors.VmError), name
        assert cls.__module__ == "vmm_reference.errors" and cls.__doc__, name
        if name in bases:
            assert issubclass(cls, bases[name]), name
    assert issubclass(errors.CliError, errors.VmConfigError)
    e = errors.VmConfigError("invalid x=1: expected 2")
    assert (e.argument, e.value, e.accepted) == (None, None, None)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is errors.VmConfigError and str(back) == str(e)


def test_refusals_carry_their_fields(probe_elf):
    with pytest.raises(VmConfigError) as e:
        Vm(kernel=probe_elf, vcpus=0)
    assert (e.value.argument, e.value.value) == ("vcpus", "0") and e.value.accepted.startswith("expected 1 to")
