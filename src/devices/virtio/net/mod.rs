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
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::bufs::GuestBufs;
use super::{queue, ActivateError, Activation, Round, Served, VirtioDevice};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::config::{NetBackendConfig, NetConfig};
use crate::sync::Locked;

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

use super::ActiveQueues as Active;

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

/// Why a network device cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its TAP (named `net[i].tap`) is refused or cannot be opened.
    #[error(transparent)]
    Tap(crate::refusal::HostError),
    /// passt (for `net[i].user`) cannot be started.
    #[error(transparent)]
    Passt(crate::refusal::HostError),
}

/// A virtio-net device.
pub struct Net {
    /// None once the VM has stopped ([`VirtioDevice::release`]) or the backend failed.
    backend: Option<Backend>,
    config: [u8; 10],
    offered: u64,
    /// The features the guest accepted.
    acked: u64,
    active: Option<Active>,
    /// The backend may have frames for the guest (it is not watched meanwhile).
    rx_pending: bool,
    /// What the backend's descriptor is watched for, and the change to apply.
    interest: EventSet,
    watch: Option<EventSet>,
    /// A frame from passt that did not fit the guest's next buffers yet.
    held: Option<Vec<u8>>,
    /// The backend failed (or was released): its descriptor must be unwatched.
    backend_gone: bool,
    counters: NetCounters,
}

