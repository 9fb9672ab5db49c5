"""Talking to the guest: write/expect, failure patterns, asyncio."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from vmm_reference import ExpectFailure, VmExitedError, VmTimeoutError


def echo_vm(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=echo")
    vm.start()
    return vm


def test_expect_write_and_partial_lines(vm_factory, probe_elf):
    vm = echo_vm(vm_factory, probe_elf)
    m = vm.expect(r"cmdline=(\S+) console", timeout=30)
    assert m.group(1) == "probe.end=echo"
    vm.expect("echo ready")
    vm.write("hello there\n")
    assert vm.expect(rb"got (\w+) (\w+)\n").groups() == (b"hello", b"there")
    # Partial line: "PROBE: got " is printed before the rest; match the prefix alone.
    vm.write("x\n")
    vm.expect(r"PROBE: got ")
    vm.write("reset\n")
    assert vm.wait(timeout=30).reason == "reset"


def test_expect_consumes_output(vm_factory, probe_elf):
    vm = echo_vm(vm_factory, probe_elf)
    vm.expect("echo ready")
    vm.write("one\ntwo\n")
    assert vm.expect(r"got (\w+)\n").group(1) == "one"
    assert vm.expect(r"got (\w+)\n").group(1) == "two"


def test_expect_timeout_shows_the_console(vm_factory, probe_elf):
    vm = echo_vm(vm_factory, probe_elf)
    t0 = time.monotonic()
    with pytest.raises(VmTimeoutError, match=r"'never' did not appear within timeout=0.5s(.|\n)*echo ready") as e:
        vm.expect("never", timeout=0.5)
    assert isinstance(e.value, TimeoutError)
    assert time.monotonic() - t0 < 5


def test_expect_raises_at_once_when_the_vm_exits(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf)
    vm.start()
    t0 = time.monotonic()
    with pytest.raises(VmExitedError, match=r"exited \(reason reset\) before 'never'(.|\n)*PROBE: reset"):
        vm.expect("never", timeout=60)
    assert time.monotonic() - t0 < 10


def test_failure_patterns(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=triple")
    vm.start()
    with pytest.raises(ExpectFailure, match="failure pattern 'triple") as e:
        vm.expect("this will not come", fail=["triple fault", re.compile("kernel panic")], timeout=30)
    assert e.value.match.group(0) == "triple fault"


def test_a_failure_pattern_counts_only_when_it_comes_first(vm_factory, probe_elf):
    # Both lines are already there when expect reads: the earlier one decides.
    for pattern, fail, wins in [("PROBE: done", "PROBE: halting", True), ("PROBE: halting", "PROBE: done", False)]:
        vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt")
        vm.start()
        deadline = time.monotonic() + 30
        while "PROBE: halting" not in vm.console_log and time.monotonic() < deadline:
            time.sleep(0.01)
        if wins:
            assert vm.expect(pattern, fail=[fail], timeout=10).group(0) == pattern
        else:
            with pytest.raises(ExpectFailure, match=f"failure pattern '{fail}'"):
                vm.expect(pattern, fail=[fail], timeout=10)


def test_asyncio_face(vm_factory, probe_elf):
    vm = echo_vm(vm_factory, probe_elf)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        await vm.expect_async("echo ready")
        vm.write("reset\n")
        lines = [line async for line in vm.serial]
        status = await vm.wait_async(timeout=30)
        t.cancel()
        return lines, status, ticks

    lines, status, ticks = asyncio.run(main())
    assert status.reason == "reset"
    assert lines[-2:] == ["PROBE: got reset", "PROBE: reset"]
    assert ticks > 0


def test_wait_async_timeout(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt")
    vm.start()
    with pytest.raises(TimeoutError):
        asyncio.run(vm.wait_async(timeout=0.3))


def test_a_guest_printing_without_newlines_costs_bounded_host_memory(vm_factory, probe_elf):
    """`for line in vm.serial` used to keep an unterminated line without bound (and re-join it
    at every chunk): now it never holds more than console_limit characters of it."""
    import tracemalloc

    # The guest prints one byte per port exit (~40 KB/s on a slow PVM host): the test waits for
    # an amount of output, 24 limit-sized pieces, which an unbounded splitter would hold 24 of;
    # the timeout is only a safety net far above the slowest host.
    limit = 16 * 1024
    pieces = 24
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=flood-raw", console_limit=limit)
    vm.start()
    tracemalloc.start()
    try:
        seen = 0
        lengths = set()
        for line in vm.serial.lines(timeout=600):
            if line.startswith("0123"):
                lengths.add(len(line))
                seen += len(line)
            if seen >= pieces * limit:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lengths == {limit}, lengths
    assert peak < 8 * limit, peak
