//! The guest as an ELF core file, in the layout QEMU's `dump-guest-memory` writes, which
//! `crash`, `drgn`, `gdb` and `readelf` open: an `ET_CORE` header, one `PT_NOTE` with, per
//! vCPU, an `NT_PRSTATUS` (the registers as Linux's x86-64 `elf_prstatus` holds them) and a
//! `"QEMU"` note (`QEMUCPUState`: segments, descriptor tables and control registers, which
//! `crash` takes CR3 and the IDT from), then the guest's own `VMCOREINFO` note when its kernel
//! has one (what `drgn` needs to know a kernel), and one `PT_LOAD` per RAM range with its
//! guest-physical address.
//!
//! RAM goes in sparsely (see [`crate::snapshot::memory::write_sparse`]): pages the guest never
//! touched, or that hold only zeros, are holes in the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::snapshot::memory::{write_sparse, Mapping, PAGE};

const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const NT_PRSTATUS: u32 = 1;
/// `sizeof(struct elf_prstatus)` on x86-64.
const PRSTATUS_LEN: usize = 336;
/// Where `pr_reg` starts in it.
const PRSTATUS_REGS: usize = 112;
/// `sizeof(QEMUCPUState)` with `kernel_gs_base`.
const QEMU_CPU_STATE_LEN: usize = 440;
/// `MSR_KERNEL_GS_BASE`.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// The longest `VMCOREINFO` taken from the guest: what fits in its page after the header.
const VMCOREINFO_MAX: usize = PAGE - 24;

/// One vCPU's registers, as a dump holds them.
#[derive(Debug, Clone, Copy)]
pub struct CpuRegs {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables and control registers.
    pub sregs: kvm_sregs,
    /// `MSR_KERNEL_GS_BASE` (0 when not saved).
    pub kernel_gs_base: u64,
}

impl CpuRegs {
    /// The registers of a saved vCPU.
    pub fn of(state: &crate::arch::x86_64::state::VcpuState) -> CpuRegs {
        let kernel_gs_base = state
            .msrs
            .iter()
            .find(|m| m.index == MSR_KERNEL_GS_BASE)
            .map_or(0, |m| m.data);
        CpuRegs {
            regs: state.regs,
            sregs: state.sregs,
            kernel_gs_base,
        }
    }
}

/// One range of guest RAM: its guest-physical address and where it is mapped here.
#[derive(Debug, Clone, Copy)]
pub struct RamRange {
    /// Guest-physical address.
    pub gpa: u64,
    /// The host mapping, its `offset` being the range's offset in the snapshot-style memory
    /// file a restored VM maps (for `base`).
    pub mapping: Mapping,
}

fn note(out: &mut Vec<u8>, name: &[u8], kind: u32, desc: &[u8]) {
    let pad = |n: usize| (4 - n % 4) % 4;
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    out.resize(out.len() + pad(name.len()), 0);
    out.extend_from_slice(desc);
    out.resize(out.len() + pad(desc.len()), 0);
}

/// `NT_PRSTATUS`'s desc for vCPU `index`.
fn prstatus(index: usize, cpu: &CpuRegs) -> Vec<u8> {
    let (r, s) = (&cpu.regs, &cpu.sregs);
    let mut d = vec![0u8; PRSTATUS_LEN];
    d[32..36].copy_from_slice(&(index as u32 + 1).to_le_bytes()); // pr_pid
    let sel = |seg: &kvm_segment| u64::from(seg.selector);
    let regs = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        0, // orig_rax
        r.rip,
        sel(&s.cs),
        r.rflags,
        r.rsp,
        sel(&s.ss),
        s.fs.base,
        s.gs.base,
        sel(&s.ds),
        sel(&s.es),
        sel(&s.fs),
        sel(&s.gs),
    ];
    for (i, v) in regs.iter().enumerate() {
        let at = PRSTATUS_REGS + 8 * i;
        d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    d
}

