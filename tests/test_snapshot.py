"""Snapshot, restore and fork, with the probe guest's `probe.end=tick` mode on this host's KVM.

The tick guest keeps its state in memory: a counter it prints (`PROBE: tick N mark=C
aps=...`), the last byte it read from the serial port (`mark`), and each AP's own count. So
a restored or forked guest that prints N+1 after N, its own mark and rising AP counts has
really gone on from the saved state, with memory of its own.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import struct
import threading
from pathlib import Path

import pytest
from vmm_reference import Disk, Vm, VmSnapshotError, VmStateError

TICK = re.compile(r"PROBE: tick (\d+) mark=(\S) aps=(\S*)\n")


def ticks(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"PROBE: tick (\d+) ", log)]


def last_tick(vm: Vm) -> int:
    found = ticks(vm.console_log)
    assert found, vm.console_log[-2000:]
    return found[-1]


def tick_vm(vm_factory, probe_elf: Path, vcpus: int = 1, **kwargs) -> Vm:
    smp = "probe.smp=madt " if vcpus > 1 else ""
    vm = vm_factory(kernel=probe_elf, cmdline=f"{smp}probe.end=tick", vcpus=vcpus, memory_mib=64, **kwargs)
    vm.start()
    vm.expect(r"PROBE: tick 3 ", timeout=30)
    return vm


def test_restore_of_a_paused_vm_goes_on_from_the_next_tick(vm_factory, probe_elf, tmp_path, adopt):
    vm = tick_vm(vm_factory, probe_elf)
    vm.pause()
    saved = last_tick(vm)
    written = vm.snapshot(tmp_path / "snap")
    assert vm.state == "paused"
    assert sorted(os.listdir(tmp_path / "snap")) == ["memory", "state"]
    memory = tmp_path / "snap" / "memory"
    assert memory.stat().st_size == 64 << 20
    assert 0 < written < 8 << 20, "only the pages the guest used are written"
    assert memory.stat().st_blocks * 512 < 16 << 20, "the memory file is sparse"
    vm.kill()

    restored = Vm.restore(tmp_path / "snap")
    adopt([restored])
    assert restored.state == "paused"
    assert restored.console_log == "", "a restored VM's console starts empty"
    restored.resume()
    m = restored.expect(TICK, timeout=30)
    assert int(m.group(1)) == saved + 1, restored.console_log[:500]
    restored.expect(rf"PROBE: tick {saved + 3} ", timeout=30)
    restored.write("r")
    restored.expect(r"mark=r", timeout=30)


def test_snapshot_of_a_running_vm_resumes_it(vm_factory, probe_elf, tmp_path, adopt):
    vm = tick_vm(vm_factory, probe_elf)
    before = last_tick(vm)
    vm.snapshot(tmp_path / "snap")
    assert vm.state == "running"
    after = last_tick(vm)
    vm.expect(rf"PROBE: tick {after + 2} ", timeout=30)

    restored = Vm.restore(tmp_path / "snap", console_limit=4096)
    adopt([restored])
    assert restored.console_limit == 4096
    restored.resume()
    first = int(restored.expect(TICK, timeout=30).group(1))
    assert before < first <= after + 1, (before, first, after)


def test_snapshot_needs_a_started_live_vm(vm_factory, probe_elf, tmp_path):
    vm = vm_factory(kernel=probe_elf, memory_mib=64)
    with pytest.raises(VmStateError, match="cannot snapshot: the VM is created"):
        vm.snapshot(tmp_path / "a")
    with pytest.raises(VmStateError, match="cannot fork: the VM is created"):
        vm.fork()
    vm.start()
    vm.wait(timeout=30)
    with pytest.raises(VmStateError, match="cannot snapshot: the VM is exited"):
        vm.snapshot(tmp_path / "b")


def test_eight_forks_go_on_independently_with_memory_of_their_own(vm_factory, probe_elf, adopt):
    vm = tick_vm(vm_factory, probe_elf)
    vm.write("p")
    vm.expect(r"mark=p", timeout=30)
    vm.pause()
    at_fork = last_tick(vm)
    clones = vm.fork(8)
    adopt(clones)
    assert vm.state == "paused", "a paused parent stays paused"
    assert [c.state for c in clones] == ["paused"] * 8
    marks = "abcdefgh"
    for clone, mark in zip(clones, marks):
        assert clone.console_log == ""
        clone.resume()
        clone.write(mark)
    vm.resume()
    for clone, mark in zip(clones, marks):
        m = clone.expect(rf"PROBE: tick (\d+) mark={mark} ", timeout=30)
        assert int(m.group(1)) > at_fork
        first = ticks(clone.console_log)[0]
        assert first == at_fork + 1, (mark, first, at_fork)
        # Nobody else's mark ever reached this clone's memory.
        assert set(re.findall(r"mark=(\S)", clone.console_log)) <= {"p", mark}, clone.console_log[-500:]
    after = vm.expect(r"PROBE: tick (\d+) mark=(\S)", timeout=30)
    assert after.group(2) == "p", "the clones' writes never reach the parent"
    assert set(re.findall(r"mark=(\S)", vm.console_log)) == {"-", "p"}


def test_a_running_parent_goes_on_and_its_later_writes_stay_its_own(vm_factory, probe_elf, adopt):
    vm = tick_vm(vm_factory, probe_elf)
    (clone,) = vm.fork()
    adopt([clone])
    assert vm.state == "running"
    vm.write("q")
    vm.expect(r"mark=q", timeout=30)
    # A second fork after the parent wrote sees the parent's memory as it is now.
    (second,) = vm.fork()
    adopt([second])
    second.resume()
    second.expect(r"mark=q", timeout=30)
    clone.resume()
    m = clone.expect(TICK, timeout=30)
    clone.expect(rf"PROBE: tick {int(m.group(1)) + 2} ", timeout=30)
    assert "mark=q" not in clone.console_log, "the parent's write after the fork reached the clone"


def test_fork_of_a_multi_vcpu_guest_keeps_every_ap_running(vm_factory, probe_elf, adopt):
    vm = tick_vm(vm_factory, probe_elf, vcpus=4)
    assert "PROBE: smp started=3 expected=3" in vm.console_log
    clones = vm.fork(2)
    adopt(clones)
    for clone in clones:
        clone.resume()
        first = [int(x) for x in clone.expect(TICK, timeout=30).group(3).split(",")]
        m = clone.expect(TICK, timeout=30)
        later = [int(x) for x in m.group(3).split(",")]
        # Make sure the APs had time to count between the two lines.
        for _ in range(3):
            if all(b > a for a, b in zip(first, later)):
                break
            later = [int(x) for x in clone.expect(TICK, timeout=30).group(3).split(",")]
        assert len(later) == 3 and all(b > a for a, b in zip(first, later)), (first, later)


def fifo_variant(good: Path, d: Path) -> Path:
    """A snapshot whose memory file is a FIFO: restoring must not block on it."""
    d.mkdir()
    shutil.copy(good / "state", d / "state")
    os.mkfifo(d / "memory")
    return d


def test_damaged_snapshots_are_refused_clearly(vm_factory, probe_elf, tmp_path):
    vm = tick_vm(vm_factory, probe_elf)
    good = tmp_path / "good"
    vm.snapshot(good)
    vm.kill()
    state = (good / "state").read_bytes()

    def variant(name: str, state_bytes: bytes | None = None, memory_len: int | None = None) -> Path:
        d = tmp_path / name
        shutil.copytree(good, d)
        if state_bytes is not None:
            (d / "state").write_bytes(state_bytes)
        if memory_len is not None:
            os.truncate(d / "memory", memory_len)
        return d

    flipped = bytearray(state)
    flipped[len(state) // 2] ^= 0x40
    other_version = state[:8] + struct.pack("<I", 999) + state[12:]
    cases = [
        (variant("flipped", bytes(flipped)), "damaged: the state's checksum does not match"),
        (variant("truncated", state[: len(state) - 100]), "damaged: the header announces"),
        (variant("header-only", state[:10]), "damaged: 10 bytes, shorter than"),
        (variant("foreign", b"\x7fELF" + state[4:]), "is not a vmm-reference snapshot"),
        (variant("empty", b""), "is not a vmm-reference snapshot"),
        (variant("version", other_version), "snapshot format version 999; this vmm-reference reads version 4"),
        (variant("short-memory", memory_len=1 << 20), "memory.*damaged: not the 67108864 bytes"),
        (tmp_path / "missing", "cannot open"),
        (fifo_variant(good, tmp_path / "fifo"), "memory.*damaged: not a regular file"),
    ]
    for path, message in cases:
        with pytest.raises(VmSnapshotError, match=message):
            Vm.restore(path)
    with pytest.raises(Exception, match="invalid path=42"):
        Vm.restore(42)  # type: ignore[arg-type]
    # The good one still restores after all that.
    ok = Vm.restore(good)
    ok.resume()
    ok.expect(TICK, timeout=30)
    ok.close()


def test_fork_refuses_devices_a_clone_cannot_share(vm_factory, probe_elf, tmp_path, adopt):
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    vm = tick_vm(vm_factory, probe_elf, disks=[image])
    with pytest.raises(VmSnapshotError, match=r"disks\[0\].*writable disk cannot be shared"):
        vm.fork()
    assert vm.state == "running", "a refused fork leaves the VM as it was"
    ro = tick_vm(vm_factory, probe_elf, disks=[Disk(image, read_only=True)])
    clones = ro.fork(2)
    adopt(clones)
    for c in clones:
        c.resume()
        c.expect(TICK, timeout=30)


def test_fork_with_vsock_gives_each_clone_its_own_socket(vm_factory, probe_elf, adopt):
    vm = tick_vm(vm_factory, probe_elf, vsock=True)
    clones = vm.fork(2)
    adopt(clones)
    paths = {vm.vsock.uds, *(c.vsock.uds for c in clones)}
    assert len(paths) == 3 and all(os.path.exists(p) for p in paths)
    assert {c.vsock.cid for c in clones} == {vm.vsock.cid}
    for c in clones:
        c.resume()
        c.expect(TICK, timeout=30)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_soak_200_forks_and_drops_leave_fds_threads_and_memory_flat(vm_factory, probe_elf):
    vm = tick_vm(vm_factory, probe_elf)
    vm.pause()

    def cycle(n: int) -> None:
        for _ in range(n):
            (clone,) = vm.fork()
            clone.resume()
            clone.close()
        gc.collect()

    cycle(20)  # warm up: allocator pools, the reaper thread
    fds, threads, rss = _fds(), threading.active_count(), _rss_kib()
    native_threads = len(os.listdir("/proc/self/task"))
    cycle(200)
    # The reaper releases KVM VMs in the background: give it a moment to drain.
    for _ in range(100):
        if len(os.listdir("/proc/self/task")) <= native_threads + 1 and _fds() <= fds + 4:
            break
        threading.Event().wait(0.05)
    assert _fds() <= fds + 4, (fds, _fds())
    assert threading.active_count() <= threads
    assert len(os.listdir("/proc/self/task")) <= native_threads + 1
    assert _rss_kib() - rss < 32 << 10, (rss, _rss_kib())
