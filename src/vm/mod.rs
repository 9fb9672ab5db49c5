//! A whole virtual machine: built from a [`VmConfig`], started, waited on, killed.
//!
//! [`Vm::new`] does everything that can fail because of the configuration — it opens KVM,
//! maps memory, loads the kernel and creates the vCPUs — so that [`Vm::start`] only spawns
//! threads. Every method takes `&self`: one thread may block in [`Vm::wait`] while another
//! calls [`Vm::kill`] or reads the console.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use event_manager::MutEventSubscriber;

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;
use crate::boot::{self, BootInfo};
use crate::config::VmConfig;
use crate::console::Console;
use crate::device_manager::DevicesState;
use crate::device_manager::{legacy, DeviceInfo, DeviceManager};
use crate::devices::acpi_pm::AcpiPm1;
use crate::devices::boot_marker::BootMarkers;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::{Net, NetCounters};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::transport::VirtioTransport;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{DeviceStats, ExitCounts, Persist};
use crate::error::{Error, Result};
use crate::event_loop::{ConsoleInput, EventLoop, Finished};
pub use crate::exit::{ExitReason, ExitSignal, ExitStatus};
use crate::memory::{
    create_guest_memory, create_guest_memory_backed, register_guest_memory, GuestRam,
};
use crate::snapshot::Snapshot;
use crate::sync::Locked;
use crate::vcpu::{register_kick_handler, Vcpu, VcpuEvent, VcpuHandles, VcpuResponse};

mod builder;
mod dump;
mod snapshot;

use self::snapshot::snapshot_error;
pub use self::snapshot::{ForkSpec, RestoreOptions, MAX_FORK};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, not started.
    Created,
    /// vCPUs are running (or stopping).
    Running,
    /// Paused: every vCPU is parked outside `KVM_RUN` until [`Vm::resume`].
    Paused,
    /// Every vCPU has stopped; the exit status is known.
    Exited,
}

impl VmState {
    /// The state's name, as the Python API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Exited => "exited",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters describing a VM's activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmStats {
    /// vCPU exits by kind.
    pub exits: ExitCounts,
    /// Bytes the guest printed on its console.
    pub console_bytes: u64,
    /// Time since [`Vm::start`].
    pub uptime: Duration,
}

/// Parts that only exist between [`Vm::new`] and [`Vm::start`].
struct Unstarted {
    vcpus: Vec<Vcpu>,
    subscribers: Vec<Box<dyn MutEventSubscriber + Send>>,
}

/// A virtual machine.
pub struct Vm {
    config: VmConfig,
    boot: BootInfo,
    console: Arc<Console>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    input: Arc<ConsoleInput>,
    exit: Arc<ExitSignal>,
    finished: Arc<Finished>,
    stats: Arc<DeviceStats>,
    markers: Arc<BootMarkers>,
    /// The vCPU threads' handles, once started.
    vcpus: Arc<VcpuHandles>,
    /// Every vCPU is paused (between [`Vm::pause`] and [`Vm::resume`]).
    paused: AtomicBool,
    unstarted: Mutex<Option<Unstarted>>,
    event_loop: Mutex<Option<JoinHandle<()>>>,
    started_at: Mutex<Option<Instant>>,
    pm1: Option<Arc<Mutex<AcpiPm1>>>,
    /// The gdb stub, bound and waiting for [`Vm::start`] ([`crate::gdb`]).
    gdb: Mutex<Option<crate::gdb::Pending>>,
    /// Its thread once started (joined before guest memory goes).
    gdb_thread: Mutex<Option<JoinHandle<()>>>,
    /// The gdb client's socket while one is attached ([`crate::gdb::hang_up`]).
    gdb_client: Arc<Mutex<Option<i32>>>,
    /// Whether the vCPUs are held for gdb: set when they start with a stub, cleared by the
    /// stub's first resume. While set, [`Vm::resume`] leaves them to gdb's `continue`.
    gdb_hold: Arc<AtomicBool>,
    /// The virtio devices, in the order they were registered.
    devices: Vec<DeviceInfo>,
    /// Every virtio device and its transport, in registration order (snapshots).
    virtio: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    transports: Vec<Arc<Mutex<dyn VirtioTransport>>>,
    /// The file guest RAM privately maps, if it does (a restored or forked VM, or a parent
    /// since its first fork); None for anonymous memory.
    memory_base: Mutex<Option<MemoryBase>>,
    /// Released by `Drop` once the vCPU threads are joined (guest memory must outlive them),
    /// through [`crate::reaper`].
    resources: Option<Resources>,
}

