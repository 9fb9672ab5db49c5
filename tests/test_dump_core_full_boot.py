"""``vm.dump_core()`` of the Debian kernel, where KVM is hardware-backed: the dump carries the
kernel's own VMCOREINFO note, so ``drgn`` (PyPI) opens it as a Linux kernel core, and a page the
guest filled reads back through drgn at its guest-physical address."""

from __future__ import annotations

import re

import pytest
from vmm_reference import Vm
from vmm_reference.pytest_plugin import skip_or_fail

pytestmark = pytest.mark.full_boot


def test_drgn_opens_a_dump_of_the_debian_kernel(request, vm_factory, guest_assets, tmp_path):
    try:
        import drgn
    except ImportError:
        skip_or_fail(request.config, "drgn is missing (pip install drgn; the README's test command installs it)")
    vm: Vm = vm_factory(memory_mib=256, kernel=guest_assets.vmlinux, initrd=guest_assets.initrd,
                        cmdline="reboot=k panic=-1 quiet nokaslr", vsock=True)
    vm.start()
    vm.wait_ready(timeout=180)
    marker = "vmm-dump-marker-0123456789abcdef"
    out = vm.run(["sh", "-c", f"printf '{marker}%.0s' $(seq 128) > /vmm-dump-page && uname -r"],
                 text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    release = out.stdout.strip()
    core = tmp_path / "guest.core"
    written = vm.dump_core(core)
    assert 0 < written <= 256 << 20 and core.stat().st_blocks * 512 < (256 << 20)
    assert vm.state == "running"
    with core.open("rb") as f:
        head = f.read(1 << 16)  # the headers and notes, not 256 MiB of RAM
    # The note's name is "VMCOREINFO\0" padded to 12 bytes, then the kernel's text.
    assert re.search(rb"VMCOREINFO\0\0OSRELEASE=" + re.escape(release.encode()) + rb"\n", head), \
        f"the kernel's VMCOREINFO note is not in the dump's notes: {head.count(b'VMCOREINFO')} names, " \
        f"{head.count(b'OSRELEASE=')} OSRELEASE="
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL, prog.flags
    found = False
    for start in range(0, 256 << 20, 1 << 20):
        try:
            chunk = prog.read(start, 1 << 20, True)
        except drgn.FaultError:
            continue
        if (marker * 8).encode() in chunk:
            found = True
            break
    assert found, "the page the guest filled is not in the dump drgn reads"
    assert vm.stop(timeout=60).reason == "poweroff"
