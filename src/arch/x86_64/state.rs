//! Saving and restoring what KVM holds of a VM: each vCPU's registers and in-kernel LAPIC,
//! and the VM's in-kernel PIT, PICs, IOAPIC and clock.
//!
//! The orders are the ones KVM needs (and Firecracker uses):
//! - save: MP state first (`KVM_GET_MP_STATE` runs the LAPIC's pending INIT/SIPI, which
//!   changes the rest), vCPU events last (other reads may still change them);
//! - restore: CPUID before anything (it decides which MSRs and XSAVE features exist), the
//!   LAPIC after the special registers (the APIC base lives there), MSRs after that (the TSC
//!   deadline needs the TSC and LAPIC), vCPU events last.
//!
//! Every ioctl here was checked to get and set on KVM, including PVM.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// Largest number of MSRs one `KVM_GET_MSRS` handles here.
const MSR_CHUNK: usize = 64;

/// One vCPU's state, as KVM holds it.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the vCPU was given (restored first; also checked against the host).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state (the 4 KiB legacy XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// The in-kernel LAPIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM saves (`KVM_GET_MSR_INDEX_LIST`), TSC included.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts and NMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// The TSC frequency the guest runs at, in kHz.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("mp_state", &self.mp_state.mp_state)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// The MSRs a snapshot carries: those KVM lists as saved, minus the ones this host cannot
/// read back (probed once per VM with `KVM_GET_MSRS`).
pub fn msrs_to_save(kvm_fd: &Kvm) -> Result<Vec<u32>> {
    let list = kvm_fd
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(list.as_slice().to_vec())
}

/// Reads `indices` from `fd`, dropping the MSRs KVM refuses to read (it stops at the first).
fn get_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(indices.len());
    let mut pending: Vec<u32> = indices.to_vec();
    while !pending.is_empty() {
        let take = pending.len().min(MSR_CHUNK);
        let entries: Vec<kvm_msr_entry> = pending[..take]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::Fam("MSR"))?;
        let read = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // KVM stops at the first MSR it cannot read: skip that one and go on.
        let consumed = if read < take { read + 1 } else { take };
        pending.drain(..consumed);
    }
    Ok(out)
}

/// Saves vCPU `fd`'s state; `cpuid` is what the VMM gave it (`KVM_GET_CPUID2` is not used:
/// some hosts, PVM among them, report bits there that they never offered). The vCPU must
/// not be in `KVM_RUN` (its thread calls this) and any port or MMIO access it exited for
/// must have been completed first.
pub fn save_vcpu(
    fd: &VcpuFd,
    cpuid: &[kvm_cpuid_entry2],
    msr_indices: &[u32],
) -> Result<VcpuState> {
    let mp_state = fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?;
    let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let xsave = fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?;
    let xcrs = fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?;
    let debugregs = fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?;
    let lapic = fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    let msrs = get_msrs(fd, msr_indices)?;
    let cpuid = cpuid.to_vec();
    let tsc_khz = fd.get_tsc_khz().ok();
    let vcpu_events = fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        cpuid,
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        vcpu_events,
        tsc_khz,
    })
}

/// Gives a freshly created vCPU `fd` the saved `state`.
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<()> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| Error::Fam("CPUID"))?;
    fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(kvm("KVM_SET_TSC_KHZ"))?;
        }
    }
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    fd.set_regs(&state.regs).map_err(kvm("KVM_SET_REGS"))?;
    fd.set_sregs(&state.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    // SAFETY: `state.xsave` is a whole 4 KiB legacy XSAVE area, the size KVM_SET_XSAVE reads.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&state.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&state.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    for chunk in state.msrs.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|_| Error::Fam("MSR"))?;
        let written = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if written != chunk.len() {
            let index = chunk.get(written).map(|e| e.index).unwrap_or_default();
            return Err(Error::MsrRefused(index));
        }
    }
    fd.set_vcpu_events(&state.vcpu_events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

/// The VM-wide state KVM holds: the in-kernel PIT, PICs and IOAPIC, and the clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct KvmVmState {
    /// The i8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock's time base.
    pub clock: kvm_clock_data,
    /// The master i8259.
    pub pic_master: kvm_irqchip,
    /// The slave i8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
}

