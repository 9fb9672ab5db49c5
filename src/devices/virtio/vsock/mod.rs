//! virtio-vsock: stream sockets between the guest and host programs (virtio 1.2, 5.10).
//!
//! - [`packet`]: the header, and reading/writing packets across a descriptor chain;
//! - [`unix`]: the host side, UNIX sockets with Firecracker's protocol;
//! - this file: the device and its connections.
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

pub mod packet;
pub mod unix;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use self::packet::*;
use self::unix::Listener;
use super::{queue, ActivateError, Activation, Interrupt, Served, VirtioDevice};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A host program connected; its `CONNECT` line is not in yet.
    AwaitingConnect,
    /// We asked the guest to accept; waiting for its RESPONSE.
    Requested,
    /// Data flows.
    Established,
}

struct Conn {
    stream: UnixStream,
    token: u32,
    state: State,
    /// The part of the host program's `CONNECT` line received so far.
    line: Vec<u8>,
    /// When the connection was made (a `CONNECT` line must come within [`CONNECT_TIMEOUT`]).
    since: Instant,
    /// The host socket may have data for the guest (it is not watched for input meanwhile).
    readable: bool,
    /// What the host socket is watched for.
    interest: EventSet,
    /// Data from the guest the host program has not taken yet (at most `CONN_BUF`).
    to_host: Vec<u8>,
    /// Shut the host socket's write side once `to_host` is flushed.
    shut_write: bool,
    /// The guest shut down both ways: end the connection once `to_host` is flushed.
    peer_done: bool,
    /// Bytes sent to the guest, and the guest's credit (its buffer and what it consumed).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes of the guest's data handed to the host program, and what we last told the guest.
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
}

impl Conn {
    fn new(stream: UnixStream, token: u32, state: State) -> Conn {
        Conn {
            stream,
            token,
            state,
            line: Vec::new(),
            since: Instant::now(),
            readable: false,
            interest: EventSet::empty(),
            to_host: Vec::new(),
            shut_write: false,
            peer_done: false,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
        }
    }

    /// When a host program still sending its `CONNECT` line is dropped (None once it sent it).
    fn handshake_deadline(&self) -> Option<Instant> {
        (self.state == State::AwaitingConnect).then(|| self.since + CONNECT_TIMEOUT)
    }

    /// Bytes the guest can still take on this connection.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

/// A change to what the event loop watches, applied by [`VsockHandler`].
enum Watch {
    Set(RawFd, u32, EventSet),
    Forget(RawFd),
}

struct Active {
    queues: Vec<Queue>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
}

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

