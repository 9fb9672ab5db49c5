"""A table of hostile inputs for every argument of ``Vm()`` and the CLI's options.

Each case must raise the documented exception, naming the argument, with a message that says
what is accepted, quickly — and the process that tries it must not die of a signal (a Rust
panic reaching an abort, a segfault) or hang. The cases run in one child process per table,
with a time limit per case, so a hang or a crash fails the test instead of the test run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# name, keyword arguments (as Python source, evaluated in the child with `f` = the files below),
# the exception class, a regular expression the message must match.
VM_CASES: list[tuple[str, str, str, str]] = [
    ("memory_mib str", "dict(memory_mib='256')", "VmConfigError", r"invalid memory_mib='256': expected an integer"),
    ("memory_mib float", "dict(memory_mib=1.5)", "VmConfigError", r"invalid memory_mib=1.5: expected an integer"),
    ("memory_mib None", "dict(memory_mib=None)", "VmConfigError", r"invalid memory_mib=None"),
    ("memory_mib bool", "dict(memory_mib=True)", "VmConfigError", r"invalid memory_mib=True"),
    ("memory_mib 0", "dict(memory_mib=0)", "VmConfigError", r"invalid memory_mib=0: expected 1 to \d+ \(this host"),
    ("memory_mib negative", "dict(memory_mib=-5)", "VmConfigError", r"invalid memory_mib=-5: expected 1 to \d+"),
    ("memory_mib huge", "dict(memory_mib=10**30)", "VmConfigError", r"invalid memory_mib=10{30}: expected 1 to"),
    ("vcpus str", "dict(vcpus='2')", "VmConfigError", r"invalid vcpus='2': expected an integer"),
    ("vcpus 0", "dict(vcpus=0)", "VmConfigError", r"invalid vcpus=0: expected 1 to \d+ \("),
    ("vcpus negative", "dict(vcpus=-1)", "VmConfigError", r"invalid vcpus=-1: expected 1 to \d+"),
    ("vcpus huge", "dict(vcpus=10**6)", "VmConfigError", r"invalid vcpus=1000000: expected 1 to \d+"),
    ("kernel None", "dict(kernel=None)", "VmConfigError", r"invalid kernel=None"),
    ("kernel int", "dict(kernel=5)", "VmConfigError", r"invalid kernel=5"),
    ("kernel missing", "dict(kernel=f['missing'])", "VmFileNotFoundError", r"kernel=.*no such file"),
    ("kernel directory", "dict(kernel=f['dir'])", "VmConfigError", r"invalid kernel=.*this is a directory"),
    ("kernel FIFO", "dict(kernel=f['fifo'])", "VmConfigError", r"invalid kernel=.*this is a FIFO"),
    ("kernel device", "dict(kernel='/dev/zero')", "VmConfigError", r"invalid kernel=/dev/zero: .*a character device"),
    ("kernel symlink loop", "dict(kernel=f['loop'])", "VmConfigError", r"invalid kernel=.*loop of symbolic links"),
    ("kernel empty", "dict(kernel=f['empty'])", "VmConfigError", r"invalid kernel=.*too short to be a kernel"),
    ("kernel garbage", "dict(kernel=f['garbage'])", "VmConfigError", r"invalid kernel=.*neither ELF nor bzImage"),
    ("kernel truncated ELF", "dict(kernel=f['elf_short'])", "VmConfigError",
     r"invalid kernel=.*(truncated|program headers)"),
    ("kernel ELF32", "dict(kernel=f['elf32'])", "VmConfigError", r"invalid kernel=.*not ELF64 for x86-64"),
    ("kernel ELF phnum overflow", "dict(kernel=f['elf_phnum'])", "VmConfigError", r"invalid kernel=.*program headers"),
    ("kernel ELF entry outside", "dict(kernel=f['elf_entry'])", "VmConfigError", r"invalid kernel=.*entry point"),
    ("kernel ELF segment overflow", "dict(kernel=f['elf_overflow'])", "VmConfigError", r"invalid kernel=.*overflows"),
    ("kernel truncated bzImage", "dict(kernel=f['bz_short'])", "VmConfigError", r"invalid kernel=.*truncated bzImage"),
    ("kernel bzImage 32-bit", "dict(kernel=f['bz_old'])", "VmConfigError", r"invalid kernel=.*without a 64-bit entry"),
    ("kernel bzImage init_size", "dict(kernel=f['bz_init'])", "VmConfigError", r"invalid kernel=.*below the MMIO gap"),
    ("cmdline int", "dict(cmdline=5)", "VmConfigError", r"invalid cmdline=5: expected a str"),
    ("cmdline non-ASCII", "dict(cmdline='quiet \\u00e9')", "VmConfigError", r"invalid cmdline=.*printable ASCII"),
    ("cmdline too long", "dict(cmdline='x' * 5000)", "VmConfigError",
     r"invalid cmdline=<\d+ bytes>: this kernel accepts"),
    ("cmdline huge bzImage limit", "dict(kernel=f['bz_cmdline'], cmdline='x' * 600000)", "VmConfigError",
     r"accepts at most 523263 bytes"),
    ("himem_start negative", "dict(himem_start=-1)", "VmConfigError",
     r"invalid himem_start=-1: expected a multiple of 0x1000"),
    ("himem_start unaligned", "dict(himem_start=0x100001)", "VmConfigError",
     r"invalid himem_start=.*multiple of 0x1000"),
    ("himem_start huge", "dict(himem_start=2**70)", "VmConfigError", r"invalid himem_start=\d+: expected a multiple"),
    ("himem_start str", "dict(himem_start='1M')", "VmConfigError", r"invalid himem_start='1M': expected an integer"),
    ("initrd missing", "dict(initrd=f['missing'])", "VmFileNotFoundError", r"initrd=.*no such file"),
    ("initrd FIFO", "dict(initrd=f['fifo'])", "VmConfigError", r"invalid initrd=.*this is a FIFO"),
    ("initrd directory", "dict(initrd=f['dir'])", "VmConfigError", r"invalid initrd=.*this is a directory"),
    ("initrd huge", "dict(initrd=f['huge'], memory_mib=64)", "VmConfigError", r"invalid (initrd|memory_mib)="),
    ("console_limit negative", "dict(console_limit=-1)", "VmConfigError",
     r"invalid console_limit=-1: expected at least"),
    ("console_limit tiny", "dict(console_limit=0)", "VmConfigError", r"invalid console_limit=0: expected at least"),
    ("console_limit str", "dict(console_limit='big')", "VmConfigError", r"invalid console_limit='big'"),
    ("disks str", "dict(disks='disk.img')", "VmConfigError", r"invalid disks='disk.img': expected a list"),
    ("disks int", "dict(disks=[5])", "VmConfigError", r"invalid disks\[0\]=5"),
    ("disks FIFO", "dict(disks=[f['fifo']])", "VmConfigError", r"invalid disks\[0\]=.*this is a FIFO"),
    ("disks directory", "dict(disks=[f['dir']])", "VmConfigError", r"invalid disks\[0\]=.*this is a directory"),
    ("disks block device", "dict(disks=['/dev/null'])", "VmConfigError", r"invalid disks\[0\]=/dev/null"),
    ("disks empty image", "dict(disks=[f['empty']])", "VmConfigError", r"invalid disks\[0\]=.*at least 512 bytes"),
    ("disks missing", "dict(disks=[f['missing']])", "VmFileNotFoundError", r"disks\[0\]=.*no such file"),
    ("disks too many", "dict(disks=[Disk(f['img'], read_only=True)] * 17)", "VmConfigError", r"at most 16 devices"),
    ("disks serial long", "dict(disks=[Disk(f['img'], serial='s' * 21)])", "VmConfigError",
     r"invalid disks\[0\]\.serial=.*at most 20"),
    ("net not a list", "dict(net=5)", "VmConfigError", r"invalid net=5"),
    ("net bad item", "dict(net=['tap0'])", "VmConfigError", r"invalid net\[0\]"),
    ("net bad mac", "dict(net=[Tap('tap9', mac='ff:ff:ff:ff:ff:ff')])", "VmConfigError", r"invalid net\[0\]\.mac="),
    ("net bad forward", "dict(net=[UserNet(forward={70000: 80})])", "VmConfigError", r"invalid net\[0\]"),
    ("vsock str", "dict(vsock='yes')", "VmConfigError", r"invalid vsock='yes'"),
    ("vsock host cid", "dict(vsock=Vsock(cid=2))", "VmConfigError", r"invalid vsock\.cid=2"),
    ("vsock negative cid", "dict(vsock=Vsock(cid=-1))", "VmConfigError", r"invalid vsock\.cid=-1"),
    ("vsock long uds", "dict(vsock=Vsock(uds='/tmp/' + 'u' * 200))", "VmConfigError", r"invalid vsock\.uds="),
]

_CHILD = textwrap.dedent(r"""
    import json, signal, sys, time
    from vmm_reference import *
    from vmm_reference import Disk, Tap, UserNet, Vsock
    f = json.loads(sys.argv[1])
    cases = json.loads(sys.argv[2])
    probe = f["probe"]
    for name, source in cases:
        kwargs = dict(kernel=probe, memory_mib=64)
        kwargs.update(eval(source))
        signal.alarm(20)  # a hang becomes a visible failure, not a stuck test run
        t0 = time.monotonic()
        try:
            Vm(**kwargs).close()
            result = ("no exception", "")
        except Exception as e:
            result = (type(e).__name__, str(e))
        signal.alarm(0)
        print(json.dumps([name, *result, time.monotonic() - t0]), flush=True)
