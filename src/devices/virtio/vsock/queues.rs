//! The guest side of the device: packets the guest transmits (requests, data, credit,
//! shutdowns, resets) and what goes into its receive queue (control packets first, then
//! data from ready connections, within their credit).

use super::*;

impl Vsock {
    pub(super) fn header(&self, key: Key, op: u16, flags: u32, len: u32) -> Header {
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

    /// Queues a control packet; false when the queue is full.
    pub(super) fn push(&mut self, key: Key, op: u16, flags: u32) -> bool {
        if self.pending.len() >= MAX_PENDING {
            return false;
        }
        self.pending.push_back((key, op, flags));
        true
    }

    /// Tells the guest about consumed data once half its window is free again: often enough
    /// that a guest keeping up never waits, rarely enough that the updates (a receive
    /// buffer and an interrupt each) cost little.
    pub(super) fn maybe_credit_update(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_sent) >= CONN_BUF / 2 {
            c.fwd_cnt_sent = c.fwd_cnt;
            self.push(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Serves the guest's transmit queue.
    pub(super) fn process_tx(&mut self) {
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
            if let Some(bufs) = GuestBufs::readable(chain) {
                self.tx_packet(&mem, &bufs);
            }
            Served::Used(0)
        });
        self.tx_more = round.more();
        self.active = Some(active);
    }

    /// One packet from the guest.
    pub(super) fn tx_packet(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) {
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
    pub(super) fn guest_connect(&mut self, key: Key, request: &Header) {
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
    pub(super) fn host_connected(&mut self, key: Key) {
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
    pub(super) fn guest_data(
        &mut self,
        mem: &GuestMemoryMmap,
        bufs: &GuestBufs,
        key: Key,
        len: usize,
    ) {
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
    pub(super) fn process_rx(&mut self) {
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
    pub(super) fn rx_data(&mut self, mem: &GuestMemoryMmap, bufs: &GuestBufs) -> Option<u32> {
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
}
