//! virtio-fs (virtio 1.2, section 5.11): a host directory the guest mounts with
//! `mount -t virtiofs TAG /mnt`, served in this process by a FUSE server of our own.
//!
//! Two queues: 0 is the high-priority one (FORGET, BATCH_FORGET, INTERRUPT), 1 the one
//! request queue; no notification queue and no DAX window. Each chain is one FUSE request:
//! its driver-readable buffers the request, its device-writable ones the reply
//! ([`server`]). The file system itself ([`passthrough`]) is a directory of the host, seen
//! only through descriptors reached from it one name at a time; see there for how a guest is
//! kept inside it. A round serves at most [`BATCH`] requests.
//!
//! Why not `fuse-backend-rs`: its readers and writers are built from `virtio-queue` 0.17 and
//! `vm-memory` =0.17.1 descriptor chains, not the 0.18 ones every other device here uses, so
//! it could serve our queues only through a second view of guest memory under another
//! vm-memory; and its passthrough resolves names with plain `openat` where ours must never
//! leave the share. The FUSE subset a Linux guest uses is small (`fuse.rs`), and the part
//! that must be right — confinement — is easier to check in code that is ours.

pub mod fuse;
pub mod passthrough;
mod readdir;
pub mod server;

use super::bufs::GuestBufs;
use super::{queue, ActivateError, Activation, Served, VirtioDevice};
use crate::config::ShareConfig;
use crate::refusal::{HostError, Refusal};

use passthrough::Passthrough;
use server::Server;

/// The virtio device type of a file system device.
pub const DEVICE_TYPE: u32 = 26;
/// The queues' sizes (high priority, requests).
pub const QUEUE_SIZES: [u16; 2] = [128, 256];
/// The most requests served per round.
pub const BATCH: usize = 64;
/// The tag's size in the configuration space.
pub const TAG_LEN: usize = 36;

/// Why a share's device cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its directory (named `shares[i]`) is refused or cannot be opened.
    #[error(transparent)]
    Share(#[from] HostError),
}

/// The device.
pub struct Fs {
    server: Server,
    config: [u8; TAG_LEN + 4],
    tag: String,
    active: Option<Active>,
    requests: u64,
    bytes_read: u64,
    bytes_written: u64,
}

use super::ActiveQueues as Active;

impl Fs {
    /// Share number `index` as `config` describes it; errors name `shares[index]`.
    pub fn new(index: usize, config: &ShareConfig) -> Result<Fs, Error> {
        let arg = format!("shares[{index}]");
        let path = &config.path;
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(HostError::Refused(Refusal::invalid(
                    arg,
                    format!("{path:?}"),
                    "expected a directory to share",
                ))
                .into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HostError::Refused(Refusal::FileNotFound {
                    arg: arg.into(),
                    path: path.clone(),
                })
                .into())
            }
            Err(e) => return Err(HostError::io(format!("{arg}: cannot open {path:?}"))(e).into()),
        }
        let fs = Passthrough::new(path, config.read_only)
            .map_err(HostError::io(format!("{arg}: cannot open {path:?}")))?;
        raise_open_file_limit();
        let mut cfg = [0u8; TAG_LEN + 4];
        let tag = config.tag.as_bytes();
        cfg[..tag.len().min(TAG_LEN)].copy_from_slice(&tag[..tag.len().min(TAG_LEN)]);
        cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        Ok(Fs {
            server: Server::new(fs),
            config: cfg,
            tag: config.tag.clone(),
            active: None,
            requests: 0,
            bytes_read: 0,
            bytes_written: 0,
        })
    }

    /// The tag the guest mounts it by.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Serves queue `index`; returns whether chains are left for another round.
    fn serve(&mut self, index: usize) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let Some(q) = active.queues.get_mut(index) else {
            return false;
        };
        let mem = active.mem.clone();
        let mem = mem.as_ref();
        let (server, requests, read, written) = (
            &mut self.server,
            &mut self.requests,
            &mut self.bytes_read,
            &mut self.bytes_written,
        );
        let round = queue::serve(q, index, mem, &active.interrupt, BATCH, |chain| {
            let Some((readable, writable)) = split(chain) else {
                return Served::Used(0); // a readable buffer after a writable one
            };
            *requests += 1;
            let done = server.handle(mem, &readable, &writable);
            *read += done.read;
            *written += done.written;
            Served::Used(done.used)
        });
        round.more()
    }
}

/// A request chain's driver-readable buffers and the device-writable ones after them; None
/// when they are not in that order.
fn split(
    chain: impl IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
) -> Option<(GuestBufs, GuestBufs)> {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for d in chain {
        if d.is_write_only() {
            writable.push((d.addr(), d.len()));
        } else if writable.is_empty() {
            readable.push((d.addr(), d.len()));
        } else {
            return None;
        }
    }
    Some((GuestBufs::new(readable), GuestBufs::new(writable)))
}

/// Raises this process's soft limit on open files to its hard limit: each inode the guest
/// holds is a descriptor, and the default soft limit (1,024) is smaller than a tree.
fn raise_open_file_limit() {
    // SAFETY: a zeroed rlimit is valid for getrlimit to fill.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid rlimit; setrlimit only raises the soft limit to the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | super::VIRTIO_RING_F_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.queues_ready(QUEUE_SIZES.len())?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.server.reset();
    }

    fn process_queue(&mut self, index: usize) -> bool {
        self.serve(index)
    }

    fn kind(&self) -> &'static str {
        "virtio-fs"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", self.requests),
            ("bytes_read", self.bytes_read),
            ("bytes_written", self.bytes_written),
            ("inodes", self.server.fs().inodes() as u64),
            ("open_files", self.server.fs().open_handles() as u64),
        ]
    }

    fn release(&mut self) {
        self.reset();
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
