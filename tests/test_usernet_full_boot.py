"""User-mode networking (``UserNet``: passt) with the Debian guest, where KVM is hardware-backed
(the nested-KVM lab on PVM hosts).

The VM runs in a child process inside its own network namespace (``unshare --net``), so
nothing touches the host's network. passt needs a "routable interface" to copy its addresses
from: the child makes a dummy one (``dummy0``, 192.0.2.2/24) with a default route via
192.0.2.1 (a TAP nobody opens does as well, where the ``dummy`` module is missing). The guest
gets 192.0.2.2 by DHCP from passt, and passt maps its connections to the gateway address onto
the namespace's loopback (its default, ``--no-map-gw`` turns it off): the guest's ``wget`` from
192.0.2.1 reaches the child's HTTP server on 127.0.0.1. ``forward={8080: 80}`` makes the
child's 127.0.0.1:8080 reach the guest's busybox ``httpd`` on port 80.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.full_boot

# busybox udhcpc runs this at DHCP events (the initramfs has no default script).
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    echo "lease ip=$ip mask=$mask router=$router mtu=$mtu"
    ;;
esac
exit 0
"""

_CHILD = textwrap.dedent(r'''
    import functools, hashlib, http.server, json, os, re, subprocess, sys, threading, time, urllib.request
    from vmm_reference import UserNet, Vm
    from vmm_reference.assets import fetch_guest

    config = json.loads(sys.argv[1])
    out = {}

    def sh(cmd):
        subprocess.run(cmd, shell=True, check=True)

    def userns_ok():
        return subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode == 0

    def leave_the_labs_chroot():
        """Make the lab's chroot (the host's root at /host of its initramfs) this namespace's root.

        passt always makes a user namespace, which the kernel refuses to a chrooted process
        (EPERM), and the lab runs its command chrooted. In this private mount namespace: climb
        out of the chroot, move the /host mount (with its submounts) onto / and make it the
        root. The files are the same; only the chroot is gone.
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        os.chdir("/")
        os.chroot(config["escape"])  # the working directory stays outside the new root ...
        for _ in range(64):
            os.chdir("..")  # ... so ".." climbs up to the initramfs's /
        os.chroot(".")
        os.chdir("/host")
        if libc.mount(b"/host", b"/", None, 8192, None) != 0:  # MS_MOVE
            raise OSError(ctypes.get_errno(), "mount --move /host /")
        os.chroot(".")
        os.chdir("/")

    out["userns"] = userns_ok()
    if not out["userns"] and os.environ.get("VMM_REFERENCE_IN_LAB") and os.path.isdir(config["escape"]):
        leave_the_labs_chroot()
        out["userns_after_leaving_the_chroot"] = userns_ok()

    # passt copies its addresses and gateway from the interface with the default route.
    sh("ip link set lo up")
    if subprocess.run("ip link add dummy0 type dummy", shell=True).returncode == 0:
        out["template"] = "dummy"
    else:
        sh("ip tuntap add dev dummy0 mode tap")  # no dummy module: an unopened TAP does too
        out["template"] = "tap"
    sh("ip addr add 192.0.2.2/24 dev dummy0 && ip link set dummy0 up && ip route add default via 192.0.2.1")

    # The HTTP server on the namespace's loopback, which the guest reaches as its gateway.
    www = config["www"]
    with open(os.path.join(www, "blob"), "rb") as f:
        blob_sha = hashlib.sha256(f.read()).hexdigest()
    clients = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            clients.append(self.client_address[0])

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=www))
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    g = fetch_guest()
    with Vm(memory_mib=256, kernel=g.vmlinux, initrd=g.initrd, cmdline="reboot=k panic=-1 quiet", vsock=True,
            net=[UserNet(forward={8080: 80}, mac="06:00:c0:00:02:0f")], transport=config["transport"]) as vm:
        vm.start()
        vm.wait_ready(timeout=120)

        def run(cmd, timeout=120, **kw):
            r = vm.run(cmd, timeout=timeout, text=True, **kw)
            return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}

        out["script"] = run("cat > /tmp/udhcpc.sh && chmod +x /tmp/udhcpc.sh", input=config["script"])
        out["dhcp"] = run("ip link set eth0 up && udhcpc -i eth0 -n -q -t 10 -T 2 -s /tmp/udhcpc.sh")
        out["addr"] = run("ip -4 -o addr show dev eth0; ip route; cat /sys/class/net/eth0/address")
        lease = re.search(r"lease ip=(\S+) mask=(\S*) router=(\S+)", out["dhcp"]["stdout"])
        gateway = lease.group(3) if lease else "192.0.2.1"
        started = time.monotonic()
        out["wget"] = run(f"wget -q -O /tmp/blob http://{gateway}:{port}/blob && sha256sum /tmp/blob", timeout=300)
        out["wget_seconds"] = time.monotonic() - started
        out["blob_sha"] = blob_sha
        out["http_clients"] = clients

        # The forwarded port: the guest serves a file on port 80, the host fetches it on 8080.
        size = config["page_bytes"]
        out["page"] = run(f"mkdir -p /tmp/www && head -c {size} /dev/urandom > /tmp/www/page"
                          " && sha256sum /tmp/www/page && httpd -p 80 -h /tmp/www </dev/null >/dev/null 2>&1"
                          " && netstat -ltn")
        try:
            started = time.monotonic()
            with urllib.request.urlopen("http://127.0.0.1:8080/page", timeout=120) as response:
                body = response.read()
            out["forward"] = {"status": response.status, "bytes": len(body),
                              "sha256": hashlib.sha256(body).hexdigest(),
                              "seconds": time.monotonic() - started}
        except Exception as e:
            out["forward"] = {"error": repr(e)}
        out["frames"] = vm.stats()["net_frames"]
    httpd.shutdown()
    print("RESULT " + json.dumps(out))
''')


