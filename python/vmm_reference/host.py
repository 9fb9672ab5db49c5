"""Facts about this host's KVM that tests, benchmarks and tools decide by."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["detect_kvm_kind"]


def detect_kvm_kind() -> str:
    """Return ``"none"``, ``"pvm"`` (nested, software-assisted KVM) or ``"hardware"``.

    ``"none"``: ``/dev/kvm`` is missing or this user cannot open it for reading and writing.
    ``"pvm"``: the ``kvm_pvm`` module backs it, where stock kernels stop early in boot (the
    full boots then run in the nested-KVM lab, :mod:`vmm_reference.lab`).
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "none"
    if Path("/sys/module/kvm_pvm").exists():
        return "pvm"
    return "hardware"
