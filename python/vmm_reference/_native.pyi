"""Type stubs of the Rust extension module; use :mod:`vmm_reference` instead."""

from os import PathLike
from typing import Any, Optional, Union

DEFAULT_CMDLINE: str
VERSION: str
DEFAULT_CONSOLE_LIMIT: int
DEFAULT_MEMORY_MIB: int
MAX_FORK: int
HIMEM_START_DEFAULT: int

def max_vcpus() -> Optional[int]:
    """KVM's vCPU limit on this host, or None when KVM is unavailable."""

class VmError(Exception):
    """Base class of every error raised by vmm_reference."""

class VmConfigError(VmError, ValueError):
    """A configuration value is out of range or malformed."""

    argument: Optional[str]
    """The argument, as the caller wrote it (``memory_mib``, ``disks[1]``, ``net[0].tap``)."""
    value: Optional[str]
    """The value given, as the message shows it."""
    accepted: Optional[str]
    """What is accepted instead (the real range on this host)."""

class CliError(VmConfigError):
    """A command-line option is malformed (the message names the option)."""

class VmFileNotFoundError(VmError, FileNotFoundError):
    """A file the configuration names does not exist."""

    argument: Optional[str]
    """The argument that named it (``kernel``, ``disks[0]``, ``vsock.uds``)."""
    path: Optional[str]
    """The path that does not exist."""

class VmPermissionError(VmError, PermissionError):
    """A file, or ``/dev/kvm``, exists but cannot be opened by this user."""

    argument: Optional[str]
    """The argument that named it (``kvm`` for ``/dev/kvm``)."""
    path: Optional[str]
    """The path that cannot be opened."""

class KvmUnavailableError(VmError, OSError):
    """KVM is missing or unusable on this host."""

class VmStateError(VmError, RuntimeError):
    """The call is not allowed in the VM's current state."""

class VmTimeoutError(VmError, TimeoutError):
    """A wait ran out of time; the message shows the last console lines."""

    stdout: Union[bytes, str, None]
    """What the command wrote to its stdout before the timeout (``Vm.run``)."""
    stderr: Union[bytes, str, None]
    """What the command wrote to its stderr before the timeout."""

class VmSnapshotError(VmError):
    """A snapshot cannot be written or used, or the VM cannot be forked."""

class VmAgentError(VmError):
    """The guest agent is not there, failed a request, or broke the connection."""

    stdout: Union[bytes, str, None]
    """What the command wrote to its stdout before the error (``Vm.run``)."""
    stderr: Union[bytes, str, None]
    """What the command wrote to its stderr before the error."""

def cli(argv: list[str]) -> Union[int, CliCommand]:
    """Run the command line ``argv``: the exit status, or the ``-- COMMAND`` to run."""

def cli_disk(text: str) -> tuple[str, bool, Optional[str]]:
    """Parse a ``--blk`` value into ``(path, read_only, serial)``; raise CliError when malformed."""

def cli_share(text: str) -> tuple[str, str, bool, str]:
    """Parse a ``--fs`` value into ``(path, tag, read_only, protocol)``; raise CliError when malformed."""

class CliCommand:
    """``-- COMMAND`` as the command line gave it, its VM checked and not built."""

    command: list[str]
    console: bool
    ready_timeout: float
    host_root: bool
    def build(self, cid: int, uds: str, initrd: Optional[str] = None) -> NativeVm:
        """Build the VM with a vsock device of context ``cid`` on ``uds`` (and ``initrd`` if none was named)."""
    def run_console(self, initrd: Optional[str]) -> int:
        """Boot the VM on the host's root with its console on this terminal; the exit status."""

class NativeVm:
    """The Rust VM object behind :class:`vmm_reference.Vm`."""

    def __init__(
        self,
        memory_mib: int,
        vcpus: int,
        kernel: Union[str, PathLike[str]],
        cmdline: str,
        himem_start: int,
        initrd: Optional[Union[str, PathLike[str]]],
        console_limit: int,
        acpi: bool,
        disks: list[tuple[str, bool, Optional[str]]] = ...,
        net: list[tuple[str, str, Optional[str], list[tuple[int, int]]]] = ...,
        vsock: Optional[tuple[int, str]] = ...,
        seccomp: bool = ...,
        transport: str = ...,
        rng: bool = ...,
        rng_rate: Optional[int] = ...,
        shares: list[tuple[str, str, bool, str]] = ...,
        host_root: Optional[tuple[Optional[str], Optional[str], str]] = ...,
        gdb: Optional[str] = ...,
    ) -> None: ...
    def start(self) -> None:
        """Start the vCPUs."""
    def snapshot(self, path: str) -> int:
        """Write a snapshot into the directory ``path``; the bytes of memory written."""
    def dump_core(self, path: str) -> int:
        """Write an ELF core of the guest to ``path``; the bytes of RAM written."""
    @staticmethod
    def restore(
        path: str,
        console_limit: Optional[int] = None,
        vsock_uds: Optional[str] = None,
        seccomp: bool = True,
        disks: Optional[list[tuple[str, bool, Optional[str]]]] = None,
        net: Optional[list[tuple[str, str, Optional[str], list[tuple[int, int]]]]] = None,
        gdb: Optional[str] = None,
    ) -> NativeVm:
        """Return a paused VM from the snapshot in ``path``; ``disks``/``net`` replace the saved ones."""
    def fork(self, vsock_uds: list[Optional[str]]) -> list[NativeVm]:
        """Return paused clones, one per entry (each clone's vsock socket, or None)."""
    def config(
        self,
    ) -> tuple[int, int, str, bool, list[tuple[str, bool, Optional[str]]], Optional[tuple[int, str]]]:
        """``(memory_mib, vcpus, kernel, acpi, disks, vsock)``."""
    def wait(self, timeout: Optional[float] = None) -> Optional[tuple[str, Optional[str], Optional[int]]]:
        """Wait for the VM to stop; None on timeout."""
    def pause(self) -> None:
        """Park every vCPU."""
    def resume(self) -> None:
        """Let parked vCPUs run again."""
    def kill(self) -> None:
        """Stop the VM with reason ``killed``."""
    def press_power_button(self) -> bool:
        """Press the ACPI power button; return whether the guest enabled the event."""
    @property
    def state(self) -> str:
        """``created``, ``running``, ``paused`` or ``exited``."""
    @property
    def exit_status(self) -> Optional[tuple[str, Optional[str], Optional[int]]]:
        """``(reason, detail, code)`` once stopped."""
    @property
    def console_limit(self) -> int:
        """Retained console bytes."""
    def read_console(
        self, offset: int, max: int, timeout: Optional[float] = None
    ) -> tuple[int, bytes, bool]:
        """Read console bytes from ``offset``: ``(start, data, eof)``."""
    def console_snapshot(self) -> tuple[int, bytes]:
        """All retained console bytes and the offset of the first."""
    def write(self, data: bytes) -> int:
        """Queue serial input; returns bytes accepted."""
    def boot_info(self) -> dict[str, Any]:
        """Where the boot images went."""
    def stats(self) -> dict[str, Any]:
        """Activity counters."""
    def boot_markers(self) -> list[tuple[int, float]]:
        """Boot-time markers: (value, seconds since start)."""
    def console_times(self) -> tuple[Optional[float], list[tuple[int, float]]]:
        """When console output arrived: the first byte, and (offset past a newline, time) per early line."""
    @property
    def exit_time(self) -> Optional[float]:
        """Seconds from start to when the exit status was decided."""
