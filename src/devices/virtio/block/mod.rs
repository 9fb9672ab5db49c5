//! virtio-blk: a raw image file as a disk (virtio 1.2, section 5.2).
//!
//! - [`request`]: parsing a descriptor chain into a request, with every guest-controlled
//!   value checked;
//! - [`backend`]: the image file and the I/O on it;
//! - this file: the device — features, configuration space, serving the request queue.
//!
//! Requests are served on the event-loop thread when the guest notifies the queue (through an
//! ioeventfd, so the vCPU does not even leave the guest for the device's code).

pub mod backend;
pub mod request;

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::backend::RawFile;
use self::request::{Request, RequestType, ID_LEN, SECTOR_SIZE, S_IOERR, S_OK, S_UNSUPP};
use super::{ActivateError, Activation, Interrupt, VirtioDevice, INT_USED_RING};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::config::DiskConfig;
use crate::error::Result;

/// The virtio device type of a block device.
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most chains served in one go before the event loop gets to run again.
const BATCH: usize = 4 * QUEUE_SIZE as usize;
/// Most sectors one discard or write-zeroes segment may cover (what the config space says).
const MAX_ZERO_SECTORS: u32 = u32::MAX >> 9;

/// A virtio-blk device.
pub struct Block {
    disk: RawFile,
    serial: [u8; ID_LEN],
    config: [u8; 60],
    active: Option<Active>,
    /// Requests served, for statistics.
    requests: u64,
}

struct Active {
    queue: Queue,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
}

