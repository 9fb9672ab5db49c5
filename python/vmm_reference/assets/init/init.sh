#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in /lib/vmm/*.ko; do insmod "$m" 2>/dev/null; done
# The drivers of the kinds of virtio device the transports just found, each kind once.
kinds=" "
for d in /sys/bus/virtio/devices/*; do
  [ -r "$d/device" ] || continue
  id=$(($(cat "$d/device")))
  case "$kinds" in *" $id "*) continue ;; esac
  kinds="$kinds$id "
  for m in /lib/vmm/virtio-$id/*.ko; do [ -e "$m" ] && insmod "$m" 2>/dev/null; done
done
{HOST_ROOT}
root= fstype= flags=rw init=/sbin/init
set -f
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=/dev/*) root="${{arg#root=}}" ;;
    rootfstype=*) fstype="${{arg#rootfstype=}}" ;;
    ro|rw) flags="$arg" ;;
    init=*) init="${{arg#init=}}" ;;
  esac
done
set +f
if [ -n "$root" ]; then
  n=0
  while [ ! -b "$root" ] && [ $n -lt {ROOT_WAIT_TENTHS} ]; do
    grep -q " /dev devtmpfs " /proc/mounts || mdev -s
    sleep 0.1; n=$((n + 1))
  done
  mkdir -p /newroot
  if [ ! -b "$root" ]; then
    echo "{GUEST_ROOT_FAILED_MARKER} root=$root: no such block device after {ROOT_WAIT_SECONDS} s"
  elif ! mount ${{fstype:+-t $fstype}} -o "$flags" "$root" /newroot; then
    echo "{GUEST_ROOT_FAILED_MARKER} root=$root: mount -o $flags failed"
  elif [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
    echo "{GUEST_ROOT_FAILED_MARKER} root=$root: no $init on it"
    umount /newroot
  else
    for d in dev proc sys; do
      [ -d "/newroot/$d" ] && mount --move "/$d" "/newroot/$d" || umount -l "/$d"
    done
    exec switch_root /newroot "$init"
  fi
fi
acpid -d -c /etc/acpi >/dev/null 2>&1 &
{AGENT_START}
echo "<6>vmm-reference: /init ready" >/dev/kmsg 2>/dev/null
echo "{GUEST_READY_MARKER} kernel=$(uname -r) cpus=$(nproc)"
{MODE}
[ "$mode" = shell ] && setsid cttyhack sh
{AGENT_WAIT}
echo "{GUEST_DONE_MARKER}"
reboot -f
