#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sys /sys
[ -c /dev/null ] || mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
acpid -d -c /etc/acpi >/dev/null 2>&1 &
{AGENT_START}
echo "{ROOTFS_READY_MARKER} kernel=$(uname -r) cpus=$(nproc)"
{MODE}
[ "$mode" = shell ] && setsid cttyhack sh
{AGENT_WAIT}
echo "{GUEST_DONE_MARKER}"
sync
mount -o remount,ro / 2>/dev/null
reboot -f
