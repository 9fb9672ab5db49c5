mode=
case " $(cat /proc/cmdline) " in
  *" vmm.init=shell "*) mode=shell ;;
esac