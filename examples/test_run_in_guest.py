"""Build a program on the host, copy it into the guest and run it there: ``pytest examples/test_run_in_guest.py``.

The ``vm`` fixture's VM has a vsock device, and the asset initramfs starts the guest agent,
so ``vm.run``, ``vm.copy_to`` and ``vm.copy_from`` work once ``vm.wait_ready()`` returns. On
PVM hosts these ``full_boot`` tests run inside the nested-KVM lab.
"""

import hashlib
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.full_boot

PROGRAM = r"""
#include <stdio.h>
#include <sys/utsname.h>

int main(int argc, char **argv) {
    struct utsname u;
    uname(&u);
    printf("hello from %s %s\n", u.sysname, u.release);
    fprintf(stderr, "argc=%d\n", argc);
    return argc;
}
"""


@pytest.fixture
def program(tmp_path):
    """Build a static binary on the host (static: the guest's busybox userland has no libc)."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc")
    source = tmp_path / "hello.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "hello"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def test_a_host_built_program_runs_in_the_guest(vm, program):
    """Copy the binary in, run it, check its output, exit code and the kernel it ran on."""
    vm.wait_ready(timeout=120)
    vm.copy_to(program, "/tmp/hello")
    r = vm.run(["/tmp/hello", "a", "b"], timeout=60, text=True)
    release = vm.run(["uname", "-r"], text=True).stdout.strip()
    assert (r.returncode, r.stdout, r.stderr) == (3, f"hello from Linux {release}\n", "argc=3\n")


def test_results_come_back_from_the_guest(vm, tmp_path):
    """Produce a file in the guest and fetch it."""
    vm.wait_ready(timeout=120)
    vm.run("dmesg > /tmp/dmesg.txt; sha256sum /tmp/dmesg.txt > /tmp/dmesg.sha256", check=True)
    vm.copy_from("/tmp/dmesg.txt", tmp_path)
    digest = vm.run("cat /tmp/dmesg.sha256", text=True).stdout.split()[0]
    assert hashlib.sha256((tmp_path / "dmesg.txt").read_bytes()).hexdigest() == digest
