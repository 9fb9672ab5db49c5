//! vCPUs: their boot configuration and the thread that runs each one.
//!
//! Each vCPU runs `KVM_RUN` on its own thread and handles the exits KVM hands to user
//! space: port I/O goes to the [`PioBus`], MMIO (no devices yet) reads as zero, and the
//! exits that end a VM — triple fault, KVM errors — raise the [`ExitSignal`].
//!
//! To stop a vCPU that sits inside `KVM_RUN`, the event loop sends its thread
//! [`kick_signal`]; the handler does nothing, but the signal makes `KVM_RUN` return
//! `EINTR`, after which the thread sees the stop flag.

use std::sync::{Arc, Once};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::{cpuid, lapic, msr, regs};
use crate::devices::{Bus, DeviceStats};
use crate::error::{Error, Result};
use crate::exit::{ExitReason, ExitSignal, ExitStatus};
use crate::pause::PauseGate;

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

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

/// A configured vCPU, ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    stats: Arc<DeviceStats>,
}

/// The buses a vCPU dispatches exits to.
#[derive(Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// MMIO.
    pub mmio: Arc<Bus>,
}

impl Vcpu {
    /// Creates vCPU `id` of `count`, with CPUID, MSRs and LAPIC set up. The boot vCPU
    /// (id 0) also gets the 64-bit entry state for `entry`; the others wait for INIT/SIPI
    /// from it, as on real hardware.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vm: &VmFd,
        id: u8,
        count: u8,
        supported_cpuid: &CpuId,
        mem: &GuestMemoryMmap,
        entry: u64,
        buses: Buses,
        exit: Arc<ExitSignal>,
        stats: Arc<DeviceStats>,
    ) -> Result<Self> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&cpuid::vcpu_cpuid(supported_cpuid, id, count))
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;
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
        if id == 0 {
            regs::setup_boot_registers(&fd, mem, entry)?;
        }
        Ok(Vcpu {
            fd,
            id,
            pio: buses.pio,
            mmio: buses.mmio,
            exit,
            stats,
        })
    }

    /// This vCPU's id (and APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Runs until the VM is asked to stop. Every way out of the loop leaves the exit
    /// signal raised, so the rest of the VM stops too.
    pub fn run(mut self, gate: Arc<PauseGate>) {
        while !self.exit.stop_requested() {
            if gate.is_closed() {
                gate.park();
                continue;
            }
            if let Some(mut status) = self.run_once() {
                if matches!(status.reason, ExitReason::Shutdown | ExitReason::Error) {
                    let rip = self.rip_suffix();
                    if let Some(detail) = status.detail.as_mut().filter(|d| !d.contains(" at rip "))
                    {
                        detail.push_str(&rip);
                    }
                }
                self.exit.request(status);
                break;
            }
        }
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
