//! Serving a queue: the loop every device runs, once.
//!
//! Take the chains the driver made available, one at a time, until none is left or the
//! round's budget is spent; give each back to the driver as used (with how many bytes the
//! device wrote into it); then, if anything was used, notify the driver unless it asked not
//! to be. A driver that broke the ring (an avail index too far ahead, a used ring the device
//! cannot write) gets DEVICE_NEEDS_RESET instead. Notifications stay off while chains are
//! being taken, so a busy driver does not exit to the VMM once per chain.
//!
//! What a device does with each chain is the closure given to [`serve`]; what it says back
//! ([`Served`]) is all the loop needs to know.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::Interrupt;

/// The driver corrupted a virtqueue: its avail ring's index is off by more than the queue's
/// size, or the used ring could not be written. The device then asks for a reset
/// ([`Interrupt::fail`]) and stops serving the queue.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the driver corrupted a virtqueue")]
pub struct BrokenRing;

/// A chain the driver made available.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// The next chain the driver made available on `queue`, or None once it is drained.
///
/// Once drained, the driver is asked to notify again at the next chain (with
/// `VIRTIO_RING_F_EVENT_IDX`, by publishing how far the device got; without, by clearing
/// `VRING_USED_F_NO_NOTIFY`), and the ring is looked at once more, for a chain that came in
/// meanwhile would otherwise wait for a notification that is not coming.
pub fn next_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Result<Option<Chain<'a>>, BrokenRing> {
    loop {
        if let Some(chain) = queue.iter(mem).map_err(|_| BrokenRing)?.next() {
            return Ok(Some(chain));
        }
        if !queue.enable_notification(mem).map_err(|_| BrokenRing)? {
            return Ok(None);
        }
        queue.disable_notification(mem).map_err(|_| BrokenRing)?;
    }
}

/// What the device did with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Done with it: it is used, with this many bytes written into its buffers.
    Used(u32),
    /// Done with it, and the round's own budget (bytes, time) is spent: used, then the round
    /// ends as [`Round::Budget`].
    UsedLast(u32),
    /// Not now: the chain goes back to the ring untouched and the round ends
    /// ([`Round::Stopped`]); the device comes back when what it waits for (room in a
    /// socket, something to send) is there.
    Return,
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// No chain is left; the driver was asked to notify at the next one.
    Drained,
    /// The budget was spent with chains possibly left: come back after other events.
    Budget,
    /// The device gave a chain back ([`Served::Return`]).
    Stopped,
    /// The driver broke the ring: the device asked for a reset.
    Broken,
}

impl Round {
    /// Whether the caller should come back for more without a new notification.
    pub fn more(self) -> bool {
        self == Round::Budget
    }
}