impl Net {
    /// Opens the backend of network device `index`, configured by `config`.
    pub fn new(index: usize, config: &NetConfig) -> Result<Net, Error> {
        let arg = format!("net[{index}]");
        let bit = |b: u32| 1u64 << b;
        // EVENT_IDX: notifications and interrupts once per batch rather than per frame.
        let mut offered = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS);
        let backend = match &config.backend {
            NetBackendConfig::Tap { name } => {
                offered |= bit(VIRTIO_NET_F_CSUM)
                    | bit(VIRTIO_NET_F_GUEST_CSUM)
                    | bit(VIRTIO_NET_F_GUEST_TSO4)
                    | bit(VIRTIO_NET_F_GUEST_TSO6)
                    | bit(VIRTIO_NET_F_HOST_TSO4)
                    | bit(VIRTIO_NET_F_HOST_TSO6);
                Backend::Tap(tap::Tap::open(&arg, name, HDR_LEN).map_err(Error::Tap)?)
            }
            NetBackendConfig::User { forward } => {
                Backend::Passt(passt::Passt::start(&arg, forward).map_err(Error::Passt)?)
            }
        };
        let mut cfg = [0u8; 10];
        cfg[..6].copy_from_slice(&config.mac);
        cfg[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Net {
            backend: Some(backend),
            config: cfg,
            offered,
            acked: 0,
            active: None,
            rx_pending: true,
            interest: EventSet::IN,
            watch: None,
            held: None,
            backend_gone: false,
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

    /// Sends the guest's frames to the backend; returns whether some are left for another
    /// round. Whatever happened (even with no queue, after a reset), the backend socket is
    /// then watched for room exactly while passt has a frame waiting: a stale interest in
    /// EPOLLOUT on a writable socket would wake the loop for ever.
    fn process_tx(&mut self) -> bool {
        let more = self.serve_tx();
        if let Some(Backend::Passt(p)) = &self.backend {
            let want_out = p.busy();
            let mut interest = self.interest;
            interest.set(EventSet::OUT, want_out);
            self.set_interest(interest);
        }
        more
    }

    fn serve_tx(&mut self) -> bool {
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[TXQ];
        let round = queue::serve(queue, TXQ, &mem, &active.interrupt, BATCH, |chain| {
            if let Some(Backend::Passt(p)) = &self.backend {
                if p.busy() {
                    return Served::Return; // the socket is full: the rest waits in the ring
                }
            }
            let sent = GuestBufs::readable(chain).is_some_and(|bufs| {
                bufs.len() > HDR_LEN && bufs.len() <= MAX_PACKET && self.send(&mem, &bufs)
            });
            if sent {
                self.counters.tx_frames += 1;
            } else {
                self.counters.dropped += 1;
            }
            Served::Used(0)
        });
        self.active = Some(active);
        round.more()
    }

    /// One frame (header + Ethernet frame in `bufs`) to the backend; false if dropped.
    fn send(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) -> bool {
        let mut hdr = [0u8; HDR_LEN];
        if bufs.read(mem, 0, &mut hdr).is_err() || !self.header_allowed(&hdr) {
            return false;
        }
        match &mut self.backend {
            Some(Backend::Tap(tap)) => {
                // The header goes from our checked copy, the frame straight from the guest.
                let Ok(frame) = bufs.iovecs(mem, HDR_LEN, bufs.len() - HDR_LEN) else {
                    return false;
                };
                let mut iovecs = Vec::with_capacity(frame.len() + 1);
                iovecs.push(libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: HDR_LEN,
                });
                iovecs.extend(frame);
                // SAFETY: the first iovec is `hdr` (alive for the call), the others point into
                // guest memory that `mem` keeps mapped, each with its length; writev only
                // reads them.
                let n = unsafe {
                    libc::writev(
                        tap.as_raw_fd(),
                        iovecs.as_ptr(),
                        iovecs.len().min(1024) as libc::c_int,
                    )
                };
                n >= 0
            }
            Some(Backend::Passt(p)) => {
                // passt takes plain frames with full checksums (no offloads are offered
                // with it), so the header is dropped.
                let mut frame = vec![0u8; bufs.len() - HDR_LEN];
                if bufs.read(mem, HDR_LEN, &mut frame).is_err() {
                    return false;
                }
                p.send(&frame).unwrap_or(false)
            }
            None => false,
        }
    }

    /// Whether a transmit header asks only for offloads the guest negotiated: a frame that
    /// needs a checksum or segmentation the device did not agree to do is dropped rather
    /// than handed to the host half-made.
    fn header_allowed(&self, hdr: &[u8; HDR_LEN]) -> bool {
        let has = |b: u32| self.acked & (1u64 << b) != 0;
        let needs_csum = hdr[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0;
        let gso_ok = match u32::from(hdr[1]) {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
            _ => false,
        };
        (!needs_csum || has(VIRTIO_NET_F_CSUM)) && gso_ok
    }

    /// The smallest receive buffer a frame is guaranteed to fit: a whole 64 KiB segment when
    /// the guest takes TSO, else a (VLAN-tagged) 1500-byte frame. A shorter buffer is handed
    /// back empty rather than given a cut-off frame.
    fn min_rx(&self) -> usize {
        let big = [VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]
            .iter()
            .any(|&b| self.acked & (1u64 << b) != 0);
        HDR_LEN + if big { 65_550 } else { 1_518 }
    }

    /// Moves frames from the backend into the guest's receive buffers.
    fn process_rx(&mut self) -> bool {
        if !self.rx_pending || self.backend.is_none() {
            return false;
        }
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[RXQ];
        let round = queue::serve(queue, RXQ, &mem, &active.interrupt, BATCH, |chain| {
            let bufs = GuestBufs::writable(chain);
            match self.recv(&mem, &bufs) {
                Rx::Frame(len) => Served::Used(len as u32),
                Rx::Empty => Served::Used(0),
                Rx::Nothing | Rx::Gone => {
                    // Give the buffer back; watch the backend again, unless it is gone.
                    self.rx_pending = false;
                    if self.backend.is_some() {
                        let interest = self.interest | EventSet::IN;
                        self.set_interest(interest);
                    }
                    Served::Return
                }
            }
        });
        if round == Round::Drained {
            // No buffers: stop reading the backend until the guest gives some (it was asked
            // to notify then).
            let interest = self.interest & EventSet::OUT;
            self.set_interest(interest);
        }
        self.active = Some(active);
        round.more()
    }

    /// One frame into `bufs`.
    fn recv(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) -> Rx {
        if bufs.len() < self.min_rx() {
            return Rx::Empty;
        }
        // The header the guest gets: flags only with GUEST_CSUM (the TAP may set DATA_VALID),
        // one buffer.
        let clear_flags = self.acked & (1u64 << VIRTIO_NET_F_GUEST_CSUM) == 0;
        match &mut self.backend {
            Some(Backend::Tap(tap)) => {
                let Ok(iovecs) = bufs.iovecs(mem, 0, bufs.len()) else {
                    return Rx::Empty; // not guest memory: nothing read, the frame waits
                };
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
                    if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                        return Rx::Nothing;
                    }
                    // The TAP is gone (deleted under us): stop using it.
                    self.backend = None;
                    self.backend_gone = true;
                    return Rx::Gone;
                }
                // The TAP writes the 10-byte legacy header; num_buffers is ours.
                let _ = bufs.write(mem, 10, &1u16.to_le_bytes());
                if clear_flags {
                    let _ = bufs.write(mem, 0, &[0]);
                }
                self.counters.rx_frames += 1;
                Rx::Frame(n as usize)
            }
            Some(Backend::Passt(p)) => {
                let frame = match self.held.take() {
                    Some(f) => f,
                    None => match p.recv() {
                        Ok(Some(f)) => f,
                        Ok(None) => return Rx::Nothing,
                        Err(_) => {
                            self.backend = None;
                            self.backend_gone = true;
                            return Rx::Gone;
                        }
                    },
                };
                if frame.len() + HDR_LEN > bufs.len() {
                    self.held = Some(frame);
                    return Rx::Empty;
                }
                let mut hdr = [0u8; HDR_LEN];
                hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
                if bufs
                    .write(mem, 0, &hdr)
                    .and_then(|()| bufs.write(mem, HDR_LEN, &frame))
                    .is_err()
                {
                    self.held = Some(frame);
                    return Rx::Empty;
                }
                self.counters.rx_frames += 1;
                Rx::Frame(HDR_LEN + frame.len())
            }
            None => Rx::Gone,
        }
    }
}

