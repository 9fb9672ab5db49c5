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
    monkeypatch.setenv("VMM_NOTEBOOK_CMDLINE", "probe.smp=madt")
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
