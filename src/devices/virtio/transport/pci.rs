//! The virtio-pci transport, modern only (virtio 1.2, section 4.1).
//!
//! A device is a PCI function (vendor 0x1af4, device 0x1040 + its virtio type) with one
//! 64-bit memory BAR holding, at fixed offsets, the common configuration, the ISR byte, the
//! device's configuration, the queue notification addresses and the MSI-X table and pending
//! bits; vendor-specific capabilities point the driver at each. The common configuration is
//! decoded into calls on [`VirtioCommon`], exactly as the MMIO registers are.
//!
//! Notifications: each queue's notify address has an ioeventfd on it while the BAR decodes
//! (memory decode on, the BAR inside the host bridge's window); moving the BAR or turning
//! decoding off moves or removes them, and a notify write that reaches the VMM (no ioeventfd)
//! signals the same eventfd. Interrupts: MSI-X vectors per queue and for the configuration
//! ([`VirtioVectors`]), or INTx when the driver does not enable MSI-X.

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{lock, CommonState, Ring, TransportState, VirtioCommon, VirtioTransport};
use crate::devices::pci::config::{
    ConfigSpace, Identity, COMMAND_INTX_DISABLE, COMMAND_MEMORY, STATUS_INTERRUPT,
};
use crate::devices::pci::msix::{self, Msix, MsixState};
use crate::devices::pci::PciFunction;
use crate::devices::virtio::interrupt::Vectors;
use crate::devices::virtio::{Interrupt, VirtioDevice};

/// Red Hat's vendor ID, which virtio devices carry.
pub const VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) device IDs are this plus the virtio device type.
pub const DEVICE_ID_BASE: u16 = 0x1040;
/// The subsystem ID of a modern device.
pub const SUBSYSTEM_ID: u16 = 0x0040;
/// BAR0's size.
pub const BAR_SIZE: u64 = 0x8000;
/// BAR0 offsets of each region.
pub const COMMON_OFFSET: u64 = 0x0000;
/// The common configuration's length.
pub const COMMON_LEN: u64 = 0x38;
/// The ISR byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// The device-specific configuration.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Queue notification addresses: queue `q` at `NOTIFY_OFFSET + NOTIFY_MULTIPLIER * q`.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// `notify_off_multiplier`.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// The MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// The MSI-X pending bits.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
/// A region's length as the capabilities state it (the ISR, device and notify regions).
const REGION_LEN: u32 = 0x1000;
/// "No vector" in config_msix_vector and queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;

/// virtio_pci_cap's cfg_type values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// The vendor-specific capability ID virtio uses.
const CAP_VENDOR: u8 = 0x09;

/// The class code a guest sees for a virtio device type (as other VMMs give them).
fn class_of(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00,  // network: Ethernet
        2 => 0x01_80_00,  // block: other mass storage
        19 => 0x07_80_00, // vsock: other communication
        _ => 0xff_00_00,  // entropy and the rest: unassigned class
    }
}

/// Where MSI-X sends each queue's and the configuration's interrupt: the vectors the driver
/// chose (virtio's queue_msix_vector and config_msix_vector).
pub struct VirtioVectors {
    msix: Arc<Msix>,
    queues: Vec<AtomicU16>,
    config: AtomicU16,
    /// The command register's INTx Disable.
    intx_disabled: AtomicBool,
}

impl VirtioVectors {
    fn new(msix: Arc<Msix>, queues: usize) -> Self {
        VirtioVectors {
            msix,
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config: AtomicU16::new(NO_VECTOR),
            intx_disabled: AtomicBool::new(false),
        }
    }

    /// What a vector register reads back after the driver wrote `v`: `v` if the table has it.
    fn accept(&self, v: u16) -> u16 {
        if usize::from(v) < self.msix.len() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn reset(&self) {
        for q in &self.queues {
            q.store(NO_VECTOR, Ordering::SeqCst);
        }
        self.config.store(NO_VECTOR, Ordering::SeqCst);
    }
}

impl Vectors for VirtioVectors {
    fn enabled(&self) -> bool {
        self.msix.enabled()
    }

    fn queue(&self, index: usize) {
        if let Some(v) = self.queues.get(index) {
            self.msix.signal(usize::from(v.load(Ordering::SeqCst)));
        }
    }

