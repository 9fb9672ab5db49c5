"""The documentation (user guide, API reference from the docstrings, design) builds without warnings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_sphinx_builds_the_docs_with_warnings_as_errors(request, tmp_path):
    from vmm_reference.pytest_plugin import skip_or_fail

    if importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_parser") is None:
        skip_or_fail(request.config, "needs sphinx and myst-parser (pip install vmm-reference[docs])")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(REPO / "docs"), str(tmp_path / "html")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    for name in ("vmm_reference.Vm.expect", "vmm_reference.Vm.stop", "vmm_reference.assets.fetch_guest",
                 "vmm_reference.pytest_plugin.vm_factory", "vmm_reference.errors.VmConfigError"):
        assert f'id="{name}"' in api, name
    assert "Troubleshooting" in (tmp_path / "html" / "guide.html").read_text()
