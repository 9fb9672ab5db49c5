//! A type-0 PCI configuration header: identity, command, BARs, capabilities.
//!
//! The 256 bytes are kept as the guest reads them, with a write mask per byte saying which
//! bits it may change; BAR sizing then works by itself (the address bits below the BAR's size
//! are not writable, so writing all ones reads back the size). Offsets past 256 (PCI Express'
//! extended space, reachable through ECAM) read as 0: no extended capabilities.

/// Command register bit: the function answers memory accesses to its BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register bit: the function may master the bus (DMA, MSI).
pub const COMMAND_MASTER: u16 = 1 << 2;
/// Command register bit: the function must not assert INTx.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register bit: the function's INTx is asserted (read-only, the device's to set).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status register bit: the function has a capability list.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Where capabilities start.
const FIRST_CAP: u8 = 0x40;
/// The configuration space a function has (PCI Express: 4 KiB).
pub const CONFIG_SPACE_SIZE: u16 = 0x1000;
/// The type-0 header's BAR registers.
const BAR0: usize = 0x10;

/// A function's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// The header: see the module documentation.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    writable: [u8; 256],
    bar_sizes: [u64; 6],
    next_cap: u8,
    last_cap: Option<u8>,
}

impl ConfigSpace {
    /// A header for `id`, interrupt pin INTA# on `line` when `line` is given.
    pub fn new(id: Identity, line: Option<u8>) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            writable: [0; 256],
            bar_sizes: [0; 6],
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.put16(0x00, id.vendor);
        c.put16(0x02, id.device);
        c.bytes[0x08] = id.revision;
        c.bytes[0x09] = id.class as u8;
        c.bytes[0x0a] = (id.class >> 8) as u8;
        c.bytes[0x0b] = (id.class >> 16) as u8;
        c.put16(0x2c, id.subsystem_vendor);
        c.put16(0x2e, id.subsystem);
        let command = COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE | 1;
        c.writable[0x04..0x06].copy_from_slice(&command.to_le_bytes());
        // As firmware leaves a function whose BARs it placed: decoding, and allowed to DMA.
        c.put16(0x04, COMMAND_MEMORY | COMMAND_MASTER);
        if let Some(line) = line {
            c.bytes[0x3c] = line;
            c.bytes[0x3d] = 1; // INTA#
            c.writable[0x3c] = 0xff;
        }
        c
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Reads a 16-bit register.
    pub fn read16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    /// Gives BAR `index` and `index + 1` a 64-bit non-prefetchable memory BAR of `size` (a
    /// power of two, at least 16 bytes) at `addr`.
    pub fn add_bar64(&mut self, index: usize, size: u64, addr: u64) {
        debug_assert!(size.is_power_of_two() && size >= 16 && index < 5);
        self.bar_sizes[index] = size;
        let mask = !(size - 1);
        let low = BAR0 + 4 * index;
        self.writable[low..low + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        self.writable[low + 4..low + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        self.set_bar64(index, addr);
    }

    /// Places BAR `index` (a 64-bit one) at `addr` (snapshot restore).
    pub fn set_bar64(&mut self, index: usize, addr: u64) {
        let low = BAR0 + 4 * index;
        let mask = !(self.bar_sizes[index].max(16) - 1);
        self.put32(low, ((addr & mask) as u32 & !0xf) | 0b100);
        self.put32(low + 4, ((addr & mask) >> 32) as u32);
    }

    /// Where BAR `index` (64-bit) is, and its size.
    pub fn bar64(&self, index: usize) -> (u64, u64) {
        let low = BAR0 + 4 * index;
        let addr = u64::from(self.read32(low) & !0xf) | (u64::from(self.read32(low + 4)) << 32);
        (addr, self.bar_sizes[index])
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read16(0x04)
    }

    /// Adds a capability (`body` starts with its ID; the next pointer is filled in), with
    /// `writable` the mask of the bits the guest may change (same length as `body`, or
    /// empty: read-only). Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> u8 {
        let at = self.next_cap;
        let end = usize::from(at) + body.len();
        assert!(end <= 256 && body.len() >= 2, "capability does not fit");
        self.bytes[usize::from(at)..end].copy_from_slice(body);
        self.bytes[usize::from(at) + 1] = 0;
        if !writable.is_empty() {
            self.writable[usize::from(at)..end].copy_from_slice(writable);
        }
        match self.last_cap {
            Some(prev) => self.bytes[usize::from(prev) + 1] = at,
            None => {
                self.bytes[0x34] = at;
                let status = self.read16(0x06) | STATUS_CAP_LIST;
                self.put16(0x06, status);
            }
        }
        self.last_cap = Some(at);
        self.next_cap = ((end + 3) & !3) as u8;
        at
    }

    /// Reads `data.len()` bytes at `offset`; past the header they read as 0.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self
                .bytes
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes `data` at `offset`, bit by bit as far as the guest may.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            if let (Some(b), Some(&m)) = (self.bytes.get_mut(at), self.writable.get(at)) {
                *b = (*b & !m) | (v & m);
            }
        }
    }

    /// The raw bytes of the header (a capability's registers, for its owner).
    pub fn bytes(&self) -> &[u8; 256] {
        &self.bytes
    }

    /// Sets bytes the guest cannot write itself (a capability's device-owned fields).
    pub fn set_bytes(&mut self, offset: u8, data: &[u8]) {
        let at = usize::from(offset);
        if let Some(dst) = self.bytes.get_mut(at..at + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    /// The registers the guest may have changed, to save: command, BARs, interrupt line and
    /// every writable capability byte.
    pub fn save(&self) -> Vec<u8> {
        self.bytes.to_vec()
    }

    /// Takes saved registers back, only where the guest could have written them: the
    /// identity and layout stay this build's.
    pub fn restore(&mut self, saved: &[u8]) -> Result<(), String> {
        if saved.len() != 256 {
            return Err(format!(
                "a PCI header of {} bytes was saved, not 256",
                saved.len()
            ));
        }
        for (i, &v) in saved.iter().enumerate() {
            let m = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !m) | (v & m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ConfigSpace {
        let mut c = ConfigSpace::new(
            Identity {
                vendor: 0x1af4,
                device: 0x1042,
                class: 0x01_00_00,
                revision: 1,
                subsystem_vendor: 0x1af4,
                subsystem: 0x40,
            },
            Some(5),
        );
        c.add_bar64(0, 0x8000, 0xc000_8000);
        c
    }

    fn r32(c: &ConfigSpace, at: u16) -> u32 {
        let mut d = [0; 4];
        c.read(at, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn identity_and_read_only_fields() {
        let mut c = header();
        assert_eq!(r32(&c, 0), 0x1042_1af4);
        c.write(0, &[0xff; 4]);
        assert_eq!(r32(&c, 0), 0x1042_1af4, "the IDs are read-only");
        assert_eq!(r32(&c, 8), 0x0100_0001);
        assert_eq!(c.bytes()[0x3d], 1);
        c.write(0x3c, &[11]);
        assert_eq!(
            c.bytes()[0x3c],
            11,
            "the interrupt line is the guest's to write"
        );
        assert_eq!(r32(&c, 0x100), 0, "no extended capabilities");
        assert_eq!(r32(&c, 0xffc), 0);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_and_the_type() {
        let mut c = header();
        assert_eq!(c.bar64(0), (0xc000_8000, 0x8000));
        c.write(0x10, &[0xff; 4]);
        c.write(0x14, &[0xff; 4]);
        assert_eq!(r32(&c, 0x10), 0xffff_8004, "size 32 KiB, 64-bit memory");
        assert_eq!(r32(&c, 0x14), 0xffff_ffff);
        c.write(0x10, &0xd000_0123u32.to_le_bytes());
        c.write(0x14, &[0; 4]);
        assert_eq!(
            c.bar64(0),
            (0xd000_0000, 0x8000),
            "low bits stay the type's"
        );
        // A byte-wide write into the middle of the BAR moves only the bits it may.
        c.write(0x11, &[0xff]);
        assert_eq!(r32(&c, 0x10), 0xd000_8004);
        assert_eq!(r32(&c, 0x18), 0, "no BAR 2");
        c.write(0x30, &[0xff; 4]);
        assert_eq!(r32(&c, 0x30), 0, "no expansion ROM");
    }

    #[test]
    fn capabilities_form_a_list() {
        let mut c = header();
        let a = c.add_capability(&[0x11, 0, 1, 0], &[0, 0, 0, 0xc0]);
        let b = c.add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!((a, b), (0x40, 0x44));
        assert_ne!(c.read16(0x06) & STATUS_CAP_LIST, 0);
        assert_eq!(c.bytes()[0x34], 0x40);
        assert_eq!(c.bytes()[0x41], 0x44);
        assert_eq!(c.bytes()[0x45], 0);
        c.write(0x42, &[0xff, 0xff]);
        assert_eq!(c.read16(0x42), 0xc001, "only the writable bits moved");
    }

    #[test]
    fn restore_takes_only_what_the_guest_could_write() {
        let mut c = header();
        let mut saved = c.save();
        saved[0] = 0x34; // vendor: not writable
        saved[0x04] = 0x06;
        saved[0x3c] = 9;
        c.restore(&saved).unwrap();
        assert_eq!(c.read16(0), 0x1af4);
        assert_eq!(c.command(), 0x06);
        assert_eq!(c.bytes()[0x3c], 9);
        assert!(c.restore(&saved[..10]).is_err());
    }
}
