"""A VM's boot as a timeline: its events and phases on one axis, seconds since ``Vm.start()``.

:meth:`Vm.timeline() <vmm_reference.Vm.timeline>` returns a :class:`Timeline`; in a notebook a
bare ``vm.timeline()`` draws it (phases as bars, events as labelled ticks; matplotlib, imported
only then), and without matplotlib shows it as a table. Where each time comes from:

- **boot markers** (``marker``): the VMM's clock when the guest wrote the byte (``vm.events``).
- **the first console byte** (``console``) and **the ready line** (``ready``, the initramfs's
  ``VMM-REFERENCE-GUEST-READY`` line): the VMM notes when console bytes arrive, in the console
  buffer itself (the first byte, and the end of each of the first 4096 lines), so the times
  are when the guest wrote them, not when some reader got round to reading them.
- **kernel log lines** (``printk``, the ``[    1.234567] ...`` lines on the console): the
  kernel's own clock, kept in :attr:`Event.kernel_time`, placed on the host axis at
  ``kernel_time`` plus an offset. A line reaches the host only after the kernel stamped it, so
  ``arrival - kernel_time`` bounds the offset from above; and the kernel's clock never runs
  ahead of the host's, though it can fall behind: until Linux switches to kvm-clock its time
  counts timer ticks, which a slow console printing with interrupts off misses (by a second in
  the emulated lab, next to nothing on hardware). So each line gets the smallest ``arrival -
  kernel_time`` of itself and the lines after it (lines stamped ``0.000000``, before the clock
  runs, left out): the latest time consistent with its own arrival and with every later one.
  No kernel event lands after its line reached the host (those stamped ``0.000000`` go at the
  clock's zero, which may be after an early console showed them), lines replayed when the
  console came up do not pull the others late, and the events keep the console's order.
  :attr:`Timeline.kernel_offset` is the earliest lines' offset: where the kernel's clock read 0.
- **the agent** (``agent``): when :meth:`Vm.wait_ready() <vmm_reference.Vm.wait_ready>` first
  heard the guest agent answer.
- **the exit** (``exit``): when the VM's exit status was decided (the guest's reset, power-off
  or panic line, or the host's kill).

The phases are bench case 7's (the README's "where the boot's time goes"): from ``start()`` to
the kernel clock's zero (:data:`BEFORE_KERNEL_CLOCK`), then :data:`BOOT_PHASES`, each ending at
the first kernel log line matching its pattern, that line placed as above: where the kernel's
clock fell behind, a phase is longer on the host's axis than the kernel's own difference (what
bench case 7 reports, reading the log back with ``dmesg`` and :func:`kernel_phases`). The
kernel must print its log on the console for them (not ``quiet``).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

if TYPE_CHECKING:
    from .status import ExitStatus

__all__ = ["BEFORE_KERNEL_CLOCK", "BOOT_PHASES", "KINDS", "Event", "Phase", "Timeline", "build", "kernel_phases"]

#: The kernel's phases of a boot: (name, pattern of the kernel log line that ends it). The
#: first starts at the kernel clock's zero, each next where the one before ended; the last ends
#: at the line the initramfs logs just before its ready line.
BOOT_PHASES: tuple[tuple[str, str], ...] = (
    ("CPU, memory and timers up", r"smpboot: Total of"),
    ("ACPI and core initcalls", r"clocksource: Switched to clocksource"),
    ("device initcalls (serial, i8042, ...) to /init", r"Run /init as init process"),
    ("/init to the ready line (modules, agent)", r"vmm-reference: /init ready"),
)

#: The phase from ``start()`` to the kernel clock's zero (the VMM's setup, the kernel's
#: decompression and earliest code): host time, up to :attr:`Timeline.kernel_offset`.
BEFORE_KERNEL_CLOCK = "before the kernel's clock"

#: The kinds of :class:`Event`, in the order a table lists them.
KINDS = ("console", "marker", "printk", "ready", "agent", "exit")

_KERNEL_LINE = re.compile(r"\[\s*(\d+\.\d+)\](?:\[\s*[CT]\d+\])? ?(.*)")
_LABEL_CHARS = 100
_COLOURS = {"console": "tab:gray", "marker": "tab:purple", "ready": "tab:green", "agent": "tab:olive",
            "exit": "tab:red"}


def kernel_phases(log: str) -> list[tuple[str, float, float]]:
    """Split a kernel log (console text or ``dmesg`` output) into :data:`BOOT_PHASES`.

    Returns ``(name, start, end)`` in the kernel's seconds for each phase in order, up to the
    first whose line is missing (a phase starts where the one before it ended, the first at 0).
    """
    spans: list[tuple[str, float, float]] = []
    start = 0.0
    for name, pattern in BOOT_PHASES:
        found = re.search(r"\[\s*([\d.]+)\] [^\n]*" + pattern, log)
        if not found:
            break
        end = float(found.group(1))
        spans.append((name, start, end))
        start = end
    return spans


@dataclass(frozen=True)
class Event:
    """One moment of a boot.

    ``kind`` is one of :data:`KINDS`: ``console`` (the first console byte), ``marker`` (a boot
    marker byte), ``printk`` (a kernel log line; ``label`` its text), ``ready`` (the
    initramfs's ready line), ``agent`` (the guest agent answered) or ``exit``.
    """

    time: float
    """Seconds since ``start()`` on the host's clock (for ``printk``, the kernel's time placed there: see the
    module)."""
    kind: str
    """What happened (see above)."""
    label: str
    """What to call it: ``marker 7``, the kernel's message, ``exit: poweroff``."""
    kernel_time: Optional[float] = None
    """The kernel's own timestamp, for ``printk`` events (None for host-clock events)."""


