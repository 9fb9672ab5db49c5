"""virtio-vsock with the Debian guest (its own AF_VSOCK stack), where KVM is hardware-backed
(the nested-KVM lab on PVM hosts).

A tiny static C program built on the host (``vsockecho``) is copied into the guest through the
guest agent: as a server it echoes every connection to its port (a forked child each); as a
client it connects to the host (CID 2), sends its stdin, half-closes and prints the reply.
The host side is ``vm.vsock``: ``connect(port)`` reaches the guest's listeners, ``listen(port)``
takes the guest's connections. Every wait is bounded by a timeout.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

pytestmark = pytest.mark.full_boot

MIB = 1 << 20
ECHO_PORT = 1234
CHUNK = 64 * 1024

VSOCKECHO = r"""
/* vsockecho: an AF_VSOCK echo server and client, static, for the full-boot tests.
 *
 *   vsockecho server PORT      listen on PORT (any CID); once listening, go to the background
 *                              (the command returns 0) and echo every connection, one forked
 *                              child each, until the peer's end of stream.
 *   vsockecho client CID PORT  connect to CID:PORT, send stdin, then shut down the sending
 *                              side and copy what comes back to stdout until end of stream.
 *                              A failed connect exits 3 with "connect: <strerror> (errno N)".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void echo(int fd) {
    static char buf[64 * 1024];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (write_all(fd, buf, (size_t)n) < 0) break;
    }
    close(fd);
}

static int server(unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 2; }
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); return 2; }
    if (listen(s, 128) < 0) { perror("listen"); return 2; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid > 0) {
        printf("listening on port %u, pid %d\n", port, (int)pid);
        return 0;
    }
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0); dup2(null, 1); dup2(null, 2);
        if (null > 2) close(null);
    }
    signal(SIGCHLD, SIG_IGN); /* no zombies */
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return 2;
        }
        pid_t child = fork();
        if (child == 0) {
            close(s);
            echo(c);
            _exit(0);
        }
        close(c);
    }
}

static int client(unsigned cid, unsigned port) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 2; }
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int e = errno;
        fprintf(stderr, "connect: %s (errno %d)\n", strerror(e), e);
        return 3;
    }
    static char buf[64 * 1024];
    int in_open = 1;
    unsigned long long sent = 0, got = 0;
    struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    for (;;) {
        fds[0].fd = in_open ? 0 : -1;
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            perror("poll");
            return 2;
        }
        if (in_open && fds[0].revents) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) { perror("read stdin"); return 2; }
            if (n == 0) {
                in_open = 0;
                if (shutdown(s, SHUT_WR) < 0) { perror("shutdown"); return 2; }
            } else {
                if (write_all(s, buf, (size_t)n) < 0) { perror("send"); return 2; }
                sent += (unsigned long long)n;
            }
        }
        if (fds[1].revents) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) { perror("recv"); return 2; }
            if (n == 0) break;
            if (write_all(1, buf, (size_t)n) < 0) { perror("write stdout"); return 2; }
            got += (unsigned long long)n;
        }
    }
    fprintf(stderr, "sent=%llu got=%llu\n", sent, got);
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && strcmp(argv[1], "server") == 0) return server((unsigned)strtoul(argv[2], NULL, 0));
    if (argc == 4 && strcmp(argv[1], "client") == 0)
        return client((unsigned)strtoul(argv[2], NULL, 0), (unsigned)strtoul(argv[3], NULL, 0));
    fprintf(stderr, "usage: vsockecho server PORT | vsockecho client CID PORT\n");
    return 64;
}
"""


@pytest.fixture(scope="module")
def vsockecho(tmp_path_factory, request):
    """The echo server/client, built static on the host (the guest's userland is busybox, no libc)."""
    from vmm_reference.pytest_plugin import skip_or_fail

    if not shutil.which("gcc"):
        skip_or_fail(request.config, "needs gcc (Debian: gcc libc6-dev)")
    where = tmp_path_factory.mktemp("vsockecho")
    source = where / "vsockecho.c"
    source.write_text(VSOCKECHO)
    binary = where / "vsockecho"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source)], check=True,
                   timeout=300)
    return binary


