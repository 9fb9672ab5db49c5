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

use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::backend::RawFile;
use self::request::{Request, RequestType, ID_LEN, SECTOR_SIZE, S_IOERR, S_OK, S_UNSUPP};
use super::{queue, ActivateError, Activation, Served, VirtioDevice};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::config::DiskConfig;

/// The virtio device type of a block device.
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most chains served in one go before the event loop gets to run again.
const BATCH: usize = 4 * QUEUE_SIZE as usize;
/// Most bytes moved (read, written or zeroed) in one go: a batch is bounded by its work, not
/// only by its number of requests (1024 requests aliasing one huge buffer would otherwise hold
/// the event loop, and the device lock a pause waits for, for minutes).
const BATCH_BYTES: u64 = 64 << 20;
/// Most time one batch takes before the event loop gets to run again (checked between
/// requests).
const BATCH_TIME: Duration = Duration::from_millis(20);
/// Largest data segment (descriptor) of a request, as the config space's `size_max` says.
const MAX_SEGMENT: u32 = 1 << 20;
/// Most segments of a request, as `seg_max` says (the queue less header and status).
const MAX_SEGMENTS: u32 = QUEUE_SIZE as u32 - 2;
/// Most data bytes one request may carry: what `seg_max` × `size_max` lets a driver build.
/// A larger one is refused (`S_IOERR`), so one request is bounded too.
const MAX_REQUEST_BYTES: u64 = MAX_SEGMENTS as u64 * MAX_SEGMENT as u64;
/// Most sectors one discard segment may cover (what the config space says; a discard only
/// punches a hole, whatever its size).
const MAX_DISCARD_SECTORS: u32 = u32::MAX >> 9;
/// Most sectors one write-zeroes segment may cover: 64 MiB, since where the file system
/// cannot punch holes the zeroes are written.
const MAX_WRITE_ZEROES_SECTORS: u32 = (BATCH_BYTES / SECTOR_SIZE) as u32;

/// A virtio-blk device.
pub struct Block {
    disk: RawFile,
    serial: [u8; ID_LEN],
    config: [u8; 60],
    active: Option<Active>,
    /// Requests served, for statistics.
    requests: u64,
    /// Most data bytes per batch ([`BATCH_BYTES`]; smaller in tests).
    batch_bytes: u64,
}

use super::SingleQueue as Active;

/// Why a disk cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its image (named `disks[i]`) is refused or cannot be opened.
    #[error(transparent)]
    Image(#[from] crate::refusal::HostError),
}

impl Block {
    /// Opens disk number `index` as `config` describes it; errors name `disks[index]`.
    pub fn new(index: usize, config: &DiskConfig) -> Result<Block, Error> {
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
        put(8, &MAX_SEGMENT.to_le_bytes()); // size_max
        put(12, &MAX_SEGMENTS.to_le_bytes()); // seg_max
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(34, &1u16.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &1u32.to_le_bytes()); // max_discard_seg
        put(44, &8u32.to_le_bytes()); // discard_sector_alignment: 4 KiB
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        Ok(Block {
            disk,
            serial,
            config: cfg,
            active: None,
            requests: 0,
            batch_bytes: BATCH_BYTES,
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
        if len > MAX_REQUEST_BYTES {
            return (S_IOERR, 0);
        }
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
                // The segment may be split across descriptors.
                let mut seg = [0u8; 16];
                if read_buffers(mem, &req.data, &mut seg).is_err() {
                    return (S_IOERR, 0);
                }
                let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                let count = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                let bytes = u64::from(count) * SECTOR_SIZE;
                let max = if req.kind == RequestType::Discard {
                    MAX_DISCARD_SECTORS
                } else {
                    MAX_WRITE_ZEROES_SECTORS
                };
                if count > max || !in_range(sector, bytes) {
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
            | bit(VIRTIO_BLK_F_SIZE_MAX)
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
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.single_queue()?);
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

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| vec![a.queue.state()])
    }

    fn kind(&self) -> &'static str {
        "virtio-blk"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("requests", self.requests)]
    }
}

