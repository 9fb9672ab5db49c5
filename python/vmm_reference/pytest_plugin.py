"""pytest plugin (registered automatically): fixtures for tests that boot guests.

Fixtures:
    ``vm_factory``: call it like :class:`~vmm_reference.Vm`; every VM it made is killed at
        teardown.
    ``guest_assets``: Debian's cloud kernel and a busybox initramfs
        (:class:`~vmm_reference.assets.GuestAssets`), fetched once into the cache.
    ``kvm_kind``: ``"hardware"``, ``"pvm"`` or ``"none"``: what ``/dev/kvm`` is here.

Option ``--vmm-strict`` turns "cannot run here" skips (no KVM, no assets) into failures, for
CI runs that must exercise everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from .assets import AssetError, GuestAssets, fetch_guest
from .vm import Vm

__all__ = ["guest_assets", "kvm_kind", "skip_or_fail", "vm_factory"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--vmm-strict``."""
    parser.addoption("--vmm-strict", action="store_true", default=False,
                     help="fail instead of skipping tests that cannot run here (vmm-reference)")


def skip_or_fail(config: pytest.Config, reason: str) -> None:
    """Skip the running test, or fail it under ``--vmm-strict``."""
    if config.getoption("--vmm-strict", default=False):
        pytest.fail(f"cannot run here (and --vmm-strict is set): {reason}")
    pytest.skip(reason)


def detect_kvm_kind() -> str:
    """Return ``"none"``, ``"pvm"`` (nested, software-assisted KVM) or ``"hardware"``."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "none"
    if Path("/sys/module/kvm_pvm").exists():
        return "pvm"
    return "hardware"


@pytest.fixture(scope="session")
def kvm_kind() -> str:
    """Return what ``/dev/kvm`` is on this host."""
    return detect_kvm_kind()


@pytest.fixture(scope="session")
def guest_assets(request: pytest.FixtureRequest) -> GuestAssets:
    """Debian's cloud kernel (vmlinux and bzImage) and a busybox initramfs."""
    try:
        return fetch_guest()
    except AssetError as e:
        skip_or_fail(request.config, f"guest assets unavailable: {e}")
        raise


@pytest.fixture
def vm_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Vm]]:
    """Build VMs like ``Vm(...)``; all are killed when the test ends."""
    if detect_kvm_kind() == "none":
        skip_or_fail(request.config, "/dev/kvm is not available")
    made: list[Vm] = []

    def make(**kwargs: Any) -> Vm:
        vm = Vm(**kwargs)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.close()
