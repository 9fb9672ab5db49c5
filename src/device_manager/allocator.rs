//! Hands out what a device needs from the machine: an MMIO range in the virtio window or a
//! PCI slot, a legacy interrupt line (GSI) and, on PCI, the GSIs of its MSI-X vectors.
//!
//! Both are handed out in order, so the n-th device registered always gets the same address
//! and GSI: a guest's `/dev/vda` is the first disk given, and a restored snapshot finds its
//! devices where it left them.

use crate::arch::x86_64::irq_routing::DEVICE_GSIS as GSIS;
pub use crate::arch::x86_64::irq_routing::MAX_IRQ_DEVICES;

/// First address of the virtio-mmio window: above the exit device (0xd0000000) and the
/// boot-marker register (0xd0001000), which keep their fixed addresses.
pub const MMIO_WINDOW_START: u64 = 0xd001_0000;
/// One past the window's last address; 0xd1000000 stays unclaimed (tests probe it).
pub const MMIO_WINDOW_END: u64 = 0xd080_0000;
/// What each device gets: a page, the size Linux maps for a virtio-mmio device.
pub const MMIO_SLOT: u64 = 0x1000;

/// What the machine has run out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    /// The virtio MMIO window is full.
    #[error("no MMIO space left in the virtio window")]
    Mmio,
    /// Every slot of PCI bus 0 is taken.
    #[error("no PCI slot left on bus 0")]
    PciSlots,
    /// Every GSI a device may have is taken.
    #[error("no interrupt line (GSI) left for another device")]
    Gsi,
}

use Exhausted as Error;

/// The most MSI routes handed out (KVM allows 4096 routes in all).
pub const MAX_MSI_GSIS: u32 = 2048;

/// Allocates MMIO slots, PCI slots and GSIs in order.
#[derive(Debug, Default)]
pub struct Allocator {
    next_slot: u64,
    next_gsi: usize,
    next_pci_slot: usize,
    next_msi: u32,
}

impl Allocator {
    /// The next free MMIO slot's base address.
    pub fn mmio_slot(&mut self) -> Result<u64, Error> {
        let base = MMIO_WINDOW_START + self.next_slot * MMIO_SLOT;
        if base + MMIO_SLOT > MMIO_WINDOW_END {
            return Err(Error::Mmio);
        }
        self.next_slot += 1;
        Ok(base)
    }

    /// The next free PCI slot on bus 0 (slot 0 is the host bridge's).
    pub fn pci_slot(&mut self) -> Result<u8, Error> {
        let slot = self.next_pci_slot + 1;
        if slot >= super::pci::SLOTS {
            return Err(Error::PciSlots);
        }
        self.next_pci_slot += 1;
        Ok(slot as u8)
    }

    /// `n` consecutive GSIs for MSI routes, above the IOAPIC's pins.
    pub fn msi_gsis(&mut self, n: u32) -> Result<Vec<u32>, Error> {
        if self.next_msi + n > MAX_MSI_GSIS {
            return Err(Error::Gsi);
        }
        let base = crate::arch::x86_64::irq_routing::MSI_GSI_BASE + self.next_msi;
        self.next_msi += n;
        Ok((base..base + n).collect())
    }

    /// The next free GSI.
    pub fn gsi(&mut self) -> Result<u32, Error> {
        let gsi = *GSIS.get(self.next_gsi).ok_or(Error::Gsi)?;
        self.next_gsi += 1;
        Ok(gsi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_slots_and_gsis_in_order_until_exhausted() {
        let mut a = Allocator::default();
        assert_eq!(a.mmio_slot().unwrap(), 0xd001_0000);
        assert_eq!(a.mmio_slot().unwrap(), 0xd001_1000);
        let gsis: Vec<u32> = (0..MAX_IRQ_DEVICES).map(|_| a.gsi().unwrap()).collect();
        assert_eq!(gsis[0], 5);
        assert!(!gsis.contains(&9) && !gsis.contains(&4) && !gsis.contains(&8));
        assert!(matches!(a.gsi(), Err(Error::Gsi)));
        while a.mmio_slot().is_ok() {}
        assert!(matches!(a.mmio_slot(), Err(Error::Mmio)));
        assert_eq!(a.pci_slot().unwrap(), 1);
        while a.pci_slot().is_ok() {}
        assert!(matches!(a.pci_slot(), Err(Error::PciSlots)));
        assert_eq!(a.msi_gsis(3).unwrap(), vec![24, 25, 26]);
        assert_eq!(a.msi_gsis(1).unwrap(), vec![27]);
    }
}
