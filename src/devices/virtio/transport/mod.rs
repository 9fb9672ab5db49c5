//! The virtio transports, and what they share.
//!
//! A transport is how the driver reaches a device's registers: a page of MMIO registers
//! ([`mmio`]) or a PCI function with capabilities in a memory BAR ([`pci`]). What the driver
//! does through them is the same on both and lives here, in [`VirtioCommon`]: feature
//! negotiation, the device status state machine, queue set-up, activation (queues checked
//! against guest memory, handed to the device) and reset, and the state snapshots carry.
//! A transport only decodes its registers into calls on it.

pub mod mmio;
pub mod pci;

use crate::sync::Locked;
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Locks a device, taking it over from a thread that panicked while holding it (the device's
/// state is still consistent: every method leaves it so before it could panic).
pub fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.locked()
}

/// A queue's three areas, whose addresses the driver writes 32 bits at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// The descriptor table.
    Descriptors,
    /// The driver area (avail ring).
    Driver,
    /// The device area (used ring).
    Device,
}

/// The transport-neutral half of a virtio transport: see the module documentation.
pub struct VirtioCommon {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    /// The queues as the driver configures them; plain values until DRIVER_OK.
    queues: Vec<QueueState>,
    /// The queue the driver's queue registers address.
    pub queue_sel: u32,
    /// Which 32 bits of the device's features the driver reads.
    pub device_features_sel: u32,
    /// Which 32 bits of its own features the driver writes.
    pub driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl VirtioCommon {
    /// The common state of a transport for `device`, whose interrupt is `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        let queues = fresh_queues(&device);
        VirtioCommon {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// How many queues the device has.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// The selected 32 bits of the device's features.
    pub fn device_features_word(&self) -> u32 {
        let features = lock(&self.device).features();
        match self.device_features_sel {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    /// The selected 32 bits of the driver's features, as it wrote them.
    pub fn driver_features_word(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver writes the selected 32 bits of the features it accepts (only while it
    /// negotiates: after DRIVER, before FEATURES_OK).
    pub fn write_driver_features_word(&mut self, v: u32) {
        if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            return;
        }
        let v = u64::from(v);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
            _ => {}
        }
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The selected queue's configuration, if it exists.
    pub fn selected_queue(&self) -> Option<&QueueState> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, while the driver may still change it (before DRIVER_OK and
    /// before it marked the queue ready).
    pub fn configurable_queue(&mut self) -> Option<&mut QueueState> {
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(self.queue_sel as usize)
            .filter(|q| !q.ready)
    }

    /// The driver writes the low (`high` false) or high 32 bits of one of the selected queue's
    /// ring addresses (while it may still change the queue).
    pub fn write_queue_address(&mut self, ring: Ring, high: bool, v: u32) {
        let Some(q) = self.configurable_queue() else {
            return;
        };
        let field = match ring {
            Ring::Descriptors => &mut q.desc_table,
            Ring::Driver => &mut q.avail_ring,
            Ring::Device => &mut q.used_ring,
        };
        *field = if high {
            (*field & 0xffff_ffff) | (u64::from(v) << 32)
        } else {
            (*field & !0xffff_ffff) | u64::from(v)
        };
    }

    /// The driver sets or clears the selected queue's ready flag (before DRIVER_OK).
    pub fn set_queue_ready(&mut self, ready: bool) {
        if self.status & status::DRIVER_OK != 0 {
            return;
        }
        if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
            q.ready = ready;
        }
    }

    /// The device status as the driver reads it (DEVICE_NEEDS_RESET included).
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            status::DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    /// Whether the device runs (the driver set DRIVER_OK and it started).
    pub fn running(&self) -> bool {
        self.status & status::DRIVER_OK != 0
    }

    /// ConfigGeneration.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// The driver writes the status: 0 resets, otherwise bits move the device forward.
    pub fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Status only gains bits; anything else is a driver bug we ignore (as the spec lets
        // the device do), except FAILED, which the driver may set at any time.
        if v & self.status != self.status {
            return;
        }
        let new = v & !self.status;
        let mut accepted = self.status | (new & (status::ACKNOWLEDGE | status::FAILED));
        if self.status & status::ACKNOWLEDGE != 0 || new & status::ACKNOWLEDGE != 0 {
            accepted |= new & status::DRIVER;
        }
        if new & status::FEATURES_OK != 0 && accepted & status::DRIVER != 0 {
            let offered = lock(&self.device).features();
            if self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0
            {
                accepted |= status::FEATURES_OK;
            }
        }
        if new & status::DRIVER_OK != 0 && accepted & status::FEATURES_OK != 0 {
            if self.activate() {
                accepted |= status::DRIVER_OK;
            } else {
                self.interrupt.fail();
            }
        }
        self.status = accepted;
    }

    /// Builds the queues the driver set up, checks them against guest memory and hands them
    /// to the device. Returns whether the device started.
    fn activate(&mut self) -> bool {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for state in &self.queues {
            let queue = if state.ready {
                let state = QueueState {
                    event_idx_enabled: event_idx,
                    ..*state
                };
                match Queue::try_from(state) {
                    Ok(q) if q.is_valid(self.mem.as_ref()) => q,
                    _ => return false,
                }
            } else {
                match Queue::new(state.max_size) {
                    Ok(q) => q,
                    Err(_) => return false,
                }
            };
            queues.push(queue);
        }
        let activation = Activation {
            queues,
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
        };
        lock(&self.device).activate(activation).is_ok()
    }

    /// Device reset: the device stops and forgets its queues, the registers go back to their
    /// power-on values and the configuration generation moves on.
    pub fn reset(&mut self) {
        lock(&self.device).reset();
        self.interrupt.reset();
        self.queues = fresh_queues(&self.device);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// The state to save, with the device already locked by the caller (so that it cannot
    /// serve its queues, and write guest memory, until the whole snapshot is taken).
    pub fn save_with(&self, device: &dyn VirtioDevice) -> CommonState {
        let live = if self.running() {
            device.queue_states()
        } else {
            None
        };
        CommonState {
            device_type: device.device_type(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            queues: live
                .unwrap_or_else(|| self.queues.clone())
                .iter()
                .map(QueueSnapshot::from)
                .collect(),
        }
    }

    /// Takes saved registers and queues (a freshly built transport, same device), without
    /// starting the device yet: see [`VirtioCommon::resume`].
    pub fn restore(&mut self, state: &CommonState) -> Result<(), String> {
        let device_type = lock(&self.device).device_type();
        if state.device_type != device_type || state.queues.len() != self.queues.len() {
            return Err(format!(
                "a device of type {} with {} queues was saved where this VM has type {} with {}",
                state.device_type,
                state.queues.len(),
                device_type,
                self.queues.len()
            ));
        }
        for (q, saved) in self.queues.iter_mut().zip(&state.queues) {
            if saved.max_size != q.max_size {
                return Err("a queue's maximum size changed".into());
            }
            *q = QueueState {
                max_size: q.max_size,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: false,
            };
        }
        self.queue_sel = state.queue_sel;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        Ok(())
    }

    /// After [`VirtioCommon::restore`] (and the transport's own state, which decides where
    /// interrupts go): a device that ran is activated again with its queues where they were,
    /// then told it was restored.
    pub fn resume(&mut self) -> Result<(), String> {
        if self.running() && !self.interrupt.needs_reset() {
            if !self.activate() {
                return Err("the saved queues do not fit guest memory".into());
            }
            lock(&self.device).restored();
        }
        Ok(())
    }
}

fn fresh_queues(device: &Arc<Mutex<dyn VirtioDevice>>) -> Vec<QueueState> {
    lock(device)
        .queue_max_sizes()
        .iter()
        .map(|&max_size| QueueState {
            max_size,
            size: max_size,
            ..QueueState::default()
        })
        .collect()
}

/// A queue's configuration and position, as saved in a snapshot (virtio-queue's
/// `QueueState`, which has no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// The device's maximum.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// The driver marked it ready.
    pub ready: bool,
    /// Ring addresses.
    pub desc_table: u64,
    /// Ring addresses.
    pub avail_ring: u64,
    /// Ring addresses.
    pub used_ring: u64,
    /// Where the device is in the avail ring.
    pub next_avail: u16,
    /// Where the device is in the used ring.
    pub next_used: u16,
}

impl From<&QueueState> for QueueSnapshot {
    fn from(q: &QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
        }
    }
}

/// What every transport saves: the negotiation, the status and the queues.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommonState {
    /// The virtio device type, checked on restore.
    pub device_type: u32,
    /// The selected queue.
    pub queue_sel: u32,
    /// The device-feature word selector.
    pub device_features_sel: u32,
    /// The driver-feature word selector.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// The device status.
    pub status: u32,
    /// The configuration generation.
    pub config_generation: u32,
    /// InterruptStatus / ISR.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET was raised.
    pub needs_reset: bool,
    /// The queues: as the driver set them up and, once running, where the device is in them.
    pub queues: Vec<QueueSnapshot>,
}

/// A transport's saved state: which transport, and its registers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TransportState {
    /// virtio-mmio.
    Mmio(mmio::MmioState),
    /// virtio-pci.
    Pci(pci::PciState),
}

impl TransportState {
    /// The transport's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TransportState::Mmio(_) => "mmio",
            TransportState::Pci(_) => "pci",
        }
    }
}

/// A transport, as the VM sees it when it saves and restores devices.
pub trait VirtioTransport: Send {
    /// The device behind it.
    fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>>;
    /// Its state, with the device already locked by the caller.
    fn save_with(&self, device: &dyn VirtioDevice) -> TransportState;
    /// Takes a saved state (a freshly built transport, same device).
    fn restore(&mut self, state: &TransportState) -> Result<(), String>;
}
