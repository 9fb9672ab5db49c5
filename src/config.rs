//! What a VM is made of, as the user describes it, and the checks that do not need KVM.
//!
//! Checks that depend on the kernel image (command-line limit, `himem_start` range, whether
//! the kernel fits) happen in [`crate::boot`] once the image has been read.

use std::path::PathBuf;

use crate::arch::x86_64::layout::{HIMEM_START_ALIGN, HIMEM_START_MIN};
/// Configuration checks refuse values; they never fail otherwise.
use crate::refusal::Refusal as Error;

type Result<T> = std::result::Result<T, Error>;

/// The default guest RAM, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// The default kernel command line: reboot through the i8042 so that a guest `reboot` ends
/// the VM, and reboot at once on panic. (`console=ttyS0` and `pci=off` are added to any
/// command line that names no console and no `pci=`: see [`crate::boot::cmdline`].)
pub const DEFAULT_CMDLINE: &str = "reboot=k panic=-1";
/// The default bound on retained console output, in bytes (see [`crate::console`]).
pub const DEFAULT_CONSOLE_LIMIT: usize = 8 << 20;
/// The smallest accepted console bound.
pub const MIN_CONSOLE_LIMIT: usize = 4096;
/// APIC ids are 8 bits in the xAPIC topology the boot CPUID describes; 255 is broadcast.
pub const MAX_VCPUS_XAPIC: u32 = 254;

/// The kernel and how to boot it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelConfig {
    /// An ELF vmlinux or a bzImage; the format is detected from the file.
    pub path: PathBuf,
    /// The kernel command line. `console=ttyS0` is appended when it has no `console=`, and
    /// `pci=off` when it has no `pci=`.
    pub cmdline: String,
    /// Guest-physical address where the kernel is loaded and high memory starts.
    pub himem_start: u64,
    /// An optional initramfs, loaded at the top of low RAM.
    pub initrd: Option<PathBuf>,
}

impl KernelConfig {
    /// A kernel at `path` with the default command line and `himem_start`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KernelConfig {
            path: path.into(),
            cmdline: DEFAULT_CMDLINE.to_string(),
            himem_start: HIMEM_START_MIN,
            initrd: None,
        }
    }
}

/// Longest disk serial: what virtio-blk's GET_ID returns.
pub const MAX_DISK_SERIAL: usize = 20;

/// A disk: a raw image file the guest sees as a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// The image; its size (rounded down to 512-byte sectors) is the disk's capacity.
    pub path: PathBuf,
    /// Refuse the guest's writes (the file is opened read-only too).
    pub read_only: bool,
    /// What the guest reads as the disk's serial (`/sys/block/vdX/serial`), at most 20 bytes.
    pub serial: Option<String>,
}

impl DiskConfig {
    /// A writable disk at `path` without a serial.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            path: path.into(),
            read_only: false,
            serial: None,
        }
    }
}

/// The smallest CID a guest may have (0–2 are the hypervisor's and the host's).
pub const MIN_GUEST_CID: u32 = 3;
/// The longest path a UNIX socket can be bound to (`sun_path` less its NUL), leaving room for
/// the `_PORT` suffix of guest-initiated connections' sockets.
pub const MAX_VSOCK_UDS_LEN: usize = 107 - 11;

/// A virtio-vsock device whose host side is a UNIX socket, as Firecracker's is.
///
/// A host program connects to `uds` and writes `CONNECT <port>\n` to reach the guest's
/// listener on `port` (answered `OK <host port>\n`); a guest connecting to the host's port
/// `P` (CID 2) is connected to the UNIX socket `<uds>_<P>`, if something listens there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockConfig {
    /// The guest's context id.
    pub cid: u32,
    /// Where the VMM listens for host connections; must not exist yet.
    pub uds: PathBuf,
}

/// Where a network device's frames go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetBackendConfig {
    /// A TAP device, opened (or created) by name; needs CAP_NET_ADMIN to create it.
    Tap {
        /// The interface's name, e.g. `tap0`.
        name: String,
    },
    /// User-mode networking through passt: DHCP, the host's sockets, forwarded host ports.
    User {
        /// TCP ports forwarded from the host to the guest: `(host port, guest port)`.
        forward: Vec<(u16, u16)>,
    },
}

