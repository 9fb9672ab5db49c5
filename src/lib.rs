//! vmm-reference: a KVM virtual machine monitor built on the rust-vmm crates.
//!
//! This crate is the Rust core. It has no Python in it: the `python` feature adds a thin
//! PyO3 layer (`src/python/`) on top, and any other front end can bind to the same API.
//!
//! The boot path, in the order a VM goes through it:
//!
//! 1. [`config`] — what the user asked for, validated ([`VmConfig`]).
//! 2. [`memory`] — guest RAM around the 32-bit MMIO gap ([`arch::x86_64::layout`]).
//! 3. [`boot`] — the kernel (ELF vmlinux or bzImage), initrd, command line and zero page.
//! 4. [`arch::x86_64`] — 64-bit entry state: GDT, page tables, registers, CPUID, MSRs, LAPIC.
//! 5. [`device_manager`] — builds the [`devices`] (16550A serial, i8042, virtio-blk over
//!    MMIO, ...), gives them addresses, interrupts and DSDT entries.
//! 6. [`vcpu`] — one thread per vCPU running `KVM_RUN`.
//! 7. [`event_loop`] — the device/lifecycle thread on `event-manager`.
//! 8. [`vm`] — ties it together: [`Vm::new`], [`Vm::start`], [`Vm::wait`], [`Vm::kill`].
//!
//! Beside it: [`snapshot`] (the snapshot format), [`coredump`] (guest dumps for crash and
//! drgn), [`gdb`] (a gdb stub), [`host_root`] (the host's `/` as the guest's).
//!
//! ```no_run
//! use std::time::Duration;
//! use vmm_reference::{KernelConfig, Vm, VmConfig};
//!
//! let config = VmConfig {
//!     kernel: KernelConfig::new("/path/to/vmlinux"),
//!     ..VmConfig::default()
//! };
//! let mut vm = Vm::new(config)?;
//! vm.start()?;
//! let status = vm.wait(Some(Duration::from_secs(30)));
//! println!("{status:?}\n{}", String::from_utf8_lossy(&vm.console().snapshot().1));
//! # Ok::<(), vmm_reference::Error>(())
//! ```

#![deny(missing_docs)]
#![cfg(target_arch = "x86_64")]

pub mod arch;
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod coredump;
pub mod device_manager;
pub mod devices;
pub mod error;
pub mod event_loop;
pub mod exit;
#[doc(hidden)]
pub mod fuzzing;
pub mod gdb;
pub mod host_file;
pub mod host_root;
pub mod kvm;
pub mod memory;
pub mod reaper;
pub mod refusal;
pub mod seccomp;
pub mod snapshot;
pub mod sync;
pub mod vcpu;
pub mod vm;

#[cfg(feature = "python")]
mod python;

pub use config::{DiskConfig, KernelConfig, NetBackendConfig, NetConfig, VmConfig, VsockConfig};
pub use console::Console;
pub use error::{Error, ErrorKind, Result};
pub use exit::{ExitReason, ExitStatus};
pub use vm::{RestoreOptions, Vm, VmState, VmStats};