/// What became of a receive buffer.
enum Rx {
    /// A frame of this length (with its header) is in it.
    Frame(usize),
    /// Returned empty: too small or not in guest memory; the frame waits for the next.
    Empty,
    /// No frame waiting: the buffer goes back to the ring.
    Nothing,
    /// The backend is gone: the buffer goes back to the ring.
    Gone,
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
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> std::result::Result<(), ActivateError> {
        self.acked = activation.features;
        if let Some(Backend::Tap(tap)) = &self.backend {
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
        self.active = Some(activation.queues_ready(2)?);
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

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(Queue::state).collect())
    }

    fn kind(&self) -> &'static str {
        "virtio-net"
    }

    fn child_pid(&self) -> Option<u32> {
        match &self.backend {
            Some(Backend::Passt(p)) => Some(p.pid()),
            _ => None,
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("tx_frames", self.counters.tx_frames),
            ("rx_frames", self.counters.rx_frames),
            ("dropped", self.counters.dropped),
        ]
    }

    fn release(&mut self) {
        // Closes the TAP (so another VM may open it) or stops passt.
        self.backend = None;
        self.held = None;
    }

    fn subscriber(
        device: Arc<Mutex<Self>>,
        queue_events: Vec<EventFd>,
    ) -> Box<dyn MutEventSubscriber + Send> {
        let backend_fd = device
            .locked()
            .backend
            .as_ref()
            .map_or(-1, |b| b.as_raw_fd());
        Box::new(NetHandler {
            device,
            queue_events,
            backend_fd,
        })
    }
}

/// The network device's part of the event loop: its queues and its backend.
pub struct NetHandler {
    device: Arc<Mutex<Net>>,
    queue_events: Vec<EventFd>,
    /// The backend's descriptor, as registered.
    backend_fd: RawFd,
}