/// A virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// Its backend.
    pub backend: NetBackendConfig,
    /// Its MAC address (unicast).
    pub mac: [u8; 6],
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff` given as `arg`; it must be unicast.
pub fn parse_mac(arg: &str, text: &str) -> Result<[u8; 6]> {
    let bad = || {
        Error::invalid(
            arg.to_string(),
            format!("{text:?}"),
            "expected a unicast MAC address like 06:00:ac:10:00:02 (six hex pairs, the first even)",
        )
    };
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

/// Builds network device `index` from what a front end passed: `kind` `"tap"` (with
/// `name`) or `"user"` (with `forward` ports, host to guest), an optional MAC.
pub fn net_config(
    index: usize,
    kind: &str,
    name: &str,
    mac: Option<&str>,
    forward: &[(i64, i64)],
) -> Result<NetConfig> {
    let arg = format!("net[{index}]");
    let port = |v: i64| {
        u16::try_from(v).ok().filter(|&p| p != 0).ok_or_else(|| {
            Error::invalid(
                format!("{arg}.forward"),
                v,
                "expected TCP ports from 1 to 65535",
            )
        })
    };
    let backend = match kind {
        "tap" => NetBackendConfig::Tap { name: name.into() },
        "user" => NetBackendConfig::User {
            forward: forward
                .iter()
                .map(|&(h, g)| Ok((port(h)?, port(g)?)))
                .collect::<Result<Vec<_>>>()?,
        },
        other => {
            return Err(Error::invalid(
                arg,
                format!("{other:?}"),
                "expected a Tap or a UserNet",
            ))
        }
    };
    let mac = match mac {
        Some(text) => parse_mac(&format!("{arg}.mac"), text)?,
        None => random_mac(),
    };
    Ok(NetConfig { backend, mac })
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into `mac`.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        // No entropy source: still unique enough per process and time.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        mac.copy_from_slice(&(t as u64 ^ u64::from(std::process::id())).to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// How the guest reaches the virtio devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    /// virtio-mmio, found through the DSDT (or `virtio_mmio.device=` without ACPI): for
    /// kernels with `CONFIG_VIRTIO_MMIO`.
    #[default]
    Mmio,
    /// virtio-pci (modern) with MSI-X behind a PCI host bridge: for kernels with
    /// `CONFIG_VIRTIO_PCI`, as `make defconfig kvm_guest.config` builds.
    Pci,
}

impl Transport {
    /// The accepted names.
    pub const NAMES: &'static str = "expected \"mmio\" or \"pci\"";

    /// Its name, as front ends spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mmio => "mmio",
            Transport::Pci => "pci",
        }
    }

    /// Parses a front end's `transport` argument.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "mmio" => Ok(Transport::Mmio),
            "pci" => Ok(Transport::Pci),
            other => Err(Error::invalid(
                "transport",
                format!("{other:?}"),
                Self::NAMES,
            )),
        }
    }
}

/// The most bytes per second an entropy device's rate limit may be.
pub const MAX_RNG_RATE: u64 = 1 << 40;

/// The accepted `rng.rate`.
pub fn rng_rate_range() -> String {
    format!("expected 1 to {MAX_RNG_RATE} bytes per second, or None for no limit")
}

/// A virtio-rng device: entropy for the guest, from the host's `getrandom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngConfig {
    /// At most this many bytes per second (unlimited if None).
    pub rate: Option<u64>,
}

impl RngConfig {
    /// Checks the rate limit.
    pub fn validate(&self) -> Result<()> {
        match self.rate {
            Some(r) if r == 0 || r > MAX_RNG_RATE => {
                Err(Error::invalid("rng.rate", r, rng_rate_range()))
            }
            _ => Ok(()),
        }
    }
}

/// The most shared directories one VM has.
pub const MAX_SHARES: usize = 16;
/// The longest tag a share may have (virtio-fs keeps it in 36 bytes).
pub const MAX_SHARE_TAG: usize = 36;

/// A host directory the guest mounts by its tag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShareConfig {
    /// The host directory.
    pub path: PathBuf,
    /// What the guest mounts it by (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    /// Refuse every change, on the host.
    pub read_only: bool,
    /// The device and protocol the guest reaches it with.
    pub protocol: ShareProtocol,
}

