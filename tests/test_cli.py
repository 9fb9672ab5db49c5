"""The vmm-reference command, in the original project's syntax: every test runs against both the
native program the wheel installs (src/cli) and ``python -m vmm_reference``, which must agree."""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

import pytest

Cli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(params=["native", "python"])
def cli(request, native_cli) -> Cli:
    prefix = [str(native_cli)] if request.param == "native" else [sys.executable, "-m", "vmm_reference"]

    def run(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], input=stdin, capture_output=True, text=True, timeout=timeout)

    return run


def test_boots_the_probe_and_streams_its_console(cli, probe_elf):
    r = cli("--memory", "mem_size_mib=512", "--vcpus", "num_vcpus=2", "--kernel",
            f'path={probe_elf},himem_start=1048576,cmdline="console=ttyS0 pci=off"')
    assert r.returncode == 0, r.stderr
    assert "PROBE: cmdline=console=ttyS0 pci=off\n" in r.stdout
    assert "PROBE: e820 0x0000000000100000 0x000000001ff00000 1" in r.stdout
    assert "logical=2" in r.stdout
    assert r.stdout.endswith("PROBE: reset\n")


def test_stdin_reaches_the_guest(cli, probe_elf):
    r = cli("--kernel", f"path={probe_elf},cmdline=probe.end=echo", stdin="ping\nreset\n")
    assert r.returncode == 0, r.stderr
    assert "PROBE: got ping\nPROBE: got reset\n" in r.stdout


def test_ctrl_a_x_ends_the_vm(cli, probe_elf):
    r = cli("--kernel", f"path={probe_elf},cmdline=probe.end=echo", stdin="\x01x")
    assert r.returncode == 1
    assert "reason killed" in r.stderr


def test_shutdown_is_success_and_errors_are_one_line(cli, probe_elf, tmp_path):
    assert cli("--kernel", f"path={probe_elf},cmdline=probe.end=triple").returncode == 0
    r = cli("--kernel", f"path={tmp_path}/missing")
    assert r.returncode == 2  # a value the VMM does not accept: a usage error
    assert r.stderr.count("\n") == 1 and "no such file" in r.stderr


def test_original_readme_himem_start_is_refused(cli, probe_bzimage):
    r = cli("--memory", "mem_size_mib=1024", "--kernel", f"path={probe_bzimage},himem_start=1024")
    assert r.returncode == 2
    assert "invalid himem_start=0x400 (1024): expected a multiple of 0x1000 from 0x100000" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kernel", "path=/x,bogus=1"], "unknown key 'bogus'"),
        (["--kernel", "himem_start=1"], "path=PATH is required"),
        (["--memory", "mem_size_mib=lots", "--kernel", "path=/x"], "invalid mem_size_mib='lots'"),
        (["--vcpus", "vcpus=2", "--kernel", "path=/x"], "unknown key 'vcpus'"),
        (["--kernel", "path=/x,path=/y"], "path given twice"),
        (["--kernel", "path=/x", "--kernel", "path=/y"], "argument --kernel: given twice"),
        (["--memory", "mem_size_mib=1", "--mem", "mem_size_mib=2", "--kernel", "path=/x"],
         "argument --memory: given twice"),
        (["--kernel", "path=/x", "--bogus"], "unrecognized arguments: --bogus"),
        (["--v", "x", "--kernel", "path=/x"], "ambiguous option: --v could match --vcpus, --version"),
        (["--memory", "mem_size_mib=512"], "the following arguments are required: --kernel"),
        (["--kernel", "path=/x", "--"], "expected a command after --"),
        (["--kernel", "path=/x", "--net", "tap0"], "--net: expected key=value, got 'tap0'"),
        (["--kernel", "path=/x", "--net", "user,forward=80"], "--net: invalid forward='80'"),
        (["--kernel", "path=/x", "--net", "user,forward=a:b"], "--net: invalid forward='a:b'"),
        (["--kernel", "path=/x", "--net", "tap=t,ro=on"], "--net: unknown key 'ro'"),
        (["--kernel", "path=/x", "--net", "tap=t,mac=01:00:00:00:00:01"], "expected a unicast MAC"),
    ],
)
def test_usage_errors(cli, args, message):
    r = cli(*args)
    assert r.returncode == 2
    assert message in r.stderr


def test_vm_errors_from_the_cli(cli, probe_elf):
    r = cli("--memory", "mem_size_mib=0", "--kernel", f"path={probe_elf}")
    r = cli("--memory", "mem_size_mib=0", "--kernel", f"path={probe_elf}")
    assert r.returncode == 2 and "invalid memory_mib=0: expected 1 to" in r.stderr
    r = cli("--vcpus", "num_vcpus=0", "--kernel", f"path={probe_elf}")
    assert r.returncode == 2 and "invalid vcpus=0" in r.stderr
    r = cli("--kernel", f"path={probe_elf},cmdline={'x' * 3000}")
    assert r.returncode == 2 and "at most 2047 bytes" in r.stderr


def test_help_documents_every_key(cli):
    r = cli("--help")
    for key in ("mem_size_mib", "num_vcpus", "path", "himem_start", "cmdline", "initrd", "Ctrl-A"):
        assert key in r.stdout


def test_empty_value_means_default(cli, probe_elf):
    r = cli("--memory", "mem_size_mib=", "--kernel", f"path={probe_elf},himem_start=,cmdline=")
    assert r.returncode == 0, r.stderr
    assert "PROBE: e820 0x0000000000100000 0x000000000ff00000 1" in r.stdout  # 256 MiB default


def test_guest_exit_code_is_the_exit_status(cli, probe_elf):
    assert cli("--kernel", f"path={probe_elf},cmdline=probe.exit=7").returncode == 7
    assert cli("--kernel", f"path={probe_elf},cmdline=probe.exit=0").returncode == 0
    r = cli("--kernel", f"path={probe_elf},cmdline=probe.end=panic")
    assert r.returncode == 1 and "reason panic: Kernel panic - not syncing" in r.stderr


def test_both_implementations_say_the_same(native_cli, probe_elf, tmp_path):
    """Same stdout, stderr and status from the native program and ``python -m vmm_reference``."""
    cases = [["--help"], ["--version"], ["--kernel", "path=/x,bogus=1"], ["--kernel", f"path={tmp_path}/none"],
             ["--memory", "mem_size_mib=lots", "--kernel", "path=/x"], ["--vcpus", "num_vcpus=0", "--kernel",
             f"path={probe_elf}"], ["--kernel", f"path={probe_elf},cmdline=probe.exit=3"],
             ["--kernel", f"path={probe_elf},cmdline=probe.end=panic"], ["--blk", "path=/d,read_only=maybe",
             "--kernel", "path=/x"], ["--net", "user,forward=80", "--kernel", "path=/x"],
             ["--transport", "pcie", "--kernel", f"path={probe_elf}"], ["--rng=1", "--kernel", "path=/x"],
             ["--transport", "pci", "--transport", "mmio", "--kernel", "path=/x"],
             ["--transport", "pci", "--rng", "--kernel", f"path={probe_elf},cmdline=probe.exit=3"]]
    for args in cases:
        native = subprocess.run([str(native_cli), *args], capture_output=True, text=True, timeout=60)
        python = subprocess.run([sys.executable, "-m", "vmm_reference", *args], capture_output=True, text=True,
                                timeout=60)
        assert (native.returncode, native.stdout, native.stderr) == (python.returncode, python.stdout,
                                                                     python.stderr), args