    fn header(&self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt,
        }
    }

    fn set_interest(&mut self, key: Key, interest: EventSet) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.interest != interest {
                c.interest = interest;
                self.watch
                    .push(Watch::Set(c.stream.as_raw_fd(), c.token, interest));
            }
        }
    }

    fn add_conn(&mut self, key: Key, stream: UnixStream, state: State) {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(TOKEN_CONN_BASE);
        self.tokens.insert(token, key);
        self.conns.insert(key, Conn::new(stream, token, state));
        let interest = match state {
            State::Requested => EventSet::empty(),
            _ => EventSet::IN,
        };
        // Registered once with its first interest; later changes modify it.
        if let Some(c) = self.conns.get_mut(&key) {
            c.interest = interest;
            self.watch
                .push(Watch::Set(c.stream.as_raw_fd(), token, interest));
        }
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.tokens.remove(&c.token);
            self.watch.push(Watch::Forget(c.stream.as_raw_fd()));
            // Closed only once the event loop has forgotten the fd: closed earlier, its number
            // could come back for a new socket in the same round and be forgotten instead.
            self.closing.push(c.stream);
        }
    }

    /// Queues a control packet; false when the queue is full.
    fn push(&mut self, key: Key, op: u16, flags: u32) -> bool {
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        self.pending.push_back((key, op, flags));
        true
    }

    fn reset_conn(&mut self, key: Key) {
        self.remove_conn(key);
        self.push(key, OP_RST, 0);
    }

    /// Accepts host connections (a bounded number per wake-up: the listener stays readable
    /// if more wait).
    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok(Some(stream)) => {
                    if self.conns.len() + self.draining.len() >= self.max_connections {
                        continue; // dropped: the host program sees the socket close
                    }
                    let key = (self.alloc_local_port(), u32::MAX);
                    self.add_conn(key, stream, State::AwaitingConnect);
                }
                Ok(None) => return,
                Err(_) => {
                    // Out of file descriptors (or memory): the pending connection stays, and
                    // so does the listener's readiness. Look again after a pause.
                    self.listener_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.watch_listener(EventSet::empty());
                    return;
                }
            }
        }
    }

    fn watch_listener(&mut self, interest: EventSet) {
        if let Some(listener) = &self.listener {
            self.watch
                .push(Watch::Set(listener.as_raw_fd(), TOKEN_LISTENER, interest));
        }
    }

    /// The next time [`Vsock::tick`] has something to do, if any.
    fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(Conn::handshake_deadline)
            .chain(self.listener_paused_until)
            .min()
    }

    /// Drops host programs that did not send their `CONNECT` line in time, and watches the
    /// listening socket again after an `accept` failure.
    fn tick(&mut self, now: Instant) {
        let late: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| c.handshake_deadline().is_some_and(|t| now >= t))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            self.remove_conn(key);
        }
        if self.listener_paused_until.is_some_and(|t| now >= t) {
            self.listener_paused_until = None;
            self.watch_listener(EventSet::IN);
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == port) {
                return port;
            }
        }
    }

    /// Something happened on a connection's socket.
    fn conn_event(&mut self, token: u32, set: EventSet) {
        if self.draining.contains_key(&token) {
            self.drain(token, set);
            return;
        }
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match conn.state {
            State::AwaitingConnect => match unix::read_connect_line(&conn.stream, &mut conn.line) {
                Ok(None) => {}
                Ok(Some(line)) => match unix::parse_connect(&line) {
                    Some(port) => {
                        // Re-key: (local port, the guest port asked for).
                        let Some(conn) = self.conns.remove(&key) else {
                            return;
                        };
                        let new_key = (key.0, port);
                        self.tokens.insert(conn.token, new_key);
                        self.conns.insert(
                            new_key,
                            Conn {
                                state: State::Requested,
                                ..conn
                            },
                        );
                        self.set_interest(new_key, EventSet::empty());
                        if !self.push(new_key, OP_REQUEST, 0) {
                            self.remove_conn(new_key);
                        }
                    }
                    None => self.remove_conn(key),
                },
                Err(_) => self.remove_conn(key),
            },
            State::Requested => {
                if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    self.reset_conn(key);
                }
            }
            State::Established => {
                if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    // Reported whatever the interest: stop watching, or it fires for ever.
                    // What is left to read (then the end) reaches the guest through the
                    // ready list.
                    self.mark_readable(key);
                    if let Some(c) = self.conns.get_mut(&key) {
                        c.interest = EventSet::empty();
                        self.watch.push(Watch::Forget(c.stream.as_raw_fd()));
                    }
                    return;
                }
                if set.contains(EventSet::OUT) {
                    self.flush_to_host(key);
                }
                if set.contains(EventSet::IN) {
                    self.mark_readable(key);
                }
            }
        }
    }

    /// Writes on for a connection the guest has closed; closes it once done (or broken).
    fn drain(&mut self, token: u32, set: EventSet) {
        let Some(c) = self.draining.get_mut(&token) else {
            return;
        };
        let mut done = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        while !done && !c.to_host.is_empty() {
            match c.stream.write(&c.to_host) {
                Ok(n) => {
                    c.to_host.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => done = true,
            }
        }
        if done || c.to_host.is_empty() {
            if let Some(c) = self.draining.remove(&token) {
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                self.watch.push(Watch::Forget(c.stream.as_raw_fd()));
                self.closing.push(c.stream);
            }
        } else if c.interest != EventSet::OUT {
            c.interest = EventSet::OUT;
            self.watch
                .push(Watch::Set(c.stream.as_raw_fd(), token, EventSet::OUT));
        }
    }

    /// The host socket has data (or an end): stop watching it for input until it is read.
    fn mark_readable(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.readable {
            c.readable = true;
            self.ready.push_back(key);
        }
        let keep = c.interest & EventSet::OUT;
        self.set_interest(key, keep);
    }

    /// Writes what the guest sent and the host program has not taken yet.
    fn flush_to_host(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        while !c.to_host.is_empty() {
            match c.stream.write(&c.to_host) {
                Ok(n) => {
                    c.to_host.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.reset_conn(key);
                    return;
                }
            }
        }
        let drained = c.to_host.is_empty();
        if drained && c.shut_write {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.peer_done {
            // The guest is done: it gets its RST now (so its close() completes), and what it
            // sent before still goes to the host program, from the draining list.
            let waiting = !drained;
            if let Some(c) = self.conns.remove(&key) {
                self.tokens.remove(&c.token);
                if waiting {
                    self.draining.insert(c.token, c);
                } else {
                    self.watch.push(Watch::Forget(c.stream.as_raw_fd()));
                    self.closing.push(c.stream);
                }
            }
            self.push(key, OP_RST, 0);
            return;
        }
        let mut interest = c.interest;
        interest.set(EventSet::OUT, !drained);
        self.maybe_credit_update(key);
        self.set_interest(key, interest);
    }

    /// Tells the guest about consumed data once half its window is free again: often enough
    /// that a guest keeping up never waits, rarely enough that the updates (a receive
    /// buffer and an interrupt each) cost little.
    fn maybe_credit_update(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= CONN_BUF / 2 {
            c.fwd_cnt_sent = c.fwd_cnt;
            self.push(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Serves the guest's transmit queue.
    fn process_tx(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        self.tx_stalled = false;
        let queue = &mut active.queues[TXQ];
        let round = queue::serve(queue, TXQ, &mem, &active.interrupt, self.batch, |chain| {
            if self.pending.len() >= MAX_PENDING {
                // Room for our answers first: the guest's receive buffers make it, and
                // the handler comes back here once they have.
                self.tx_stalled = true;
                return Served::Return;
            }
            let mut readable = Vec::new();
            let mut writable = false;
            for d in chain {
                if d.is_write_only() {
                    writable = true;
                } else {
                    readable.push((d.addr(), d.len()));
                }
            }
            let bufs = GuestBufs::new(readable);
            if !writable {
                self.tx_packet(&mem, &bufs);
            }
            Served::Used(0)
        });
        self.tx_more = round.more();
        self.active = Some(active);
    }

    /// One packet from the guest.
    fn tx_packet(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) {
        let mut raw = [0u8; HDR_LEN];
        if bufs.read(mem, 0, &mut raw).is_err() {
            return; // not even a header: dropped
        }
        let h = Header::from_bytes(&raw);
        let key = (h.dst_port, h.src_port);
        if h.src_cid != self.cid || h.dst_cid != HOST_CID {
            return; // not from this guest to us: dropped, as a NIC drops a spoofed frame
        }
        let payload = h.len as usize;
        if h.type_ != TYPE_STREAM
            || payload > MAX_PAYLOAD
            || payload > bufs.len().saturating_sub(HDR_LEN)
        {
            if h.op != OP_RST {
                self.reset_conn(key);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            // Every header carries the guest's credit, not only CREDIT_UPDATE: a connection
            // that was waiting for credit may go on.
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
            if c.readable && c.peer_credit() > 0 && !self.ready.contains(&key) {
                self.ready.push_back(key);
            }
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (h.op, state) {
            (OP_REQUEST, None) => self.guest_connect(key, &h),
            (OP_REQUEST, Some(_)) => self.reset_conn(key),
            (OP_RESPONSE, Some(State::Requested)) => self.host_connected(key),
            (OP_RW, Some(State::Established)) => self.guest_data(mem, bufs, key, payload),
            (OP_SHUTDOWN, Some(State::Established)) => {
                // What the guest sent before still goes to the host program first; the
                // connection ends (RST) once it has, when the guest is done both ways.
                if let Some(c) = self.conns.get_mut(&key) {
                    c.shut_write |= h.flags & SHUTDOWN_SEND != 0;
                    c.peer_done |=
                        h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND;
                }
                self.flush_to_host(key);
            }
            (OP_CREDIT_UPDATE, Some(State::Established)) => {} // credit taken above
            (OP_CREDIT_REQUEST, Some(State::Established)) => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.fwd_cnt_sent = c.fwd_cnt;
                }
                self.push(key, OP_CREDIT_UPDATE, 0);
            }
            (OP_RST, Some(_)) => self.remove_conn(key),
            (OP_RST, None) => {}
            _ => self.reset_conn(key),
        }
    }

    /// The guest connects to the host's port `key.0`.
    fn guest_connect(&mut self, key: Key, request: &Header) {
        if self.conns.len() + self.draining.len() >= self.max_connections {
            self.push(key, OP_RST, 0);
            return;
        }
        match unix::connect_port(&self.uds, key.0) {
            Ok(stream) => {
                self.add_conn(key, stream, State::Established);
                if let Some(c) = self.conns.get_mut(&key) {
                    // The REQUEST carries the guest's credit.
                    c.peer_buf_alloc = request.buf_alloc;
                    c.peer_fwd_cnt = request.fwd_cnt;
                }
                self.push(key, OP_RESPONSE, 0);
            }
            Err(_) => {
                self.push(key, OP_RST, 0);
            }
        }
    }

    /// The guest accepted a host program's connection.
    fn host_connected(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let reply = format!("OK {}\n", key.0);
        // A few bytes into an idle socket: they fit unless the program misbehaves.
        if c.stream.write_all(reply.as_bytes()).is_err() {
            self.reset_conn(key);
            return;
        }
        c.state = State::Established;
        self.set_interest(key, EventSet::IN);
    }

    /// Data from the guest for the host program.
    fn guest_data(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs, key: Key, len: usize) {
        if len == 0 {
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.to_host.len() + len > CONN_BUF as usize {
            // Beyond the credit we gave: the guest broke the protocol.
            self.reset_conn(key);
            return;
        }
        let mut written = 0;
        if c.to_host.is_empty() {
            if let Ok(iovecs) = bufs.iovecs(mem, HDR_LEN, len) {
                // SAFETY: the iovecs point into guest memory that `mem` keeps mapped, with
                // their lengths; writev only reads them.
                let n = unsafe {
                    libc::writev(
                        c.stream.as_raw_fd(),
                        iovecs.as_ptr(),
                        iovecs.len().min(1024) as libc::c_int,
                    )
                };
                if n > 0 {
                    written = n as usize;
                } else if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                    self.reset_conn(key);
                    return;
                }
            }
        }
        c.fwd_cnt = c.fwd_cnt.wrapping_add(written as u32);
        if written < len {
            let start = c.to_host.len();
            c.to_host.resize(start + len - written, 0);
            if bufs
                .read(mem, HDR_LEN + written, &mut c.to_host[start..])
                .is_err()
            {
                self.reset_conn(key);
                return;
            }
            let interest = c.interest | EventSet::OUT;
            self.set_interest(key, interest);
        }
        self.maybe_credit_update(key);
    }

    /// Fills the guest's receive buffers: control packets first, then data from the host
    /// sockets that have some, in turn, within each connection's credit.
    fn process_rx(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let queue = &mut active.queues[RXQ];
        let round = queue::serve(queue, RXQ, &mem, &active.interrupt, self.batch, |chain| {
            if self.pending.is_empty() && self.ready.is_empty() {
                return Served::Return; // nothing to send
            }
            // Out of receive buffers with work left, the guest is asked to notify us when it
            // adds some (the round ends drained).
            let bufs = GuestBufs::writable(chain);
            if bufs.len() < HDR_LEN {
                return Served::Used(0); // too small for anything: returned empty
            }
            if let Some((key, op, flags)) = self.pending.pop_front() {
                let h = self.header(key, op, flags, 0);
                let written = bufs.write(mem.as_ref(), 0, &h.to_bytes()).is_ok();
                return Served::Used(if written { HDR_LEN as u32 } else { 0 });
            }
            match self.rx_data(mem.as_ref(), &bufs) {
                Some(n) => Served::Used(n),
                None => Served::Return, // nothing to send after all: the buffer goes back
            }
        });
        self.rx_more = round.more();
        self.active = Some(active);
    }

    /// Reads a ready connection's socket into `bufs`; the bytes used, or None when no
    /// connection had anything.
    fn rx_data(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) -> Option<u32> {
        while let Some(key) = self.ready.pop_front() {
            let Some(c) = self.conns.get(&key) else {
                continue;
            };
            let credit = c.peer_credit() as usize;
            if !c.readable || c.state != State::Established {
                continue;
            }
            if credit == 0 {
                continue; // back on the list with the guest's next credit update
            }
            let room = (bufs.len() - HDR_LEN).min(credit).min(MAX_PAYLOAD);
            let Ok(iovecs) = bufs.iovecs(mem, HDR_LEN, room) else {
                return Some(0);
            };
            // SAFETY: the iovecs point into guest memory that `mem` keeps mapped, with their
            // lengths; readv writes at most that much.
            let n = unsafe {
                libc::readv(
                    c.stream.as_raw_fd(),
                    iovecs.as_ptr(),
                    iovecs.len().min(1024) as libc::c_int,
                )
            };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.readable = false;
                }
                let interest = self.conns.get(&key).map_or(EventSet::empty(), |c| {
                    (c.interest & EventSet::OUT) | EventSet::IN
                });
                self.set_interest(key, interest);
                continue;
            }
            if n <= 0 {
                // The host program closed (or broke) its end: tell the guest.
                if let Some(c) = self.conns.get_mut(&key) {
                    c.readable = false;
                }
                let h = self.header(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0);
                let written = bufs.write(mem, 0, &h.to_bytes()).is_ok();
                let interest = self
                    .conns
                    .get(&key)
                    .map_or(EventSet::empty(), |c| c.interest & EventSet::OUT);
                self.set_interest(key, interest);
                return Some(if written { HDR_LEN as u32 } else { 0 });
            }
            let n = n as u32;
            if let Some(c) = self.conns.get_mut(&key) {
                c.tx_cnt = c.tx_cnt.wrapping_add(n);
                c.fwd_cnt_sent = c.fwd_cnt;
            }
            let h = self.header(key, OP_RW, 0, n);
            if bufs.write(mem, 0, &h.to_bytes()).is_err() {
                return Some(0);
            }
            // Still readable: its turn comes again after the others'.
            self.ready.push_back(key);
            return Some(HDR_LEN as u32 + n);
        }
        None
    }

    /// Closes every connection (device reset).
    fn drop_connections(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key);
        }
        for (_, c) in self.draining.drain() {
            self.watch.push(Watch::Forget(c.stream.as_raw_fd()));
            self.closing.push(c.stream);
        }
        self.pending.clear();
        self.ready.clear();
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
        for (i, q) in activation.queues.iter().enumerate().take(EVQ) {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.active = Some(Active {
            queues: activation.queues,
            mem: activation.mem,
            interrupt: activation.interrupt,
        });
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
        Box::new(VsockHandler {
            device,
            queue_events,
            timer: TimerFd::new().ok(),
            armed: None,
        })
    }
}

/// The vsock device's part of the event loop: its queues, its listening socket and its
/// connections' sockets.
pub struct VsockHandler {
    device: Arc<Mutex<Vsock>>,
    queue_events: Vec<EventFd>,
    /// Fires for [`Vsock::tick`]: handshake time-outs, the listener's back-off. (Without
    /// one, which only fails when the process is out of descriptors, a client that never
    /// finishes its line keeps its slot until the VM stops; nothing spins.)
    timer: Option<TimerFd>,
    /// When the timer is set to fire.
    armed: Option<Instant>,
}

impl VsockHandler {
    /// Sets the timer for the device's next deadline (or clears it).
    fn arm(&mut self, device: &Vsock) {
        let Some(timer) = &mut self.timer else {
            return;
        };
        let next = device.next_deadline();
        if next == self.armed {
            return;
        }
        self.armed = next;
        let _ = match next {
            // At least 1 ms: a zero duration would disarm it.
            Some(t) => timer.reset(
                t.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
                None,
            ),
            None => timer.clear(),
        };
    }

    fn apply(ops: &mut EventOps, device: &mut Vsock) {
        for change in device.watch.drain(..) {
            match change {
                Watch::Set(fd, token, set) => {
                    let events = Events::with_data_raw(fd, token, set);
                    if ops.modify(events).is_err() {
                        let _ = ops.add(events);
                    }
                }
                Watch::Forget(fd) => {
                    let _ = ops.remove(Events::empty_raw(fd));
                }
            }
        }
        device.closing.clear();
    }
}

impl MutEventSubscriber for VsockHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let token = events.data();
        let shared = self.device.clone();
        let mut device = shared.lock().unwrap_or_else(|e| e.into_inner());
        match token {
            t if (t as usize) < self.queue_events.len() => {
                let _ = self.queue_events[t as usize].read();
                device.process_queue(t as usize);
            }
            TOKEN_LISTENER => device.accept(),
            TOKEN_TIMER => {
                if let Some(timer) = &mut self.timer {
                    let _ = timer.wait();
                }
                self.armed = None;
                device.tick(Instant::now());
            }
            t => device.conn_event(t, events.event_set()),
        }
        device.process_rx();
        if device.tx_stalled && device.pending.len() < MAX_PENDING {
            device.process_tx();
            device.process_rx();
        }
        // A queue left with work after a full batch: come back after the loop's other events.
        if device.tx_more {
            if let Some(e) = self.queue_events.get(TXQ) {
                let _ = e.write(1);
            }
        }
        if device.rx_more {
            if let Some(e) = self.queue_events.get(RXQ) {
                let _ = e.write(1);
            }
        }
        Self::apply(ops, &mut device);
        self.arm(&device);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, e) in self.queue_events.iter().enumerate() {
            let _ = ops.add(Events::with_data(e, i as u32, EventSet::IN));
        }
        if let Some(timer) = &self.timer {
            let _ = ops.add(Events::with_data(timer, TOKEN_TIMER, EventSet::IN));
        }
        let device = self.device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(listener) = &device.listener {
            let _ = ops.add(Events::with_data(listener, TOKEN_LISTENER, EventSet::IN));
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.drop_connections();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestAddress};

    const SIZE: u16 = 16;
    // Queue i's rings at testing::ring(i); tx buffers at 0x40000, rx buffers at 0x80000.
    use crate::devices::virtio::testing::ring;

    struct Driver {
        mem: Arc<GuestMemoryMmap>,
        avail: [u16; 3],
        used_seen: [u16; 3],
    }

    impl Driver {
        fn start(dev: &mut Vsock) -> Driver {
            let mem = crate::devices::virtio::testing::activate(dev, SIZE);
            Driver {
                mem,
                avail: [0; 3],
                used_seen: [0; 3],
            }
        }

        /// Puts a one-descriptor chain at slot `avail % SIZE` of queue `q`.
        fn give(&mut self, q: usize, addr: u64, len: u32, write: bool) {
            let (d, a, _) = ring(q);
            let slot = self.avail[q] % SIZE;
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            desc[12..14].copy_from_slice(&flags.to_le_bytes());
            self.mem
                .write_slice(&desc, GuestAddress(d + 16 * u64::from(slot)))
                .unwrap();
            self.mem
                .write_obj(slot, GuestAddress(a + 4 + 2 * u64::from(slot)))
                .unwrap();
            self.avail[q] = self.avail[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail[q], GuestAddress(a + 2))
                .unwrap();
        }

        fn send(&mut self, dev: &mut Vsock, h: Header, payload: &[u8]) {
            let at = 0x40000 + 0x1000 * u64::from(self.avail[TXQ] % SIZE);
            let h = Header {
                len: payload.len() as u32,
                ..h
            };
            self.mem
                .write_slice(&h.to_bytes(), GuestAddress(at))
                .unwrap();
            self.mem
                .write_slice(payload, GuestAddress(at + HDR_LEN as u64))
                .unwrap();
            self.give(TXQ, at, (HDR_LEN + payload.len()) as u32, false);
            dev.process_queue(TXQ);
        }

        /// Gives the device receive buffers, lets it fill them; returns what it sent.
        fn receive(&mut self, dev: &mut Vsock) -> Vec<(Header, Vec<u8>)> {
            for _ in 0..4 {
                let at = 0x80000 + 0x2000 * u64::from(self.avail[RXQ] % SIZE);
                self.give(RXQ, at, 0x1000 + HDR_LEN as u32, true);
            }
            dev.process_queue(RXQ);
            let (_, _, u) = ring(RXQ);
            let idx: u16 = self.mem.read_obj(GuestAddress(u + 2)).unwrap();
            let mut out = Vec::new();
            while self.used_seen[RXQ] != idx {
                let slot = u64::from(self.used_seen[RXQ] % SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(u + 4 + 8 * slot)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(u + 8 + 8 * slot)).unwrap();
                let (d, _, _) = ring(RXQ);
                let addr: u64 = self
                    .mem
                    .read_obj(GuestAddress(d + 16 * u64::from(id)))
                    .unwrap();
                let mut raw = [0u8; HDR_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let mut payload = vec![0u8; len as usize - HDR_LEN];
                self.mem
                    .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                out.push((Header::from_bytes(&raw), payload));
                self.used_seen[RXQ] = self.used_seen[RXQ].wrapping_add(1);
            }
            // Buffers not used were given back: forget them.
            self.avail[RXQ] = self.used_seen[RXQ];
            let (_, a, _) = ring(RXQ);
            self.mem
                .write_obj(self.avail[RXQ], GuestAddress(a + 2))
                .unwrap();
            out
        }
    }

    fn temp_uds(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-ref-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("v.sock")
    }

    fn guest(op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Header::default()
        }
    }

    #[test]
    fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
        let uds = temp_uds("out");
        let mut dev = Vsock::new(&VsockConfig {
            cid: 3,
            uds: uds.clone(),
        })
        .unwrap();
        let mut drv = Driver::start(&mut dev);
        let host = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
        drv.send(&mut dev, guest(OP_REQUEST, 777, 5000), &[]);
        let got = drv.receive(&mut dev);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
            (OP_RESPONSE, 5000, 777)
        );
        assert_eq!(got[0].0.buf_alloc, CONN_BUF);
        let (mut conn, _) = host.accept().unwrap();
        drv.send(&mut dev, guest(OP_RW, 777, 5000), b"hello host");
        let mut buf = [0u8; 10];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello host");
        // The host answers: once the socket is seen readable, the guest gets the bytes.
        conn.write_all(b"hi guest").unwrap();
        let token = dev.conns[&(5000, 777)].token;
        dev.conn_event(token, EventSet::IN);
        let got = drv.receive(&mut dev);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.op, got[0].1.as_slice()),
            (OP_RW, &b"hi guest"[..])
        );
        assert_eq!(
            got[0].0.fwd_cnt, 10,
            "the host consumed the guest's 10 bytes"
        );
        // The host closes: the guest is told both directions are shut.
        drop(conn);
        dev.conn_event(token, EventSet::IN | EventSet::HANG_UP);
        let got = drv.receive(&mut dev);
        assert_eq!(
            (got[0].0.op, got[0].0.flags),
            (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
        );
        drv.send(&mut dev, guest(OP_RST, 777, 5000), &[]);
        assert_eq!(dev.connections(), 0);
        let _ = std::fs::remove_dir_all(uds.parent().unwrap());
    }

    #[test]
    fn a_guest_keeping_the_transmit_queue_full_cannot_hold_the_loop() {
        // Spoofed packets (dropped early, without an answer) in every slot: however many the
        // guest keeps offering, one call serves a batch and says more is left, so the event
        // loop's other work (stopping, pausing, other devices) comes in between.
        let uds = temp_uds("flood");
        let mut dev = Vsock::new(&VsockConfig {
            cid: 3,
            uds: uds.clone(),
        })
        .unwrap();
        dev.batch = 4;
        let mut drv = Driver::start(&mut dev);
        for slot in 0..SIZE {
            let at = 0x40000 + 0x1000 * u64::from(slot);
            let h = Header {
                src_cid: 9,
                ..guest(OP_REQUEST, 1, 5001)
            };
            drv.mem
                .write_slice(&h.to_bytes(), GuestAddress(at))
                .unwrap();
            drv.give(TXQ, at, HDR_LEN as u32, false);
        }
        let (_, _, used) = ring(TXQ);
        for round in 1..=4u16 {
            dev.process_queue(TXQ);
            let done: u16 = drv.mem.read_obj(GuestAddress(used + 2)).unwrap();
            assert_eq!(done, 4 * round, "one batch per call");
            assert!(dev.tx_more, "round {round}");
        }
        // A full batch says "more" even when it happened to take the last chain; the next
        // call finds nothing.
        dev.process_queue(TXQ);
        assert!(!dev.tx_more);
        // Receive buffers shorter than a header while control packets wait: bounded too.
        for i in 0..8u32 {
            dev.push((1, i), OP_RST, 0);
        }
        for _ in 0..SIZE {
            drv.give(RXQ, 0x80000, 8, true);
        }
        dev.process_queue(RXQ);
        assert!(dev.rx_more, "the receive loop must stop after a batch");
    }

    #[test]
    fn refused_ports_and_spoofed_or_broken_packets() {
        let uds = temp_uds("bad");
        let mut dev = Vsock::new(&VsockConfig {
            cid: 3,
            uds: uds.clone(),
        })
        .unwrap();
        let mut drv = Driver::start(&mut dev);
        drv.send(&mut dev, guest(OP_REQUEST, 1, 5001), &[]);
        // Not from this guest, not to the host: dropped without an answer.
        drv.send(
            &mut dev,
            Header {
                src_cid: 9,
                ..guest(OP_REQUEST, 2, 5001)
            },
            &[],
        );
        drv.send(
            &mut dev,
            Header {
                dst_cid: 7,
                ..guest(OP_REQUEST, 3, 5001)
            },
            &[],
        );
        // Data on no connection, an unknown op, a datagram type: reset.
        drv.send(&mut dev, guest(OP_RW, 4, 5001), b"x");
        drv.send(&mut dev, guest(99, 5, 5001), &[]);
        drv.send(
            &mut dev,
            Header {
                type_: 2,
                ..guest(OP_REQUEST, 6, 5001)
            },
            &[],
        );
        let got = drv.receive(&mut dev);
        let ports: Vec<(u16, u32)> = got.iter().map(|(h, _)| (h.op, h.dst_port)).collect();
        assert_eq!(
            ports,
            vec![(OP_RST, 1), (OP_RST, 4), (OP_RST, 5), (OP_RST, 6)]
        );
        // A header claiming more payload than the buffer holds.
        let at = 0x40000;
        let h = Header {
            len: 5000,
            ..guest(OP_RW, 8, 5001)
        };
        drv.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        drv.give(TXQ, at, HDR_LEN as u32 + 10, false);
        dev.process_queue(TXQ);
        assert_eq!(drv.receive(&mut dev)[0].0.op, OP_RST);
        assert_eq!(dev.connections(), 0);
        let _ = std::fs::remove_dir_all(uds.parent().unwrap());
    }

    #[test]
    fn host_program_connects_with_the_firecracker_protocol_and_credit_bounds_reads() {
        let uds = temp_uds("in");
        let mut dev = Vsock::new(&VsockConfig {
            cid: 3,
            uds: uds.clone(),
        })
        .unwrap();
        let mut drv = Driver::start(&mut dev);
        let mut client = UnixStream::connect(&uds).unwrap();
        dev.accept();
        client.write_all(b"CONNECT 52\n").unwrap();
        let token = *dev.tokens.keys().next().unwrap();
        dev.conn_event(token, EventSet::IN);
        let got = drv.receive(&mut dev);
        let req = got[0].0;
        assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 52, 3));
        assert!(req.src_port >= FIRST_LOCAL_PORT);
        // The guest accepts with only 100 bytes of credit.
        let accept = Header {
            buf_alloc: 100,
            ..guest(OP_RESPONSE, 52, req.src_port)
        };
        drv.send(&mut dev, accept, &[]);
        let mut ok = [0u8; 14];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(ok, *format!("OK {}\n", req.src_port).as_bytes());
        // The program sends 1000 bytes: the guest gets 100, then nothing until it has read.
        client.write_all(&[7u8; 1000]).unwrap();
        let key = (req.src_port, 52);
        dev.conn_event(dev.conns[&key].token, EventSet::IN);
        let got = drv.receive(&mut dev);
        assert_eq!(got.iter().map(|(_, p)| p.len()).sum::<usize>(), 100);
        assert!(drv.receive(&mut dev).is_empty());
        let update = Header {
            buf_alloc: 100,
            fwd_cnt: 100,
            ..guest(OP_CREDIT_UPDATE, 52, req.src_port)
        };
        drv.send(&mut dev, update, &[]);
        let got = drv.receive(&mut dev);
        assert_eq!(got.iter().map(|(_, p)| p.len()).sum::<usize>(), 100);
        let _ = std::fs::remove_dir_all(uds.parent().unwrap());
    }
}