@pytest.fixture
def echo_vm(vm_factory, guest_assets, vsockecho):
    """The Debian guest with a vsock device, vsockecho in /tmp and its server on ECHO_PORT."""
    vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                    cmdline="reboot=k panic=-1 quiet", vsock=True)
    vm.start()
    vm.wait_ready(timeout=120)
    vm.copy_to(vsockecho, "/tmp/vsockecho", timeout=120)
    # The server forks into the background once it listens: when this returns, it does.
    r = vm.run(["/tmp/vsockecho", "server", str(ECHO_PORT)], timeout=60, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"listening on port {ECHO_PORT}"), r
    return vm


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Up to n bytes: fewer if the peer closed first."""
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, MIB))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def echo_round_trip(sock: socket.socket, size: int, timeout: float) -> tuple[str, str, int]:
    """Send ``size`` random bytes while reading the echo; return (sent sha256, echoed sha256, echoed bytes).

    The data is made and hashed chunk by chunk, so this process holds no more than a chunk or
    two per connection. The sender runs in its own thread: the echo flows back while the
    rest is still going out (the device's and the guest's windows are smaller than ``size``).
    """
    sock.settimeout(timeout)
    sent = hashlib.sha256()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            left = size
            while left:
                chunk = os.urandom(min(CHUNK, left))
                sent.update(chunk)
                sock.sendall(chunk)
                left -= len(chunk)
        except BaseException as e:
            errors.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    echoed, got = hashlib.sha256(), 0
    while got < size:
        chunk = sock.recv(min(size - got, CHUNK))  # socket.timeout if the echo stalls
        if not chunk:
            break
        echoed.update(chunk)
        got += len(chunk)
    sender.join(timeout)
    assert not sender.is_alive(), "the sender is still blocked"
    assert not errors, errors
    return sent.hexdigest(), echoed.hexdigest(), got


def echo_round(vm, connections: int, size: int, rss_peak: list[int]) -> float:
    """Open ``connections`` echo connections at once, echo ``size`` random bytes on each in
    parallel threads, check every echo; return the seconds it took. ``rss_peak[0]`` follows the
    process's peak RSS (sampled twice a second)."""
    # All of them are open before any data moves: the guest serves them in parallel.
    socks = [vm.vsock.connect(ECHO_PORT, timeout=30) for _ in range(connections)]
    results: list[object] = [None] * connections
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.5):
            rss_peak[0] = max(rss_peak[0], vm.stats()["rss_bytes"])

    def run(i: int) -> None:
        try:
            results[i] = echo_round_trip(socks[i], size, timeout=300)
        except BaseException as e:
            results[i] = e

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(connections)]
    try:
        for t in threads:
            t.start()
        deadline = started + 600
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        elapsed = time.monotonic() - started
        done.set()
        sampler.join(10)
        for s in socks:
            s.close()
    rss_peak[0] = max(rss_peak[0], vm.stats()["rss_bytes"])
    assert not any(t.is_alive() for t in threads), [i for i, t in enumerate(threads) if t.is_alive()]
    failures = {i: r for i, r in enumerate(results) if not isinstance(r, tuple)}
    assert not failures, failures
    for i, (sent, echoed, got) in enumerate(results):  # type: ignore[misc]
        assert (got, echoed) == (size, sent), f"connection {i}: {got} bytes echoed"
    assert len({r[0] for r in results}) == connections  # type: ignore[index]  # distinct data
    return elapsed


