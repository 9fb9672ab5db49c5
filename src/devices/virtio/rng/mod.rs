//! virtio-rng (virtio 1.2, section 5.4): entropy for the guest, from the host's `getrandom`.
//!
//! One queue of write-only buffers; the device fills each with random bytes and returns it.
//! A guest whose early boot blocks on entropy (no RDRAND it trusts, no other source) gets it
//! here, and `hw_random` uses the device as `virtio_rng.0`. Each chain is filled up to
//! [`MAX_REQUEST`] bytes and each round serves at most [`BATCH`] chains, so a guest posting
//! huge or endless buffers costs bounded work per event. An optional rate limit (bytes per
//! second, a token bucket holding one second's worth) holds requests back and comes back to
//! them from a timer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::bufs::GuestBufs;
use super::{queue, ActivateError, Activation, Served, VirtioDevice};
use crate::config::RngConfig;
use crate::sync::Locked;

/// The virtio device type of an entropy source.
pub const DEVICE_TYPE: u32 = 4;
/// The request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one chain is given.
pub const MAX_REQUEST: usize = 64 << 10;
/// The most chains served per round.
pub const BATCH: usize = 64;

/// The device.
pub struct Rng {
    bucket: Option<Bucket>,
    active: Option<Active>,
    /// Bytes given to the guest.
    bytes: u64,
    /// Set when the rate limit held requests back: the handler arms its timer.
    wait: Option<Duration>,
    /// Where random bytes are made before they go into the guest's buffers (kept: a
    /// round must not allocate).
    buf: Vec<u8>,
}

use super::SingleQueue as Active;

/// A token bucket: `rate` bytes per second, at most one second's worth saved up.
struct Bucket {
    rate: u64,
    tokens: u64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = (now.duration_since(self.at).as_secs_f64() * self.rate as f64) as u64;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.rate);
            self.at = now;
        }
    }

    /// How long until `want` tokens (at most a bucketful) are there.
    fn wait_for(&self, want: u64) -> Duration {
        let missing = want.min(self.rate).saturating_sub(self.tokens);
        Duration::from_secs_f64(missing as f64 / self.rate as f64).max(Duration::from_millis(1))
    }
}

impl Rng {
    /// An entropy device as `config` describes it.
    pub fn new(config: &RngConfig) -> Self {
        Rng {
            bucket: config.rate.map(|rate| Bucket {
                rate,
                tokens: rate,
                at: Instant::now(),
            }),
            active: None,
            bytes: 0,
            wait: None,
            buf: vec![0u8; MAX_REQUEST],
        }
    }

    /// Bytes given to the guest so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Serves the queue; returns whether chains are left for another round.
    fn serve(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = active.mem.clone();
        let mem = mem.as_ref();
        self.wait = None;
        let (bucket, wait, bytes, buf) = (
            &mut self.bucket,
            &mut self.wait,
            &mut self.bytes,
            &mut self.buf,
        );
        let round = queue::serve(
            &mut active.queue,
            0,
            mem,
            &active.interrupt,
            BATCH,
            |chain| {
                let allowance = match bucket.as_mut() {
                    Some(b) => {
                        b.refill(Instant::now());
                        if b.tokens == 0 {
                            *wait = Some(b.wait_for(MAX_REQUEST as u64));
                            return Served::Return;
                        }
                        b.tokens.min(MAX_REQUEST as u64) as usize
                    }
                    None => MAX_REQUEST,
                };
                let bufs = GuestBufs::writable(chain);
                let n = bufs.len().min(allowance);
                let written = if n > 0 && fill_random(&mut buf[..n]) {
                    bufs.write(mem, 0, &buf[..n]).map_or(0, |_| n)
                } else {
                    0
                };
                if let Some(b) = bucket.as_mut() {
                    b.tokens -= written as u64;
                }
                *bytes += written as u64;
                Served::Used(written as u32)
            },
        );
        round.more()
    }
}

