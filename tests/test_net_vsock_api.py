"""Network and vsock devices from the outside: arguments, the CLI's --net, the host sockets.

What the guest sees of them is tested through the probe guest's drivers
(tests/test_net_probe.py, tests/test_vsock_probe.py) and full boots (tests/test_full_boot.py).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from vmm_reference import Tap, UserNet, Vm, VmConfigError, Vsock


@pytest.mark.parametrize(
    "net, message",
    [
        ([Tap("x" * 16)], 'invalid net[0].tap="xxxxxxxxxxxxxxxx": expected an interface name of 1 to 15'),
        ([Tap("tap0", mac="01:02:03:04:05:06")], 'invalid net[0].mac="01:02:03:04:05:06": expected a unicast'),
        ([Tap("tap0", mac="06:00")], "invalid net[0].mac="),
        ([UserNet(forward={0: 80})], "invalid net[0].forward=0: expected TCP ports from 1 to 65535"),
        ([UserNet(forward={8080: 65536})], "invalid net[0].forward=65536"),
        (["tap0"], "invalid net[0]='tap0': expected a Tap or a UserNet"),
        (Tap("tap0"), "invalid net=Tap("),
    ],
)
def test_bad_network_arguments_name_the_argument(probe_elf, net, message):
    with pytest.raises(VmConfigError) as e:
        Vm(kernel=probe_elf, net=net)
    assert message in str(e.value)


def test_tap_in_a_private_network_namespace(probe_elf):
    """The TAP is created (we are root in our own namespace) and listed; nothing else is touched."""
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --net is not permitted here")
    code = (
        "from vmm_reference import Vm, Tap\n"
        f"vm = Vm(kernel={str(probe_elf)!r}, net=[Tap('tap7', mac='06:00:ac:10:00:07')])\n"
        "print([d.kind for d in vm.boot_info.devices])\n"
        "import subprocess; print(subprocess.run(['ip', '-o', 'link', 'show', 'tap7'], capture_output=True,"
        " text=True).stdout)\n"
        "vm.start(); vm.wait(30); vm.close()\n"
        "# The stopped VM has let go of the TAP: another one may open it at once.\n"
        f"Vm(kernel={str(probe_elf)!r}, net=[Tap('tap7')]).close()\n"
        "print('reopened')\n"
    )
    r = subprocess.run(["unshare", "--net", "python3", "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PATH": os.environ.get("PATH", "")})
    assert r.returncode == 0, r.stderr
    assert "['virtio-net']" in r.stdout and "tap7" in r.stdout and "reopened" in r.stdout


def test_vsock_socket_lives_with_the_vm(probe_elf, tmp_path):
    uds = tmp_path / "v.sock"
    vm = Vm(kernel=probe_elf, cmdline="probe.end=halt", vsock=Vsock(cid=7, uds=str(uds)))
    assert vm.vsock is not None and vm.vsock.cid == 7 and vm.vsock.uds == str(uds)
    assert [d.kind for d in vm.boot_info.devices] == ["virtio-vsock"]
    assert uds.exists()
    with pytest.raises(VmConfigError, match=r"vsock.uds=.*does not exist yet"):
        Vm(kernel=probe_elf, vsock=Vsock(uds=str(uds)))
    # Nobody answers in a guest without a vsock driver: a clear timeout, not a hang.
    vm.start()
    with pytest.raises(TimeoutError, match="no answer from the guest"):
        vm.vsock.connect(52, timeout=0.5)
    listener = vm.vsock.listen(5000)
    assert (tmp_path / "v.sock_5000").exists()
    listener.close()
    vm.close()
    assert not uds.exists(), "the stopped VM removed its socket"


def test_default_vsock_socket_is_private_and_removed(probe_elf):
    vm = Vm(kernel=probe_elf, vsock=True)
    assert vm.vsock is not None
    directory = os.path.dirname(vm.vsock.uds)
    assert os.stat(directory).st_mode & 0o077 == 0, "only this user may reach the guest"
    vm.close()
    assert not os.path.exists(directory)


@pytest.mark.parametrize(
    "vsock, message",
    [
        (Vsock(cid=2), "invalid vsock.cid=2: expected 3 to 4294967294"),
        (Vsock(cid=-1), "invalid vsock.cid=-1: expected 3 to 4294967294"),
        (Vsock(cid=2**40), f"invalid vsock.cid={2**40}: expected 3 to 4294967294"),
        (Vsock(uds="/nonexistent-dir/v.sock"), 'vsock.uds="/nonexistent-dir"'),
        ("yes", "invalid vsock='yes': expected True, False, None or a Vsock"),
    ],
)
def test_bad_vsock_arguments(probe_elf, vsock, message):
    with pytest.raises(Exception) as e:
        Vm(kernel=probe_elf, vsock=vsock)
    assert message in str(e.value)


def test_connect_checks_the_port(probe_elf):
    vm = Vm(kernel=probe_elf, vsock=True)
    assert vm.vsock is not None
    with pytest.raises(VmConfigError, match="invalid port=-1"):
        vm.vsock.connect(-1)
    vm.close()
    with pytest.raises(ConnectionRefusedError, match="is gone"):
        vm.vsock.connect(52)
