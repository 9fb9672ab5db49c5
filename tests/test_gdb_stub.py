"""The gdb stub (``Vm(gdb=...)``), driven by Debian's gdb in batch mode against the probe guest
on this host's KVM: the guest waits at its entry point until gdb attaches; a breakpoint at a
probe function is hit, registers and memory read there, a step taken, Ctrl-C stops a running
guest and ``kill`` ends it, and after ``detach`` the guest runs on.

What KVM_SET_GUEST_DEBUG does on PVM (measured with a bare KVM program): execution
breakpoints in the debug registers and single-steps exit to the VMM; data watchpoints never
fire and ``int3`` is not intercepted (the guest takes its own #BP). gdb's ``break`` uses the
debug registers too, so it works here, and a fifth breakpoint is refused."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from vmm_reference import Vm, VmConfigError


@pytest.fixture
def gdb_bin(request) -> str:
    from vmm_reference.pytest_plugin import skip_or_fail

    path = shutil.which("gdb")
    if not path:
        skip_or_fail(request.config, "gdb is missing (Debian's gdb, which .ci/run installs)")
    return path


def symbol(elf, name: str) -> int:
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^([0-9a-f]+) \w {re.escape(name)}$", out, re.M)
    assert m, name
    return int(m.group(1), 16)


def gdb_batch(gdb_bin: str, elf, target: str, *commands: str, timeout: float = 120) -> str:
    args = [gdb_bin, "-batch", "-nx", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", f"file {elf}", "-ex", f"target remote {target}"]
    for c in commands:
        args += ["-ex", c]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


def test_break_step_and_detach(vm_factory, probe_elf, tmp_path, gdb_bin):
    sock = tmp_path / "gdb.sock"
    vm: Vm = vm_factory(kernel=probe_elf, cmdline="probe.end=tick", memory_mib=64, gdb=f"unix:{sock}")
    vm.start()
    assert sock.exists(), "the stub listens once the VM is made"
    main = symbol(probe_elf, "probe_main")
    out = gdb_batch(gdb_bin, probe_elf, str(sock),
                    "p/x $pc", "break probe_main", "continue", "p/x $pc", "p/x $rsp", "stepi", "p/x $pc",
                    "x/4xb probe_main", "info threads", "break bench_blk", "break blk_msix", "break fs_probe",
                    "break bad_chain", "continue", "delete", "detach")
    values = re.findall(r"^\$\d+ = (\S+)", out, re.M)
    assert len(values) >= 4, out
    assert int(values[0], 16) == symbol(probe_elf, "_start"), f"the guest waits at its entry point: {out}"
    assert int(values[1], 16) == main, out
    assert int(values[2], 16) != 0, "a stack pointer"
    assert int(values[3], 16) != main, f"stepi moved on: {out}"
    assert re.search(rf"Breakpoint 1, 0x0*{main:x} in probe_main", out), out
    # Memory by virtual address: probe_main's first bytes, as the ELF file holds them.
    image = probe_elf.read_bytes()
    code = image[0x1000 + main - 0x200000:][:4]
    m = re.search(r"<probe_main>:\s+((?:0x[0-9a-f]{2}\s*){4})", out)
    assert m and bytes(int(b, 16) for b in m.group(1).split()) == code, out
    assert re.search(r"\* 1\s+Thread 1", out), out
    # Four debug registers: with probe_main's breakpoint gone and four more asked for, the
    # fifth cannot be inserted, and nothing was written into guest memory for it.
    assert "Cannot insert breakpoint" in out, out
    assert "Detaching from program" in out or "detached" in out.lower(), out
    # Detached: the guest runs on with no breakpoint left.
    vm.expect(r"PROBE: tick 3 ", timeout=60)
    assert not sock.exists(), "the socket goes once a client attached"


def test_ctrl_c_stops_a_running_guest_and_kill_ends_it(vm_factory, probe_elf, tmp_path, gdb_bin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vm: Vm = vm_factory(kernel=probe_elf, cmdline="probe.end=tick", memory_mib=64, gdb=port)
    vm.start()
    gdb = subprocess.Popen([gdb_bin, "-batch", "-nx", "-ex", "set pagination off", "-ex", f"file {probe_elf}",
                            "-ex", f"target remote 127.0.0.1:{port}", "-ex", "continue",
                            "-ex", "p *(unsigned long *)&tick_count",
                            "-ex", "info threads", "-ex", "kill"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        vm.expect(r"PROBE: tick 2 ", timeout=60)
        os.kill(gdb.pid, signal.SIGINT)  # what Ctrl-C does at gdb's prompt
        out, _ = gdb.communicate(timeout=60)
    finally:
        if gdb.poll() is None:
            gdb.kill()
    assert "SIGINT" in out, out
    assert re.search(r"^\$1 = \d+", out, re.M), out
    status = vm.wait(timeout=30)
    assert status is not None and status.reason == "killed", (status, out)


def test_gdb_arguments_are_checked(probe_elf, tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(VmConfigError, match=r'invalid gdb="unix:.*taken": expected a path where a socket can be '
                                            r"made: this one exists"):
        Vm(kernel=probe_elf, gdb=f"unix:{tmp_path / 'taken'}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(VmConfigError, match=rf"invalid gdb={port}: expected a free TCP port: this one is in use"):
            Vm(kernel=probe_elf, gdb=port)
    for bad in ("tcp:1", "0", "70000", "unix:"):
        with pytest.raises(VmConfigError, match=r'expected "unix:PATH" \(a socket to create\) or a TCP port 1 to '
                                                r"65535"):
            Vm(kernel=probe_elf, gdb=bad)
    with pytest.raises(VmConfigError, match="invalid gdb=True"):
        Vm(kernel=probe_elf, gdb=True)  # type: ignore[arg-type]
    # An unstarted VM with a stub leaves no socket behind.
    vm = Vm(kernel=probe_elf, gdb=f"unix:{tmp_path / 's'}")
    assert (tmp_path / "s").exists()
    vm.close()
    del vm
    deadline = time.monotonic() + 5
    while (tmp_path / "s").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / "s").exists()


def test_cli_gdb_option(native_cli, probe_elf, tmp_path, gdb_bin):
    bad = subprocess.run([str(native_cli), "--kernel", f"path={probe_elf}", "--gdb", "nope"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and 'invalid gdb="nope": expected "unix:PATH"' in bad.stderr, bad.stderr
    sock = tmp_path / "cli.gdb"
    vmm = subprocess.Popen([str(native_cli), "--kernel", f"path={probe_elf}", "--gdb",
                            f"unix:{sock}"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert vmm.poll() is None and time.monotonic() < deadline, vmm.communicate()
            time.sleep(0.02)
        out = gdb_batch(gdb_bin, probe_elf, str(sock), "p/x $pc", "detach")
        assert re.search(r"^\$1 = 0x200000$", out, re.M), out
        stdout, _ = vmm.communicate(timeout=60)
    finally:
        if vmm.poll() is None:
            vmm.kill()
    assert vmm.returncode == 0 and "PROBE: done" in stdout, stdout[-2000:]
