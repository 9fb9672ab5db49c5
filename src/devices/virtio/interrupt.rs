//! What a virtio device signals the driver with, whatever the transport.
//!
//! A device says "I used buffers on queue `q`" ([`Interrupt::queue`]) or "my configuration
//! changed" ([`Interrupt::config`]); the transport decides how the driver hears it:
//!
//! - virtio-mmio: one edge-triggered GSI (an irqfd), and the InterruptStatus register says
//!   why;
//! - virtio-pci with MSI-X enabled: the message of the vector the driver gave that queue (or
//!   the configuration), through [`Vectors`]; no interrupt status is kept, as the spec asks;
//! - virtio-pci without MSI-X (`pci=nomsi`, or a driver that never enables it): INTx, a
//!   level-triggered IOAPIC pin (an irqfd with a resample eventfd) held while the ISR byte is
//!   non-zero.
//!
//! Devices never see the difference, so a device works on both transports unchanged.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus / ISR bit: the device used buffers.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus / ISR bit: the configuration (or DEVICE_NEEDS_RESET) changed.
pub const INT_CONFIG: u32 = 2;

/// Per-queue message-signalled interrupts (virtio-pci's MSI-X), as the interrupt sees them.
pub trait Vectors: Send + Sync {
    /// Whether the driver enabled MSI-X: if not, the interrupt falls back to its line.
    fn enabled(&self) -> bool;
    /// Sends queue `index`'s vector (or marks it pending while masked).
    fn queue(&self, index: usize);
    /// Sends the configuration-change vector (or marks it pending while masked).
    fn config(&self);
    /// Whether the line may be asserted (PCI's command register has INTx Disable).
    fn line_allowed(&self) -> bool {
        true
    }
}

/// A device's interrupt and the status the driver reads through the transport.
///
/// Shared by the transport (which the guest reads and acknowledges) and the device (which
/// raises it from the event loop).
pub struct Interrupt {
    line: EventFd,
    vectors: Option<Arc<dyn Vectors>>,
    status: AtomicU32,
    needs_reset: AtomicBool,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupt")
            .field("status", &self.status)
            .field("needs_reset", &self.needs_reset)
            .field("vectors", &self.vectors.is_some())
            .finish()
    }
}

impl Interrupt {
    /// An interrupt that signals `line` (an irqfd KVM raises the device's GSI with).
    pub fn new(line: EventFd) -> Self {
        Interrupt {
            line,
            vectors: None,
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// An interrupt that sends `vectors`' messages while they are enabled, and signals `line`
    /// otherwise.
    pub fn with_vectors(line: EventFd, vectors: Arc<dyn Vectors>) -> Self {
        Interrupt {
            vectors: Some(vectors),
            ..Interrupt::new(line)
        }
    }

    fn msix(&self) -> Option<&dyn Vectors> {
        self.vectors.as_deref().filter(|v| v.enabled())
    }

    fn line_allowed(&self) -> bool {
        self.vectors.as_ref().is_none_or(|v| v.line_allowed())
    }

    fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if self.line_allowed() {
            // A full eventfd counter still has the interrupt pending: nothing is lost.
            let _ = self.line.write(1);
        }
    }

    /// The device used buffers on queue `index`.
    pub fn queue(&self, index: usize) {
        match self.msix() {
            Some(v) => v.queue(index),
            None => self.raise(INT_USED_RING),
        }
    }

    /// The device's configuration (or its DEVICE_NEEDS_RESET) changed.
    pub fn config(&self) {
        match self.msix() {
            Some(v) => {
                self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
                v.config()
            }
            None => self.raise(INT_CONFIG),
        }
    }

    /// Raises the line again if the status still asks for it: a level-triggered line that
    /// the guest acknowledged at its interrupt controller while the device had more to say.
    pub fn resample(&self) {
        if self.msix().is_none() && self.line_allowed() && self.status() != 0 {
            let _ = self.line.write(1);
        }
    }

    /// InterruptStatus (MMIO) or the ISR byte (PCI).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Reads and clears the status (virtio-pci's ISR: reading it acknowledges).
    pub fn take_status(&self) -> u32 {
        self.status.swap(0, Ordering::SeqCst)
    }

    /// The device cannot go on until the driver resets it (a guest broke the queue's rules):
    /// sets DEVICE_NEEDS_RESET and tells the driver through a configuration interrupt.
    pub fn fail(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.config();
    }

    /// Whether [`Interrupt::fail`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Takes a saved status and DEVICE_NEEDS_RESET (snapshot restore).
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Back to the power-on state (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        on: AtomicBool,
        sent: Mutex<Vec<Option<usize>>>,
    }

    impl Vectors for Recorder {
        fn enabled(&self) -> bool {
            self.on.load(Ordering::SeqCst)
        }
        fn queue(&self, index: usize) {
            self.sent.lock().unwrap().push(Some(index));
        }
        fn config(&self) {
            self.sent.lock().unwrap().push(None);
        }
    }

    #[test]
    fn a_line_carries_the_reason_in_the_status() {
        let irq = Interrupt::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        irq.queue(1);
        assert_eq!(irq.status(), INT_USED_RING);
        assert_eq!(irq.line.read().unwrap(), 1);
        irq.fail();
        assert!(irq.needs_reset());
        assert_eq!(irq.take_status(), INT_USED_RING | INT_CONFIG);
        assert_eq!(irq.status(), 0);
        let _ = irq.line.read();
        irq.resample();
        assert!(
            irq.line.read().is_err(),
            "nothing to say: the line is not raised again"
        );
        irq.restore(INT_USED_RING, false);
        irq.resample();
        assert_eq!(
            irq.line.read().unwrap(),
            1,
            "still something to say: raised again"
        );
    }

    #[test]
    fn enabled_vectors_take_over_from_the_line() {
        let rec = Arc::new(Recorder::default());
        let line = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let irq = Interrupt::with_vectors(line, rec.clone());
        irq.queue(0);
        assert_eq!(irq.status(), INT_USED_RING, "MSI-X off: INTx");
        irq.take_status();
        assert_eq!(irq.line.read().unwrap(), 1);
        rec.on.store(true, Ordering::SeqCst);
        irq.queue(2);
        irq.config();
        assert_eq!(*rec.sent.lock().unwrap(), vec![Some(2), None]);
        assert_eq!(
            irq.status(),
            INT_CONFIG,
            "only the config bit is kept with MSI-X"
        );
        irq.take_status();
        irq.resample();
        assert!(irq.line.read().is_err(), "no INTx while MSI-X is on");
    }
}