/// Serves queue `index` (`queue`, in `mem`, signalling `interrupt`): at most `budget` chains,
/// each handed to `serve_chain`. See the module documentation.
pub fn serve<'a>(
    queue: &mut Queue,
    index: usize,
    mem: &'a GuestMemoryMmap,
    interrupt: &Interrupt,
    budget: usize,
    mut serve_chain: impl FnMut(Chain<'a>) -> Served,
) -> Round {
    let mut used = 0usize;
    let _ = queue.disable_notification(mem);
    let round = loop {
        if used == budget {
            break Round::Budget;
        }
        let chain = match next_chain(queue, mem) {
            Ok(Some(chain)) => chain,
            Ok(None) => break Round::Drained,
            Err(BrokenRing) => break Round::Broken,
        };
        let head = chain.head_index();
        let (len, last) = match serve_chain(chain) {
            Served::Used(len) => (len, false),
            Served::UsedLast(len) => (len, true),
            Served::Return => {
                queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                break Round::Stopped;
            }
        };
        if queue.add_used(mem, head, len).is_err() {
            break Round::Broken;
        }
        used += 1;
        if last {
            break Round::Budget;
        }
    };
    if round == Round::Broken {
        interrupt.fail();
    }
    if used > 0 && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.queue(index);
    }
    round
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::INT_USED_RING;
    use virtio_queue::QueueState;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    const SIZE: u16 = 16;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn queue(event_idx: bool) -> (Queue, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_000)]).unwrap();
        let q = Queue::try_from(QueueState {
            max_size: SIZE,
            size: SIZE,
            ready: true,
            desc_table: DESC,
            avail_ring: AVAIL,
            used_ring: USED,
            event_idx_enabled: event_idx,
            ..QueueState::default()
        })
        .unwrap();
        (q, mem)
    }

    /// Makes descriptor `n` (one 64-byte buffer) available as the `n`th chain.
    fn offer(mem: &GuestMemoryMmap, n: u16) {
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&(0x8000 + 64 * u64::from(n)).to_le_bytes());
        desc[8..12].copy_from_slice(&64u32.to_le_bytes());
        mem.write_slice(&desc, GuestAddress(DESC + 16 * u64::from(n)))
            .unwrap();
        mem.write_obj(n, GuestAddress(AVAIL + 4 + 2 * u64::from(n)))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(AVAIL + 2)).unwrap();
    }

    fn interrupt() -> Interrupt {
        Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())
    }

    fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    #[test]
    fn next_chain_publishes_the_avail_event_once_drained() {
        let (mut q, mem) = queue(true);
        offer(&mem, 0);
        offer(&mem, 1);
        let avail_event = GuestAddress(USED + 4 + 8 * u64::from(SIZE));
        for want in 0..2u16 {
            let chain = next_chain(&mut q, &mem).unwrap().unwrap();
            assert_eq!(chain.head_index(), want);
            // Not drained yet: the driver is not asked to notify.
            assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 0);
        }
        assert!(next_chain(&mut q, &mem).unwrap().is_none());
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
    }

    #[test]
    fn next_chain_reenables_notifications_without_event_idx() {
        let (mut q, mem) = queue(false);
        offer(&mem, 0);
        q.disable_notification(&mem).unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 1); // NO_NOTIFY
        assert!(next_chain(&mut q, &mem).unwrap().is_some());
        assert!(next_chain(&mut q, &mem).unwrap().is_none());
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED)).unwrap(), 0);
    }

    #[test]
    fn next_chain_reports_a_broken_avail_index() {
        let (mut q, mem) = queue(true);
        // An avail index more than the queue's size ahead of the device.
        mem.write_obj(SIZE + 5, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(next_chain(&mut q, &mem).err(), Some(BrokenRing));
    }

    #[test]
    fn a_round_uses_chains_until_drained_and_notifies_once() {
        let (mut q, mem) = queue(false);
        for n in 0..3 {
            offer(&mem, n);
        }
        let irq = interrupt();
        let mut seen = Vec::new();
        let round = serve(&mut q, 0, &mem, &irq, 64, |c| {
            seen.push(c.head_index());
            Served::Used(7)
        });
        assert_eq!(round, Round::Drained);
        assert_eq!(seen, vec![0, 1, 2]);
        assert_eq!(used_idx(&mem), 3);
        let len: u32 = mem.read_obj(GuestAddress(USED + 4 + 4)).unwrap();
        assert_eq!(len, 7);
        assert_eq!(irq.status(), INT_USED_RING);
    }

    #[test]
    fn the_budget_and_the_device_end_a_round_early() {
        let (mut q, mem) = queue(false);
        for n in 0..4 {
            offer(&mem, n);
        }
        let irq = interrupt();
        assert_eq!(
            serve(&mut q, 0, &mem, &irq, 1, |_| Served::Used(0)),
            Round::Budget
        );
        assert!(Round::Budget.more());
        assert_eq!(
            serve(&mut q, 0, &mem, &irq, 9, |_| Served::UsedLast(0)),
            Round::Budget
        );
        assert_eq!(used_idx(&mem), 2);
        // Returned: the chain stays available and is seen again next round.
        assert_eq!(
            serve(&mut q, 0, &mem, &irq, 9, |_| Served::Return),
            Round::Stopped
        );
        assert_eq!(used_idx(&mem), 2);
        let mut heads = Vec::new();
        serve(&mut q, 0, &mem, &irq, 9, |c| {
            heads.push(c.head_index());
            Served::Used(0)
        });
        assert_eq!(heads, vec![2, 3]);
    }

    #[test]
    fn a_broken_ring_asks_for_a_reset_and_nothing_is_used() {
        let (mut q, mem) = queue(true);
        mem.write_obj(SIZE + 5, GuestAddress(AVAIL + 2)).unwrap();
        let irq = interrupt();
        let round = serve(&mut q, 0, &mem, &irq, 9, |_| Served::Used(0));
        assert_eq!(round, Round::Broken);
        assert!(irq.needs_reset());
        assert_eq!(used_idx(&mem), 0);
    }
}
