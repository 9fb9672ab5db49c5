//! MSI-X: a function's table of messages, their mask bits and pending bits.
//!
//! The table and the pending-bit array (PBA) live in a BAR; the capability's message control
//! (enable, function mask) in configuration space. Each vector has an irqfd on its own GSI
//! whose route (an MSI route, [`MsiRouter`]) carries the address and data the driver wrote, so
//! an unmasked vector is one eventfd write away from the guest's local APIC. A route is set
//! when a vector can fire (MSI-X on, the vector and the function unmasked) with a message
//! other than the one routed: a driver writes an entry's words one by one while it is masked
//! and unmasks it once, so that costs one `KVM_SET_GSI_ROUTING` per vector, not one per word. A masked vector
//! (its own mask bit or the function mask) keeps the message pending in the PBA and sends it
//! when unmasked, as the PCI specification requires.

use crate::sync::Locked;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

pub use crate::arch::x86_64::irq_routing::MsiRouter;

/// The capability's ID.
pub const CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_MASK: u16 = 1 << 14;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control bit 0: the vector is masked.
const VECTOR_MASKED: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Every vector is masked at reset.
        Entry {
            address: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// The table's state, as saved in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    masked: bool,
}

/// A function's MSI-X vectors: see the module documentation.
pub struct Msix {
    state: Mutex<MsixState>,
    /// The message each vector's GSI is routed to now.
    routed: Mutex<Vec<Option<(u64, u32)>>>,
    irqfds: Vec<EventFd>,
    gsis: Vec<u32>,
    router: Arc<dyn MsiRouter>,
}

