//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! One page of registers per device, decoded into calls on [`VirtioCommon`] (negotiation,
//! status, queues, activation and reset are the same on every transport). Queue notifications normally never reach this code: the device
//! manager registers an ioeventfd on QueueNotify so KVM signals the queue's eventfd itself;
//! a write that does reach it (no ioeventfd) signals the same eventfd.

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{lock, CommonState, Ring, TransportState, VirtioCommon, VirtioTransport};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::BusDevice;

pub use super::status;

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

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    common: VirtioCommon,
    queue_events: Vec<EventFd>,
}

impl MmioTransport {
    /// A transport for `device`, whose queue `i` is notified through `queue_events[i]`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<Interrupt>,
        queue_events: Vec<EventFd>,
    ) -> Self {
        MmioTransport {
            common: VirtioCommon::new(device, mem, interrupt),
            queue_events,
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let c = &self.common;
        let queue = c.selected_queue();
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => lock(c.device()).device_type(),
            0x0c => VENDOR_ID,
            0x10 => c.device_features_word(),
            0x34 => queue.map_or(0, |q| u32::from(q.max_size)),
            0x44 => queue.map_or(0, |q| u32::from(q.ready)),
            0x60 => c.interrupt().status(),
            0x70 => c.status(),
            // SHMLenLow/High, SHMBaseLow/High: no device here has shared memory regions, and
            // a region that does not exist reads as length (and base) -1 (virtio 1.2, 4.2.2);
            // 0 would be a region of length 0 at 0, which virtiofs tries to reserve.
            0xb0 | 0xb4 | 0xb8 | 0xbc => u32::MAX,
            0xfc => c.config_generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let c = &mut self.common;
        match offset {
            0x14 => c.device_features_sel = v,
            0x20 => c.write_driver_features_word(v),
            0x24 => c.driver_features_sel = v,
            0x30 => c.queue_sel = v,
            0x38 => {
                if let Some(q) = c.configurable_queue() {
                    q.size = v.min(u32::from(u16::MAX)) as u16;
                }
            }
            0x44 => c.set_queue_ready(v == 1),
            0x50 => {
                if let Some(event) = self.queue_events.get(v as usize) {
                    let _ = event.write(1);
                }
            }
            0x64 => c.interrupt().ack(v),
            0x70 => c.write_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                let ring = match offset {
                    0x80 | 0x84 => Ring::Descriptors,
                    0x90 | 0x94 => Ring::Driver,
                    _ => Ring::Device,
                };
                c.write_queue_address(ring, offset & 4 != 0, v);
            }
            _ => {}
        }
    }
}

/// A virtio-mmio transport's state, as saved in a snapshot: it has no registers beyond the
/// common ones.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioState {
    /// The negotiation, status and queues.
    pub common: CommonState,
}

impl VirtioTransport for MmioTransport {
    fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        self.common.device()
    }

    fn save_with(&self, device: &dyn VirtioDevice) -> TransportState {
        TransportState::Mmio(MmioState {
            common: self.common.save_with(device),
        })
    }

    fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        let TransportState::Mmio(state) = state else {
            return Err(format!(
                "the device was saved on virtio-{}, this VM has it on virtio-mmio",
                state.name()
            ));
        };
        self.common.restore(&state.common)?;
        self.common.resume()
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(self.common.device()).read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(self.common.device()).write_config(offset - CONFIG_OFFSET, data);
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
    use crate::devices::virtio::{ActivateError, Activation, VIRTIO_F_VERSION_1};
    use virtio_queue::{QueueState, QueueT};
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
        // No shared memory region: length and base read as -1.
        w(&mut t, 0xac, 0);
        for off in [0xb0, 0xb4, 0xb8, 0xbc] {
            assert_eq!(r(&mut t, off), u32::MAX);
        }
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
        t.common.interrupt().queue(0);
        assert_eq!(r(&mut t, 0x60), 1);
        w(&mut t, 0x64, 1);
        assert_eq!(r(&mut t, 0x60), 0);
    }
}