impl std::fmt::Debug for KvmVmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVmState")
            .field("clock", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Saves the VM-wide state (every vCPU stopped).
pub fn save_vm(vm: &VmFd) -> Result<KvmVmState> {
    let pit = vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?;
    let mut clock = vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?;
    // Only `clock` is for KVM_SET_CLOCK: the flags say what KVM_GET_CLOCK filled in.
    clock.flags = 0;
    Ok(KvmVmState {
        pit,
        clock,
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
    })
}

/// Gives a new VM (irqchip and PIT created, no vCPU running) the saved `state`.
pub fn restore_vm(vm: &VmFd, state: &KvmVmState) -> Result<()> {
    vm.set_pit2(&state.pit).map_err(kvm("KVM_SET_PIT2"))?;
    vm.set_clock(&state.clock).map_err(kvm("KVM_SET_CLOCK"))?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

/// CPU features a saved vCPU saw that this host's KVM does not offer, as `(leaf, register,
/// missing bits)`: features vanishing under a running guest would make it fault at the first
/// instruction that uses them. The feature-flag leaves are checked: 1, 7.0 and 0x80000001.
pub fn missing_cpu_features(
    saved: &[kvm_cpuid_entry2],
    host: &CpuId,
) -> Vec<(u32, &'static str, u32)> {
    let mut missing = Vec::new();
    for e in saved {
        if !matches!((e.function, e.index), (1, _) | (7, 0) | (0x8000_0001, _)) {
            continue;
        }
        let Some(h) = host
            .as_slice()
            .iter()
            .find(|h| h.function == e.function && h.index == e.index)
        else {
            missing.push((e.function, "leaf", u32::MAX));
            continue;
        };
        // Bits the VMM sets in leaf 1 whatever KVM reports (the hypervisor bit, HTT, the
        // KVM-emulated TSC-deadline timer) or that mirror guest state (OSXSAVE, APIC).
        let (ignore_ecx, ignore_edx) = if e.function == 1 {
            ((1 << 31) | (1 << 27) | (1 << 24), (1 << 28) | (1 << 9))
        } else {
            (0, 0)
        };
        for (reg, saved_bits, host_bits, ignored) in [
            ("ebx", e.ebx, h.ebx, 0),
            ("ecx", e.ecx, h.ecx, ignore_ecx),
            ("edx", e.edx, h.edx, ignore_edx),
        ] {
            let lacking = saved_bits & !host_bits & !ignored;
            if lacking != 0 && !(e.function != 7 && reg == "ebx") {
                missing.push((e.function, reg, lacking));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn features_the_host_lacks_are_named_and_vmm_set_bits_are_not() {
        let host =
            CpuId::from_entries(&[entry(1, 0, 0, 0x0000_00ff, 0x0f), entry(7, 0, 0x10, 0, 0)])
                .unwrap();
        // Leaf 1: the hypervisor, TSC-deadline and HTT bits are the VMM's own.
        let saved = [entry(1, 0, 0, (1 << 31) | (1 << 24) | 0x3, (1 << 28) | 0x1)];
        assert!(missing_cpu_features(&saved, &host).is_empty());
        let saved = [
            entry(1, 0, 0, 0x100, 0),
            entry(7, 0, 0x30, 0, 0),
            entry(0x8000_0001, 0, 0, 1, 0),
        ];
        assert_eq!(
            missing_cpu_features(&saved, &host),
            vec![
                (1, "ecx", 0x100),
                (7, "ebx", 0x20),
                (0x8000_0001, "leaf", u32::MAX)
            ]
        );
    }
}
