//! Emulated devices and the port-I/O bus that routes guest accesses to them.
//!
//! The interrupt controllers and the PIT are KVM's own (in-kernel); what is here is what
//! KVM leaves to user space: the 16550A serial console and the i8042 (only its CPU-reset
//! line matters: it is how a guest with `reboot=k` reboots).

pub mod bus;
pub mod i8042;
pub mod serial;

pub use bus::{Bus, BusDevice, MmioBus, PioBus};

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of guest accesses, read with [`DeviceStats::snapshot`].
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Port-I/O exits.
    pub pio: AtomicU64,
    /// Port-I/O accesses to no device.
    pub pio_unhandled: AtomicU64,
    /// MMIO exits (there are no MMIO devices yet: all are unhandled).
    pub mmio: AtomicU64,
}

impl DeviceStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// `(pio, pio_unhandled, mmio)`.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.pio.load(Ordering::Relaxed),
            self.pio_unhandled.load(Ordering::Relaxed),
            self.mmio.load(Ordering::Relaxed),
        )
    }
}
