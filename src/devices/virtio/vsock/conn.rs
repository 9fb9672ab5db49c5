//! A connection between a host program and the guest: its state machine and credit.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// A host program connected; its `CONNECT` line is not in yet.
    AwaitingConnect,
    /// We asked the guest to accept; waiting for its RESPONSE.
    Requested,
    /// Data flows.
    Established,
}

pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) token: u32,
    pub(super) state: State,
    /// The part of the host program's `CONNECT` line received so far.
    pub(super) line: Vec<u8>,
    /// When the connection was made (a `CONNECT` line must come within [`CONNECT_TIMEOUT`]).
    pub(super) since: Instant,
    /// The host socket may have data for the guest (it is not watched for input meanwhile).
    pub(super) readable: bool,
    /// What the host socket is watched for.
    pub(super) interest: EventSet,
    /// Data from the guest the host program has not taken yet (at most `CONN_BUF`).
    pub(super) to_host: Vec<u8>,
    /// Shut the host socket's write side once `to_host` is flushed.
    pub(super) shut_write: bool,
    /// The guest shut down both ways: end the connection once `to_host` is flushed.
    pub(super) peer_done: bool,
    /// Bytes sent to the guest, and the guest's credit (its buffer and what it consumed).
    pub(super) tx_cnt: u32,
    pub(super) peer_buf_alloc: u32,
    pub(super) peer_fwd_cnt: u32,
    /// Bytes of the guest's data handed to the host program, and what we last told the guest.
    pub(super) fwd_cnt: u32,
    pub(super) fwd_cnt_sent: u32,
}

impl Conn {
    pub(super) fn new(stream: UnixStream, token: u32, state: State) -> Conn {
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
    pub(super) fn handshake_deadline(&self) -> Option<Instant> {
        (self.state == State::AwaitingConnect).then(|| self.since + CONNECT_TIMEOUT)
    }

    /// Bytes the guest can still take on this connection.
    pub(super) fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}