/// A file guest RAM is a private mapping of.
#[derive(Clone)]
struct MemoryBase {
    file: Arc<File>,
    /// A sealed memfd this VMM made for forks (as opposed to a user's snapshot file).
    sealed: bool,
}

/// The kernel VM and the guest memory: slow to release, so released off the caller's thread.
struct Resources {
    // Fields drop in order: the VM (which maps the memory) before the memory.
    vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    ram: GuestRam,
}

/// What a VM is built from.
enum Origin<'a> {
    /// A fresh boot of the configured kernel.
    Boot,
    /// A saved state (restore or fork): memory already holds the guest.
    Saved(&'a Snapshot),
}

impl Vm {
    /// Builds a VM: validates `config`, creates the KVM VM with its in-kernel irqchip and
    /// PIT, maps and registers guest memory, loads the boot images and creates the vCPUs.
    pub fn new(mut config: VmConfig) -> Result<Vm> {
        if let Some(root) = config.host_root.take() {
            config = root.apply(config)?;
        }
        let kvm = crate::kvm::open_kvm()?;
        config.validate(crate::kvm::host_memory_mib(), kvm.get_max_vcpus() as u32)?;
        let ram = create_guest_memory(config.memory_bytes())?;
        Self::build(kvm, config, ram, Origin::Boot)
    }

    /// Starts the vCPU threads and the event loop. A VM starts once.
    pub fn start(&self) -> Result<()> {
        self.start_threads(false)
    }

