"""pytest plugin (registered automatically through the ``pytest11`` entry point).

Fixtures:

- ``vm``: one started VM from the configured kernel and initrd (Debian's cloud kernel and the
  busybox initramfs unless ``--vmm-kernel`` says otherwise), killed at teardown. It has a
  vsock device (``vsock=True``; ``@pytest.mark.vm(vsock=None)`` leaves it out), so that
  ``vm.wait_ready()`` then ``vm.run(...)``, ``vm.copy_to(...)`` and ``vm.copy_from(...)``
  reach the guest agent the busybox initramfs starts.
  ``@pytest.mark.vm(memory_mib=..., vcpus=..., cmdline=..., ...)`` sets its ``Vm`` arguments;
  several such markers on one test run it once per marker.
- ``vm_template``: a running fork of a template VM that is booted once per session (like
  ``vm``, until its guest agent answers or ``--vmm-template-ready`` matches) and paused:
  each test starts in milliseconds from the booted guest, with memory of its own.
- ``vm_factory``: call it like :class:`~vmm_reference.Vm` (defaults from the options below);
  every VM it made is killed and freed when the test ends, also on failure or Ctrl-C.
- ``guest_assets``: Debian's cloud kernel and a busybox initramfs
  (:class:`~vmm_reference.assets.GuestAssets`), fetched once into the cache.
- ``kvm_kind``: ``"hardware"``, ``"pvm"`` or ``"none"``: what ``/dev/kvm`` is here.

Options (each with an ini key of the same name, ``vmm_kernel`` and so on):
``--vmm-kernel``, ``--vmm-initrd``, ``--vmm-cmdline``, ``--vmm-memory`` (MiB), ``--vmm-vcpus``,
``--vmm-transport`` (``mmio`` or ``pci``: the virtio transport of every fixture's VMs),
``--vmm-timeout`` (seconds :meth:`Vm.expect` waits by default), ``--vmm-template-ready``
(when ``vm_template``'s template is ready), ``--vmm-disk`` (a disk
image for the ``vm`` fixture, repeatable: a path, or the CLI's ``path=P,read_only=on,serial=S``;
ini key ``vmm_disk``, one per line), ``--vmm-keep-console``
(save every VM's console, not only failed tests'), ``--vmm-strict`` (fail instead of
skipping tests that cannot run here, for CI).

When a test fails, the console of every VM it made is attached to the report ("Captured
guest console") and saved under the test's ``tmp_path``. Tests marked
``@pytest.mark.full_boot`` run directly where KVM is hardware-backed; on PVM hosts, where
stock kernels cannot finish booting, they are run together inside the nested-KVM lab by one
extra test item (``vmm-lab::full_boot``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from .assets import AssetError, GuestAssets, fetch_guest
from .devices import Disk, Share
from .host import detect_kvm_kind
from .vm import Vm

__all__ = ["guest_assets", "host_vm", "kvm_kind", "skip_or_fail", "vm", "vm_factory"]

_OPTIONS = [
    ("--vmm-kernel", "vmm_kernel", "kernel (ELF vmlinux or bzImage) for the vm fixture [default: Debian's cloud "
     "kernel from the asset cache]"),
    ("--vmm-initrd", "vmm_initrd", "initrd for the vm fixture [default: the busybox initramfs with the "
     "default kernel, none with --vmm-kernel]"),
    ("--vmm-cmdline", "vmm_cmdline", "kernel command line for vm and vm_template [default: the Vm default]"),
    ("--vmm-memory", "vmm_memory", "guest RAM in MiB for vm and vm_factory [default: 256]"),
    ("--vmm-vcpus", "vmm_vcpus", "vCPUs for vm and vm_factory [default: 1]"),
    ("--vmm-transport", "vmm_transport", "virtio transport of vm, vm_template and vm_factory's VMs: mmio or pci "
     "[default: mmio]"),
    ("--vmm-timeout", "vmm_timeout", "seconds Vm.expect waits by default in vm and vm_factory [default: 60]"),
    ("--vmm-template-ready", "vmm_template_ready", "regular expression on the console that says the vm_template "
     "guest is ready [default: the guest agent answers]"),
]
_CONSOLE_TAIL = 64 * 1024
_VMS = pytest.StashKey[list[Vm]]()
_CONSOLE_DIR = pytest.StashKey[Path]()
_FAILED = pytest.StashKey[bool]()
LAB_ITEM = "vmm-lab::full_boot"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the ``--vmm-*`` options and their ini keys."""
    group = parser.getgroup("vmm-reference")
    for flag, ini, help_text in _OPTIONS:
        group.addoption(flag, dest=ini, default=None, help=help_text)
        parser.addini(ini, help_text.split(" [")[0])
    group.addoption("--vmm-disk", action="append", dest="vmm_disk", default=[], metavar="DISK",
                    help="disk image for the vm fixture, repeatable: PATH or path=PATH[,read_only=on][,serial=S]")
    parser.addini("vmm_disk", "disk images for the vm fixture, one per line", type="linelist")
    group.addoption("--vmm-share", action="append", dest="vmm_share", default=[], metavar="SHARE",
                    help="a host directory for the vm fixture to mount by its tag, repeatable: "
                         "path=DIR,tag=TAG[,read_only=on] (mount -t virtiofs TAG /mnt)")
    parser.addini("vmm_share", "shared directories for the vm fixture, one per line", type="linelist")
    group.addoption("--vmm-keep-console", action="store_true", default=False,
                    help="save every VM's console under the test's tmp_path, not only failed tests'")
    group.addoption("--vmm-strict", action="store_true", default=False,
                    help="fail instead of skipping tests that cannot run here (vmm-reference)")


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers."""
    config.addinivalue_line("markers", "vm(**kwargs): Vm arguments for the vm fixture; several markers run the "
                            "test once per marker")
    config.addinivalue_line("markers", "full_boot: boots a stock kernel to userspace: run directly on hardware "
                            "KVM, in the nested-KVM lab on PVM hosts")


def _setting(config: pytest.Config, name: str) -> Optional[str]:
    value = config.getoption(name, default=None)
    if value is None:
        ini = config.getini(name)
        value = ini if ini else None
    return None if value is None else str(value)


def _number(config: pytest.Config, name: str, default: float, kind: Callable[[str], Any]) -> Any:
    value = _setting(config, name)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise pytest.UsageError(f"invalid {name}={value!r}: expected a number") from None


def skip_or_fail(config: pytest.Config, reason: str) -> None:
    """Skip the running test, or fail it under ``--vmm-strict``."""
    if config.getoption("--vmm-strict", default=False):
        pytest.fail(f"cannot run here (and --vmm-strict is set): {reason}")
    pytest.skip(reason)


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
def vm_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Vm]]:
    """Build VMs like ``Vm(...)``; all are killed when the test ends.

    ``memory_mib`` and ``vcpus`` default to ``--vmm-memory`` and ``--vmm-vcpus``; each VM's
    :attr:`~vmm_reference.Vm.expect_timeout` is ``--vmm-timeout``.
    """
    if detect_kvm_kind() == "none":
        skip_or_fail(request.config, "/dev/kvm is not available (missing, or no read/write access)")
    config = request.config
    memory = _number(config, "vmm_memory", 256, int)
    vcpus = _number(config, "vmm_vcpus", 1, int)
    timeout = _number(config, "vmm_timeout", 60.0, float)
    transport = _setting(config, "vmm_transport")
    made = request.node.stash.setdefault(_VMS, [])
    request.node.stash[_CONSOLE_DIR] = tmp_path

    def make(**kwargs: Any) -> Vm:
        kwargs.setdefault("memory_mib", memory)
        kwargs.setdefault("vcpus", vcpus)
        if transport is not None:
            kwargs.setdefault("transport", transport)
        vm = Vm(**kwargs)
        vm.expect_timeout = timeout
        made.append(vm)
        return vm

    try:
        yield make
    finally:
        keep = config.getoption("--vmm-keep-console", default=False) or request.node.stash.get(_FAILED, False)
        for i, vm in enumerate(made):
            vm.close()
            if keep:
                (tmp_path / f"guest-console-{i}.log").write_bytes(vm.serial.log_bytes)


@pytest.fixture
def vm(request: pytest.FixtureRequest, vm_factory: Callable[..., Vm]) -> Vm:
    """One started VM: ``--vmm-kernel``/``--vmm-initrd`` (or the Debian guest), ``@pytest.mark.vm`` arguments.

    It has a vsock device unless the marker says ``vsock=None`` (or ``False``), for :meth:`Vm.run`.
    """
    kwargs: dict[str, Any] = {}
    marker = request.node.get_closest_marker("vm")
    if hasattr(request, "param"):
        kwargs.update(request.param)
    elif marker is not None:
        kwargs.update(marker.kwargs)
    _default_vm_arguments(request, kwargs)
    machine = vm_factory(**kwargs)
    machine.start()
    return machine


@pytest.fixture
def host_vm(request: pytest.FixtureRequest, vm_factory: Callable[..., Vm], tmp_path: Path) -> Vm:
    """Start a VM on the host's root (``root="host"``) and wait for its agent.

    :meth:`Vm.run` runs the host's programs; the test's ``tmp_path`` is shared read-write at
    the same path. The kernel is ``--vmm-kernel`` (it needs virtio-fs, vsock and overlayfs: see
    ``python -m vmm_reference.kconfig``) or Debian's cloud kernel; ``@pytest.mark.vm``
    arguments apply.
    """
    kwargs: dict[str, Any] = {}
    marker = request.node.get_closest_marker("vm")
    if marker is not None:
        kwargs.update(marker.kwargs)
    if "kernel" not in kwargs:
        kernel = _setting(request.config, "vmm_kernel")
        kwargs["kernel"] = kernel if kernel is not None else request.getfixturevalue("guest_assets").vmlinux
    cmdline = _setting(request.config, "vmm_cmdline")
    if cmdline is not None:
        kwargs.setdefault("cmdline", cmdline)
    kwargs.setdefault("root", "host")
    kwargs.setdefault("cwd", tmp_path)
    machine = vm_factory(**kwargs)
    machine.start()
    machine.wait_ready(timeout=machine.expect_timeout or 120.0)
    return machine


def _default_vm_arguments(request: pytest.FixtureRequest, kwargs: dict[str, Any]) -> None:
    """Fill in the ``vm`` fixture's defaults: kernel and initrd, disks, a vsock device."""
    if "kernel" not in kwargs:
        kernel = _setting(request.config, "vmm_kernel")
        if kernel is not None:
            kwargs["kernel"] = kernel
            initrd = _setting(request.config, "vmm_initrd")
            if initrd is not None:
                kwargs.setdefault("initrd", initrd)
        else:
            assets = request.getfixturevalue("guest_assets")
            kwargs["kernel"] = assets.vmlinux
            kwargs.setdefault("initrd", _setting(request.config, "vmm_initrd") or assets.initrd)
    cmdline = _setting(request.config, "vmm_cmdline")
    if cmdline is not None:
        kwargs.setdefault("cmdline", cmdline)
    if "disks" not in kwargs:
        specs = request.config.getoption("vmm_disk") or request.config.getini("vmm_disk")
        if specs:
            kwargs["disks"] = [_disk_option(spec) for spec in specs]
    if "shares" not in kwargs:
        specs = request.config.getoption("vmm_share") or request.config.getini("vmm_share")
        if specs:
            kwargs["shares"] = [_share_option(spec) for spec in specs]
    kwargs.setdefault("vsock", True)  # for vm.run(), vm.copy_to() and friends (the guest agent)


