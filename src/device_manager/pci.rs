//! The PCI host bridge: bus 0, its configuration mechanisms and its memory window.
//!
//! - Configuration space through ECAM (MMCONFIG, [`ECAM_BASE`], described by the ACPI MCFG
//!   table) and through the legacy ports 0xCF8 (address) / 0xCFC–0xCFF (data); both reach
//!   the same functions, and a function that does not exist reads as all ones.
//! - 00:00.0 is the host bridge itself; devices take slots 1.. in registration order.
//! - BARs live in the memory window [`WINDOW_START`]..[`WINDOW_END`]: the whole window is on
//!   the MMIO bus and each access goes to the function whose BAR decodes it now, so a guest
//!   that moves or disables a BAR needs no change to the bus. A BAR moved outside the window
//!   is not reachable, as behind a real root bridge.
//! - The DSDT's `PCI0` (PNP0A08) says all this to the guest: bus range, the config ports,
//!   the window, and `_PRT` for INTx (slot N's INTA# is its GSI, level-triggered).

use std::sync::{Arc, Mutex, RwLock};

use acpi_tables::{aml, Aml};

use crate::devices::pci::config::{ConfigSpace, Identity};
use crate::devices::pci::PciFunction;
use crate::devices::BusDevice;
use crate::sync::Locked;

/// Where ECAM starts (bus 0 only).
pub const ECAM_BASE: u64 = 0xe000_0000;
/// ECAM's size: 32 devices x 8 functions x 4 KiB.
pub const ECAM_SIZE: u64 = 1 << 20;
/// The BAR window's first address.
pub const WINDOW_START: u64 = 0xc000_0000;
/// One past the BAR window's last address.
pub const WINDOW_END: u64 = 0xd000_0000;
/// The legacy configuration address port.
pub const CONFIG_ADDRESS: u64 = 0xcf8;
/// The ports the legacy mechanism takes (address and data).
pub const CONFIG_PORTS: u64 = 8;
/// Slots on bus 0.
pub const SLOTS: usize = 32;

/// A shared function.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

/// Bus 0's functions (function 0 of each slot).
pub struct PciBus {
    slots: RwLock<Vec<Option<SharedFunction>>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    /// A bus with the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<SharedFunction>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        PciBus {
            slots: RwLock::new(slots),
        }
    }

    /// Puts `function` in `slot`.
    pub fn add(&self, slot: usize, function: SharedFunction) {
        if let Some(s) = self
            .slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot)
        {
            *s = Some(function);
        }
    }

    fn function(&self, bus: u8, device: u8, function: u8) -> Option<SharedFunction> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(usize::from(device))
            .cloned()
            .flatten()
    }

    /// A configuration read of function (`bus`, `device`, `function`) at `offset`.
    pub fn read_config(&self, bdf: (u8, u8, u8), offset: u16, data: &mut [u8]) {
        match self.function(bdf.0, bdf.1, bdf.2) {
            Some(f) => f.locked().read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write.
    pub fn write_config(&self, bdf: (u8, u8, u8), offset: u16, data: &[u8]) {
        if let Some(f) = self.function(bdf.0, bdf.1, bdf.2) {
            f.locked().write_config(offset, data);
        }
    }

    /// The function whose BAR decodes `addr`, with the BAR and the offset in it.
    fn decoder(&self, addr: u64) -> Option<(SharedFunction, usize, u64)> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots.iter().flatten().find_map(|f| {
            let (bar, offset) = f.locked().bar_at(addr)?;
            Some((f.clone(), bar, offset))
        })
    }
}

/// The host bridge, 00:00.0: an identity and nothing else.
struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(
                Identity {
                    vendor: 0x8086,
                    device: 0x0d57,
                    class: 0x06_00_00,
                    revision: 0,
                    subsystem_vendor: 0,
                    subsystem: 0,
                },
                None,
            ),
        }
    }
}

impl PciFunction for HostBridge {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_at(&self, _addr: u64) -> Option<(usize, u64)> {
        None
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// An access is 1, 2 or 4 bytes, naturally aligned; anything else reads as ones (config) and
/// is dropped.
fn sane(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset % len as u64 == 0
}

/// ECAM: offset = bus << 20 | device << 15 | function << 12 | register.
pub struct Ecam {
    bus: Arc<PciBus>,
}

impl Ecam {
    /// ECAM for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Ecam { bus }
    }

