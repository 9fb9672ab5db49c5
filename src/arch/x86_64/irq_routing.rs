//! The VM's GSI routing table: the IOAPIC and PIC pins, plus one route per MSI vector.
//!
//! `KVM_SET_GSI_ROUTING` replaces the whole table, so the routes `KVM_CREATE_IRQCHIP`
//! installs by default (GSIs 0–15 to both PICs and the IOAPIC, 16–23 to the IOAPIC) are
//! written again with every MSI route. MSI routes start at [`MSI_GSI_BASE`]; each has an
//! irqfd registered on it, so a device signals a vector by writing that eventfd and KVM
//! delivers the message the driver programmed, without the VMM on the path.

use crate::sync::Locked;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

/// The GSIs devices may have, in the order the device manager hands them out: the IOAPIC's
/// pins 5–23 except those a PC's legacy devices own (8: RTC, 9: the ACPI SCI, 12: the PS/2
/// mouse). COM1 (4), the i8042 (1) and the PIT (0) are below the range.
pub const DEVICE_GSIS: [u32; 16] = [5, 6, 7, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];

/// How many devices can get a GSI (what a configuration may ask for).
pub const MAX_IRQ_DEVICES: usize = DEVICE_GSIS.len();

/// The first GSI of MSI routes: above the IOAPIC's 24 pins.
pub const MSI_GSI_BASE: u32 = 24;
/// The IOAPIC's pins (GSIs 0–23).
const IOAPIC_PINS: u32 = 24;
/// GSIs the PICs also see (0–15).
const PIC_PINS: u32 = 16;

/// Sets MSI routes (what a PCI function's MSI-X table says) for KVM.
pub trait MsiRouter: Send + Sync {
    /// Routes `gsi` to the message (`address`, `data`); `None` removes the route.
    fn route(&self, gsi: u32, message: Option<(u64, u32)>) -> Result<(), String>;
}

/// The table, kept in the VMM because KVM only takes it whole.
pub struct GsiRouting {
    vm_fd: Arc<VmFd>,
    msi: Mutex<BTreeMap<u32, (u64, u32)>>,
}

impl GsiRouting {
    /// The table of `vm_fd`, which has its in-kernel irqchip.
    pub fn new(vm_fd: Arc<VmFd>) -> Self {
        GsiRouting {
            vm_fd,
            msi: Mutex::new(BTreeMap::new()),
        }
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = address as u32;
    e.u.msi.address_hi = (address >> 32) as u32;
    e.u.msi.data = data;
    e
}

/// The whole table: the default irqchip routes, then `msi`'s.
pub fn entries(msi_routes: &BTreeMap<u32, (u64, u32)>) -> Vec<kvm_irq_routing_entry> {
    let mut out = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < PIC_PINS {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            out.push(irqchip(gsi, chip, gsi % 8));
        }
        out.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, &(address, data)) in msi_routes {
        out.push(msi(gsi, address, data));
    }
    out
}

impl MsiRouter for GsiRouting {
    fn route(&self, gsi: u32, message: Option<(u64, u32)>) -> Result<(), String> {
        let mut routes = self.msi.locked();
        let changed = match message {
            Some(m) => routes.insert(gsi, m) != Some(m),
            None => routes.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let table = KvmIrqRouting::from_entries(&entries(&routes))
            .map_err(|e| format!("cannot build the GSI routing table: {e:?}"))?;
        self.vm_fd
            .set_gsi_routing(&table)
            .map_err(|e| format!("KVM_SET_GSI_ROUTING failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_routes_come_first_then_the_msi_ones() {
        let mut routes = BTreeMap::new();
        routes.insert(25, (0xfee0_1000, 0x41));
        let e = entries(&routes);
        assert_eq!(e.len(), 16 * 2 + 8 + 1);
        let last = e.last().unwrap();
        assert_eq!((last.gsi, last.type_), (25, KVM_IRQ_ROUTING_MSI));
        // SAFETY: an MSI entry: `msi` is the union's active field.
        let m = unsafe { last.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_1000, 0, 0x41));
        let pin9: Vec<_> = e.iter().filter(|x| x.gsi == 9).collect();
        assert_eq!(pin9.len(), 2, "GSI 9 reaches the slave PIC and the IOAPIC");
        // SAFETY: irqchip entries: `irqchip` is the active field.
        let chips: Vec<_> = pin9.iter().map(|x| unsafe { x.u.irqchip }).collect();
        assert_eq!((chips[0].irqchip, chips[0].pin), (KVM_IRQCHIP_PIC_SLAVE, 1));
        assert_eq!((chips[1].irqchip, chips[1].pin), (KVM_IRQCHIP_IOAPIC, 9));
    }

    #[test]
    fn routes_reach_kvm() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return; // no KVM here: the probe-guest tests cover it
        };
        let vm_fd = Arc::new(kvm.create_vm().unwrap());
        vm_fd.create_irq_chip().unwrap();
        let r = GsiRouting::new(vm_fd);
        r.route(24, Some((0xfee0_0000, 0x40))).unwrap();
        r.route(24, Some((0xfee0_0000, 0x40))).unwrap();
        r.route(24, None).unwrap();
    }
}
