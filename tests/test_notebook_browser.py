"""Jupyter, seen by a person: JupyterLab in Debian's chromium (driven by Playwright), the probe guest.

The first test opens ``examples/guest.ipynb``, runs all its cells and checks in the page what a
person would see: the live console view updating, its Stop (the probe's ``probe.end=power``
honours the power button) and Kill buttons, the VM's HTML view, and the toolbar's interrupt
button stopping a blocking ``vm.wait()``. The second follows ``probe.end=flood`` in the page:
the shown console and the rate of updates stay bounded, the page answers, memory stays flat.

Each step's screenshot is saved under the test's ``tmp_path`` (the paths are printed).
Nothing here downloads a browser: chromium is Debian's (``apt-get install chromium``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NEEDS = ("jupyterlab", "playwright", "ipykernel", "ipywidgets", "nbformat")
STEP_MS = 30_000
"""The longest any one step in the page may take (Playwright's default timeout here)."""

# JupyterLab's settings for the test: every cell in the DOM (no windowing), no autosave (the
# example notebook on disk stays as it is), no news or update checks (nothing leaves the host).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _lab_api(base: str, token: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


class Lab:
    """A JupyterLab server on 127.0.0.1 with a random token, for one test."""

    def __init__(self, root: Path, work: Path, env: dict[str, str]) -> None:
        self.root = root
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        settings = work / "lab-settings"
        for plugin, values in LAB_SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {**env, "JUPYTERLAB_SETTINGS_DIR": str(settings),
               "JUPYTERLAB_WORKSPACES_DIR": str(work / "lab-workspaces"),
               "JUPYTER_CONFIG_DIR": str(work / "jupyter-config"), "JUPYTER_DATA_DIR": str(work / "jupyter-data"),
               "JUPYTER_RUNTIME_DIR": str(work / "jupyter-runtime"), "IPYTHONDIR": str(work / "ipython")}
        self.log_path = work / "jupyterlab.log"
        args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
                # Checkpoints (written on save, which the test never does) outside the repo.
                f"--FileCheckpoints.root_dir={work / 'checkpoints'}"]
        if os.geteuid() == 0:
            args.append("--allow-root")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"JupyterLab exited ({self.process.returncode}): {self.log()}")
            try:
                _lab_api(self.base, self.token, "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"JupyterLab did not answer in 60 s: {self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        """The server's log so far (its tail)."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def url(self, path: str) -> str:
        """The address of ``path`` under /lab, with the token."""
        return f"{self.base}/lab/tree/{path}?token={self.token}"

    def close(self) -> None:
        """Shut the kernels down (their VMs with them), then the server; kill what remains."""
        if self.process.poll() is None:
            try:
                for kernel in _lab_api(self.base, self.token, "/api/kernels"):
                    _lab_api(self.base, self.token, f"/api/kernels/{kernel['id']}", method="DELETE")
            except OSError:
                pass
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the server and its kernels
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


@pytest.fixture
def lab_env(request, probe_elf, kvm_kind) -> dict[str, str]:
    """The environment of the lab's kernels: the probe guest, as tests/test_notebook.py's kernel_env."""
    from vmm_reference.pytest_plugin import skip_or_fail

    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        skip_or_fail(request.config, f"needs {', '.join(missing)} (pip install jupyterlab playwright ipykernel "
                     "ipywidgets)")
    if not os.access(CHROMIUM, os.X_OK):
        skip_or_fail(request.config, f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    if kvm_kind == "none":
        skip_or_fail(request.config, "/dev/kvm is not available")
    return {**os.environ, "VMM_NOTEBOOK_KERNEL": str(probe_elf),
            # The example's VM honours the power button, so that Stop ends it with poweroff.
            "VMM_NOTEBOOK_CMDLINE": "probe.smp=madt probe.end=power probe.marker=7",  # and boot markers
            # The notebook's kernel is this interpreter, whatever Jupyter's default kernel would be.
            "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture
def start_lab(tmp_path, lab_env) -> Iterator[Callable[[Path], Lab]]:
    """Start JupyterLab with its root at a directory; it is shut down when the test ends."""
    labs: list[Lab] = []

    def start(root: Path) -> Lab:
        lab = Lab(root, tmp_path, lab_env)
        labs.append(lab)
        return lab

    yield start
    for lab in labs:
        lab.close()


@pytest.fixture
def page(tmp_path) -> Iterator[Any]:
    """A page in headless chromium (Debian's), closed with the browser when the test ends."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=STEP_MS)
    driver = sync_playwright().start()
    try:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(STEP_MS)
            yield page
            page.screenshot(path=str(tmp_path / "last.png"))
            (tmp_path / "last.html").write_text(page.content())
        finally:
            browser.close()
    finally:
        driver.stop()


class Shots:
    """Numbered screenshots of the test's steps under ``tmp_path``."""

    def __init__(self, page: Any, where: Path) -> None:
        self.page = page
        self.where = where
        self.paths: list[Path] = []

    def __call__(self, name: str, element: Any = None) -> Path:
        path = self.where / f"{len(self.paths) + 1:02d}-{name}.png"
        if element is not None:
            element.scroll_into_view_if_needed()
        self.page.screenshot(path=str(path))
        self.paths.append(path)
        print(f"screenshot: {path}")
        return path


def _open_notebook(page: Any, lab: Lab, path: str) -> None:
    page.goto(lab.url(path))
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    # The kernel started and connected (the status bar's "Python 3 (ipykernel) | Idle").
    page.locator('.jp-StatusBar-TextItem[title^="Change kernel"]', has_text="| Idle").wait_for()
    _wait_idle(page)
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+b")  # the file browser aside: more room for the notebook
    page.locator(".jp-FileBrowser").wait_for(state="hidden")


def _wait_idle(page: Any, timeout_ms: int = STEP_MS) -> None:
    """Until the kernel is idle and no cell is running or queued (``[*]``)."""
    page.wait_for_function(
        """() => {
            const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-InputPrompt')];
            return ind && ind.dataset.status === 'idle' && !prompts.some(p => p.textContent.includes('*'));
        }""", timeout=timeout_ms)


def _run_menu(page: Any, item: str) -> None:
    page.locator(".lm-MenuBar-item", has_text="Run").click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def _new_cell(page: Any, code: str) -> Any:
    """Type ``code`` into a new cell at the notebook's end and run it (Shift+Enter); its locator."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    n = cells.count()
    cells.nth(n - 1).locator(".jp-InputPrompt").click()  # select the last cell (command mode)
    page.keyboard.press("b")  # a new cell below it, selected
    cell = cells.nth(n)
    cell.wait_for()
    page.keyboard.press("Enter")  # edit it
    cell.locator(".cm-content").wait_for()
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")
    return cell


def _live_views(page: Any, within: Any = None) -> Any:
    """The live console views (the widgets with a Stop button) in the page, or in ``within``."""
    return (within or page).locator(".jp-OutputArea-output .widget-vbox",
                                    has=page.locator("button", has_text="Stop"))


def _console(view: Any) -> str:
    text: str = view.locator(".widget-html pre").inner_text()
    return text


def _last_number(text: str, pattern: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else -1


def _wait_console(view: Any, pattern: str, above: int, timeout: float = STEP_MS / 1000) -> tuple[str, int]:
    """Until the view's console shows a line ``pattern`` numbered above ``above``."""
    deadline = time.monotonic() + timeout
    while True:
        text = _console(view)
        n = _last_number(text, pattern)
        if n > above:
            return text, n
        assert time.monotonic() < deadline, f"no line {pattern!r} above {above} in {timeout} s: {text[-500:]!r}"
        view.page.wait_for_timeout(100)


def _state_line(view: Any) -> Any:
    # The state Label (not the HTML widget's own label, nor the exit-rate Label under the console).
    return view.locator("div.widget-label", has_text="state: ")


def _code_cell(page: Any, source: str) -> Any:
    """The first code cell whose source contains ``source``."""
    return page.locator(".jp-Notebook .jp-CodeCell", has=page.locator(".jp-InputArea", has_text=source)).first


def test_the_example_notebook_live_in_chromium(start_lab, page, tmp_path):
    from playwright.sync_api import expect

    started = time.monotonic()
    example = REPO / "examples" / "guest.ipynb"
    before = example.read_bytes()
    lab = start_lab(REPO)
    shot = Shots(page, tmp_path)
    _open_notebook(page, lab, "examples/guest.ipynb")
    shot("opened")

    # Run All: the example's VM (probe.end=power) prints "power waiting N" until the power button.
    # The view follows it while the kernel is busy in the next cell's vm.wait().
    _run_menu(page, "Run All Cells")
    view = _live_views(page).first
    expect(_state_line(view)).to_have_text("state: running")
    first, n1 = _wait_console(view, r"PROBE: power waiting (\d+)\n", -1)
    assert "PROBE: hello" in first  # what the guest printed before the view was made is shown too
    waiting = _code_cell(page, "status = vm.wait(")
    expect(waiting.locator(".jp-InputPrompt")).to_contain_text("*")  # blocked in wait()
    second, n2 = _wait_console(view, r"PROBE: power waiting (\d+)\n", max(n1, 12))  # lines keep arriving
    assert second != first and n2 > n1
    # Under the console, the VM's exits per second: the guest's UART writes are port I/O.
    expect(view.locator("div.widget-label", has_text="exits/s: ")).to_contain_text(re.compile(r"\bio [\d,]+"))
    shot("live-view", view)

    # The toolbar's interrupt button stops the blocking wait(); the VM runs on, the view follows it.
    interrupted = time.monotonic()
    page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]').click()
    error = waiting.locator(".jp-OutputArea-output", has_text="KeyboardInterrupt")
    expect(error).to_be_visible(timeout=10_000)
    assert time.monotonic() - interrupted < 10
    assert re.search(r"----> \d+ status = vm\.wait\(", error.inner_text()), error.inner_text()  # it was in wait()
    _wait_idle(page)  # Run All's other cells were dropped: the kernel is idle, not dead
    expect(_state_line(view)).to_have_text("state: running")
    _wait_console(view, r"PROBE: power waiting (\d+)\n", _last_number(_console(view), r"PROBE: power waiting (\d+)\n"))
    shot("interrupted", waiting)

    # Stop (widgets act while the kernel is idle): the power button; the probe powers off.
    view.locator("button", has_text="Stop").click()
    expect(_state_line(view)).to_have_text("state: exited (poweroff)")
    assert "PROBE: power button" in _console(view)
    shot("stopped-poweroff", view)

    # The rest of the notebook, from the wait() on: the same kernel, the same VM, now exited.
    waiting.locator(".jp-InputPrompt").click()
    _run_menu(page, "Run Selected Cell and All Below")
    expect(waiting.locator(".jp-OutputArea-output")).to_contain_text("ExitStatus(reason='poweroff'")
    _wait_idle(page, timeout_ms=120_000)

    # The boot timeline, drawn: a picture the page has loaded, its table folded under it.
    timeline = page.locator(".jp-OutputArea-output .vmm-timeline").first
    expect(timeline.locator("img")).to_be_visible()
    assert timeline.locator("img").evaluate("img => img.complete && img.naturalWidth") > 0
    assert "exit: poweroff" in timeline.locator("details").text_content()
    shot("timeline", timeline)

    # The VM's HTML view (the bare `vm` cell): state, configuration, console tail.
    summary = page.locator('.jp-OutputArea-output[data-mime-type="text/html"]', has_text="vmm-reference VM").first
    expect(summary.locator("th").first).to_have_text("state")
    rows = {summary.locator("th").nth(i).inner_text(): summary.locator("td").nth(i).inner_text()
            for i in range(summary.locator("th").count())}
    assert rows.get("state") == "exited", rows
    assert rows["memory"] == "256 MiB" and rows["vCPUs"] == "2" and rows["ACPI"] == "yes", rows
    assert rows["command line"].startswith("probe.smp=madt probe.end=power"), rows
    assert rows["kernel"].startswith(str(REPO / "tests" / "guest")), rows
    assert rows["exit"].startswith("poweroff"), rows
    tail = summary.locator("pre").inner_text()
    assert "PROBE: power button" in tail and "PROBE: power waiting" in tail, tail[-500:]
    shot("html-view", summary)

    # Kill, on another VM typed into a new cell.
    cell = _new_cell(page, 'other = Vm(memory_mib=64, kernel=kernel, cmdline="probe.end=power")\n'
                           "other.start()\nother.show()")
    other = _live_views(page, cell).first
    _wait_console(other, r"PROBE: power waiting (\d+)\n", 0)
    expect(_state_line(other)).to_have_text("state: running")
    other.locator("button", has_text="Kill").click()
    expect(_state_line(other)).to_have_text("state: exited (killed)")
    shot("killed", other)

    assert example.read_bytes() == before, "the example notebook on disk was changed"
    assert not (REPO / "examples" / ".ipynb_checkpoints").exists()
    print(f"the example notebook in chromium: {time.monotonic() - started:.1f} s")


FLOOD_NOTEBOOK = [
    "import os\nfrom vmm_reference import Vm\nfrom vmm_reference.jupyter import LIVE_BYTES\n"
    "vm = Vm(memory_mib=64, kernel=os.environ['VMM_NOTEBOOK_KERNEL'], cmdline='probe.end=flood')\n"
    "vm.start()\nview = vm.show()\nview",
    "import re\ndef rss():\n    status = open('/proc/self/status').read()\n"
    "    return int(re.search(r'VmRSS:\\s+(\\d+)', status).group(1)) * 1024\n"
    "print('rss', rss(), 'console', vm.stats()['console_bytes'], 'live', LIVE_BYTES)",
]

# Counts the live view's console updates in the page: one per change of its HTML widget.
COUNT_UPDATES = """(el) => {
    window.__updates = [];
    new MutationObserver(() => window.__updates.push(performance.now()))
        .observe(el, {childList: true, subtree: true, characterData: true});
}"""


def test_the_live_view_stays_bounded_under_a_flood_in_chromium(start_lab, page, tmp_path):
    import nbformat
    from playwright.sync_api import expect
    from vmm_reference.jupyter import LIVE_BYTES, REFRESH_SECONDS

    started = time.monotonic()
    root = tmp_path / "notebooks"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in FLOOD_NOTEBOOK])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "flood.ipynb")
    lab = start_lab(root)
    shot = Shots(page, tmp_path)
    _open_notebook(page, lab, "flood.ipynb")
    cells = page.locator(".jp-Notebook .jp-Cell")

    cells.nth(0).locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")  # the flood and its view
    view = _live_views(page).first

    # Warm up: the view fills up to its bound.
    deadline = time.monotonic() + 60
    while len(_console(view)) < LIVE_BYTES * 0.95:
        assert time.monotonic() < deadline, f"the view never filled up: {len(_console(view))} chars"
        page.wait_for_timeout(200)
    view.locator(".widget-html").evaluate(COUNT_UPDATES)
    nodes0 = page.evaluate("document.getElementsByTagName('*').length")
    heap0 = page.evaluate("performance.memory.usedJSHeapSize")

    def run_rss() -> tuple[int, int, float]:
        """Run the RSS cell (Shift+Enter on it): the kernel's RSS, the console's bytes so far, and
        how long the page took to show the answer."""
        prompt = cells.nth(1).locator(".jp-InputPrompt")
        before = prompt.inner_text()
        prompt.click()
        asked = time.monotonic()
        page.keyboard.press("Shift+Enter")
        while (now := prompt.inner_text()) == before or "*" in now:  # until its new execution count
            assert time.monotonic() - asked < 10, f"the cell did not run in 10 s: {now!r}"
            page.wait_for_timeout(50)
        shown = time.monotonic() - asked
        text = cells.nth(1).locator(".jp-OutputArea-output").inner_text()
        found = re.search(r"rss (\d+) console (\d+)", text)
        assert found, text
        return int(found.group(1)), int(found.group(2)), shown

    rss_warm, console_warm, answer_warm = run_rss()

    # Follow the flood for a while: the page answers, each read of the view is bounded and newer.
    lags, sizes, lines = [], [], []
    window_start = time.monotonic()
    while time.monotonic() - window_start < 6:
        t = time.monotonic()
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => r()))")  # a frame drawn
        lags.append(time.monotonic() - t)
        text = _console(view)
        sizes.append(len(text))
        lines.append(_last_number(text, r"PROBE: flood (\d+)\n"))
        page.wait_for_timeout(250)
    updates = page.evaluate("window.__updates")
    span = (updates[-1] - updates[0]) / 1000 if len(updates) > 1 else 0
    worst = max(sum(1 for t in updates if s <= t < s + 1000) for s in updates) if updates else 0
    rss_end, console_end, answer_end = run_rss()
    nodes1 = page.evaluate("document.getElementsByTagName('*').length")
    heap1 = page.evaluate("performance.memory.usedJSHeapSize")
    shot("flood", view)
    print(f"\nflood in chromium: {len(updates)} console updates in {span:.1f} s (at most {worst} in a second), "
          f"shown at most {max(sizes)} chars, the last line {lines[-1]}, slowest frame {max(lags) * 1000:.0f} ms, "
          f"cells answered in {answer_warm:.2f} and {answer_end:.2f} s, DOM {nodes0} -> {nodes1} nodes, "
          f"JS heap {heap0 / 2**20:.1f} -> {heap1 / 2**20:.1f} MiB, kernel RSS {rss_warm / 2**20:.1f} -> "
          f"{rss_end / 2**20:.1f} MiB while the guest printed {(console_end - console_warm) / 1000:.0f} kB")

    assert span > 4 and len(updates) / span >= 2, f"the page stopped following: {len(updates)} in {span:.1f} s"
    assert worst <= 1 / REFRESH_SECONDS + 2, f"{worst} console updates in the page within one second"
    assert max(sizes) <= LIVE_BYTES
    assert lines == sorted(lines) and lines[-1] > lines[0], lines
    assert max(lags) < 2 and max(answer_warm, answer_end) < 10, "the page or the kernel stopped answering"
    assert nodes1 - nodes0 < 100, f"the page's DOM grew from {nodes0} to {nodes1} nodes"
    assert rss_end - rss_warm < 16 * 2**20, f"the kernel grew from {rss_warm} to {rss_end} bytes"
    assert heap1 - heap0 < 64 * 2**20, f"the page's JS heap grew from {heap0} to {heap1} bytes"

    view.locator("button", has_text="Kill").click()
    expect(_state_line(view)).to_have_text("state: exited (killed)", timeout=10_000)
    print(f"the flood in chromium: {time.monotonic() - started:.1f} s")