    fn decode(offset: u64) -> ((u8, u8, u8), u16) {
        (
            (
                (offset >> 20) as u8,
                ((offset >> 15) & 0x1f) as u8,
                ((offset >> 12) & 7) as u8,
            ),
            (offset & 0xfff) as u16,
        )
    }
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !sane(offset, data.len()) {
            data.fill(0xff);
            return;
        }
        let (bdf, reg) = Self::decode(offset);
        self.bus.read_config(bdf, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if sane(offset, data.len()) {
            let (bdf, reg) = Self::decode(offset);
            self.bus.write_config(bdf, reg, data);
        }
    }
}

/// The legacy mechanism: an address register at 0xCF8, data at 0xCFC–0xCFF.
pub struct ConfigPorts {
    bus: Arc<PciBus>,
    address: u32,
}

impl ConfigPorts {
    /// The ports for `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        ConfigPorts { bus, address: 0 }
    }

    /// The addressed function and register, if the enable bit is set.
    fn target(&self, data_offset: u64) -> Option<((u8, u8, u8), u16)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let a = self.address;
        let bdf = (
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
        );
        Some((bdf, (a & 0xfc) as u16 + data_offset as u16))
    }
}

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 if offset - 4 + data.len() as u64 <= 4 => match self.target(offset - 4) {
                Some((bdf, reg)) => self.bus.read_config(bdf, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => {
                if let Ok(b) = <[u8; 4]>::try_from(data) {
                    self.address = u32::from_le_bytes(b);
                }
            }
            4..=7 if (offset - 4 + data.len() as u64) <= 4 => {
                if let Some((bdf, reg)) = self.target(offset - 4) {
                    self.bus.write_config(bdf, reg, data);
                }
            }
            _ => {}
        }
    }
}

/// The BAR window on the MMIO bus: each access goes to the function decoding it.
pub struct BarWindow {
    bus: Arc<PciBus>,
}

impl BarWindow {
    /// The window of `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        BarWindow { bus }
    }
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.bus.decoder(WINDOW_START + offset) {
            Some((f, bar, off)) => f.locked().read_bar(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((f, bar, off)) = self.bus.decoder(WINDOW_START + offset) {
            f.locked().write_bar(bar, off, data);
        }
    }
}

/// The DSDT's `PCI0`, with INTA# of each slot in `slots` routed to its GSI, and a
/// motherboard-resources device reserving ECAM (Linux uses MMCONFIG only where firmware
/// reserved it).
pub struct PciAml {
    /// `(slot, gsi)` of each device.
    pub slots: Vec<(u8, u32)>,
}

