"""On hosts without hardware-backed KVM, run the full-boot tests inside the nested-KVM lab."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from vmm_reference.assets import AssetError, cache_dir, fetch_guest
from vmm_reference.lab import lab_available, run_in_lab
from vmm_reference.pytest_plugin import skip_or_fail

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parent.parent
FULL_BOOT_TESTS = 10  # in tests/test_full_boot.py, counting parameters


def test_full_boot_tests_pass_in_the_lab(request, kvm_kind):
    if kvm_kind == "hardware":
        pytest.skip("KVM is hardware-backed here: tests/test_full_boot.py runs directly")
    why = lab_available()
    if why:
        skip_or_fail(request.config, why)
    try:
        fetch_guest()  # on the host, where apt and the network are
    except AssetError as e:
        skip_or_fail(request.config, str(e))
    command = " ".join([
        f"VMM_REFERENCE_CACHE={shlex.quote(str(cache_dir().resolve()))}", "VMM_REFERENCE_OFFLINE=1",
        shlex.quote(sys.executable), "-m", "pytest", "-p", "no:cacheprovider", "-v", "--vmm-strict",
        "-o", "addopts=", "-o", "faulthandler_timeout=200", "tests/test_full_boot.py",
    ])
    # Through a pipe rather than to the lab's console (a tty), streamed so that a lab that
    # times out still shows how far it got.
    command = f'({command}; echo $? >"$TMPDIR/status") 2>&1 | cat; exit "$(cat "$TMPDIR/status")"'
    # A lab that reports no status at all (QEMU itself stopped; see lab._kick for the stall
    # this once was) is run once more. A run that reports a status, passing or failing, is final.
    for _attempt in range(2):
        result = run_in_lab(command, timeout=400, cwd=str(REPO))
        if result.status is not None:
            break
    tail = "\n".join(result.output.splitlines()[-40:])
    assert "LAB: /dev/kvm ready" in result.output, tail
    assert result.status == 0, tail
    summary = re.search(r"^=+ (\d+) passed(.*) =+\s*$", result.output, re.M)
    assert summary and int(summary.group(1)) == FULL_BOOT_TESTS, tail
    assert "skipped" not in summary.group(2), tail
