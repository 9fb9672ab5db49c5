"""Leak soak: many VMs made and dropped in one process leave its fds, threads and memory flat.

Runs in a child process, so that what the rest of the test session holds does not blur the
counts: 1,000 create → start → the guest's last line → kill cycles of 256 MiB VMs with a
disk and a vsock device (every 20th driven by the probe's driver, every 25th with passt
networking too), then 20 rounds of 16 VMs running at once. Address space (VmSize) is checked as well as RSS: a
dropped VM whose guest RAM stays mapped costs 256 MiB of it and little RSS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent(r"""
    import gc, itertools, json, os, sys, tempfile, threading, time
    from vmm_reference import UserNet, Vm, Vsock

    probe = sys.argv[1]
    with_passt = sys.argv[2] == "1"
    where = tempfile.mkdtemp(prefix="vmm-soak-")
    disk = os.path.join(where, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    serial = itertools.count()

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def tasks():
        return len(os.listdir("/proc/self/task"))

    def status_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    def rss_kib():
        return status_kib("VmRSS")

    def vmsize_kib():
        return status_kib("VmSize")

    def one():
        n = next(serial)
        net = [UserNet()] if with_passt and n % 25 == 0 else []
        drive = "probe.vsock=info " if n % 20 == 0 else ""
        vm = Vm(memory_mib=256, kernel=probe, cmdline=f"{drive}probe.end=halt", disks=[disk],
                vsock=Vsock(uds=os.path.join(where, f"v{n}.sock")), net=net)
        vm.start()
        vm.expect("PROBE: halting", timeout=60)
        vm.kill()
        vm.close()

    def settle(fd0, task0):
        # Dropped VMs are released by a background reaper: wait (bounded) until it is done.
        end = time.monotonic() + 20
        while time.monotonic() < end and (fds() > fd0 or tasks() > task0):
            time.sleep(0.05)

    def batch(_):
        vms = [Vm(memory_mib=64, kernel=probe, cmdline="probe.vsock=info probe.end=halt", disks=[disk],
                  vsock=Vsock(uds=os.path.join(where, f"v{next(serial)}.sock"))) for _ in range(16)]
        for vm in vms:
            vm.start()
        for vm in vms:
            vm.expect("PROBE: halting", timeout=120)
        for vm in vms:
            vm.close()

    # Warm up: allocator pools (16 threads at once make glibc's arenas, 64 MiB of address
    # space each, kept for good), the reaper thread, imports.
    for _ in range(30):
        one()
    batch(0)
    gc.collect()
    settle(10**9, 10**9)
    time.sleep(0.5)
    fd0, task0, rss0, size0 = fds(), tasks(), rss_kib(), vmsize_kib()
    t0 = time.monotonic()
    for _ in range(1000):
        one()
    sequential = time.monotonic() - t0
    gc.collect()
    settle(fd0, task0)
    after_sequential = dict(fds=fds(), tasks=tasks(), rss=rss_kib(), vmsize=vmsize_kib())

    for i in range(20):
        batch(i)
    gc.collect()
    settle(fd0, task0)
    print(json.dumps(dict(base=dict(fds=fd0, tasks=task0, rss=rss0, vmsize=size0), sequential=after_sequential,
                          concurrent=dict(fds=fds(), tasks=tasks(), rss=rss_kib(), vmsize=vmsize_kib()),
                          seconds=sequential)), flush=True)
""")


def test_soak_1000_cycles_and_20_rounds_of_16_leave_the_process_flat(probe_elf, request):
    from vmm_reference.pytest_plugin import skip_or_fail

    if not shutil.which("passt"):
        skip_or_fail(request.config, "needs passt (Debian: apt-get install passt)")
    r = subprocess.run([sys.executable, "-c", _CHILD, str(probe_elf), "1"], capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    base = out["base"]
    for phase in ("sequential", "concurrent"):
        got = out[phase]
        assert got["fds"] <= base["fds"], (phase, out)
        assert got["tasks"] <= base["tasks"], (phase, out)
        assert got["rss"] - base["rss"] < 10 * 1024, (phase, out)
        # One VM's guest RAM left mapped is 256 MiB of address space (64 MiB concurrently).
        assert got["vmsize"] - base["vmsize"] < 60 * 1024, (phase, out)
    print(f"soak: 1000 cycles in {out['seconds']:.1f} s, then 20 × 16 concurrent; {out}")