impl Aml for PciAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
        let ports = aml::IO::new(
            CONFIG_ADDRESS as u16,
            CONFIG_ADDRESS as u16,
            1,
            CONFIG_PORTS as u8,
        );
        let io_low = aml::AddressSpace::new_io(0u16, (CONFIG_ADDRESS - 1) as u16, None);
        let io_high = aml::AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
        let window = aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::NotCacheable,
            true,
            WINDOW_START as u32,
            (WINDOW_END - 1) as u32,
            None,
        );
        let crs = aml::ResourceTemplate::new(vec![&bus, &ports, &io_low, &io_high, &window]);
        // Each entry: the slot's address (device << 16, any function), pin 0 (INTA#), no link
        // device (0), the GSI.
        let words: Vec<(AmlDword, AmlDword)> = self
            .slots
            .iter()
            .map(|&(slot, gsi)| (AmlDword((u32::from(slot) << 16) | 0xffff), AmlDword(gsi)))
            .collect();
        let zero = aml::Zero {};
        let entries: Vec<aml::Package> = words
            .iter()
            .map(|(address, gsi)| aml::Package::new(vec![address, &zero, &zero, gsi]))
            .collect();
        let entries: Vec<&dyn Aml> = entries.iter().map(|p| p as &dyn Aml).collect();
        let prt = aml::Package::new(entries);
        aml::Device::new(
            "PCI0".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
                &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
                &aml::Name::new("_ADR".into(), &aml::Zero {}),
                &aml::Name::new("_SEG".into(), &aml::Zero {}),
                &aml::Name::new("_UID".into(), &aml::Zero {}),
                &aml::Name::new("_BBN".into(), &aml::Zero {}),
                &aml::Name::new("_CRS".into(), &crs),
                &aml::Name::new("_PRT".into(), &prt),
            ],
        )
        .to_aml_bytes(sink);
        let ecam = aml::Memory32Fixed::new(false, ECAM_BASE as u32, ECAM_SIZE as u32);
        let reserved = aml::ResourceTemplate::new(vec![&ecam]);
        aml::Device::new(
            "MRES".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
                &aml::Name::new("_UID".into(), &aml::Zero {}),
                &aml::Name::new("_CRS".into(), &reserved),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// A 32-bit integer, always encoded as a DWord (`_PRT` addresses are conventionally so).
struct AmlDword(u32);

impl Aml for AmlDword {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.byte(0x0c); // DWordPrefix
        for b in self.0.to_le_bytes() {
            sink.byte(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> Arc<PciBus> {
        Arc::new(PciBus::new())
    }

    fn ecam_r32(e: &mut Ecam, dev: u64, reg: u64) -> u32 {
        let mut d = [0; 4];
        e.read((dev << 15) | reg, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn ecam_and_the_ports_reach_the_same_functions() {
        let b = bus();
        let mut ecam = Ecam::new(b.clone());
        let mut ports = ConfigPorts::new(b);
        assert_eq!(ecam_r32(&mut ecam, 0, 0), 0x0d57_8086);
        assert_eq!(ecam_r32(&mut ecam, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(ecam_r32(&mut ecam, 3, 0), 0xffff_ffff, "an empty slot");
        let mut d = [0; 4];
        ecam.read(1 << 20, &mut d);
        assert_eq!(d, [0xff; 4], "bus 1 does not exist");
        ecam.read(1 << 12, &mut d);
        assert_eq!(d, [0xff; 4], "function 1 does not exist");
        ports.write(0, &0x8000_0000u32.to_le_bytes());
        ports.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        let mut w = [0; 2];
        ports.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0d57, "the data port's upper half");
        let mut r = [0; 4];
        ports.read(0, &mut r);
        assert_eq!(u32::from_le_bytes(r), 0x8000_0000);
        ports.write(0, &0x0000_0000u32.to_le_bytes());
        ports.read(4, &mut d);
        assert_eq!(d, [0xff; 4], "enable bit clear");
        // Odd accesses: ones, and nothing breaks.
        let mut three = [0u8; 3];
        ecam.read(1, &mut three);
        assert_eq!(three, [0xff; 3]);
        ecam.write(0xfffff, &[1, 2, 3]);
    }

    #[test]
    fn the_dsdt_entry_names_the_bridge_and_routes_each_slot() {
        let mut aml = Vec::new();
        PciAml {
            slots: vec![(1, 5), (2, 6)],
        }
        .to_aml_bytes(&mut aml);
        if let Ok(path) = std::env::var("VMM_DUMP_PCI_DSDT") {
            let dsdt = crate::arch::x86_64::acpi::tables(1, &aml, Some(ECAM_BASE))
                .into_iter()
                .find(|(_, t)| t.starts_with(b"DSDT"))
                .map(|(_, t)| t)
                .unwrap();
            std::fs::write(path, dsdt).unwrap();
        }
        let find = |needle: &[u8]| aml.windows(needle.len()).position(|w| w == needle);
        assert!(find(b"PCI0").is_some());
        assert!(find(b"_PRT").is_some());
        // EISAID("PNP0A08") = 0x080ad041.
        assert!(find(&[0x0c, 0x41, 0xd0, 0x0a, 0x08]).is_some());
        // Slot 2's entry: 0x0002ffff, pin 0, source 0, GSI 6.
        assert!(find(&[0x0c, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x0c, 6, 0, 0, 0]).is_some());
        assert!(find(b"MRES").is_some());
    }
}
