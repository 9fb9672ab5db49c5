"""Boot and test Linux guests from Python on a KVM virtual machine monitor.

>>> from vmm_reference import Vm
>>> with Vm(memory_mib=256, kernel="vmlinux", initrd="initrd.cpio.gz") as vm:  # doctest: +SKIP
...     vm.start()
...     for line in vm.serial:
...         print(line)
...     print(vm.wait(timeout=30).reason)
"""

from __future__ import annotations

from . import _native
from .devices import DeviceInfo, Disk, Rng, Share, Tap, UserNet, Vsock
from .errors import (
    KvmUnavailableError,
    VmAgentError,
    VmConfigError,
    VmError,
    VmFileNotFoundError,
    VmPermissionError,
    VmSnapshotError,
    VmStateError,
    VmTimeoutError,
)
from .expect import ExpectFailure, VmExitedError
from .vm import DEFAULT_CMDLINE, BootInfo, ExitStatus, Serial, Vm, max_vcpus

__version__: str = _native.VERSION
"""The package's version (the Rust crate's, which pyproject.toml takes)."""

__all__ = [
    "DEFAULT_CMDLINE",
    "BootInfo",
    "DeviceInfo",
    "Disk",
    "ExitStatus",
    "ExpectFailure",
    "KvmUnavailableError",
    "Rng",
    "Serial",
    "Share",
    "Tap",
    "UserNet",
    "Vm",
    "VmAgentError",
    "VmConfigError",
    "VmError",
    "VmExitedError",
    "VmFileNotFoundError",
    "VmPermissionError",
    "VmSnapshotError",
    "VmStateError",
    "VmTimeoutError",
    "Vsock",
    "__version__",
    "max_vcpus",
]