impl MutEventSubscriber for NetHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        let mut dev = self.device.locked();
        let mut again = None;
        match token {
            TOKEN_BACKEND => {
                let set = events.event_set();
                if set.contains(EventSet::OUT) {
                    if let Some(Backend::Passt(p)) = &mut dev.backend {
                        if p.flush().is_err() {
                            dev.backend = None;
                            dev.backend_gone = true;
                        }
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
                    dev.backend_gone = true;
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
        if dev.backend_gone {
            // The backend went away (passt died, the TAP was deleted): stop watching it for
            // good. Its fd was registered under this number; removing by number is all epoll
            // needs, whether or not it is still open.
            dev.backend_gone = false;
            dev.watch = None;
            let _ = ops.remove(Events::empty_raw(self.backend_fd));
            return;
        }
        if let Some(set) = dev.watch.take() {
            let _ = ops.modify(Events::with_data_raw(self.backend_fd, TOKEN_BACKEND, set));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, e) in self.queue_events.iter().enumerate() {
            let _ = ops.add(Events::with_data(e, i as u32, EventSet::IN));
        }
        let dev = self.device.locked();
        let _ = ops.add(Events::with_data_raw(
            self.backend_fd,
            TOKEN_BACKEND,
            dev.interest,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetBackendConfig, NetConfig};
    use vm_memory::{Bytes, GuestAddress};

    const SIZE: u16 = 16;
    use crate::devices::virtio::testing::ring;

    fn signal(pid: u32, sig: libc::c_int) {
        // SAFETY: a signal to the passt process this test started.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
    }

    fn passt_busy(net: &Net) -> bool {
        matches!(&net.backend, Some(Backend::Passt(p)) if p.busy())
    }

    #[test]
    fn passts_socket_is_not_watched_for_room_once_the_device_is_reset() {
        // passt (Debian's, which the README's prerequisites install) is stopped, so its socket
        // fills and a frame waits; the guest resets the device; passt goes on and drains the
        // socket. The handler flushes on EPOLLOUT and calls process_tx: with no queue any more
        // it used to return before updating the interest, leaving EPOLLOUT watched on a
        // writable socket, which woke the event loop for ever.
        let config = NetConfig {
            backend: NetBackendConfig::User { forward: vec![] },
            mac: [0x06, 0, 0xac, 0x10, 0, 0x02],
        };
        let mut net = Net::new(0, &config).expect("passt (Debian: apt-get install passt)");
        let pid = net.child_pid().expect("passt's pid");
        signal(pid, libc::SIGSTOP);
        let mem = crate::devices::virtio::testing::activate(&mut net, SIZE);
        let (d, a, _) = ring(TXQ);
        let frame_len = (HDR_LEN + 1500) as u32;
        let mut avail = 0u16;
        for _ in 0..10_000 {
            if passt_busy(&net) {
                break;
            }
            let slot = avail % SIZE;
            let addr = 0x40000 + 0x1000 * u64::from(slot);
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&frame_len.to_le_bytes());
            mem.write_slice(&desc, GuestAddress(d + 16 * u64::from(slot)))
                .unwrap();
            mem.write_obj(slot, GuestAddress(a + 4 + 2 * u64::from(slot)))
                .unwrap();
            avail = avail.wrapping_add(1);
            mem.write_obj(avail, GuestAddress(a + 2)).unwrap();
            net.process_queue(TXQ);
        }
        assert!(passt_busy(&net), "passt's socket never filled");
        assert!(net.interest.contains(EventSet::OUT));
        net.reset();
        signal(pid, libc::SIGCONT);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while passt_busy(&net) && std::time::Instant::now() < deadline {
            if let Some(Backend::Passt(p)) = &mut net.backend {
                p.flush().expect("flush");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!passt_busy(&net), "passt never drained its socket");
        net.process_tx(); // what the handler does after a flush
        assert!(
            !net.interest.contains(EventSet::OUT),
            "EPOLLOUT stays watched on a writable socket"
        );
    }
}
