"""virtio-net with the Debian guest, where KVM is hardware-backed (the nested-KVM lab on PVM).

The VM runs in a child process inside its own network namespace, with a TAP made there, so
nothing touches the host's network.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.full_boot

_CHILD = textwrap.dedent(r'''
    import hashlib, json, socket, subprocess, sys, threading
    from vmm_reference import Tap, Vm
    from vmm_reference.assets import GUEST_READY_MARKER, fetch_guest

    def sh(cmd):
        subprocess.run(cmd, shell=True, check=True)

    sh("ip link set lo up && ip tuntap add dev tap0 mode tap && ip addr add 10.0.2.1/24 dev tap0"
       " && ip link set tap0 up")
    g = fetch_guest()
    size = int(sys.argv[1])
    server = socket.socket()
    server.bind(("10.0.2.1", 5555))
    server.listen(1)
    server.settimeout(900)  # set before the guest boots: accept comes after boot, dd and sha256sum
    got = {}

    def receive():
        conn, _ = server.accept()
        h, n = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 16):
                h.update(chunk)
                n += len(chunk)
        got.update(sha256=h.hexdigest(), bytes=n)

    t = threading.Thread(target=receive)
    t.start()
    prompt = r"# (\x1b\[6n)?$"
    with Vm(memory_mib=256, kernel=g.vmlinux, initrd=g.initrd, cmdline="reboot=k panic=-1 quiet vmm.init=shell",
            net=[Tap("tap0", mac="06:00:ac:10:00:02")], transport=sys.argv[2]) as vm:
        vm.start()
        vm.expect(GUEST_READY_MARKER, timeout=180)
        vm.expect(prompt, timeout=60)
        def run(cmd, timeout=120):
            vm.write(cmd + "; echo RC=$?\n")
            m = vm.expect(r"RC=(\d+)", timeout=timeout)
            vm.expect(prompt, timeout=60)
            return int(m.group(1))
        out = {}
        out["mac"] = run("grep -qx 06:00:ac:10:00:02 /sys/class/net/eth0/address")
        out["up"] = run("ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up")
        out["ping"] = run("ping -c 3 -W 5 10.0.2.1")
        out["file"] = run(f"dd if=/dev/urandom of=/tmp/f bs=1M count={size // (1 << 20)} 2>/dev/null")
        vm.write("sha256sum /tmp/f\n")
        out["guest_sha256"] = vm.expect(r"([0-9a-f]{64})  /tmp/f", timeout=120).group(1)
        vm.expect(prompt, timeout=60)
        out["nc"] = run("nc 10.0.2.1 5555 < /tmp/f", timeout=900)
        t.join(timeout=300)
        out.update(got)
        out["frames"] = vm.stats()["net_frames"]
    print("RESULT " + json.dumps(out))
''')


@pytest.mark.parametrize("transport", ["mmio", "pci"])
def test_tap_ping_and_a_tcp_transfer(transport):
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --net is not permitted here")
    size = 4 << 20  # far more than the TCP window and the queues; ~10 s at the lab's 0.4 MB/s
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", _CHILD, str(size), transport], capture_output=True,
                       text=True, timeout=1800)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(line[-1][len("RESULT "):])
    assert (out["mac"], out["up"], out["ping"], out["file"], out["nc"]) == (0, 0, 0, 0, 0), out
    assert out["bytes"] == size and out["sha256"] == out["guest_sha256"], out
    tx, rx, dropped = out["frames"][0]
    assert tx > 0 and rx > 0, out
    assert hashlib.sha256(b"").hexdigest() != out["sha256"]