impl Block {
    /// Opens disk number `index` as `config` describes it; errors name `disks[index]`.
    pub fn new(index: usize, config: &DiskConfig) -> Result<Block> {
        let disk = RawFile::open(format!("disks[{index}]"), &config.path, config.read_only)?;
        let mut serial = [0u8; ID_LEN];
        if let Some(s) = &config.serial {
            let n = s.len().min(ID_LEN);
            serial[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        let mut cfg = [0u8; 60];
        let mut put = |offset: usize, bytes: &[u8]| {
            cfg[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &disk.sectors().to_le_bytes()); // capacity
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(34, &1u16.to_le_bytes()); // num_queues
        put(36, &MAX_ZERO_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &1u32.to_le_bytes()); // max_discard_seg
        put(44, &8u32.to_le_bytes()); // discard_sector_alignment: 4 KiB
        put(48, &MAX_ZERO_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        Ok(Block {
            disk,
            serial,
            config: cfg,
            active: None,
            requests: 0,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Serves one request; returns the status and how many bytes went into the guest's
    /// buffers (not counting the status byte).
    fn execute(&self, mem: &GuestMemoryMmap, req: &Request) -> (u8, u32) {
        let len = req.data_len();
        let in_range = |sector: u64, bytes: u64| {
            sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(bytes))
                .is_some_and(|end| end <= self.disk.sectors() * SECTOR_SIZE)
        };
        let writes = matches!(
            req.kind,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
        );
        if writes && self.disk.read_only() {
            return (S_IOERR, 0);
        }
        match req.kind {
            RequestType::In | RequestType::Out => {
                if len % SECTOR_SIZE != 0 || !in_range(req.sector, len) {
                    return (S_IOERR, 0);
                }
                let offset = req.sector * SECTOR_SIZE;
                let (result, written) = if req.kind == RequestType::In {
                    (self.disk.read_into(mem, &req.data, offset), len as u32)
                } else {
                    (self.disk.write_from(mem, &req.data, offset), 0)
                };
                match result {
                    Ok(()) => (S_OK, written),
                    Err(_) => (S_IOERR, 0),
                }
            }
            RequestType::Flush => match self.disk.flush() {
                Ok(()) => (S_OK, 0),
                Err(_) => (S_IOERR, 0),
            },
            RequestType::GetId => {
                let mut left = ID_LEN;
                let mut done = 0u32;
                for &(addr, buf_len) in &req.data {
                    let n = (buf_len as usize).min(left);
                    if mem
                        .write_slice(&self.serial[ID_LEN - left..ID_LEN - left + n], addr)
                        .is_err()
                    {
                        return (S_IOERR, done);
                    }
                    left -= n;
                    done += n as u32;
                }
                (S_OK, done)
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                // One segment (max_*_seg is 1): {le64 sector, le32 num_sectors, le32 flags}.
                if len != u64::from(request::SEGMENT_LEN) {
                    return (S_UNSUPP, 0);
                }
                let mut seg = [0u8; 16];
                let Some(&(addr, _)) = req.data.first() else {
                    return (S_IOERR, 0);
                };
                // The one buffer may be split across descriptors: read it as one range.
                if read_buffers(mem, &req.data, &mut seg).is_err() {
                    let _ = addr;
                    return (S_IOERR, 0);
                }
                let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                let count = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                let bytes = u64::from(count) * SECTOR_SIZE;
                if count > MAX_ZERO_SECTORS || !in_range(sector, bytes) {
                    return (S_IOERR, 0);
                }
                // Discard allows no flags; write-zeroes only UNMAP.
                let allowed = if req.kind == RequestType::Discard {
                    0
                } else {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                };
                if flags & !allowed != 0 {
                    return (S_UNSUPP, 0);
                }
                let result = if req.kind == RequestType::Discard {
                    self.disk.discard(sector * SECTOR_SIZE, bytes)
                } else {
                    self.disk.write_zeroes(sector * SECTOR_SIZE, bytes)
                };
                match result {
                    Ok(()) => (S_OK, 0),
                    Err(_) => (S_IOERR, 0),
                }
            }
            RequestType::Unsupported(_) => (S_UNSUPP, 0),
        }
    }
}

/// Copies the start of the guest buffers `bufs` into `out`.
fn read_buffers(
    mem: &GuestMemoryMmap,
    bufs: &[(GuestAddress, u32)],
    out: &mut [u8],
) -> std::result::Result<(), vm_memory::GuestMemoryError> {
    let mut filled = 0;
    for &(addr, len) in bufs {
        let n = (len as usize).min(out.len() - filled);
        mem.read_slice(&mut out[filled..filled + n], addr)?;
        filled += n;
        if filled == out.len() {
            break;
        }
    }
    Ok(())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.disk.read_only() {
            f |= bit(VIRTIO_BLK_F_RO);
        } else {
            f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> std::result::Result<(), ActivateError> {
        let Some(queue) = activation.queues.into_iter().next().filter(|q| q.ready()) else {
            return Err(ActivateError::QueueNotReady(0));
        };
        self.active = Some(Active {
            queue,
            mem: activation.mem,
            interrupt: activation.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        let Some(mut active) = self.active.take().filter(|_| index == 0) else {
            return false;
        };
        let more = self.serve(&mut active);
        self.active = Some(active);
        more
    }

    fn kind(&self) -> &'static str {
        "virtio-blk"
    }
}

impl Block {
    /// Serves available requests; returns whether some are left for another round.
    fn serve(&mut self, active: &mut Active) -> bool {
        let mem = active.mem.clone();
        let mem = mem.as_ref();
        let mut served = 0;
        let mut descriptors = Vec::with_capacity(QUEUE_SIZE as usize);
        let mut more = false;
        'outer: loop {
            if active.queue.disable_notification(mem).is_err() {
                active.interrupt.fail();
                return false;
            }
            loop {
                if served == BATCH {
                    more = true;
                    break 'outer;
                }
                let chain = match active.queue.iter(mem) {
                    Ok(mut it) => it.next(),
                    Err(_) => {
                        // The avail ring's index is off by more than the queue's size.
                        active.interrupt.fail();
                        return false;
                    }
                };
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                descriptors.clear();
                descriptors.extend(chain);
                let used = match Request::parse(&descriptors, mem) {
                    Ok(req) => {
                        let (status, written) = self.execute(mem, &req);
                        let _ = mem.write_obj(status, req.status);
                        written + 1
                    }
                    Err((_, Some(status))) => {
                        let _ = mem.write_obj(S_IOERR, status);
                        1
                    }
                    Err((_, None)) => 0,
                };
                self.requests += 1;
                served += 1;
                if active.queue.add_used(mem, head, used).is_err() {
                    active.interrupt.fail();
                    return false;
                }
            }
            match active.queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    active.interrupt.fail();
                    return false;
                }
            }
        }
        if served > 0 && active.queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.trigger(INT_USED_RING);
        }
        more
    }
}
