//! The buses: which device answers which port (port I/O) or address (MMIO).
//!
//! Accesses no device claims read as zero and writes are dropped, as on a PC whose bus has
//! nothing there; a guest probing for hardware must never stop the VM.

use crate::sync::Locked;
use std::sync::{Arc, Mutex};

/// A device on a bus.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Range {
    base: u64,
    len: u64,
    /// Added to `addr - base`: lets one device sit at discontiguous ports (i8042: 0x60, 0x64).
    offset: u64,
    device: SharedDevice,
}

/// A bus. Built before the vCPUs start, then shared read-only between them.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

/// The buses a vCPU dispatches exits to, as the device manager built them.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// MMIO.
    pub mmio: Arc<Bus>,
}

/// The port-I/O bus (ports are addresses below 0x10000).
pub type PioBus = Bus;
/// The MMIO bus.
pub type MmioBus = Bus;

/// A range overlaps one already on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("range {base:#x}+{len} overlaps a device already on the bus")]
pub struct Overlap {
    /// First address.
    pub base: u64,
    /// Length.
    pub len: u64,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `base..base+len`, seeing them as offsets `offset..`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        offset: u64,
        device: SharedDevice,
    ) -> Result<(), Overlap> {
        let Some(end) = base.checked_add(len) else {
            return Err(Overlap { base, len });
        };
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(Overlap { base, len });
        }
        self.ranges.push(Range {
            base,
            len,
            offset,
            device,
        });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        self.ranges
            .iter()
            .find(|r| addr >= r.base && addr - r.base < r.len)
            .map(|r| (r, addr - r.base + r.offset))
    }

    /// Dispatches a read; returns false (and zeroes `data`) if no device has `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((r, offset)) => {
                r.device.locked().read(offset, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device has `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((r, offset)) => {
                r.device.locked().write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, u8)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn routes_by_port_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::new();
        bus.insert(0x60, 1, 0, dev.clone()).unwrap();
        bus.insert(0x64, 1, 4, dev.clone()).unwrap();
        assert!(bus.write(0x64, &[0xfe]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x60, &mut d));
        assert_eq!(d[0], 0);
        assert_eq!(dev.lock().unwrap().0, vec![(4, 0xfe)]);
    }

    #[test]
    fn unknown_addresses_read_zero_and_overlaps_are_refused() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::new();
        bus.insert(0x3f8, 8, 0, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x3ff, 2, 0, dev.clone()),
            Err(Overlap {
                base: 0x3ff,
                len: 2
            })
        );
        assert!(bus.insert(0x400, 0, 0, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, 0, dev).is_err());
        let mut d = [0xaau8; 2];
        assert!(!bus.read(0x1234, &mut d));
        assert_eq!(d, [0, 0]);
        assert!(!bus.write(0xffff_ffff, &[1]));
    }
}
