//! What `--help` prints: the usage lines and the options, in argparse's layout (the words
//! users of `python -m vmm_reference` have always seen).

/// The usage lines argparse prints (at its default width of 80 columns).
pub const USAGE: &str = "usage: vmm-reference [-h] [--memory mem_size_mib=N] [--vcpus num_vcpus=N]
                     --kernel path=PATH[,KEY=VALUE...]
                     [--blk path=PATH[,read_only=on][,serial=S]]
                     [--net tap=NAME[,mac=MAC] | user[,forward=H:G]]
                     [--fs path=DIR,tag=TAG[,read_only=on][,protocol=9p]]
                     [--root host] [--rw-cwd] [--modules DIR]
                     [--root-protocol virtiofs|9p]
                     [--transport mmio|pci] [--rng] [--gdb unix:PATH|PORT]
                     [--console]
                     [--ready-timeout SECONDS] [--version]
";

/// What `--help` prints after the usage lines.
pub const HELP: &str = "
Boot a Linux kernel on KVM with its serial console on this terminal.

options:
  -h, --help            show this help message and exit
  --memory mem_size_mib=N
                        mem_size_mib: guest RAM in MiB (default 256)
  --vcpus num_vcpus=N   num_vcpus: number of vCPUs (default 1)
  --kernel path=PATH[,KEY=VALUE...]
                        path: ELF vmlinux or bzImage (required); himem_start:
                        load address of the kernel and start of high memory,
                        bytes (decimal or 0x hex, multiple of 4096, at least
                        1048576; default 1048576); cmdline: kernel command
                        line (default \"reboot=k panic=-1\"; console=ttyS0 is
                        added when it names no console, pci=off when it has no
                        pci= and no PCI device); initrd: an initramfs to load
  --blk path=PATH[,read_only=on][,serial=S]
                        a raw disk image as a virtio-blk device (repeatable:
                        /dev/vda, /dev/vdb, ... in order); read_only:
                        on/off/true/false (default off); serial: at most 20
                        characters
  --net tap=NAME[,mac=MAC] | user[,forward=H:G]
                        a virtio-net device (repeatable: eth0, eth1, ... in
                        order): a host TAP interface (opened, or created with
                        CAP_NET_ADMIN), or user-mode networking through passt
                        (no root; forward host TCP ports to the guest with
                        forward=8080:80, several joined by +)
  --transport mmio|pci  how the guest reaches the virtio devices: mmio (the
                        default, for kernels with CONFIG_VIRTIO_MMIO) or pci,
                        with MSI-X (for kernels with CONFIG_VIRTIO_PCI, as
                        defconfig + kvm_guest.config builds them)
  --fs path=DIR,tag=TAG[,read_only=on][,protocol=9p]
                        a host directory the guest mounts with `mount -t
                        virtiofs TAG /mnt` (repeatable; a device each): tag: 1
                        to 36 bytes; read_only: on/off/true/false (default
                        off), enforced on the host; protocol: virtiofs (the
                        default) or 9p (`mount -t 9p -o
                        trans=virtio,version=9p2000.L TAG /mnt`, for kernels
                        without virtio-fs)
  --root host           the host's / as the guest's, read-only, with writable
                        overlays on /etc, /var, /root, /home, /tmp and tmpfs
                        on /run; -- COMMAND runs in the host's userspace and
                        working directory, without it a shell on the console
                        (the kernel needs virtio-fs, or 9p with --root-protocol
                        9p, and overlayfs, built in or as modules the
                        package's initramfs loads)
  --rw-cwd              with --root host: share the working directory
                        read-write (the rest of / stays read-only)
  --modules DIR         with --root host: kernel modules (/lib/modules/RELEASE)
                        to mount at /lib/modules/$(uname -r)
  --root-protocol virtiofs|9p
                        with --root host: how the guest mounts the host's
                        files: virtiofs (the default) or 9p (for kernels
                        without virtio-fs, as defconfig + kvm_guest.config
                        builds them)
  --rng                 a virtio-rng device: entropy for the guest from the
                        host's getrandom
  --gdb unix:PATH|PORT  a gdb stub on a new UNIX socket or on 127.0.0.1:PORT: the
                        guest waits at its first instruction until gdb attaches
                        (`target remote PATH|:PORT`); boot with nokaslr so that
                        vmlinux's symbols match
  --console             with -- COMMAND: copy the guest's console to stderr
                        (it is hidden by default)
  --ready-timeout SECONDS
                        with -- COMMAND: how long to wait for the guest agent
                        after boot (default 120)
  --version             show program's version number and exit

Press Ctrl-A then x to end the VM from a terminal; `kill -USR1 PID` writes a core of the guest (for crash, drgn or gdb) to vmm-reference-PID-N.core in the current directory and lets it run on. Exit status: 0 when the guest reset, shut down or powered off the machine; the guest's code when it wrote one to the exit device (0xd0000000); 1 when the VM failed, panicked or was killed; 2 on a usage error: a malformed option or a value the VMM does not accept (a missing file too).

vmm-reference OPTIONS -- COMMAND [ARG...] runs COMMAND in the guest through its agent (vmm-agent, started by the asset initramfs) instead: its output on ours, the console hidden (--console shows it on stderr), the guest powered off after it, and its exit status ours.
";
