//! The device's handler in the event loop: its queues, the listening socket, every
//! connection's socket and a timer, and the watch changes the device asks for.

use super::*;
use crate::sync::Locked;

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
    /// A handler for `device`, whose queue `i` is notified through `queue_events[i]`.
    pub fn new(device: Arc<Mutex<Vsock>>, queue_events: Vec<EventFd>) -> Self {
        VsockHandler {
            device,
            queue_events,
            timer: TimerFd::new().ok(),
            armed: None,
        }
    }

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
        let mut device = shared.locked();
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
        let device = self.device.locked();
        if let Some(listener) = &device.listener {
            let _ = ops.add(Events::with_data(listener, TOKEN_LISTENER, EventSet::IN));
        }
    }
}