@pytest.fixture(scope="session")
def vm_template_parent(request: pytest.FixtureRequest) -> Iterator[Vm]:
    """Boot the session's template VM behind ``vm_template`` once; yield it ready and paused.

    Built like the ``vm`` fixture (``--vmm-kernel``, ``--vmm-memory``, ... and their ini
    keys); it is ready when the guest agent answers, or when the console matches
    ``--vmm-template-ready``. Disks must be read-only to be shared by the clones.
    """
    if detect_kvm_kind() == "none":
        skip_or_fail(request.config, "/dev/kvm is not available (missing, or no read/write access)")
    config = request.config
    kwargs: dict[str, Any] = {
        "memory_mib": _number(config, "vmm_memory", 256, int),
        "vcpus": _number(config, "vmm_vcpus", 1, int),
    }
    _default_vm_arguments(request, kwargs)
    transport = _setting(config, "vmm_transport")
    if transport is not None:
        kwargs.setdefault("transport", transport)
    timeout = _number(config, "vmm_timeout", 60.0, float)
    template = Vm(**kwargs)
    try:
        template.start()
        ready = _setting(config, "vmm_template_ready")
        if ready is not None:
            template.expect(ready, timeout=timeout)
        else:
            template.wait_ready(timeout=timeout)
        template.pause()
        yield template
    finally:
        template.close()


