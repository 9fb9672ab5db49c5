"""The kernel configuration fragment names real options, and --check reads a .config."""

from __future__ import annotations

import subprocess
import sys

from vmm_reference.kconfig import FRAGMENT, OPTIONS, missing


def test_every_option_is_one_the_debian_kernel_knows():
    """Debian's generic kernel's config mentions each option (built in, a module or "is not set")."""
    from vmm_reference.assets import fetch_lab

    config = next(fetch_lab().bzimage.parent.glob("config-*")).read_text()
    unknown = [name for name in OPTIONS
               if f"CONFIG_{name}=" not in config and f"# CONFIG_{name} is not set" not in config]
    assert unknown == []
    # That kernel builds most of it as modules: --check says which.
    lacking = missing(config)
    assert "VIRTIO_FS" in lacking and "SERIAL_8250_CONSOLE" not in lacking


def test_the_command_prints_the_fragment_and_checks_a_config(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vmm_reference.kconfig"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == FRAGMENT
    assert "CONFIG_VIRTIO_FS=y" in r.stdout and "CONFIG_VIRTIO_PCI=y" in r.stdout
    good = tmp_path / "good"
    good.write_text("".join(f"CONFIG_{n}=y\n" for n in OPTIONS))
    assert subprocess.run([sys.executable, "-m", "vmm_reference.kconfig", "--check", str(good)]).returncode == 0
    bad = tmp_path / "bad"
    bad.write_text("CONFIG_VIRTIO=y\nCONFIG_VIRTIO_FS=m\n")
    r = subprocess.run([sys.executable, "-m", "vmm_reference.kconfig", "--check", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "CONFIG_VIRTIO_FS is not built in" in r.stdout
