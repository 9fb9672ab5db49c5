"""The nested-KVM lab: run a command where ``/dev/kvm`` is backed by (emulated) hardware.

On hosts whose KVM cannot finish booting stock kernels (such as PVM, see the README), the lab
gives a real one: QEMU in software emulation (TCG) with an AMD CPU model that has SVM boots
Debian's generic kernel, which loads ``kvm`` and ``kvm-amd`` and so offers a nested
``/dev/kvm``. The host's root filesystem is shared read-only over 9p and the command runs
chrooted into it, so the host's Python, virtualenvs, checkout and asset cache are all there.
A tmpfs is mounted at ``/run`` and ``TMPDIR`` points into it for scratch files; the command
sees ``VMM_REFERENCE_OFFLINE=1`` and ``VMM_REFERENCE_CACHE`` set to the host's asset cache, so
``fetch_guest()`` and ``python -m vmm_reference.assets --env`` work inside without network.
The console is shown without QEMU's warnings about CPU features TCG does not emulate and
without the firmware's banner and terminal control sequences, until the command starts.

``python -m vmm_reference.lab 'COMMAND'`` prints the lab's console and exits with COMMAND's
status. Needs ``qemu-system-x86_64`` (Debian ``qemu-system-x86``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .assets import LabAssets, cache_dir, fetch_lab
from .initramfs import CpioEntry, write_cpio

__all__ = ["LabResult", "host_python_command", "lab_available", "main", "run_in_lab"]

EXIT_MARKER = "LAB-EXIT"

# Load order matters: each module's dependencies come first.
_MODULES = [
    "virt/lib/irqbypass", "arch/x86/kvm/kvm", "drivers/crypto/ccp/ccp", "arch/x86/kvm/kvm-amd",
    "drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev", "drivers/virtio/virtio_pci", "net/9p/9pnet",
    "net/9p/9pnet_virtio", "fs/netfs/netfs", "fs/fscache/fscache", "fs/9p/9p",
    # TAP devices for the network tests (in their own network namespaces); a dummy interface
    # with a default route gives passt (user-mode networking) its template interface there.
    "drivers/net/tun", "drivers/net/dummy",
]

_INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /mods/$m.ko 2>/dev/null || echo "LAB: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host || echo "LAB: 9p mount failed"
for d in dev proc sys; do mount --bind /$d /host/$d; done
mount -t tmpfs run /host/run
mkdir -p /host/run/lab-tmp
[ -c /dev/kvm ] && echo "LAB: /dev/kvm ready" || echo "LAB: no /dev/kvm"
chroot /host /usr/bin/env TMPDIR=/run/lab-tmp HOME=/run/lab-tmp PATH="$(cat /path)" \\
  VMM_REFERENCE_OFFLINE=1 VMM_REFERENCE_CACHE="$(cat /cache)" \\
  /bin/sh -c "cd $(cat /cwd) && $(cat /cmd)" </dev/null
echo "{EXIT_MARKER} $?"
poweroff -f
"""


@dataclass(frozen=True)
class LabResult:
    """What a lab run printed and how its command ended."""

    output: str
    status: Optional[int]
    """The command's exit status; None if the lab never reported one (it crashed or timed out)."""


def lab_available() -> Optional[str]:
    """Return None if the lab can run here, else why not."""
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is missing (install Debian's qemu-system-x86)"
    if not shutil.which("apt-get"):
        return "apt-get is missing: the lab's kernel comes from Debian's packages"
    return None


def _tsc_khz() -> Optional[int]:
    # The lab kernel's TSC calibration can hang under TCG; tell it the host's frequency.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return None


KICK_INTERVAL = 1.0
"""Seconds between the keyboard events that keep the lab's CPU from sleeping forever."""


def _kick(monitor: Path, stop: threading.Event) -> None:
    """Send the lab a harmless key press every :data:`KICK_INTERVAL` seconds through QEMU's monitor.

    QEMU's emulated CPU (TCG, QEMU 7.2) running nested SVM sometimes halts with its local APIC
    timer interrupt pending in the IRR but never delivered: the lab's kernel then sleeps
    forever and every guest in it with it (seen in ``info lapic``: ``IRR 236``, ``HLT=1``).
    Any other interrupt makes QEMU re-evaluate the APIC and delivers the lost one, so a key
    press (a Shift, which the lab's keyboard driver swallows) each second bounds such a stall.
    """
    sock: Optional[socket.socket] = None
    try:
        while not stop.wait(KICK_INTERVAL):
            if sock is None:
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(5)
                    sock.connect(str(monitor))
                except OSError:
                    sock = None  # QEMU has not opened the monitor yet
                    continue
            try:
                sock.sendall(b"sendkey shift\n")
                sock.recv(65536)  # the monitor's echo and prompt: nothing to read in them
            except socket.timeout:
                continue
            except OSError:
                return  # QEMU went away
    finally:
        if sock is not None:
            sock.close()


def _initramfs(assets: LabAssets, command: str, cwd: str, out: Path) -> None:
    kernel_dir = assets.modules / "kernel"
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in ["bin", "dev", "proc", "sys", "mods", "host"]]
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", stat.S_IFREG | 0o755, assets.busybox.read_bytes()))
    names = []
    for module in _MODULES:
        path = kernel_dir / f"{module}.ko"
        if path.exists():
            name = Path(module).name
            names.append(name)
            entries.append(CpioEntry(f"mods/{name}.ko", stat.S_IFREG | 0o644, path.read_bytes()))
    entries += [
        CpioEntry("modules", stat.S_IFREG | 0o644, " ".join(names).encode()),
        CpioEntry("cmd", stat.S_IFREG | 0o644, command.encode()),
        CpioEntry("cwd", stat.S_IFREG | 0o644, shlex.quote(cwd).encode()),
        CpioEntry("path", stat.S_IFREG | 0o644, os.environ.get("PATH", "/usr/bin:/bin").encode()),
        # The host's asset cache, read-only in the lab, which has no network: commands find
        # the guest assets there without asking apt (VMM_REFERENCE_OFFLINE).
        CpioEntry("cache", stat.S_IFREG | 0o644, str(cache_dir().resolve()).encode()),
        CpioEntry("init", stat.S_IFREG | 0o755, _INIT.encode()),
    ]
    out.write_bytes(write_cpio(entries))


