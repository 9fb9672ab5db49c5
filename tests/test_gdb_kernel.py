"""The gdb stub on the Debian cloud kernel on this host's KVM: its early boot runs here (PVM),
so gdb stops it at ``_printk``, whose address comes from the kernel's own export table
(``__ksymtab``: Debian's vmlinux has no symbol table and its System.map is a placeholder),
reads the format string it was called with, and after ``detach`` the kernel goes on printing.

Where KVM is hardware-backed the test is the same; the lab's nested KVM (QEMU's TCG) delivers
no debug exits to its guests, so nothing of the stub is tested there."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from test_gdb_stub import gdb_batch
from vmm_reference import Vm

pytestmark = pytest.mark.kernel


def exported_symbols(vmlinux: Path, wanted: set[str]) -> dict[str, int]:
    """The addresses of the ``wanted`` exported symbols, from the ELF's ``__ksymtab``.

    Each entry is three 32-bit offsets relative to their own place: the symbol's value, its
    name (in ``__ksymtab_strings``) and its namespace."""
    data = vmlinux.read_bytes()
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3a)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]

    def name(at: int) -> str:
        return data[at:data.index(b"\0", at)].decode()

    def offset(addr: int) -> int:
        for _, kind, _, start, off, size in sections:
            if start and start <= addr < start + size and kind != 8:  # SHT_NOBITS holds no bytes
                return off + addr - start
        raise AssertionError(f"{addr:#x} is in no section of {vmlinux}")

    found = {}
    for sh_name, _, _, start, off, size in sections:
        if name(names_at + sh_name) not in ("__ksymtab", "__ksymtab_gpl"):
            continue
        for i in range(size // 12):
            value, name_off, _ = struct.unpack_from("<iii", data, off + 12 * i)
            symbol = name(offset(start + 12 * i + 4 + name_off))
            if symbol in wanted:
                found[symbol] = start + 12 * i + value
    return found


def test_gdb_stops_the_debian_kernel_at_printk(vm_factory, guest_assets, tmp_path, gdb_bin):
    printk = exported_symbols(guest_assets.vmlinux, {"_printk"})["_printk"]
    assert printk >= 0xffffffff81000000
    sock = tmp_path / "kernel.gdb"
    vm: Vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, gdb=f"unix:{sock}",
                        cmdline="console=ttyS0 reboot=k panic=-1 earlyprintk=ttyS0 nokaslr")
    vm.start()
    # On PVM the kernel's early boot is slow: the timeout is a safety net, not a speed target.
    out = gdb_batch(gdb_bin, guest_assets.vmlinux, str(sock), "p/x $pc", f"hbreak *{printk:#x}", "continue",
                    "p/x $pc", "p/x $cs", "x/2bx $rdi", "delete", "detach", timeout=900)
    values = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)", out, re.M)]
    assert len(values) == 3, out
    assert values[0] == 0x1000000, f"held at the ELF's entry point: {out}"
    assert values[1] == printk, f"stopped at _printk: {out}"
    assert values[2] & 3 == 0, "in ring 0"
    # _printk's first argument: a format that starts with KERN_SOH and a log level.
    m = re.search(r"^0x[0-9a-f]+:\s+0x01\s+0x3([0-7])", out, re.M)
    assert m, f"a printk format at $rdi: {out}"
    # Detached: the kernel runs on and prints its banner.
    for line in vm.serial.lines(timeout=900):
        if re.search(r"Linux version 6\.\d+", line):
            break
    else:
        raise AssertionError("the console ended before the kernel's banner")
