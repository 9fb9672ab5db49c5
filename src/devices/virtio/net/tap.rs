//! A TAP device as a network backend: frames with their virtio-net header go straight between
//! the guest's buffers and the TAP (`IFF_VNET_HDR`), so checksum and segmentation offloads
//! pass through to the host kernel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use crate::refusal::{HostError, Refusal};

/// `struct ifreq` as far as TUNSETIFF needs it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// TUNSETOFFLOAD flags.
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
}

impl Tap {
    /// Opens (creating it if it does not exist and this process may) the TAP `name`; errors
    /// name `arg` (`net[0]`).
    pub fn open(arg: &str, name: &str, vnet_hdr_len: usize) -> Result<Tap, HostError> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name.contains(['/', ' ', '\t', '\n', ':'])
            || name == "."
            || name == ".."
        {
            return Err(HostError::Refused(Refusal::invalid(
                format!("{arg}.tap"),
                format!("{name:?}"),
                format!(
                    "expected an interface name of 1 to {} characters without '/', ':' or spaces",
                    libc::IFNAMSIZ - 1
                ),
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => HostError::Refused(Refusal::FileNotFound {
                    arg: format!("{arg}.tap").into(),
                    path: "/dev/net/tun".into(),
                }),
                io::ErrorKind::PermissionDenied => HostError::Refused(Refusal::PermissionDenied {
                    arg: format!("{arg}.tap").into(),
                    path: "/dev/net/tun".into(),
                    hint: "make /dev/net/tun readable and writable by this user".into(),
                }),
                _ => HostError::Io {
                    what: "cannot open /dev/net/tun".into(),
                    source: e,
                },
            })?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is (name + flags + padding).
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    HostError::Refused(Refusal::PermissionDenied {
                        arg: format!("{arg}.tap").into(),
                        path: name.into(),
                        hint: format!(
                            "creating a TAP needs CAP_NET_ADMIN; create it beforehand with \
                             `ip tuntap add dev {name} mode tap user $USER`"
                        ),
                    })
                }
                Some(libc::EBUSY) => HostError::Refused(Refusal::invalid(
                    format!("{arg}.tap"),
                    format!("{name:?}"),
                    "expected a TAP no other program has open",
                )),
                Some(libc::EINVAL) => HostError::Refused(Refusal::invalid(
                    format!("{arg}.tap"),
                    format!("{name:?}"),
                    "expected the name of a TAP device (this interface is of another kind)",
                )),
                _ => HostError::Io {
                    what: format!("cannot attach to the TAP {name}"),
                    source: e,
                },
            });
        }
        let size = vnet_hdr_len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(HostError::Io {
                what: format!("cannot set the TAP {name}'s virtio-net header size"),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap { file })
    }

    /// Tells the TAP which offloads the guest accepted: checksums, TSO4, TSO6.
    pub fn set_offloads(&self, csum: bool, tso4: bool, tso6: bool) -> io::Result<()> {
        let mut flags = 0;
        if csum {
            flags |= TUN_F_CSUM;
            if tso4 {
                flags |= TUN_F_TSO4;
            }
            if tso6 {
                flags |= TUN_F_TSO6;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
