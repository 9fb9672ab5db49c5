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

The command line is the Rust core's (``src/cli``): the wheel installs it as a native program,
which starts in a millisecond, and this module (``python -m vmm_reference``) calls the same
code through the extension. Only ``-- COMMAND`` is Python's: the core checks the options and
hands the command back, and the guest agent's client here runs it (for both).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import BinaryIO, Callable, Optional, TextIO

from . import _native
from .devices import Disk, Share
from .errors import CliError, VmConfigError, VmError, VmFileNotFoundError
from .vm import Vm
from .vsock import resolve as resolve_vsock

__all__ = ["EXIT_USAGE", "CliError", "main", "parse_disk", "parse_share"]

#: The exit status of a usage error: a malformed option, or a value the VMM refuses.
EXIT_USAGE = 2


def parse_disk(text: str) -> Disk:
    """Parse a ``--blk`` value, ``path=PATH[,read_only=on|off|true|false][,serial=S]``.

    Raises :class:`~vmm_reference.errors.CliError` naming ``--blk`` when it is malformed.
    """
    path, read_only, serial = _native.cli_disk(text)
    return Disk(os.fspath(path), read_only=read_only, serial=serial)


def parse_share(text: str) -> Share:
    """Parse a ``--fs`` value, ``path=DIR,tag=TAG[,read_only=on|off|true|false][,protocol=virtiofs|9p]``.

    Raises :class:`~vmm_reference.errors.CliError` naming ``--fs`` when it is malformed.
    """
    path, tag, read_only, protocol = _native.cli_share(text)
    return Share(os.fspath(path), tag=tag, read_only=read_only, protocol=protocol)


def _writer(stream: Optional[BinaryIO], text: TextIO) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        if stream is not None:
            stream.write(data)
            stream.flush()
        else:
            text.write(data.decode("utf-8", errors="replace"))
            text.flush()
    return write


def _initrd(request: _native.CliCommand) -> Optional[str]:
    """Return the package's initramfs for a VM on the host's root (its /init mounts it), else None."""
    if not request.host_root:
        return None
    from .assets import fetch_guest

    return str(fetch_guest().initrd)


def _build(request: _native.CliCommand) -> Vm:
    """Build the VM ``request`` describes, with the vsock device the agent's client talks to."""
    endpoint = resolve_vsock(True)
    assert endpoint is not None
    try:
        native = request.build(endpoint.cid, endpoint.uds, _initrd(request))
    except BaseException:
        endpoint.close()
        raise
    return Vm._adopt(native, endpoint)


def _run_command(vm: Vm, command: list[str], console: bool, ready_timeout: float,
                 cwd: Optional[str] = None) -> int:
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
            code: int = client.exec(argv_of(command), input=stdin, cwd=cwd, stdout=_writer(out, sys.stdout),
                                    stderr=_writer(err, sys.stderr))
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
    """Entry point of ``python -m vmm_reference``; returns the exit status.

    The core parses ``argv`` (default ``sys.argv[1:]``) and prints the help, the version or a
    usage error, or boots the VM with its console on this terminal. Everything after ``--``
    is a command to run in the guest instead: the VM gets a vsock device, the command runs
    through the guest agent (``vmm-agent``, which the asset initramfs starts) with its stdout
    and stderr on ours (and our stdin, unless it is a terminal), the guest is powered off,
    and the exit status is the command's (128+N when signal N killed it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    outcome = _native.cli(argv)
    if isinstance(outcome, int):
        return outcome
    if not outcome.command:  # the host's root, with a shell on the console
        try:
            return outcome.run_console(_initrd(outcome))
        except VmError as e:
            print(f"vmm-reference: error: {e}", file=sys.stderr)
            return 1
    try:
        vm = _build(outcome)
    except VmError as e:
        print(f"vmm-reference: error: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, (VmConfigError, VmFileNotFoundError)) else 1
    try:
        cwd = os.getcwd() if outcome.host_root else None  # the host's userspace: its working directory
        return _run_command(vm, list(outcome.command), outcome.console, outcome.ready_timeout, cwd)
    except KeyboardInterrupt:
        vm.close()
        print("\nvmm-reference: interrupted", file=sys.stderr)
        return 130
    except VmError as e:
        print(f"vmm-reference: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
