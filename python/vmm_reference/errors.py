"""The exceptions vmm_reference raises, all rooted at :class:`VmError`.

Each also derives from the built-in exception that fits, so ``except ValueError`` or
``except FileNotFoundError`` work as expected. Messages name the argument, the value given
and what is accepted.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = [
    "KvmUnavailableError",
    "VmAgentError",
    "VmConfigError",
    "VmError",
    "VmFileNotFoundError",
    "VmPermissionError",
    "VmSnapshotError",
    "VmStateError",
    "VmTimeoutError",
]


class VmError(Exception):
    """Base class of every error raised by vmm_reference."""


class VmConfigError(VmError, ValueError):
    """A configuration value is out of range or malformed.

    When the VMM refused it, :attr:`argument`, :attr:`value` and :attr:`accepted` say which,
    what was given and what would be accepted, as the message does.
    """

    argument: Optional[str] = None
    """The argument, as the caller wrote it (``memory_mib``, ``disks[1]``, ``net[0].tap``)."""
    value: Optional[str] = None
    """The value given, as the message shows it."""
    accepted: Optional[str] = None
    """What is accepted instead (the real range on this host)."""


class VmFileNotFoundError(VmError, FileNotFoundError):
    """A file the configuration names (kernel, initrd, disk, passt, a socket's directory) does not exist."""

    argument: Optional[str] = None
    """The argument that named it (``kernel``, ``disks[0]``, ``vsock.uds``)."""
    path: Optional[str] = None
    """The path that does not exist."""


class VmPermissionError(VmError, PermissionError):
    """A file, or ``/dev/kvm``, exists but cannot be opened by this user."""

    argument: Optional[str] = None
    """The argument that named it (``kvm`` for ``/dev/kvm``)."""
    path: Optional[str] = None
    """The path that cannot be opened."""


class KvmUnavailableError(VmError, OSError):
    """KVM is missing or unusable on this host."""


class VmStateError(VmError, RuntimeError):
    """The call is not allowed in the VM's current state (e.g. ``start()`` twice)."""


class VmTimeoutError(VmError, TimeoutError):
    """A wait ran out of time; the message shows the last console lines.

    When :meth:`Vm.run <vmm_reference.Vm.run>` times out, :attr:`stdout` and :attr:`stderr`
    hold what the command printed until then (bytes, or str with ``text=True``).
    """

    stdout: Union[bytes, str, None] = None
    """What the command wrote to its stdout before the timeout (:meth:`Vm.run <vmm_reference.Vm.run>`)."""
    stderr: Union[bytes, str, None] = None
    """What the command wrote to its stderr before the timeout."""


class VmSnapshotError(VmError):
    """A snapshot cannot be written or used, or the VM cannot be forked.

    Raised for a snapshot that is truncated, damaged, not a snapshot at all, written by
    another snapshot format version, or whose guest uses CPU features this host's KVM lacks;
    and for a fork whose clones could not have the VM's devices (a writable disk, a TAP,
    forwarded ports).
    """


class VmAgentError(VmError):
    """The guest agent (``vmm-agent``) is not there, failed a request, or broke the connection.

    When :meth:`Vm.run <vmm_reference.Vm.run>` fails once a command ran, :attr:`stdout` and
    :attr:`stderr` hold what it printed until then (up to ``max_output``).
    """

    stdout: Union[bytes, str, None] = None
    """What the command wrote to its stdout before the error (:meth:`Vm.run <vmm_reference.Vm.run>`)."""
    stderr: Union[bytes, str, None] = None
    """What the command wrote to its stderr before the error."""
