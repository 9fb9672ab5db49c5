//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! One page of registers per device. The guest reads the device's identity and features,
//! accepts features, sets up the queues and moves the status forward; on DRIVER_OK the
//! transport checks the queues against guest memory and hands them to the device. Writing 0
//! to Status resets both. Queue notifications normally never reach this code: the device
//! manager registers an ioeventfd on QueueNotify so KVM signals the queue's eventfd itself;
//! a write that does reach it (no ioeventfd) signals the same eventfd.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The register layout of virtio 1.x; version 1 is the legacy layout.
pub const VERSION: u32 = 2;
/// The vendor id the guest sees ("VMMR").
pub const VENDOR_ID: u32 = 0x524d_4d56;
/// QueueNotify's offset: where the device manager puts each queue's ioeventfd.
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Where the device-specific configuration space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

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

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<Interrupt>,
    queue_events: Vec<EventFd>,
    /// The queues as the driver configures them; plain values until DRIVER_OK.
    queues: Vec<QueueState>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// A transport for `device`, whose queue `i` is notified through `queue_events[i]`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<Interrupt>,
        queue_events: Vec<EventFd>,
    ) -> Self {
        let queues = Self::fresh_queues(&device);
        MmioTransport {
            device,
            mem,
            interrupt,
            queue_events,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
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

    fn device_features(&self) -> u64 {
        lock(&self.device).features()
    }

    /// The selected queue, while the driver may still change it (before DRIVER_OK and
    /// before it marked the queue ready).
    fn selected_queue(&mut self) -> Option<&mut QueueState> {
        if self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(self.queue_sel as usize)
            .filter(|q| !q.ready)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => lock(&self.device).device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => queue.map_or(0, |q| u32::from(q.max_size)),
            0x44 => queue.map_or(0, |q| u32::from(q.ready)),
            0x60 => self.interrupt.status(),
            0x70 => {
                let needs_reset = if self.interrupt.needs_reset() {
                    status::DEVICE_NEEDS_RESET
                } else {
                    0
                };
                self.status | needs_reset
            }
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let negotiating = self.status & (status::DRIVER | status::FEATURES_OK) == status::DRIVER;
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 if negotiating => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.selected_queue() {
                    q.size = v.min(u32::from(u16::MAX)) as u16;
                }
            }
            0x44 if self.status & status::DRIVER_OK == 0 => {
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    q.ready = v == 1;
                }
            }
            0x50 => {
                if let Some(event) = self.queue_events.get(v as usize) {
                    let _ = event.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.write_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                if let Some(q) = self.selected_queue() {
                    let field = match offset {
                        0x80 | 0x84 => &mut q.desc_table,
                        0x90 | 0x94 => &mut q.avail_ring,
                        _ => &mut q.used_ring,
                    };
                    *field = if offset & 4 == 0 {
                        (*field & !0xffff_ffff) | u64::from(v)
                    } else {
                        (*field & 0xffff_ffff) | (u64::from(v) << 32)
                    };
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
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
            let offered = self.device_features();
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
        let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
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

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.interrupt.reset();
        self.queues = Self::fresh_queues(&self.device);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.config_generation = self.config_generation.wrapping_add(1);
    }
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

/// A transport's registers and its device's queues, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioState {
    /// The virtio device type, checked on restore.
    pub device_type: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// Status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// DEVICE_NEEDS_RESET was raised.
    pub needs_reset: bool,
    /// The queues: as the driver set them up and, once running, where the device is in them.
    pub queues: Vec<QueueSnapshot>,
}

impl crate::devices::Persist for MmioTransport {
    type State = MmioState;

    fn save(&self) -> MmioState {
        self.save_with(&*lock(&self.device))
    }

    fn restore(&mut self, state: &MmioState) -> Result<(), String> {
        self.restore_state(state)
    }
}

impl MmioTransport {
    /// [`Persist::save`](crate::devices::Persist::save) with this transport's device already
    /// locked by the caller, so that it cannot serve its queues (and write guest memory)
    /// until the whole snapshot, memory included, is taken.
    pub fn save_with(&self, device: &dyn VirtioDevice) -> MmioState {
        let live = if self.status & status::DRIVER_OK != 0 {
            device.queue_states()
        } else {
            None
        };
        MmioState {
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

    /// Takes a saved state (a freshly built transport, same device). A running device is
    /// activated again with its queues where they were, then told it was restored.
    fn restore_state(&mut self, state: &MmioState) -> Result<(), String> {
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
        if state.status & status::DRIVER_OK != 0 && !state.needs_reset {
            if !self.activate() {
                return Err("the saved queues do not fit guest memory".into());
            }
            lock(&self.device).restored();
        }
        Ok(())
    }
}

fn lock(
    device: &Arc<Mutex<dyn VirtioDevice>>,
) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            if offset % 4 == 0 {
                self.write_register(offset, u32::from_le_bytes(bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::ActivateError;
    use vm_memory::GuestAddress;

    /// A device that records what the transport did to it.
    #[derive(Default)]
    struct Dummy {
        active: Option<(usize, u64)>,
        resets: usize,
        config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1 << 5
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = *self.config.get(offset as usize + i).unwrap_or(&0);
            }
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            if !a.queues[0].ready() {
                return Err(ActivateError::QueueNotReady(0));
            }
            self.active = Some((a.queues.len(), a.features));
            Ok(())
        }
        fn queue_states(&self) -> Option<Vec<QueueState>> {
            None
        }
        fn reset(&mut self) {
            self.active = None;
            self.resets += 1;
        }
        fn process_queue(&mut self, _index: usize) -> bool {
            false
        }
        fn kind(&self) -> &'static str {
            "dummy"
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let dev = Arc::new(Mutex::new(Dummy {
            config: *b"abcdefgh",
            ..Dummy::default()
        }));
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
        let events = vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
        (MmioTransport::new(dev.clone(), mem, irq, events), dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }
    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn set_up_queue0(t: &mut MmioTransport) {
        w(t, 0x30, 0);
        w(t, 0x38, 16);
        w(t, 0x80, 0x1000);
        w(t, 0x90, 0x2000);
        w(t, 0xa0, 0x3000);
        w(t, 0x44, 1);
    }

    #[test]
    fn identity_registers_and_features() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, 0x00), MAGIC);
        assert_eq!(r(&mut t, 0x04), 2);
        assert_eq!(r(&mut t, 0x08), 42);
        assert_eq!(r(&mut t, 0x10), 1 << 5);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1);
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 8);
        w(&mut t, 0x30, 7);
        assert_eq!(
            r(&mut t, 0x34),
            0,
            "a queue that does not exist has no size"
        );
        // Unaligned or narrow register accesses read 0 and are ignored.
        let mut b = [0xffu8; 2];
        t.read(0x00, &mut b);
        assert_eq!(b, [0, 0]);
        let mut c = [0u8; 3];
        t.read(0x102, &mut c);
        assert_eq!(&c, b"cde");
    }

    #[test]
    fn negotiation_and_activation() {
        let (mut t, dev) = transport();
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        // A feature the device does not offer: FEATURES_OK does not stick.
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 1 << 6);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, 0b1011);
        assert_eq!(r(&mut t, 0x70) & status::FEATURES_OK, 0);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 1 << 5);
        w(&mut t, 0x70, 0b1011);
        assert_eq!(r(&mut t, 0x70), 0b1011);
        set_up_queue0(&mut t);
        w(&mut t, 0x70, 0b1111);
        assert_eq!(r(&mut t, 0x70), 0b1111);
        assert_eq!(
            dev.lock().unwrap().active,
            Some((2, VIRTIO_F_VERSION_1 | 1 << 5))
        );
        // Queue registers are frozen while the device runs.
        w(&mut t, 0x38, 4);
        w(&mut t, 0x44, 0);
        assert_eq!(r(&mut t, 0x44), 1);
        // Reset.
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(r(&mut t, 0x44), 0);
        assert_eq!(dev.lock().unwrap().active, None);
        assert_eq!(dev.lock().unwrap().resets, 1);
    }

    #[test]
    fn version_1_is_required() {
        let (mut t, _) = transport();
        w(&mut t, 0x70, 3);
        w(&mut t, 0x20, 1 << 5);
        w(&mut t, 0x70, 0b1011);
        assert_eq!(r(&mut t, 0x70), 3);
    }

    #[test]
    fn bad_queues_set_needs_reset_instead_of_starting() {
        for (size, desc) in [(16, 0x7fff_0000u32), (5, 0x1000), (32, 0x1000)] {
            let (mut t, dev) = transport();
            w(&mut t, 0x70, 3);
            w(&mut t, 0x24, 1);
            w(&mut t, 0x20, 1);
            w(&mut t, 0x70, 0b1011);
            set_up_queue0(&mut t);
            w(&mut t, 0x30, 0);
            w(&mut t, 0x44, 0);
            w(&mut t, 0x38, size);
            w(&mut t, 0x80, desc);
            w(&mut t, 0x44, 1);
            w(&mut t, 0x70, 0b1111);
            let s = r(&mut t, 0x70);
            assert_eq!(s & status::DRIVER_OK, 0, "size {size} desc {desc:#x}");
            assert_ne!(s & status::DEVICE_NEEDS_RESET, 0);
            assert_eq!(r(&mut t, 0x60) & 2, 2, "config interrupt raised");
            assert_eq!(dev.lock().unwrap().active, None);
            w(&mut t, 0x70, 0);
            assert_eq!(r(&mut t, 0x70), 0);
        }
    }

    #[test]
    fn notify_without_ioeventfd_signals_the_queue_event_and_ack_clears() {
        let (mut t, _) = transport();
        w(&mut t, 0x50, 1);
        assert_eq!(t.queue_events[1].read().unwrap(), 1);
        w(&mut t, 0x50, 9); // no such queue: ignored
        t.interrupt.trigger(1);
        assert_eq!(r(&mut t, 0x60), 1);
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);
    }
}