@pytest.mark.parametrize("transport", ["mmio", "pci"])
def test_dhcp_a_download_from_the_host_and_a_forwarded_port(tmp_path, request, transport):
    from vmm_reference.pytest_plugin import skip_or_fail

    if not shutil.which("passt"):
        skip_or_fail(request.config, "needs passt (Debian: apt-get install passt)")
    # A private mount namespace too: in the lab the child leaves its chroot there (see _CHILD).
    prefix = ["unshare", "--mount", "--net"]
    if os.geteuid() != 0:
        prefix.append("--map-root-user")
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --net is not permitted here")
    www = tmp_path / "www"
    www.mkdir()
    blob = os.urandom(4 << 20)
    (www / "blob").write_bytes(blob)
    escape = tmp_path / "escape"
    escape.mkdir()
    config = {"www": str(www), "script": UDHCPC_SCRIPT, "page_bytes": 4 << 20, "escape": str(escape),
              "transport": transport}
    r = subprocess.run([*prefix, sys.executable, "-c", _CHILD, json.dumps(config)], capture_output=True,
                       text=True, timeout=900)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(line[-1][len("RESULT "):])
    print(json.dumps(out, indent=1))
    print(f"host -> guest (wget) 4 MiB in {out['wget_seconds']:.1f} s; guest -> host (forwarded port) 4 MiB in "
          f"{out['forward'].get('seconds', float('nan')):.1f} s")
    assert out["script"]["rc"] == 0, out
    # DHCP: passt offers the template interface's address, its prefix and its gateway.
    assert out["dhcp"]["rc"] == 0, out["dhcp"]
    assert "lease ip=192.0.2.2 mask=24 router=192.0.2.1" in out["dhcp"]["stdout"], out["dhcp"]
    assert "inet 192.0.2.2/24" in out["addr"]["stdout"], out["addr"]
    assert "default via 192.0.2.1 dev eth0" in out["addr"]["stdout"], out["addr"]
    assert "06:00:c0:00:02:0f" in out["addr"]["stdout"], out["addr"]
    # The guest's connection to the gateway reached the host's loopback.
    assert out["wget"]["rc"] == 0, out["wget"]
    assert out["wget"]["stdout"].split()[0] == out["blob_sha"] == hashlib.sha256(blob).hexdigest(), out["wget"]
    assert out["http_clients"] == ["127.0.0.1"], out["http_clients"]
    # The forwarded port: 127.0.0.1:8080 on the host is the guest's port 80.
    assert out["page"]["rc"] == 0, out["page"]
    page_sha = out["page"]["stdout"].split()[0]
    assert ":80 " in out["page"]["stdout"], out["page"]  # netstat: httpd listens
    assert out["forward"].get("status") == 200, out["forward"]
    assert (out["forward"]["bytes"], out["forward"]["sha256"]) == (4 << 20, page_sha), out["forward"]
    tx, rx, _dropped = out["frames"][0]
    assert tx > 0 and rx > 0, out["frames"]
