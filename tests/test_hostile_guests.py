"""Hostile guests (the probe's `probe.end=hostile` mode and friends): whatever a guest does to
the VMM's ports, MMIO and devices, the host process survives with bounded memory, `kill()`
returns promptly, and the next VM in the same process boots."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from vmm_reference import Disk, Vm


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def killed_promptly(vm: Vm) -> None:
    t0 = time.monotonic()
    vm.kill()
    assert vm.wait(timeout=10).reason == "killed"
    assert time.monotonic() - t0 < 5


def next_vm_boots(vm_factory, probe_elf) -> None:
    nxt = vm_factory(kernel=probe_elf, memory_mib=64)
    nxt.start()
    assert nxt.wait(timeout=30).reason == "reset"


def test_port_mmio_and_register_sweeps_with_spinning_aps(vm_factory, probe_elf, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    ro = tmp_path / "ro.img"
    ro.write_bytes(b"\1" * (1 << 20))
    vm = vm_factory(kernel=probe_elf, cmdline="probe.smp=madt probe.end=hostile", vcpus=3, memory_mib=64,
                    disks=[image, Disk(ro, read_only=True)], vsock=True)
    before = rss_mib()
    vm.start()
    for step in ("ports read", "ports written", "gap read", "registers done", "done"):
        vm.expect(f"PROBE: hostile {step}\n", timeout=300)
    assert vm.state == "running"
    assert len(vm.events) <= 1024, "boot markers are bounded"
    assert rss_mib() - before < 64, "the sweeps grew the host's memory"
    assert ro.read_bytes() == b"\1" * (1 << 20), "nothing reached the read-only image"
    killed_promptly(vm)
    next_vm_boots(vm_factory, probe_elf)


@pytest.mark.parametrize("end", ["halt", "spin", "triple"])
def test_halted_spinning_or_triple_faulting_vcpus(vm_factory, probe_elf, end):
    vm = vm_factory(kernel=probe_elf, cmdline=f"probe.smp=madt probe.end={end}", vcpus=4, memory_mib=64)
    vm.start()
    if end == "triple":
        assert vm.wait(timeout=30).reason == "shutdown"
    else:
        vm.expect({"halt": "PROBE: halting", "spin": "PROBE: spinning"}[end], timeout=30)
        killed_promptly(vm)
    next_vm_boots(vm_factory, probe_elf)


def test_console_flood_with_and_without_newlines_is_bounded(vm_factory, probe_elf):
    limit = 64 << 10
    for end in ("flood", "flood-raw"):
        vm = vm_factory(kernel=probe_elf, cmdline=f"probe.end={end}", console_limit=limit, memory_mib=64)
        before = rss_mib()
        vm.start()
        # ~12 s per mode at 42 KB/s (a slow PVM host): waits for the amount, the deadline is a
        # safety net.
        deadline = time.monotonic() + 600
        while vm.stats()["console_bytes"] < 8 * limit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vm.stats()["console_bytes"] >= 8 * limit
        assert len(vm.serial.log_bytes) <= limit, f"{end}: the console kept more than its limit"
        assert rss_mib() - before < 16, f"{end}: the flood grew the host's memory"
        killed_promptly(vm)
    next_vm_boots(vm_factory, probe_elf)


@pytest.mark.parametrize("device", ["blk", "vsock"])
def test_pause_snapshot_and_kill_stay_prompt_while_a_device_is_flooded(vm_factory, probe_elf, tmp_path, device):
    """The probe keeps a device's queue full for ever (``probe.blk=flood``: the largest reads,
    all aliasing one buffer; ``probe.vsock=flood``: packets dropped on sight): the device serves
    bounded batches, so pausing, a snapshot (which locks every device) and killing still get in."""
    kwargs: dict = {"vsock": True} if device == "vsock" else {}
    if device == "blk":
        image = tmp_path / "disk.img"
        with open(image, "wb") as f:
            f.truncate(256 << 20)  # sparse: reads are page-cache zeroes
        kwargs["disks"] = [image]
    vm = vm_factory(kernel=probe_elf, cmdline=f"probe.{device}=flood", memory_mib=64, **kwargs)
    vm.start()
    vm.expect(f"PROBE: {device} flood running", timeout=120)
    if device == "blk":
        deadline = time.monotonic() + 300
        while vm.stats()["disk_requests"][0] < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vm.stats()["disk_requests"][0] >= 2000, "the flood never got going"
    vm.pause()
    t0 = time.monotonic()
    vm.snapshot(tmp_path / "snap")
    assert time.monotonic() - t0 < 30, "a snapshot waited on a busy device"
    vm.resume()
    t0 = time.monotonic()
    vm.kill()
    assert vm.wait(timeout=10).reason == "killed"
    assert time.monotonic() - t0 < 1.0, f"kill() took {time.monotonic() - t0:.2f} s with a flooding guest"
