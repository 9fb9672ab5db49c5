//! x86-64 registers as gdb sees them (`gdbstub_arch`'s `X86_64CoreRegs`) and the debug
//! registers that hold hardware breakpoints and watchpoints.

use gdbstub::target::ext::breakpoints::WatchKind;
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{kvm_regs, kvm_sregs};

/// How many debug-register slots x86 has (DR0–DR3).
pub const SLOTS: usize = 4;

/// What a debug-register slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Break when this address is executed (gdb's hardware breakpoint, `hbreak`).
    Exec(u64),
    /// The same, for one of gdb's software breakpoints (`break`).
    Break(u64),
    /// Break when `len` bytes at the address are written (or read and written).
    Watch {
        /// The address (aligned to `len`).
        addr: u64,
        /// 1, 2, 4 or 8.
        len: u64,
        /// What access stops the guest.
        kind: WatchKind,
    },
}

/// `regs` and `sregs` as gdb's core registers (the x87/SSE part left zero).
pub fn to_gdb(regs: &kvm_regs, sregs: &kvm_sregs, out: &mut X86_64CoreRegs) {
    out.regs = [
        regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rsp, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    out.rip = regs.rip;
    out.eflags = regs.rflags as u32;
    out.segments.cs = u32::from(sregs.cs.selector);
    out.segments.ss = u32::from(sregs.ss.selector);
    out.segments.ds = u32::from(sregs.ds.selector);
    out.segments.es = u32::from(sregs.es.selector);
    out.segments.fs = u32::from(sregs.fs.selector);
    out.segments.gs = u32::from(sregs.gs.selector);
}

/// `regs` with gdb's general-purpose registers, RIP and the low 32 bits of RFLAGS (segment
/// selectors are not written back: changing one means reloading its descriptor).
pub fn from_gdb(gdb: &X86_64CoreRegs, regs: &mut kvm_regs) {
    let r = &gdb.regs;
    (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (r[0], r[1], r[2], r[3]);
    (regs.rsi, regs.rdi, regs.rbp, regs.rsp) = (r[4], r[5], r[6], r[7]);
    (regs.r8, regs.r9, regs.r10, regs.r11) = (r[8], r[9], r[10], r[11]);
    (regs.r12, regs.r13, regs.r14, regs.r15) = (r[12], r[13], r[14], r[15]);
    regs.rip = gdb.rip;
    regs.rflags = (regs.rflags & !0xffff_ffff) | u64::from(gdb.eflags);
}

/// DR0–DR3 and DR7 for `slots` (`debugreg[0..4]` and `debugreg[7]`).
pub fn debugregs(slots: &[Option<Slot>; SLOTS]) -> [u64; 8] {
    // GE and bit 10, which reads as 1.
    let mut dr = [0u64; 8];
    dr[7] = 0x600;
    for (i, slot) in slots.iter().enumerate() {
        let Some(slot) = slot else { continue };
        dr[7] |= 2 << (2 * i); // Gi: enabled for every task
        let (addr, rw, len) = match *slot {
            Slot::Exec(addr) | Slot::Break(addr) => (addr, 0b00, 0b00),
            Slot::Watch { addr, len, kind } => {
                let rw = match kind {
                    WatchKind::Write => 0b01,
                    WatchKind::Read | WatchKind::ReadWrite => 0b11, // x86 has no read-only
                };
                let len = match len {
                    1 => 0b00,
                    2 => 0b01,
                    8 => 0b10,
                    _ => 0b11,
                };
                (addr, rw, len)
            }
        };
        dr[i] = addr;
        dr[7] |= (rw | len << 2) << (16 + 4 * i);
    }
    dr
}

/// Whether a watchpoint of `len` bytes at `addr` fits one debug register.
pub fn watchable(addr: u64, len: u64) -> bool {
    matches!(len, 1 | 2 | 4 | 8) && addr % len == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_registers_encode_breakpoints_and_watchpoints() {
        let mut slots = [None; SLOTS];
        slots[0] = Some(Slot::Exec(0x1000));
        slots[2] = Some(Slot::Watch {
            addr: 0x2000,
            len: 4,
            kind: WatchKind::Write,
        });
        let dr = debugregs(&slots);
        assert_eq!((dr[0], dr[2]), (0x1000, 0x2000));
        assert_eq!(dr[7] & 0xff, 0x02 | 0x20, "G0 and G2");
        assert_eq!((dr[7] >> 16) & 0xf, 0, "slot 0 executes, 1 byte");
        assert_eq!((dr[7] >> 24) & 0xf, 0b1101, "slot 2 writes, 4 bytes");
        assert!(watchable(0x2000, 8) && !watchable(0x2001, 2) && !watchable(0, 3));
        let mut r = kvm_regs {
            rflags: 0xffff_0000_0000_0002,
            ..Default::default()
        };
        let mut g = X86_64CoreRegs::default();
        g.regs[0] = 7;
        g.rip = 0x1234;
        g.eflags = 0x246;
        from_gdb(&g, &mut r);
        assert_eq!((r.rax, r.rip, r.rflags), (7, 0x1234, 0xffff_0000_0000_0246));
    }
}
