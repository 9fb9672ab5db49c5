"""Jupyter: the example notebook runs headless on the probe guest, and the interrupt button works."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NEEDS = ("nbclient", "nbformat", "ipykernel", "ipywidgets")


@pytest.fixture
def kernel_env(monkeypatch, probe_elf, kvm_kind, request):
    from vmm_reference.pytest_plugin import skip_or_fail

    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        skip_or_fail(request.config, f"needs {', '.join(missing)} (pip install vmm-reference[test])")
    if kvm_kind == "none":
        skip_or_fail(request.config, "/dev/kvm is not available")
    monkeypatch.setenv("VMM_NOTEBOOK_KERNEL", str(probe_elf))
    monkeypatch.setenv("VMM_NOTEBOOK_CMDLINE", "probe.smp=madt probe.marker=7")  # markers for the timeline
    # The notebook's kernel is this interpreter, whatever Jupyter's default kernel would be.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))


def test_example_notebook_runs_headless_on_the_probe(kernel_env):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "examples" / "guest.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) + o.get("text", "")
                     for cell in outputs.values() for o in cell)
    assert "ExitStatus(reason='reset'" in text  # the probe guest resets at its end
    assert "PROBE: hello" in text and "PROBE: e820 " in text  # the grep cell
    mimes = {mime for cell in outputs.values() for o in cell for mime in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" in mimes  # vm.show()'s live view
    assert "image/png" in mimes  # the exits plot
    assert "text/html" in mimes  # the VM's HTML repr
    timeline = [o["data"] for cell in outputs.values() for o in cell if "vmm-timeline" in o.get("data", {}).get(
        "text/html", "")]
    assert len(timeline) == 1 and "image/png" in timeline[0], "the timeline cell: drawn"
    assert "marker 7" in timeline[0]["text/plain"] and "exit: reset" in timeline[0]["text/plain"]
    assert all(f"mark={name}" in text for name in "xyz"), "the fork cell: each clone answers on its own"
    assert not [o for cell in outputs.values() for o in cell if o.get("output_type") == "error"]


def test_the_interrupt_button_stops_a_blocking_wait(kernel_env, probe_elf):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.execute_interactive(
            "from vmm_reference import Vm\n"
            f"vm = Vm(memory_mib=64, kernel={str(probe_elf)!r}, cmdline='probe.end=halt')\n"
            "vm.start()\nvm.expect('PROBE: halting')\n", timeout=60)
        msg_id = kc.execute("print('waiting', flush=True); vm.wait()")
        # Interrupt once the cell is really blocked in wait().
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        time.sleep(0.5)
        interrupted = time.monotonic()
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - interrupted < 3
        # The kernel lives on and the VM still runs.
        state = kc.execute_interactive("print(vm.state); vm.kill(); print(vm.wait(timeout=10).reason)", timeout=30)
        assert state["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_the_live_view_shows_exits_per_second(vm_factory, probe_elf, request):
    """The view's rate line: the flooding probe's port writes (the UART) appear as io exits."""
    import re

    pytest.importorskip("ipywidgets")
    from vmm_reference import Vm

    vm: Vm = vm_factory(memory_mib=64, kernel=probe_elf, cmdline="probe.end=flood")
    vm.start()
    view = vm.show()
    deadline = time.monotonic() + 30
    while not re.search(r"exits/s: .*\bio [\d,]+", view.rates.value):
        assert time.monotonic() < deadline, view.rates.value
        time.sleep(0.05)
    vm.kill()
    vm.wait(timeout=30)
    view.wait(timeout=10)
    assert view.rates.value.startswith("exits/s: "), view.rates.value


def test_the_live_view_follows_a_flood_at_a_bounded_rate(kernel_env, probe_elf):
    """A guest printing as fast as it can: the kernel sends the page a bounded console, a bounded
    number of times a second, and its memory stays flat."""
    import html
    import re

    from jupyter_client.manager import start_new_kernel
    from vmm_reference.jupyter import LIVE_BYTES, REFRESH_SECONDS

    km, kc = start_new_kernel(kernel_name="python3")
    outputs: list[dict] = []
    try:
        setup = kc.execute_interactive(
            "from vmm_reference import Vm\n"
            f"vm = Vm(memory_mib=64, kernel={str(probe_elf)!r}, cmdline='probe.end=flood')\n"
            "vm.start()\nvm.expect('PROBE: flood 100\\n')\n"
            "view = vm.show()\ndisplay(view)\nprint('model', view.text.model_id, view.status.model_id)\n",
            timeout=60, output_hook=lambda msg: outputs.append(msg))
        assert setup["content"]["status"] == "ok", setup["content"]
        printed = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        text_id, status_id = re.search(r"model (\w+) (\w+)", printed).groups()

        def shown(state: dict) -> str:
            pre = re.search(r"<div>(.*)</div></pre>", state["value"], re.S)
            assert pre, state["value"][:200]
            return html.unescape(pre.group(1))

        # Follow what the kernel sends the page: warm up until the view is full, then measure.
        pid = km.provisioner.pid
        updates: list[tuple[float, int, int]] = []  # (kernel's send time, shown chars, last line number)
        warm_rss = None
        measure_from = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=10)
            data = msg["content"].get("data", {})
            if msg["msg_type"] != "comm_msg" or msg["content"].get("comm_id") != text_id:
                continue
            if data.get("method") != "update" or "value" not in data.get("state", {}):
                continue
            text = shown(data["state"])
            numbers = re.findall(r"PROBE: flood (\d+)\n", text)
            sent = msg["header"]["date"].timestamp()
            if measure_from is None:
                if len(text) >= LIVE_BYTES - 64:  # full: the buffer has reached its bound
                    warm_rss, measure_from = _rss_bytes(pid), time.monotonic()
                continue
            updates.append((sent, len(text), int(numbers[-1]) if numbers else -1))
            if time.monotonic() - measure_from >= 6:
                break
        assert measure_from is not None, "the live view never filled up with the flood"
        end_rss = _rss_bytes(pid)
        span = updates[-1][0] - updates[0][0]
        assert span > 4, updates
        rate = (len(updates) - 1) / span
        worst = max(sum(1 for t, _, _ in updates if s <= t < s + 1) for s, _, _ in updates)
        print(f"\nflood: {len(updates)} updates in {span:.1f} s ({rate:.1f}/s, at most {worst} in a second), "
              f"shown {max(n for _, n, _ in updates)} chars, the last line {updates[-1][2]}, "
              f"kernel RSS {warm_rss / 2**20:.1f} -> {end_rss / 2**20:.1f} MiB")
        # Bounded by the view's constant, not by the guest (which prints hundreds of chunks a second).
        assert worst <= 1 / REFRESH_SECONDS + 2, f"{worst} console updates within one second"
        assert rate >= 2, f"the view fell behind: {rate:.1f} updates a second"  # and it does keep up
        assert all(n <= LIVE_BYTES for _, n, _ in updates)
        lines = [n for _, _, n in updates]
        assert lines == sorted(lines) and lines[-1] > lines[0], "the shown console moves on"
        assert end_rss - warm_rss < 16 * 2**20, f"the kernel grew from {warm_rss} to {end_rss} bytes"

        # Killed: the state line says so, and the follower ends.
        msg_id = kc.execute("vm.kill(); view.wait(timeout=10); print('follower alive', view.thread.is_alive())")
        label, printed = "", ""
        deadline = time.monotonic() + 20
        while ("exited (killed)" not in label or "follower alive" not in printed) and time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=10)
            if msg["msg_type"] == "comm_msg" and msg["content"].get("comm_id") == status_id:
                label = msg["content"]["data"].get("state", {}).get("value", label)
            elif msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id:
                printed += msg["content"]["text"]
        assert label == "state: exited (killed)"
        assert "follower alive False" in printed
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