impl Msix {
    /// `irqfds.len()` vectors, vector `i` raised through `irqfds[i]`, registered with KVM on
    /// `gsis[i]`, whose routes `router` sets.
    pub fn new(irqfds: Vec<EventFd>, gsis: Vec<u32>, router: Arc<dyn MsiRouter>) -> Self {
        let n = irqfds.len();
        Msix {
            state: Mutex::new(MsixState {
                entries: vec![Entry::default(); n],
                pending: vec![false; n],
                enabled: false,
                masked: false,
            }),
            routed: Mutex::new(vec![None; n]),
            irqfds,
            gsis,
            router,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MsixState> {
        self.state.locked()
    }

    /// How many vectors the table has.
    pub fn len(&self) -> usize {
        self.irqfds.len()
    }

    /// Whether the table has no vector.
    pub fn is_empty(&self) -> bool {
        self.irqfds.is_empty()
    }

    /// The table's size in bytes.
    pub fn table_bytes(&self) -> u64 {
        self.len() as u64 * ENTRY_SIZE
    }

    /// Whether the driver enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// The message control bits the guest wrote (enable, function mask).
    pub fn control(&self) -> u16 {
        let s = self.lock();
        (if s.enabled { CONTROL_ENABLE } else { 0 }) | (if s.masked { CONTROL_MASK } else { 0 })
    }

    /// The guest wrote message control.
    pub fn set_control(&self, control: u16) {
        let mut s = self.lock();
        s.enabled = control & CONTROL_ENABLE != 0;
        s.masked = control & CONTROL_MASK != 0;
        for v in 0..s.entries.len() {
            self.route(&s, v);
        }
        self.flush_pending(&mut s);
    }

    /// Routes vector `v`'s message if it can fire and is not routed so yet.
    fn route(&self, s: &MsixState, v: usize) {
        let Some(e) = s.entries.get(v) else {
            return;
        };
        if !s.enabled || s.masked || e.control & VECTOR_MASKED != 0 {
            return;
        }
        let mut routed = self.routed.locked();
        let message = Some((e.address, e.data));
        if let (Some(slot), Some(&gsi)) = (routed.get_mut(v), self.gsis.get(v)) {
            // A route KVM refuses leaves the vector undeliverable, as a bad address would on
            // hardware; the guest sees nothing worse.
            if *slot != message && self.router.route(gsi, message).is_ok() {
                *slot = message;
            }
        }
    }

    /// Sends vector `v` (or keeps it pending while masked). A vector out of range is ignored.
    pub fn signal(&self, v: usize) {
        let mut s = self.lock();
        let Some(entry) = s.entries.get(v).copied() else {
            return;
        };
        if !s.enabled {
            return;
        }
        if s.masked || entry.control & VECTOR_MASKED != 0 {
            s.pending[v] = true;
        } else {
            let _ = self.irqfds[v].write(1);
        }
    }

    /// Sends every pending vector that is no longer masked.
    fn flush_pending(&self, s: &mut MsixState) {
        if !s.enabled || s.masked {
            return;
        }
        for v in 0..s.entries.len() {
            if s.pending[v] && s.entries[v].control & VECTOR_MASKED == 0 {
                s.pending[v] = false;
                let _ = self.irqfds[v].write(1);
            }
        }
    }

    /// Reads the table at `offset` (4- or 8-byte accesses; others read as 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let s = self.lock();
        let Some(e) = s.entries.get((offset / ENTRY_SIZE) as usize) else {
            return;
        };
        let words = [
            e.address as u32,
            (e.address >> 32) as u32,
            e.data,
            e.control,
        ];
        let word = ((offset % ENTRY_SIZE) / 4) as usize;
        match data.len() {
            4 if offset % 4 == 0 => data.copy_from_slice(&words[word].to_le_bytes()),
            8 if offset % 8 == 0 => {
                data[..4].copy_from_slice(&words[word].to_le_bytes());
                data[4..].copy_from_slice(&words[word + 1].to_le_bytes());
            }
            _ => {}
        }
    }

    /// Writes the table at `offset`; a message change is routed at once, an unmask sends
    /// what was pending.
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        let v = (offset / ENTRY_SIZE) as usize;
        let word = ((offset % ENTRY_SIZE) / 4) as usize;
        let words: Vec<u32> = match data.len() {
            4 if offset % 4 == 0 => vec![u32::from_le_bytes([data[0], data[1], data[2], data[3]])],
            8 if offset % 8 == 0 => data
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            _ => return,
        };
        let mut s = self.lock();
        let Some(e) = s.entries.get_mut(v) else {
            return;
        };
        let before = *e;
        for (i, w) in words.into_iter().enumerate() {
            match word + i {
                0 => e.address = (e.address & !0xffff_ffff) | u64::from(w),
                1 => e.address = (e.address & 0xffff_ffff) | (u64::from(w) << 32),
                2 => e.data = w,
                _ => e.control = w & VECTOR_MASKED,
            }
        }
        if *e != before {
            self.route(&s, v);
        }
        self.flush_pending(&mut s);
    }

