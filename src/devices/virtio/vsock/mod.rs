//! virtio-vsock: stream sockets between the guest and host programs (virtio 1.2, 5.10).
//!
//! - [`packet`]: the header, and reading/writing packets across a descriptor chain;
//! - [`unix`]: UNIX sockets with Firecracker's protocol (the listener, `CONNECT` lines);
//! - `conn.rs`: a connection's state and credit;
//! - `host.rs`: the host side — accepting host programs, their sockets' events, flushing
//!   guest data to them, handshake time-outs (the muxer);
//! - `queues.rs`: the guest side — packets from the transmit queue, packets and data into
//!   the receive queue;
//! - `handler.rs`: the event-loop handler;
//! - this file: the device (configuration, features, activation, reset, release).
//!
//! Everything runs on the event-loop thread: the device's own handler ([`VsockHandler`])
//! watches its queues, the listening socket and every connection's socket, and tells the
//! event loop which sockets to watch as connections come and go.
//!
//! Memory stays bounded whatever the guest or a host program does: data from the host is
//! read straight into the guest's receive buffers, only while the guest has buffers and
//! credit for it (otherwise the socket is simply not read); data from the guest that the
//! host program does not take at once is kept up to the credit this device advertises per
//! connection ([`CONN_BUF`]) — a guest that sends beyond it gets its connection reset. The
//! number of connections and of queued control packets is capped too.

mod conn;
mod handler;
mod host;
pub mod packet;
mod queues;
pub mod unix;

use self::conn::{Conn, State};
pub use handler::VsockHandler;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use self::packet::*;
use self::unix::Listener;
use super::{queue, ActivateError, Activation, Served, VirtioDevice};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::config::VsockConfig;

/// The virtio device type of a socket device.
pub const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Receive buffer this device advertises per connection: what a guest may send ahead.
pub const CONN_BUF: u32 = 256 << 10;
/// Most connections at once (fewer when the process may open few files: see
/// [`connection_cap`]).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most descriptor chains one call serves from one queue: a guest that keeps its avail
/// index ahead (with packets dropped early, or buffers too short to use) cannot hold the
/// event loop, so stopping, pausing and the other devices still get their turn.
const BATCH: usize = QUEUE_SIZE as usize;
/// Most host connections taken from the listening socket per wake-up.
const ACCEPT_BATCH: usize = 64;
/// How long a host program has to send its whole `CONNECT` line.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the listening socket is left alone after `accept` failed (out of file
/// descriptors, say): it stays readable, and retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest payload taken from or given to the guest in one packet.
const MAX_PAYLOAD: usize = 64 << 10;
/// Most control packets (requests, responses, resets, credit updates) waiting for receive
/// buffers; beyond that the device stops taking the guest's packets until the guest
/// makes room.
const MAX_PENDING: usize = 2 * MAX_CONNECTIONS;
/// How long a stopping VM keeps writing what its guest sent to host programs.
const RELEASE_FLUSH: Duration = Duration::from_secs(1);
/// Host-initiated connections get local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// `virtio_vsock_event.id` of a transport reset.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Event-loop tokens: the queues are 0..3, the listener 3, connections from 16.
const TOKEN_LISTENER: u32 = 3;
const TOKEN_TIMER: u32 = 4;
const TOKEN_CONN_BASE: u32 = 16;

/// A connection: `(host-side port, guest-side port)`.
type Key = (u32, u32);

/// A change to what the event loop watches, applied by [`VsockHandler`].
enum Watch {
    Set(RawFd, u32, EventSet),
    Forget(RawFd),
}

use super::ActiveQueues as Active;

/// A virtio-vsock device with its host side on UNIX sockets.
pub struct Vsock {
    cid: u64,
    config: [u8; 8],
    /// None once the VM has stopped ([`VirtioDevice::release`]).
    listener: Option<Listener>,
    uds: PathBuf,
    active: Option<Active>,
    conns: HashMap<Key, Conn>,
    tokens: HashMap<u32, Key>,
    next_token: u32,
    next_local_port: u32,
    /// Control packets for the guest: `(key, op, flags)`.
    pending: VecDeque<(Key, u16, u32)>,
    /// Connections that may have data for the guest, in turn.
    ready: VecDeque<Key>,
    watch: Vec<Watch>,
    /// Sockets of removed connections, closed after `watch` is applied.
    closing: Vec<UnixStream>,
    /// Connections the guest has closed, still writing what it sent before to the host
    /// program, by token (they count against `MAX_CONNECTIONS`).
    draining: HashMap<u32, Conn>,
    /// The transmit queue was left with packets because too many control packets wait for
    /// receive buffers.
    tx_stalled: bool,
    /// A queue was left with work after a full batch: the handler comes back to it.
    tx_more: bool,
    rx_more: bool,
    /// Most chains served from one queue per call ([`BATCH`]; smaller in tests).
    batch: usize,
    /// Most connections at once, for this process's file descriptor limit.
    max_connections: usize,
    /// The listening socket is not watched until then (`accept` failed).
    listener_paused_until: Option<Instant>,
}