    fn config(&self) {
        self.msix
            .signal(usize::from(self.config.load(Ordering::SeqCst)));
    }

    fn line_allowed(&self) -> bool {
        !self.intx_disabled.load(Ordering::SeqCst)
    }
}

/// The queues' notification eventfds and where KVM signals them.
struct Notify {
    vm_fd: Option<Arc<VmFd>>,
    events: Vec<EventFd>,
    /// The BAR address the ioeventfds are registered at.
    at: Option<u64>,
}

impl Notify {
    fn address(base: u64, queue: usize) -> IoEventAddress {
        IoEventAddress::Mmio(base + NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER) * queue as u64)
    }

    /// Moves the ioeventfds to a BAR at `base` (None: removes them).
    fn move_to(&mut self, base: Option<u64>) {
        if self.at == base {
            return;
        }
        let Some(vm_fd) = &self.vm_fd else {
            self.at = base;
            return;
        };
        if let Some(old) = self.at.take() {
            for (q, e) in self.events.iter().enumerate() {
                let _ = vm_fd.unregister_ioevent(e, &Self::address(old, q), NoDatamatch);
            }
        }
        let Some(new) = base else {
            return;
        };
        for (q, e) in self.events.iter().enumerate() {
            if vm_fd
                .register_ioevent(e, &Self::address(new, q), NoDatamatch)
                .is_err()
            {
                // Another device's ioeventfd is there (the guest placed the BARs on top of
                // each other): none of ours then, and notifications come through
                // `write_bar`, which signals the same eventfds.
                for (q2, e2) in self.events.iter().enumerate().take(q) {
                    let _ = vm_fd.unregister_ioevent(e2, &Self::address(new, q2), NoDatamatch);
                }
                return;
            }
        }
        self.at = Some(new);
    }
}

/// A virtio device as a PCI function: see the module documentation.
pub struct VirtioPci {
    common: VirtioCommon,
    config: ConfigSpace,
    msix: Arc<Msix>,
    vectors: Arc<VirtioVectors>,
    notify: Notify,
    /// The memory window BARs decode in (the host bridge's): outside it, nothing reaches us.
    window: (u64, u64),
    msix_cap: u8,
    cfg_cap: u8,
}

/// What [`VirtioPci::new`] needs besides the device.
pub struct PciResources {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// KVM, for the queues' ioeventfds (None in unit tests).
    pub vm_fd: Option<Arc<VmFd>>,
    /// The queues' notification eventfds.
    pub queue_events: Vec<EventFd>,
    /// The INTx irqfd (registered with a resample eventfd on `gsi`).
    pub intx: EventFd,
    /// The GSI of INTx, in the interrupt line register.
    pub gsi: u32,
    /// The MSI-X vectors: one per queue and one for the configuration.
    pub msix: Arc<Msix>,
    /// Where BAR0 starts.
    pub bar: u64,
    /// The host bridge's memory window.
    pub window: (u64, u64),
}

