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
import signal
import socket
import subprocess
import time

import pytest
from vmm_reference import Vm, VmConfigError


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
                    "x/4xb probe_main", "info threads", "monitor sregs", "monitor nope",
                    "break bench_blk", "break blk_msix", "break fs_probe",
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
    # `monitor sregs`: the probe runs in long mode with paging (CR0.PG, CR4.PAE, EFER.LMA).
    m = re.search(r"vCPU 0: cr0=(0x[0-9a-f]+) .*cr4=(0x[0-9a-f]+) .*efer=(0x[0-9a-f]+)", out)
    assert m, out
    cr0, cr4, efer = (int(v, 16) for v in m.groups())
    assert cr0 & (1 << 31) and cr4 & (1 << 5) and efer & (1 << 10), out
    assert 'unknown monitor command "nope"' in out, out
    # Four debug registers: with probe_main's breakpoint gone and four more asked for, the
    # fifth cannot be inserted, and nothing was written into guest memory for it.
    assert "Cannot insert breakpoint" in out, out
    assert "Detaching from program" in out or "detached" in out.lower(), out
    # Detached: the guest runs on with no breakpoint left.
    vm.expect(r"PROBE: tick 3 ", timeout=60)
    # gdb may attach again: it finds the running guest stopped, and detaching lets it go on.
    again = gdb_batch(gdb_bin, probe_elf, str(sock), "p *(unsigned long *)&tick_count", "detach")
    stopped_at = int(re.findall(r"^\$1 = (\d+)", again, re.M)[0])
    assert stopped_at >= 3, again
    vm.expect(rf"PROBE: tick {stopped_at + 2} ", timeout=60)
    vm.kill()
    vm.wait(timeout=30)
    deadline = time.monotonic() + 5
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sock.exists(), "the socket goes with the VM"


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


def test_a_restored_vm_is_debugged_from_where_it_was_saved(vm_factory, probe_elf, tmp_path, gdb_bin, adopt):
    vm: Vm = vm_factory(kernel=probe_elf, cmdline="probe.end=tick", memory_mib=64)
    vm.start()
    vm.expect(r"PROBE: tick 2 ", timeout=60)
    vm.pause()
    saved = int(re.findall(r"PROBE: tick (\d+) ", vm.console_log)[-1])
    vm.snapshot(tmp_path / "snap")
    vm.kill()
    sock = tmp_path / "restored.gdb"
    restored = Vm.restore(tmp_path / "snap", gdb=f"unix:{sock}")
    adopt([restored])
    restored.resume()  # running, its vCPUs held for gdb
    assert restored.state == "running"
    out = gdb_batch(gdb_bin, probe_elf, str(sock),
                    "p *(unsigned long *)&tick_count", "hbreak put_dec", "continue",
                    "p *(unsigned long *)&tick_count", "delete", "detach")
    counts = [int(v) for v in re.findall(r"^\$\d+ = (\d+)", out, re.M)]
    assert len(counts) == 2, out
    # Held since the restore: the counter is the saved one (the tick being counted, at most
    # one past the last line printed), and the breakpoint stops the guest as it prints the
    # next one (put_dec: the tick loop has puts_ inlined).
    assert saved <= counts[0] <= saved + 1, (saved, out)
    assert re.search(r"Breakpoint 1, 0x[0-9a-f]+ in put_dec", out), out
    assert counts[1] in (counts[0], counts[0] + 1), out
    restored.expect(rf"PROBE: tick {counts[1] + 2} ", timeout=60)
    # A fork of a VM with a stub gets none of its own (the parent's socket is the parent's).
    restored.pause()
    clone = restored.fork(1)[0]
    adopt([clone])
    clone.resume()
    clone.expect(r"PROBE: tick \d+ ", timeout=60)


def _packet(data: bytes) -> bytes:
    return b"$" + data + b"#" + b"%02x" % (sum(data) % 256)