/// Fills `buf` from the kernel's CSPRNG; false if it cannot (the chain is returned empty).
fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most `buf.len() - done` bytes at the pointer, which is
        // inside `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | super::VIRTIO_RING_F_EVENT_IDX
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0); // no configuration space
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.single_queue()?);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.wait = None;
    }

    fn process_queue(&mut self, _index: usize) -> bool {
        self.serve()
    }

    fn kind(&self) -> &'static str {
        "virtio-rng"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("bytes", self.bytes)]
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| vec![a.queue.state()])
    }

    fn subscriber(
        device: Arc<Mutex<Self>>,
        mut queue_events: Vec<EventFd>,
    ) -> Box<dyn MutEventSubscriber + Send> {
        Box::new(RngHandler {
            device,
            queue: queue_events.remove(0),
            timer: TimerFd::new().ok(),
        })
    }
}

/// Serves the queue when notified, and again when the rate limit allows.
struct RngHandler {
    device: Arc<Mutex<Rng>>,
    queue: EventFd,
    timer: Option<TimerFd>,
}

const TOKEN_QUEUE: u32 = 0;
const TOKEN_TIMER: u32 = 1;

impl MutEventSubscriber for RngHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_QUEUE => {
                let _ = self.queue.read();
            }
            _ => {
                if let Some(t) = &mut self.timer {
                    let _ = t.wait();
                }
            }
        }
        let mut dev = self.device.locked();
        if dev.serve() {
            // Work is left after a full batch: come back after the loop's other events.
            let _ = self.queue.write(1);
        }
        if let (Some(wait), Some(t)) = (dev.wait, &mut self.timer) {
            let _ = t.reset(wait, None);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(&self.queue, TOKEN_QUEUE, EventSet::IN));
        if let Some(t) = &self.timer {
            let _ = ops.add(Events::with_data(t, TOKEN_TIMER, EventSet::IN));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{activate, ring};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Makes chain `n` (one write-only buffer of `len` bytes at 0x40000 + n * 0x20000).
    fn offer(mem: &GuestMemoryMmap, n: u16, len: u32) -> u64 {
        let (desc, avail, _) = ring(0);
        let addr = 0x40000 + 0x20000 * u64::from(n);
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes()); // WRITE
        mem.write_slice(&d, GuestAddress(desc + 16 * u64::from(n)))
            .unwrap();
        mem.write_obj(n, GuestAddress(avail + 4 + 2 * u64::from(n)))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(avail + 2)).unwrap();
        addr
    }

    fn used_len(mem: &GuestMemoryMmap, n: u16) -> u32 {
        let (_, _, used) = ring(0);
        mem.read_obj(GuestAddress(used + 4 + 8 * u64::from(n) + 4))
            .unwrap()
    }

    #[test]
    fn fills_buffers_with_random_bytes_up_to_the_request_limit() {
        let mut rng = Rng::new(&RngConfig::default());
        let mem = activate(&mut rng, 16);
        let a = offer(&mem, 0, 64);
        let b = offer(&mem, 1, 0x10_0000 - 0x60000); // larger than MAX_REQUEST
        assert!(!rng.process_queue(0));
        assert_eq!(used_len(&mem, 0), 64);
        assert_eq!(used_len(&mem, 1), MAX_REQUEST as u32);
        let mut x = [0u8; 64];
        let mut y = [0u8; 64];
        mem.read_slice(&mut x, GuestAddress(a)).unwrap();
        mem.read_slice(&mut y, GuestAddress(b)).unwrap();
        assert_ne!(x, [0u8; 64]);
        assert_ne!(x, y);
        assert_eq!(rng.bytes(), 64 + MAX_REQUEST as u64);
    }

    #[test]
    fn the_rate_limit_holds_requests_back_and_says_how_long() {
        let mut rng = Rng::new(&RngConfig { rate: Some(100) });
        let mem = activate(&mut rng, 16);
        offer(&mem, 0, 64);
        offer(&mem, 1, 64);
        offer(&mem, 2, 64);
        rng.process_queue(0);
        assert_eq!(used_len(&mem, 0), 64);
        assert_eq!(
            used_len(&mem, 1),
            36,
            "what is left of the second's 100 bytes"
        );
        assert_eq!(rng.bytes(), 100);
        let wait = rng.wait.expect("held back");
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }
}
