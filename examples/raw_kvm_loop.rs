//! The physical limit for the exit-path benchmark: the least a VMM can do per port-I/O exit.
//!
//! `raw_kvm_loop --probe PROBE_ELF N [scratch]` builds the very VM `Vm(memory_mib=64, kernel=PROBE_ELF,
//! cmdline="probe.bench=pio probe.n=N")` (or `probe.bench=scratch`) builds — the same KVM objects (in-kernel irqchip and
//! PIT), guest memory, loaded kernel, zero page, ACPI tables, CPUID, MSRs, LAPIC and 64-bit
//! entry state, all through vmm-reference's own functions — and runs it in a bare `KVM_RUN`
//! loop on the main thread: no devices, no bus, no counters, no other threads, no seccomp.
//! The only "device" is COM1's transmit side, answered inline so the probe can print the
//! result it timed with its TSC (`PROBE: bench pio n=N tsc=CYCLES`), which this prints. The
//! benchmark then compares the same guest-timed figure for both, so the ratio is the VMM's own
//! cost per exit. (A VM of another shape — real mode, no irqchip, no CPUID — exits at a
//! different rate under some hypervisors, kvm_pvm among them: that would measure the VM, not
//! the VMM.)
//!
//! `raw_kvm_loop N` runs the older, smaller loop instead: a real-mode `out 0x80` loop in a VM
//! with nothing else, timed on the host (`raw exits=N seconds=S rate=R`).

use std::path::PathBuf;
use std::time::Instant;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_reference::arch::x86_64::{cpuid, lapic, layout, msr, regs};
use vmm_reference::{KernelConfig, VmConfig};

const CODE_ADDR: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;
const COM1_THR: u16 = 0x3f8;
const COM1_LSR: u16 = 0x3fd;
/// LSR: transmitter holding register and transmitter empty.
const LSR_IDLE: u8 = 0x60;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn probe_vm(probe: PathBuf, n: u64, kind: &str) -> Result<()> {
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)?;
    vm.create_irq_chip()?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })?;
    let config = VmConfig {
        memory_mib: 64,
        kernel: KernelConfig {
            cmdline: format!("probe.bench={kind} probe.n={n}"),
            ..KernelConfig::new(probe)
        },
        ..VmConfig::default()
    };
    let ram = vmm_reference::memory::create_guest_memory(config.memory_bytes())?;
    let mem = ram.memory().clone();
    vmm_reference::memory::advise_huge_pages(&mem);
    vmm_reference::memory::register_guest_memory(&vm, &mem)?;
    let boot = vmm_reference::boot::load(
        &mem,
        &config,
        &vmm_reference::device_manager::Devices::none(),
    )?;

    let vcpu = vm.create_vcpu(0)?;
    vcpu.set_cpuid2(&cpuid::vcpu_cpuid(&cpuid::supported(&kvm)?, 0, 1))?;
    vcpu.set_msrs(&msr::boot_msrs().ok_or("MSR list")?)?;
    let mut lapic_state = vcpu.get_lapic()?;
    lapic::set_lint(&mut lapic_state);
    vcpu.set_lapic(&lapic_state)?;
    regs::setup_boot_registers(&vcpu, &mem, boot.entry)?;

    let mut vcpu = vcpu;
    let mut out = Vec::new();
    let mut exits = 0u64;
    let start = Instant::now();
    loop {
        match vcpu.run()? {
            VcpuExit::IoIn(COM1_LSR, data) => data.fill(LSR_IDLE),
            VcpuExit::IoIn(_, data) => data.fill(0),
            VcpuExit::IoOut(COM1_THR, data) => {
                out.extend_from_slice(data);
                if data == b"\n" && line_has(&out, b"PROBE: bench ") {
                    break;
                }
            }
            VcpuExit::IoOut(_, _) => exits += 1,
            VcpuExit::MmioRead(_, data) => data.fill(0),
            VcpuExit::MmioWrite(_, _) | VcpuExit::Hlt | VcpuExit::IrqWindowOpen => {}
            other => return Err(format!("unexpected exit: {other:?}").into()),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // The probe's report lines (the console bench's own text is left out).
    for line in out
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"PROBE: "))
    {
        println!("{}", String::from_utf8_lossy(line));
    }
    println!("raw exits={exits} seconds={seconds:.6}");
    drop(ram);
    Ok(())
}

/// Whether the last line of `out` (before its final newline) starts with `prefix`.
fn line_has(out: &[u8], prefix: &[u8]) -> bool {
    let body = &out[..out.len() - 1];
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    body[start..].starts_with(prefix)
}

fn real_mode(n: u32) -> Result<()> {
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
    // SAFETY: the mapping belongs to `mem`, which lives until the end of this function,
    // after the vCPU.
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, probe, n] if flag == "--probe" => probe_vm(PathBuf::from(probe), n.parse()?, "pio"),
        [flag, probe, n, kind] if flag == "--probe" && kind == "scratch" => {
            probe_vm(PathBuf::from(probe), n.parse()?, kind)
        }
        [n] => real_mode(n.parse()?),
        [] => real_mode(100_000),
        _ => Err("usage: raw_kvm_loop [--probe PROBE_ELF N [scratch] | N]".into()),
    }
}
