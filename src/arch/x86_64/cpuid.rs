//! Per-vCPU CPUID, derived from what KVM supports on this host.
//!
//! `KVM_GET_SUPPORTED_CPUID` already contains KVM's paravirtual leaves (the `KVMKVMKVM`
//! signature at 0x4000_0000); each vCPU then gets its own APIC id in the topology leaves,
//! and the hypervisor bit so that the guest looks for those leaves.
//!
//! One bit KVM emulates but does not report: the TSC-deadline timer (leaf 1, ECX bit 24).
//! `KVM_GET_SUPPORTED_CPUID` leaves it out because it is a property of KVM's in-kernel LAPIC,
//! not of the host CPU (`KVM_CAP_TSC_DEADLINE_TIMER` says whether it is there). Offering it
//! lets Linux arm its timer with one MSR write instead of keeping the PIT and calibrating
//! the LAPIC timer against it at boot.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;

const ECX_HYPERVISOR_BIT: u32 = 1 << 31;
const ECX_TSC_DEADLINE_BIT: u32 = 1 << 24;
const EDX_HTT_BIT: u32 = 1 << 28;
/// CLFLUSH line size, in 8-byte units (64 bytes).
const CLFLUSH_LINE_SIZE: u32 = 8;

/// Adjusts one entry for vCPU `apic_id` of `vcpu_count`.
fn patch_entry(entry: &mut kvm_cpuid_entry2, apic_id: u8, vcpu_count: u8) {
    match entry.function {
        LEAF_FEATURES => {
            entry.ebx = (u32::from(apic_id) << 24)
                | (u32::from(vcpu_count) << 16)
                | (CLFLUSH_LINE_SIZE << 8);
            entry.ecx |= ECX_HYPERVISOR_BIT;
            if vcpu_count > 1 {
                entry.edx |= EDX_HTT_BIT;
            } else {
                entry.edx &= !EDX_HTT_BIT;
            }
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = u32::from(apic_id);
        }
        _ => {}
    }
}

/// What this host's KVM offers a guest: `KVM_GET_SUPPORTED_CPUID` plus what KVM emulates
/// beyond it (see the module documentation).
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    add_emulated_features(&mut cpuid, kvm.check_extension(Cap::TscDeadlineTimer));
    Ok(cpuid)
}

/// Adds what KVM emulates beyond `KVM_GET_SUPPORTED_CPUID` to `supported`: the TSC-deadline
/// timer when `tsc_deadline` (KVM's `KVM_CAP_TSC_DEADLINE_TIMER`).
fn add_emulated_features(supported: &mut CpuId, tsc_deadline: bool) {
    if !tsc_deadline {
        return;
    }
    for entry in supported.as_mut_slice() {
        if entry.function == LEAF_FEATURES {
            entry.ecx |= ECX_TSC_DEADLINE_BIT;
        }
    }
}

/// Returns `supported` adjusted for vCPU `apic_id` of `vcpu_count`.
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u8, vcpu_count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, apic_id, vcpu_count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ..Default::default()
        }
    }

    #[test]
    fn tsc_deadline_is_offered_only_when_kvm_emulates_it() {
        for (cap, want) in [(true, ECX_TSC_DEADLINE_BIT), (false, 0)] {
            let mut cpuid = CpuId::from_entries(&[entry(1), entry(7)]).unwrap();
            add_emulated_features(&mut cpuid, cap);
            assert_eq!(cpuid.as_slice()[0].ecx & ECX_TSC_DEADLINE_BIT, want);
            assert_eq!(cpuid.as_slice()[1].ecx, 0);
        }
    }

    #[test]
    fn sets_apic_id_hypervisor_bit_and_count() {
        let supported = CpuId::from_entries(&[entry(1), entry(0xb), entry(0x4000_0000)]).unwrap();
        let cpuid = vcpu_cpuid(&supported, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR_BIT, 0);
        assert_ne!(e[0].edx & EDX_HTT_BIT, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2], entry(0x4000_0000));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut leaf1 = entry(1);
        leaf1.edx = EDX_HTT_BIT;
        let cpuid = vcpu_cpuid(&CpuId::from_entries(&[leaf1]).unwrap(), 0, 1);
        assert_eq!(cpuid.as_slice()[0].edx & EDX_HTT_BIT, 0);
    }
}
