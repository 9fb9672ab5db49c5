if [ "$mode" != shell ] && grep -qx 0x0013 /sys/bus/virtio/devices/*/device 2>/dev/null; then
  while :; do sleep 3600; done
fi