//! x86_64: the guest memory map and the state a vCPU needs to enter a 64-bit Linux kernel.
//!
//! The entry state follows the Linux 64-bit boot protocol (`Documentation/x86/boot.rst`):
//! long mode with paging on, an identity map covering the loaded images, flat segments
//! from a GDT, and `rsi` pointing at the zero page.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod irq_routing;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
pub mod state;

use thiserror::Error;

/// Errors while setting up the x86_64 boot state of a vCPU or of guest memory.
#[derive(Debug, Error)]
pub enum Error {
    /// A KVM ioctl that sets vCPU state failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl, e.g. `KVM_SET_SREGS`.
        what: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} into guest memory: {source}")]
    GuestMemory {
        /// The structure being written.
        what: &'static str,
        /// The underlying error.
        source: vm_memory::GuestMemoryError,
    },
    /// A vmm-sys-util FAM wrapper could not be built.
    #[error("cannot build the {0} list for KVM")]
    Fam(&'static str),
    /// KVM took only part of the boot MSRs.
    #[error("KVM_SET_MSRS stopped at MSR {0:#x}: this host's KVM does not support it")]
    MsrRefused(u32),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The byte that makes `bytes` sum to zero (mod 256), as ACPI and MP tables require.
pub(crate) fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}
