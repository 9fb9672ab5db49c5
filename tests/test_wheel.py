"""The manylinux wheel (``maturin build --release --zig --compatibility manylinux_2_28 -o dist``):
what it contains, and the probe-guest and CLI tests run against it installed into a fresh
virtualenv whose ``PATH`` has no cargo, so nothing can be built on the side."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_GLIBC = (2, 28)


@pytest.fixture(scope="module")
def wheel(pytestconfig: pytest.Config) -> Path:
    from vmm_reference.pytest_plugin import skip_or_fail

    found = sorted((REPO / "dist").glob("vmm_reference-*-cp39-abi3-manylinux_2_28_x86_64.whl"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        skip_or_fail(pytestconfig, "no manylinux wheel in dist/: build it with "
                     "`maturin build --release --zig --compatibility manylinux_2_28 -o dist`")
    return found[-1]


def glibc_versions(elf: bytes) -> set[tuple[int, ...]]:
    """The GLIBC_x.y symbol versions an ELF file asks for (its version-needed strings)."""
    return {tuple(int(p) for p in v.split(b".")) for v in re.findall(rb"GLIBC_(\d+(?:\.\d+)+)\x00", elf)}


def test_the_wheel_is_manylinux_abi3_and_carries_the_native_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tags = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
        assert "Tag: cp39-abi3-manylinux_2_28_x86_64" in tags, tags
        program = next(n for n in names if n.endswith(".data/scripts/vmm-reference"))
        assert z.getinfo(program).external_attr >> 16 & 0o111, "the command must be executable"
        for member in (program, "vmm_reference/_native.abi3.so"):
            elf = z.read(member)
            assert elf[:4] == b"\x7fELF", member
            wanted = glibc_versions(elf)
            assert wanted and max(wanted) <= MAX_GLIBC, f"{member} needs glibc {max(wanted)}"
        for data in ("vmm_reference/assets/init/init.sh", "vmm_reference/guest_agent/agent.c"):
            assert data in names, f"{data} must ship in the wheel (the assets are built from it)"
        entry_points = [n for n in names if n.endswith("entry_points.txt")]
        text = z.read(entry_points[0]).decode() if entry_points else ""
        assert "vmm-reference =" not in text, "the command is the native program, not a Python wrapper"


def test_probe_and_cli_tests_pass_against_the_installed_wheel(wheel, tmp_path, probe_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Install the wheel with this environment's pip into the fresh one, offline.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index", "--no-deps",
                    str(wheel)], check=True)
    # pytest comes from this environment, after the fresh one's own packages on sys.path.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "outer-test-tools.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Drop every PATH entry that holds a cargo; the test below checks none is left.
    path = ":".join(p for p in os.environ.get("PATH", "").split(":") if p and not (Path(p) / "cargo").exists())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{path}"
    where = subprocess.run([str(py), "-c", "import vmm_reference, shutil; print(vmm_reference.__file__); "
                            "print(shutil.which('cargo'))"], capture_output=True, text=True, env=env, check=True)
    module, cargo = where.stdout.split()
    assert module.startswith(str(venv)), module
    assert cargo == "None", f"cargo is still on PATH: {cargo}"
    r = subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--vmm-strict",
                        "tests/test_probe.py", "tests/test_cli.py"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r"\d+ passed", r.stdout) and " skipped" not in r.stdout
