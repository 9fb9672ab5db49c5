//! Pausing vCPUs: a gate each vCPU thread parks at, and the registry used to kick them there.
//!
//! `pause` closes the gate and kicks every vCPU thread out of `KVM_RUN` with the kick signal;
//! each parks at the top of its loop and is counted, so `pause` returns only once no vCPU
//! runs guest code. `resume` opens the gate. Stopping the VM releases the gate for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::vcpu::kick_signal;

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    parked: usize,
    released: bool,
}

/// The gate vCPU threads park at while the VM is paused.
#[derive(Debug, Default)]
pub struct PauseGate {
    closed: AtomicBool,
    state: Mutex<GateState>,
    cond: Condvar,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether vCPUs should park (checked by each vCPU between exits).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Called by a vCPU thread: waits while the gate is closed.
    pub fn park(&self) {
        let mut st = self.lock();
        st.parked += 1;
        self.cond.notify_all();
        while st.paused && !st.released {
            st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.parked -= 1;
        self.cond.notify_all();
    }

    /// Closes the gate.
    pub fn close(&self) {
        self.lock().paused = true;
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Waits up to `timeout` until `count` vCPUs are parked.
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.parked < count && !st.released {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    /// Opens the gate.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        self.lock().paused = false;
        self.cond.notify_all();
    }

    /// Opens the gate for good: the VM is stopping.
    pub fn release(&self) {
        self.closed.store(false, Ordering::SeqCst);
        let mut st = self.lock();
        st.released = true;
        st.paused = false;
        drop(st);
        self.cond.notify_all();
    }

    /// Whether the gate is closed and has not been released.
    pub fn is_paused(&self) -> bool {
        let st = self.lock();
        st.paused && !st.released
    }
}

/// The vCPU threads that may be kicked: emptied (under its lock) before they are joined, so
/// a kick never targets a joined thread.
#[derive(Debug, Default)]
pub struct VcpuThreads(Mutex<Vec<libc::pthread_t>>);

impl VcpuThreads {
    /// Registers the running vCPU threads.
    pub fn set(&self, threads: Vec<libc::pthread_t>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = threads;
    }

    /// Forgets the threads (before joining them).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Sends the kick signal to every registered thread; returns how many there are.
    pub fn kick_all(&self) -> usize {
        let threads = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &t in threads.iter() {
            // SAFETY: `t` is a vCPU thread that has not been joined (the list is cleared under
            // this lock before joining), so its pthread_t is valid; the kick signal has a
            // handler installed (`register_kick_handler`), so delivery only interrupts KVM_RUN.
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
        threads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn park_waits_until_open() {
        let gate = Arc::new(PauseGate::default());
        gate.close();
        let g = gate.clone();
        let t = std::thread::spawn(move || g.park());
        assert!(gate.wait_parked(1, Duration::from_secs(5)));
        assert!(gate.is_paused());
        gate.open();
        t.join().unwrap();
        assert!(!gate.is_paused());
    }

    #[test]
    fn release_frees_parked_threads_for_good() {
        let gate = Arc::new(PauseGate::default());
        gate.close();
        let g = gate.clone();
        let t = std::thread::spawn(move || g.park());
        assert!(gate.wait_parked(1, Duration::from_secs(5)));
        gate.release();
        t.join().unwrap();
        gate.close();
        assert!(!gate.is_paused());
    }
}
