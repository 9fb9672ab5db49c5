"""The pytest plugin, exercised the way users run it: pytest in a subprocess on a test file."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=300)


def test_a_failing_test_reports_and_saves_the_guest_console(pytester, probe_elf):
    result = run(pytester, f"""
def test_boots_then_fails(vm_factory):
    vm = vm_factory(kernel={str(probe_elf)!r}, cmdline="probe.end=halt")
    vm.start()
    vm.expect("PROBE: halting")
    assert False, "the test's own failure"
""", f"--basetemp={pytester.path / 'tmp'}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "Captured guest console (VM 0, running)" in out
    assert "PROBE: hello" in out and "PROBE: halting" in out
    saved = Path(re.search(r"\(whole log: (\S+)\)", out).group(1))
    assert saved.exists() and b"PROBE: halting" in saved.read_bytes()


def test_a_passing_test_keeps_its_console_only_when_asked(pytester, probe_elf):
    source = f"""
def test_boots(vm_factory):
    vm = vm_factory(kernel={str(probe_elf)!r})
    vm.start()
    assert vm.wait(timeout=30).reason == "reset"
"""
    run(pytester, source, f"--basetemp={pytester.path / 'a'}").assert_outcomes(passed=1)
    assert not list((pytester.path / "a").rglob("guest-console-*.log"))
    run(pytester, source, f"--basetemp={pytester.path / 'b'}", "--vmm-keep-console").assert_outcomes(passed=1)
    [saved] = (pytester.path / "b").rglob("guest-console-0.log")
    assert b"PROBE: hello" in saved.read_bytes()


def test_vm_markers_parametrize_the_vm_fixture_and_options_set_defaults(pytester, probe_elf):
    result = run(pytester, f"""
import pytest

@pytest.mark.vm(kernel={str(probe_elf)!r}, cmdline="probe.smp=madt probe.end=halt", vcpus=1)
@pytest.mark.vm(kernel={str(probe_elf)!r}, cmdline="probe.smp=madt probe.end=halt", vcpus=4)
def test_cpus(vm):
    vm.expect("PROBE: halting")
    listed = vm.console_log.split("PROBE: cpus source=madt count=")[1].split()[0]
    assert vm.expect_timeout == 7.5
    assert vm.memory_mib == 96
    print("VCPUS", listed)
""", "-v", "-s", "--vmm-timeout=7.5", "--vmm-memory=96")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "test_cpus[vcpus=1" in out and "test_cpus[vcpus=4" in out
    assert "VCPUS 1" in out and "VCPUS 4" in out


def test_vmm_kernel_option_and_ini_key(pytester, probe_elf):
    source = """
def test_kernel(vm):
    vm.expect("PROBE: hello")
    assert vm.boot_info.format == "ELF vmlinux"
"""
    run(pytester, source, f"--vmm-kernel={probe_elf}").assert_outcomes(passed=1)
    pytester.makeini(f"[pytest]\nvmm_kernel = {probe_elf}\nvmm_memory = 80\n")
    with_memory = source.replace('"ELF vmlinux"', '"ELF vmlinux"\n    assert vm.memory_mib == 80')
    run(pytester, with_memory).assert_outcomes(passed=1)


def test_bad_option_values_are_usage_errors(pytester, probe_elf):
    result = run(pytester, "def test_x(vm_factory):\n    vm_factory(kernel='x')\n", "--vmm-memory=lots")
    assert "invalid vmm_memory='lots': expected a number" in result.stdout.str() + result.stderr.str()


def test_runs_under_xdist_with_two_workers(pytester, probe_elf, request):
    from vmm_reference.pytest_plugin import skip_or_fail

    if importlib.util.find_spec("xdist") is None:
        skip_or_fail(request.config, "pytest-xdist is not installed")
    tests = "\n".join(f"""
def test_{i}(vm_factory):
    vm = vm_factory(kernel={str(probe_elf)!r}, cmdline="id={i}")
    vm.start()
    assert vm.wait(timeout=30).reason == "reset"
    assert "id={i}" in vm.console_log
""" for i in range(6))
    result = run(pytester, tests, "-n", "2")
    result.assert_outcomes(passed=6)
    assert "2 workers" in result.stdout.str()
    # Explicit gateways, the form remote machines take (ssh=host//python=... instead of popen).
    result = run(pytester, tests, "--dist", "load", "--tx", f"2*popen//python={sys.executable}")
    result.assert_outcomes(passed=6)


def test_vm_template_boots_once_and_forks_a_clone_per_test(pytester, probe_elf):
    tests = "\n".join(f"""
def test_{mark}(vm_template):
    assert vm_template.state == "running"
    vm_template.write("{mark}")
    m = vm_template.expect(r"PROBE: tick (\\d+) mark={mark} ", timeout=30)
    first = int(re.search(r"PROBE: tick (\\d+) ", vm_template.console_log).group(1))
    print("FIRST", first)
    assert set(re.findall(r"mark=(\\S)", vm_template.console_log)) <= {{"-", "{mark}"}}
""" for mark in "abc")
    result = run(pytester, "import re\n" + tests, f"--vmm-kernel={probe_elf}", "--vmm-cmdline=probe.end=tick",
                 "--vmm-memory=64", "--vmm-template-ready=PROBE: tick 3 ", "-s")
    result.assert_outcomes(passed=3)
    firsts = {int(x) for x in re.findall(r"FIRST (\d+)", result.stdout.str())}
    # Every clone starts from the same point of the one template, after tick 3 (how soon after
    # depends on how quickly the host pauses it: not checked).
    assert len(firsts) == 1 and firsts.pop() >= 4, result.stdout.str()
