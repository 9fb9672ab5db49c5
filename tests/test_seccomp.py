"""seccomp filters on the VMM's own threads (`src/seccomp.rs`; the Rust unit tests show a
filtered thread cannot open a file or run a program): which threads carry a filter, and the
switch that leaves them off."""

from __future__ import annotations

from pathlib import Path


def seccomp_modes() -> dict[str, set[int]]:
    """Thread name → the seccomp modes of the threads with that name (0 none, 2 filter)."""
    modes: dict[str, set[int]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        mode = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Seccomp:"))
        modes.setdefault(name, set()).add(mode)
    return modes


def test_vcpu_event_loop_and_reaper_threads_are_filtered_python_threads_are_not(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.smp=madt probe.end=halt", vcpus=2, memory_mib=64)
    vm.start()
    vm.expect("PROBE: halting", timeout=30)
    vm_factory(kernel=probe_elf, memory_mib=64).close()  # a dropped VM starts the reaper
    modes = seccomp_modes()
    assert modes["vcpu0"] == {2} and modes["vcpu1"] == {2}, modes
    assert modes["vmm-event-loop"] == {2}, modes
    assert modes.get("vmm-reaper", {2}) == {2}, modes
    main = Path("/proc/self/status").read_text()
    assert "Seccomp:\t0" in main, "the caller's own threads must stay unfiltered"


def test_seccomp_false_leaves_the_vms_threads_unfiltered(vm_factory, probe_elf):
    vm = vm_factory(kernel=probe_elf, cmdline="probe.end=halt", memory_mib=64, seccomp=False)
    vm.start()
    vm.expect("PROBE: halting", timeout=30)
    modes = seccomp_modes()
    assert 0 in modes["vcpu0"], modes
