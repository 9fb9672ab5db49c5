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
    ) -> None: ...
    def start(self) -> None:
        """Start the vCPUs."""
    def snapshot(self, path: str) -> int:
        """Write a snapshot into the directory ``path``; the bytes of memory written."""
    @staticmethod
    def restore(
        path: str,
        console_limit: Optional[int] = None,
        vsock_uds: Optional[str] = None,
        seccomp: bool = True,
        disks: Optional[list[tuple[str, bool, Optional[str]]]] = None,
        net: Optional[list[tuple[str, str, Optional[str], list[tuple[int, int]]]]] = None,
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