impl Block {
    /// Serves available requests; returns whether some are left for another round. A round
    /// ends after [`BATCH`] requests, `batch_bytes` of data or [`BATCH_TIME`].
    fn serve(&mut self, active: &mut Active) -> bool {
        let mem = active.mem.clone();
        let mem = mem.as_ref();
        let mut bytes = 0u64;
        let started = Instant::now();
        let mut descriptors = Vec::with_capacity(QUEUE_SIZE as usize);
        let round = queue::serve(
            &mut active.queue,
            0,
            mem,
            &active.interrupt,
            BATCH,
            |chain| {
                descriptors.clear();
                descriptors.extend(chain);
                let used = match Request::parse(&descriptors, mem) {
                    Ok(req) => {
                        bytes += req.data_len();
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
                if bytes >= self.batch_bytes || started.elapsed() >= BATCH_TIME {
                    Served::UsedLast(used)
                } else {
                    Served::Used(used)
                }
            },
        );
        round.more()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::Interrupt;
    use std::sync::Arc;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::Queue;
    use virtio_queue::QueueState;
    use vmm_sys_util::eventfd::EventFd;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const SIZE: u16 = 16;

    /// A disk image with sector `s` filled with byte `s`, removed when dropped.
    struct Image(std::path::PathBuf);
    impl Image {
        fn new(name: &str, sectors: u8) -> Image {
            let path = std::env::temp_dir().join(format!(
                "vmm-reference-blk-{}-{name}.img",
                std::process::id()
            ));
            let data: Vec<u8> = (0..sectors)
                .flat_map(|s| [s; SECTOR_SIZE as usize])
                .collect();
            std::fs::write(&path, data).unwrap();
            Image(path)
        }
    }
    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A driver in miniature: writes descriptors and the avail ring in guest memory.
    struct Driver {
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<Interrupt>,
        avail_idx: u16,
    }

    impl Driver {
        fn new(block: &mut Block) -> Driver {
            let mem =
                Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
            let interrupt = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
            let queue = Queue::try_from(QueueState {
                max_size: QUEUE_SIZE,
                size: SIZE,
                ready: true,
                desc_table: DESC,
                avail_ring: AVAIL,
                used_ring: USED,
                ..QueueState::default()
            })
            .unwrap();
            block
                .activate(Activation {
                    queues: vec![queue],
                    mem: mem.clone(),
                    interrupt: interrupt.clone(),
                    features: VIRTIO_F_VERSION_1,
                })
                .unwrap();
            Driver {
                mem,
                interrupt,
                avail_idx: 0,
            }
        }

        fn desc(&self, index: u16, addr: u64, len: u32, flags: u32, next: u16) {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(DESC + 16 * u64::from(index)))
                .unwrap();
        }

        fn header(&self, at: u64, kind: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(at)).unwrap();
        }

        /// A request: header at 0x10000, data buffers, status at 0x20000. Returns its head.
        fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32)], writes: bool) -> u16 {
            self.header(0x10000, kind, sector);
            self.mem.write_obj(0xffu8, GuestAddress(0x20000)).unwrap();
            let n = data.len() as u16 + 2;
            self.desc(0, 0x10000, 16, VRING_DESC_F_NEXT, 1);
            for (i, &(addr, len)) in data.iter().enumerate() {
                let flags = VRING_DESC_F_NEXT | if writes { VRING_DESC_F_WRITE } else { 0 };
                self.desc(i as u16 + 1, addr, len, flags, i as u16 + 2);
            }
            self.desc(n - 1, 0x20000, 1, VRING_DESC_F_WRITE, 0);
            self.publish(0);
            0
        }

        fn publish(&mut self, head: u16) {
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            self.mem
                .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
                .unwrap();
        }

        fn status(&self) -> u8 {
            self.mem.read_obj(GuestAddress(0x20000)).unwrap()
        }

        /// The used ring's index and its last element's (id, len).
        fn used(&self) -> (u16, u32, u32) {
            let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            let slot = USED + 4 + 8 * u64::from(idx.wrapping_sub(1) % SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(slot)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).unwrap();
            (idx, id, len)
        }
    }

    fn disk(image: &Image, read_only: bool) -> Block {
        let config = DiskConfig {
            path: image.0.clone(),
            read_only,
            serial: Some("serial-1".into()),
        };
        Block::new(0, &config).unwrap()
    }

    #[test]
    fn reads_scattered_sectors_and_signals_the_guest() {
        let image = Image::new("read", 8);
        let mut block = disk(&image, false);
        let mut drv = Driver::new(&mut block);
        drv.request(VIRTIO_BLK_T_IN, 2, &[(0x30000, 512), (0x40000, 1024)], true);
        assert!(!block.process_queue(0));
        assert_eq!(drv.status(), S_OK);
        assert_eq!(drv.used(), (1, 0, 1537));
        let mut buf = [0u8; 1024];
        drv.mem.read_slice(&mut buf, GuestAddress(0x40000)).unwrap();
        assert!(buf[..512].iter().all(|&b| b == 3) && buf[512..].iter().all(|&b| b == 4));
        assert_eq!(
            drv.interrupt.status() & crate::devices::virtio::INT_USED_RING,
            crate::devices::virtio::INT_USED_RING
        );
        assert_eq!(block.requests(), 1);
    }

    /// A sparse image of `bytes` (reads back zeroes), removed when dropped.
    fn sparse(name: &str, bytes: u64) -> Image {
        let image = Image::new(name, 0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image.0)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        image
    }

    #[test]
    fn a_batch_is_bounded_by_bytes_not_only_requests() {
        // Four 512 KiB reads into one buffer, with a 512 KiB budget: one request per call,
        // each call saying more is left, so the event loop (and a pause) gets in between.
        let image = sparse("budget", 4 << 20);
        let mut block = disk(&image, false);
        block.batch_bytes = 512 << 10;
        let mut drv = Driver::new(&mut block);
        drv.request(VIRTIO_BLK_T_IN, 0, &[(0x40000, 512 << 10)], true);
        for _ in 0..3 {
            drv.publish(0);
        }
        for round in 1..=4u16 {
            assert!(block.process_queue(0), "round {round}");
            assert_eq!(drv.used().0, round);
        }
        assert!(!block.process_queue(0));
        assert_eq!(block.requests(), 4);
    }

    #[test]
    fn a_request_larger_than_seg_max_times_size_max_is_refused() {
        // 255 descriptors of 1 MiB all aliasing one buffer, on a disk big enough for them:
        // more than the config space lets a driver build, refused before any I/O.
        let image = sparse("huge", 512 << 20);
        let block = disk(&image, false);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let req = Request {
            kind: RequestType::In,
            sector: 0,
            data: vec![(GuestAddress(0), MAX_SEGMENT); MAX_SEGMENTS as usize + 1],
            status: GuestAddress(MAX_SEGMENT as u64),
        };
        assert_eq!(block.execute(&mem, &req), (S_IOERR, 0));
        let at_limit = Request {
            data: vec![(GuestAddress(0), MAX_SEGMENT); 2],
            ..req
        };
        assert_eq!(block.execute(&mem, &at_limit), (S_OK, 2 * MAX_SEGMENT));
        let mut cfg = [0u8; 8];
        block.read_config(8, &mut cfg);
        assert_eq!(cfg[..4], MAX_SEGMENT.to_le_bytes()); // size_max
        assert_eq!(cfg[4..], MAX_SEGMENTS.to_le_bytes()); // seg_max
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_SIZE_MAX), 0);
    }

    #[test]
    fn writes_flushes_zeroes_and_answers_get_id() {
        let image = Image::new("write", 8);
        let mut block = disk(&image, false);
        let mut drv = Driver::new(&mut block);
        drv.mem
            .write_slice(&[0xab; 512], GuestAddress(0x30000))
            .unwrap();
        drv.request(VIRTIO_BLK_T_OUT, 5, &[(0x30000, 512)], false);
        block.process_queue(0);
        assert_eq!((drv.status(), drv.used().2), (S_OK, 1));
        drv.request(VIRTIO_BLK_T_FLUSH, 0, &[], false);
        block.process_queue(0);
        assert_eq!(drv.status(), S_OK);
        // Write-zeroes sectors 1..3 (one segment).
        let mut seg = [0u8; 16];
        seg[..8].copy_from_slice(&1u64.to_le_bytes());
        seg[8..12].copy_from_slice(&2u32.to_le_bytes());
        drv.mem.write_slice(&seg, GuestAddress(0x50000)).unwrap();
        drv.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(0x50000, 16)], false);
        block.process_queue(0);
        assert_eq!(drv.status(), S_OK);
        drv.request(VIRTIO_BLK_T_GET_ID, 0, &[(0x60000, 20)], true);
        block.process_queue(0);
        assert_eq!((drv.status(), drv.used().2), (S_OK, 21));
        let mut id = [0u8; 20];
        drv.mem.read_slice(&mut id, GuestAddress(0x60000)).unwrap();
        assert_eq!(&id[..9], b"serial-1\0");
        let data = std::fs::read(&image.0).unwrap();
        assert!(data[5 * 512..6 * 512].iter().all(|&b| b == 0xab));
        assert!(data[512..3 * 512].iter().all(|&b| b == 0));
        assert!(data[3 * 512..4 * 512].iter().all(|&b| b == 3));
    }

    #[test]
    fn read_only_disks_fail_writes_and_offer_ro() {
        let image = Image::new("ro", 4);
        let mut block = disk(&image, true);
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(block.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
        let mut drv = Driver::new(&mut block);
        drv.request(VIRTIO_BLK_T_OUT, 0, &[(0x30000, 512)], false);
        block.process_queue(0);
        assert_eq!(drv.status(), S_IOERR);
        assert_eq!(std::fs::read(&image.0).unwrap()[0], 0);
    }

    #[test]
    fn hostile_requests_get_errors_and_the_device_survives() {
        let image = Image::new("bad", 4);
        let mut block = disk(&image, false);
        let mut drv = Driver::new(&mut block);
        // Past the end; not a whole sector; outside guest memory; the wrong direction.
        for (sector, data, writes) in [
            (4u64, (0x30000u64, 512u32), true),
            (u64::MAX / 256, (0x30000, 512), true),
            (0, (0x30000, 100), true),
            (0, (0x7f00_0000_0000, 512), true),
            (0, (0xff000, 0x2000), true),
            (0, (0x30000, 512), false),
        ] {
            drv.request(VIRTIO_BLK_T_IN, sector, &[data], writes);
            block.process_queue(0);
            assert_eq!(drv.status(), S_IOERR, "sector {sector} {data:x?}");
            assert_eq!(drv.used().2, 1);
        }
        drv.request(99, 0, &[], false);
        block.process_queue(0);
        assert_eq!(drv.status(), S_UNSUPP);
        // A chain that loops on itself: bounded by the queue size, no status byte.
        drv.desc(0, 0x10000, 16, VRING_DESC_F_NEXT, 0);
        drv.publish(0);
        block.process_queue(0);
        assert_eq!(drv.used().2, 0);
        assert!(!drv.interrupt.needs_reset());
        // Still serving.
        drv.request(VIRTIO_BLK_T_IN, 1, &[(0x30000, 512)], true);
        block.process_queue(0);
        assert_eq!(drv.status(), S_OK);
        // An avail index far ahead of the queue's size: the device needs a reset.
        drv.avail_idx = drv.avail_idx.wrapping_add(1000);
        drv.publish(0);
        block.process_queue(0);
        assert!(drv.interrupt.needs_reset());
    }
}
