//! The guest-physical memory map.
//!
//! ```text
//! 0x0000_0500  GDT                         (BOOT_GDT_START)
//! 0x0000_0520  IDT (empty)                 (BOOT_IDT_START)
//! 0x0000_7000  zero page / boot_params     (ZERO_PAGE_START)
//! 0x0000_8ff0  initial stack pointer       (BOOT_STACK_POINTER)
//! 0x0000_9000  PML4, PDPT, 4 PDs           (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line         (CMDLINE_START)
//! 0x0009_fc00  EBDA .. 1 MiB: reserved     (EBDA_START)
//! himem_start  the kernel (default 1 MiB), then the rest of low RAM; the initrd at its top
//! 0xc000_0000  32-bit MMIO gap (LAPIC, IOAPIC, KVM's TSS) up to 4 GiB
//! 4 GiB        the rest of RAM, when there is more than fits below the gap
//! ```

/// Where the GDT is written.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) IDT is written.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (Linux `struct boot_params`); `rsi` points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer: below the page tables, above the zero page.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The PML4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// The single PDPT of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// The first of four page directories (one per GiB mapped).
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Command-line limit (including the NUL) for kernels that do not state one: Linux's x86
/// `COMMAND_LINE_SIZE`.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area; low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// The most command line (with its NUL) the memory map has room for, from [`CMDLINE_START`]
/// up to the MP table at [`EBDA_START`], whatever a kernel's header claims it takes.
pub const CMDLINE_ROOM: usize = (EBDA_START - CMDLINE_START) as usize;
/// The lowest accepted `himem_start`: the start of "high" memory on a PC.
pub const HIMEM_START_MIN: u64 = 0x10_0000;
/// `himem_start` must be a multiple of this.
pub const HIMEM_START_ALIGN: u64 = 0x1000;
/// Start of the 32-bit MMIO gap: RAM above this goes above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where KVM puts the three pages of its real-mode TSS (inside the MMIO gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Page size used for aligning the initrd.
pub const PAGE_SIZE: u64 = 0x1000;
/// The memory the identity map covers: loaded images and boot structures must lie below.
pub const IDENTITY_MAP_END: u64 = 4 << 30;

// The boot structures must not overlap: checked when the crate compiles.
const _: () = {
    assert!(BOOT_IDT_START >= BOOT_GDT_START + 4 * 8);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(KVM_TSS_ADDRESS >= MMIO_GAP_START && KVM_TSS_ADDRESS + 3 * 0x1000 <= MMIO_GAP_END);
};

/// The guest-physical RAM ranges `(start, length)` for `mem_bytes` of RAM: up to
/// [`MMIO_GAP_START`] below 4 GiB, the remainder from 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// The end of RAM below the MMIO gap (exclusive).
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn memory_at_the_gap_is_one_range() {
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_memory_is_split_around_the_gap() {
        let mem = 4096u64 << 20;
        assert_eq!(
            ram_ranges(mem),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem - MMIO_GAP_START)]
        );
        assert_eq!(low_ram_end(mem), MMIO_GAP_START);
        let total: u64 = ram_ranges(mem).iter().map(|r| r.1).sum();
        assert_eq!(total, mem);
    }
}
