"""Jupyter faces of a :class:`~vmm_reference.Vm`: a rich repr and a live console view.

``Vm._repr_html_`` (what a notebook shows for a bare ``vm``) gives state, configuration, exit
status and the console's tail. ``vm.show()`` returns a :class:`ConsoleView`: with ipywidgets
installed (``pip install vmm-reference[jupyter]``) a widget whose console updates from a
background thread while the guest runs, with Stop (ACPI power button, then kill) and Kill
buttons; without it, the VM itself, whose static repr the notebook displays.
"""

from __future__ import annotations

import html
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from .serial import Serial
    from .status import BootInfo, ExitStatus

__all__ = ["ConsoleView", "Viewable", "vm_html"]


class Viewable(Protocol):
    """What the views need of a VM (:class:`~vmm_reference.Vm` is one).

    Its state, its configuration, its console, and Stop and Kill.
    """

    @property
    def state(self) -> str:
        """The VM's state."""

    @property
    def exit_status(self) -> Optional[ExitStatus]:
        """How it ended, once it has."""

    @property
    def boot_info(self) -> BootInfo:
        """Where things went, and its devices."""

    @property
    def console_log(self) -> str:
        """The retained console output."""

    kernel: str
    memory_mib: int
    vcpus: int
    acpi: bool

    def console_follow(self) -> tuple[bytes, Serial]:
        """Return the retained console output and a reader of what comes after it."""

    def stop(self) -> Any:
        """Press the power button, then kill."""

    def kill(self) -> None:
        """End the VM."""

    def stats(self) -> dict[str, Any]:
        """Counters: exits by kind and more."""

TAIL_LINES = 40
"""Console lines shown by the static repr."""
LIVE_BYTES = 64 * 1024
"""Console bytes the live view keeps on screen."""
REFRESH_SECONDS = 0.1
"""The live view's shortest interval between two console updates: at most ten a second,
however fast the guest prints (each update sends the whole shown console to the page)."""
_DRAIN_READS = 64
"""Reads (of up to 64 KiB each) the live view takes at most between two updates."""


def vm_html(vm: Viewable, tail_lines: int = TAIL_LINES) -> str:
    """HTML for ``vm``: a table of its state and configuration, then its console's last lines."""
    status = vm.exit_status
    rows = [
        ("state", vm.state),
        ("kernel", f"{vm.kernel} ({vm.boot_info.format})"),
        ("memory", f"{vm.memory_mib} MiB"),
        ("vCPUs", str(vm.vcpus)),
        ("command line", vm.boot_info.cmdline),
        ("ACPI", "yes" if vm.acpi else "no"),
    ]
    for i, dev in enumerate(vm.boot_info.devices):
        flags = ", read-only" if dev.read_only else ""
        serial = f", serial {dev.serial}" if dev.serial else ""
        backing = f" {dev.path}{flags}{serial}" if dev.path else ""
        where = f"PCI {dev.bdf}" if dev.bdf else f"MMIO {dev.mmio_base:#x}, GSI {dev.gsi}"
        rows.append((f"device {i}", f"{dev.kind}{backing} — {where}"))
    if status is not None:
        detail = f" — {status.detail}" if status.detail else ""
        code = f", code {status.code}" if status.code is not None else ""
        rows.append(("exit", f"{status.reason}{code}{detail}"))
    table = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    tail = "\n".join(vm.console_log.splitlines()[-tail_lines:])
    return (f"<div><b>vmm-reference VM</b><table>{table}</table>"
            f"<pre style='max-height:24em;overflow:auto;background:#111;color:#ddd;padding:0.5em'>"
            f"{html.escape(tail)}</pre></div>")


class ConsoleView:
    """A live view of a VM's console (an ipywidgets box): console, state, Stop, Kill, exit rates.

    Under the console, the VM's exits per second by kind (from :meth:`~vmm_reference.Vm.stats`).

    A daemon thread reads the console as the guest prints and refreshes the widget; it ends
    when the console does. The widget shows the last ``LIVE_BYTES`` of the console and is
    updated at most once every ``REFRESH_SECONDS``, however fast the guest prints.
    Displaying it (or ``display(view)``) shows the widget.
    """

    def __init__(self, vm: Viewable, widgets: Any) -> None:
        self.vm = vm
        self._w = widgets
        self.text = widgets.HTML()
        self.status = widgets.Label()
        self.rates = widgets.Label()
        self._last_exits: Optional[tuple[float, dict[str, int]]] = None
        stop = widgets.Button(description="Stop", tooltip="ACPI power button, then kill after 30 s")
        kill = widgets.Button(description="Kill", button_style="danger")
        stop.on_click(lambda _: threading.Thread(target=vm.stop, daemon=True).start())
        kill.on_click(lambda _: vm.kill())
        self.widget = widgets.VBox([widgets.HBox([stop, kill, self.status]), self.text, self.rates])
        data, self._reader = vm.console_follow()
        self._buffer = bytearray(data[-LIVE_BYTES:])
        self._refresh()
        self.thread = threading.Thread(target=self._follow, name="vmm-console-view", daemon=True)
        self.thread.start()

    def _refresh(self) -> None:
        text = self._buffer.decode("utf-8", errors="replace")
        self.text.value = ("<pre style='height:24em;overflow:auto;display:flex;flex-direction:column-reverse;"
                           f"background:#111;color:#ddd;padding:0.5em'><div>{html.escape(text)}</div></pre>")
        status = self.vm.exit_status
        self.status.value = f"state: {self.vm.state}" + (f" ({status.reason})" if status else "")
        rates = self._exit_rates()
        if rates is not None:
            self.rates.value = rates

    def _exit_rates(self) -> Optional[str]:
        """Return the VM's exits per second by kind since the last refresh (None at the first)."""
        now = time.monotonic()
        exits = {k: int(v) for k, v in self.vm.stats()["exits"].items()}
        last, self._last_exits = self._last_exits, (now, exits)
        if last is None or now <= last[0]:
            return None
        seconds = now - last[0]
        rates = [(k, (v - last[1].get(k, 0)) / seconds) for k, v in exits.items()]
        shown = ", ".join(f"{k} {r:,.0f}" for k, r in sorted(rates, key=lambda kr: -kr[1]) if r > 0)
        return f"exits/s: {shown or 'none'}"

    def _append(self, data: bytes) -> None:
        self._buffer += data
        del self._buffer[:-LIVE_BYTES]

    def _follow(self) -> None:
        reader = self._reader  # its own offset: does not take bytes from vm.serial
        while True:
            data = reader.read(timeout=0.5)
            if data:
                self._append(data)
                # Coalesce: let what the guest prints next gather, then show it in one update.
                time.sleep(REFRESH_SECONDS)
                for _ in range(_DRAIN_READS):
                    more = reader.read(timeout=0)
                    if not more:
                        break
                    self._append(more)
            self._refresh()
            if not data and reader.at_eof:
                return

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Optional[dict[str, Any]]:
        """Display as the widget."""
        bundle: Optional[dict[str, Any]] = self.widget._repr_mimebundle_(include=include, exclude=exclude)
        return bundle

    def wait(self, timeout: Optional[float] = None) -> None:
        """Wait until the view has shown the console's end."""
        self.thread.join(timeout)


def show(vm: Viewable) -> Any:
    """``vm.show()``: a :class:`ConsoleView` with ipywidgets, else the VM (its static repr)."""
    try:
        import ipywidgets  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return vm
    return ConsoleView(vm, ipywidgets)
