"""Benchmark case 15: a command in the host's userspace, ``--root host -- true``, against
virtme-ng's ``vng -- true``, in the lab.

Both boot Debian's generic kernel (its virtio-fs and 9p are modules) on the host's own root
and run ``true`` there, and the wall time from exec to exit is measured, one boot per sample,
interleaved. Ours is ``python -m vmm_reference --root host`` with the guests' initramfs for
that kernel (``fetch_lab().initrd``); vng (``pip install virtme-ng``, outside the repository:
pass ``--vng PATH`` or set ``VMM_REFERENCE_VNG``; skipped with the reason otherwise) gets the
kernel's unpacked package, for which its ``--mods auto`` needs ``depmod``/``modprobe`` (Debian's
``kmod``, fetched into the asset cache with ``apt-get download``, never installed) and a static
busybox (the assets' own). Over virtio-fs vng needs virtiofsd (``--virtiofsd PATH``); without
it only the 9p rows run (vng ``--force-9p``, ours ``--root-protocol 9p``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from common import RUN, Row, lab_json
from vmm_reference.assets import cache_dir, fetch_lab
from vmm_reference.lab import host_python_command, lab_available

CASE = "15 host root"
CMDLINE = "reboot=k panic=-1 quiet"


def kmod_tools() -> Path:
    """A directory with ``depmod`` and ``modprobe`` (Debian's kmod, unpacked in the asset cache)."""
    from vmm_reference.assets.debian import _download

    base = cache_dir() / "kmod-tools"
    tools = base / "bin"
    if not (tools / "depmod").exists():
        kmod = _download(["kmod"], base / "deb")["kmod"] / "bin" / "kmod"
        tools.mkdir(parents=True, exist_ok=True)
        for name in ("depmod", "modprobe"):
            (tools / name).unlink(missing_ok=True)
            (tools / name).symlink_to(kmod)
    return tools


def prepare(tools: Path) -> None:
    """``depmod`` of the generic kernel's unpacked modules (writes only their modules.dep & co.)."""
    lab = fetch_lab()
    root = lab.modules.parent.parent.parent
    if not (lab.modules / "modules.dep").exists():
        subprocess.run([str(tools / "depmod"), "-a", "-b", str(root), lab.modules.name], check=True)


def wall(args: list[str], env: Optional[dict[str, str]] = None, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds from exec to exit of ``args``, whose exit status must be one of ``ok``."""
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=1200)
    took = time.perf_counter() - t0
    if done.returncode not in ok:
        raise RuntimeError(f"{args[:3]}... exited {done.returncode}: {done.stderr.decode(errors='replace')[-800:]}")
    return took


# vng's exit status where the host has no udevd (this one): its init finds no by-name
# virtio-serial ports, runs the command on the console instead and cannot hand its status
# back, so vng exits 255 however the command ended; `vng_ran_it` checks once that it ran.
VNG_OK = (0, 255)


def vng_ran_it(args: list[str], env: dict[str, str]) -> None:
    """``args -- true`` with vng's console shown: the guest must say the command exited 0."""
    done = subprocess.run([*args, "--verbose", "--", "true"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=1200)
    out = (done.stdout + done.stderr).decode(errors="replace")
    if done.returncode not in VNG_OK or not ("script exited with code 0" in out or done.returncode == 0):
        raise RuntimeError(f"vng did not run the command ({done.returncode}): {out[-800:]}")


def inner_vng(reps: int, vng: Optional[str], tools: Optional[str], virtiofsd: Optional[str]) -> dict[str, list[float]]:
    """Run inside the lab: every runner's wall times, interleaved."""
    lab = fetch_lab()
    ours = [sys.executable, "-m", "vmm_reference", "--kernel",
            f"path={lab.bzimage},initrd={lab.initrd},cmdline={CMDLINE}", "--root", "host"]
    runners: list[tuple[str, Callable[[], float]]] = [
        ("ours_virtiofs", lambda: wall([*ours, "--", "true"])),
        ("ours_9p", lambda: wall([*ours, "--root-protocol", "9p", "--", "true"]))]
    if vng and tools:
        extra = [str(Path(vng).parent), tools, *([str(Path(virtiofsd).parent)] if virtiofsd else [])]
        path = os.pathsep.join([*extra, os.environ["PATH"]])  # vng runs virtme-run from its own bin
        env = {**os.environ, "PATH": path}
        base = [vng, "--busybox", str(lab.busybox), "--memory", "256M", "-r", str(lab.bzimage)]
        for name, extra_args in [("vng_9p", ["--force-9p"]), *([("vng_virtiofs", [])] if virtiofsd else [])]:
            vng_ran_it(base + extra_args, env)
            runners.append((name, lambda a=base + extra_args: wall([*a, "--", "true"], env, VNG_OK)))
    out: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, fn in runners:
            out.setdefault(name, []).append(fn())
    return out


def case_lab_vng(reps: int, vng: Optional[str], virtiofsd: Optional[str]) -> list[Row]:
    metric = ("`--root host -- true`, exec to exit, Debian generic kernel on the host's root over {}, "
              "nested-KVM lab (emulated: ratio only)")
    why = lab_available()
    rows_of = [("virtiofs", "vng_virtiofs", "vng (QEMU + virtiofsd) in the same lab"),
               ("9p", "vng_9p", "vng --force-9p (QEMU 9p) in the same lab")]
    if why:
        return [Row(CASE, metric.format(p), "s", [], note=f"not run: {why}") for p, _, _ in rows_of]
    args = [str(RUN), "--inner-vng", str(reps)]
    if vng:
        tools = kmod_tools()
        prepare(tools)
        args += ["--vng", str(Path(vng).resolve()), "--vng-tools", str(tools)]
    if virtiofsd:
        args += ["--virtiofsd", str(Path(virtiofsd).resolve())]
    s = lab_json(host_python_command(args), "VNG", timeout=5400)
    rows = []
    for protocol, peer, name in rows_of:
        got = s.get(peer, [])
        note = ""
        if not vng:
            note = "vng not run: pass --vng PATH (`pip install virtme-ng` in a virtualenv outside the repository)"
        elif not got:
            note = "vng over virtio-fs not run: pass --virtiofsd PATH (`cargo install virtiofsd`)"
        rows.append(Row(CASE, metric.format(protocol), "s", s[f"ours_{protocol}"], got, name,
                        "≤ 0.5× peer" if got else "", (lambda r: r.ratio is not None and r.ratio <= 0.5) if got
                        else None, note=note))
    return rows
