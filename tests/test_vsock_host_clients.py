"""Hostile host programs on a VM's vsock socket: none may make the VMM spin, hang or grow.

The VM is the probe guest halted with a vsock device; what is measured is the CPU time of
the VM's own event-loop thread (``/proc/self/task/<tid>/stat``), which does nothing while no
one talks to it.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from vmm_reference import Vm, Vsock

# The device's limit for a CONNECT line (src/devices/virtio/vsock/mod.rs, CONNECT_TIMEOUT).
CONNECT_TIMEOUT = 3.0


def stat_cpu(stat: str) -> float:
    """CPU seconds (user + system) in a ``/proc/.../stat`` line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def event_loop_cpu() -> float:
    """CPU seconds this process's VMM event-loop threads used so far."""
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "vmm-event-loop":
                continue
            total += stat_cpu((task / "stat").read_text())
        except OSError:
            continue
    return total


def idle_vm(vm_factory, probe_elf, tmp_path) -> Vm:
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt", memory_mib=64,
                    vsock=Vsock(uds=str(tmp_path / "v.sock")))
    vm.start()
    vm.expect("PROBE: halting", timeout=60)
    return vm


def dropped(sock: socket.socket) -> bool:
    """Whether the VMM closed this connection (EOF, or a reset when our bytes were unread)."""
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def cpu_over(seconds: float) -> float:
    before = event_loop_cpu()
    time.sleep(seconds)
    return event_loop_cpu() - before


def test_a_partial_connect_line_neither_spins_nor_stays(vm_factory, probe_elf, tmp_path):
    """Sending ``CONNECT 5`` without its newline used to spin the event loop at 100% for ever
    (the line was peeked at on a level-triggered socket), even after the client closed."""
    vm = idle_vm(vm_factory, probe_elf, tmp_path)
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(vm.vsock.uds)
    silent.sendall(b"CONNECT 5")
    closed = socket.socket(socket.AF_UNIX)
    closed.connect(vm.vsock.uds)
    closed.sendall(b"CONNECT 5")
    closed.close()
    used = cpu_over(1.0)
    assert used < 0.2, f"the event loop used {used:.2f} s of CPU in 1 s with two half-finished handshakes"
    # The silent client is dropped once its time is up (the socket then reads EOF).
    silent.settimeout(CONNECT_TIMEOUT + 30)
    t0 = time.monotonic()
    assert dropped(silent)
    waited = time.monotonic() - t0
    assert CONNECT_TIMEOUT - 1.5 < waited < CONNECT_TIMEOUT + 30, waited
    silent.close()
    assert cpu_over(0.5) < 0.1


def test_a_line_sent_a_byte_at_a_time_is_still_understood(vm_factory, probe_elf, tmp_path):
    """A slow client's line arrives in pieces: it is assembled, not refused or spun on. (No guest
    listens on the port: the answer is the connection closing, after the device asked the guest.)"""
    vm = idle_vm(vm_factory, probe_elf, tmp_path)
    s = socket.socket(socket.AF_UNIX)
    s.connect(vm.vsock.uds)
    for b in b"CONNECT 1234":
        s.sendall(bytes([b]))
        time.sleep(0.02)
    assert cpu_over(0.5) < 0.1
    s.sendall(b"\n")
    s.settimeout(2)  # a refused line is dropped at once; an accepted one waits for the guest
    # The guest (halted) never answers the request: the connection stays open, not dropped
    # for a bad line, and does not spin.
    try:
        data = s.recv(16)
    except socket.timeout:
        data = None
    assert data is None, "a whole CONNECT line must not be dropped"
    s.close()


def test_an_overlong_connect_line_is_dropped(vm_factory, probe_elf, tmp_path):
    vm = idle_vm(vm_factory, probe_elf, tmp_path)
    s = socket.socket(socket.AF_UNIX)
    s.connect(vm.vsock.uds)
    s.sendall(b"CONNECT " + b"9" * 100)
    s.settimeout(30)
    assert dropped(s)
    assert cpu_over(0.5) < 0.1


_FD_CHILD = inspect.getsource(stat_cpu) + textwrap.dedent(r"""
    import json, os, resource, socket, sys, time
    from vmm_reference import Vm, Vsock

    probe, uds = sys.argv[1], sys.argv[2]

    def loop_stat_fd():
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == "vmm-event-loop":
                    return os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY)
        raise AssertionError("no event loop thread")

    def cpu(fd):
        # Read through a descriptor opened beforehand: the process may be out of them.
        return stat_cpu(os.pread(fd, 4096, 0).decode())

    vm = Vm(memory_mib=64, kernel=probe, cmdline="probe.end=halt", vsock=Vsock(uds=uds))
    vm.start()
    vm.expect("PROBE: halting", timeout=60)
    stat_fd = loop_stat_fd()

    def count_open(clients):
        n = 0
        for c in clients:
            c.setblocking(False)
            try:
                n += c.recv(1) != b""
            except BlockingIOError:
                n += 1
            except OSError:
                pass
        return n

    # 1. Many clients: the device keeps at most a quarter of the descriptor limit's connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    clients = []
    for _ in range(min(300, soft // 2)):
        c = socket.socket(socket.AF_UNIX)
        c.connect(uds)
        try:
            c.sendall(b"CONNECT 1234\n")  # then waits for the (halted) guest: the connection stays
        except (BrokenPipeError, ConnectionResetError):
            pass  # beyond the cap: the VMM already closed it
        clients.append(c)
    cap = soft // 4
    deadline = time.monotonic() + 60
    while count_open(clients) > cap and time.monotonic() < deadline:
        time.sleep(0.05)
    # 2. Out of descriptors: accept() fails with EMFILE; the listener must not be spun on.
    fillers = []
    try:
        while True:
            fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    pending = []
    for _ in range(4):
        try:
            os.close(fillers.pop())
            c = socket.socket(socket.AF_UNIX)
            c.connect(uds)
            pending.append(c)
            fillers.append(os.open("/dev/null", os.O_RDONLY))  # take the descriptor back
        except OSError:
            break
    before = cpu(stat_fd)
    time.sleep(1.0)
    spent = cpu(stat_fd) - before
    for fd in fillers:
        os.close(fd)
    # 3. With descriptors back, the listener serves again: an overlong line is dropped.
    probe_client = socket.socket(socket.AF_UNIX)
    probe_client.connect(uds)
    probe_client.sendall(b"x" * 100)
    probe_client.settimeout(30)
    try:
        served = probe_client.recv(16) == b""
    except ConnectionResetError:
        served = True
    open_clients = count_open(clients)
    print(json.dumps(dict(spent=spent, served=served, open_clients=open_clients, soft=soft,
                          pending=len(pending))), flush=True)
    vm.kill()
""")


def test_running_out_of_descriptors_neither_spins_nor_starves_the_process(probe_elf, tmp_path):
    """accept() failing with EMFILE left the listener readable and spun the loop; and the guest's
    connections alone could use up the process's descriptors. In a child with a 256 limit."""
    script = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n{_FD_CHILD}"
    r = subprocess.run([sys.executable, "-c", script, str(probe_elf), str(tmp_path / "v.sock")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["spent"] < 0.3, out
    assert out["served"], out
    assert out["open_clients"] == out["soft"] // 4, out
