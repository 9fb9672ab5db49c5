"""The :class:`Vm` class: build a KVM virtual machine, boot a kernel, read its console."""

from __future__ import annotations

import os
import re
import time
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

from . import _native
from ._aio import to_thread
from ._checks import PathArg, check_int, check_path, gdb_arg, host_root_args, snapshot_dir
from ._guest import GuestAgentCalls
from .devices import DeviceInfo, DiskArg, NetArg, Rng, Share, Vsock, disk_tuples, net_tuples, share_tuples
from .errors import VmConfigError, VmStateError, VmTimeoutError
from .expect import Pattern, expect
from .serial import Serial
from .status import BootInfo, ExitStatus
from .vsock import VsockEndpoint
from .vsock import resolve as resolve_vsock

if TYPE_CHECKING:
    from .timeline import Timeline


class _Default:
    """The type of :data:`DEFAULT`."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()
"""Stands for "the VM's own setting" as a default argument (see :attr:`Vm.expect_timeout`)."""

_T = TypeVar("_T")




__all__ = ["DEFAULT_CMDLINE", "BootInfo", "ExitStatus", "Serial", "Vm", "max_vcpus"]

#: The command line used when none is given: reboot through the i8042 (so a guest ``reboot``
#: ends the VM) and reboot at once on panic. ``console=ttyS0`` is added to any command line
#: that names no console, and ``pci=off`` to any with no ``pci=`` when the VM has no PCI device.
DEFAULT_CMDLINE: str = _native.DEFAULT_CMDLINE


def max_vcpus() -> Optional[int]:
    """Return KVM's vCPU limit on this host, or None when KVM is unavailable."""
    return _native.max_vcpus()


