//! virtio devices, on either transport.
//!
//! A device implements [`VirtioDevice`]: its type, features, configuration space and what it
//! does with its queues once the driver has set them up. A transport ([`transport::mmio`] or
//! [`transport::pci`]) does the rest the same way for every device, through
//! [`transport::VirtioCommon`]: feature negotiation, the status state machine, queue set-up
//! and reset. A device signals the driver through its [`Interrupt`], which is an irqfd on a
//! GSI or MSI-X vectors depending on the transport; the device never knows which. The device
//! manager ([`crate::device_manager`]) gives each device its transport, interrupts, one
//! ioeventfd per queue and its ACPI entry, and has the event loop call
//! [`VirtioDevice::process_queue`] when the guest notifies a queue — so requests are served
//! on the event-loop thread, never on a vCPU thread.
//!
//! Split virtqueues come from the `virtio-queue` crate; the feature and type numbers from
//! `virtio-bindings`.

pub mod block;
pub mod bufs;
pub mod fs;
pub mod interrupt;
pub mod net;
pub mod p9;
pub mod queue;
pub mod rng;
pub mod share;
pub mod transport;
pub mod vsock;
pub mod wire;

use crate::sync::Locked;
use std::sync::{Arc, Mutex};

pub use interrupt::{Interrupt, INT_CONFIG, INT_USED_RING};
pub use queue::{next_chain, serve, BrokenRing, Round, Served};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_F_VERSION_1`: the device speaks virtio 1.x (little-endian, modern layout). The
/// transport refuses a driver that does not accept it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_EVENT_IDX`: notification suppression with used/avail event indices.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Reads `data.len()` bytes of a device's configuration space `config` at `offset`; bytes
/// past its end (or an offset beyond any) read as 0, as the spec asks of unused space.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// The queues, checked against guest memory, in queue-index order (unused ones too).
    pub queues: Vec<Queue>,
    /// Guest memory, where the rings and buffers are.
    pub mem: Arc<GuestMemoryMmap>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

/// A one-queue device's running state: its queue, guest memory and interrupt.
pub struct SingleQueue {
    /// The queue.
    pub queue: Queue,
    /// Guest memory, where the ring and buffers are.
    pub mem: Arc<GuestMemoryMmap>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
}

/// What a device with several queues keeps once active: the queues, guest memory and the
/// interrupt (see [`Activation::queues_ready`]).
pub struct ActiveQueues {
    /// The queues, in the device's order.
    pub queues: Vec<Queue>,
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// How the device signals the driver.
    pub interrupt: Arc<Interrupt>,
}

impl Activation {
    /// All the queues, once the first `required` of them are ready (the rest the driver may
    /// leave unused).
    pub fn queues_ready(self, required: usize) -> Result<ActiveQueues, ActivateError> {
        if let Some(i) = self.queues.iter().take(required).position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(i));
        }
        Ok(ActiveQueues {
            queues: self.queues,
            mem: self.mem,
            interrupt: self.interrupt,
        })
    }

    /// The first queue, which a one-queue device needs ready, with memory and interrupt.
    pub fn single_queue(self) -> Result<SingleQueue, ActivateError> {
        let Some(queue) = self.queues.into_iter().next().filter(|q| q.ready()) else {
            return Err(ActivateError::QueueNotReady(0));
        };
        Ok(SingleQueue {
            queue,
            mem: self.mem,
            interrupt: self.interrupt,
        })
    }
}

/// A device refused to start with what the driver set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue the device needs is not ready.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
}

/// A virtio device, as the transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device type (2: block, 1: network, 19: vsock).
    fn device_type(&self) -> u32;
    /// The features offered, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// The largest size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space at `offset`; bytes past it read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops serving and drops the queues (the driver wrote 0 to Status).
    fn reset(&mut self);
    /// Serves queue `index` after the guest notified it; returns whether work is left (it
    /// stopped after a bounded batch), so the caller comes back after other events. Runs
    /// on the event-loop thread.
    fn process_queue(&mut self, index: usize) -> bool;
    /// A short name of the device's kind for people, e.g. `virtio-blk`.
    fn kind(&self) -> &'static str;

    /// A process the device's backend runs (passt), which the event loop stops with the VM
    /// (its seccomp filter allows signalling exactly these).
    fn child_pid(&self) -> Option<u32> {
        None
    }

    /// What the device counted, by name (e.g. `("requests", 12)`), for statistics.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// The VM has stopped: let go of host resources others may want (a TAP, a child
    /// process, a listening socket) now rather than when the VM object is dropped.
    fn release(&mut self) {}

    /// Where the device is in each of its queues while it runs (None before activation):
    /// saved in snapshots. The device's other state is host-side (open files, sockets) and
    /// is rebuilt from the configuration.
    fn queue_states(&self) -> Option<Vec<QueueState>>;

    /// Called once a restored (or forked) device runs again with its saved queues: a device
    /// whose host side could not be carried over tells the driver here (vsock resets its
    /// connections).
    fn restored(&mut self) {}

    /// The device's handler in the event loop, given its queues' notification eventfds. The
    /// default calls [`VirtioDevice::process_queue`] for each notified queue; a device with
    /// host-side sources to watch too (vsock's sockets) brings its own.
    fn subscriber(
        device: Arc<Mutex<Self>>,
        queue_events: Vec<EventFd>,
    ) -> Box<dyn MutEventSubscriber + Send>
    where
        Self: Sized + 'static,
    {
        Box::new(QueueHandler {
            device,
            events: queue_events,
        })
    }
}

/// Serves a virtio device's queues when the guest notifies them.
pub struct QueueHandler {
    device: Arc<Mutex<dyn VirtioDevice>>,
    events: Vec<EventFd>,
}

impl MutEventSubscriber for QueueHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        let Some(event) = self.events.get(index) else {
            return;
        };
        let _ = event.read();
        let more = self.device.locked().process_queue(index);
        if more {
            // Work is left after a full batch: come back after the loop's other events.
            let _ = event.write(1);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.events.iter().enumerate() {
            let _ = ops.add(Events::with_data(event, index as u32, EventSet::IN));
        }
    }
}

/// Test support shared by the devices' unit tests: queues laid out in fresh guest memory.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use virtio_queue::QueueState;
    use vm_memory::GuestAddress;

    /// Queue `i`'s descriptor table, driver area and device area: a page each, from
    /// 0x1000 * (1 + 3i) (buffers go from 0x40000 up).
    pub fn ring(i: usize) -> (u64, u64, u64) {
        let base = 0x1000 * (1 + 3 * i as u64);
        (base, base + 0x1000, base + 0x2000)
    }

    /// Activates `dev` with all its queues ready, each `size` entries at [`ring`], in 1 MiB
    /// of fresh guest memory (returned), without EVENT_IDX.
    pub fn activate(dev: &mut dyn VirtioDevice, size: u16) -> Arc<GuestMemoryMmap> {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let queues = dev
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, &max_size)| {
                let (d, a, u) = ring(i);
                Queue::try_from(QueueState {
                    max_size,
                    size,
                    ready: true,
                    desc_table: d,
                    avail_ring: a,
                    used_ring: u,
                    ..QueueState::default()
                })
                .unwrap()
            })
            .collect();
        dev.activate(Activation {
            queues,
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new(
                EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
            )),
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        mem
    }
}
