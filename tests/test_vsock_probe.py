"""virtio-vsock, driven by the probe guest's own driver (``probe.vsock=...``, tests/guest/probe.c).

The host side is ``Vm(vsock=Vsock(...))``: ``vm.vsock.listen(port)`` takes the guest's
connections to the host (CID 2), ``vm.vsock.connect(port)`` reaches the guest's listeners.
In ``probe.vsock=test`` the probe first connects to the host's port 5000 (says hello, reads a
line back, shuts down) and to 5001 (nobody listens: refused), then serves until a connection
brings ``END``: 1234 echoes every byte + 1, 1237 too but tells its credit only in the headers
of its data, 1235 advertises a 4 KiB window and reads nothing until the host has been quiet
for half a second. Every wait is bounded: the probe reports ``PROBE: vsock timeout <where>``
instead of hanging, and the host side waits on sockets and ``vm.expect`` with timeouts.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from conftest import VsockReport, fnv1a64, parse_blk, parse_vsock
from vmm_reference import Disk, Vm, Vsock

F_VERSION_1 = 1 << 32
NEEDS_RESET, LIVE = 0x40, 0xF
OP_RESPONSE, OP_RST, OP_SHUTDOWN = 2, 3, 4
VSOCK_ID = 19
GUEST_HELLO = b"hello from the guest\n"
PLUS_ONE = bytes((i + 1) & 0xFF for i in range(256))
MIB = 1 << 20


def boot(vm_factory, probe_elf, tmp_path, cmdline: str, cid: int = 3, **kwargs) -> Vm:
    """A probe VM with a vsock device whose host socket is in tmp_path (not started)."""
    return vm_factory(kernel=probe_elf, cmdline=cmdline, vsock=Vsock(cid=cid, uds=str(tmp_path / "v.sock")), **kwargs)


def info(device, name: str):
    return device[name] if isinstance(device, dict) else getattr(device, name)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Up to n bytes: fewer if the peer closed or nothing came for the socket's timeout."""
    parts, got = [], 0
    while got < n:
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except socket.timeout:
            break
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def recv_all(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything until EOF; returns (data, whether EOF came within `timeout` seconds of quiet)."""
    sock.settimeout(timeout)
    parts = []
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return b"".join(parts), True
            parts.append(chunk)
    except (socket.timeout, OSError):
        return b"".join(parts), False


class HostListener:
    """Accepts the guest's connections on a socket from ``vm.vsock.listen`` in a thread; each
    one goes to ``handler(conn)`` in a thread of its own, whose return value (or exception)
    lands in ``results`` (``errors``)."""

    def __init__(self, sock: socket.socket, handler=None, timeout: float = 60.0) -> None:
        self.sock, self.handler, self.timeout = sock, handler, timeout
        self.conns: list[socket.socket] = []
        self.results: list = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._run, daemon=True)
        self._accepter.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(self.timeout)
            self.conns.append(conn)
            if self.handler is not None:
                t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
                t.start()
                self._threads.append(t)

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.results.append(self.handler(conn))
        except BaseException as e:  # reported by the test
            self.errors.append(e)

    def join(self, timeout: float = 30.0) -> None:
        """Stops accepting and waits for the handlers."""
        self._stop.set()
        self._accepter.join(timeout)
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive(), "a host-side handler is still running"

    def close(self) -> None:
        self._stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def listeners():
    made: list[HostListener] = []

    def make(sock, handler=None, timeout=60.0) -> HostListener:
        made.append(HostListener(sock, handler, timeout))
        return made[-1]

    yield make
    for lst in made:
        lst.close()


def hello_handler(reply: bytes):
    """The host's end of the probe's outgoing connection: a line in, `reply` out, then the
    end of the stream (the guest's SHUTDOWN makes the VMM close the socket)."""

    def handle(conn: socket.socket):
        line = b""
        while not line.endswith(b"\n") and len(line) < 4096:
            chunk = conn.recv(4096)
            if not chunk:
                break
            line += chunk
        conn.sendall(reply)
        rest, eof = recv_all(conn, 30)
        return line, rest, eof

    return handle


def expect_line(vm: Vm, kind: str, timeout: float = 60) -> dict:
    """Waits for the next ``PROBE: vsock <kind> ...`` line; its values."""
    m = vm.expect(rf"PROBE: vsock {kind} ([^\r\n]*)\r?\n", timeout=timeout, fail=r"PROBE: vsock timeout")
    value = getattr(parse_vsock(f"PROBE: vsock {kind} {m.group(1)}\n"), kind)
    return value[0] if isinstance(value, list) else value


def start_serving(vm: Vm) -> None:
    vm.start()
    vm.expect(r"PROBE: vsock listening port=1234\r?\n", timeout=60, fail=r"PROBE: vsock (timeout|failed)")


def finish(vm: Vm) -> VsockReport:
    """Sends END on a new connection; the probe reports done and resets the VM."""
    with vm.vsock.connect(1234, timeout=10) as s:
        s.sendall(b"END\n")
        vm.expect(r"PROBE: vsock done", timeout=60)
    status = vm.wait(timeout=60)
    log = vm.console_log
    assert status.reason == "reset", log
    report = parse_vsock(log)
    assert report.timeouts == [], log
    assert report.stats is not None and report.stats["errors"] == 0, log
    return report


def echo(vm: Vm, data: bytes, port: int = 1234, timeout: float = 120) -> bytes:
    """Sends `data` to the guest's echo port while reading the echo; returns the echo."""
    with vm.vsock.connect(port, timeout=10) as s:
        return echo_on(s, data, timeout)


def echo_on(s: socket.socket, data: bytes, timeout: float = 120) -> bytes:
    s.settimeout(timeout)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            s.sendall(data)
        except BaseException as e:
            errors.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    got = recv_exactly(s, len(data))
    if len(got) == len(data):
        sender.join(timeout)
        assert not errors, errors
    return got


def check_echo_line(line: dict, data: bytes, port: int = 1234) -> None:
    assert line["port"] == port, line
    assert (line["bytes"], line["fnv"]) == (len(data), fnv1a64(data)), line
    # The host's SHUTDOWN (both directions) closed it, every byte was echoed.
    assert (line["end"], line["flags"], line["unsent"], line["dropped"]) == (OP_SHUTDOWN, 3, 0, 0), line
    # The device never sent more than the guest's 64 KiB window.
    assert line["max_over"] == 0, line


# ---- The device as the guest finds it ------------------------------------------------------


@pytest.mark.parametrize("disks, cid", [(0, 3), (1, 3), (2, 0xFFFFFFF0)], ids=["alone", "one-disk", "two-disks"])
def test_vsock_is_listed_after_the_disks(vm_factory, probe_elf, tmp_path, disks, cid):
    images = []
    for i in range(disks):
        images.append(tmp_path / f"d{i}.img")
        images[-1].write_bytes(os.urandom(64 * 1024))
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.blk=list probe.vsock=info", cid=cid,
              disks=[Disk(p, read_only=True) for p in images])
    vm.start()
    status = vm.wait(timeout=60)
    log = vm.console_log
    assert status.reason == "reset", log
    devices = vm.boot_info.devices
    assert [info(d, "kind") for d in devices] == ["virtio-blk"] * disks + ["virtio-vsock"]
    listed = parse_blk(log)
    assert listed.source == "dsdt" and listed.count == disks + 1, log
    for found, dev in zip(listed.virtio, devices):
        assert (found["base"], found["len"], found["gsi"]) == (
            info(dev, "mmio_base"), info(dev, "mmio_len"), info(dev, "gsi")), log
    assert [v["device_id"] for v in listed.virtio] == [2] * disks + [VSOCK_ID]
    assert listed.virtio[-1]["version"] == 2
    vsock = devices[-1]
    assert len({info(d, "mmio_base") for d in devices}) == len(devices)
    assert len({info(d, "gsi") for d in devices}) == len(devices)

    dev = parse_vsock(log).dev
    assert dev is not None, log
    assert (dev["dev"], dev["base"], dev["gsi"]) == (disks, info(vsock, "mmio_base"), info(vsock, "gsi"))
    assert dev["cid"] == cid == vm.vsock.cid
    assert dev["features"] & F_VERSION_1 and dev["driver_features"] == F_VERSION_1
    assert dev["queue_num_max"] == 256 and dev["queues"] == "128,128,8"


def test_without_acpi_the_command_line_names_the_vsock(vm_factory, probe_elf, tmp_path):
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.vsock=info", acpi=False)
    vm.start()
    status = vm.wait(timeout=60)
    log = vm.console_log
    assert status.reason == "reset", log
    [dev] = vm.boot_info.devices
    assert f"virtio_mmio.device=4K@{info(dev, 'mmio_base'):#x}:{info(dev, 'gsi')}" in vm.boot_info.cmdline
    found = parse_vsock(log).dev
    assert found is not None and found["source"] == "cmdline", log
    assert (found["base"], found["gsi"], found["cid"]) == (info(dev, "mmio_base"), info(dev, "gsi"), 3)


# ---- probe.vsock=test ------------------------------------------------------------------------


def test_guest_connects_to_the_host_and_is_refused_where_nobody_listens(vm_factory, probe_elf, tmp_path, listeners):
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.vsock=test")
    reply = f"hello from the host {os.getpid()}\n".encode()
    host = listeners(vm.vsock.listen(5000), hello_handler(reply))
    start_serving(vm)
    host.join()
    assert not host.errors, host.errors
    [(line, rest, eof)] = host.results
    assert line == GUEST_HELLO
    # The guest's SHUTDOWN closed the host's socket, with nothing more after the hello.
    assert (rest, eof) == (b"", True)

    # Nothing listens on the guest's 4321: the guest answers RST, the host sees a refusal.
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        vm.vsock.connect(4321, timeout=10)
    assert time.monotonic() - t0 < 10

    report = finish(vm)
    out = report.out
    assert (out["port"], out["response"], out["got"]) == (5000, OP_RESPONSE, reply.decode().strip()), out
    assert out["end"] in (OP_RST, OP_SHUTDOWN), out  # the host's answer to the guest's SHUTDOWN
    # 5001 has no host listener: the device refuses the guest with RST.
    assert report.refused == {"port": 5001, "op": OP_RST}
    assert report.dev["cid"] == 3 and report.listening == [1234]


def test_echo_over_sequential_connections(vm_factory, probe_elf, tmp_path):
    """Payloads of 1 byte, 4 KiB and 1 MiB, one connection each, one after the other."""
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.vsock=test")
    start_serving(vm)
    for size in (1, 4096, MIB):
        data = os.urandom(size)
        got = echo(vm, data)
        assert len(got) == size and got == data.translate(PLUS_ONE), size
        line = expect_line(vm, "echo")
        check_echo_line(line, data)
        if size == MIB:
            # 1 MiB through a 64 KiB window: the guest told its credit as it consumed.
            assert line["updates"] >= 1, line
    report = finish(vm)
    assert len({e["peer"] for e in report.echo}) == 3  # a host port per connection


def test_four_concurrent_connections_keep_their_data_apart(vm_factory, probe_elf, tmp_path):
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.vsock=test")
    start_serving(vm)
    payloads = [bytes([i]) * 1000 + os.urandom(64 * 1024 + 1000 * i) for i in range(4)]
    socks = [vm.vsock.connect(1234, timeout=10) for _ in payloads]  # all four open at once
    results: list = [None] * 4

    def run(i: int) -> None:
        try:
            results[i] = echo_on(socks[i], payloads[i])
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for s in socks:
        s.close()
    for i, data in enumerate(payloads):
        assert isinstance(results[i], bytes), results[i]
        assert results[i] == data.translate(PLUS_ONE), i
    lines = [expect_line(vm, "echo") for _ in payloads]
    by_fnv = {line["fnv"]: line for line in lines}
    for data in payloads:
        check_echo_line(by_fnv[fnv1a64(data)], data)
    assert len({line["peer"] for line in lines}) == 4
    finish(vm)


def test_guest_credit_holds_the_host_back(vm_factory, probe_elf, tmp_path):
    """The guest's port 1235 advertises 4 KiB and consumes nothing until the host has been
    quiet for half a second: the device must stop at the window, then go on with the
    guest's CREDIT_UPDATEs, and deliver everything before the end of the stream."""
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.vsock=test")
    start_serving(vm)
    data = os.urandom(MIB)
    errors: list[BaseException] = []
    s = vm.vsock.connect(1235, timeout=10)
    s.settimeout(120)

    def send() -> None:
        try:
            s.sendall(data)
            s.close()
        except BaseException as e:
            errors.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    line = expect_line(vm, "credit", timeout=180)
    sender.join(60)
    assert not errors, errors
    assert line["port"] == 1235
    assert line["max_over"] == 0, line  # never beyond the guest's window
    assert (line["bytes"], line["fnv"]) == (MIB, fnv1a64(data)), line
    assert (line["end"], line["flags"]) == (OP_SHUTDOWN, 3), line
    assert line["updates"] >= MIB // 4096 // 2, line  # it really went through the window
    finish(vm)


def test_credit_told_only_in_data_headers_is_enough(vm_factory, probe_elf, tmp_path):
    """Port 1237 echoes like 1234 but never sends CREDIT_UPDATE: its fwd_cnt travels in the
    headers of its RW replies, which virtio 1.2 (5.10.6.3) says every packet carries. 256 KiB
    through its 64 KiB window only get through if the device reads credit from them."""
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.vsock=test")
    start_serving(vm)
    data = os.urandom(256 * 1024)
    with vm.vsock.connect(1237, timeout=10) as s:
        got = echo_on(s, data, timeout=20)  # a device that missed the credit stalls for good
    assert got == data.translate(PLUS_ONE), f"{len(got)} of {len(data)} bytes echoed"
    line = expect_line(vm, "echo")
    check_echo_line(line, data, port=1237)
    assert line["updates"] == 0
    finish(vm)


# ---- probe.vsock=bad -------------------------------------------------------------------------

# Packets the device must drop or refuse (RST), never act on: any of them reaching the host's
# listener on 5000 would show there as an extra connection.
BAD_DROP_OR_RST = ["src_cid", "dst_cid", "unknown_op", "bad_type", "short_desc", "rw_no_conn", "writable_desc"]
# Not from this guest (src_cid 99) or not to the host (dst_cid 7): nothing to answer.
BAD_DROPPED = ["src_cid", "dst_cid"]


def test_hostile_packets_do_not_hurt_the_vmm(vm_factory, probe_elf, tmp_path, listeners):
    vm = boot(vm_factory, probe_elf, tmp_path, "probe.vsock=bad")
    survivor = listeners(vm.vsock.listen(5000), hello_handler(b"still here\n"))
    sink = listeners(vm.vsock.listen(5004))  # takes connections and reads nothing
    vm.start()
    status = vm.wait(timeout=180)
    log = vm.console_log
    assert status.reason == "reset", log
    report = parse_vsock(log)
    assert report.reinit == [] and report.failed is None, log
    assert report.survived is not None, log

    for name, case in report.bad.items():
        if name != "small_rx":
            assert case["used"] == 1, (name, case)  # the device gave every chain back
        assert not case["dev_status"] & NEEDS_RESET, (name, case)
    for name in BAD_DROP_OR_RST:
        assert report.bad[name]["reply"] in (0, OP_RST), (name, report.bad[name])
    for name in BAD_DROPPED:
        assert report.bad[name]["replies"] == 0, (name, report.bad[name])

    # A well-formed REQUEST whose header is split over three descriptors is read like any other.
    assert report.bad["split3"]["reply"] == OP_RST, report.bad["split3"]
    # 200 REQUESTs to host ports nobody listens on: 200 RSTs.
    assert (report.bad["request_flood"]["sent"], report.bad["request_flood"]["rst"]) == (200, 200)
    # rx buffers too small for a header: nothing written past them.
    assert report.bad["small_rx"]["over"] == 0 and report.bad["small_rx"]["too_long"] == 0, report.bad["small_rx"]

    # On the host's 5004: the RW whose len went past its descriptor never leaked what followed
    # it in guest memory; the guest that sent beyond the device's window was reset (or its
    # excess dropped): what reached the host stays within the window.
    too_big, over = report.bad["len_too_big"], report.bad["over_credit"]
    assert too_big["connect"] == OP_RESPONSE and over["connect"] == OP_RESPONSE, (too_big, over)
    assert too_big["reply"] in (0, OP_RST), too_big
    assert over["sent"] > over["window"], over
    received = [recv_all(c, 2)[0] for c in sink.conns]
    assert len(received) == 2, len(received)
    assert all(b"SECRET" not in r for r in received)
    assert over["rst"] >= 1 or len(received[1]) < over["sent"], (over, len(received[1]))

    # After all that, a proper connection to the host's 5000 works both ways, and it is the
    # only one that reached that listener.
    survivor.join()
    assert not survivor.errors, survivor.errors
    assert [r[0] for r in survivor.results] == [GUEST_HELLO], log
    assert report.survived == {"out": "ok", "dev_status": LIVE}, log
    assert report.out is not None and report.out["got"] == "still here", log


# ---- probe.bench=vsockrx|vsocktx ---------------------------------------------------------------


def test_vsock_bench_guest_to_host(vm_factory, probe_elf, tmp_path, listeners):
    n = 4 * MIB + 1000
    vm = boot(vm_factory, probe_elf, tmp_path, f"probe.bench=vsocktx probe.n={n}")
    host = listeners(vm.vsock.listen(5002), lambda conn: recv_all(conn, 60))
    vm.start()
    status = vm.wait(timeout=180)
    log = vm.console_log
    assert status.reason == "reset", log
    bench = parse_vsock(log).bench
    assert bench is not None and bench["failed"] is None, log
    assert (bench["n"], bench["bytes"], bench["errors"], bench["end"]) == (n, n, 0, OP_RST), bench
    assert bench["tsc"] > 0 and bench["packets"] >= n // 4096
    host.join()
    assert not host.errors, host.errors
    [(data, eof)] = host.results
    assert eof and len(data) == n
    assert data == (bytes(range(256)) * (n // 256 + 1))[:n]


def test_vsock_bench_host_to_guest(vm_factory, probe_elf, tmp_path):
    n = 4 * MIB
    vm = boot(vm_factory, probe_elf, tmp_path, f"probe.bench=vsockrx probe.n={n}")
    vm.start()
    vm.expect(r"PROBE: vsock listening port=1236", timeout=60)
    with vm.vsock.connect(1236, timeout=10) as s:
        s.settimeout(120)
        s.sendall(os.urandom(n))
        m = vm.expect(r"PROBE: bench vsockrx ([^\r\n]*)\r?\n", timeout=120)
    status = vm.wait(timeout=60)
    log = vm.console_log
    assert status.reason == "reset", log
    bench = parse_vsock(f"PROBE: bench vsockrx {m.group(1)}").bench
    assert bench["failed"] is None, log
    assert (bench["n"], bench["bytes"], bench["errors"]) == (n, n, 0), bench
    assert bench["tsc"] > 0


def test_guest_shutdown_keeps_what_the_host_has_not_read_yet(vm_factory, probe_elf, tmp_path, listeners):
    """The guest sends 256 KiB (the device's window: no credit needed) to a host program that
    reads nothing until the guest has shut the connection down (SHUTDOWN once the device used
    every packet, as Linux's close() does): the device must still hand over every byte, then
    end the stream. The device stays live meanwhile (probe.keep=1, then the probe halts)."""
    n = 256 * 1024
    vm = boot(vm_factory, probe_elf, tmp_path, f"probe.bench=vsocktx probe.n={n} probe.keep=1 probe.end=halt")
    host = listeners(vm.vsock.listen(5002))
    vm.start()
    # The probe says so once the device took its SHUTDOWN: only now does the host program read.
    vm.expect(r"PROBE: vsock shutdown sent port=5002", timeout=120, fail=r"PROBE: vsock timeout")
    host.join()
    [conn] = host.conns
    data, eof = recv_all(conn, 30)
    assert len(data) == n, f"the host program got {len(data)} of the {n} bytes the device took"
    assert data == (bytes(range(256)) * (n // 256))
    assert eof  # then the end of the stream
    # The device answered the SHUTDOWN with RST (the guest waits up to 60 s for it).
    m = vm.expect(r"PROBE: bench vsocktx ([^\r\n]*)\r?\n", timeout=90)
    bench = parse_vsock(f"PROBE: bench vsocktx {m.group(1)}").bench
    assert bench["failed"] is None and bench["bytes"] == n and bench["end"] == OP_RST, m.group(0)
    vm.expect(r"PROBE: halting", timeout=30)
    assert parse_vsock(vm.console_log).timeouts == [], vm.console_log


def test_device_reset_after_close_keeps_what_the_host_has_not_read_yet(vm_factory, probe_elf, tmp_path, listeners):
    """As above, but the guest resets the device as soon as its close completed (as a Linux
    guest that closes and then reboots or unloads the driver does): what the device already
    took from the guest, and acknowledged by completing the close, still reaches the host
    program, which only starts reading after the reset."""
    n = 256 * 1024
    vm = boot(vm_factory, probe_elf, tmp_path, f"probe.bench=vsocktx probe.n={n} probe.end=halt")
    host = listeners(vm.vsock.listen(5002))
    vm.start()
    m = vm.expect(r"PROBE: bench vsocktx ([^\r\n]*)\r?\n", timeout=120, fail=r"PROBE: vsock timeout")
    bench = parse_vsock(f"PROBE: bench vsocktx {m.group(1)}").bench
    assert bench["failed"] is None and bench["bytes"] == n and bench["end"] == OP_RST, m.group(0)
    vm.expect(r"PROBE: vsock device reset", timeout=30)
    host.join()
    [conn] = host.conns
    data, eof = recv_all(conn, 30)
    assert len(data) == n, f"the host program got {len(data)} of the {n} bytes the device took"
    assert data == (bytes(range(256)) * (n // 256))
    assert eof
