//! Locks that survive a panic elsewhere.
//!
//! A thread that panics while holding one of the VMM's mutexes (a device, a transport, a
//! table) poisons it. Every such structure is left consistent before anything that could
//! panic, so the VMM takes the lock over rather than failing every later call; this is the
//! one place that says so.

use std::sync::{Mutex, MutexGuard};

/// [`Mutex::lock`], taking the lock over from a thread that panicked while holding it.
pub trait Locked<T: ?Sized> {
    /// The guard, poisoned or not.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_over() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.lock().is_err());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }
}
