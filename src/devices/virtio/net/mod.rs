//! virtio-net: an Ethernet interface for the guest (virtio 1.2, 5.1).
//!
//! - [`tap`]: a TAP device backend (frames and their virtio-net header straight between guest
//!   memory and the TAP, offloads passed through);
//! - [`passt`]: user-mode networking without root, through passt;
//! - this file: the device — features, configuration space, the receive and transmit queues,
//!   and its event-loop handler, which watches the queues and the backend's descriptor.
//!
//! Memory stays bounded: frames move straight between the backend and guest buffers (TAP),
//! or through one frame-sized buffer each way (passt); when the guest has no receive buffers
//! the backend is simply not read, and a frame that does not fit the guest's buffers, or a
//! transmit chain longer than the largest frame, is dropped as a NIC would.

pub mod passt;
pub mod tap;

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::bufs::GuestBufs;
use super::VIRTIO_F_VERSION_1;
use super::{ActivateError, Activation, Interrupt, VirtioDevice, INT_USED_RING};
use crate::config::{NetBackendConfig, NetConfig};
use crate::error::Result;

/// The virtio device type of a network device.
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-net header of virtio 1.x (`virtio_net_hdr_v1`, with `num_buffers`).
pub const HDR_LEN: usize = 12;
/// The largest frame with its header: a 64 KiB GSO frame.
const MAX_PACKET: usize = HDR_LEN + 65_550;
/// Most frames moved per event before the event loop gets to run again.
const BATCH: usize = 256;

const RXQ: usize = 0;
const TXQ: usize = 1;
const TOKEN_BACKEND: u32 = 2;

enum Backend {
    Tap(tap::Tap),
    Passt(passt::Passt),
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Backend::Tap(t) => t.as_raw_fd(),
            Backend::Passt(p) => p.as_raw_fd(),
        }
    }
}

struct Active {
    queues: Vec<Queue>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
}

/// Frames moved, for statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Frames the guest received.
    pub rx_frames: u64,
    /// Frames dropped (malformed, too large, no room, backend refused).
    pub dropped: u64,
}

/// A virtio-net device.
pub struct Net {
    backend: Backend,
    config: [u8; 10],
    offered: u64,
    active: Option<Active>,
    /// The backend may have frames for the guest (it is not watched meanwhile).
    rx_pending: bool,
    /// What the backend's descriptor is watched for, and the change to apply.
    interest: EventSet,
    watch: Option<EventSet>,
    /// A frame from passt that did not fit the guest's next buffers yet.
    held: Option<Vec<u8>>,
    counters: NetCounters,
}

