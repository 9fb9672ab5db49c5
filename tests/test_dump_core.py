"""``vm.dump_core(path)``: an ELF core of the guest (QEMU's ``dump-guest-memory`` layout), from
the probe guest on this host's KVM, read back with our own parser and with binutils' readelf.

The probe's text is in guest memory as its ELF file holds it, so the dump's bytes at its load
address must be those bytes; every vCPU has an ``NT_PRSTATUS`` note whose RIP is in the probe's
code and a ``QEMU`` note with its CR3; never-touched RAM is a hole in the file.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from vmm_reference import Vm, VmConfigError, VmFileNotFoundError

PT_LOAD, PT_NOTE, NT_PRSTATUS = 1, 4, 1


def elf_segments(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """``(type, offset, paddr, filesz, memsz)`` of each program header of a 64-bit ELF."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    out = []
    for i in range(phnum):
        kind, _flags, offset, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        out.append((kind, offset, paddr, filesz, memsz))
    return out


def notes(data: bytes, offset: int, size: int) -> list[tuple[bytes, int, bytes]]:
    """``(name, type, desc)`` of each note in ``data[offset:offset+size]``."""
    out, at, end = [], offset, offset + size
    while at + 12 <= end:
        namesz, descsz, kind = struct.unpack_from("<III", data, at)
        at += 12
        name = data[at:at + namesz].rstrip(b"\0")
        at += (namesz + 3) // 4 * 4
        out.append((name, kind, data[at:at + descsz]))
        at += (descsz + 3) // 4 * 4
    return out


def read_phys(core: bytes, segments, paddr: int, n: int) -> bytes:
    """``n`` bytes of guest-physical memory at ``paddr``, as the dump holds them."""
    for kind, offset, start, filesz, _ in segments:
        if kind == PT_LOAD and start <= paddr and paddr + n <= start + filesz:
            return core[offset + paddr - start:offset + paddr - start + n]
    raise AssertionError(f"no PT_LOAD holds {paddr:#x}")


@pytest.mark.parametrize("vcpus", [1, 2])
def test_a_dump_holds_the_guests_memory_and_registers(vm_factory, probe_elf, tmp_path, vcpus):
    smp = "probe.smp=madt " if vcpus > 1 else ""
    vm: Vm = vm_factory(kernel=probe_elf, cmdline=f"{smp}probe.end=tick", vcpus=vcpus, memory_mib=64)
    vm.start()
    vm.expect(r"PROBE: tick 2 ", timeout=60)
    out = tmp_path / "guest.core"
    written = vm.dump_core(out)
    assert vm.state == "running", "a running VM goes on after its dump"
    core = out.read_bytes()
    assert core[16:20] == struct.pack("<HH", 4, 62), "ET_CORE, EM_X86_64"
    segments = elf_segments(core)
    assert segments[0][0] == PT_NOTE
    loads = [s for s in segments if s[0] == PT_LOAD]
    assert [(s[2], s[3]) for s in loads] == [(0, 64 << 20)], "one PT_LOAD: all of RAM at 0"
    assert all(s[1] % 4096 == 0 for s in loads)
    # Sparse: what the probe never touched takes no space (written counts RAM bytes).
    assert 0 < written < 16 << 20
    assert out.stat().st_blocks * 512 < (16 << 20) + 65536
    # The probe's code, as loaded: its first PT_LOAD's first page.
    image = probe_elf.read_bytes()
    kind, offset, paddr, filesz, _ = elf_segments(image)[0]
    assert kind == PT_LOAD and filesz >= 4096
    assert read_phys(core, segments, paddr, 4096) == image[offset:offset + 4096]
    # Registers: one NT_PRSTATUS and one QEMU note per vCPU, RIP in the probe.
    found = notes(core, segments[0][1], segments[0][3])
    prstatus = [d for name, k, d in found if name == b"CORE" and k == NT_PRSTATUS]
    qemu = [d for name, k, d in found if name == b"QEMU"]
    assert len(prstatus) == vcpus and len(qemu) == vcpus, [(n, k, len(d)) for n, k, d in found]
    for i, d in enumerate(prstatus):
        assert len(d) == 336 and struct.unpack_from("<I", d, 32)[0] == i + 1
        rip = struct.unpack_from("<Q", d, 112 + 16 * 8)[0]
        assert paddr <= rip < paddr + (16 << 20), f"vCPU {i} RIP {rip:#x}"
    for d in qemu:
        version, size = struct.unpack_from("<II", d, 0)
        assert (version, size, len(d)) == (1, 440, 440)
        cr0, cr3 = struct.unpack_from("<Q", d, 392)[0], struct.unpack_from("<Q", d, 392 + 24)[0]
        assert cr0 & 1 and cr3 and cr3 % 4096 == 0, (hex(cr0), hex(cr3))
    assert not [n for n, _, _ in found if n == b"VMCOREINFO"], "the probe is no Linux"
    vm.pause()
    vm.dump_core(out)  # a paused VM stays paused
    assert vm.state == "paused"


