//! The boot GDT: flat 64-bit code, flat data and a TSS descriptor.
//!
//! Linux replaces it early, but the segment registers loaded at entry must match real
//! descriptors, so the same table is written to guest memory and turned into
//! `kvm_segment`s for `KVM_SET_SREGS`.

use kvm_bindings::kvm_segment;

/// Index of the 64-bit code segment (selector 0x08).
pub const CODE_INDEX: u16 = 1;
/// Index of the data segment (selector 0x10).
pub const DATA_INDEX: u16 = 2;
/// Index of the TSS (selector 0x18).
pub const TSS_INDEX: u16 = 3;

/// The boot GDT, in the order of the indices above.
pub fn boot_gdt() -> [u64; 4] {
    [
        0,                             // null
        gdt_entry(0xa09b, 0, 0xfffff), // code: present, DPL0, exec/read, L=1, G=1
        gdt_entry(0xc093, 0, 0xfffff), // data: present, DPL0, read/write, D/B=1, G=1
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 64-bit TSS, G=1
    ]
}

/// Packs a segment descriptor from its flags (access byte in bits 0..8, flags nibble in
/// 12..16), base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With the granularity bit set the limit counts 4 KiB pages.
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The `kvm_segment` a segment register holds after loading descriptor `index` of `table`.
pub fn segment_from_gdt(table: &[u64], index: u16) -> kvm_segment {
    let entry = table[usize::from(index)];
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_flat() {
        let gdt = boot_gdt();
        let cs = segment_from_gdt(&gdt, CODE_INDEX);
        assert_eq!(cs.selector, 0x08);
        assert_eq!(cs.l, 1);
        assert_eq!(cs.db, 0);
        assert_eq!(cs.present, 1);
        assert_eq!(cs.s, 1);
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.base, 0);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.g, 1);
    }

    #[test]
    fn data_and_tss_segments() {
        let gdt = boot_gdt();
        let ds = segment_from_gdt(&gdt, DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (0x10, 0x3, 1, 0));
        let tr = segment_from_gdt(&gdt, TSS_INDEX);
        assert_eq!((tr.selector, tr.type_, tr.s), (0x18, 0xb, 0));
    }

    #[test]
    fn entry_round_trips_base_and_limit() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        assert_eq!(base(e), 0x1234_5678);
        assert_eq!(limit(e), 0xabcde);
        let null = segment_from_gdt(&[0], 0);
        assert_eq!(null.unusable, 1);
    }
}