@pytest.fixture
def vm_template(request: pytest.FixtureRequest, vm_template_parent: Vm) -> Iterator[Vm]:
    """Return a running fork of the session's template VM (booted once per session, forked per test).

    Each test gets its own clone (its own memory, console and devices, resumed from where the
    template was ready), killed when the test ends; its console appears in failure reports
    like the ``vm`` fixture's.
    """
    (clone,) = vm_template_parent.fork()
    clone.expect_timeout = _number(request.config, "vmm_timeout", 60.0, float)
    request.node.stash.setdefault(_VMS, []).append(clone)
    try:
        clone.resume()
        if _setting(request.config, "vmm_template_ready") is None:
            # The clone's guest sees its vsock connections reset: wait until its agent
            # answers again, so the test's first run() does not race that reset.
            clone.wait_ready(timeout=clone.expect_timeout or 60.0)
        yield clone
    finally:
        clone.close()


def _disk_option(spec: str) -> Disk:
    """Parse a ``--vmm-disk`` value: a plain path, or the CLI's ``path=...,read_only=...`` form."""
    if not spec.startswith("path="):
        return Disk(spec)
    from .cli import CliError, parse_disk

    try:
        return parse_disk(spec)
    except CliError as e:
        raise pytest.UsageError(f"--vmm-disk: {e}") from None


