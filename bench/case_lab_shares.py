"""Benchmark case 14: host directories in the guest (virtio-fs and 9p), in the lab.

Debian's generic kernel (it has the virtiofs and 9p modules; the cloud kernel has no 9p) boots
with a shell on its console, mounts the share, and busybox's ``time`` measures, from cold
caches: ``ls -lR`` of a tree of 20,000 files in 200 directories (an lstat of every one) and a
``dd`` of a 256 MiB file. Ours serves the share in the VMM (virtio-fs and virtio-9p); the peers
are QEMU with virtiofsd (``cargo install virtiofsd``, outside the repository: pass
``--virtiofsd PATH`` or set ``VMM_REFERENCE_VIRTIOFSD``; its rows are skipped with the reason
otherwise) and QEMU's own 9p server (``-fsdev local``), one boot per sample, interleaved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from common import GUEST_PROMPT, MIB, QEMU, RUN, ProcConsole, Row, VmConsole, at_least_peer, lab_json
from vmm_reference import Share, Vm
from vmm_reference.assets import GUEST_READY_MARKER, fetch_lab
from vmm_reference.lab import host_python_command, lab_available

CASE = "14 shares"
TREE_DIRS, TREE_FILES = 200, 100  # 20,000 files
BIG_MIB = 256
TAG = "bench"
CMDLINE = "reboot=k panic=-1 quiet vmm.init=shell"
MOUNTS = {
    "virtiofs": f"mount -t virtiofs {TAG} /mnt",
    "9p": f"mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 {TAG} /mnt",
}


def make_share(root: Path) -> Path:
    """The shared tree: ``tree/`` with TREE_DIRS directories of TREE_FILES small files, and a
    BIG_MIB MiB file of random bytes."""
    share = root / "share"
    for d in range(TREE_DIRS):
        sub = share / "tree" / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(TREE_FILES):
            (sub / f"f{f:03d}.py").write_bytes(b"x" * (f % 7 * 100))
    with (share / "big.bin").open("wb") as out:
        for _ in range(BIG_MIB):
            out.write(os.urandom(MIB))
    return share


def timed(console: Any, command: str) -> float:
    """Seconds busybox's ``time`` gives ``command`` in the guest."""
    console.write(f"time sh -c '{command}'\n".encode())
    m = console.expect(r"real\s+(\d+)m\s*([\d.]+)s", 1200)
    seconds = int(m.group(1)) * 60 + float(m.group(2))
    console.expect(GUEST_PROMPT, 60)
    return max(seconds, 0.001)


def share_rates(console: Any, protocol: str) -> dict[str, float]:
    """Files per second of the tree's ``ls -lR`` and MB/s of the big file's ``dd``, from cold caches."""
    console.expect(GUEST_READY_MARKER, 600)
    console.expect(GUEST_PROMPT, 60)
    console.write(f"mkdir -p /mnt && {MOUNTS[protocol]} && echo MOUNT-OK\n".encode())
    console.expect("^MOUNT-OK", 120)
    console.expect(GUEST_PROMPT, 60)
    drop = "echo 3 >/proc/sys/vm/drop_caches"
    stat_s = timed(console, f"{drop}; ls -lR /mnt/tree >/dev/null")
    read_s = timed(console, f"{drop}; dd if=/mnt/big.bin of=/dev/null bs=1M 2>/dev/null")
    return {"stat": TREE_DIRS * TREE_FILES / stat_s, "read": BIG_MIB * MIB / 1e6 / read_s}


def ours(g: Any, share: Path, protocol: str) -> dict[str, float]:
    console = VmConsole(Vm(memory_mib=384, kernel=g.bzimage, initrd=g.initrd, cmdline=CMDLINE,
                           shares=[Share(share, tag=TAG, read_only=True, protocol=protocol)]))
    try:
        console.vm.start()
        return share_rates(console, protocol)
    finally:
        console.close()


def qemu_args(g: Any) -> list[str]:
    return [*QEMU, "-m", "384", "-kernel", str(g.bzimage), "-initrd", str(g.initrd), "-append",
            f"console=ttyS0 {CMDLINE}", "-global", "virtio-mmio.force-legacy=false"]