impl VirtioPci {
    /// A function for `device`. Returns it with its interrupt (what the device signals).
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, r: PciResources) -> Self {
        let device_type = lock(&device).device_type();
        let queues = lock(&device).queue_max_sizes().len();
        let vectors = Arc::new(VirtioVectors::new(r.msix.clone(), queues));
        let interrupt = Arc::new(Interrupt::with_vectors(r.intx, vectors.clone()));
        let mut config = ConfigSpace::new(
            Identity {
                vendor: VENDOR_ID,
                device: DEVICE_ID_BASE + device_type as u16,
                class: class_of(device_type),
                revision: 1,
                subsystem_vendor: VENDOR_ID,
                subsystem: SUBSYSTEM_ID,
            },
            Some(r.gsi as u8),
        );
        config.add_bar64(0, BAR_SIZE, r.bar);
        let table_size = (r.msix.len().max(1) - 1) as u16;
        let mut cap = vec![msix::CAP_ID, 0];
        cap.extend_from_slice(&table_size.to_le_bytes());
        cap.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        cap.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        let control_mask = (msix::CONTROL_ENABLE | msix::CONTROL_MASK).to_le_bytes();
        let msix_cap = config.add_capability(
            &cap,
            &[
                0,
                0,
                control_mask[0],
                control_mask[1],
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
        );
        config.add_capability(
            &virtio_cap(CAP_COMMON, COMMON_OFFSET, COMMON_LEN as u32),
            &[],
        );
        let mut notify = virtio_cap(CAP_NOTIFY, NOTIFY_OFFSET, REGION_LEN);
        notify[2] = 20;
        notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
        config.add_capability(&notify, &[]);
        config.add_capability(&virtio_cap(CAP_ISR, ISR_OFFSET, REGION_LEN), &[]);
        config.add_capability(&virtio_cap(CAP_DEVICE, DEVICE_OFFSET, REGION_LEN), &[]);
        // VIRTIO_PCI_CAP_PCI_CFG: a window into the BARs through configuration space. The
        // driver writes bar, offset and length, then reads or writes pci_cfg_data.
        let mut cfg = virtio_cap(CAP_PCI_CFG, 0, 0);
        cfg[2] = 20;
        cfg.extend_from_slice(&[0; 4]);
        let mut cfg_mask = vec![0u8; 20];
        cfg_mask[4] = 0xff;
        cfg_mask[8..20].fill(0xff);
        let cfg_cap = config.add_capability(&cfg, &cfg_mask);
        let mut t = VirtioPci {
            common: VirtioCommon::new(device, r.mem, interrupt),
            config,
            msix: r.msix,
            vectors,
            notify: Notify {
                vm_fd: r.vm_fd,
                events: r.queue_events,
                at: None,
            },
            window: r.window,
            msix_cap,
            cfg_cap,
        };
        t.remap();
        t
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        self.common.interrupt()
    }

    /// Where BAR0 is and whether it decodes.
    fn decoding(&self) -> Option<u64> {
        let (base, size) = self.config.bar64(0);
        let (start, end) = self.window;
        let inside = base >= start && base.checked_add(size).is_some_and(|e| e <= end);
        (self.config.command() & COMMAND_MEMORY != 0 && inside).then_some(base)
    }

    /// Puts the notify ioeventfds where the BAR decodes now.
    fn remap(&mut self) {
        let at = self.decoding();
        self.notify.move_to(at);
    }

    /// The common configuration structure as the driver reads it now.
    fn common_bytes(&self) -> [u8; COMMON_LEN as usize] {
        let c = &self.common;
        let mut b = [0u8; COMMON_LEN as usize];
        let q = c.selected_queue();
        let qi = c.queue_sel as usize;
        let put16 =
            |b: &mut [u8], at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put32(&mut b, 0x00, c.device_features_sel);
        put32(&mut b, 0x04, c.device_features_word());
        put32(&mut b, 0x08, c.driver_features_sel);
        put32(&mut b, 0x0c, c.driver_features_word());
        put16(&mut b, 0x10, self.vectors.config.load(Ordering::SeqCst));
        put16(&mut b, 0x12, c.num_queues() as u16);
        b[0x14] = c.status() as u8;
        b[0x15] = c.config_generation() as u8;
        put16(&mut b, 0x16, c.queue_sel as u16);
        if let Some(q) = q {
            put16(&mut b, 0x18, q.size);
            let vector = self
                .vectors
                .queues
                .get(qi)
                .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst));
            put16(&mut b, 0x1a, vector);
            put16(&mut b, 0x1c, u16::from(q.ready));
            put16(&mut b, 0x1e, qi as u16);
            put64(&mut b, 0x20, q.desc_table);
            put64(&mut b, 0x28, q.avail_ring);
            put64(&mut b, 0x30, q.used_ring);
        } else {
            put16(&mut b, 0x1a, NO_VECTOR);
        }
        b
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        // 64-bit fields may be written in one access: as two 32-bit halves.
        if data.len() == 8 && matches!(offset, 0x20 | 0x28 | 0x30) {
            self.write_common(offset, &data[..4]);
            self.write_common(offset + 4, &data[4..]);
            return;
        }
        let v = match *data {
            [a] => u32::from(a),
            [a, b] => u32::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            _ => return,
        };
        let c = &mut self.common;
        match (offset, data.len()) {
            (0x00, 4) => c.device_features_sel = v,
            (0x08, 4) => c.driver_features_sel = v,
            (0x0c, 4) => c.write_driver_features_word(v),
            (0x10, 2) => {
                let v = self.vectors.accept(v as u16);
                self.vectors.config.store(v, Ordering::SeqCst);
            }
            (0x14, 1) => {
                c.write_status(v);
                if v == 0 {
                    self.vectors.reset();
                }
            }
            (0x16, 2) => c.queue_sel = v,
            (0x18, 2) => {
                if let Some(q) = c.configurable_queue() {
                    q.size = v as u16;
                }
            }
            (0x1a, 2) => {
                let accepted = self.vectors.accept(v as u16);
                if let Some(slot) = self.vectors.queues.get(c.queue_sel as usize) {
                    slot.store(accepted, Ordering::SeqCst);
                }
            }
            (0x1c, 2) => c.set_queue_ready(v == 1),
            (0x20..=0x37, 4) if offset % 4 == 0 => {
                let ring = match offset {
                    0x20 | 0x24 => Ring::Descriptors,
                    0x28 | 0x2c => Ring::Driver,
                    _ => Ring::Device,
                };
                c.write_queue_address(ring, offset & 4 != 0, v);
            }
            _ => {}
        }
    }

    /// The VIRTIO_PCI_CAP_PCI_CFG window: BAR `bar` at `offset`, `length` bytes.
    fn cfg_window(&self) -> Option<(u64, usize)> {
        let b = self.config.bytes();
        let at = usize::from(self.cfg_cap);
        let bar = b[at + 4];
        let offset = u32::from_le_bytes([b[at + 8], b[at + 9], b[at + 10], b[at + 11]]);
        let length = u32::from_le_bytes([b[at + 12], b[at + 13], b[at + 14], b[at + 15]]);
        (bar == 0 && matches!(length, 1 | 2 | 4)).then_some((u64::from(offset), length as usize))
    }

    fn overlaps(offset: u16, len: usize, start: u16, n: u16) -> bool {
        let end = usize::from(offset) + len;
        usize::from(offset) < usize::from(start + n) && usize::from(start) < end
    }
}

