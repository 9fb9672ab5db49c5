r"""The ``vmm-reference`` command: boot a kernel and attach the terminal to its serial console.

The syntax is the original vmm-reference's::

    vmm-reference --memory mem_size_mib=1024 --vcpus num_vcpus=1 \\
        --kernel path=/path/to/vmlinux,himem_start=1048576,cmdline="console=ttyS0 pci=off" \\
        --blk path=/path/to/rootfs.ext4 --blk path=/path/to/data.img,read_only=on \\
        --net tap=tap0,mac=06:00:ac:10:00:02 --net user,forward=8080:80

Each option takes comma-separated ``key=value`` pairs. An empty value means the default; an
unknown key is an error. The guest's console goes to stdout and stdin goes to the guest
(the terminal is put in raw mode and restored on every exit path). Press Ctrl-A then x to end
the VM from a terminal. The exit status is 0 when the guest reset, shut down or powered off the
machine; the guest's code when it wrote one to the exit device; 1 when the VM failed, panicked
or was killed; 2 on a usage error (a malformed option, or a value the VMM does not accept,
including a missing file).

The wheel installs the same command as a native program (``src/cli`` in the Rust core), which
starts in a millisecond; this module is ``python -m vmm_reference``, and runs ``-- COMMAND`` for
both.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import sys
import threading
from typing import BinaryIO, Callable, Optional, TextIO

from . import __version__
from .devices import Disk, NetArg, Tap, UserNet
from .errors import VmConfigError, VmError, VmFileNotFoundError
from .vm import DEFAULT_CMDLINE, Vm

__all__ = ["EXIT_USAGE", "CliError", "main", "parse_disk", "parse_key_values", "parse_net"]

_KERNEL_KEYS = ("path", "himem_start", "cmdline", "initrd")
_BLK_KEYS = ("path", "read_only", "serial")
_TAP_KEYS = ("tap", "mac")
_USER_KEYS = ("forward", "mac")
_BOOLS = {"on": True, "true": True, "off": False, "false": False}
_CTRL_A = 0x01


class CliError(ValueError):
    """A command-line option is malformed."""


#: The exit status of a usage error: a malformed option, or a value the VMM refuses.
EXIT_USAGE = 2


class _Once(argparse.Action):
    """An option that takes one value and may be given once (a second one is a usage error)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: Optional[str] = None) -> None:
        if getattr(namespace, f"_seen_{self.dest}", False):
            parser.error(f"argument {'/'.join(self.option_strings)}: given twice (it takes one value)")
        setattr(namespace, f"_seen_{self.dest}", True)
        setattr(namespace, self.dest, values)


def parse_key_values(option: str, text: str, keys: tuple[str, ...]) -> dict[str, str]:
    """Parse ``key=value,key=value`` for ``--option``; keys must be among ``keys``.

    Pairs are separated by a comma followed by ``word=``. Inside a ``cmdline`` value, a
    comma followed by anything but a known key stays part of the command line, so
    ``cmdline=console=ttyS0,115200 quiet`` works. Values may be wrapped in double quotes.
    Empty values are dropped (the default applies).
    """
    parts = [p for p in re.split(r",(?=[A-Za-z_]\w*=)", text) if p]
    merged: list[str] = []
    for part in parts:
        key = part.partition("=")[0]
        if merged and key not in keys and merged[-1].startswith("cmdline="):
            merged[-1] += "," + part
        else:
            merged.append(part)
    result: dict[str, str] = {}
    for part in merged:
        key, sep, value = part.partition("=")
        if not sep:
            raise CliError(f"--{option}: expected key=value, got {part!r} (keys: {', '.join(keys)})")
        if key not in keys:
            raise CliError(f"--{option}: unknown key {key!r} (keys: {', '.join(keys)})")
        if key in result:
            raise CliError(f"--{option}: {key} given twice")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if value:
            result[key] = value
    return result