class Vm(GuestAgentCalls):
    """A KVM virtual machine booting a Linux kernel (an ELF vmlinux or a bzImage).

    Building the object checks every argument and loads the kernel; :meth:`start` runs it.
    Use it as a context manager so the VM is killed however the block ends::

        with Vm(memory_mib=256, kernel="vmlinux", initrd="initrd.gz") as vm:
            vm.start()
            for line in vm.serial:
                print(line)
            status = vm.wait(timeout=30)

    Args:
        memory_mib: guest RAM in MiB. Beyond 3 GiB, the rest is placed above 4 GiB.
        vcpus: number of vCPUs, 1 to KVM's limit.
        kernel: path to an ELF vmlinux or a bzImage (detected from the file).
        cmdline: the kernel command line; ``console=ttyS0`` is added if it names no console,
            ``pci=off`` if it has no ``pci=`` and the VM no PCI device.
        himem_start: guest-physical address where the kernel is loaded and high memory
            starts; a multiple of 4 KiB from 1 MiB (0x100000, the default) up.
        initrd: optional initramfs, loaded at the top of low RAM.
        console_limit: console bytes retained (default 8 MiB); older output is dropped.
        acpi: give the guest ACPI tables (the default): a MADT listing every vCPU, so that
            kernels without MP-table support (Debian's cloud kernel) see them all, PM1
            registers so that a guest ``poweroff`` ends the VM with reason ``poweroff``, and
            the power button :meth:`stop` presses, and the DSDT through which Linux finds
            the virtio devices. ``False`` leaves only the MP table, which is always there.
        disks: raw disk images, each a path (a writable disk) or a :class:`~vmm_reference.Disk`
            (``read_only``, ``serial``); the guest sees them as virtio-blk devices, in order
            ``/dev/vda``, ``/dev/vdb``, ... Linux's ``virtio_mmio`` driver finds them through
            ACPI (``acpi=True``), then ``virtio_blk`` serves them. With ``acpi=False`` the
            command line names them instead (``virtio_mmio.device=4K@0xd0010000:5``), for
            kernels built with ``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES``.
        net: network devices (virtio-net), each a :class:`~vmm_reference.Tap` (a TAP
            interface of the host) or a :class:`~vmm_reference.UserNet` (user-mode networking
            through passt, no root); the guest needs ``virtio_net`` (the asset initramfs
            loads it).
        vsock: ``True`` for a virtio-vsock device with guest CID 3 and its host socket in a
            private temporary directory, or a :class:`~vmm_reference.Vsock` (``cid``,
            ``uds``); :attr:`vsock` then connects to the guest's ports and listens for its
            connections. The guest needs the ``vsock`` and ``vmw_vsock_virtio_transport``
            modules (the asset initramfs loads them).
        seccomp: filter the system calls of the VM's own threads (its vCPUs and event loop)
            with seccomp, each to the list its work needs (the default; see
            ``docs/security.md``). ``False`` is for debugging only. Your own threads are
            never filtered.
        transport: how the guest reaches the virtio devices. ``"mmio"`` (the default):
            virtio-mmio, for kernels with ``CONFIG_VIRTIO_MMIO``. ``"pci"``: virtio-pci
            (modern) with MSI-X behind a PCI host bridge (ECAM in the MCFG table and the
            0xCF8 ports), for kernels with ``CONFIG_VIRTIO_PCI`` such as ``make defconfig
            kvm_guest.config`` builds; ``pci=off`` is then not added to the command line,
            and a guest booted with ``pci=nomsi`` gets INTx instead of MSI-X.
            :attr:`boot_info` lists each device's transport, BDF and vectors.
        rng: ``True`` or an :class:`~vmm_reference.Rng` (``rate``, bytes per second) for a
            virtio-rng device fed from the host's ``getrandom``; the guest needs
            ``virtio_rng`` (the asset initramfs loads it).
        root: ``"host"``: the host's ``/`` is the guest's, read-only, with writable tmpfs
            overlays on ``/etc``, ``/var``, ``/root``, ``/home`` and ``/tmp`` and tmpfs on
            ``/run``; the guest's init (the asset initramfs, the default ``initrd`` then)
            mounts it, and :meth:`run` runs commands in the host's userspace. The kernel needs
            virtio-fs (or 9p, with ``root_protocol="9p"``) and overlayfs (built in, or the
            Debian modules the initramfs loads).
        cwd: with ``root="host"``: ``True`` (the working directory) or a directory, shared
            read-write at the same path.
        modules: with ``root="host"``: a directory of kernel modules
            (``/lib/modules/RELEASE``) mounted at ``/lib/modules/$(uname -r)``.
        root_protocol: with ``root="host"``: how the guest mounts the host's files,
            ``"virtiofs"`` (the default) or ``"9p"`` (for kernels without virtio-fs, as
            ``make defconfig kvm_guest.config`` builds them).
        gdb: a gdb stub: ``"unix:PATH"`` (a socket it makes) or a TCP port on 127.0.0.1. The
            guest then waits before its first instruction until gdb attaches (``gdb vmlinux
            -ex 'target remote PATH'``) and continues; boot Linux with ``nokaslr`` so that
            its symbols match. Every vCPU is a gdb thread; ``break``/``hbreak`` and
            ``watch`` (the four debug registers; guest memory is never patched), ``stepi``,
            Ctrl-C, ``detach`` (the guest runs on) and ``kill`` work.
        shares: host directories the guest mounts by tag (``mount -t virtiofs TAG /mnt``),
            as :class:`~vmm_reference.Share` objects; one virtio-fs (or virtio-9p) device
            each, served in this process. A VM with shares cannot be snapshotted or forked.

    Every blocking call releases the GIL and wakes for signals, so Ctrl-C (or Jupyter's
    interrupt) raises ``KeyboardInterrupt`` promptly.

    """

    def __init__(
        self,
        memory_mib: int = _native.DEFAULT_MEMORY_MIB,
        vcpus: int = 1,
        kernel: Optional[PathArg] = None,
        cmdline: str = DEFAULT_CMDLINE,
        himem_start: int = _native.HIMEM_START_DEFAULT,
        initrd: Optional[PathArg] = None,
        console_limit: int = _native.DEFAULT_CONSOLE_LIMIT,
        acpi: bool = True,
        disks: Sequence[DiskArg] = (),
        net: Sequence[NetArg] = (),
        vsock: Union[bool, Vsock, None] = None,
        seccomp: bool = True,
        transport: str = "mmio",
        rng: Union[bool, Rng, None] = None,
        shares: Sequence[Share] = (),
        root: Optional[str] = None,
        cwd: Union[bool, PathArg, None] = None,
        modules: Optional[PathArg] = None,
        root_protocol: Optional[str] = None,
        gdb: Union[str, int, None] = None,
    ) -> None:
        if not isinstance(cmdline, str):
            raise VmConfigError(f"invalid cmdline={cmdline!r}: expected a str")
        if not isinstance(transport, str):
            raise VmConfigError(f'invalid transport={transport!r}: expected "mmio" or "pci"')
        gdb_text = gdb_arg(gdb)
        if not (rng is None or isinstance(rng, (bool, Rng))):
            raise VmConfigError(f"invalid rng={rng!r}: expected True, False, None or an Rng")
        kernel_path = check_path("kernel", kernel)
        assert kernel_path is not None
        host_root = host_root_args(root, cwd, modules, root_protocol)
        if host_root is not None and initrd is None:
            from .assets import fetch_guest

            initrd = fetch_guest().initrd  # its /init mounts the host's root
        if host_root is not None and vsock is None:
            vsock = True  # the agent runs the commands
        disk_list = disk_tuples(disks)
        net_list = net_tuples(net)
        share_list = share_tuples(shares)
        endpoint = resolve_vsock(vsock)
        try:
            native = _native.NativeVm(
                memory_mib=check_int("memory_mib", memory_mib),
                vcpus=check_int("vcpus", vcpus),
                kernel=kernel_path,
                cmdline=cmdline,
                himem_start=check_int("himem_start", himem_start),
                initrd=check_path("initrd", initrd, optional=True),
                console_limit=check_int("console_limit", console_limit),
                acpi=bool(acpi),
                disks=disk_list,
                net=net_list,
                vsock=None if endpoint is None else (endpoint.cid, endpoint.uds),
                seccomp=bool(seccomp),
                transport=transport,
                rng=bool(rng),
                rng_rate=rng.rate if isinstance(rng, Rng) else None,
                shares=share_list,
                host_root=host_root,
                gdb=gdb_text,
            )
        except BaseException:
            if endpoint is not None:
                endpoint.close()
            raise
        self._bind(native, endpoint)

    def _bind(self, native: _native.NativeVm, endpoint: Optional[VsockEndpoint]) -> None:
        """Become the VM ``native`` is (its configuration read back from it); it owns ``endpoint``."""
        memory_mib, vcpus, kernel, acpi, disks, vsock = native.config()
        if endpoint is not None and vsock is None:
            endpoint.close()  # the saved VM had no vsock device: the socket was not needed
            endpoint = None
        self._native = native
        self._vsock = endpoint
        if endpoint is not None:
            weakref.finalize(self, endpoint.close)
        self.disks = [(os.fspath(p), ro, serial) for p, ro, serial in disks]
        """The disks as ``(path, read_only, serial)``, in the order the guest sees them."""
        self._serial = Serial(native)
        self._expect_offset = 0
        self.memory_mib: int = memory_mib
        """The guest's RAM in MiB."""
        self.acpi: bool = acpi
        """Whether the guest has ACPI tables (and so a power button)."""
        self.expect_timeout: Optional[float] = 30.0
        """Seconds :meth:`expect` waits when given no ``timeout`` (``None``: forever)."""
        self.vcpus: int = vcpus
        """The number of vCPUs."""
        self.kernel: str = os.fspath(kernel)
        """The kernel image's path."""

    @classmethod
    def _adopt(cls, native: _native.NativeVm, endpoint: Optional[VsockEndpoint]) -> Vm:
        """Wrap a native VM built from a snapshot, a fork or the command line; it owns ``endpoint``."""
        vm = cls.__new__(cls)
        vm._bind(native, endpoint)
        return vm

    def snapshot(self, path: PathArg) -> int:
        """Save the whole VM into the directory ``path`` (created if missing); return the bytes of memory written.

        Works on a running VM (paused for the snapshot, then resumed) or a paused one. The
        directory gets ``state`` (vCPUs, KVM's interrupt controllers and clock, devices;
        versioned and checksummed) and ``memory`` (guest RAM, sparse: pages the guest never
        wrote take no space). :meth:`restore` brings it back.
        """
        return int(self._native.snapshot(snapshot_dir("path", path)))

    def dump_core(self, path: PathArg) -> int:
        """Write an ELF core of the guest to the file ``path``; return the bytes of RAM written.

        The layout is QEMU's ``dump-guest-memory``: every vCPU's registers (``NT_PRSTATUS``
        and ``QEMU`` notes), the guest kernel's ``VMCOREINFO`` note when it has one, and one
        ``PT_LOAD`` per RAM range at its guest-physical address, sparse (never-touched pages
        are holes). ``crash vmlinux FILE``, ``drgn -c FILE``, ``gdb`` and ``readelf`` open it.
        A running VM is paused for it and resumed.
        """
        out = check_path("path", path)
        assert out is not None
        return int(self._native.dump_core(out))

    @classmethod
    def restore(
        cls,
        path: PathArg,
        *,
        console_limit: Optional[int] = None,
        vsock: Optional[Vsock] = None,
        seccomp: bool = True,
        disks: Optional[Sequence[DiskArg]] = None,
        net: Optional[Sequence[NetArg]] = None,
        gdb: Union[str, int, None] = None,
    ) -> Vm:
        """Return a paused VM from the snapshot in the directory ``path``; :meth:`resume` runs it.

        The guest goes on from the exact instruction where it was saved; its memory is the
        snapshot's memory file mapped copy-on-write, read as the guest touches it (the file
        must stay there while the VM lives). The console starts empty and keeps
        ``console_limit`` bytes (the saved VM's limit by default).

        What the host gives the VM is the caller's to say: ``disks`` and ``net`` (one entry
        per saved device, in order, as :class:`Vm` takes them) replace the images, TAPs and
        passt settings the snapshot names; left None, the saved ones are opened again (trust
        the file for that only if you made it: ``docs/security.md``). A vsock device listens on
        ``vsock.uds`` if given, else on a new private socket, and the guest sees its vsock
        connections reset (its listeners stay). ``seccomp`` is this call's, never the
        snapshot's: a VM saved with ``seccomp=False`` restores filtered unless you say so.
        ``gdb`` (as :class:`Vm` takes it) debugs the restored guest: its vCPUs stay where
        they were saved, after :meth:`resume` too, until gdb attaches and continues.

        Raises :class:`VmSnapshotError` for a missing, truncated, damaged or foreign snapshot,
        one from another format version, or one whose guest uses CPU features this host's KVM
        lacks; :class:`VmConfigError` naming ``disks`` or ``net`` when their count differs
        from the snapshot's devices.
        """
        directory = snapshot_dir("path", path)
        limit = None if console_limit is None else check_int("console_limit", console_limit)
        disk_list = None if disks is None else disk_tuples(disks)
        net_list = None if net is None else net_tuples(net)
        gdb_text = gdb_arg(gdb)
        endpoint = resolve_vsock(vsock if vsock is not None else True)
        try:
            native = _native.NativeVm.restore(
                directory, console_limit=limit, vsock_uds=None if endpoint is None else endpoint.uds,
                seccomp=bool(seccomp), disks=disk_list, net=net_list, gdb=gdb_text,
            )
        except BaseException:
            if endpoint is not None:
                endpoint.close()
            raise
        vm = cls._adopt(native, endpoint)
        saved_vsock = native.config()[5]
        if vm._vsock is not None and saved_vsock is not None:
            vm._vsock.cid = saved_vsock[0]  # the guest's CID is the saved one
        return vm

    def fork(self, n: int = 1) -> list[Vm]:
        """Return ``n`` paused clones of this VM, sharing its memory copy-on-write; :meth:`resume` runs each.

        A clone goes on from where this VM is, with its own console (empty), devices and exit
        status; its memory writes are its own, and neither this VM's later writes nor another
        clone's reach it. A running VM is paused for the fork and runs on afterwards. The
        first fork copies the guest's memory once into a sealed in-memory file that this VM
        and its clones then map privately; forking again before this VM writes to its memory
        reuses it, so each further clone costs a new KVM VM and its vCPUs, not a copy.

        What a clone gets of the VM's devices: read-only disks are shared; a vsock device gets
        a new private socket (the clone's guest sees its vsock connections reset, its
        listeners stay, so :meth:`run` works in every clone); user-mode networking without
        forwarded ports gets its own passt. A writable disk, a TAP or forwarded ports cannot
        be shared and raise :class:`VmSnapshotError` (attach disks read-only to fork).
        """
        count = check_int("n", n)
        if not 1 <= count <= _native.MAX_FORK:
            raise VmConfigError(f"invalid n={count}: expected 1 to {_native.MAX_FORK} clones per call")
        endpoints: list[Optional[VsockEndpoint]] = []
        try:
            for _ in range(count):
                endpoints.append(
                    None if self._vsock is None else resolve_vsock(Vsock(cid=self._vsock.cid))
                )
            natives = self._native.fork([None if e is None else e.uds for e in endpoints])
        except BaseException:
            for e in endpoints:
                if e is not None:
                    e.close()
            raise
        return [Vm._adopt(native, e) for native, e in zip(natives, endpoints)]

    def start(self) -> None:
        """Start the guest. A VM starts once; a second call raises :class:`VmStateError`."""
        self._native.start()

    def wait(self, timeout: Optional[float] = None) -> ExitStatus:
        """Wait for the VM to stop and return how it ended.

        Raises :class:`VmTimeoutError` (a ``TimeoutError``) after ``timeout`` seconds, with
        the last console lines in its message; :class:`VmStateError` if never started.
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout < 0):
            raise VmConfigError(f"invalid timeout={timeout!r}: expected None or seconds >= 0")
        result = self._native.wait(timeout)
        if result is None:
            raise VmTimeoutError(
                f"the VM did not stop within timeout={timeout}s; last console lines:\n"
                + self._serial._tail()
            )
        return ExitStatus(*result)

    async def wait_async(self, timeout: Optional[float] = None) -> ExitStatus:
        """Like :meth:`wait`, without blocking the asyncio event loop (cancellable)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            result = await to_thread(self._native.wait, remaining)
            if result is not None:
                return ExitStatus(*result)
            if deadline is not None and time.monotonic() >= deadline:
                raise VmTimeoutError(
                    f"the VM did not stop within timeout={timeout}s; last console lines:\n" + self._serial._tail()
                )

    def expect(
        self,
        pattern: Pattern,
        timeout: Union[float, None, _Default] = DEFAULT,
        fail: Optional[Union[Pattern, list[Pattern]]] = None,
    ) -> re.Match[Any]:
        """Wait for the regex ``pattern`` (str or bytes) in the console output and return the match.

        Matching starts where the previous :meth:`expect` match ended (at the start of the
        console for the first call) and sees partial lines, such as a shell prompt. ``fail``:
        patterns that raise :class:`~vmm_reference.expect.ExpectFailure` if they appear first.
        Raises :class:`VmTimeoutError` (a ``TimeoutError``) after ``timeout`` seconds (default
        :attr:`expect_timeout`; ``None`` waits forever) and
        :class:`~vmm_reference.expect.VmExitedError` at once if the VM exits first; messages
        show the last console lines.
        """
        if isinstance(timeout, _Default):
            timeout = self.expect_timeout
        match, self._expect_offset = expect(self._native, self._expect_offset, pattern, timeout, fail)
        return match

    async def expect_async(
        self,
        pattern: Pattern,
        timeout: Union[float, None, _Default] = DEFAULT,
        fail: Optional[Union[Pattern, list[Pattern]]] = None,
    ) -> re.Match[Any]:
        """Like :meth:`expect`, without blocking the asyncio event loop."""
        return await to_thread(self.expect, pattern, timeout, fail)

    def pause(self) -> None:
        """Pause a running VM; returns once no vCPU runs guest code. Raises :class:`VmStateError` unless running."""
        self._native.pause()

    def resume(self) -> None:
        """Resume a paused VM. Raises :class:`VmStateError` unless paused."""
        self._native.resume()

    def kill(self) -> None:
        """Stop the VM now (reason ``killed`` unless it already stopped). Does not block."""
        self._native.kill()

    def press_power_button(self) -> bool:
        """Press the guest's ACPI power button; return whether the guest listens for it.

        ``False`` means the guest's kernel never enabled the event (no ACPI ``button``
        driver), so the press goes unseen. What a seen press does is the guest's choice:
        Linux turns it into a KEY_POWER input event for acpid or systemd-logind, which
        usually shut down (reason ``poweroff``). Needs ``acpi=True`` (the default) and a
        running VM, else :class:`VmConfigError` / :class:`VmStateError`.
        """
        if not self.acpi:
            raise VmConfigError("invalid acpi=False for press_power_button(): the power button is an ACPI "
                                "device; create the Vm with acpi=True (the default)")
        return self._native.press_power_button()

    def stop(self, timeout: float = 30.0) -> ExitStatus:
        """Ask the guest to shut down through the ACPI power button; kill it after ``timeout`` seconds.

        Returns the exit status: ``poweroff`` (or whatever the guest ended with) if it shut
        down in time, else ``killed``. A paused VM is resumed first; a VM never started is
        marked killed; a VM that already exited keeps its status. Without ACPI, or when the
        guest does not listen for the button, it is killed at once.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise VmConfigError(f"invalid timeout={timeout!r}: expected seconds >= 0")
        state = self.state
        if state == "created":
            self.kill()
        elif state != "exited":
            if state == "paused":
                self.resume()
            try:
                listening = self.acpi and self._native.press_power_button()
            except VmStateError:
                listening = False  # it exited meanwhile
            if listening:
                try:
                    return self.wait(timeout)
                except VmTimeoutError:
                    pass
            self.kill()
        return self.wait()

    def write(self, data: Union[bytes, str]) -> int:
        """Send ``data`` to the guest's serial input; returns how many bytes were accepted.

        Input waiting for the guest is bounded (1 MiB); beyond that bytes are refused.
        """
        if isinstance(data, str):
            data = data.encode()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise VmConfigError(f"invalid data={data!r}: expected bytes or str")
        return self._native.write(bytes(data))

    @property
    def state(self) -> str:
        """``"created"``, ``"running"``, ``"paused"`` or ``"exited"``."""
        return self._native.state

    @property
    def exit_status(self) -> Optional[ExitStatus]:
        """How the VM ended, or None while it has not."""
        result = self._native.exit_status
        return None if result is None else ExitStatus(*result)

    @property
    def serial(self) -> Serial:
        """The serial console."""
        return self._serial

    @property
    def console_log(self) -> str:
        """All retained console output so far."""
        return self._serial.log

    @property
    def console_limit(self) -> int:
        """How many console bytes are retained."""
        return self._native.console_limit

    @property
    def boot_info(self) -> BootInfo:
        """Where the kernel, command line and initrd went, and the e820 map."""
        info: dict[str, Any] = self._native.boot_info()
        disks = iter(self.disks)
        devices = []
        for kind, base, length, gsi, transport, bdf, vectors in info.pop("devices"):
            where = {"transport": transport, "bdf": bdf, "msix_vectors": vectors}
            if kind == "virtio-blk":
                path, read_only, serial = next(disks)
                devices.append(DeviceInfo(kind, base, length, gsi, path, read_only, serial, **where))
            else:
                devices.append(DeviceInfo(kind, base, length, gsi, **where))
        return BootInfo(**info, devices=devices)

    def stats(self) -> dict[str, Any]:
        """Return counters, cheap enough to call in a loop.

        ``exits``: vCPU exits by kind (``io``, ``io_unhandled``, ``mmio``, ``mmio_unhandled``,
        ``hlt``, ``interrupted``); ``console_bytes``: bytes the guest printed; ``rss_bytes``:
        this process's resident memory; ``uptime``: seconds since :meth:`start`.
        """
        return self._native.stats()

    @property
    def events(self) -> list[tuple[int, float]]:
        """Boot-time markers: ``(value, seconds since start())`` per byte written to port 0x440 or MMIO 0xd0001000."""
        return self._native.boot_markers()

    def timeline(self, title: str = "boot timeline") -> Timeline:
        """Return the boot so far as a :class:`~vmm_reference.timeline.Timeline`, seconds since :meth:`start`.

        Events: the first console byte, boot markers (:attr:`events`), the kernel's log lines
        with their own timestamps placed on the host's clock, the initramfs's ready line, the
        guest agent's first answer to :meth:`wait_ready` and the exit; phases as in bench case
        7 (see :mod:`vmm_reference.timeline`). A notebook draws it; ``.plot()`` draws it on
        matplotlib axes.
        """
        from .timeline import build

        start, data = self._native.console_snapshot()
        first_byte, line_times = self._native.console_times()
        status, exit_time = self.exit_status, self._native.exit_time
        return build(data, start, first_byte=first_byte, line_times=line_times, markers=self.events,
                     agent_ready=self._agent_ready, title=title,
                     exit=None if status is None or exit_time is None else (exit_time, status))

    def __enter__(self) -> Vm:
        """Return the VM itself."""
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        """Kill the VM and wait for its threads to stop."""
        self.close()

    def close(self) -> None:
        """Kill the VM if it is running and wait until every vCPU has stopped."""
        self._native.kill()
        if self._native.state != "created":
            self._native.wait(None)
        if self._vsock is not None:
            self._vsock.close()

    @property
    def vsock(self) -> Optional[VsockEndpoint]:
        """The vsock device's host end (``connect(port)``, ``listen(port)``), or None without one."""
        return self._vsock

    def console_follow(self) -> tuple[bytes, Serial]:
        """Return the retained console output and a :class:`Serial` that goes on after it.

        The reader's :meth:`~Serial.read` has its own position: it takes nothing from
        :attr:`serial`.
        """
        start, data = self._native.console_snapshot()
        return data, Serial(self._native, offset=start + len(data))

    def _repr_html_(self) -> str:
        """State, configuration, exit status and the console's tail, for Jupyter."""
        from .jupyter import vm_html

        return vm_html(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Plain text and HTML (see :meth:`_repr_html_`)."""
        return {"text/plain": repr(self), "text/html": self._repr_html_()}

    def show(self) -> Any:
        """Return a live console view for Jupyter (:class:`~vmm_reference.jupyter.ConsoleView`).

        Needs ipywidgets (``pip install vmm-reference[jupyter]``); without it, returns the VM
        itself, which a notebook displays with its static repr.
        """
        from .jupyter import show

        return show(self)

    def __repr__(self) -> str:
        """Show size and state."""
        return f"<Vm memory_mib={self.memory_mib} vcpus={self.vcpus} state={self.state}>"


    # ---- The guest agent (vmm-agent over vsock): commands and files. ----
