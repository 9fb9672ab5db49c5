//! The VM as gdb's target: every vCPU a thread (thread id = vCPU id + 1), all stopped
//! whenever one is ("all-stop"), registers read and written through the stopped vCPUs' own
//! threads, memory by guest-virtual address, breakpoints and watchpoints in the debug
//! registers (four in all), single-step.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, kvm_regs, kvm_sregs, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_INJECT_BP, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::regs::{self, Slot, SLOTS};
use crate::exit::ExitSignal;
use crate::vcpu::{DebugAnswer, DebugOp, VcpuEvent, VcpuHandles, VcpuResponse};

/// The guest's page size, which a memory access is split at (each page translated alone).
const PAGE: u64 = 4096;

/// The target's failures: a vCPU that does not answer, an ioctl refused.
pub type Error = String;

/// The VM, as the gdb stub drives it.
pub struct VmTarget {
    pub(super) vcpus: Arc<VcpuHandles>,
    pub(super) ids: Vec<u8>,
    pub(super) mem: Arc<GuestMemoryMmap>,
    pub(super) exit: Arc<ExitSignal>,
    pub(super) stops: Receiver<(u8, kvm_debug_exit_arch)>,
    pub(super) doorbell: Arc<EventFd>,
    /// DR0–DR3's breakpoints and watchpoints, the same on every vCPU.
    slots: [Option<Slot>; SLOTS],
    /// The threads the next resume single-steps.
    stepping: Vec<u8>,
    /// The threads the next resume continues.
    continuing: Vec<u8>,
    /// Whether the next resume runs only the threads with an action (gdb's scheduler
    /// locking, as `stepi` asks), the others staying stopped.
    locked: bool,
    /// vCPUs whose next resume must give the guest its own `int3` back.
    inject_bp: Vec<u8>,
    /// A long read's next chunk: the stub asks for a long range one buffer at a time and goes
    /// on to its end whatever the target answers, so once a chunk comes short the rest answer
    /// nothing at once (not an error in the middle of the reply, nor a translation each).
    read_next: Option<u64>,
    /// Whether the read `read_next` continues has come to unmapped memory.
    read_ended: bool,
    /// The VM's "held for gdb" flag, cleared at the first resume ([`super::Machine::hold`]).
    hold: Arc<AtomicBool>,
}

fn tid(id: u8) -> Tid {
    // vCPU ids start at 0, thread ids at 1.
    NonZeroUsize::new(usize::from(id) + 1).unwrap_or(NonZeroUsize::MIN)
}

fn vcpu_of(tid: Tid) -> u8 {
    (tid.get() - 1) as u8
}

impl VmTarget {
    /// A target for the VM's vCPUs `ids`, their debug exits arriving on `stops`.
    pub fn new(
        vcpus: Arc<VcpuHandles>,
        ids: Vec<u8>,
        mem: Arc<GuestMemoryMmap>,
        exit: Arc<ExitSignal>,
        stops: Receiver<(u8, kvm_debug_exit_arch)>,
        doorbell: Arc<EventFd>,
        hold: Arc<AtomicBool>,
    ) -> VmTarget {
        VmTarget {
            vcpus,
            ids,
            mem,
            exit,
            stops,
            doorbell,
            slots: [None; SLOTS],
            stepping: Vec::new(),
            continuing: Vec::new(),
            locked: false,
            inject_bp: Vec::new(),
            read_next: None,
            read_ended: false,
            hold,
        }
    }

    fn ask(&self, id: u8, op: DebugOp) -> Result<DebugAnswer, Error> {
        match self.vcpus.request_one(id, VcpuEvent::Debug(op)) {
            Some(VcpuResponse::Debug(DebugAnswer::Failed(why))) => Err(why),
            Some(VcpuResponse::Debug(answer)) => Ok(answer),
            Some(other) => Err(format!("vCPU {id} answered {other:?}")),
            None => Err(format!("vCPU {id} did not answer")),
        }
    }

    pub(super) fn regs(&self, id: u8) -> Result<(kvm_regs, kvm_sregs), Error> {
        match self.ask(id, DebugOp::GetRegs)? {
            DebugAnswer::Regs(r) => Ok(*r),
            other => Err(format!("vCPU {id} answered {other:?}")),
        }
    }

