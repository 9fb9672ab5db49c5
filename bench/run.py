"""Benchmarks: vmm-reference against QEMU's microvm and a raw KVM_RUN loop, side by side.

Every case runs ours and the peer in the same run, interleaved, several times, and reports
min/median/max and the ratio ours/peer of the medians, with PASS/MISS against the targets the
README states. Writes ``bench/results.md`` and ``bench/results.png``.

    python bench/run.py            # everything (a few minutes)
    python bench/run.py --quick    # fewer repetitions, no lab case

Needs: the probe guest (``make -C tests/guest``), the raw loop
(``cargo build --release --example raw_kvm_loop``), ``qemu-system-x86_64`` (Debian's
``qemu-system-x86``), the guest assets (``python -m vmm_reference.assets``) and matplotlib.
"""


from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from case_console import case_console
from case_disks import case_disks
from case_exits import case_exits
from case_gdb import case_gdb
from case_kernel import case_kernel
from case_lab_agent import case_lab_agent, inner_agent
from case_lab_disks import case_lab_disks, inner_disks
from case_lab_shares import case_lab_shares, inner_shares
from case_lab_snapshot import case_lab_snapshot, inner_snapshot
from case_lab_tap import case_lab_tap, inner_tap_ns
from case_lab_vng import case_lab_vng, inner_vng
from case_memory import case_memory
from case_scale import case_scale
from case_snapshots import case_fork
from case_start import case_start
from case_userspace import case_userspace, userspace_samples
from common import EXTRA_SECTIONS, PROBE, RAW_LOOP, REPO, RUN, Row, fmt_ratio, spread, tsc_hz
from vmm_reference.host import detect_kvm_kind

# Re-exported for tests/test_bench.py (`import run as bench`).
__all__ = ["RAW_LOOP", "Row", "case_console", "case_exits", "case_gdb", "case_scale", "case_start", "host_cpu", "main",
           "markdown", "qemu_probe", "tsc_hz"]
from common import qemu_probe  # noqa: E402

# ---- report ---------------------------------------------------------------------------------