def _unrle(data: bytes) -> bytes:
    """A reply with its run-length encoding (``X*N``: X, then N - 29 more) spelled out."""
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i:i + 1] == b"*" and out and i + 1 < len(data):
            out += out[-1:] * (data[i + 1] - 29)
            i += 2
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


class _Client:
    """A gdb remote-protocol client that says what a hostile one would."""

    def __init__(self, path) -> None:
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(30)
        self.s.connect(str(path))
        self.buf = b""

    def reply(self) -> bytes:
        while True:
            self.buf = self.buf.lstrip(b"+-")
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                data, self.buf = self.buf[start + 1:end], self.buf[end + 3:]
                self.s.sendall(b"+")
                return _unrle(data)
            chunk = self.s.recv(65536)
            assert chunk, "the stub hung up"
            self.buf += chunk

    def ask(self, data: bytes) -> bytes:
        self.s.sendall(_packet(data))
        return self.reply()


def test_a_hostile_gdb_client_neither_crashes_nor_hangs_the_vmm(vm_factory, probe_elf, tmp_path):
    sock = tmp_path / "hostile.gdb"
    vm: Vm = vm_factory(kernel=probe_elf, cmdline="probe.end=tick", memory_mib=64, gdb=f"unix:{sock}")
    vm.start()
    c = _Client(sock)
    assert c.ask(b"?")[:1] in (b"T", b"S")
    # A read of 4 GiB: answered up to the end of guest RAM (64 MiB), streamed.
    big = c.ask(b"m200000,ffffffff")
    assert len(big) == 2 * ((64 << 20) - 0x200000) and b"E" not in big, (len(big), big[-64:])
    tail = c.ask(b"m3fffff0,100")
    assert len(tail) == 32 and b"E" not in tail, f"the 16 bytes before the end of RAM: {tail!r}"
    assert bytes.fromhex(big[:8].decode()) == probe_elf.read_bytes()[0x1000:0x1004], "the kernel's first bytes"
    assert c.ask(b"mffff800000000000,100").startswith(b"E"), "unmapped memory is an error"
    assert c.ask(b"Mffff800000000000,4:00000000").startswith(b"E")
    assert c.ask(b"Z0,ffff800000000000,1") == b"OK", "a breakpoint at an unmapped address costs nothing"
    assert c.ask(b"Z2,200000,3") != b"OK", "an unaligned watchpoint is refused"
    assert c.ask(b"z0,ffff800000000000,1") == b"OK"
    assert c.ask(b"Hg1") == b"OK"
    stop = c.ask(b"vCont;s:1")
    assert stop[:3] in (b"S05", b"T05"), stop
    # Disconnecting in the middle of a step: the stub detaches and the guest runs on.
    c.s.sendall(_packet(b"vCont;s:1"))
    c.s.close()
    vm.expect(r"PROBE: tick 2 ", timeout=60)
    # What is not the protocol (noise, a bad checksum, a NAK) ends that client's session; the
    # guest runs on, and the next client finds the stub serving.
    for noise in (b"garbage\x00\xff", b"$g#00", b"-", b"#zz", b"$" + b"a" * (64 << 20)):
        c = _Client(sock)
        assert c.ask(b"?")[:1] in (b"T", b"S")
        before = _rss_kib()
        try:
            c.s.sendall(noise)
            while len(noise) < 4096 and c.s.recv(65536):
                pass  # until the stub hangs up (the endless packet: until this client does)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up first
        c.s.close()
        assert _rss_kib() - before < 16 << 10, "a 64 MiB packet did not stay in the stub"
        seen = len(re.findall(r"PROBE: tick ", vm.console_log))
        vm.expect(rf"PROBE: tick {seen + 1} ", timeout=60)
    assert vm.state == "running"
    c = _Client(sock)
    assert c.ask(b"?")[:1] in (b"T", b"S"), "still serving"
    c.s.close()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