    /// The guest-physical address of `gva` in vCPU `id`'s address space.
    fn translate(&self, id: u8, gva: u64) -> Result<Option<u64>, Error> {
        match self.ask(id, DebugOp::Translate(gva))? {
            DebugAnswer::Translated(gpa) => Ok(gpa),
            other => Err(format!("vCPU {id} answered {other:?}")),
        }
    }

    /// Drops debug exits that arrived while no client was attached (a step gdb asked for
    /// and then hung up): they are not the next client's.
    pub fn forget_stops(&mut self) {
        let _ = self.doorbell.read();
        while self.stops.try_recv().is_ok() {}
    }

    /// Pauses every vCPU (those stopped at a debug exit already are).
    pub fn pause_all(&self) -> Result<(), Error> {
        self.vcpus
            .request(|_| VcpuEvent::Pause)
            .map(|_| ())
            .ok_or_else(|| "a vCPU did not pause".to_string())
    }

    /// Gives every vCPU its guest-debug setting, then resumes them all.
    pub fn resume_all(&mut self) -> Result<(), Error> {
        let dr = regs::debugregs(&self.slots);
        for &id in &self.ids {
            let mut control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            if self.stepping.contains(&id) {
                control |= KVM_GUESTDBG_SINGLESTEP;
            }
            if self.inject_bp.contains(&id) {
                control |= KVM_GUESTDBG_INJECT_BP;
            }
            let mut debug = kvm_guest_debug {
                control,
                ..Default::default()
            };
            debug.arch.debugreg = dr;
            self.ask(id, DebugOp::SetGuestDebug(Box::new(debug)))?;
        }
        self.inject_bp.clear();
        self.read_next = None; // the guest may map memory anew
        self.hold.store(false, Ordering::SeqCst);
        if self.locked {
            for id in self.stepping.iter().chain(&self.continuing) {
                match self.vcpus.request_one(*id, VcpuEvent::Resume) {
                    Some(VcpuResponse::Resumed) => {}
                    _ => return Err(format!("vCPU {id} did not resume")),
                }
            }
            return Ok(());
        }
        self.vcpus
            .request(|_| VcpuEvent::Resume)
            .map(|_| ())
            .ok_or_else(|| "a vCPU did not resume".to_string())
    }

    /// Lets the guest go: breakpoints and watchpoints removed, debugging off on every vCPU,
    /// every vCPU resumed.
    pub fn detach(&mut self) -> Result<(), Error> {
        self.slots = [None; SLOTS];
        self.stepping.clear();
        // A client may go in the middle of a step or a continue: stop every vCPU first, as
        // only a stopped one takes new debug settings.
        self.pause_all()?;
        for &id in &self.ids {
            self.ask(id, DebugOp::SetGuestDebug(Box::default()))?;
        }
        self.hold.store(false, Ordering::SeqCst);
        self.vcpus
            .request(|_| VcpuEvent::Resume)
            .map(|_| ())
            .ok_or_else(|| "a vCPU did not resume".to_string())
    }