    /// Starts the vCPU threads (`paused`: held out of guest code until [`Vm::resume`]) and
    /// the event loop.
    fn start_threads(&self, paused: bool) -> Result<()> {
        let parts = self.unstarted.locked().take();
        let Some(parts) = parts else {
            return Err(Error::InvalidState {
                operation: "start",
                state: self.state().as_str(),
            });
        };
        *self.started_at.locked() = Some(Instant::now());
        self.markers.start_clock();
        let mut handles = Vec::with_capacity(parts.vcpus.len());
        self.paused.store(paused, Ordering::SeqCst);
        let mut vcpu_error = None;
        let gdb = self.gdb.locked().take();
        let ids: Vec<u8> = parts.vcpus.iter().map(|v| v.id()).collect();
        // With a gdb stub, the vCPUs wait for gdb's `continue` (the VM itself is running).
        let held = paused || gdb.is_some();
        self.gdb_hold.store(gdb.is_some(), Ordering::SeqCst);
        for vcpu in parts.vcpus {
            match vcpu.start(held, self.config.seccomp) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    self.exit.request(ExitStatus::with_detail(
                        ExitReason::Error,
                        format!("cannot start a vCPU thread: {e}"),
                    ));
                    vcpu_error = Some(e);
                    break;
                }
            }
        }
        self.vcpus.set(handles);
        if let (Some(pending), Some(resources)) = (gdb, &self.resources) {
            let machine = crate::gdb::Machine {
                vcpus: self.vcpus.clone(),
                ids,
                mem: resources.ram.memory().clone(),
                exit: self.exit.clone(),
                client: self.gdb_client.clone(),
                hold: self.gdb_hold.clone(),
            };
            match crate::gdb::spawn(pending, machine) {
                Ok(handle) => *self.gdb_thread.locked() = Some(handle),
                Err(e) => vcpu_error = vcpu_error.or(Some(e)),
            }
        }
        let event_loop = EventLoop {
            exit: self.exit.clone(),
            input: self.input.clone(),
            serial: self.serial.clone(),
            console: self.console.clone(),
            finished: self.finished.clone(),
            vcpus: self.vcpus.clone(),
            subscribers: parts.subscribers,
            devices: self.virtio.clone(),
            seccomp: self.config.seccomp,
            children: self
                .virtio
                .iter()
                .filter_map(|d| d.locked().child_pid())
                .collect(),
            shares: !self.config.shares.is_empty(),
        };
        let handle = match event_loop.spawn() {
            Ok(handle) => handle,
            Err(e) => {
                // Nothing else would stop the vCPUs that did start: stop them here, and end
                // the VM as the event loop would have.
                let status = ExitStatus::with_detail(
                    ExitReason::Error,
                    format!("cannot start the event loop thread: {e}"),
                );
                self.exit.request(status.clone());
                self.vcpus.stop_and_join(Duration::from_millis(5));
                crate::event_loop::release_devices(&self.virtio);
                self.finished.set(self.exit.status().unwrap_or(status));
                self.console.close();
                return Err(io_err("cannot start the event loop thread")(e));
            }
        };
        *self.event_loop.locked() = Some(handle);
        match vcpu_error {
            Some(e) => Err(io_err("cannot start a vCPU thread")(e)),
            None => Ok(()),
        }
    }

    /// Waits up to `timeout` (forever with `None`) for the VM to stop; returns its status,
    /// or `None` on timeout or if the VM was never started.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        if self.state() == VmState::Created {
            return None;
        }
        self.finished.wait(timeout)
    }

    /// Pauses a running VM: returns once every vCPU has left guest code (its last port or
    /// MMIO access completed) and waits for the next event.
    pub fn pause(&self) -> Result<()> {
        self.require_state(VmState::Running, "pause")?;
        let answers = self.vcpus.request(|_| VcpuEvent::Pause);
        let all_paused =
            answers.is_some_and(|a| a.iter().all(|r| matches!(r, VcpuResponse::Paused)));
        if all_paused {
            self.paused.store(true, Ordering::SeqCst);
            Ok(())
        } else if self.exit.stop_requested() {
            // The VM stopped meanwhile: nothing is left to pause.
            Ok(())
        } else {
            // Some vCPU did not answer: let the others run on rather than half-pause.
            self.vcpus.request(|_| VcpuEvent::Resume);
            Err(Error::PauseTimeout(crate::vcpu::VCPU_ANSWER_TIMEOUT))
        }
    }

    /// Resumes a paused VM. A VM with a gdb stub whose client has not yet continued it (a
    /// restored one, say) is running from then on, its vCPUs still waiting for gdb.
    pub fn resume(&self) -> Result<()> {
        self.require_state(VmState::Paused, "resume")?;
        self.paused.store(false, Ordering::SeqCst);
        if !self.gdb_hold.load(Ordering::SeqCst) {
            self.vcpus.request(|_| VcpuEvent::Resume);
        }
        Ok(())
    }

    /// Stops the VM with reason `killed` (unless it already stopped for another reason).
    /// Returns at once; [`Vm::wait`] returns when every vCPU has stopped. Killing a VM that
    /// was never started makes it exited.
    pub fn kill(&self) {
        self.exit.request(ExitStatus::new(ExitReason::Killed));
        let unstarted = self.unstarted.locked().take();
        if unstarted.is_some() {
            crate::event_loop::release_devices(&self.virtio);
            self.console.close();
            self.finished.set(ExitStatus::new(ExitReason::Killed));
        }
    }

    /// Presses the ACPI power button. Returns whether the guest listens for it (its ACPI button
    /// driver enabled the event); a guest that does not will never see the press.
    ///
    /// The guest decides what a press means: Linux hands it to userspace as KEY_POWER, where
    /// acpid or systemd-logind usually shut down, which ends the VM with reason `poweroff`.
    pub fn press_power_button(&self) -> Result<bool> {
        self.require_state(VmState::Running, "press_power_button")?;
        let Some(pm1) = &self.pm1 else {
            return Err(Error::invalid(
                "acpi",
                false,
                "acpi=true: the power button is an ACPI device",
            ));
        };
        let mut pm1 = pm1.locked();
        pm1.press_power_button();
        Ok(pm1.power_button_enabled())
    }

    /// Fails with [`Error::InvalidState`] naming `operation` unless the VM is in `expected`.
    fn require_state(&self, expected: VmState, operation: &'static str) -> Result<()> {
        let state = self.state();
        if state != expected {
            return Err(Error::InvalidState {
                operation,
                state: state.as_str(),
            });
        }
        Ok(())
    }

    /// The VM's state.
    pub fn state(&self) -> VmState {
        if self.finished.get().is_some() {
            VmState::Exited
        } else if self.unstarted.locked().is_some() {
            VmState::Created
        } else if self.paused.load(Ordering::SeqCst) {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// The exit status, once the VM has stopped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.finished.get()
    }

    /// The console output buffer.
    pub fn console(&self) -> &Arc<Console> {
        &self.console
    }

    /// Sends `data` to the guest's serial input; returns how many bytes were accepted
    /// (input waiting for the guest is bounded).
    pub fn write_input(&self, data: &[u8]) -> Result<usize> {
        if self.state() == VmState::Exited {
            return Err(Error::InvalidState {
                operation: "write to the console",
                state: VmState::Exited.as_str(),
            });
        }
        Ok(self.input.push(data))
    }

    /// Where the boot images went.
    pub fn boot_info(&self) -> &BootInfo {
        &self.boot
    }

    /// The virtio devices: kind, MMIO page and GSI, in registration order (disks first).
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// Requests each disk has served, in `config.disks` order.
    pub fn disk_requests(&self) -> Vec<u64> {
        self.counters_of("virtio-blk")
            .iter()
            .map(|c| counter(c, "requests"))
            .collect()
    }

    /// Frames each network device moved, in `config.net` order.
    pub fn net_counters(&self) -> Vec<NetCounters> {
        self.counters_of("virtio-net")
            .iter()
            .map(|c| NetCounters {
                tx_frames: counter(c, "tx_frames"),
                rx_frames: counter(c, "rx_frames"),
                dropped: counter(c, "dropped"),
            })
            .collect()
    }

    /// The counters of every device of `kind`, in registration order.
    fn counters_of(&self, kind: &str) -> Vec<Vec<(&'static str, u64)>> {
        self.virtio
            .iter()
            .map(|d| d.locked())
            .filter(|d| d.kind() == kind)
            .map(|d| d.counters())
            .collect()
    }

    /// When console output arrived, as time since [`Vm::start`]: the first byte, and
    /// `(offset one past the newline, time)` for each of the first
    /// [`crate::console::MAX_LINE_TIMES`] lines. Empty before the start.
    pub fn console_times(&self) -> (Option<Duration>, Vec<(u64, Duration)>) {
        let Some(start) = *self.started_at.locked() else {
            return (None, Vec::new());
        };
        let times = self.console.times();
        let since = |at: Instant| at.saturating_duration_since(start);
        let lines = times.line_ends.into_iter().map(|(o, at)| (o, since(at)));
        (times.first_byte.map(since), lines.collect())
    }

    /// When the VM's exit status was decided, as time since [`Vm::start`] (None while it
    /// runs, and for a VM killed before it started).
    pub fn exit_time(&self) -> Option<Duration> {
        let start = (*self.started_at.locked())?;
        Some(self.exit.decided_at()?.saturating_duration_since(start))
    }

    /// Boot-time markers the guest wrote to the marker port: `(value, time since start)`.
    pub fn boot_markers(&self) -> Vec<(u8, Duration)> {
        self.markers.events()
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Activity counters; cheap enough to call in a loop.
    pub fn stats(&self) -> VmStats {
        let started = *self.started_at.locked();
        VmStats {
            exits: self.stats.snapshot(),
            console_bytes: self.console.total(),
            uptime: started.map(|t| t.elapsed()).unwrap_or_default(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        let handle = self.event_loop.locked().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        // The gdb stub holds guest memory too; it ends within 100 ms of the VM's end (its
        // client cut off, if it waits for one's packet).
        crate::gdb::hang_up(&self.gdb_client);
        let gdb = self.gdb_thread.locked().take();
        if let Some(handle) = gdb {
            let _ = handle.join();
        }
        // Everything that holds guest memory (devices, their transports, vCPUs never
        // started) goes with the memory, in one piece, dropped before it: guest RAM is
        // unmapped only by the last holder, so a holder left behind here would leak it.
        crate::reaper::release(Teardown {
            _unstarted: self
                .unstarted
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
            _transports: std::mem::take(&mut self.transports),
            _virtio: std::mem::take(&mut self.virtio),
            _resources: self.resources.take(),
        });
    }
}

/// A dropped VM's parts that hold guest memory or kernel objects, released together (fields
/// drop in order: every user of the memory before the memory itself, in `resources`).
struct Teardown {
    _unstarted: Option<Unstarted>,
    _transports: Vec<Arc<Mutex<dyn VirtioTransport>>>,
    _virtio: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    _resources: Option<Resources>,
}

/// The counter `name` of a device's `counters` (0 if it has none such).
fn counter(counters: &[(&'static str, u64)], name: &str) -> u64 {
    counters
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |&(_, v)| v)
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}
