//! What a debugger asks of a paused vCPU (`crate::gdb`), carried out on its own thread,
//! which owns the vCPU's descriptor: its registers, its guest-debug setting
//! (`KVM_SET_GUEST_DEBUG`: breakpoints in the debug registers, single-step, `int3` exits) and
//! address translation through its page tables (`KVM_TRANSLATE`). And where a debug exit
//! goes: the vCPU reports it on [`DebugStops`] and waits, paused, for the debugger.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use kvm_bindings::{kvm_debug_exit_arch, kvm_guest_debug, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::EventFd;

/// A request of the debugger's.
#[derive(Debug)]
pub enum DebugOp {
    /// The registers.
    GetRegs,
    /// New general-purpose registers (RIP and RFLAGS among them).
    SetRegs(Box<kvm_regs>),
    /// New guest-debug control and debug registers.
    SetGuestDebug(Box<kvm_guest_debug>),
    /// The guest-physical address of a guest-virtual one, through the vCPU's page tables.
    Translate(u64),
}

/// The answer to a [`DebugOp`].
#[derive(Debug)]
pub enum DebugAnswer {
    /// The registers.
    Regs(Box<(kvm_regs, kvm_sregs)>),
    /// Done.
    Done,
    /// The guest-physical address; None when the page is not mapped.
    Translated(Option<u64>),
    /// The ioctl failed.
    Failed(String),
}

/// Where vCPUs report their debug exits: `(vCPU id, what KVM said)` on the channel, and the
/// eventfd written so that the debugger, waiting on it and on its connection, wakes.
#[derive(Clone)]
pub struct DebugStops {
    /// The exits.
    pub tx: Sender<(u8, kvm_debug_exit_arch)>,
    /// Written after each exit sent.
    pub doorbell: Arc<EventFd>,
}

impl DebugStops {
    /// Reports vCPU `id`'s debug exit.
    pub fn report(&self, id: u8, exit: kvm_debug_exit_arch) {
        if self.tx.send((id, exit)).is_ok() {
            let _ = self.doorbell.write(1);
        }
    }
}

/// Carries out `op` on the vCPU `fd`.
pub fn carry_out(fd: &VcpuFd, op: DebugOp) -> DebugAnswer {
    let failed = |what: &str, e: kvm_ioctls::Error| DebugAnswer::Failed(format!("{what}: {e}"));
    match op {
        DebugOp::GetRegs => match (fd.get_regs(), fd.get_sregs()) {
            (Ok(r), Ok(s)) => DebugAnswer::Regs(Box::new((r, s))),
            (Err(e), _) => failed("KVM_GET_REGS", e),
            (_, Err(e)) => failed("KVM_GET_SREGS", e),
        },
        DebugOp::SetRegs(regs) => match fd.set_regs(&regs) {
            Ok(()) => DebugAnswer::Done,
            Err(e) => failed("KVM_SET_REGS", e),
        },
        DebugOp::SetGuestDebug(debug) => match fd.set_guest_debug(&debug) {
            Ok(()) => DebugAnswer::Done,
            Err(e) => failed("KVM_SET_GUEST_DEBUG", e),
        },
        DebugOp::Translate(gva) => match fd.translate_gva(gva) {
            Ok(t) if t.valid != 0 => DebugAnswer::Translated(Some(t.physical_address)),
            Ok(_) => DebugAnswer::Translated(None),
            Err(e) => failed("KVM_TRANSLATE", e),
        },
    }
}
