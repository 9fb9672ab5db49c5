"""Blocking calls release the GIL and stay interruptible."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from vmm_reference import Vm


@pytest.fixture(autouse=True)
def _sigint_raises():
    # A process started in the background by a shell inherits SIGINT ignored, and Python then
    # keeps it ignored: install Python's own handler so these tests mean the same everywhere.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def count_while(block) -> tuple[int, float]:
    counter = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal counter
        while not stop.is_set():
            counter += 1

    t = threading.Thread(target=spin)
    t.start()
    t0 = time.monotonic()
    try:
        block()
    finally:
        stop.set()
        t.join()
    return counter, time.monotonic() - t0


def test_python_threads_run_while_the_vm_runs_and_wait_blocks(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=spin")
    vm.start()
    # Reference: how far the counter gets in the same time with the main thread just sleeping.
    baseline, _ = count_while(lambda: time.sleep(0.5))

    def blocked_wait() -> None:
        with pytest.raises(TimeoutError):
            vm.wait(timeout=0.5)

    during_wait, elapsed = count_while(blocked_wait)
    assert elapsed >= 0.5
    assert during_wait > baseline * 0.3, (during_wait, baseline)

    def blocked_read() -> None:
        vm.serial.read(timeout=0.5)
        vm.serial.read(timeout=0.5)

    during_read, _ = count_while(blocked_read)
    assert during_read > baseline * 0.3, (during_read, baseline)


def test_keyboard_interrupt_stops_wait_promptly(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt")
    vm.start()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        vm.wait(timeout=20)  # a TimeoutError instead fails the test
    assert time.monotonic() - t0 < 2.0
    assert vm.state == "running"
    vm.kill()
    assert vm.wait(timeout=10).reason == "killed"


def test_keyboard_interrupt_in_serial_iteration(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt")
    vm.start()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in vm.serial.lines(timeout=20):
            pass


def test_ctrl_c_in_a_script_unwinds_the_with_block(probe_elf):
    code = f"""
import sys
from vmm_reference import Vm
vm = None
try:
    with Vm(kernel={str(probe_elf)!r}, cmdline="probe.end=spin") as vm:
        vm.start()
        print("started", flush=True)
        vm.wait()
except KeyboardInterrupt:
    print("interrupted", vm.state, vm.exit_status.reason, flush=True)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         preexec_fn=_default_sigint)
    assert p.stdout.readline().strip() == "started"
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert out.strip() == "interrupted exited killed"
    assert p.returncode == 0


def test_many_vcpus_kill_cleanly(probe_elf):
    with Vm(kernel=probe_elf, vcpus=8, cmdline="probe.end=halt") as vm:
        vm.start()
        for line in vm.serial.lines(timeout=30):
            if line == "PROBE: halting":
                break
        vm.kill()
        assert vm.wait(timeout=10).reason == "killed"