def test_fifty_parallel_host_connections_each_echo_1_mib(echo_vm):
    vm = echo_vm
    connections, size = 50, MIB
    rss_before = vm.stats()["rss_bytes"]
    rss_peak = [rss_before]
    # Two rounds: 100 connections, 100 MiB each way in all.
    for round_ in (1, 2):
        elapsed = echo_round(vm, connections, size, rss_peak)
        print(f"round {round_}: {connections} x {size} B echoed in {elapsed:.1f} s "
              f"({2 * connections * size / elapsed / MIB:.1f} MiB/s both ways); RSS {rss_before / MIB:.1f} -> "
              f"peak {rss_peak[0] / MIB:.1f} -> now {vm.stats()['rss_bytes'] / MIB:.1f} MiB")
    # The VMM's buffers are bounded per connection: a hundred megabytes each way do not pile up.
    # (The growth includes guest RAM the guest touches for the first time: it is mapped in this process.)
    assert rss_peak[0] - rss_before < 64 * MIB, (rss_before, rss_peak[0])
    # The device and the server go on: a new connection still echoes.
    with vm.vsock.connect(ECHO_PORT, timeout=30) as s:
        sent, echoed, got = echo_round_trip(s, 4096, timeout=60)
    assert (got, echoed) == (4096, sent)


def test_the_guest_connects_to_a_host_listener(echo_vm):
    """Guest -> host: the guest's client reaches ``vm.vsock.listen(5000)``, sends 4 MiB, half-closes,
    then reads the host's reply."""
    vm = echo_vm
    data = os.urandom(4 * MIB)
    tail = os.urandom(256 * 1024)
    host: dict[str, object] = {}
    listener = vm.vsock.listen(5000)
    listener.settimeout(120)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(300)
                h, n = hashlib.sha256(), 0
                while chunk := conn.recv(CHUNK):  # until the guest's shutdown(SHUT_WR)
                    h.update(chunk)
                    n += len(chunk)
                host.update(sha256=h.hexdigest(), bytes=n)
                conn.sendall(f"got {n} {h.hexdigest()}\n".encode() + tail)
        except BaseException as e:
            host["error"] = e

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    started = time.monotonic()
    try:
        r = vm.run(["/tmp/vsockecho", "client", "2", "5000"], input=data, timeout=300)
        print(f"guest -> host: {len(data)} B and the reply in {time.monotonic() - started:.1f} s")
    finally:
        server.join(60)
        listener.close()
    assert not server.is_alive()
    assert "error" not in host, host
    digest = hashlib.sha256(data).hexdigest()
    assert (host["bytes"], host["sha256"]) == (len(data), digest)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"got {len(data)} {digest}\n".encode() + tail  # the reply after the half-close
    assert r.stderr.decode().strip() == f"sent={len(data)} got={len(r.stdout)}"


def test_refused_ports_both_ways(echo_vm):
    vm = echo_vm
    # Guest -> host: nobody listens on the host's port 5001, so the device resets the request.
    r = vm.run(["/tmp/vsockecho", "client", "2", "5001"], timeout=60, text=True)
    assert r.returncode == 3, r
    assert re.fullmatch(r"connect: (Connection reset by peer|Connection refused) \(errno \d+\)\n", r.stderr), r
    # Host -> guest: nothing listens on the guest's port 4321.
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        vm.vsock.connect(4321, timeout=30)
    assert time.monotonic() - started < 20  # refused at once, not timed out
    # Both ends go on working: the echo server answers, the guest reaches a host listener.
    with vm.vsock.connect(ECHO_PORT, timeout=30) as s:
        s.settimeout(60)
        s.sendall(b"still here\n")
        assert recv_exactly(s, 11) == b"still here\n"
    with vm.vsock.listen(5001) as listener:
        listener.settimeout(60)
        accepted: list[bytes] = []

        def accept() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(60)
                accepted.append(recv_exactly(conn, 5))
                conn.sendall(b"ok")

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        r = vm.run(["/tmp/vsockecho", "client", "2", "5001"], input=b"hello", timeout=60)
        t.join(60)
    assert (r.returncode, r.stdout, accepted) == (0, b"ok", [b"hello"]), r
