//! PCI functions: what a device on the PCI bus shows the guest.
//!
//! A function answers configuration accesses ([`PciFunction::read_config`]) and accesses to
//! the memory BARs it decodes ([`PciFunction::bar_at`], [`PciFunction::read_bar`]). The
//! type-0 header with its BAR sizing and capability list is [`config::ConfigSpace`]; MSI-X
//! (table, pending bits, masking) is [`msix::Msix`]. The bus itself (host bridge, ECAM and
//! the 0xCF8/0xCFC ports, the memory window) is the device manager's
//! ([`crate::device_manager::pci`]).

pub mod config;
pub mod msix;

/// A function on the PCI bus.
pub trait PciFunction: Send {
    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset` (0..4096).
    fn read_config(&mut self, offset: u16, data: &mut [u8]);
    /// Writes configuration space.
    fn write_config(&mut self, offset: u16, data: &[u8]);
    /// Which BAR decodes `addr` now (memory decode on, the BAR placed) and at which offset.
    fn bar_at(&self, addr: u64) -> Option<(usize, u64)>;
    /// Reads BAR `bar` at `offset`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes BAR `bar` at `offset`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}