/// How many connections one device may have: [`MAX_CONNECTIONS`], or a quarter of the
/// process's file descriptor limit if that is less (the guest's connections must not use up
/// the descriptors of the process the VMM lives in), and at least 16.
pub fn connection_cap() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass, nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft / 4).clamp(16, MAX_CONNECTIONS)
}

/// Why a vsock device cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its socket (`vsock.uds`) is refused or cannot be bound.
    #[error(transparent)]
    Socket(#[from] crate::refusal::HostError),
}

impl Vsock {
    /// A device for `config`: binds its UNIX socket.
    pub fn new(config: &VsockConfig) -> Result<Vsock, Error> {
        let listener = Listener::bind(&config.uds)?;
        let cid = u64::from(config.cid);
        Ok(Vsock {
            cid,
            config: cid.to_le_bytes(),
            uds: listener.path().into(),
            listener: Some(listener),
            active: None,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            next_token: TOKEN_CONN_BASE,
            next_local_port: FIRST_LOCAL_PORT,
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            watch: Vec::new(),
            closing: Vec::new(),
            draining: HashMap::new(),
            tx_stalled: false,
            tx_more: false,
            rx_more: false,
            batch: BATCH,
            max_connections: connection_cap(),
            listener_paused_until: None,
        })
    }

    /// The number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn features(&self) -> u64 {
        // EVENT_IDX: a guest streaming data notifies once per batch, not per packet (each
        // notification is a VM exit), and interrupts follow its used-event index.
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> std::result::Result<(), ActivateError> {
        self.active = Some(activation.queues_ready(EVQ)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        // Connections the guest already closed keep draining to their host programs: the
        // guest was told they were done (its RST), so what it sent must still arrive.
        let draining = std::mem::take(&mut self.draining);
        self.drop_connections();
        self.draining = draining;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            TXQ => {
                self.process_tx();
                self.process_rx();
            }
            RXQ => self.process_rx(),
            _ => {}
        }
        self.tx_more || self.rx_more
    }

    fn restored(&mut self) {
        // The connections the guest had lived in the old VMM's sockets: the guest is told
        // they are gone (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET), so it resets them and keeps
        // its listeners, as after a live migration.
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[EVQ];
        queue::serve(queue, EVQ, &mem, &active.interrupt, 1, |chain| {
            let bufs = GuestBufs::writable(chain);
            match bufs.write(mem.as_ref(), 0, &EVENT_TRANSPORT_RESET.to_le_bytes()) {
                Ok(_) => Served::Used(4),
                Err(_) => Served::Used(0),
            }
        });
        self.active = Some(active);
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| a.queues.iter().map(Queue::state).collect())
    }

    fn kind(&self) -> &'static str {
        "virtio-vsock"
    }

    fn release(&mut self) {
        // What the guest sent before it stopped still reaches the host programs (within a
        // bounded time: a program that reads nothing must not hold up the VM's end), then
        // they see their connections close, and the socket file goes.
        let deadline = std::time::Instant::now() + RELEASE_FLUSH;
        for c in self.conns.values_mut().chain(self.draining.values_mut()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if c.to_host.is_empty() || left.is_zero() {
                continue;
            }
            if c.stream.set_nonblocking(false).is_ok()
                && c.stream.set_write_timeout(Some(left)).is_ok()
            {
                let _ = c.stream.write_all(&c.to_host);
            }
        }
        self.drop_connections();
        self.closing.clear();
        self.listener = None;
    }

    fn subscriber(
        device: Arc<Mutex<Self>>,
        queue_events: Vec<EventFd>,
    ) -> Box<dyn MutEventSubscriber + Send> {
        Box::new(VsockHandler::new(device, queue_events))
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.drop_connections();
    }
}

#[cfg(test)]
mod tests;
