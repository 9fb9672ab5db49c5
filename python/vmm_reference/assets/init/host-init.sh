# PID 1 on the host's root (vmm.root=host), started by the initramfs's /init with
# /run/vmm/busybox: the host's userspace, the guest's kernel file systems, the agent.
b=/run/vmm/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
$b mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
$b mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
$b mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
$b mkdir -p /dev/pts /dev/shm
$b mount -t devpts devpts /dev/pts 2>/dev/null
$b mount -t tmpfs shm /dev/shm 2>/dev/null
$b acpid -d -c /run/vmm/acpi >/dev/null 2>&1 &
/run/vmm/vmm-agent >/dev/null 2>&1 &
echo "<6>vmm-reference: /init ready" >/dev/kmsg 2>/dev/null
echo "{GUEST_READY_MARKER} kernel=$($b uname -r) cpus=$($b nproc) root=host"
case " $($b cat /proc/cmdline) " in
  *" vmm.init=shell "*)
    # A shell on the console in the host's userspace; when it exits, the VM powers off.
    $b setsid $b cttyhack /bin/sh -l
    $b poweroff -f ;;
esac
while :; do $b sleep 3600; done
