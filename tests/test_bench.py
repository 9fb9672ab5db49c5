"""The benchmark harness still measures: each kind of case once, small, against its real peer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import run as bench  # noqa: E402


@pytest.fixture(scope="module")
def raw_loop() -> Path:
    subprocess.run(["cargo", "build", "-q", "--release", "--example", "raw_kvm_loop"], cwd=REPO, check=True)
    return bench.RAW_LOOP


@pytest.fixture
def qemu(request, kvm_kind):
    from vmm_reference.pytest_plugin import skip_or_fail

    if kvm_kind == "none":
        skip_or_fail(request.config, "/dev/kvm is not available")
    if not shutil.which("qemu-system-x86_64"):
        skip_or_fail(request.config, "qemu-system-x86_64 is missing (Debian's qemu-system-x86)")


def test_exit_rates_of_ours_the_raw_loop_and_qemu(qemu, raw_loop, probe_elf):
    [vs_raw, vs_bare, vs_qemu, uart] = bench.case_exits(1, 5000, bench.tsc_hz())
    for row in (vs_raw, vs_bare, vs_qemu, uart):
        assert row.ours[0] > 1000 and row.peer[0] > 1000, row
        assert row.ratio is not None


def test_qemu_boots_the_probe_through_its_pvh_note(qemu, probe_elf):
    done = subprocess.run(bench.qemu_probe("probe.end=triple"), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert "PROBE: hello" in done.stdout
    assert "PROBE: pvh cmdline=probe.end=triple" in done.stdout


def test_console_rows_compare_with_the_same_guest_loop(probe_elf):
    rows = bench.case_console(1, 6400, bench.tsc_hz())  # whole 64-byte lines of text
    assert [r.peer_name for r in rows] == ["exit rate of the same guest loop, no output"] * 2
    assert all(r.ours[0] > 1000 and r.peer[0] > 1000 for r in rows), rows


def test_start_latency_and_scale_rows(qemu, probe_elf, native_cli):
    start = bench.case_start(1)
    assert all(r.ours[0] > 0 and r.peer[0] > 0 for r in start)
    scale = bench.case_scale(1, 10)
    assert all(r.ours[0] > 0 for r in scale)


def test_gdb_round_trip_rows(qemu, probe_elf, tmp_path):
    rows = bench.case_gdb(1, tmp_path)
    assert [r.peer_name for r in rows] == ["QEMU microvm's gdb stub"] * 2
    assert all(0 < r.ours[0] < 1e6 and 0 < r.peer[0] < 1e6 for r in rows), rows


def test_markdown_and_verdicts():
    rows = [bench.Row("c", "m", "ms", [1.0, 2.0, 3.0], [4.0], "peer", "≤ 0.5×", lambda r: r.ratio <= 0.5)]
    text = bench.markdown(rows, "header")
    assert f"| c | m | ms | 1 / **2** / 3 | peer | 4 / **4** / 4 | 0.50 | ≤ 0.5× | PASS | {bench.host_cpu()} |" in text
