"""The guest agent's calls on a :class:`~vmm_reference.Vm`, in one place.

``wait_ready``, ``run``, ``run_async``, ``copy_to`` and ``copy_from``; ``Vm`` inherits them.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any, Optional

from ._aio import to_thread
from ._checks import PathArg
from .agent import DEFAULT_MAX_OUTPUT, Client, Command, Input
from .errors import VmConfigError, VmStateError, VmTimeoutError
from .serial import Serial
from .status import ExitStatus
from .vsock import VsockEndpoint

__all__ = ["GuestAgentCalls"]


class GuestAgentCalls:
    """What a VM does through its guest agent over vsock (see :class:`vmm_reference.agent.Client`)."""

    _vsock: Optional[VsockEndpoint]
    _serial: Serial
    _agent_ready: Optional[float] = None
    """Seconds since ``start()`` when :meth:`wait_ready` first heard the agent answer (the
    timeline's ``agent`` event: the host learns of the agent only by asking)."""

    def stats(self) -> dict[str, Any]:
        """Return the VM's counters (``Vm.stats``)."""
        raise NotImplementedError

    @property
    def state(self) -> str:
        """The VM's state (``Vm.state``)."""
        raise NotImplementedError

    @property
    def exit_status(self) -> Optional[ExitStatus]:
        """How the VM ended (``Vm.exit_status``)."""
        raise NotImplementedError

    def _agent_check(self) -> None:
        """Raise :class:`VmExitedError` if the VM has exited, :class:`VmStateError` if it never started."""
        from .expect import VmExitedError

        state = self.state
        if state == "exited":
            raise VmExitedError(f"the VM has exited ({self.exit_status}); last console lines:\n"
                                + self._serial._tail())
        if state == "created":
            raise VmStateError("the VM has not been started: call start() first (then wait_ready())")

    def _agent_client(self, what: str) -> Client:
        """Connect to the guest agent; return an :class:`vmm_reference.agent.Client`."""
        from .agent import AGENT_PORT
        from .errors import VmAgentError

        if self._vsock is None:
            raise VmConfigError(f"{what} talks to the guest agent over vsock, and this VM has no vsock device: "
                                "create the Vm with vsock=True")
        self._agent_check()
        try:
            sock = self._vsock.connect(AGENT_PORT, timeout=10)
        except OSError as e:  # refused (nothing listens), reset, timed out (no vsock driver)
            self._agent_check()
            raise VmAgentError(
                f"{what}: no guest agent answers on vsock port {AGENT_PORT} ({e}). The guest must run vmm-agent "
                "(the asset initramfs and root filesystem start it; for your own image see docs/guide.md); "
                "after start(), vm.wait_ready() waits until it listens") from None
        return Client(sock, check=self._agent_check)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the guest agent answers (a PING over vsock); retry while nothing listens yet.

        Raises :class:`VmTimeoutError` after ``timeout`` seconds (showing the last console
        lines), :class:`~vmm_reference.VmExitedError` at once if the VM exits first. Needs
        ``Vm(vsock=True)`` and a guest that starts ``vmm-agent`` (the asset initramfs does).
        """
        from .agent import AGENT_PORT
        from .errors import VmAgentError

        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise VmConfigError(f"invalid timeout={timeout!r}: expected seconds >= 0")
        if self._vsock is None:
            raise VmConfigError("wait_ready() waits for the guest agent over vsock, and this VM has no vsock "
                                "device: create the Vm with vsock=True")
        deadline = time.monotonic() + timeout
        last: Optional[BaseException] = None
        while True:
            self._agent_check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VmTimeoutError(f"the guest agent did not answer within timeout={timeout}s ({last}); "
                                     "last console lines:\n" + self._serial._tail())
            try:
                # A guest whose vsock driver is not up yet does not answer at all: retry often.
                sock = self._vsock.connect(AGENT_PORT, timeout=min(remaining, 1.0))
                with Client(sock, check=self._agent_check) as client:
                    client.ping(timeout=min(remaining, 5.0))
                if self._agent_ready is None:
                    self._agent_ready = float(self.stats()["uptime"])
                return
            except (OSError, VmAgentError) as e:  # refused, reset, timed out: not listening yet
                last = e
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def run(
        self,
        cmd: Command,
        *,
        timeout: Optional[float] = None,
        input: Input = None,
        env: Optional[dict[str, str]] = None,
        cwd: Optional[PathArg] = None,
        check: bool = False,
        text: bool = False,
        max_output: Optional[int] = DEFAULT_MAX_OUTPUT,
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command in the guest through its agent and return a :class:`subprocess.CompletedProcess`.

        ``cmd`` is a str, run by ``/bin/sh -c``, or a list (``argv``, found on ``PATH``).
        The result has ``args`` (``cmd``), ``returncode`` (``-N`` if signal N killed it; 127
        when the program does not exist), ``stdout`` and ``stderr`` (bytes, or str decoded as
        UTF-8 with ``text=True``), as ``subprocess.run(..., capture_output=True)`` gives.
        ``input`` (bytes, str, or a binary file) is the command's stdin (empty when None);
        ``env`` adds variables to the agent's environment (``PATH`` and ``HOME`` set); ``cwd``
        is its working directory (``/`` by default). ``check=True`` raises
        :class:`subprocess.CalledProcessError` on a non-zero code. After ``timeout`` seconds
        the command's process group is killed and :class:`VmTimeoutError` raised, its
        ``stdout``/``stderr`` holding the output so far.

        Output streams through: only the result is kept, at most ``max_output`` bytes of
        stdout and stderr together (default 1 GiB; None for no limit): past that the command
        is killed and :class:`~vmm_reference.VmAgentError` raised, its ``stdout``/``stderr``
        holding what was kept. No agent listening
        raises :class:`~vmm_reference.VmAgentError` at once, the VM exiting
        :class:`~vmm_reference.VmExitedError`; a VM without ``vsock=True``
        :class:`VmConfigError`. Call :meth:`wait_ready` after :meth:`start` first.
        """
        with self._agent_client("run()") as client:
            return client.run(cmd, timeout=timeout, input=input, env=env, cwd=cwd, check=check, text=text,
                              max_output=max_output)

    async def run_async(
        self,
        cmd: Command,
        *,
        timeout: Optional[float] = None,
        input: Input = None,
        env: Optional[dict[str, str]] = None,
        cwd: Optional[PathArg] = None,
        check: bool = False,
        text: bool = False,
        max_output: Optional[int] = DEFAULT_MAX_OUTPUT,
    ) -> subprocess.CompletedProcess[Any]:
        """Like :meth:`run`, without blocking the asyncio event loop; cancelling it kills the command."""
        import threading

        cancel = threading.Event()

        def work() -> subprocess.CompletedProcess[Any]:
            with self._agent_client("run_async()") as client:
                return client.run(cmd, timeout=timeout, input=input, env=env, cwd=cwd, check=check, text=text,
                                  cancel=cancel, max_output=max_output)

        try:
            return await to_thread(work)
        finally:
            cancel.set()

    def copy_to(self, host_path: PathArg, guest_path: PathArg, timeout: Optional[float] = None) -> None:
        """Copy a host file or directory tree into the guest, modes kept (``cp -r`` semantics).

        An existing directory at ``guest_path`` receives ``guest_path/<name>``; symbolic links
        inside a tree are copied as links. Errors in the guest (no such directory, no space)
        raise :class:`~vmm_reference.VmAgentError` naming the path.
        """
        with self._agent_client("copy_to()") as client:
            client.put(host_path, guest_path, timeout=timeout)

    def copy_from(self, guest_path: PathArg, host_path: PathArg, timeout: Optional[float] = None) -> None:
        """Copy a guest file or directory tree to the host, modes kept (``cp -r`` semantics).

        A missing ``guest_path`` raises :class:`~vmm_reference.VmAgentError` naming it.
        """
        with self._agent_client("copy_from()") as client:
            client.get(guest_path, host_path, timeout=timeout)