/// The `"QEMU"` note's desc (`QEMUCPUState`, version 1).
fn qemu_cpu_state(cpu: &CpuRegs) -> Vec<u8> {
    let (r, s) = (&cpu.regs, &cpu.sregs);
    let mut d = Vec::with_capacity(QEMU_CPU_STATE_LEN);
    d.extend_from_slice(&1u32.to_le_bytes());
    d.extend_from_slice(&(QEMU_CPU_STATE_LEN as u32).to_le_bytes());
    for v in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    let seg = |d: &mut Vec<u8>, g: &kvm_segment| {
        let flags = u32::from(g.type_) << 8
            | u32::from(g.s) << 12
            | u32::from(g.dpl) << 13
            | u32::from(g.present) << 15
            | u32::from(g.avl) << 20
            | u32::from(g.l) << 21
            | u32::from(g.db) << 22
            | u32::from(g.g) << 23;
        d.extend_from_slice(&u32::from(g.selector).to_le_bytes());
        d.extend_from_slice(&g.limit.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&g.base.to_le_bytes());
    };
    for g in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        seg(&mut d, g);
    }
    for t in [&s.gdt, &s.idt] {
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&u32::from(t.limit).to_le_bytes());
        d.extend_from_slice(&0u64.to_le_bytes());
        d.extend_from_slice(&t.base.to_le_bytes());
    }
    for v in [s.cr0, 0, s.cr2, s.cr3, s.cr4, cpu.kernel_gs_base] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    d
}

/// The guest kernel's own `VMCOREINFO` note (its desc), found in guest RAM: Linux keeps the
/// whole note, header and `VMCOREINFO` name included, at the start of pages of its own
/// (`alloc_pages_exact` in `crash_save_vmcoreinfo_init`), so a page that starts with a note
/// header naming it, followed by `OSRELEASE=`, is it. Only page starts are looked at: a scan
/// of every byte of a large guest would take longer than writing it. None for a guest
/// without one.
pub fn find_vmcoreinfo(ram: &[&[u8]]) -> Option<Vec<u8>> {
    const NAME: &[u8; 12] = b"VMCOREINFO\0\0";
    for bytes in ram {
        for page in bytes.chunks_exact(PAGE) {
            let word =
                |o: usize| u32::from_le_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]);
            if word(0) != 11 || word(8) != 0 || &page[12..24] != NAME {
                continue;
            }
            let len = word(4) as usize;
            if len == 0 || len > VMCOREINFO_MAX {
                continue;
            }
            let text = page.get(24..24 + len)?;
            if text.starts_with(b"OSRELEASE=") {
                return Some(text.to_vec());
            }
        }
    }
    None
}

