//! The port-I/O bus: which device answers which port.
//!
//! Accesses to ports no device claims read as zero and writes are dropped, as on a PC
//! whose bus has nothing there; a guest probing for hardware must never stop the VM.

use std::sync::{Arc, Mutex};

/// A device on the port-I/O bus.
pub trait PioDevice: Send {
    /// A read of `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// A write of `data` at `offset` from the device's base port.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A shared device.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

#[derive(Clone)]
struct Range {
    base: u16,
    len: u16,
    /// Added to `port - base`: lets one device sit at discontiguous ports (i8042: 0x60, 0x64).
    offset: u16,
    device: SharedPioDevice,
}

/// The bus. Built before the vCPUs start, then shared read-only between them.
#[derive(Clone, Default)]
pub struct PioBus {
    ranges: Vec<Range>,
}

/// A range overlaps one already on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("port range {base:#x}+{len} overlaps a device already on the bus")]
pub struct Overlap {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u16,
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at ports `base..base+len`, seeing them as offsets `offset..`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        offset: u16,
        device: SharedPioDevice,
    ) -> Result<(), Overlap> {
        let end = u32::from(base) + u32::from(len);
        if len == 0
            || self.ranges.iter().any(|r| {
                u32::from(base) < u32::from(r.base) + u32::from(r.len) && u32::from(r.base) < end
            })
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

    fn find(&self, port: u16) -> Option<(&Range, u16)> {
        self.ranges
            .iter()
            .find(|r| port >= r.base && u32::from(port) < u32::from(r.base) + u32::from(r.len))
            .map(|r| (r, port - r.base + r.offset))
    }

    /// Dispatches a read; returns false (and zeroes `data`) if no device has `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((r, offset)) => {
                r.device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => {
                data.fill(0);
                false
            }
        }
    }

    /// Dispatches a write; returns false if no device has `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((r, offset)) => {
                r.device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
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
    struct Recorder(Vec<(u16, u8)>);
    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
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
    fn unknown_ports_read_zero_and_overlaps_are_refused() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, 0, dev.clone()).unwrap();
        assert_eq!(
            bus.insert(0x3ff, 2, 0, dev.clone()),
            Err(Overlap {
                base: 0x3ff,
                len: 2
            })
        );
        assert!(bus.insert(0x400, 0, 0, dev).is_err());
        let mut d = [0xaau8; 2];
        assert!(!bus.read(0x1234, &mut d));
        assert_eq!(d, [0, 0]);
        assert!(!bus.write(0xffff, &[1]));
    }
}
