//! Emulated devices and the buses that route guest accesses to them.
//!
//! The interrupt controllers and the PIT are KVM's own (in-kernel); what is here is what
//! KVM leaves to user space: the 16550A serial console, the i8042 (only its CPU-reset line
//! matters: it is how a guest with `reboot=k` reboots), the ACPI PM1 block, the exit and
//! boot-marker registers, and the virtio devices ([`virtio`]: the MMIO transport and one
//! folder per device). [`crate::device_manager`] wires them up.

pub mod acpi_pm;
pub mod boot_marker;
pub mod bus;
pub mod exit_device;
pub mod i8042;
pub mod pci;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, MmioBus, PioBus};

/// A device whose guest-visible state snapshots carry: saved as a plain serializable struct,
/// restored into a freshly built device of the same kind and wiring (interrupt line, output,
/// guest memory), which the VM builds from its configuration as for a boot.
pub trait Persist {
    /// The device's state.
    type State: serde::Serialize + serde::de::DeserializeOwned;
    /// Saves the state.
    fn save(&self) -> Self::State;
    /// Takes a saved state; an error says why it does not fit this device.
    fn restore(&mut self, state: &Self::State) -> Result<(), String>;
}

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of guest accesses, read with [`DeviceStats::snapshot`].
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Port-I/O exits.
    pub pio: AtomicU64,
    /// Port-I/O accesses to no device.
    pub pio_unhandled: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// MMIO accesses to no device.
    pub mmio_unhandled: AtomicU64,
    /// HLT exits (rare: the in-kernel LAPIC handles HLT).
    pub hlt: AtomicU64,
    /// `KVM_RUN` calls interrupted by a signal (kicks).
    pub interrupted: AtomicU64,
}

impl DeviceStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ExitCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExitCounts {
            pio: get(&self.pio),
            pio_unhandled: get(&self.pio_unhandled),
            mmio: get(&self.mmio),
            mmio_unhandled: get(&self.mmio_unhandled),
            hlt: get(&self.hlt),
            interrupted: get(&self.interrupted),
        }
    }
}

/// A snapshot of [`DeviceStats`]: vCPU exits by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port-I/O exits.
    pub pio: u64,
    /// Port-I/O accesses to no device.
    pub pio_unhandled: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// MMIO accesses to no device.
    pub mmio_unhandled: u64,
    /// HLT exits.
    pub hlt: u64,
    /// `KVM_RUN` calls interrupted by a signal.
    pub interrupted: u64,
}