def test_readelf_reads_the_dump(vm_factory, probe_elf, tmp_path):
    if not shutil.which("readelf"):
        pytest.fail("readelf is missing (binutils, which .ci/run installs)")
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=tick", memory_mib=64)
    vm.start()
    vm.expect(r"PROBE: tick 1 ", timeout=60)
    vm.dump_core(tmp_path / "c")
    header = subprocess.run(["readelf", "-h", "-l", "-n", "-W", str(tmp_path / "c")], capture_output=True,
                            text=True, check=True).stdout
    assert "CORE (Core file)" in header and "X86-64" in header, header
    assert "NT_PRSTATUS (prstatus structure)" in header and "QEMU" in header, header
    assert "LOAD           0x" in header, header


def test_bad_paths_name_the_argument(vm_factory, probe_elf, tmp_path):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt", memory_mib=64)
    vm.start()
    vm.expect("PROBE: done", timeout=30)
    with pytest.raises(VmFileNotFoundError) as e:
        vm.dump_core(tmp_path / "no-such-dir" / "c")
    assert e.value.argument == "path"
    with pytest.raises(VmConfigError, match="invalid path=.*: expected a file to write, this is a directory"):
        vm.dump_core(tmp_path)
    with pytest.raises(VmConfigError, match="invalid path=None"):
        vm.dump_core(None)  # type: ignore[arg-type]
    assert vm.state == "running"


def test_the_cli_writes_a_core_on_sigusr1(native_cli, probe_elf, tmp_path):
    import os
    import re
    import signal
    import threading
    import time

    vmm = subprocess.Popen([str(native_cli), "--kernel", f"path={probe_elf},cmdline=probe.end=tick", "--memory",
                            "mem_size_mib=64"], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    out = bytearray()
    err = bytearray()

    def drain(stream, buf: bytearray) -> None:
        while chunk := stream.read1(65536):
            buf += chunk

    readers = [threading.Thread(target=drain, args=pair, daemon=True)
               for pair in ((vmm.stdout, out), (vmm.stderr, err))]
    for r in readers:
        r.start()

    def until(what, buf: bytearray, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (m := re.search(what, bytes(buf))):
            assert vmm.poll() is None and time.monotonic() < deadline, (what, bytes(out[-500:]), bytes(err))
            time.sleep(0.02)
        return m

    try:
        until(rb"PROBE: tick 2 ", out)
        vmm.send_signal(signal.SIGUSR1)
        m = until(rb"guest core written to (\S+) \((\d+) MiB of RAM\)", err)
        core = tmp_path / m.group(1).decode()
        assert core.name == f"vmm-reference-{vmm.pid}-1.core"
        data = core.read_bytes()
        loads = [s for s in elf_segments(data) if s[0] == PT_LOAD]
        assert sum(s[4] for s in loads) == 64 << 20, "all of the guest's RAM"
        code = probe_elf.read_bytes()[0x1000:0x1100]
        assert read_phys(data, elf_segments(data), 0x200000, len(code)) == code
        ticks = len(re.findall(rb"PROBE: tick ", bytes(out)))
        until(rb"PROBE: tick %d " % (ticks + 2), out)  # it runs on after the dump
        vmm.send_signal(signal.SIGUSR1)
        until(rb"vmm-reference-\d+-2\.core", err)
        vmm.send_signal(signal.SIGTERM)
        assert vmm.wait(timeout=30) != 0
    finally:
        if vmm.poll() is None:
            vmm.kill()
    assert os.path.exists(tmp_path / f"vmm-reference-{vmm.pid}-2.core")
