//! vCPUs: creating them, their boot or restored state, the thread that runs each one, and
//! the handle the rest of the VMM drives it through.
//!
//! Each vCPU runs `KVM_RUN` on its own thread and handles the exits KVM hands to user
//! space: port I/O goes to the PIO bus, MMIO to the MMIO bus, and the exits that end a VM
//! — triple fault, KVM errors — raise the [`ExitSignal`].
//!
//! The rest of the VMM talks to a vCPU thread through its [`VcpuHandle`]: events (pause,
//! resume, save or restore state, stop) go down a channel, answers come back on another.
//! To reach a thread inside `KVM_RUN`, the handle sends it [`kick_signal`], whose handler
//! sets the thread's `kvm_run.immediate_exit`: `KVM_RUN` then returns at once, whether the
//! signal came during the run or just before it (a plain signal that lands between the
//! check for events and the ioctl would be lost until the next exit).

pub mod debug;

pub use debug::{DebugAnswer, DebugOp, DebugStops};

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_cpuid_entry2, kvm_run, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::state::{self as arch_state, VcpuState};
use crate::arch::x86_64::{cpuid, lapic, msr, regs};
use crate::devices::{Bus, DeviceStats};
use crate::error::{Error, Result};
use crate::exit::{ExitReason, ExitSignal, ExitStatus};
use crate::seccomp::{Scope, ThreadKind};
use crate::sync::Locked;

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run` while it runs a vCPU (null otherwise), for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread-local without destructor: reading it is a plain load, safe
    // in a signal handler.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own `kvm_run` mapping, set by the vCPU thread
        // before it runs and cleared before the vCPU (and the mapping) goes away; a byte
        // store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

/// Installs the (empty) kick handler once per process. Without a handler the signal's
/// default action would end the process.
pub fn register_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| Error::Io {
                what: "cannot install the vCPU kick signal handler".into(),
                source: e.into(),
            });
    });
    result
}

/// A vCPU, ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    stats: Arc<DeviceStats>,
    /// The MSRs saved with the vCPU's state.
    msr_indices: Arc<Vec<u32>>,
    /// The CPUID the vCPU was given, saved with its state.
    cpuid: Vec<kvm_cpuid_entry2>,
    /// Where its debug exits go, when a debugger is attached to the VM.
    debug: Option<DebugStops>,
    /// The debug exit the last `KVM_RUN` ended with, for the thread to report.
    debug_exit: Option<kvm_bindings::kvm_debug_exit_arch>,
}

pub use crate::devices::bus::Buses;

/// What a vCPU thread is asked to do.
pub enum VcpuEvent {
    /// Leave guest code, finish the access being emulated, and wait for the next event.
    Pause,
    /// A debugger's request (paused only).
    Debug(DebugOp),
    /// Run the guest again.
    Resume,
    /// Answer with the vCPU's state (paused only).
    SaveState,
    /// Take this state (paused only).
    RestoreState(Box<VcpuState>),
    /// End the thread.
    Stop,
}

/// A vCPU thread's answer.
#[derive(Debug)]
pub enum VcpuResponse {
    /// Paused: out of `KVM_RUN`, waiting for events.
    Paused,
    /// Running again.
    Resumed,
    /// Its state.
    Saved(Box<VcpuState>),
    /// The state was taken.
    Restored,
    /// The answer to a debugger's request.
    Debug(DebugAnswer),
    /// The event could not be carried out.
    Failed(String),
}

impl Vcpu {
    /// Creates vCPU `id`, with no state set yet: [`Vcpu::configure_boot`] or
    /// [`Vcpu::restore`] gives it one.
    pub fn create(
        vm: &VmFd,
        id: u8,
        buses: Buses,
        exit: Arc<ExitSignal>,
        stats: Arc<DeviceStats>,
        msr_indices: Arc<Vec<u32>>,
    ) -> Result<Self> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        Ok(Vcpu {
            fd,
            id,
            pio: buses.pio,
            mmio: buses.mmio,
            exit,
            stats,
            msr_indices,
            cpuid: Vec::new(),
            debug: None,
            debug_exit: None,
        })
    }

    /// Sends this vCPU's debug exits to `stops` (a debugger's) instead of ending the VM.
    pub fn set_debug_stops(&mut self, stops: DebugStops) {
        self.debug = Some(stops);
    }

    /// Gives vCPU `id` of `count` its boot state: CPUID, MSRs and LAPIC. The boot vCPU
    /// (id 0) also gets the 64-bit entry state for `entry`; the others wait for INIT/SIPI
    /// from it, as on real hardware.
    pub fn configure_boot(
        &mut self,
        count: u8,
        supported_cpuid: &CpuId,
        mem: &GuestMemoryMmap,
        entry: u64,
    ) -> Result<()> {
        let fd = &self.fd;
        let cpuid = cpuid::vcpu_cpuid(supported_cpuid, self.id, count);
        fd.set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
        self.cpuid = cpuid.as_slice().to_vec();
        let msrs = msr::boot_msrs().ok_or(crate::arch::x86_64::Error::Fam("MSR"))?;
        let written = fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
        if written != msrs.as_slice().len() {
            let index = msrs
                .as_slice()
                .get(written)
                .map(|e| e.index)
                .unwrap_or_default();
            return Err(crate::arch::x86_64::Error::MsrRefused(index).into());
        }
        let mut lapic_state = fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
        lapic::set_lint(&mut lapic_state);
        fd.set_lapic(&lapic_state)
            .map_err(Error::kvm("KVM_SET_LAPIC"))?;
        if self.id == 0 {
            regs::setup_boot_registers(fd, mem, entry)?;
        }
        Ok(())
    }

    /// Gives the vCPU a saved state.
    pub fn restore(&mut self, state: &VcpuState) -> Result<()> {
        arch_state::restore_vcpu(&self.fd, state)?;
        self.cpuid = state.cpuid.clone();
        Ok(())
    }

    /// This vCPU's id (and APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Starts the vCPU's thread; `paused` keeps it out of guest code until
    /// [`VcpuEvent::Resume`]; `seccomp` filters its system calls ([`crate::seccomp`]).
    pub fn start(self, paused: bool, seccomp: bool) -> std::io::Result<VcpuHandle> {
        let (event_tx, event_rx) = channel();
        let (response_tx, response_rx) = channel();
        let pending = Arc::new(AtomicBool::new(false));
        let id = self.id;
        let filter = seccomp.then(|| (ThreadKind::Vcpu, Scope::default()));
        let thread = crate::seccomp::spawn(format!("vcpu{id}"), filter, {
            let pending = pending.clone();
            move || {
                let mut thread = VcpuThread {
                    vcpu: self,
                    events: event_rx,
                    responses: response_tx,
                    pending,
                };
                thread.run(paused)
            }
        })?;
        Ok(VcpuHandle {
            id,
            events: event_tx,
            responses: response_rx,
            pending,
            thread: Some(thread),
        })
    }

    /// Completes the port or MMIO access the last exit was for (KVM finishes it on the next
    /// entry), without running guest code: a state saved before would have it half done.
    fn complete_pending_access(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    /// One `KVM_RUN`; returns a status when the exit ends the VM.
    fn run_once(&mut self) -> Option<ExitStatus> {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                DeviceStats::bump(&self.stats.pio);
                if !self.pio.read(u64::from(port), data) {
                    DeviceStats::bump(&self.stats.pio_unhandled);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                DeviceStats::bump(&self.stats.pio);
                if !self.pio.write(u64::from(port), data) {
                    DeviceStats::bump(&self.stats.pio_unhandled);
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                DeviceStats::bump(&self.stats.mmio);
                if !self.mmio.read(addr, data) {
                    DeviceStats::bump(&self.stats.mmio_unhandled);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                DeviceStats::bump(&self.stats.mmio);
                if !self.mmio.write(addr, data) {
                    DeviceStats::bump(&self.stats.mmio_unhandled);
                }
                None
            }
            // With the in-kernel LAPIC, HLT only reaches user space when KVM cannot wait
            // for an interrupt itself; running again is the right answer.
            Ok(VcpuExit::Hlt) => {
                DeviceStats::bump(&self.stats.hlt);
                None
            }
            Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => None,
            Ok(VcpuExit::Debug(exit)) if self.debug.is_some() => {
                self.debug_exit = Some(exit);
                None
            }
            Ok(VcpuExit::Shutdown) => Some(ExitStatus::with_detail(
                ExitReason::Shutdown,
                format!("vCPU {id} triple-faulted"),
            )),
            Ok(VcpuExit::InternalError) => Some(ExitStatus::with_detail(
                ExitReason::Error,
                self.internal_error(),
            )),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitStatus::with_detail(
                ExitReason::Error,
                format!(
                    "KVM failed to enter vCPU {id} (hardware reason {reason:#x}, host cpu {cpu})"
                ),
            )),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitStatus::new(ExitReason::Reset),
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitStatus::new(ExitReason::Shutdown),
                other => ExitStatus::with_detail(
                    ExitReason::Error,
                    format!("unexpected system event {other}"),
                ),
            }),
            Ok(other) => Some(ExitStatus::with_detail(
                ExitReason::Error,
                format!("unexpected KVM exit on vCPU {id}: {other:?}"),
            )),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick: the events are looked at before the next run.
                self.fd.set_kvm_immediate_exit(0);
                DeviceStats::bump(&self.stats.interrupted);
                None
            }
            Err(e) => Some(ExitStatus::with_detail(
                ExitReason::Error,
                format!("KVM_RUN failed on vCPU {id}: {e}"),
            )),
        }
    }

    fn rip_suffix(&self) -> String {
        self.fd
            .get_regs()
            .map(|r| format!(" at rip {:#x}", r.rip))
            .unwrap_or_default()
    }

    fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which `internal` is the
        // member of the exit union that KVM filled in.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
                "emulation failure: KVM cannot emulate an instruction"
            }
            kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exceptions",
            kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "failure delivering an event",
            _ => "internal error",
        };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..ndata]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        format!(
            "KVM internal error on vCPU {} ({what}, suberror {}){}; data [{}]",
            self.id,
            internal.suberror,
            self.rip_suffix(),
            data.join(", ")
        )
    }
}

/// The vCPU thread: runs the guest and answers events.
struct VcpuThread {
    vcpu: Vcpu,
    events: Receiver<VcpuEvent>,
    responses: Sender<VcpuResponse>,
    pending: Arc<AtomicBool>,
}

impl VcpuThread {
    /// Runs until stopped. Every way out of the loop leaves the exit signal raised, so the
    /// rest of the VM stops too.
    fn run(&mut self, paused: bool) {
        KVM_RUN.with(|p| p.set(self.vcpu.fd.get_kvm_run()));
        if !paused || self.wait_paused(false) {
            self.run_guest();
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        self.vcpu.exit.request(ExitStatus::with_detail(
            ExitReason::Error,
            "a vCPU thread ended",
        ));
    }

    fn run_guest(&mut self) {
        while !self.vcpu.exit.stop_requested() {
            if self.pending.load(Ordering::Acquire) && !self.handle_events() {
                return;
            }
            let status = self.vcpu.run_once();
            if let Some(exit) = self.vcpu.debug_exit.take() {
                // Stopped for the debugger: it resumes this vCPU when it is done with it.
                if let Some(stops) = &self.vcpu.debug {
                    stops.report(self.vcpu.id, exit);
                }
                if !self.wait_paused(false) {
                    return;
                }
                continue;
            }
            if let Some(mut status) = status {
                if matches!(status.reason, ExitReason::Shutdown | ExitReason::Error) {
                    let rip = self.vcpu.rip_suffix();
                    if let Some(detail) = status.detail.as_mut().filter(|d| !d.contains(" at rip "))
                    {
                        detail.push_str(&rip);
                    }
                }
                self.vcpu.exit.request(status);
                return;
            }
        }
    }

    /// Handles the events waiting while the guest runs; false once the thread should end.
    fn handle_events(&mut self) -> bool {
        self.pending.store(false, Ordering::Release);
        while let Ok(event) = self.events.try_recv() {
            match event {
                VcpuEvent::Pause => {
                    self.vcpu.complete_pending_access();
                    if !self.wait_paused(true) {
                        return false;
                    }
                }
                VcpuEvent::Stop => return false,
                VcpuEvent::Resume => self.respond(VcpuResponse::Resumed),
                VcpuEvent::SaveState | VcpuEvent::RestoreState(_) | VcpuEvent::Debug(_) => self
                    .respond(VcpuResponse::Failed(
                        "the vCPU is running: pause it first".into(),
                    )),
            }
        }
        true
    }

    /// Paused: answers events until resumed (true) or stopped (false); `announce` answers
    /// the Pause event that got here (a thread started paused was not asked).
    fn wait_paused(&mut self, announce: bool) -> bool {
        if announce {
            self.respond(VcpuResponse::Paused);
        }
        loop {
            let Ok(event) = self.events.recv() else {
                return false;
            };
            match event {
                VcpuEvent::Resume => {
                    self.respond(VcpuResponse::Resumed);
                    return true;
                }
                VcpuEvent::Pause => self.respond(VcpuResponse::Paused),
                VcpuEvent::SaveState => {
                    let answer = match arch_state::save_vcpu(
                        &self.vcpu.fd,
                        &self.vcpu.cpuid,
                        &self.vcpu.msr_indices,
                    ) {
                        Ok(state) => VcpuResponse::Saved(Box::new(state)),
                        Err(e) => VcpuResponse::Failed(e.to_string()),
                    };
                    self.respond(answer);
                }
                VcpuEvent::RestoreState(state) => {
                    let answer = match self.vcpu.restore(&state) {
                        Ok(()) => VcpuResponse::Restored,
                        Err(e) => VcpuResponse::Failed(e.to_string()),
                    };
                    self.respond(answer);
                }
                VcpuEvent::Debug(op) => {
                    let answer = debug::carry_out(&self.vcpu.fd, op);
                    self.respond(VcpuResponse::Debug(answer));
                }
                VcpuEvent::Stop => return false,
            }
        }
    }

    fn respond(&self, response: VcpuResponse) {
        // Nobody listening means the VM is going away; the thread ends soon after.
        let _ = self.responses.send(response);
    }
}

/// The rest of the VMM's end of a vCPU thread.
pub struct VcpuHandle {
    id: u8,
    events: Sender<VcpuEvent>,
    responses: Receiver<VcpuResponse>,
    /// Set with each event, so the running thread looks at its channel only then.
    pending: Arc<AtomicBool>,
    /// None once joined.
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// The vCPU's id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Sends `event` and kicks the thread out of `KVM_RUN`; false if the thread has ended.
    pub fn send(&self, event: VcpuEvent) -> bool {
        if self.events.send(event).is_err() {
            return false;
        }
        self.pending.store(true, Ordering::Release);
        self.kick();
        true
    }

    /// Makes the thread leave `KVM_RUN` (or not enter it next).
    pub fn kick(&self) {
        if let Some(thread) = &self.thread {
            use std::os::unix::thread::JoinHandleExt;
            // SAFETY: the thread has not been joined (`thread` is taken before joining, and
            // joining needs `&mut self`), so its pthread_t is valid even if it has returned;
            // the kick signal has a handler (`register_kick_handler`), so delivery only
            // interrupts KVM_RUN.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
        }
    }

    /// Waits up to `timeout` for the thread's next answer; None if it ended or timed out.
    pub fn response(&self, timeout: Duration) -> Option<VcpuResponse> {
        self.responses.recv_timeout(timeout).ok()
    }

    /// Whether the thread has returned.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Joins the thread; false if it panicked.
    pub fn join(&mut self) -> bool {
        self.thread.take().is_none_or(|t| t.join().is_ok())
    }
}

/// Every vCPU's handle, shared by the VM (pause, resume, state) and the event loop (stop).
#[derive(Default)]
pub struct VcpuHandles(Mutex<Vec<VcpuHandle>>);

/// How long a vCPU thread gets to answer an event.
pub const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl VcpuHandles {
    /// Holds the started vCPUs' handles.
    pub fn set(&self, handles: Vec<VcpuHandle>) {
        *self.0.locked() = handles;
    }

    /// Sends each vCPU the event `make(id)` makes and collects the answers, in vCPU order.
    /// None if a thread ended or did not answer within [`VCPU_ANSWER_TIMEOUT`].
    pub fn request(&self, make: impl Fn(u8) -> VcpuEvent) -> Option<Vec<VcpuResponse>> {
        let handles = self.0.locked();
        if handles.is_empty() {
            return None;
        }
        let sent = handles.iter().all(|h| h.send(make(h.id())));
        if !sent {
            return None;
        }
        let deadline = Instant::now() + VCPU_ANSWER_TIMEOUT;
        handles
            .iter()
            .map(|h| h.response(deadline.saturating_duration_since(Instant::now())))
            .collect()
    }

    /// Sends vCPU `id` the event and waits for its answer; None if it has no thread or did
    /// not answer within [`VCPU_ANSWER_TIMEOUT`].
    pub fn request_one(&self, id: u8, event: VcpuEvent) -> Option<VcpuResponse> {
        let handles = self.0.locked();
        let h = handles.iter().find(|h| h.id() == id)?;
        if !h.send(event) {
            return None;
        }
        h.response(VCPU_ANSWER_TIMEOUT)
    }

    /// Stops every vCPU thread and joins it; false if one panicked.
    pub fn stop_and_join(&self, kick_interval: Duration) -> bool {
        let mut handles = self.0.locked();
        for h in handles.iter() {
            h.send(VcpuEvent::Stop);
        }
        // A thread handling an exit sees the stop at its next check; kick until all are out.
        while !handles.iter().all(|h| h.is_finished()) {
            for h in handles.iter() {
                h.kick();
            }
            std::thread::sleep(kick_interval);
        }
        let mut ok = true;
        for h in handles.iter_mut() {
            ok &= h.join();
        }
        handles.clear();
        ok
    }

    /// How many vCPU threads there are.
    pub fn len(&self) -> usize {
        self.0.locked().len()
    }

    /// Whether no vCPU thread was started.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