    /// Reads the PBA at `offset` (one bit per vector; 4- or 8-byte accesses).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) || offset % data.len() as u64 != 0 {
            return;
        }
        let s = self.lock();
        for (i, b) in data.iter_mut().enumerate() {
            for bit in 0..8 {
                let v = (offset as usize + i) * 8 + bit;
                if s.pending.get(v).copied().unwrap_or(false) {
                    *b |= 1 << bit;
                }
            }
        }
    }

    /// The state to save.
    pub fn save(&self) -> MsixState {
        self.lock().clone()
    }

    /// Takes a saved state, routing every vector's message again.
    pub fn restore(&self, saved: &MsixState) -> Result<(), String> {
        if saved.entries.len() != self.len() || saved.pending.len() != self.len() {
            return Err(format!(
                "an MSI-X table of {} vectors was saved where this device has {}",
                saved.entries.len(),
                self.len()
            ));
        }
        let mut s = self.lock();
        *s = saved.clone();
        let mut routed = self.routed.locked();
        for ((e, &gsi), slot) in s.entries.iter().zip(&self.gsis).zip(routed.iter_mut()) {
            // Every programmed message, masked or not: KVM's table is rebuilt from scratch.
            if (e.address, e.data) != (0, 0) {
                let message = Some((e.address, e.data));
                self.router.route(gsi, message)?;
                *slot = message;
            }
        }
        drop(routed);
        self.flush_pending(&mut s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    type Route = (u32, Option<(u64, u32)>);

    #[derive(Default)]
    struct Routes(Mutex<Vec<Route>>);

    impl MsiRouter for Routes {
        fn route(&self, gsi: u32, message: Option<(u64, u32)>) -> Result<(), String> {
            self.0.lock().unwrap().push((gsi, message));
            Ok(())
        }
    }

    fn msix(n: usize) -> (Msix, Arc<Routes>) {
        let routes = Arc::new(Routes::default());
        let fds = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let gsis = (0..n as u32).map(|i| 24 + i).collect();
        (Msix::new(fds, gsis, routes.clone()), routes)
    }

    fn w32(m: &Msix, off: u64, v: u32) {
        m.write_table(off, &v.to_le_bytes());
    }

    fn fired(m: &Msix, v: usize) -> bool {
        m.irqfds[v].read().is_ok()
    }

    fn pba(m: &Msix) -> u32 {
        let mut d = [0; 4];
        m.read_pba(0, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn a_programmed_unmasked_vector_fires_and_its_route_is_set() {
        let (m, routes) = msix(2);
        m.set_control(CONTROL_ENABLE);
        w32(&m, 16, 0xfee0_0000);
        w32(&m, 24, 0x41);
        assert!(
            routes.0.lock().unwrap().is_empty(),
            "masked: not routed yet"
        );
        m.signal(1);
        assert!(!fired(&m, 1), "masked at reset");
        assert_eq!(pba(&m), 0b10);
        w32(&m, 28, 0);
        let one = vec![(25, Some((0xfee0_0000, 0x41)))];
        assert_eq!(*routes.0.lock().unwrap(), one, "routed once, at the unmask");
        assert!(fired(&m, 1), "the unmask sends what was pending");
        assert_eq!(pba(&m), 0);
        m.signal(1);
        assert!(fired(&m, 1));
        let mut d = [0; 8];
        m.read_table(16, &mut d);
        assert_eq!(u64::from_le_bytes(d), 0xfee0_0000);
    }

    #[test]
    fn the_function_mask_holds_every_vector() {
        let (m, _) = msix(2);
        w32(&m, 12, 0);
        m.set_control(CONTROL_ENABLE | CONTROL_MASK);
        m.signal(0);
        assert!(!fired(&m, 0));
        assert_eq!(pba(&m), 1);
        m.set_control(CONTROL_ENABLE);
        assert!(fired(&m, 0));
        m.set_control(0);
        m.signal(0);
        assert!(!fired(&m, 0), "MSI-X off: nothing is sent");
        assert_eq!(pba(&m), 0);
    }

    #[test]
    fn accesses_out_of_range_or_odd_are_ignored() {
        let (m, routes) = msix(1);
        w32(&m, 16, 1);
        w32(&m, 0x7ff0, 1);
        m.write_table(2, &[1, 2]);
        m.write_table(3, &[1, 2, 3, 4]);
        assert!(routes.0.lock().unwrap().is_empty());
        let mut d = [0xff; 4];
        m.read_table(1 << 40, &mut d);
        assert_eq!(d, [0; 4]);
        m.signal(7);
        let mut p = [0xff; 2];
        m.read_pba(0, &mut p);
        assert_eq!(p, [0; 2]);
    }

    #[test]
    fn save_and_restore_route_the_messages_again() {
        let (m, _) = msix(2);
        m.set_control(CONTROL_ENABLE);
        w32(&m, 0, 0xfee0_1000);
        w32(&m, 8, 0x50);
        let saved = m.save();
        let (m2, routes) = msix(2);
        m2.restore(&saved).unwrap();
        assert_eq!(
            *routes.0.lock().unwrap(),
            vec![(24, Some((0xfee0_1000, 0x50)))]
        );
        assert!(m2.enabled());
        let (m3, _) = msix(3);
        assert!(m3.restore(&saved).is_err());
    }
}
