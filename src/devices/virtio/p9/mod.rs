//! virtio-9p (the device QEMU's `-virtfs` made; virtio 1.2 has no section for it, Linux's
//! `net/9p/trans_virtio.c` is its driver): a host directory the guest mounts with
//! `mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt`, served in this process by a
//! 9P2000.L server of our own ([`server`]) on the same confined passthrough as virtio-fs.
//!
//! It exists for kernels without virtio-fs: `make defconfig kvm_guest.config` builds
//! `CONFIG_NET_9P_VIRTIO` and `CONFIG_9P_FS` in, and no `CONFIG_VIRTIO_FS`.
//!
//! One queue; each chain is one request, its reply in the chain's device-writable buffers.
//! The configuration space is the tag (`tag_len[2] tag[tag_len]`), offered with
//! `VIRTIO_9P_MOUNT_TAG`. A round serves at most [`BATCH`] requests.
//!
//! Why not the `p9` crate (crosvm's server): it reads requests from and writes replies to
//! `std::io` streams, so every Tread and Twrite would be copied through a buffer of its own
//! instead of going between the host file and guest memory; its passthrough opens paths
//! relative to fids with plain `openat`, where ours must never leave the share; and its
//! releases lag crosvm's tree. The messages Linux sends are few ([`protocol`]), and the
//! part that must be right — confinement — is the passthrough virtio-fs already uses.

pub mod protocol;
pub mod server;

use super::share::{passthrough, Protocol, Serving};
use super::{ActivateError, Activation, VirtioDevice};
use crate::config::ShareConfig;

use server::Server;

/// The virtio device type of a 9P transport.
pub const DEVICE_TYPE: u32 = 9;
/// `VIRTIO_9P_MOUNT_TAG`: the configuration space holds the tag.
pub const VIRTIO_9P_MOUNT_TAG: u64 = 1;
/// The queue's size (the Linux driver's scatter lists have 128 entries).
pub const QUEUE_SIZE: u16 = 128;
/// The most requests served per round.
pub const BATCH: usize = 64;

pub use super::share::Error;

/// The device.
pub struct P9 {
    server: Server,
    serving: Serving,
    /// `tag_len[2] tag[tag_len]`.
    config: Vec<u8>,
}

impl P9 {
    /// Share number `index` as `config` describes it; errors name `shares[index]`.
    pub fn new(index: usize, config: &ShareConfig) -> Result<P9, Error> {
        let fs = passthrough::open_share(index, config)?;
        let tag = config.tag.as_bytes();
        let mut cfg = (tag.len() as u16).to_le_bytes().to_vec();
        cfg.extend_from_slice(tag);
        Ok(P9 {
            server: Server::new(fs),
            serving: Serving::default(),
            config: cfg,
        })
    }
}

impl VirtioDevice for P9 {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | super::VIRTIO_RING_F_EVENT_IDX | VIRTIO_9P_MOUNT_TAG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.serving.activate(activation, 1)
    }

    fn reset(&mut self) {
        self.serving.reset();
        self.server.reset();
    }

    fn process_queue(&mut self, index: usize) -> bool {
        self.serving.serve(index, BATCH, &mut self.server)
    }

    fn kind(&self) -> &'static str {
        "virtio-9p"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = self.serving.counters(self.server.fs());
        c.push(("fids", self.server.fids() as u64));
        c
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
