//! Unit tests of the virtio-pci function (`pci.rs`): identity, capabilities, the common
//! configuration, interrupts, decoding, the PCI_CFG window, save and restore.

use super::*;
use crate::arch::x86_64::irq_routing::MsiRouter;
use crate::devices::virtio::transport::status;
use crate::devices::virtio::{ActivateError, Activation, VIRTIO_F_VERSION_1};
use virtio_queue::{QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

#[derive(Default)]
struct Dummy {
    active: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(b"config!!", offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if !a.queues[0].ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.active = false;
    }
    fn process_queue(&mut self, _: usize) -> bool {
        false
    }
    fn kind(&self) -> &'static str {
        "dummy"
    }
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        None
    }
}

struct NoRoutes;
impl MsiRouter for NoRoutes {
    fn route(&self, _: u32, _: Option<(u64, u32)>) -> Result<(), String> {
        Ok(())
    }
}

const BAR: u64 = 0xc000_8000;

fn function() -> (VirtioPci, Arc<Mutex<Dummy>>) {
    let dev = Arc::new(Mutex::new(Dummy::default()));
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    let fds = (0..2)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let msix = Arc::new(Msix::new(fds, vec![24, 25], Arc::new(NoRoutes)));
    let t = VirtioPci::new(
        dev.clone(),
        PciResources {
            mem,
            vm_fd: None,
            queue_events: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
            intx: EventFd::new(EFD_NONBLOCK).unwrap(),
            gsi: 5,
            msix,
            bar: BAR,
            window: (0xc000_0000, 0xd000_0000),
        },
    );
    (t, dev)
}

fn cfg32(t: &mut VirtioPci, off: u16) -> u32 {
    let mut d = [0; 4];
    t.read_config(off, &mut d);
    u32::from_le_bytes(d)
}

fn bar_w(t: &mut VirtioPci, off: u64, data: &[u8]) {
    t.write_bar(0, off, data);
}

fn bar_r16(t: &mut VirtioPci, off: u64) -> u16 {
    let mut d = [0; 2];
    t.read_bar(0, off, &mut d);
    u16::from_le_bytes(d)
}

/// The virtio capabilities, by cfg_type: (offset in config space, bar offset, length).
fn caps(t: &mut VirtioPci) -> Vec<(u8, u8, u32, u32)> {
    let mut out = Vec::new();
    let mut at = cfg32(t, 0x34) as u8;
    while at != 0 {
        let head = cfg32(t, u16::from(at));
        if head as u8 == CAP_VENDOR {
            let off = cfg32(t, u16::from(at) + 8);
            let len = cfg32(t, u16::from(at) + 12);
            out.push(((head >> 24) as u8, at, off, len));
        }
        at = (head >> 8) as u8;
    }
    out
}

#[test]
fn identity_capabilities_and_bar() {
    let (mut t, _) = function();
    assert_eq!(cfg32(&mut t, 0), 0x1042_1af4);
    assert_eq!(cfg32(&mut t, 0x2c), 0x0040_1af4);
    assert_eq!(cfg32(&mut t, 0x10), BAR as u32 | 0b100);
    let c = caps(&mut t);
    let types: Vec<u8> = c.iter().map(|x| x.0).collect();
    assert_eq!(types, vec![1, 2, 3, 4, 5]);
    assert_eq!((c[0].2, c[0].3), (0, 0x38));
    assert_eq!(c[1].2, 0x3000);
    assert_eq!(cfg32(&mut t, u16::from(c[1].1) + 16), NOTIFY_MULTIPLIER);
    // MSI-X: 2 vectors (table size field 1), table and PBA in BAR0.
    assert_eq!(cfg32(&mut t, 0x40) & 0xff, 0x11);
    assert_eq!(cfg32(&mut t, 0x40) >> 16, 1);
    assert_eq!(cfg32(&mut t, 0x44), 0x4000);
    assert_eq!(cfg32(&mut t, 0x48), 0x6000);
    assert_eq!(cfg32(&mut t, 0x3c) & 0xffff, 0x0105, "INTA# on GSI 5");
}

