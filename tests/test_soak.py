"""Leak soak: many VMs made and dropped in one process leave its fds, threads and memory flat.

Runs in a child process, so that what the rest of the test session holds does not blur the
counts: 1,000 create → start → first console output → kill cycles, then 20 rounds of 16
VMs running at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent(r"""
    import gc, json, os, sys, threading, time
    from vmm_reference import Vm

    probe = sys.argv[1]

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def tasks():
        return len(os.listdir("/proc/self/task"))

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def one():
        vm = Vm(memory_mib=64, kernel=probe, cmdline="probe.end=halt")
        vm.start()
        vm.expect("PROBE: hello", timeout=30)
        vm.kill()
        vm.close()

    def settle(fd0, task0):
        # Dropped VMs are released by a background reaper: wait (bounded) until it is done.
        end = time.monotonic() + 20
        while time.monotonic() < end and (fds() > fd0 or tasks() > task0):
            time.sleep(0.05)

    for _ in range(30):  # warm up: allocator pools, the reaper thread, imports
        one()
    gc.collect()
    settle(10**9, 10**9)
    time.sleep(0.5)
    fd0, task0, rss0 = fds(), tasks(), rss_kib()
    t0 = time.monotonic()
    for _ in range(1000):
        one()
    sequential = time.monotonic() - t0
    gc.collect()
    settle(fd0, task0)
    after_sequential = dict(fds=fds(), tasks=tasks(), rss=rss_kib())

    def batch(_):
        vms = [Vm(memory_mib=64, kernel=probe, cmdline="probe.end=halt") for _ in range(16)]
        for vm in vms:
            vm.start()
        for vm in vms:
            vm.expect("PROBE: hello", timeout=60)
        for vm in vms:
            vm.close()

    for i in range(20):
        batch(i)
    gc.collect()
    settle(fd0, task0)
    print(json.dumps(dict(base=dict(fds=fd0, tasks=task0, rss=rss0), sequential=after_sequential,
                          concurrent=dict(fds=fds(), tasks=tasks(), rss=rss_kib()),
                          seconds=sequential)), flush=True)
""")


def test_soak_1000_cycles_and_20_rounds_of_16_leave_the_process_flat(probe_elf):
    r = subprocess.run([sys.executable, "-c", _CHILD, str(probe_elf)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    base = out["base"]
    for phase in ("sequential", "concurrent"):
        got = out[phase]
        assert got["fds"] <= base["fds"], (phase, out)
        assert got["tasks"] <= base["tasks"], (phase, out)
        assert got["rss"] - base["rss"] < 10 * 1024, (phase, out)
    print(f"soak: 1000 cycles in {out['seconds']:.1f} s, then 20 × 16 concurrent; {out}")
