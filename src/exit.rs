//! How a VM ends, and the signal every part of the VM uses to end it.
//!
//! The first party to call [`ExitSignal::request`] decides the [`ExitStatus`]: a vCPU that
//! saw a triple fault, the i8042 on a CPU-reset command, or the host calling `kill`. The
//! request raises a stop flag that vCPU threads check between exits, and wakes the event
//! loop, which stops the remaining vCPUs.

use crate::sync::Locked;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why a VM stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 CPU-reset command, e.g. `reboot` with `reboot=k`).
    Reset,
    /// The guest powered off: it wrote its exit code to the exit device.
    Poweroff,
    /// The guest kernel panicked (`Kernel panic - not syncing` on its console).
    Panic,
    /// A vCPU triple-faulted (KVM shutdown exit).
    Shutdown,
    /// The host killed the VM.
    Killed,
    /// KVM failed to run a vCPU (internal error, failed entry, an unexpected exit).
    Error,
}

impl ExitReason {
    /// The reason's name, as the Python API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Reset => "reset",
            ExitReason::Poweroff => "poweroff",
            ExitReason::Panic => "panic",
            ExitReason::Shutdown => "shutdown",
            ExitReason::Killed => "killed",
            ExitReason::Error => "error",
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stopped VM's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// Why it stopped.
    pub reason: ExitReason,
    /// Details for humans: which vCPU, KVM's error, the guest's instruction pointer.
    pub detail: Option<String>,
    /// The exit code the guest wrote to the exit device, if it did.
    pub code: Option<u32>,
}

impl ExitStatus {
    /// A status without details.
    pub fn new(reason: ExitReason) -> Self {
        ExitStatus {
            reason,
            detail: None,
            code: None,
        }
    }

    /// A status with details.
    pub fn with_detail(reason: ExitReason, detail: impl Into<String>) -> Self {
        ExitStatus {
            reason,
            detail: Some(detail.into()),
            code: None,
        }
    }
}

/// Shared by everything that can end the VM.
#[derive(Debug)]
pub struct ExitSignal {
    /// The status and when it was decided.
    status: Mutex<Option<(ExitStatus, Instant)>>,
    stop: AtomicBool,
    event: EventFd,
}

impl ExitSignal {
    /// A signal nobody has raised yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            status: Mutex::new(None),
            stop: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Ends the VM with `status`, unless something ended it first. Returns whether this
    /// call decided the status.
    pub fn request(&self, status: ExitStatus) -> bool {
        let mut slot = self.status.locked();
        let first = slot.is_none();
        if first {
            *slot = Some((status, Instant::now()));
        }
        drop(slot);
        self.stop.store(true, Ordering::SeqCst);
        // Failing to wake the event loop only delays the stop until its next timeout.
        let _ = self.event.write(1);
        first
    }

    /// Whether the VM has been asked to stop; vCPUs check this between exits.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The status, once decided.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status.locked().as_ref().map(|(s, _)| s.clone())
    }

    /// When the status was decided: the guest's reset, power-off or panic line, a vCPU's
    /// failure, or the host's kill (what a boot timeline calls the exit).
    pub fn decided_at(&self) -> Option<Instant> {
        self.status.locked().as_ref().map(|&(_, at)| at)
    }

    /// The eventfd the event loop waits on.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.stop_requested() && s.decided_at().is_none());
        assert!(s.request(ExitStatus::new(ExitReason::Reset)));
        let at = s.decided_at().unwrap();
        assert!(!s.request(ExitStatus::new(ExitReason::Killed)));
        assert_eq!(s.decided_at(), Some(at));
        assert!(s.stop_requested());
        assert_eq!(s.status().unwrap().reason, ExitReason::Reset);
        assert_eq!(s.event().read().unwrap(), 2);
    }
}