/// A `virtio_pci_cap` of `cfg_type` for BAR0 at `offset`, `length` bytes (16 bytes).
fn virtio_cap(cfg_type: u8, offset: u64, length: u32) -> Vec<u8> {
    let mut c = vec![CAP_VENDOR, 0, 16, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&length.to_le_bytes());
    c
}

impl PciFunction for VirtioPci {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        let data_at = u16::from(self.cfg_cap) + 16;
        if Self::overlaps(offset, data.len(), data_at, 4) {
            if let Some((bar_offset, len)) = self.cfg_window() {
                let mut window = [0u8; 4];
                self.read_bar(0, bar_offset, &mut window[..len]);
                self.config.set_bytes(data_at as u8, &window);
            }
        }
        // Status bit 3 (Interrupt Status) is the line's state: the ISR's bits while INTx
        // is what the device uses (virtio 1.2, 4.1.4.5.1).
        let pending = !self.msix.enabled() && self.common.interrupt().status() != 0;
        let status = self.config.read16(0x06) & !STATUS_INTERRUPT;
        let status = status | if pending { STATUS_INTERRUPT } else { 0 };
        self.config.set_bytes(0x06, &status.to_le_bytes());
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
        if Self::overlaps(offset, data.len(), 0x04, 2) {
            let disabled = self.config.command() & COMMAND_INTX_DISABLE != 0;
            self.vectors.intx_disabled.store(disabled, Ordering::SeqCst);
            // Enabling INTx with the ISR still set asserts the line at once.
            self.common.interrupt().resample();
        }
        let msix_control = u16::from(self.msix_cap) + 2;
        if Self::overlaps(offset, data.len(), msix_control, 2) {
            self.msix
                .set_control(self.config.read16(usize::from(msix_control)));
        }
        if Self::overlaps(offset, data.len(), 0x04, 2)
            || Self::overlaps(offset, data.len(), 0x10, 8)
        {
            self.remap();
        }
        let data_at = u16::from(self.cfg_cap) + 16;
        if Self::overlaps(offset, data.len(), data_at, 4) {
            if let Some((bar_offset, len)) = self.cfg_window() {
                let b = self.config.bytes();
                let at = usize::from(data_at);
                let window = [b[at], b[at + 1], b[at + 2], b[at + 3]];
                self.write_bar(0, bar_offset, &window[..len]);
            }
        }
    }

    fn bar_at(&self, addr: u64) -> Option<(usize, u64)> {
        let base = self.decoding()?;
        (addr >= base && addr - base < BAR_SIZE).then(|| (0, addr - base))
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => {
                let b = self.common_bytes();
                for (i, d) in data.iter_mut().enumerate() {
                    *d = b.get(o as usize + i).copied().unwrap_or(0);
                }
            }
            ISR_OFFSET => {
                // Reading ISR acknowledges it (and lowers INTx).
                data[0] = self.common.interrupt().take_status() as u8;
            }
            o if (DEVICE_OFFSET..DEVICE_OFFSET + u64::from(REGION_LEN)).contains(&o) => {
                lock(self.common.device()).read_config(o - DEVICE_OFFSET, data);
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + self.msix.table_bytes()).contains(&o) => {
                self.msix.read_table(o - MSIX_TABLE_OFFSET, data);
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                self.msix.read_pba(o - MSIX_PBA_OFFSET, data);
            }
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match offset {
            o if o < COMMON_LEN => self.write_common(o, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + u64::from(REGION_LEN)).contains(&o) => {
                lock(self.common.device()).write_config(o - DEVICE_OFFSET, data);
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + u64::from(REGION_LEN)).contains(&o) => {
                let queue = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(event) = self.notify.events.get(queue) {
                    let _ = event.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + self.msix.table_bytes()).contains(&o) => {
                self.msix.write_table(o - MSIX_TABLE_OFFSET, data);
            }
            _ => {}
        }
    }
}