impl Net {
    /// Opens the backend of network device `index`, configured by `config`.
    pub fn new(index: usize, config: &NetConfig) -> Result<Net> {
        let arg = format!("net[{index}]");
        let bit = |b: u32| 1u64 << b;
        let mut offered = VIRTIO_F_VERSION_1 | bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS);
        let backend = match &config.backend {
            NetBackendConfig::Tap { name } => {
                offered |= bit(VIRTIO_NET_F_CSUM)
                    | bit(VIRTIO_NET_F_GUEST_CSUM)
                    | bit(VIRTIO_NET_F_GUEST_TSO4)
                    | bit(VIRTIO_NET_F_GUEST_TSO6)
                    | bit(VIRTIO_NET_F_HOST_TSO4)
                    | bit(VIRTIO_NET_F_HOST_TSO6);
                Backend::Tap(tap::Tap::open(&arg, name, HDR_LEN)?)
            }
            NetBackendConfig::User { forward } => {
                Backend::Passt(passt::Passt::start(&arg, forward)?)
            }
        };
        let mut cfg = [0u8; 10];
        cfg[..6].copy_from_slice(&config.mac);
        cfg[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Net {
            backend,
            config: cfg,
            offered,
            active: None,
            rx_pending: true,
            interest: EventSet::IN,
            watch: None,
            held: None,
            counters: NetCounters::default(),
        })
    }

    /// Frames moved so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    fn set_interest(&mut self, interest: EventSet) {
        if interest != self.interest {
            self.interest = interest;
            self.watch = Some(interest);
        }
    }

    /// Sends the guest's frames to the backend.
    fn process_tx(&mut self) -> bool {
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mem = active.mem.clone();
        let mut served = 0;
        let mut more = false;
        loop {
            if served == BATCH {
                more = true;
                break;
            }
            if let Backend::Passt(p) = &self.backend {
                if p.busy() {
                    break; // the socket is full: the rest waits in the ring
                }
            }
            let chain = match active.queues[TXQ].iter(mem.as_ref()) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    active.interrupt.fail();
                    break;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let mut readable = Vec::new();
            let mut bad = false;
            for d in chain {
                if d.is_write_only() {
                    bad = true;
                } else {
                    readable.push((d.addr(), d.len()));
                }
            }
            let bufs = GuestBufs::new(readable);
            if bad || bufs.len() <= HDR_LEN || bufs.len() > MAX_PACKET || !self.send(&mem, &bufs) {
                self.counters.dropped += 1;
            } else {
                self.counters.tx_frames += 1;
            }
            served += 1;
            if active.queues[TXQ].add_used(mem.as_ref(), head, 0).is_err() {
                active.interrupt.fail();
                break;
            }
        }
        if served > 0
            && active.queues[TXQ]
                .needs_notification(mem.as_ref())
                .unwrap_or(true)
        {
            active.interrupt.trigger(INT_USED_RING);
        }
        if let Backend::Passt(p) = &self.backend {
            let want_out = p.busy();
            let mut interest = self.interest;
            interest.set(EventSet::OUT, want_out);
            self.set_interest(interest);
        }
        self.active = Some(active);
        more
    }

    /// One frame (header + Ethernet frame in `bufs`) to the backend; false if dropped.
    fn send(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) -> bool {
        match &mut self.backend {
            Backend::Tap(tap) => {
                let Ok(iovecs) = bufs.iovecs(mem, 0, bufs.len()) else {
                    return false;
                };
                // SAFETY: the iovecs point into guest memory that `mem` keeps mapped, with
                // their lengths; writev only reads them.
                let n = unsafe {
                    libc::writev(
                        tap.as_raw_fd(),
                        iovecs.as_ptr(),
                        iovecs.len().min(1024) as libc::c_int,
                    )
                };
                n >= 0
            }
            Backend::Passt(p) => {
                // passt takes plain frames with full checksums (no offloads are offered
                // with it), so the header is dropped.
                let mut frame = vec![0u8; bufs.len() - HDR_LEN];
                if bufs.read(mem, HDR_LEN, &mut frame).is_err() {
                    return false;
                }
                p.send(&frame).unwrap_or(false)
            }
        }
    }

    /// Moves frames from the backend into the guest's receive buffers.
    fn process_rx(&mut self) -> bool {
        if !self.rx_pending {
            return false;
        }
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mem = active.mem.clone();
        let mut served = 0;
        let mut more = false;
        loop {
            if served == BATCH {
                more = true;
                break;
            }
            let chain = match active.queues[RXQ].iter(mem.as_ref()) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    active.interrupt.fail();
                    break;
                }
            };
            let Some(chain) = chain else {
                // No buffers: stop reading the backend until the guest gives some.
                let interest = self.interest & EventSet::OUT;
                self.set_interest(interest);
                break;
            };
            let head = chain.head_index();
            let writable: Vec<_> = chain
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr(), d.len()))
                .collect();
            let bufs = GuestBufs::new(writable);
            match self.recv(&mem, &bufs) {
                Ok(Some(len)) => {
                    served += 1;
                    if active.queues[RXQ]
                        .add_used(mem.as_ref(), head, len as u32)
                        .is_err()
                    {
                        active.interrupt.fail();
                        break;
                    }
                }
                Ok(None) => {
                    // Nothing waiting: give the buffer back and watch the backend again.
                    let q = &mut active.queues[RXQ];
                    q.set_next_avail(q.next_avail().wrapping_sub(1));
                    self.rx_pending = false;
                    let interest = self.interest | EventSet::IN;
                    self.set_interest(interest);
                    break;
                }
                Err(_) => {
                    // A frame that does not fit is dropped; the buffer goes back empty.
                    self.counters.dropped += 1;
                    served += 1;
                    if active.queues[RXQ].add_used(mem.as_ref(), head, 0).is_err() {
                        active.interrupt.fail();
                        break;
                    }
                }
            }
        }
        if served > 0
            && active.queues[RXQ]
                .needs_notification(mem.as_ref())
                .unwrap_or(true)
        {
            active.interrupt.trigger(INT_USED_RING);
        }
        self.active = Some(active);
        more
    }

    /// One frame into `bufs`: its length with the header, None when the backend has none,
    /// Err when it does not fit (dropped).
    fn recv(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) -> io::Result<Option<usize>> {
        if bufs.len() < HDR_LEN {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let num_buffers = 1u16.to_le_bytes();
        match &mut self.backend {
            Backend::Tap(tap) => {
                let iovecs = bufs
                    .iovecs(mem, 0, bufs.len())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                // SAFETY: the iovecs point into guest memory that `mem` keeps mapped, with
                // their lengths; readv writes at most that much.
                let n = unsafe {
                    libc::readv(
                        tap.as_raw_fd(),
                        iovecs.as_ptr(),
                        iovecs.len().min(1024) as libc::c_int,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    return if e.kind() == io::ErrorKind::WouldBlock {
                        Ok(None)
                    } else {
                        Err(e)
                    };
                }
                // The TAP writes the 10-byte legacy header; num_buffers is ours.
                bufs.write(mem, 10, &num_buffers)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                self.counters.rx_frames += 1;
                Ok(Some(n as usize))
            }
            Backend::Passt(p) => {
                let frame = match self.held.take() {
                    Some(f) => f,
                    None => match p.recv()? {
                        Some(f) => f,
                        None => return Ok(None),
                    },
                };
                if frame.len() + HDR_LEN > bufs.len() {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                }
                let mut hdr = [0u8; HDR_LEN];
                hdr[10..12].copy_from_slice(&num_buffers);
                bufs.write(mem, 0, &hdr)
                    .and_then(|()| bufs.write(mem, HDR_LEN, &frame))
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                self.counters.rx_frames += 1;
                Ok(Some(HDR_LEN + frame.len()))
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
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
        for (i, q) in activation.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        if let Backend::Tap(tap) = &self.backend {
            // Offloads only as far as the guest takes them: otherwise the TAP would hand it
            // frames with partial checksums or 64 KiB segments it cannot handle.
            let f = activation.features;
            let has = |b: u32| f & (1u64 << b) != 0;
            let _ = tap.set_offloads(
                has(VIRTIO_NET_F_GUEST_CSUM),
                has(VIRTIO_NET_F_GUEST_TSO4),
                has(VIRTIO_NET_F_GUEST_TSO6),
            );
        }
        self.active = Some(Active {
            queues: activation.queues,
            mem: activation.mem,
            interrupt: activation.interrupt,
        });
        self.rx_pending = true;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.held = None;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            TXQ => self.process_tx(),
            RXQ => {
                self.rx_pending = true;
                self.process_rx()
            }
            _ => false,
        }
    }

    fn kind(&self) -> &'static str {
        "virtio-net"
    }

    fn subscriber(
        device: Arc<Mutex<Self>>,
        queue_events: Vec<EventFd>,
    ) -> Box<dyn MutEventSubscriber + Send> {
        Box::new(NetHandler {
            device,
            queue_events,
        })
    }
}

/// The network device's part of the event loop: its queues and its backend.
pub struct NetHandler {
    device: Arc<Mutex<Net>>,
    queue_events: Vec<EventFd>,
}

impl MutEventSubscriber for NetHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        let mut dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let mut again = None;
        match token {
            TOKEN_BACKEND => {
                let set = events.event_set();
                if set.contains(EventSet::OUT) {
                    if let Backend::Passt(p) = &mut dev.backend {
                        let _ = p.flush();
                    }
                    if dev.process_tx() {
                        again = Some(TXQ);
                    }
                }
                if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                    dev.rx_pending = true;
                    // Not watched while frames wait for buffers (level-triggered).
                    let interest = dev.interest & EventSet::OUT;
                    dev.set_interest(interest);
                    if dev.process_rx() {
                        again = Some(RXQ);
                    }
                }
                if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    // The backend went away (passt died): stop watching it for good.
                    dev.interest = EventSet::empty();
                    dev.watch = None;
                    let _ = ops.remove(Events::empty_raw(dev.backend.as_raw_fd()));
                    return;
                }
            }
            t => {
                if let Some(event) = self.queue_events.get(t as usize) {
                    let _ = event.read();
                }
                if dev.process_queue(t as usize) {
                    again = Some(t as usize);
                }
            }
        }
        if let Some(q) = again {
            if let Some(event) = self.queue_events.get(q) {
                let _ = event.write(1);
            }
        }
        if let Some(set) = dev.watch.take() {
            let fd = dev.backend.as_raw_fd();
            let _ = ops.modify(Events::with_data_raw(fd, TOKEN_BACKEND, set));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, e) in self.queue_events.iter().enumerate() {
            let _ = ops.add(Events::with_data(e, i as u32, EventSet::IN));
        }
        let dev = self.device.lock().unwrap_or_else(|e| e.into_inner());
        let _ = ops.add(Events::with_data_raw(
            dev.backend.as_raw_fd(),
            TOKEN_BACKEND,
            dev.interest,
        ));
    }
}
