"""The guest's init scripts (``init/*.sh``, real files) and the markers they print.

The scripts are templates: ``{NAME}`` is replaced by the value below of that name (the
markers, the root device's wait), ``{{`` and ``}}`` stand for braces (``str.format``).
"""

from __future__ import annotations

from pathlib import Path

#: Printed by the initramfs's /init once userspace runs, with the kernel release and the CPU
#: count. Just before it, /init logs ``vmm-reference: /init ready`` to the kernel log (not the
#: console), so that the kernel's own timestamps say when userspace got there.
GUEST_READY_MARKER = "VMM-REFERENCE-GUEST-READY"

#: Printed by /init just before it reboots.
GUEST_DONE_MARKER = "VMM-REFERENCE-GUEST-DONE"

#: Printed by the guest when its ACPI power button was pressed, just before it powers off.
GUEST_POWER_BUTTON_MARKER = "VMM-REFERENCE-GUEST-POWER-BUTTON"

#: Printed by the initramfs's /init when the command line's ``root=`` device did not appear
#: within :data:`ROOT_WAIT_SECONDS` or could not be mounted; /init then goes on as without ``root=``.
GUEST_ROOT_FAILED_MARKER = "VMM-REFERENCE-GUEST-ROOT-FAILED"

#: Printed by the root filesystem image's /sbin/init once it runs.
ROOTFS_READY_MARKER = "VMM-REFERENCE-ROOTFS-READY"

#: How long the initramfs waits for the ``root=`` block device to appear.
ROOT_WAIT_SECONDS = 5

_DIR = Path(__file__).resolve().parent / "init"


def _part(name: str) -> str:
    return (_DIR / name).read_text()


# Both inits start the guest agent (vmm-agent, on vsock port 52) before their ready line.
# With a virtio-vsock device (virtio device id 0x0013), the default init then waits, serving
# the agent, until the guest is powered off (the ACPI power button: ``vm.stop()``), instead
# of rebooting at once; ``vmm.init=shell`` gives the shell as before.
_VALUES = {
    "GUEST_READY_MARKER": GUEST_READY_MARKER,
    "GUEST_DONE_MARKER": GUEST_DONE_MARKER,
    "GUEST_POWER_BUTTON_MARKER": GUEST_POWER_BUTTON_MARKER,
    "GUEST_ROOT_FAILED_MARKER": GUEST_ROOT_FAILED_MARKER,
    "ROOTFS_READY_MARKER": ROOTFS_READY_MARKER,
    "ROOT_WAIT_SECONDS": ROOT_WAIT_SECONDS,
    "ROOT_WAIT_TENTHS": ROOT_WAIT_SECONDS * 10,
    "AGENT_START": _part("agent-start.sh"),
    "AGENT_WAIT": _part("agent-wait.sh"),
    "MODE": _part("mode.sh"),
}
# A part with values of its own is filled in before it goes into a script.
_VALUES["HOST_ROOT"] = _part("host-root.sh").format(**_VALUES)


def script(name: str) -> str:
    """Return the init script ``init/<name>`` with its values filled in."""
    return _part(name).format(**_VALUES)


#: The initramfs's /init.
_INIT_SCRIPT = script("init.sh")

#: The root filesystem image's /sbin/init: like the initramfs's, on a disk. /proc, /sys and
#: /dev arrive mounted from the initramfs (mounted here otherwise); / is left read-only
#: before the reboot so that the image is clean when the VM ends.
_ROOTFS_INIT = script("rootfs-init.sh")

#: PID 1 of a guest on the host's root (``vmm.root=host``): the initramfs's /init mounts the
#: host's root, copies busybox, the agent and this script into its /run/vmm and switches to it.
_HOST_INIT_SCRIPT = script("host-init.sh")

#: busybox acpid runs /etc/acpi/PWRF/00000080 when the power button (KEY_POWER) is pressed.
_POWER_BUTTON_SCRIPT = script("power-button.sh")