/// How the guest reaches a share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ShareProtocol {
    /// virtio-fs (FUSE): `mount -t virtiofs TAG DIR`, for kernels with `CONFIG_VIRTIO_FS`.
    #[default]
    VirtioFs,
    /// virtio-9p (9P2000.L): `mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR`, for
    /// kernels with `CONFIG_NET_9P_VIRTIO` and `CONFIG_9P_FS`, as `make defconfig
    /// kvm_guest.config` builds.
    P9,
}

impl ShareProtocol {
    /// The accepted names.
    pub const NAMES: &'static str = "expected \"virtiofs\" or \"9p\"";

    /// Its name, as front ends spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareProtocol::VirtioFs => "virtiofs",
            ShareProtocol::P9 => "9p",
        }
    }

    /// Parses a front end's protocol argument, which `arg` names.
    pub fn parse(arg: impl Into<std::borrow::Cow<'static, str>>, text: &str) -> Result<Self> {
        match text {
            "virtiofs" => Ok(ShareProtocol::VirtioFs),
            "9p" => Ok(ShareProtocol::P9),
            other => Err(Error::invalid(arg, format!("{other:?}"), Self::NAMES)),
        }
    }
}

/// The accepted `shares[i].tag`.
pub fn share_tag_range() -> String {
    format!("expected 1 to {MAX_SHARE_TAG} bytes, no NUL, unique among the VM's shares")
}

/// The host's root as the guest's (`crate::host_root` adds what it needs when the VM is built).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRootConfig {
    /// A host directory (the working directory, usually) shared read-write at the same path.
    pub cwd: Option<PathBuf>,
    /// A directory of kernel modules (`/lib/modules/RELEASE` or a build tree's
    /// `INSTALL_MOD_PATH` result) mounted at `/lib/modules/$(uname -r)` in the guest.
    pub modules: Option<PathBuf>,
    /// How the guest reaches these shares: virtio-fs, or 9p for kernels without it.
    pub protocol: ShareProtocol,
}

/// Everything needed to build a VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// The kernel.
    pub kernel: KernelConfig,
    /// Console output retained, in bytes; older output is dropped beyond this.
    pub console_limit: usize,
    /// Give the guest ACPI tables (MADT for every vCPU, PM1 registers for poweroff and the power
    /// button). On by default; the MP table is written either way.
    pub acpi: bool,
    /// Disks, in the order the guest sees them (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: Vec<DiskConfig>,
    /// Network devices, in the order the guest sees them (`eth0`, `eth1`, ...).
    pub net: Vec<NetConfig>,
    /// A vsock device.
    pub vsock: Option<VsockConfig>,
    /// An entropy device.
    pub rng: Option<RngConfig>,
    /// Host directories shared with the guest, one virtio-fs device each.
    pub shares: Vec<ShareConfig>,
    /// The host's root as the guest's ([`crate::host_root`]); its shares are added when the
    /// VM is built.
    pub host_root: Option<HostRootConfig>,
    /// How the guest reaches the virtio devices.
    pub transport: Transport,
    /// Filter the system calls of the VM's own threads (vCPUs, event loop) with seccomp; off
    /// only for debugging ([`crate::seccomp`]).
    pub seccomp: bool,
    /// Where a gdb client attaches ([`crate::gdb`]); the host's business, never saved.
    #[serde(skip)]
    pub gdb: Option<GdbConfig>,
}

/// Where the VM's gdb stub listens for a client (`target remote`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbConfig {
    /// A UNIX socket made at this path (which must not exist yet).
    Unix(PathBuf),
    /// A TCP port on 127.0.0.1.
    Tcp(u16),
}

impl GdbConfig {
    /// The accepted `gdb` values.
    pub const ACCEPTED: &'static str =
        "expected \"unix:PATH\" (a socket to create) or a TCP port 1 to 65535 (on 127.0.0.1)";

    /// Parses a front end's `gdb` argument: `unix:PATH`, or a port number.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::invalid("gdb", format!("{text:?}"), Self::ACCEPTED);
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || path.contains('\0') {
                return Err(bad());
            }
            return Ok(GdbConfig::Unix(PathBuf::from(path)));
        }
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(GdbConfig::Tcp(port)),
            _ => Err(bad()),
        }
    }
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            kernel: KernelConfig::new(""),
            console_limit: DEFAULT_CONSOLE_LIMIT,
            acpi: true,
            disks: Vec::new(),
            net: Vec::new(),
            vsock: None,
            rng: None,
            shares: Vec::new(),
            host_root: None,
            transport: Transport::Mmio,
            seccomp: true,
            gdb: None,
        }
    }
}