def qemu_9p(g: Any, share: Path) -> dict[str, float]:
    console = ProcConsole([*qemu_args(g), "-fsdev", f"local,id=f0,path={share},security_model=none,readonly=on",
                           "-device", f"virtio-9p-device,fsdev=f0,mount_tag={TAG}"])
    try:
        return share_rates(console, "9p")
    finally:
        console.close()


def qemu_virtiofsd(g: Any, share: Path, virtiofsd: str, scratch: Path) -> dict[str, float]:
    sock = scratch / "virtiofsd.sock"
    sock.unlink(missing_ok=True)
    daemon = subprocess.Popen([virtiofsd, f"--socket-path={sock}", f"--shared-dir={share}", "--cache=auto",
                               "--sandbox=none", "--readonly"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        end = time.monotonic() + 60
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() > end:
                err = daemon.stderr.read().decode(errors="replace") if daemon.stderr else ""
                raise RuntimeError(f"virtiofsd did not start: {err[-500:]}")
            time.sleep(0.05)
        console = ProcConsole([*qemu_args(g), "-object", "memory-backend-memfd,id=mem,size=384M,share=on",
                               "-machine", "memory-backend=mem", "-chardev", f"socket,id=c0,path={sock}",
                               "-device", f"vhost-user-fs-device,chardev=c0,tag={TAG}"])
        try:
            return share_rates(console, "virtiofs")
        finally:
            console.close()
    finally:
        daemon.kill()
        daemon.wait()


def inner_shares(reps: int, virtiofsd: Optional[str]) -> dict[str, dict[str, list[float]]]:
    """Run inside the lab: every runner's rates, interleaved, one boot per sample."""
    g = fetch_lab()
    out: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as d:
        scratch = Path(d)
        share = make_share(scratch)
        runners: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("ours_virtiofs", lambda: ours(g, share, "virtiofs")), ("ours_9p", lambda: ours(g, share, "9p")),
            ("qemu_9p", lambda: qemu_9p(g, share))]
        if virtiofsd:
            runners.append(("qemu_virtiofsd", lambda: qemu_virtiofsd(g, share, virtiofsd, scratch)))
        for _ in range(reps):
            for name, fn in runners:
                for metric, value in fn().items():
                    out.setdefault(metric, {}).setdefault(name, []).append(value)
        shutil.rmtree(share)
    return out


def case_lab_shares(reps: int, virtiofsd: Optional[str]) -> list[Row]:
    stat_metric = (f"Debian guest `ls -lR` of {TREE_DIRS * TREE_FILES:,} files on a share, cold caches, "
                   "nested-KVM lab (emulated: ratio only)")
    read_metric = f"Debian guest `dd` of a {BIG_MIB} MiB file on a share, nested-KVM lab (emulated: ratio only)"
    why = lab_available()
    if why:
        return [Row(CASE, m, u, [], note=f"not run: {why}") for m, u in ((stat_metric, "files/s"),
                                                                        (read_metric, "MB/s"))]
    fetch_lab()
    args = [str(RUN), "--inner-shares", str(reps)]
    if virtiofsd:
        args += ["--virtiofsd", str(Path(virtiofsd).resolve())]
    s = lab_json(host_python_command(args), "SHARES", timeout=5400)
    no_daemon = "" if virtiofsd else ("virtiofsd not run: pass --virtiofsd PATH (`cargo install virtiofsd`, "
                                      "outside the repository; none is shipped)")
    rows = []
    for key, metric, unit in (("stat", stat_metric, "files/s"), ("read", read_metric, "MB/s")):
        v = s[key]
        fsd = v.get("qemu_virtiofsd", [])
        rows.append(Row(CASE, metric + ", ours virtio-fs", unit, v["ours_virtiofs"], fsd,
                        "QEMU + virtiofsd in the same lab", "≥ 1.0× peer" if fsd else "",
                        at_least_peer if fsd else None, note=no_daemon))
        five = key == "stat"
        rows.append(Row(CASE, metric + ", ours virtio-fs", unit, v["ours_virtiofs"], v["qemu_9p"],
                        "QEMU 9p in the same lab", "≥ 5× peer" if five else "",
                        (lambda r: r.ratio is not None and r.ratio >= 5.0) if five else None))
        rows.append(Row(CASE, metric + ", ours 9p", unit, v["ours_9p"], v["qemu_9p"],
                        "QEMU 9p in the same lab", "≥ 1.0× peer", at_least_peer))
    return rows