""")


def hostile_files(d: Path, probe_elf: Path, probe_bzimage: Path) -> dict[str, str]:
    """Every kind of bad file the table uses."""
    elf = probe_elf.read_bytes()
    bz = probe_bzimage.read_bytes()

    def patched(name: str, data: bytes, at: int, value: int, size: int) -> str:
        b = bytearray(data)
        b[at:at + size] = value.to_bytes(size, "little")
        (d / name).write_bytes(b)
        return str(d / name)

    os.mkfifo(d / "fifo")
    (d / "dir").mkdir()
    os.symlink(d / "loop2", d / "loop")
    os.symlink(d / "loop", d / "loop2")
    (d / "empty").write_bytes(b"")
    (d / "garbage").write_bytes(os.urandom(64 << 10))
    (d / "elf_short").write_bytes(elf[:100])
    (d / "elf32").write_bytes(b"\x7fELF\x01" + b"\0" * 200)
    (d / "bz_short").write_bytes(bz[:0x300])
    (d / "img").write_bytes(b"\0" * 4096)
    with open(d / "huge", "wb") as h:  # sparse: no disk space
        h.truncate(8 << 30)
    files = {k: str(d / k) for k in ("fifo", "dir", "loop", "empty", "garbage", "elf_short", "elf32", "bz_short",
                                      "img", "huge")}
    files.update(
        missing=str(d / "missing"),
        probe=str(probe_elf),
        elf_phnum=patched("elf_phnum", elf, 0x38, 0xFFFF, 2),
        elf_entry=patched("elf_entry", elf, 0x18, 0xDEAD_0000_0000, 8),
        bz_old=patched("bz_old", bz, 0x206, 0x0200, 2),          # boot protocol 2.00
        bz_init=patched("bz_init", bz, 0x260, 0xFFFF_F000, 4),   # init_size ~4 GiB
        bz_cmdline=patched("bz_cmdline", bz, 0x238, 0xFFFF_FFFF, 4),
    )
    # A PT_LOAD whose paddr + memsz wraps around.
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    b = bytearray(elf)
    b[phoff + 0x18:phoff + 0x20] = (2**64 - 0x1000).to_bytes(8, "little")
    b[phoff + 0x28:phoff + 0x30] = (0x10000).to_bytes(8, "little")
    (d / "elf_overflow").write_bytes(b)
    files["elf_overflow"] = str(d / "elf_overflow")
    return files


def run_table(files: dict[str, str], cases: list[tuple[str, str, str, str]]) -> dict[str, tuple[str, str, float]]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(files), json.dumps([c[:2] for c in cases])],
                          capture_output=True, text=True, timeout=60 + 20 * len(cases))
    assert proc.returncode >= 0, f"the child died of signal {signal.Signals(-proc.returncode).name}:\n{proc.stderr}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for line in proc.stdout.splitlines():
        name, cls, message, seconds = json.loads(line)
        results[name] = (cls, message, seconds)
    return results


def test_every_vm_argument_refuses_hostile_values_clearly(probe_elf, probe_bzimage, tmp_path):
    import re

    files = hostile_files(tmp_path, probe_elf, probe_bzimage)
    results = run_table(files, VM_CASES)
    problems = []
    for name, _, cls, pattern in VM_CASES:
        got_cls, message, seconds = results.get(name, ("not run", "", 0.0))
        if got_cls != cls or not re.search(pattern, message) or seconds > 5:
            problems.append(f"{name}: {got_cls}: {message!r} ({seconds:.1f} s); expected {cls} matching {pattern!r}")
    assert not problems, "\n".join(problems)
    print(f"{len(VM_CASES)} hostile Vm() inputs refused clearly")


CLI_CASES: list[tuple[list[str], str]] = [
    (["--memory", "mem_size_mib=lots"], r"mem_size_mib"),
    (["--memory", "mem_size_mib=0"], r"memory_mib=0: expected 1 to \d+"),
    (["--vcpu", "num_vcpus=0"], r"vcpus=0: expected 1 to \d+"),
    (["--vcpu", "num_vcpus=-3"], r"num_vcpus|vcpus=-3"),
    (["--kernel", "path={fifo}"], r"kernel=.*FIFO"),
    (["--kernel", "path={dir}"], r"kernel=.*directory"),
    (["--kernel", "path={garbage}"], r"kernel=.*neither ELF nor bzImage"),
    (["--kernel", "path={probe},himem_start=abc"], r"himem_start"),
    (["--kernel", "path={probe},cmdline=" + "x" * 5000], r"cmdline=<\d+ bytes>"),
    (["--kernel", "path={probe}", "--blk", "path={fifo}"], r"disks\[0\]=.*FIFO"),
    (["--kernel", "path={probe}", "--blk", "path={img},read_only=maybe"], r"read_only"),
    (["--kernel", "path={probe}", "--net", "tap=tap0,mac=zz"], r"mac"),
    (["--kernel", "path={probe}", "--net", "user,forward=99999:80"], r"forward"),
    (["--kernel", "path={probe}", "--bogus"], r"bogus|unrecognized"),
]


@pytest.mark.parametrize("impl", ["native", "python"])
def test_cli_options_refuse_hostile_values_clearly(impl, native_cli, probe_elf, probe_bzimage, tmp_path):
    files = hostile_files(tmp_path, probe_elf, probe_bzimage)
    prefix = [str(native_cli)] if impl == "native" else [sys.executable, "-m", "vmm_reference"]
    problems = []
    for args, pattern in CLI_CASES:
        argv = [a.format(**files) for a in args]
        if not any(a.startswith("--kernel") for a in argv):
            argv += ["--kernel", f"path={probe_elf}"]
        try:
            r = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=20,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            problems.append(f"{args}: hung")
            continue
        import re

        if r.returncode != 2 or not re.search(pattern, r.stderr):
            problems.append(f"{args}: exit {r.returncode}: {r.stderr[-300:]!r}; expected {pattern!r}")
    assert not problems, "\n".join(problems)