def host_cpu() -> str:
    """The host CPU's model, shortly: ``Intel Xeon``, ``AMD EPYC 7R13``."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    for noise in ("(R)", "(TM)", "(tm)", " CPU", " Processor", " processor"):
        model = model.replace(noise, "")
    return re.sub(r"\s+", " ", model.split("@")[0]).strip()
def row_cpu(r: Row) -> str:
    """Where a row ran: the host's CPU, or the lab's emulated one on it."""
    inside = "lab" in r.metric.lower() or "lab" in r.peer_name.lower()
    return f"lab (emulated CPU) on {host_cpu()}" if inside else host_cpu()
def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()
    kind = detect_kvm_kind()
    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, /dev/kvm: {kind}"
            f"{' (kvm_pvm: nested, no VMX/SVM)' if kind == 'pvm' else ''}; {qemu[0] if qemu else 'no QEMU'}")
def markdown(rows: list[Row], header: str) -> str:
    out = [header, "", "| case | metric | unit | ours min / **median** / max | peer | peer min / **median** / max "
           "| ours/peer | target | | CPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = fmt_ratio(r.ratio)
        out.append(f"| {r.case} | {r.metric} | {r.unit} | {spread(r.ours)} | {r.peer_name or '–'} | "
                   f"{spread(r.peer)} | {ratio} | {r.target or '–'} | {r.verdict} | {row_cpu(r)} |")
    notes = [f"- {r.case}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", *notes]
    for section in EXTRA_SECTIONS:
        out += ["", section.rstrip("\n")]
    return "\n".join(out) + "\n"
def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.ratio is not None]
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(shown) + 1.5))
    better = {"ms": "lower is better", "s": "lower is better", "MiB": "lower is better"}
    labels = [f"{r.case}: {r.metric[:44]} vs {r.peer_name} ({better.get(r.unit, 'higher is better')})"
              for r in shown]
    colors = ["tab:green" if r.verdict == "PASS" else "tab:red" if r.verdict == "MISS" else "tab:gray"
              for r in shown]
    ax.barh(range(len(shown)), [r.ratio or 0 for r in shown], color=colors)
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ours / peer (median); green PASS, red MISS, grey no target")
    ax.set_title("vmm-reference benchmarks")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
def merge_rows(table: str, rows: list[Row]) -> str:
    """``table`` (the README's, from a whole run) with the rows and notes of ``rows``' cases put
    in place of those cases' old ones (an ``--only`` run), each new note saying when it ran."""
    cases = {r.case for r in rows}
    fresh = markdown(rows, "").splitlines()
    new_rows = [line for line in fresh[4:] if line.startswith("| ")]
    new_notes = [line for line in fresh if line.startswith("- ")]
    new_notes.append(f"- {', '.join(sorted(cases))}: taken {time.strftime('%Y-%m-%d')} on this machine with "
                     "`--only`, after the run above.")
    lines = [line for line in table.splitlines()
             if not (line.startswith("| ") and line.split(" | ")[0][2:] in cases)
             and not any(line.startswith(f"- {c}:") for c in cases)]
    # The main table: from its header to the first line that is no table row.
    top = next(i for i, line in enumerate(lines) if line.startswith("| case |"))
    end = next((i for i in range(top, len(lines)) if not lines[i].startswith("|")), len(lines))
    lines[end:end] = new_rows
    end += len(new_rows)
    # The notes: after one blank line below the table; a block of their own if there are none.
    at = end + 1 if end < len(lines) and not lines[end] else end
    while at < len(lines) and lines[at].startswith("- "):
        at += 1
    lines[at:at] = new_notes if at > end else ["", *new_notes]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no lab case")
    parser.add_argument("--out", default=str(REPO / "bench"), help="where results.md and results.png go")
    parser.add_argument("--readme", action="store_true", help="also put the table into README.md")
    parser.add_argument("--firecracker", metavar="PATH", default=os.environ.get("VMM_REFERENCE_FIRECRACKER"),
                        help="a Firecracker binary (default: $VMM_REFERENCE_FIRECRACKER): adds it as a peer in "
                        "the boot and lab cases; those rows are skipped, with the reason, without it")
    parser.add_argument("--virtiofsd", metavar="PATH", default=os.environ.get("VMM_REFERENCE_VIRTIOFSD"),
                        help="a virtiofsd binary (default: $VMM_REFERENCE_VIRTIOFSD; `cargo install virtiofsd`): "
                        "adds QEMU + virtiofsd as the shares case's peer; those rows are skipped without it")
    parser.add_argument("--inner-userspace", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--vng", metavar="PATH", default=os.environ.get("VMM_REFERENCE_VNG"),
                        help="virtme-ng's vng (default: $VMM_REFERENCE_VNG; `pip install virtme-ng` in a virtualenv "
                        "outside the repository): the host-root case's peer; its rows are skipped without it")
    parser.add_argument("--inner-shares", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--inner-vng", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--vng-tools", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--inner-disks", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--inner-agent", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--inner-tap", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--inner-tap-ns", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--inner-snapshot", type=int, metavar="REPS", help=argparse.SUPPRESS)
    parser.add_argument("--only", metavar="CASE", help="run only the cases whose name contains CASE")
    args = parser.parse_args(argv)
    if args.inner_userspace:
        print("USERSPACE " + json.dumps(userspace_samples(args.inner_userspace, args.firecracker)), flush=True)
        return 0
    if args.inner_vng:
        print("VNG " + json.dumps(inner_vng(args.inner_vng, args.vng, args.vng_tools, args.virtiofsd)), flush=True)
        return 0
    if args.inner_shares:
        print("SHARES " + json.dumps(inner_shares(args.inner_shares, args.virtiofsd)), flush=True)
        return 0
    if args.inner_disks:
        print("DISKS " + json.dumps(inner_disks(args.inner_disks, args.firecracker)), flush=True)
        return 0
    if args.inner_agent:
        print("AGENT " + json.dumps(inner_agent(args.inner_agent, args.firecracker)), flush=True)
        return 0
    if args.inner_tap:
        # The TAPs live in a network namespace of their own, so the lab's network is untouched.
        cmd = ["unshare", "--net", sys.executable, str(RUN), "--inner-tap-ns", str(args.inner_tap)]
        if args.firecracker:
            cmd += ["--firecracker", args.firecracker]
        return subprocess.run(cmd, check=False).returncode
    if args.inner_snapshot:
        print("SNAPSHOT " + json.dumps(inner_snapshot(args.inner_snapshot, args.firecracker)), flush=True)
        return 0
    if args.inner_tap_ns:
        print("TAP " + json.dumps(inner_tap_ns(args.inner_tap_ns, args.firecracker)), flush=True)
        return 0
    needs = [(PROBE, "make -C tests/guest")]
    if not args.only or args.only in "exit path":  # only case 2 runs the raw loop
        needs.append((RAW_LOOP, "cargo build --release --example raw_kvm_loop"))
    for need, how in needs:
        if not need.exists():
            print(f"missing {need}: run `{how}`", file=sys.stderr)
            return 2
    kind = detect_kvm_kind()
    hz = tsc_hz()
    reps = 3 if args.quick else 5
    started = time.perf_counter()
    rows: list[Row] = []

    def run(name: str, fn: Callable[[], list[Row]]) -> list[Row]:
        if args.only and args.only not in name:
            return []
        t = time.perf_counter()
        got = fn()
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        for r in got:
            ratio = fmt_ratio(r.ratio)
            print(f"  {r.metric} [{r.unit}]: ours {spread(r.ours)}; {r.peer_name or 'no peer'} {spread(r.peer)}; "
                  f"ratio {ratio} {r.verdict} [{row_cpu(r)}]".replace("**", ""), file=sys.stderr, flush=True)
        rows.extend(got)
        return got

    run("start latency", lambda: case_start(reps * 2))
    run("exit path", lambda: case_exits(reps, 100_000, hz))
    run("console", lambda: case_console(reps, 200_000, hz))
    run("memory", lambda: case_memory(1 if args.quick else 2))
    run("scale", lambda: case_scale(1 if args.quick else 2, 100))
    run("real kernel", lambda: case_kernel(2 if args.quick else 3, kind))
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as scratch:
        run("disks", lambda: case_disks(reps, hz, Path(scratch)))
        run("fork", lambda: case_fork(reps, Path(scratch)))
        run("gdb", lambda: case_gdb(reps, Path(scratch)))
    if not args.quick:
        run("userspace", lambda: case_userspace(5, kind, args.firecracker))
        run("disks in the lab", lambda: case_lab_disks(3, args.firecracker))
        run("vsock in the lab", lambda: case_lab_agent(3, args.firecracker))
        run("network in the lab", lambda: case_lab_tap(3, args.firecracker))
        run("snapshots in the lab", lambda: case_lab_snapshot(3, args.firecracker))
        run("shares in the lab", lambda: case_lab_shares(3, args.virtiofsd))
        run("host root in the lab", lambda: case_lab_vng(3, args.vng, args.virtiofsd))
    took = time.perf_counter() - started
    header = (f"Taken {time.strftime('%Y-%m-%d')} on: {machine()}. Whole run: {took:.0f} s. "
              f"Medians compared; ratio = ours / peer.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.only:
        (out / "results.md").write_text(markdown(rows, header))
        chart(rows, out / "results.png")
    if args.readme:
        readme = REPO / "README.md"
        text = readme.read_text()
        begin, end = "<!-- bench:begin -->\n", "<!-- bench:end -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            table = markdown(rows, header) if not args.only else merge_rows(rest.split(end, 1)[0], rows)
            readme.write_text(head + begin + table + end + rest.split(end, 1)[1])
    print(markdown(rows, header))
    return 0

if __name__ == "__main__":
    sys.exit(main())