/// Writes the core: the header, program headers and notes for `cpus` (and `vmcoreinfo`),
/// then `ram` from a page-aligned offset, sparsely (`base`: the file a restored VM's RAM
/// privately maps, whose data counts as the guest's). Returns the RAM bytes written.
pub fn write_core(
    out: &File,
    ram: &[RamRange],
    base: Option<&File>,
    cpus: &[CpuRegs],
    vmcoreinfo: Option<&[u8]>,
) -> io::Result<u64> {
    let mut notes = Vec::new();
    for (i, cpu) in cpus.iter().enumerate() {
        note(&mut notes, b"CORE\0", NT_PRSTATUS, &prstatus(i, cpu));
    }
    for cpu in cpus {
        note(&mut notes, b"QEMU\0", 0, &qemu_cpu_state(cpu));
    }
    if let Some(info) = vmcoreinfo {
        note(&mut notes, b"VMCOREINFO\0", 0, info);
    }
    let phnum = 1 + ram.len();
    let notes_at = EHDR_LEN + PHDR_LEN * phnum;
    let ram_at = (notes_at + notes.len()).div_ceil(PAGE) * PAGE;
    let mut head = Vec::with_capacity(ram_at);
    head.extend_from_slice(b"\x7fELF\x02\x01\x01");
    head.resize(16, 0);
    for v in [4u16, 62] {
        head.extend_from_slice(&v.to_le_bytes()); // ET_CORE, EM_X86_64
    }
    head.extend_from_slice(&1u32.to_le_bytes());
    for v in [0u64, EHDR_LEN as u64, 0] {
        head.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
    }
    head.extend_from_slice(&0u32.to_le_bytes());
    for v in [EHDR_LEN as u16, PHDR_LEN as u16, phnum as u16, 64, 0, 0] {
        head.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |head: &mut Vec<u8>, kind: u32, offset: u64, addr: u64, len: u64| {
        head.extend_from_slice(&kind.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        for v in [offset, addr, addr, len, len, 0] {
            head.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut head, PT_NOTE, notes_at as u64, 0, notes.len() as u64);
    // The ranges follow one another as in the memory file (`mapping.offset`), from `ram_at`.
    let mappings: Vec<Mapping> = ram.iter().map(|r| r.mapping).collect();
    for r in ram {
        let at = ram_at as u64 + r.mapping.offset;
        phdr(&mut head, PT_LOAD, at, r.gpa, r.mapping.len as u64);
    }
    head.extend_from_slice(&notes);
    out.write_all_at(&head, 0)?;
    write_sparse(&mappings, base, out, ram_at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_laid_out_as_readers_expect() {
        // SAFETY: plain-data KVM structs; zeroes are valid values.
        let mut cpu: CpuRegs = unsafe { std::mem::zeroed() };
        cpu.regs.rip = 0x1234_5678;
        cpu.regs.r15 = 15;
        cpu.sregs.cs.selector = 0x10;
        cpu.sregs.cr3 = 0x9000;
        let p = prstatus(0, &cpu);
        assert_eq!(p.len(), PRSTATUS_LEN);
        assert_eq!(
            &p[32..36],
            &1u32.to_le_bytes(),
            "pr_pid is the vCPU's number + 1"
        );
        assert_eq!(&p[112..120], &15u64.to_le_bytes(), "r15 first");
        assert_eq!(
            &p[112 + 16 * 8..112 + 17 * 8],
            &0x1234_5678u64.to_le_bytes(),
            "rip 17th"
        );
        assert_eq!(
            &p[112 + 17 * 8..112 + 18 * 8],
            &0x10u64.to_le_bytes(),
            "cs after it"
        );
        let q = qemu_cpu_state(&cpu);
        assert_eq!(q.len(), QEMU_CPU_STATE_LEN);
        assert_eq!(
            &q[392 + 24..392 + 32],
            &0x9000u64.to_le_bytes(),
            "cr3 is cr[3]"
        );
        let mut n = Vec::new();
        note(&mut n, b"CORE\0", 1, &[1, 2, 3]);
        assert_eq!(n.len(), 12 + 8 + 4);
    }

    #[test]
    fn the_kernels_vmcoreinfo_note_is_found_and_lookalikes_are_not() {
        let mut ram = vec![0u8; 3 * PAGE];
        let text = b"OSRELEASE=6.1.0\nPAGESIZE=4096\n";
        let mut n = Vec::new();
        note(&mut n, b"VMCOREINFO\0", 0, text);
        ram[100..100 + n.len()].copy_from_slice(&n); // not at a page's start: not it
        assert_eq!(find_vmcoreinfo(&[&ram]), None);
        ram[2 * PAGE..2 * PAGE + n.len()].copy_from_slice(&n);
        assert_eq!(find_vmcoreinfo(&[&ram]).as_deref(), Some(&text[..]));
        let mut fake = vec![0u8; PAGE];
        fake[12..24].copy_from_slice(b"VMCOREINFO\0\0"); // no header before it
        assert_eq!(find_vmcoreinfo(&[&fake[..]]), None);
        fake[..4].copy_from_slice(&11u32.to_le_bytes());
        fake[4..8].copy_from_slice(&(PAGE as u32).to_le_bytes()); // longer than its page
        assert_eq!(find_vmcoreinfo(&[&fake[..]]), None);
    }
}