impl VmConfig {
    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Checks the values that need no kernel image: `host_mib` is the host's RAM and
    /// `max_vcpus` KVM's vCPU limit.
    pub fn validate(&self, host_mib: u64, max_vcpus: u32) -> Result<()> {
        if self.memory_mib == 0 || self.memory_mib > host_mib {
            return Err(Error::invalid(
                "memory_mib",
                self.memory_mib,
                memory_range(host_mib),
            ));
        }
        if self.vcpus == 0 || self.vcpus > max_vcpus.min(MAX_VCPUS_XAPIC) {
            return Err(Error::invalid("vcpus", self.vcpus, vcpus_range(max_vcpus)));
        }
        if self.console_limit < MIN_CONSOLE_LIMIT {
            return Err(Error::invalid(
                "console_limit",
                self.console_limit,
                console_limit_range(),
            ));
        }
        let max_devices = crate::arch::x86_64::irq_routing::MAX_IRQ_DEVICES;
        let devices = self.virtio_devices();
        if devices > max_devices {
            return Err(Error::invalid(
                "disks",
                format!(
                    "{} disks, {} network devices",
                    self.disks.len(),
                    self.net.len()
                ),
                format!("expected at most {max_devices} devices in all (one interrupt line each)"),
            ));
        }
        for (i, disk) in self.disks.iter().enumerate() {
            if let Some(serial) = &disk.serial {
                if serial.len() > MAX_DISK_SERIAL || !serial.is_ascii() {
                    return Err(Error::invalid(
                        format!("disks[{i}].serial"),
                        format!("{serial:?}"),
                        format!("expected at most {MAX_DISK_SERIAL} ASCII characters"),
                    ));
                }
            }
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        if let Some(rng) = &self.rng {
            rng.validate()?;
        }
        if self.shares.len() > MAX_SHARES {
            return Err(Error::invalid(
                "shares",
                format!("{} shares", self.shares.len()),
                format!("expected at most {MAX_SHARES}"),
            ));
        }
        for (i, share) in self.shares.iter().enumerate() {
            let tag = &share.tag;
            let taken = self.shares[..i].iter().any(|s| &s.tag == tag);
            if tag.is_empty() || tag.len() > MAX_SHARE_TAG || tag.contains('\0') || taken {
                return Err(Error::invalid(
                    format!("shares[{i}].tag"),
                    format!("{tag:?}"),
                    share_tag_range(),
                ));
            }
        }
        Ok(())
    }

    /// How many virtio devices the VM has.
    pub fn virtio_devices(&self) -> usize {
        self.disks.len()
            + self.net.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng.is_some())
            + self.shares.len()
    }
}

/// The accepted `memory_mib` on a host with `host_mib` MiB of RAM.
pub fn memory_range(host_mib: u64) -> String {
    format!("expected 1 to {host_mib} (this host's RAM in MiB)")
}

/// The accepted `vcpus` where KVM allows `max_vcpus`.
pub fn vcpus_range(max_vcpus: u32) -> String {
    let max = max_vcpus.min(MAX_VCPUS_XAPIC);
    let why = if max == MAX_VCPUS_XAPIC {
        "the xAPIC's 8-bit APIC ids"
    } else {
        "KVM's limit on this host"
    };
    format!("expected 1 to {max} ({why})")
}

/// The accepted `console_limit`.
pub fn console_limit_range() -> String {
    format!("expected at least {MIN_CONSOLE_LIMIT} bytes")
}

/// The accepted `himem_start`, before the kernel is known (which bounds it above).
pub fn himem_start_range() -> String {
    format!(
        "expected a multiple of {HIMEM_START_ALIGN:#x} from {HIMEM_START_MIN:#x} (1 MiB) up, \
         leaving room for the kernel below the end of low RAM"
    )
}

/// An integer argument as the user wrote it (`shown`, any size) converted to `T`; a value
/// outside `T` is refused with `range`, the argument's real accepted range, so front ends
/// need no range checks of their own.
pub fn int_arg<T: TryFrom<i128>>(
    arg: &'static str,
    value: Option<i128>,
    shown: &str,
    range: impl FnOnce() -> String,
) -> Result<T> {
    value
        .and_then(|v| T::try_from(v).ok())
        .ok_or_else(|| Error::invalid(arg, shown, range()))
}

