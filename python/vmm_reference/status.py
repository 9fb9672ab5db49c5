"""What a VM reports: how it ended, and where its boot images and devices went."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .devices import DeviceInfo

__all__ = ["BootInfo", "ExitStatus"]


@dataclass(frozen=True)
class ExitStatus:
    """How a VM ended.

    ``reason`` is one of ``"reset"`` (the guest rebooted, e.g. ``reboot -f`` with ``reboot=k``),
    ``"poweroff"`` (the guest wrote its exit ``code`` to the exit device), ``"shutdown"`` (a
    triple fault), ``"panic"`` (``Kernel panic - not syncing`` on the console; ``detail`` is
    that line), ``"killed"`` (:meth:`Vm.kill`, or the ``with`` block ended first) or
    ``"error"`` (KVM could not run the guest; ``detail`` says why).
    """

    reason: str
    detail: Optional[str] = None
    code: Optional[int] = None
    """The exit code the guest wrote to the exit device (0xd0000000), if any."""

    @property
    def ok(self) -> bool:
        """Whether the guest ended the VM itself without failing: reset, shutdown, or poweroff with code 0."""
        return self.reason in ("reset", "shutdown") or (self.reason == "poweroff" and self.code == 0)


@dataclass(frozen=True)
class BootInfo:
    """Where the VMM put the guest's boot images."""

    format: str
    """``"ELF vmlinux"`` or ``"bzImage"``."""
    entry: int
    """The 64-bit entry point."""
    kernel_end: int
    """First byte past the loaded kernel."""
    cmdline: str
    """The command line as the guest sees it."""
    initrd: Optional[tuple[int, int]]
    """Guest address and size of the initrd."""
    e820: list[tuple[int, int, int]]
    """The e820 map: ``(address, size, type)``, type 1 is RAM and 2 reserved."""
    devices: list[DeviceInfo]
    """The virtio devices in the order the guest finds them (disks first, ``/dev/vda`` first)."""
