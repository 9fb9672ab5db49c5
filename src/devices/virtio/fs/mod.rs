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
pub mod readdir;
pub mod server;

use super::share::{passthrough, Protocol, Serving};
use super::{ActivateError, Activation, VirtioDevice};
use crate::config::ShareConfig;

use server::Server;

/// The virtio device type of a file system device.
pub const DEVICE_TYPE: u32 = 26;
/// The queues' sizes (high priority, requests).
pub const QUEUE_SIZES: [u16; 2] = [128, 256];
/// The most requests served per round.
pub const BATCH: usize = 64;
/// The tag's size in the configuration space.
pub const TAG_LEN: usize = 36;

pub use super::share::Error;

/// The device.
pub struct Fs {
    server: Server,
    serving: Serving,
    config: [u8; TAG_LEN + 4],
    tag: String,
}

impl Fs {
    /// Share number `index` as `config` describes it; errors name `shares[index]`.
    pub fn new(index: usize, config: &ShareConfig) -> Result<Fs, Error> {
        let fs = passthrough::open_share(index, config)?;
        let mut cfg = [0u8; TAG_LEN + 4];
        let tag = config.tag.as_bytes();
        cfg[..tag.len().min(TAG_LEN)].copy_from_slice(&tag[..tag.len().min(TAG_LEN)]);
        cfg[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        Ok(Fs {
            server: Server::new(fs),
            serving: Serving::default(),
            config: cfg,
            tag: config.tag.clone(),
        })
    }

    /// The tag the guest mounts it by.
    pub fn tag(&self) -> &str {
        &self.tag
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
        self.serving.activate(activation, QUEUE_SIZES.len())
    }

    fn reset(&mut self) {
        self.serving.reset();
        self.server.reset();
    }

    fn process_queue(&mut self, index: usize) -> bool {
        self.serving.serve(index, BATCH, &mut self.server)
    }

    fn kind(&self) -> &'static str {
        "virtio-fs"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.serving.counters(self.server.fs())
    }

    fn release(&mut self) {
        self.reset();
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.serving.queue_states()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