/// Checks a guest CID given as any integer (front ends pass what the user wrote).
pub fn guest_cid(value: i128) -> Result<u32> {
    match u32::try_from(value) {
        Ok(cid) if cid >= MIN_GUEST_CID && cid != u32::MAX => Ok(cid),
        _ => Err(Error::invalid(
            "vsock.cid",
            value,
            format!("expected {MIN_GUEST_CID} to {}", u32::MAX - 1),
        )),
    }
}

impl VsockConfig {
    /// Checks the CID and the socket path (the path's directory is checked when it is bound).
    pub fn validate(&self) -> Result<()> {
        guest_cid(i128::from(self.cid))?;
        let len = self.uds.as_os_str().len();
        if len == 0 || len > MAX_VSOCK_UDS_LEN {
            return Err(Error::invalid(
                "vsock.uds",
                format!("{:?}", self.uds),
                format!(
                    "expected a path of 1 to {MAX_VSOCK_UDS_LEN} bytes (a UNIX socket's limit, \
                     less room for the _PORT suffix)"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(memory_mib: u64, vcpus: u32) -> VmConfig {
        VmConfig {
            memory_mib,
            vcpus,
            ..VmConfig::default()
        }
    }

    #[test]
    fn accepts_sane_values() {
        config(256, 1).validate(1024, 64).unwrap();
        config(1024, 64).validate(1024, 64).unwrap();
    }

    #[test]
    fn refuses_zero_and_too_much_memory() {
        let err = config(0, 1).validate(1024, 64).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid memory_mib=0: expected 1 to 1024 (this host's RAM in MiB)"
        );
        assert!(config(1025, 1).validate(1024, 64).is_err());
    }

    #[test]
    fn refuses_bad_vcpu_counts() {
        let err = config(256, 0).validate(1024, 64).unwrap_err().to_string();
        assert!(err.contains("vcpus=0") && err.contains("1 to 64"), "{err}");
        assert!(config(256, 65).validate(1024, 64).is_err());
        assert!(config(256, 255).validate(1024, 1024).is_err());
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("net[0].mac", "06:00:AC:10:00:02").unwrap(),
            [6, 0, 0xac, 0x10, 0, 2]
        );
        for bad in [
            "",
            "06:00:ac:10:00",
            "01:00:00:00:00:00",
            "06:00:ac:10:00:2",
            "zz:00:ac:10:00:02",
        ] {
            let err = parse_mac("net[0].mac", bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid net[0].mac="), "{err}");
        }
        let m = random_mac();
        assert_eq!(m[0] & 3, 2, "locally administered unicast");
    }

    #[test]
    fn checks_the_vsock_cid_and_socket_path() {
        let mut c = config(256, 1);
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds: "/tmp/v.sock".into(),
        });
        c.validate(1024, 64).unwrap();
        for cid in [0, 2, u32::MAX] {
            c.vsock.as_mut().unwrap().cid = cid;
            let err = c.validate(1024, 64).unwrap_err().to_string();
            assert!(
                err.contains("vsock.cid") && err.contains("3 to 4294967294"),
                "{err}"
            );
        }
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds: format!("/tmp/{}", "x".repeat(100)).into(),
        });
        assert!(c
            .validate(1024, 64)
            .unwrap_err()
            .to_string()
            .contains("vsock.uds"));
    }

    #[test]
    fn refuses_long_serials_and_too_many_disks() {
        let mut c = config(256, 1);
        c.disks = vec![DiskConfig::new("a"), DiskConfig::new("b")];
        c.disks[1].serial = Some("x".repeat(21));
        let err = c.validate(1024, 64).unwrap_err().to_string();
        assert!(err.starts_with("invalid disks[1].serial=\"xxx"), "{err}");
        assert!(err.contains("at most 20"), "{err}");
        c.disks[1].serial = Some("x".repeat(20));
        c.validate(1024, 64).unwrap();
        c.disks = vec![DiskConfig::new("a"); 17];
        let err = c.validate(1024, 64).unwrap_err().to_string();
        assert!(err.contains("at most 16 devices in all"), "{err}");
    }
}
