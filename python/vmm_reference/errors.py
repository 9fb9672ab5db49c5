"""The exceptions vmm_reference raises, all rooted at :class:`VmError`.

The extension makes these classes (``src/python/errors.rs``) and raises them with their
fields set; Python code raises the same classes. Each also derives from the built-in
exception that fits, so ``except ValueError`` or ``except FileNotFoundError`` work as
expected. Messages name the argument, the value given and what is accepted; on
:class:`VmConfigError` the attributes ``argument``, ``value`` and ``accepted`` say the same,
on :class:`VmFileNotFoundError` and :class:`VmPermissionError` ``argument`` and ``path``.
"""

from __future__ import annotations

from ._native import (
    CliError,
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

__all__ = [
    "CliError",
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
