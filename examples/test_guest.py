"""Example tests for the vmm-reference pytest plugin: ``pytest examples/test_guest.py``.

The ``vm`` fixture boots Debian's cloud kernel with the busybox initramfs from the asset cache
(``python -m vmm_reference.assets``) unless ``--vmm-kernel`` names another kernel. On PVM hosts
the ``full_boot`` tests run inside the nested-KVM lab.
"""

import pytest

pytestmark = pytest.mark.full_boot


def test_guest_reaches_userspace(vm):
    """The guest's /init prints its marker."""
    vm.expect("VMM-REFERENCE-GUEST-READY", timeout=120)


# A matrix: every marker is one run (add kernels with --vmm-kernel, or kernel=... here).
@pytest.mark.vm(vcpus=1, memory_mib=256, cmdline="reboot=k panic=-1 quiet")
@pytest.mark.vm(vcpus=2, memory_mib=512, cmdline="reboot=k panic=-1 quiet")
@pytest.mark.vm(vcpus=4, memory_mib=1024, cmdline="reboot=k panic=-1 quiet")
def test_guest_sees_every_cpu(vm):
    """The kernel brings up as many CPUs as the VM has."""
    m = vm.expect(r"GUEST-READY kernel=\S+ cpus=(\d+)", timeout=120)
    assert int(m.group(1)) == vm.vcpus