def _int(option: str, key: str, value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise CliError(f"--{option}: invalid {key}={value!r}: expected an integer (decimal or 0x hex)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vmm-reference",
        description="Boot a Linux kernel on KVM with its serial console on this terminal.",
        epilog="Press Ctrl-A then x to end the VM from a terminal. Exit status: 0 when the guest reset, "
               "shut down or powered off the machine; the guest's code when it wrote one to the exit device "
               "(0xd0000000); 1 when the VM failed, panicked or was killed; 2 on a usage error: a malformed "
               "option or a value the VMM does not accept (a missing file too).\n\n"
               "vmm-reference OPTIONS -- COMMAND [ARG...] runs COMMAND in the guest through its agent "
               "(vmm-agent, started by the asset initramfs) instead: its output on ours, the console hidden "
               "(--console shows it on stderr), the guest powered off after it, and its exit status ours.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--memory", action=_Once, default="", metavar="mem_size_mib=N",
                   help="mem_size_mib: guest RAM in MiB (default 256)")
    p.add_argument("--vcpus", action=_Once, default="", metavar="num_vcpus=N",
                   help="num_vcpus: number of vCPUs (default 1)")
    p.add_argument("--kernel", action=_Once, required=True, metavar="path=PATH[,KEY=VALUE...]",
                   help="path: ELF vmlinux or bzImage (required); "
                        "himem_start: load address of the kernel and start of high memory, bytes "
                        "(decimal or 0x hex, multiple of 4096, at least 1048576; default 1048576); "
                        f'cmdline: kernel command line (default "{DEFAULT_CMDLINE}"; console=ttyS0 is '
                        "added when it names no console, pci=off when it has no pci= and no PCI device); "
                        "initrd: an initramfs to load")
    p.add_argument("--blk", action="append", default=[], metavar="path=PATH[,read_only=on][,serial=S]",
                   help="a raw disk image as a virtio-blk device (repeatable: /dev/vda, /dev/vdb, ... in "
                        "order); read_only: on/off/true/false (default off); serial: at most 20 characters")
    p.add_argument("--net", action="append", default=[], metavar="tap=NAME[,mac=MAC] | user[,forward=H:G]",
                   help="a virtio-net device (repeatable: eth0, eth1, ... in order): a host TAP interface (opened, "
                        "or created with CAP_NET_ADMIN), or user-mode networking through passt (no root; forward "
                        "host TCP ports to the guest with forward=8080:80, several joined by +)")
    p.add_argument("--transport", action=_Once, default="mmio", metavar="mmio|pci",
                   help="how the guest reaches the virtio devices: mmio (the default, for kernels with "
                        "CONFIG_VIRTIO_MMIO) or pci, with MSI-X (for kernels with CONFIG_VIRTIO_PCI, as "
                        "defconfig + kvm_guest.config builds them)")
    p.add_argument("--rng", action="store_true",
                   help="a virtio-rng device: entropy for the guest from the host's getrandom")
    p.add_argument("--console", action="store_true",
                   help="with -- COMMAND: copy the guest's console to stderr (it is hidden by default)")
    p.add_argument("--ready-timeout", action=_Once, type=float, default=120.0, metavar="SECONDS",
                   help="with -- COMMAND: how long to wait for the guest agent after boot (default 120)")
    p.add_argument("--version", action="version", version=f"vmm-reference {__version__}")
    return p


def parse_net(text: str) -> NetArg:
    """Parse a ``--net`` value: ``tap=NAME[,mac=MAC]`` or ``user[,forward=HOST:GUEST[+HOST:GUEST...]][,mac=MAC]``."""
    if text == "user" or text.startswith("user,"):
        opts = parse_key_values("net", text[len("user,"):] if text != "user" else "", _USER_KEYS)
        forward: dict[int, int] = {}
        for pair in filter(None, opts.get("forward", "").split("+")):
            host, sep, guest = pair.partition(":")
            if not sep or not host.isdigit() or not guest.isdigit():
                raise CliError(f"--net: invalid forward={pair!r}: expected HOST_PORT:GUEST_PORT (e.g. 8080:80)")
            forward[int(host)] = int(guest)
        return UserNet(forward=forward, mac=opts.get("mac"))
    opts = parse_key_values("net", text, _TAP_KEYS)
    if "tap" not in opts:
        raise CliError("--net: expected tap=NAME[,mac=MAC] or user[,forward=HOST:GUEST]")
    return Tap(opts["tap"], mac=opts.get("mac"))


def parse_disk(text: str) -> Disk:
    """Parse a ``--blk`` value, ``path=PATH[,read_only=on|off|true|false][,serial=S]``."""
    blk = parse_key_values("blk", text, _BLK_KEYS)
    if "path" not in blk:
        raise CliError("--blk: path=PATH is required")
    read_only = blk.get("read_only", "off")
    if read_only.lower() not in _BOOLS:
        raise CliError(f"--blk: invalid read_only={read_only!r}: expected on, off, true or false")
    return Disk(blk["path"], read_only=_BOOLS[read_only.lower()], serial=blk.get("serial"))


def _build_vm(args: argparse.Namespace) -> Vm:
    memory = parse_key_values("memory", args.memory, ("mem_size_mib",))
    vcpus = parse_key_values("vcpus", args.vcpus, ("num_vcpus",))
    kernel = parse_key_values("kernel", args.kernel, _KERNEL_KEYS)
    if "path" not in kernel:
        raise CliError("--kernel: path=PATH is required")
    return Vm(
        memory_mib=_int("memory", "mem_size_mib", memory.get("mem_size_mib", "256")),
        vcpus=_int("vcpus", "num_vcpus", vcpus.get("num_vcpus", "1")),
        kernel=kernel["path"],
        cmdline=kernel.get("cmdline", DEFAULT_CMDLINE),
        himem_start=_int("kernel", "himem_start", kernel.get("himem_start", "1048576")),
        initrd=kernel.get("initrd"),
        disks=[parse_disk(text) for text in args.blk],
        net=[parse_net(text) for text in args.net],
        vsock=True if getattr(args, "command", None) else None,
        transport=args.transport,
        rng=True if args.rng else None,
    )


class _StdinForwarder:
    """Copies stdin to the guest on a thread; Ctrl-A x asks the VM to end."""

    def __init__(self, vm: Vm, fd: int, on_quit: Callable[[], None]) -> None:
        self._vm, self._fd, self._on_quit = vm, fd, on_quit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmm-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _run(self) -> None:
        escape = False
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 4096)
            except OSError:
                return
            if not data:
                return
            out = bytearray()
            for b in data:
                if escape:
                    escape = False
                    if b in (ord("x"), ord("X")):
                        self._on_quit()
                        return
                    if b != _CTRL_A:
                        out.append(_CTRL_A)
                    out.append(b)
                elif b == _CTRL_A:
                    escape = True
                else:
                    out.append(b)
            if out and self._vm.state == "running":
                self._vm.write(bytes(out))


