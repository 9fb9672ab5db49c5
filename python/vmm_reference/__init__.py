"""Boot and test Linux guests from Python on a KVM virtual machine monitor.

>>> from vmm_reference import Vm
>>> with Vm(memory_mib=256, kernel="vmlinux", initrd="initrd.cpio.gz") as vm:  # doctest: +SKIP
...     vm.start()
...     for line in vm.serial:
...         print(line)
...     print(vm.wait(timeout=30).reason)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    KvmUnavailableError,
    VmConfigError,
    VmError,
    VmFileNotFoundError,
    VmPermissionError,
    VmStateError,
    VmTimeoutError,
)
from .expect import ExpectFailure, VmExitedError
from .vm import DEFAULT_CMDLINE, BootInfo, ExitStatus, Serial, Vm, max_vcpus

try:
    __version__ = version("vmm-reference")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "DEFAULT_CMDLINE",
    "BootInfo",
    "ExitStatus",
    "ExpectFailure",
    "KvmUnavailableError",
    "Serial",
    "Vm",
    "VmConfigError",
    "VmError",
    "VmExitedError",
    "VmFileNotFoundError",
    "VmPermissionError",
    "VmStateError",
    "VmTimeoutError",
    "__version__",
    "max_vcpus",
]
