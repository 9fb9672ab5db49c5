//! The VM's event loop: one thread, on `event-manager`, for what is not a vCPU.
//!
//! It moves host input into the serial device, serves the devices' queues (handlers the
//! device manager registered), and when the [`ExitSignal`] fires it stops
//! every vCPU thread, closes the console and publishes the exit status. It is the only
//! thread that joins vCPU threads, so "exited" means every vCPU has really stopped.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console::Console;
use crate::devices::serial::{SerialDevice, INPUT_QUEUE_LIMIT};
use crate::devices::virtio::VirtioDevice;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};
use crate::sync::Locked;
use crate::vcpu::VcpuHandles;

/// Host input on its way to the serial device.
#[derive(Debug)]
pub struct ConsoleInput {
    staged: Mutex<VecDeque<u8>>,
    event: EventFd,
}

impl ConsoleInput {
    /// An empty input queue.
    pub fn new() -> std::io::Result<Self> {
        Ok(ConsoleInput {
            staged: Mutex::new(VecDeque::new()),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Queues `data` for the guest; returns how many bytes were accepted (the queue holds at
    /// most [`INPUT_QUEUE_LIMIT`] bytes the event loop has not moved on yet).
    pub fn push(&self, data: &[u8]) -> usize {
        let mut staged = self.staged.locked();
        let n = data
            .len()
            .min(INPUT_QUEUE_LIMIT.saturating_sub(staged.len()));
        staged.extend(&data[..n]);
        drop(staged);
        if n > 0 {
            let _ = self.event.write(1);
        }
        n
    }
}

/// Published when the VM has fully stopped.
#[derive(Debug, Default)]
pub struct Finished {
    status: Mutex<Option<ExitStatus>>,
    cond: Condvar,
}

impl Finished {
    /// Publishes `status` and wakes waiters.
    pub fn set(&self, status: ExitStatus) {
        *self.status.locked() = Some(status);
        self.cond.notify_all();
    }

    /// The status, if the VM has stopped.
    pub fn get(&self) -> Option<ExitStatus> {
        self.status.locked().clone()
    }

    /// Waits up to `timeout` (forever if `None`) for the VM to stop.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        let guard = self.status.locked();
        let guard = match timeout {
            None => self
                .cond
                .wait_while(guard, |s| s.is_none())
                .unwrap_or_else(|e| e.into_inner()),
            Some(t) => self
                .cond
                .wait_timeout_while(guard, t, |s| s.is_none())
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0),
        };
        guard.clone()
    }
}

struct InputPump {
    input: Arc<ConsoleInput>,
    serial: Arc<Mutex<SerialDevice>>,
}

impl MutEventSubscriber for InputPump {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.input.event.read();
        let mut staged = self.input.staged.locked();
        let (a, b) = staged.as_slices();
        let data = [a, b].concat();
        let accepted = self.serial.locked().queue_input(&data);
        staged.drain(..accepted);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.input.event, EventSet::IN));
    }
}

struct ExitWatcher {
    exit: Arc<ExitSignal>,
    fired: bool,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.exit.event().read();
        self.fired = self.exit.stop_requested();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.event(), EventSet::IN));
    }
}

/// What the event loop thread owns.
pub struct EventLoop {
    /// Raised by whatever ends the VM.
    pub exit: Arc<ExitSignal>,
    /// Host input for the serial device.
    pub input: Arc<ConsoleInput>,
    /// The serial device.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Closed when the VM stops.
    pub console: Arc<Console>,
    /// Where the final status is published.
    pub finished: Arc<Finished>,
    /// The vCPU threads, stopped and joined here when the VM stops.
    pub vcpus: Arc<VcpuHandles>,
    /// The devices' handlers (virtio queue notifications), from the device manager.
    pub subscribers: Vec<Box<dyn MutEventSubscriber + Send>>,
    /// The virtio devices, released once every vCPU has stopped.
    pub devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    /// Install the event loop's seccomp filter.
    pub seccomp: bool,
    /// The devices' child processes (passt), which the loop stops when the VM does.
    pub children: Vec<u32>,
    /// The VM has shared directories: the loop's filter lets the file server work.
    pub shares: bool,
}

/// Lets every device give back its host resources (TAPs, passt, sockets).
pub fn release_devices(devices: &[Arc<Mutex<dyn VirtioDevice>>]) {
    for device in devices {
        device.locked().release();
    }
}

/// How long the loop sleeps in epoll between checks of the stop flag, as a safety net.
const POLL_MS: i32 = 200;
/// How often a vCPU thread that has not stopped yet is kicked again.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

impl EventLoop {
    /// Runs the loop on a new thread (filtered, if asked, before it starts).
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        let filter = self.seccomp.then(|| {
            let scope = crate::seccomp::Scope {
                children: self.children.clone(),
                kick_signal: crate::vcpu::kick_signal(),
                shares: self.shares,
            };
            (crate::seccomp::ThreadKind::EventLoop, scope)
        });
        crate::seccomp::spawn("vmm-event-loop".into(), filter, move || self.run())
    }

    fn run(mut self) {
        if let Err(e) = self.serve() {
            self.exit.request(ExitStatus::with_detail(
                ExitReason::Error,
                format!("event loop failed: {e}"),
            ));
        }
        self.stop_vcpus();
        release_devices(&self.devices);
        let status = self.exit.status().unwrap_or_else(|| {
            ExitStatus::with_detail(ExitReason::Error, "stopped without a reason")
        });
        // Publish the status before the end of output, so a reader that sees the console's
        // end also sees how the VM ended.
        self.finished.set(status);
        self.console.close();
    }

    fn serve(&mut self) -> Result<(), event_manager::Error> {
        let mut em: EventManager<Box<dyn MutEventSubscriber + Send>> = EventManager::new()?;
        em.add_subscriber(Box::new(InputPump {
            input: self.input.clone(),
            serial: self.serial.clone(),
        }));
        let _watcher = em.add_subscriber(Box::new(ExitWatcher {
            exit: self.exit.clone(),
            fired: false,
        }));
        for subscriber in self.subscribers.drain(..) {
            em.add_subscriber(subscriber);
        }
        while !self.exit.stop_requested() {
            em.run_with_timeout(POLL_MS)?;
        }
        Ok(())
    }

    fn stop_vcpus(&mut self) {
        if !self.vcpus.stop_and_join(KICK_INTERVAL) {
            self.exit.request(ExitStatus::with_detail(
                ExitReason::Error,
                "a vCPU thread panicked",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_wait_times_out_then_sees_the_status() {
        let f = Arc::new(Finished::default());
        assert_eq!(f.wait(Some(Duration::from_millis(10))), None);
        let f2 = f.clone();
        let h = std::thread::spawn(move || f2.set(ExitStatus::new(ExitReason::Reset)));
        assert_eq!(f.wait(None).unwrap().reason, ExitReason::Reset);
        h.join().unwrap();
    }

    #[test]
    fn console_input_is_bounded() {
        let input = ConsoleInput::new().unwrap();
        assert_eq!(
            input.push(&vec![0u8; INPUT_QUEUE_LIMIT + 5]),
            INPUT_QUEUE_LIMIT
        );
        assert_eq!(input.push(b"x"), 0);
    }
}
