//! The Intel MultiProcessor Specification (1.4) table, for kernels that find their CPUs there.
//!
//! Kernels built without ACPI, or booted with `acpi=off`, learn about the CPUs and the IOAPIC
//! from the MP table; ACPI's MADT takes precedence when both are present, so the VMM always
//! writes this one. The floating pointer sits at the start of the EBDA ([`MPTABLE_START`]),
//! one of the places the specification says to search, with the configuration table right
//! after it. ISA IRQs map to the IOAPIC pins of the same number, as KVM's default routing does.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::EBDA_START;
use super::{checksum, Error, Result};

/// Where the floating pointer structure is written.
pub const MPTABLE_START: u64 = EBDA_START;
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const LAPIC_ADDR: u32 = 0xfee0_0000;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_IRQS: u8 = 16;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6 in the CPU signature; FPU and APIC in the feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// The configuration table (header and entries) for `vcpus` CPUs, to be written at `addr`.
fn config_table(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0 ...
    entries.extend_from_slice(b"ISA   "); // ... is ISA
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        // Vectored interrupt, bus-default polarity and trigger, bus 0 IRQ n -> IOAPIC pin n.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 is ExtINT (the 8259s), LINT1 is NMI, on every local APIC.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut t = Vec::with_capacity(44 + entries.len());
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    t.push(4); // specification revision 1.4
    t.push(0); // checksum, below
    t.extend_from_slice(b"VMMREF  "); // OEM id
    t.extend_from_slice(b"VMM-REF     "); // product id, 12 bytes
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&count.to_le_bytes());
    t.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&entries);
    t[7] = checksum(&t);
    t
}

/// The floating pointer structure, pointing at a configuration table at `table_addr`.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[0..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&table_addr.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = 4; // specification revision 1.4
    f[10] = checksum(&f);
    f
}

/// The MP table for `vcpus` CPUs as `(address, bytes)` pieces.
pub fn tables(vcpus: u8) -> [(u64, Vec<u8>); 2] {
    let table_addr = MPTABLE_START + 16;
    [
        (MPTABLE_START, floating_pointer(table_addr as u32).to_vec()),
        (table_addr, config_table(vcpus)),
    ]
}

/// Writes the MP table for `vcpus` CPUs into guest memory.
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<()> {
    for (addr, bytes) in tables(vcpus) {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                what: "MP table",
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::acpi::ACPI_START;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_lengths_and_cpus() {
        for vcpus in [1u8, 2, 8, 254] {
            let [(fp_addr, fp), (table_addr, table)] = tables(vcpus);
            assert_eq!(fp_addr, MPTABLE_START);
            assert_eq!(sum(&fp), 0);
            assert_eq!(&fp[..4], b"_MP_");
            assert_eq!(
                u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64,
                table_addr
            );
            assert_eq!(sum(&table), 0);
            assert_eq!(
                u16::from_le_bytes([table[4], table[5]]) as usize,
                table.len()
            );
            // Walk the entries: processors are 20 bytes, the rest 8.
            let count = u16::from_le_bytes([table[34], table[35]]);
            let (mut off, mut cpus) = (44, vec![]);
            for _ in 0..count {
                if table[off] == 0 {
                    cpus.push((table[off + 1], table[off + 3]));
                    off += 20;
                } else {
                    off += 8;
                }
            }
            assert_eq!(off, table.len());
            assert_eq!(cpus.len(), vcpus as usize);
            assert_eq!(cpus[0], (0, CPU_ENABLED | CPU_BOOTSTRAP));
            assert!(cpus[1..]
                .iter()
                .enumerate()
                .all(|(i, c)| *c == (i as u8 + 1, CPU_ENABLED)));
            // It stays below the ACPI tables.
            assert!(table_addr + table.len() as u64 <= ACPI_START);
        }
    }
}
