//! Releasing a stopped VM's kernel resources off the caller's thread.
//!
//! Closing a KVM VM file descriptor destroys the VM in the kernel, which can take longer
//! than creating and running a small guest (about 13 ms on a PVM host, against 9 ms for the
//! rest of a tiny VM's life). Dropping a [`crate::Vm`] hands the VM fd and guest memory to
//! one background thread instead, so a loop of short-lived VMs overlaps their teardown with
//! the next VM's work. At most [`MAX_PENDING`] VMs wait there; beyond that the dropping
//! thread releases its own, so memory stays bounded however fast VMs are made.

use crate::sync::Locked;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};

/// VMs waiting for release at most; more are released by the thread that drops them.
pub const MAX_PENDING: usize = 4;

type Work = Box<dyn Send>;

fn sender() -> Option<&'static Mutex<SyncSender<Work>>> {
    static SENDER: OnceLock<Option<Mutex<SyncSender<Work>>>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            let (tx, rx) = sync_channel::<Work>(MAX_PENDING);
            let spawned = std::thread::Builder::new()
                .name("vmm-reaper".into())
                .spawn(move || {
                    // Not fatal: without seccomp the reaper still works, unfiltered.
                    let _ = crate::seccomp::install(
                        crate::seccomp::ThreadKind::Reaper,
                        &crate::seccomp::Scope::default(),
                    );
                    for work in rx {
                        drop(work);
                    }
                });
            spawned.ok().map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Drops `resources` on the reaper thread, or here if it is busy or could not start.
pub fn release<T: Send + 'static>(resources: T) {
    let work: Work = Box::new(resources);
    let Some(sender) = sender() else {
        return; // `work` drops here
    };
    let sender = sender.locked();
    match sender.try_send(work) {
        Ok(()) => {}
        Err(TrySendError::Full(work) | TrySendError::Disconnected(work)) => {
            drop(sender);
            drop(work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn everything_released_is_dropped_somewhere() {
        let dropped = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            release(Counted(dropped.clone()));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while dropped.load(Ordering::SeqCst) < 50 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(dropped.load(Ordering::SeqCst), 50);
    }
}