class Phase(NamedTuple):
    """A stretch of a boot: ``(name, start, end)`` in seconds since ``start()``."""

    name: str
    """One of :data:`BEFORE_KERNEL_CLOCK` and :data:`BOOT_PHASES`' names."""
    start: float
    """Where it starts."""
    end: float
    """Where it ends."""

    @property
    def duration(self) -> float:
        """``end - start``."""
        return self.end - self.start


@dataclass(frozen=True)
class Timeline:
    """A boot's events and phases (see the module); ``plot()`` draws it, a notebook displays it."""

    events: tuple[Event, ...]
    """Every event, by time."""
    phases: tuple[Phase, ...]
    """The boot's phases found, in order (none without kernel log lines on the console)."""
    kernel_offset: Optional[float] = None
    """Host seconds since ``start()`` at which the kernel's clock read zero (its earliest lines' offset:
    later ones may have a larger one, where the kernel's clock fell behind); None without kernel lines."""
    title: str = "boot timeline"
    """The plot's title."""

    def of_kind(self, kind: str) -> list[Event]:
        """Return the events of one kind, by time."""
        return [e for e in self.events if e.kind == kind]

    def phase(self, name: str) -> Optional[Phase]:
        """Return the phase called ``name``, or None if the boot did not show it."""
        return next((p for p in self.phases if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Return it as plain data (for JSON); :meth:`from_dict` reads it back."""
        return {"title": self.title, "kernel_offset": self.kernel_offset,
                "phases": [list(p) for p in self.phases],
                "events": [[e.time, e.kind, e.label, e.kernel_time] for e in self.events]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        """Return the timeline :meth:`to_dict` gave."""
        return cls(events=tuple(Event(float(t), str(k), str(label), None if g is None else float(g))
                                for t, k, label, g in data["events"]),
                   phases=tuple(Phase(str(n), float(s), float(e)) for n, s, e in data["phases"]),
                   kernel_offset=data.get("kernel_offset"), title=str(data.get("title", "boot timeline")))

    def _rows(self) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str]], str]:
        """Phase rows, event rows (kernel log lines summed up in the note) and the note."""
        phases = [(p.name, f"{p.start:.3f}", f"{p.end:.3f}", f"{p.duration:.3f}") for p in self.phases]
        events = [(f"{e.time:.3f}", e.kind, e.label) for e in self.events if e.kind != "printk"]
        printk = self.of_kind("printk")
        note = ""
        if printk and self.kernel_offset is not None:
            last = printk[-1]
            note = (f"{len(printk)} kernel log lines, {printk[0].time:.3f} to {last.time:.3f} s (the kernel's clock "
                    f"{self.kernel_offset:+.3f} s at first, {last.time - (last.kernel_time or 0.0):+.3f} s at last)")
        return phases, events, note

    def table(self) -> str:
        """Return the phases and events (kernel log lines summed up) as text."""
        phases, events, note = self._rows()
        width = max([len(p[0]) for p in phases] + [len("phase")])
        out = [f"{self.title}: seconds since start()"]
        if phases:
            out.append(f"{'phase':<{width}}  {'start':>8} {'end':>8} {'seconds':>8}")
            out += [f"{n:<{width}}  {s:>8} {e:>8} {d:>8}" for n, s, e, d in phases]
        out += [f"{t:>8}  {k:<8} {label}" for t, k, label in events]
        if note:
            out.append(note)
        return "\n".join(out)

    def __str__(self) -> str:
        """:meth:`table`."""
        return self.table()

    def __repr__(self) -> str:
        """Sum it up: how many events and phases, over which span."""
        end = max((e.time for e in self.events), default=0.0)
        return f"<Timeline {len(self.events)} events, {len(self.phases)} phases, 0 to {end:.3f} s>"

    def plot(self, ax: Any = None) -> Any:
        """Draw the timeline on the matplotlib axes ``ax`` (a new figure's if None); return the axes.

        Phases are bars in the top lane, kernel log lines ticks in the middle one, the other
        events labelled ticks in the bottom one. Needs matplotlib (``pip install matplotlib``).
        """
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(10, 3.8), layout="constrained")
        self._draw(ax)
        return ax

    def _draw(self, ax: Any) -> None:
        """Draw on ``ax`` (see :meth:`plot`)."""
        end = max([e.time for e in self.events] + [p.end for p in self.phases] + [1e-3])
        palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
        for i, p in enumerate(self.phases):
            ax.barh(2.0, p.duration, left=p.start, height=0.5, color=palette[i % len(palette)],
                    label=f"{p.name}: {p.duration:.3f} s")
            if p.duration > end / 14:  # room for its length inside
                ax.text(p.start + p.duration / 2, 2.0, f"{p.duration:.2f} s", fontsize=7, ha="center",
                        va="center", color="white")
        printk = [e.time for e in self.of_kind("printk")]
        if printk:
            ax.vlines(printk, 1.2, 1.5, color="0.35", linewidth=0.6)
        others = [e for e in self.events if e.kind != "printk"]
        markers = [e for e in others if e.kind == "marker"]
        labelled = [e for e in others if e.kind != "marker" or len(markers) <= 12]
        for e in others:
            ax.vlines(e.time, 0.0, 0.25, color=_COLOURS.get(e.kind, "k"), linewidth=1.2)
        # Labels in up to four rows: each in the lowest row it fits in (its text's width
        # guessed from its length), else in the row that frees up first.
        per_char = end * 1.15 / 170
        rows = [float("-inf")] * 4
        for e in labelled:
            row = next((i for i, right in enumerate(rows) if right < e.time), rows.index(min(rows)))
            rows[row] = e.time + (len(e.label) + 1) * per_char
            ax.text(e.time, 0.3 + 0.2 * row, e.label, fontsize=7, va="bottom", ha="left",
                    color=_COLOURS.get(e.kind, "k"))
        if len(labelled) < len(others):
            ax.text(markers[0].time, -0.1, f"{len(markers)} boot markers", fontsize=7, va="top",
                    color=_COLOURS["marker"])
        ax.set_yticks([0.5, 1.35, 2.0], ["events", f"kernel log ({len(printk)})", "phases"])
        ax.set_ylim(-0.3, 2.4)
        ax.set_xlim(0, end * 1.15)
        ax.set_xlabel("seconds since start()")
        ax.set_title(self.title, fontsize=10)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.tick_params(axis="y", length=0)
        if self.phases:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, fontsize=7, frameon=False)

    def png(self, dpi: int = 100) -> Optional[bytes]:
        """Return the plot as PNG bytes, or None without matplotlib (no pyplot figure is left behind)."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            return None
        fig = Figure(figsize=(10, 3.8), dpi=dpi, layout="constrained")
        self._draw(fig.subplots())
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()

    def _repr_png_(self) -> Optional[bytes]:
        """Return the plot for notebooks (None without matplotlib)."""
        return self.png()

    def _html(self, png: Optional[bytes]) -> str:
        phases, events, note = self._rows()
        cell = "<td style='text-align:{}'>{}</td>"
        rows = "".join("<tr>" + "".join(cell.format("left" if i == 0 else "right", html.escape(v))
                                          for i, v in enumerate(row)) + "</tr>" for row in phases)
        rows += "".join("<tr>" + cell.format("left", html.escape(f"{k}: {label}")) + "<td></td>" * 2
                        + cell.format("right", t) + "</tr>" for t, k, label in events)
        table = ("<table><tr><th style='text-align:left'>phase / event</th><th>start</th><th>end</th>"
                 f"<th>seconds</th></tr>{rows}</table>" + (f"<p>{html.escape(note)}</p>" if note else ""))
        if png is None:
            return f"<div class='vmm-timeline'><b>{html.escape(self.title)}</b>{table}</div>"
        src = base64.b64encode(png).decode("ascii")
        return (f"<div class='vmm-timeline'><img alt='{html.escape(self.title)}' src='data:image/png;base64,{src}'>"
                f"<details><summary>{len(self.phases)} phases, {len(self.events)} events</summary>{table}"
                "</details></div>")

    def _repr_html_(self) -> str:
        """Return the plot with the table under it (folded); without matplotlib the table alone."""
        return self._html(self.png())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Text (:meth:`table`), HTML and PNG, the picture drawn once."""
        png = self.png()
        bundle = {"text/plain": self.table(), "text/html": self._html(png)}
        if png is not None:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        return bundle


def _lines(data: bytes, start: int) -> Iterable[tuple[str, int]]:
    """Split the console into lines (CR stripped), each with the offset one past its newline (-1: none yet)."""
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl
        yield data[pos:stop].decode("utf-8", errors="replace").strip("\r"), -1 if nl < 0 else start + nl + 1
        pos = stop + 1


def _offsets(kernel: Sequence[tuple[float, str, Optional[float]]]) -> list[float]:
    """Return each kernel line's offset: the least ``arrival - stamp`` from it on (see the module).

    Lines past the last with a known arrival take its offset; without any, the list is empty.
    """
    out: list[float] = []
    best = float("inf")
    for k, _, at in reversed(kernel):
        if at is not None and k > 0:
            best = min(best, at - k)
        out.append(best)
    out.reverse()
    if not out or out[0] == float("inf"):
        return []
    last = max(i for i, off in enumerate(out) if off != float("inf"))
    return out[:last + 1] + [out[last]] * (len(out) - last - 1)


def build(console: bytes, console_start: int = 0, *, first_byte: Optional[float] = None,
          line_times: Sequence[tuple[int, float]] = (), markers: Sequence[tuple[int, float]] = (),
          agent_ready: Optional[float] = None, exit: Optional[tuple[float, ExitStatus]] = None,
          title: str = "boot timeline") -> Timeline:
    """Make a :class:`Timeline` from what a VM recorded (what :meth:`Vm.timeline` passes).

    ``console`` is the retained console output starting at offset ``console_start``;
    ``line_times`` ``(offset one past a newline, seconds)``; ``markers`` ``(value, seconds)``;
    ``exit`` ``(seconds, status)``; every time in seconds since ``start()``.
    """
    from .assets.scripts import GUEST_READY_MARKER, ROOTFS_READY_MARKER

    arrived = dict(line_times)
    events: list[Event] = []
    if first_byte is not None:
        events.append(Event(first_byte, "console", "first console byte"))
    events += [Event(t, "marker", f"marker {value}") for value, t in markers]
    kernel: list[tuple[float, str, Optional[float]]] = []  # (kernel time, text, arrival)
    ready = False
    for line, end in _lines(console, console_start):
        at = arrived.get(end)
        found = _KERNEL_LINE.match(line)
        if found:
            kernel.append((float(found.group(1)), found.group(2).strip(), at))
        elif not ready and at is not None and line.startswith((GUEST_READY_MARKER, ROOTFS_READY_MARKER)):
            ready = True
            events.append(Event(at, "ready", "ready line"))
    offsets = _offsets(kernel)
    offset = offsets[0] if offsets else None
    phases: list[Phase] = []
    if offset is not None:
        events += [Event(k + off, "printk", text[:_LABEL_CHARS], k) for (k, text, _), off in zip(kernel, offsets)]
        if offset > 0:
            phases.append(Phase(BEFORE_KERNEL_CLOCK, 0.0, offset))

        def place(t: float) -> float:  # with the offset of the first line stamped at or after t
            return t + next((off for (k, _, _), off in zip(kernel, offsets) if k >= t), offsets[-1])

        log = console.decode("utf-8", errors="replace")
        phases += [Phase(name, place(s), place(e)) for name, s, e in kernel_phases(log)]
    if agent_ready is not None:
        events.append(Event(agent_ready, "agent", "agent answers"))
    if exit is not None:
        at, status = exit
        code = "" if status.code is None else f" {status.code}"
        events.append(Event(at, "exit", f"exit: {status.reason}{code}"))
    events.sort(key=lambda e: e.time)  # stable: the console's order among equal times
    return Timeline(events=tuple(events), phases=tuple(phases), kernel_offset=offset, title=title)