def host_python_command(args: list[str], env: Optional[dict[str, str]] = None) -> str:
    """Build a lab command line that runs this interpreter with ``args`` on the host's asset cache.

    The lab sees the host's root, so this interpreter and its virtualenv are there; the asset
    cache is the host's (the lab's HOME differs) and apt is not asked (the lab has no network).
    Output goes through a pipe rather than the lab's console (a tty), streamed, so a lab that
    times out still shows how far it got; the command's exit status is kept.
    """
    variables = {"VMM_REFERENCE_CACHE": str(cache_dir().resolve()), "VMM_REFERENCE_OFFLINE": "1", **(env or {})}
    inner = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in variables.items()), shlex.quote(sys.executable),
                      *(shlex.quote(a) for a in args)])
    return f'({inner}; echo $? >"$TMPDIR/status") 2>&1 | cat; exit "$(cat "$TMPDIR/status")"'


_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[A-Za-z])")
_TCG_WARNING = "qemu-system-x86_64: warning: TCG doesn't support"
_FIRMWARE = re.compile(r"^\s*(SeaBIOS \(version [^)]*\)|Booting from ROM\.*)")


def _clean_boot_line(line: str) -> Optional[str]:
    """Return a console line from before the command starts, cleaned; None if nothing is left.

    Cleaned of QEMU's warnings about CPU features TCG does not emulate, and of the firmware's
    banner and terminal control sequences (screen clear, line wrap off).
    """
    text = _ESCAPES.sub("", line)
    if text.startswith(_TCG_WARNING):
        return None
    while _FIRMWARE.match(text):
        text = _FIRMWARE.sub("", text, count=1)
    return text if text.strip() else None


def run_in_lab(
    command: str,
    timeout: float = 900,
    memory_mib: int = 4096,
    cwd: Optional[str] = None,
    echo: bool = False,
) -> LabResult:
    """Run ``command`` (a shell command line) inside the lab, from ``cwd`` (default: the current directory).

    Returns the lab's console and the command's exit status. ``echo`` copies the console to
    stdout as it runs.
    """
    why = lab_available()
    if why:
        raise RuntimeError(f"the nested-KVM lab cannot run: {why}")
    assets = fetch_lab()
    cwd = cwd or os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        initrd = Path(tmp) / "lab.cpio"
        _initramfs(assets, command, cwd, initrd)
        append = "console=ttyS0 reboot=k panic=-1 quiet"
        khz = _tsc_khz()
        if khz:
            append += f" tsc_early_khz={khz}"
        args = [
            "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-cpu", "EPYC", "-m", str(memory_mib),
            "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-kernel", str(assets.bzimage), "-initrd", str(initrd), "-append", append,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]
        monitor = Path(tmp) / "monitor.sock"
        args += ["-monitor", f"unix:{monitor},server,nowait"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        lines: list[str] = []
        stop = threading.Event()
        kicker = threading.Thread(target=_kick, args=(monitor, stop), daemon=True)
        kicker.start()
        try:
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            booting = True
            for raw in proc.stdout:
                cleaned: Optional[str] = raw.decode("utf-8", errors="replace")
                if booting and cleaned is not None:
                    cleaned = _clean_boot_line(cleaned)
                    booting = not (cleaned or "").startswith("LAB: ")
                if cleaned is None:
                    continue
                line = cleaned
                lines.append(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait()
            timer.cancel()
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            kicker.join()
    output = "".join(lines)
    found = re.findall(rf"^{EXIT_MARKER} (\d+)\s*$", output, re.M)
    return LabResult(output, int(found[-1]) if found else None)


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: ``python -m vmm_reference.lab 'COMMAND'``."""
    parser = argparse.ArgumentParser(prog="python -m vmm_reference.lab", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", help="shell command to run inside the lab")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the lab is stopped")
    parser.add_argument("--memory-mib", type=int, default=4096, help="the lab's RAM")
    args = parser.parse_args(argv)
    result = run_in_lab(args.command, timeout=args.timeout, memory_mib=args.memory_mib, echo=True)
    if result.status is None:
        print("vmm_reference.lab: the lab ended without the command's status", file=sys.stderr)
        return 125
    return result.status


if __name__ == "__main__":
    sys.exit(main())
