case " $(cat /proc/cmdline) " in
  *" vmm.root=host "*)
    cwd= modules= p9=
    set -f
    for arg in $(cat /proc/cmdline); do
      case "$arg" in
        vmm.cwd=*) cwd="${{arg#vmm.cwd=}}" ;;
        vmm.modules=1) modules=1 ;;
        vmm.share=9p) p9=1 ;;
      esac
    done
    set +f
    # share TAG DIR [ro]: mounts a share of the VMM's, over virtio-fs or (vmm.share=9p) 9p;
    # the read-only ones may be cached, the read-write one sees the host's changes at once.
    share() {{
      if [ -n "$p9" ]; then
        mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000${{3:+,ro,cache=loose}}" "$1" "$2"
      else
        mount -t virtiofs ${{3:+-o ro}} "$1" "$2"
      fi
    }}
    mkdir -p /newroot
    if share vmm-root /newroot ro; then
      mount -t tmpfs -o mode=755 run /newroot/run
      v=/newroot/run/vmm
      mkdir -p "$v/acpi/PWRF" "$v/ov"
      cp /bin/busybox /sbin/vmm-agent "$v/"
      cp /lib/vmm/host-init.sh "$v/init"
      printf '#!/run/vmm/busybox sh\necho "{GUEST_POWER_BUTTON_MARKER}" >/dev/console\n/run/vmm/busybox poweroff -f\n' \
        >"$v/acpi/PWRF/00000080"
      chmod 755 "$v/acpi/PWRF/00000080"
      # /tmp too: programs the host keeps there (a CI checkout, a venv) stay visible.
      for d in etc var root home tmp; do
        [ -d "/newroot/$d" ] || continue
        mkdir -p "$v/ov/$d/u" "$v/ov/$d/w"
        mount -t overlay overlay -o "lowerdir=/newroot/$d,upperdir=$v/ov/$d/u,workdir=$v/ov/$d/w" "/newroot/$d" \
          || mount -t tmpfs "$d" "/newroot/$d"
      done
      if [ -n "$cwd" ]; then
        mkdir -p "/newroot$cwd" && share vmm-cwd "/newroot$cwd"
      fi
      if [ -n "$modules" ]; then
        release=$(uname -r)
        mount -t tmpfs modules /newroot/lib/modules && mkdir -p "/newroot/lib/modules/$release" \
          && share vmm-modules "/newroot/lib/modules/$release" ro
      fi
      for d in dev proc sys; do mount --move "/$d" "/newroot/$d"; done
      exec switch_root /newroot /run/vmm/busybox sh /run/vmm/init
    fi
    echo "{GUEST_ROOT_FAILED_MARKER} root=host: cannot mount the host's root (share vmm-root${{p9:+ over 9p}})"
    ;;
esac
