"""The host's end of a VM's vsock device: connect to the guest's ports, listen for the guest's connections."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Optional, Union

from .devices import Vsock
from .errors import VmConfigError

__all__ = ["VsockEndpoint"]

_PORT_MAX = 2**32 - 1
_REPLY_MAX = 64


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _PORT_MAX:
        raise VmConfigError(f"invalid port={port!r}: expected an integer from 0 to {_PORT_MAX}")
    return port


class VsockEndpoint:
    """What :attr:`Vm.vsock <vmm_reference.Vm.vsock>` returns: the guest's CID and the host socket.

    :meth:`connect` reaches a listener in the guest; :meth:`listen` accepts the guest's
    connections to a host port. Both are plain :class:`socket.socket` objects: use them with
    ``with``, ``sendall``, ``recv``, asyncio's ``sock_*`` functions, or ``makefile``.
    """

    def __init__(self, cid: int, uds: str, private_dir: Optional[str] = None) -> None:
        self.cid = cid
        """The guest's context id."""
        self.uds = uds
        """The UNIX socket the VMM listens on for host connections."""
        self._private_dir = private_dir

    def connect(self, port: int, timeout: Optional[float] = 10.0) -> socket.socket:
        """Connect to the guest's listener on vsock ``port``; return the connected socket.

        Raises :class:`ConnectionRefusedError` if nothing listens there in the guest (or the
        VM has stopped), :class:`TimeoutError` if the guest does not answer within
        ``timeout`` seconds (``None``: wait for ever).
        """
        port = _check_port(port)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(self.uds)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise ConnectionRefusedError(f"vsock port {port}: the VM's socket {self.uds} is gone ({e})") from None
            sock.sendall(f"CONNECT {port}\n".encode())
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < _REPLY_MAX:
                try:
                    chunk = sock.recv(1)
                except socket.timeout:
                    raise TimeoutError(f"vsock port {port}: no answer from the guest within {timeout} s") from None
                if not chunk:
                    raise ConnectionRefusedError(
                        f"vsock port {port}: nothing listens there in the guest (CID {self.cid})")
                reply += chunk
            if not reply.startswith(b"OK "):
                raise ConnectionRefusedError(f"vsock port {port}: unexpected answer {reply!r}")
            sock.settimeout(None)
            return sock
        except BaseException:
            sock.close()
            raise

    def listen(self, port: int, backlog: int = 16) -> socket.socket:
        """Listen for the guest's connections to the host's vsock ``port`` (CID 2); return the listening socket."""
        port = _check_port(port)
        path = f"{self.uds}_{port}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Remove the private directory the socket was made in, if the VM made one."""
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def __repr__(self) -> str:
        return f"VsockEndpoint(cid={self.cid}, uds={self.uds!r})"


def resolve(vsock: object) -> Optional[VsockEndpoint]:
    """Turn ``Vm(vsock=...)`` into an endpoint (making a private directory when no ``uds`` is given)."""
    if vsock is None or vsock is False:
        return None
    if vsock is True:
        vsock = Vsock()
    if not isinstance(vsock, Vsock):
        raise VmConfigError(f"invalid vsock={vsock!r}: expected True, False, None or a Vsock")
    if isinstance(vsock.cid, bool) or not isinstance(vsock.cid, int):
        raise VmConfigError(f"invalid vsock.cid={vsock.cid!r}: expected an integer")
    private: Optional[str] = None
    uds: Union[str, os.PathLike[str], None] = vsock.uds
    if uds is None:
        private = tempfile.mkdtemp(prefix="vmm-vsock-")
        uds = os.path.join(private, "vsock.sock")
    path = os.fspath(uds)
    if not isinstance(path, str):
        raise VmConfigError(f"invalid vsock.uds={vsock.uds!r}: expected a str path")
    return VsockEndpoint(vsock.cid, path, private)