def _share_option(spec: str) -> Share:
    """Parse a ``--vmm-share`` value: the CLI's ``path=...,tag=...[,read_only=on][,protocol=9p]`` form."""
    from .cli import CliError, parse_share

    try:
        return parse_share(spec)
    except CliError as e:
        raise pytest.UsageError(f"--vmm-share: {e}") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test that uses ``vm`` once per ``@pytest.mark.vm`` marker when it has several."""
    if "vm" not in metafunc.fixturenames:
        return
    markers = list(metafunc.definition.iter_markers("vm"))
    if len(markers) > 1:
        params = [m.kwargs for m in reversed(markers)]  # in the order they are written
        # Name each run by the arguments that differ between the markers.
        keys = sorted({k for p in params for k in p})
        varying = [k for k in keys if len({repr(p.get(k)) for p in params}) > 1] or keys
        ids = ["-".join(f"{k}={p[k]}" for k in varying if k in p) or "default" for p in params]
        metafunc.parametrize("vm", params, indirect=True, ids=ids)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the console of every VM the test made to a failed test's report."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        item.stash[_FAILED] = True
        made: list[Vm] = item.stash[_VMS] if _VMS in item.stash else []
        for i, machine in enumerate(made):
            log = machine.serial.log_bytes
            tail = log[-_CONSOLE_TAIL:].decode("utf-8", errors="replace")
            where = item.stash.get(_CONSOLE_DIR, None)
            saved = f"(whole log: {where / f'guest-console-{i}.log'})\n" if where is not None else ""
            cut = f"[... {len(log) - _CONSOLE_TAIL} earlier bytes ...]\n" if len(log) > _CONSOLE_TAIL else ""
            report.sections.append((f"Captured guest console (VM {i}, {machine.state})", saved + cut + tail))
    return report


class LabItem(pytest.Item):
    """Runs the session's ``full_boot`` tests inside the nested-KVM lab (on PVM hosts)."""

    def __init__(self, *, nodeids: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nodeids = nodeids

    def runtest(self) -> None:
        """Start the lab, run pytest on the collected full-boot tests there, fail unless all pass."""
        from .lab import host_python_command, lab_available, run_in_lab

        why = lab_available()
        if why:
            skip_or_fail(self.config, why)
        try:
            fetch_guest()  # on the host, where apt and the network are
        except AssetError as e:
            skip_or_fail(self.config, str(e))
        strict = ["--vmm-strict"] if self.config.getoption("--vmm-strict") else []
        command = host_python_command(["-m", "pytest", "-p", "no:cacheprovider", "-v", "-o", "addopts=", *strict,
                                       *self.nodeids], env={"VMM_REFERENCE_IN_LAB": "1"})
        result = None
        for _attempt in range(2):  # once more only if the lab itself reported nothing
            # A safety net, generous for the slowest host: the lab emulates everything.
            # 8 GiB: the session's pytest process boots one guest after another (up to 384 MiB
            # each); with 4 GiB the lab's OOM killer ended a whole session, though repeated
            # boots alone show the process's memory flat.
            result = run_in_lab(command, timeout=600 + 150 * len(self.nodeids), memory_mib=8192,
                                cwd=str(self.config.rootpath))
            if result.status is not None:
                break
        assert result is not None
        tail = "\n".join(result.output.splitlines()[-60:])
        if result.status != 0:
            raise AssertionError(f"full-boot tests in the nested-KVM lab: status {result.status}\n{tail}")
        summary = re.search(r"^=+ (\d+) passed(.*) =+\s*$", result.output, re.M)
        others = summary and re.search(r"\b(failed|skipped|errors?|xfailed|xpassed|deselected)\b", summary.group(2))
        if not summary or int(summary.group(1)) != len(self.nodeids) or others:
            raise AssertionError(f"expected {len(self.nodeids)} tests to pass in the lab, and nothing else\n{tail}")

    def reportinfo(self) -> tuple[str, Optional[int], str]:
        """Where the item comes from, for reports."""
        return "vmm-lab", None, f"{LAB_ITEM} ({len(self.nodeids)} tests in the nested-KVM lab)"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """On PVM hosts, move ``full_boot`` tests into one lab item; elsewhere leave them be."""
    full = [item for item in items if item.get_closest_marker("full_boot")]
    if not full or os.environ.get("VMM_REFERENCE_IN_LAB") or detect_kvm_kind() != "pvm":
        return
    skip = pytest.mark.skip(reason=f"PVM cannot boot stock kernels to userspace: run inside the lab by {LAB_ITEM}")
    for item in full:
        item.add_marker(skip)
    lab = LabItem.from_parent(session, name=LAB_ITEM, nodeids=[item.nodeid for item in full])
    items.append(lab)