#[test]
fn the_driver_sets_the_device_up_through_the_common_configuration() {
    let (mut t, dev) = function();
    bar_w(
        &mut t,
        0x14,
        &[status::ACKNOWLEDGE as u8 | status::DRIVER as u8],
    );
    bar_w(&mut t, 0x08, &1u32.to_le_bytes());
    bar_w(&mut t, 0x0c, &1u32.to_le_bytes()); // VERSION_1 (bit 32)
    bar_w(&mut t, 0x14, &[0b1011]);
    assert_eq!(bar_r16(&mut t, 0x14) as u8, 0b1011);
    assert_eq!(bar_r16(&mut t, 0x12), 1, "num_queues");
    bar_w(&mut t, 0x16, &0u16.to_le_bytes());
    assert_eq!(bar_r16(&mut t, 0x18), 16);
    bar_w(&mut t, 0x20, &0x1000u64.to_le_bytes());
    bar_w(&mut t, 0x28, &0x2000u32.to_le_bytes());
    bar_w(&mut t, 0x30, &0x3000u32.to_le_bytes());
    bar_w(&mut t, 0x1a, &1u16.to_le_bytes());
    assert_eq!(bar_r16(&mut t, 0x1a), 1);
    bar_w(&mut t, 0x1a, &7u16.to_le_bytes());
    assert_eq!(bar_r16(&mut t, 0x1a), NO_VECTOR, "beyond the table");
    bar_w(&mut t, 0x1a, &0u16.to_le_bytes());
    bar_w(&mut t, 0x1c, &1u16.to_le_bytes());
    bar_w(&mut t, 0x14, &[0b1111]);
    assert!(dev.lock().unwrap().active);
    assert_eq!(bar_r16(&mut t, 0x1e), 0, "queue_notify_off");
    // Notify without an ioeventfd signals the queue's eventfd.
    bar_w(&mut t, NOTIFY_OFFSET, &0u16.to_le_bytes());
    assert_eq!(t.notify.events[0].read().unwrap(), 1);
    // The device config at 0x2000.
    let mut d = [0; 4];
    t.read_bar(0, DEVICE_OFFSET + 2, &mut d);
    assert_eq!(&d, b"nfig");
    // INTx: the ISR reads and clears.
    t.interrupt().queue(0);
    assert_eq!(bar_r16(&mut t, ISR_OFFSET) & 0xff, 1);
    assert_eq!(bar_r16(&mut t, ISR_OFFSET) & 0xff, 0);
    // Reset.
    bar_w(&mut t, 0x14, &[0]);
    assert!(!dev.lock().unwrap().active);
    assert_eq!(bar_r16(&mut t, 0x1a), NO_VECTOR);
}

#[test]
fn intx_shows_in_the_status_register_and_obeys_intx_disable() {
    let (mut t, _) = function();
    let status = |t: &mut VirtioPci| cfg32(t, 0x04) >> 16;
    t.interrupt().queue(0);
    assert_ne!(status(&mut t) & u32::from(STATUS_INTERRUPT), 0);
    bar_r16(&mut t, ISR_OFFSET);
    assert_eq!(
        status(&mut t) & u32::from(STATUS_INTERRUPT),
        0,
        "reading ISR deasserts"
    );
    // INTx Disable: the status still says why, the line stays low until it is cleared.
    t.write_config(0x04, &(COMMAND_MEMORY | COMMAND_INTX_DISABLE).to_le_bytes());
    t.interrupt().queue(0);
    assert_ne!(status(&mut t) & u32::from(STATUS_INTERRUPT), 0);
    assert!(!t.vectors.line_allowed());
    t.write_config(0x04, &COMMAND_MEMORY.to_le_bytes());
    assert!(t.vectors.line_allowed());
}

#[test]
fn decoding_follows_the_command_register_and_the_window() {
    let (mut t, _) = function();
    assert_eq!(t.bar_at(BAR + 0x10), Some((0, 0x10)));
    t.write_config(0x04, &[0]);
    assert_eq!(t.bar_at(BAR + 0x10), None, "memory decode off");
    assert_eq!(t.notify.at, None);
    t.write_config(0x04, &[2]);
    t.write_config(0x10, &0xe000_0000u32.to_le_bytes());
    assert_eq!(t.bar_at(0xe000_0000), None, "outside the window");
    t.write_config(0x10, &[0xff; 4]);
    t.write_config(0x14, &[0xff; 4]);
    assert_eq!(cfg32(&mut t, 0x10), 0xffff_8004);
    assert_eq!(t.bar_at(u64::MAX - 0xfff), None);
    t.write_config(0x10, &0xc001_0000u32.to_le_bytes());
    t.write_config(0x14, &[0; 4]);
    assert_eq!(t.bar_at(0xc001_0004), Some((0, 4)));
    assert_eq!(t.notify.at, Some(0xc001_0000));
}

#[test]
fn the_pci_cfg_capability_reaches_the_bar() {
    let (mut t, _) = function();
    let cap = caps(&mut t).iter().find(|c| c.0 == CAP_PCI_CFG).unwrap().1;
    let at = u16::from(cap);
    t.write_config(at + 4, &[0]); // BAR 0
    t.write_config(at + 8, &(DEVICE_OFFSET as u32).to_le_bytes());
    t.write_config(at + 12, &4u32.to_le_bytes());
    assert_eq!(&cfg32(&mut t, at + 16).to_le_bytes(), b"conf");
    t.write_config(at + 8, &0x14u32.to_le_bytes());
    t.write_config(at + 12, &1u32.to_le_bytes());
    t.write_config(at + 16, &[1, 0, 0, 0]);
    assert_eq!(
        bar_r16(&mut t, 0x14) as u8,
        1,
        "a status write through the window"
    );
}

#[test]
fn a_saved_function_restores_and_refuses_the_other_transport() {
    let (mut t, _) = function();
    t.write_config(0x10, &0xc002_0000u32.to_le_bytes());
    t.write_config(0x42, &msix::CONTROL_ENABLE.to_le_bytes());
    bar_w(&mut t, 0x10, &1u16.to_le_bytes());
    let state = t.save_with(&Dummy::default());
    let (mut t2, _) = function();
    t2.restore(&state).unwrap();
    assert_eq!(t2.bar_at(0xc002_0000), Some((0, 0)));
    assert!(t2.msix.enabled());
    assert_eq!(bar_r16(&mut t2, 0x10), 1);
    let TransportState::Pci(p) = state else {
        panic!()
    };
    let mmio = TransportState::Mmio(super::super::mmio::MmioState { common: p.common });
    let err = t2.restore(&mmio).unwrap_err();
    assert!(err.contains("virtio-mmio"), "{err}");
}