def _run(vm: Vm, stdout: TextIO) -> int:
    stdin_fd: Optional[int] = None
    try:
        stdin_fd = sys.stdin.fileno()
    except (OSError, ValueError, AttributeError):
        stdin_fd = None
    saved = None
    if stdin_fd is not None and os.isatty(stdin_fd):
        import termios
        import tty

        saved = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
    forwarder = _StdinForwarder(vm, stdin_fd, vm.kill) if stdin_fd is not None else None
    out = stdout.buffer if hasattr(stdout, "buffer") else None
    try:
        vm.start()
        if forwarder:
            forwarder.start()
        while True:
            data = vm.serial.read(timeout=0.2)
            if data:
                if out is not None:
                    out.write(data)
                    out.flush()
                else:
                    stdout.write(data.decode("utf-8", errors="replace"))
                    stdout.flush()
            elif vm.serial.at_eof:
                break
        status = vm.wait()
    finally:
        if forwarder:
            forwarder.stop()
        if saved is not None and stdin_fd is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        vm.close()
    if status.reason == "poweroff" and status.code is not None:
        return status.code & 0xFF
    if status.reason in ("reset", "shutdown", "poweroff"):
        return 0
    detail = f": {status.detail}" if status.detail else ""
    print(f"\nvmm-reference: the VM ended with reason {status.reason}{detail}", file=sys.stderr)
    return 1


def _run_command(vm: Vm, command: list[str], console: bool, ready_timeout: float) -> int:
    """Boot, run ``command`` through the guest agent with its output on ours, power off; return its code."""
    from .agent import argv_of

    stop = threading.Event()
    echo: Optional[threading.Thread] = None
    err = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None

    def copy_console() -> None:
        while not stop.is_set():
            data = vm.serial.read(timeout=0.2)
            if data and err is not None:
                err.write(data)
                err.flush()
            elif vm.serial.at_eof:
                return

    def writer(stream: Optional[BinaryIO], text: TextIO) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            if stream is not None:
                stream.write(data)
                stream.flush()
            else:
                text.write(data.decode("utf-8", errors="replace"))
                text.flush()
        return write

    stdin: Optional[BinaryIO] = None
    try:
        if not os.isatty(sys.stdin.fileno()):
            stdin = sys.stdin.buffer
    except (OSError, ValueError, AttributeError):
        stdin = None
    try:
        vm.start()
        if console:
            echo = threading.Thread(target=copy_console, name="vmm-console", daemon=True)
            echo.start()
        try:
            vm.wait_ready(timeout=ready_timeout)
        except VmError as e:
            print(f"vmm-reference: the guest agent did not answer: {e}", file=sys.stderr)
            return 1
        with vm._agent_client("the command") as client:
            code: int = client.exec(argv_of(command), input=stdin, stdout=writer(out, sys.stdout),
                                    stderr=writer(err, sys.stderr))
    finally:
        try:
            vm.stop(timeout=30)
        finally:
            stop.set()
            if echo is not None:
                echo.join(timeout=1)
            vm.close()
    return code if code >= 0 else 128 - code


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``vmm-reference`` command.

    Everything after ``--`` is a command to run in the guest instead of attaching the
    terminal to its console: the VM gets a vsock device, the command runs through the guest
    agent (``vmm-agent``, which the asset initramfs starts) with its stdout and stderr on
    ours (and our stdin, unless it is a terminal), the guest is powered off, and the exit
    status is the command's (128+N when signal N killed it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
        if not command:
            print("vmm-reference: error: expected a command after --", file=sys.stderr)
            return EXIT_USAGE
    args = _parser().parse_args(argv)
    args.command = command
    try:
        vm = _build_vm(args)
    except (CliError, VmError) as e:
        print(f"vmm-reference: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, (CliError, VmConfigError, VmFileNotFoundError)) else 1
    try:
        if command:
            return _run_command(vm, command, args.console, args.ready_timeout)
        return _run(vm, sys.stdout)
    except KeyboardInterrupt:
        vm.close()
        print("\nvmm-reference: interrupted", file=sys.stderr)
        return 130
    except VmError as e:
        print(f"vmm-reference: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