    /// Why vCPU `id` stopped, as gdb is told; None when the guest should go on (an `int3`,
    /// which is the guest's own: the stub writes none and does not ask for them, so this is
    /// only a KVM that reports them anyway; handed back on the next resume).
    pub fn stop_reason(
        &mut self,
        id: u8,
        exit: &kvm_debug_exit_arch,
    ) -> Option<MultiThreadStopReason<u64>> {
        let t = tid(id);
        if exit.exception == 3 {
            self.inject_bp.push(id);
            return None;
        }
        if exit.dr6 & 0x4000 != 0 || self.stepping.contains(&id) {
            return Some(MultiThreadStopReason::DoneStep);
        }
        for (i, slot) in self.slots.iter().enumerate() {
            if exit.dr6 & (1 << i) == 0 {
                continue;
            }
            match *slot {
                Some(Slot::Exec(_)) => return Some(MultiThreadStopReason::HwBreak(t)),
                Some(Slot::Break(_)) => return Some(MultiThreadStopReason::SwBreak(t)),
                Some(Slot::Watch { addr, kind, .. }) => {
                    return Some(MultiThreadStopReason::Watch { tid: t, kind, addr })
                }
                None => {}
            }
        }
        Some(MultiThreadStopReason::SignalWithThread {
            tid: t,
            signal: Signal::SIGTRAP,
        })
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    fn set_slot(&mut self, slot: Slot) -> bool {
        match self.free_slot() {
            Some(i) => {
                self.slots[i] = Some(slot);
                true
            }
            None => false,
        }
    }

    fn clear_slot(&mut self, slot: Slot) -> bool {
        match self.slots.iter().position(|s| *s == Some(slot)) {
            Some(i) => {
                self.slots[i] = None;
                true
            }
            None => false,
        }
    }

    /// Whether the VM has ended (gdb is then told it exited).
    pub fn ended(&self) -> Option<crate::exit::ExitStatus> {
        self.exit
            .stop_requested()
            .then(|| self.exit.status())
            .flatten()
    }

    /// Memory of vCPU `id`'s address space, a page at a time: `read` fills `data`, else
    /// `data` is written; returns the bytes done before the first unmapped page.
    fn access(
        &self,
        id: u8,
        start: u64,
        len: usize,
        mut each: impl FnMut(u64, usize, usize) -> bool,
    ) -> Result<usize, Error> {
        let mut done = 0usize;
        while done < len {
            let gva = start.wrapping_add(done as u64);
            let in_page = (PAGE - gva % PAGE) as usize;
            let n = in_page.min(len - done);
            let Some(gpa) = self.translate(id, gva)? else {
                break;
            };
            if !each(gpa, done, n) {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

impl Target for VmTarget {
    type Arch = X86_64_SSE;
    type Error = Error;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for VmTarget {
    fn read_registers(&mut self, out: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let (r, s) = self.regs(vcpu_of(tid)).map_err(TargetError::Fatal)?;
        regs::to_gdb(&r, &s, out);
        Ok(())
    }

    fn write_registers(&mut self, gdb: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let id = vcpu_of(tid);
        let (mut r, _) = self.regs(id).map_err(TargetError::Fatal)?;
        regs::from_gdb(gdb, &mut r);
        self.ask(id, DebugOp::SetRegs(Box::new(r)))
            .map_err(TargetError::Fatal)?;
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let len = data.len();
        let continues = self.read_next.take() == Some(start);
        let next = start.wrapping_add(len as u64);
        if continues && self.read_ended {
            self.read_next = Some(next);
            return Ok(0);
        }
        let mem = self.mem.clone();
        let done = self
            .access(vcpu_of(tid), start, len, |gpa, at, n| {
                mem.read_slice(&mut data[at..at + n], GuestAddress(gpa))
                    .is_ok()
            })
            .map_err(TargetError::Fatal)?;
        if done == 0 && len > 0 && !continues {
            return Err(TargetError::Errno(14)); // EFAULT: nothing mapped there
        }
        self.read_next = Some(next);
        self.read_ended = done < len;
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let mem = self.mem.clone();
        let done = self
            .access(vcpu_of(tid), start, data.len(), |gpa, at, n| {
                mem.write_slice(&data[at..at + n], GuestAddress(gpa))
                    .is_ok()
            })
            .map_err(TargetError::Fatal)?;
        if done < data.len() {
            return Err(TargetError::Errno(14));
        }
        Ok(())
    }

    fn list_active_threads(
        &mut self,
        thread_is_active: &mut dyn FnMut(Tid),
    ) -> Result<(), Self::Error> {
        for &id in &self.ids {
            thread_is_active(tid(id));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for VmTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        self.resume_all()
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.stepping.clear();
        self.continuing.clear();
        self.locked = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.continuing.push(vcpu_of(tid));
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSchedulerLocking for VmTarget {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl MultiThreadSingleStep for VmTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.stepping.push(vcpu_of(tid));
        Ok(())
    }
}

impl Breakpoints for VmTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl SwBreakpoint for VmTarget {
    /// Breakpoints go into the debug registers, like `hbreak`s: guest memory is never
    /// changed (so no snapshot, fork or dump captures a breakpoint), and hosts whose KVM does
    /// not intercept `int3`, such as PVM, stop there too. Four in all, with the hardware
    /// breakpoints and watchpoints; gdb says "Cannot insert breakpoint" past that.
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.set_slot(Slot::Break(addr)))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.clear_slot(Slot::Break(addr)))
    }
}

impl HwBreakpoint for VmTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.set_slot(Slot::Exec(addr)))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.clear_slot(Slot::Exec(addr)))
    }
}

impl HwWatchpoint for VmTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        if !regs::watchable(addr, len) {
            return Ok(false);
        }
        Ok(self.set_slot(Slot::Watch { addr, len, kind }))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        Ok(self.clear_slot(Slot::Watch { addr, len, kind }))
    }
}
