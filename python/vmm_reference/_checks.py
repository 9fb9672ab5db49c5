"""Type checks of :class:`~vmm_reference.Vm`'s arguments, before the core checks their values.

Only what Python must check itself (is it a path, an int, a bool) is here: ranges, files and
the rest are the Rust core's (one source of truth), whose messages name the argument too.
"""

from __future__ import annotations

import os
from typing import Optional, Union

from .errors import VmConfigError

PathArg = Union[str, "os.PathLike[str]"]
"""A path argument: a str or an ``os.PathLike``."""


def check_int(name: str, value: object) -> int:
    """Check that ``value`` is an int (not a bool).

    Its range is checked by the VMM itself, which knows the real limits (this host's RAM,
    KVM's vCPU limit, the kernel's layout).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise VmConfigError(f"invalid {name}={value!r}: expected an integer")
    return value


def host_root_args(root: object, cwd: object, modules: object,
                   protocol: object = None) -> Optional[tuple[Optional[str], Optional[str], str]]:
    """Return ``root``/``cwd``/``modules``/``root_protocol`` as the native layer takes them.

    None stands for the guest's own root; the VMM checks the protocol's name.
    """
    if root is None:
        if cwd not in (None, False) or modules is not None or protocol is not None:
            raise VmConfigError(f"invalid cwd={cwd!r}, modules={modules!r}, root_protocol={protocol!r}: "
                                "expected them only with root=\"host\"")
        return None
    if protocol is None:
        protocol = "virtiofs"
    if not isinstance(protocol, str):
        raise VmConfigError(f'invalid root_protocol={protocol!r}: expected "virtiofs" or "9p"')
    if root != "host":
        raise VmConfigError(f'invalid root={root!r}: expected "host" or None')
    if cwd is True:
        cwd = os.getcwd()
    cwd_path = None if cwd in (None, False) else check_path("cwd", cwd)
    return cwd_path, check_path("modules", modules, optional=True), protocol


def check_path(name: str, value: object, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str) and path:
            return path
    raise VmConfigError(f"invalid {name}={value!r}: expected a path to a file")


def snapshot_dir(name: str, value: object) -> str:
    """Check a snapshot directory argument (types only; the VMM checks the files)."""
    if not isinstance(value, (str, os.PathLike)):
        raise VmConfigError(f"invalid {name}={value!r}: expected a directory path")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise VmConfigError(f"invalid {name}={value!r}: expected a str path")
    return path


def gdb_arg(gdb: object) -> Optional[str]:
    """``gdb=`` as the native layer takes it (a str), which parses and checks its value."""
    if gdb is None:
        return None
    if isinstance(gdb, bool) or not isinstance(gdb, (str, int)):
        raise VmConfigError(f'invalid gdb={gdb!r}: expected "unix:PATH" or a TCP port')
    return str(gdb)
