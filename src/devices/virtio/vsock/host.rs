//! The host side of the device (the muxer): host programs connecting through the listening
//! socket, their sockets' events, guest data flushed to them, handshake time-outs and accept
//! back-off, and the connection table.

use super::*;

impl Vsock {
    pub(super) fn set_interest(&mut self, key: Key, interest: EventSet) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.interest != interest {
                c.interest = interest;
                self.watch
                    .push(Watch::Set(c.stream.as_raw_fd(), c.token, interest));
            }
        }
    }

    pub(super) fn add_conn(&mut self, key: Key, stream: UnixStream, state: State) {
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

    pub(super) fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.tokens.remove(&c.token);
            self.watch.push(Watch::Forget(c.stream.as_raw_fd()));
            // Closed only once the event loop has forgotten the fd: closed earlier, its number
            // could come back for a new socket in the same round and be forgotten instead.
            self.closing.push(c.stream);
        }
    }

    pub(super) fn reset_conn(&mut self, key: Key) {
        self.remove_conn(key);
        self.push(key, OP_RST, 0);
    }

    /// Accepts host connections (a bounded number per wake-up: the listener stays readable
    /// if more wait).
    pub(super) fn accept(&mut self) {
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

    pub(super) fn watch_listener(&mut self, interest: EventSet) {
        if let Some(listener) = &self.listener {
            self.watch
                .push(Watch::Set(listener.as_raw_fd(), TOKEN_LISTENER, interest));
        }
    }

    /// The next time [`Vsock::tick`] has something to do, if any.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(Conn::handshake_deadline)
            .chain(self.listener_paused_until)
            .min()
    }

    /// Drops host programs that did not send their `CONNECT` line in time, and watches the
    /// listening socket again after an `accept` failure.
    pub(super) fn tick(&mut self, now: Instant) {
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

    pub(super) fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == port) {
                return port;
            }
        }
    }

    /// Something happened on a connection's socket.
    pub(super) fn conn_event(&mut self, token: u32, set: EventSet) {
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
    pub(super) fn drain(&mut self, token: u32, set: EventSet) {
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
    pub(super) fn mark_readable(&mut self, key: Key) {
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
    pub(super) fn flush_to_host(&mut self, key: Key) {
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

    /// Closes every connection (device reset).
    pub(super) fn drop_connections(&mut self) {
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