/// A virtio-pci function's state, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciState {
    /// The negotiation, status and queues.
    pub common: CommonState,
    /// The configuration header (only what the guest may write is taken back).
    pub config: Vec<u8>,
    /// The MSI-X table, pending bits and control.
    pub msix: MsixState,
    /// Each queue's vector.
    pub queue_vectors: Vec<u16>,
    /// The configuration's vector.
    pub config_vector: u16,
}

impl VirtioTransport for VirtioPci {
    fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        self.common.device()
    }

    fn save_with(&self, device: &dyn VirtioDevice) -> TransportState {
        TransportState::Pci(PciState {
            common: self.common.save_with(device),
            config: self.config.save(),
            msix: self.msix.save(),
            queue_vectors: self
                .vectors
                .queues
                .iter()
                .map(|v| v.load(Ordering::SeqCst))
                .collect(),
            config_vector: self.vectors.config.load(Ordering::SeqCst),
        })
    }

    fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        let TransportState::Pci(state) = state else {
            return Err(format!(
                "the device was saved on virtio-{}, this VM has it on virtio-pci",
                state.name()
            ));
        };
        if state.queue_vectors.len() != self.vectors.queues.len() {
            return Err("the saved device has another number of queues".into());
        }
        self.config.restore(&state.config)?;
        let disabled = self.config.command() & COMMAND_INTX_DISABLE != 0;
        self.vectors.intx_disabled.store(disabled, Ordering::SeqCst);
        self.msix.restore(&state.msix)?;
        for (slot, &v) in self.vectors.queues.iter().zip(&state.queue_vectors) {
            slot.store(self.vectors.accept(v), Ordering::SeqCst);
        }
        self.vectors
            .config
            .store(self.vectors.accept(state.config_vector), Ordering::SeqCst);
        self.common.restore(&state.common)?;
        self.remap();
        self.common.resume()
    }
}

/// Raises INTx again after the guest's EOI when the ISR still has something to say (the
/// irqfd's resample eventfd fires at each EOI of the line).
pub struct IntxResample {
    interrupt: Arc<Interrupt>,
    resample: EventFd,
}

impl IntxResample {
    /// A handler for `interrupt`'s line, told of EOIs through `resample`.
    pub fn new(interrupt: Arc<Interrupt>, resample: EventFd) -> Self {
        IntxResample {
            interrupt,
            resample,
        }
    }
}

impl MutEventSubscriber for IntxResample {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.resample.read();
        self.interrupt.resample();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.resample, EventSet::IN));
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
