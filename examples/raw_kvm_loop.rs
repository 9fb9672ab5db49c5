//! The physical limit for the exit-path benchmark: the least a VMM can do per port-I/O exit.
//!
//! A one-vCPU VM with no devices and no irqchip runs a real-mode loop of N `out 0x80, al`
//! instructions and halts; this program counts the `KVM_EXIT_IO` exits in a bare `KVM_RUN`
//! loop and prints `raw exits=N seconds=S rate=R` (exits per second, timed around the loop).
//!
//! `cargo run --release --example raw_kvm_loop -- 100000`

use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const CODE_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u32 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 100_000,
    };
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])?;
    let host = mem.get_host_address(GuestAddress(0))? as u64;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host,
        flags: 0,
    };
    // SAFETY: the mapping belongs to `mem`, which lives until the end of main, after the vCPU.
    unsafe { vm.set_user_memory_region(region)? };

    // mov ecx, n; 1: out 0x80, al; dec ecx; jnz 1b; hlt   (16-bit code)
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0xe6, 0x80, 0x66, 0x49, 0x75, 0xfa, 0xf4]);
    mem.write_slice(&code, GuestAddress(CODE_ADDR))?;

    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;

    let mut exits: u64 = 0;
    let start = Instant::now();
    loop {
        match vcpu.run()? {
            VcpuExit::IoOut(_, _) => exits += 1,
            VcpuExit::Hlt => break,
            other => return Err(format!("unexpected exit: {other:?}").into()),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "raw exits={exits} seconds={seconds:.6} rate={:.0}",
        exits as f64 / seconds
    );
    Ok(())
}
