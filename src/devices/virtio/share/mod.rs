//! What the two file-sharing devices have in common: a host directory served to the guest
//! and confined to it ([`passthrough`], with [`readdir`]), and the serving of their queues,
//! where each chain is one request in the driver-readable buffers and the room for its reply
//! in the device-writable ones ([`Serving`]). The protocols differ — FUSE for virtio-fs
//! (`super::fs`), 9P2000.L for virtio-9p (`super::p9`) — and each is a [`Protocol`] on the
//! same [`passthrough::Passthrough`], so both keep the guest inside the share the same way.

pub mod passthrough;
pub mod readdir;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::bufs::GuestBufs;
use super::wire::Out;
use super::{queue, ActivateError, Activation, ActiveQueues, Served};
use crate::refusal::HostError;
use passthrough::{Passthrough, Res};

/// Why a share's device cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its directory (named `shares[i]`) is refused or cannot be opened.
    #[error(transparent)]
    Share(#[from] HostError),
}

/// A request's outcome, for the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Bytes written to the chain (the used length).
    pub used: u32,
    /// File bytes the guest read.
    pub read: u64,
    /// File bytes the guest wrote.
    pub written: u64,
}

/// What a protocol's operation answers: a body, or file data already in place in the reply
/// buffers (after the protocol's header and count), or no reply at all.
pub enum Answer {
    /// The reply's body, after its header.
    Body(Vec<u8>),
    /// `n` bytes of file data are in the writable buffers (READ, Tread).
    Data(usize),
    /// Nothing is answered (FUSE's FORGET and friends).
    Nothing,
}

/// The body built in `out`, as the answer.
pub fn ok(out: &mut Out) -> Res<Answer> {
    Ok(Answer::Body(std::mem::take(&mut out.0)))
}

/// An empty body, as the answer.
pub fn empty() -> Res<Answer> {
    Ok(Answer::Body(Vec::new()))
}

/// A request body's field, or EINVAL when the body is shorter than its fields.
pub fn need<T>(v: Option<T>) -> Res<T> {
    v.ok_or(libc::EINVAL)
}

/// A file-sharing protocol's server: one request in, one reply out.
pub trait Protocol {
    /// Serves the request in `readable`, replying into `writable`.
    fn handle(&mut self, mem: &GuestMemoryMmap, readable: &GuestBufs, writable: &GuestBufs)
        -> Done;
    /// Forgets everything the driver held (device reset).
    fn reset(&mut self);
    /// The file system served.
    fn fs(&self) -> &Passthrough;
}

/// A sharing device's queues once the driver has set them up, and its counters.
#[derive(Default)]
pub struct Serving {
    active: Option<ActiveQueues>,
    requests: u64,
    bytes_read: u64,
    bytes_written: u64,
}

impl Serving {
    /// Takes the driver's queues, the first `required` of which must be ready.
    pub fn activate(
        &mut self,
        activation: Activation,
        required: usize,
    ) -> Result<(), ActivateError> {
        self.active = Some(activation.queues_ready(required)?);
        Ok(())
    }

    /// Drops the queues (device reset).
    pub fn reset(&mut self) {
        self.active = None;
    }

    /// Serves at most `batch` requests of queue `index` with `server`; returns whether
    /// chains are left for another round.
    pub fn serve(&mut self, index: usize, batch: usize, server: &mut impl Protocol) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let Some(q) = active.queues.get_mut(index) else {
            return false;
        };
        let mem: Arc<GuestMemoryMmap> = active.mem.clone();
        let mem = mem.as_ref();
        let (requests, read, written) = (
            &mut self.requests,
            &mut self.bytes_read,
            &mut self.bytes_written,
        );
        let round = queue::serve(q, index, mem, &active.interrupt, batch, |chain| {
            let Some((readable, writable)) = GuestBufs::request(chain) else {
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

    /// The counters every sharing device reports, with `fs`'s inodes and open files.
    pub fn counters(&self, fs: &Passthrough) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", self.requests),
            ("bytes_read", self.bytes_read),
            ("bytes_written", self.bytes_written),
            ("inodes", fs.inodes() as u64),
            ("open_files", fs.open_handles() as u64),
        ]
    }

    /// The queues' states, once active.
    pub fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
    }
}
