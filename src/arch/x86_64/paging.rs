//! The boot identity map: the first 4 GiB mapped 1:1 with 2 MiB pages.
//!
//! Four gigabytes rather than one so that a kernel, zero page and initrd placed anywhere in
//! low RAM are reachable at entry, whatever `memory_mib` and `himem_start` are.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};
use super::{Error, Result};

const PRESENT_RW: u64 = 0x03;
const PAGE_SIZE_2M: u64 = 0x80;
const GIBS_MAPPED: u64 = 4;

/// The page-table words to write, as `(guest address, value)` pairs.
pub fn identity_map_entries() -> Vec<(u64, u64)> {
    let mut entries = vec![(PML4_START, PDPTE_START | PRESENT_RW)];
    for gib in 0..GIBS_MAPPED {
        let pd = PDE_START + gib * 0x1000;
        entries.push((PDPTE_START + gib * 8, pd | PRESENT_RW));
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            entries.push((pd + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M));
        }
    }
    entries
}

/// Writes the identity map and returns the value for CR3.
pub fn setup_identity_map(mem: &GuestMemoryMmap) -> Result<u64> {
    for (addr, value) in identity_map_entries() {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                what: "page tables",
                source,
            })?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the written tables like the MMU would, for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(cr3 + ((va >> 39) & 0x1ff) * 8))
            .ok()?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))
            .ok()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))
            .ok()?;
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_f000) | (va & 0x1f_ffff))
    }

    #[test]
    fn maps_the_first_four_gib_one_to_one() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = setup_identity_map(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        for va in [
            0u64,
            0x7000,
            0x100_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xbfff_f000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }
}
