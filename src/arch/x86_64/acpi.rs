//! ACPI tables: RSDP, XSDT, FADT, DSDT, MADT and, with a PCI bus, MCFG.
//!
//! Debian's cloud kernel is built without MP-table parsing, so ACPI's MADT is how it learns
//! about every CPU beyond the first. The FADT describes a PC with legacy devices (PIC, PIT,
//! i8042, COM1 keep their ISA IRQs; a hardware-reduced FADT would drop the PIC and with it the
//! ISA IRQ mappings the serial console needs) and a PM1a control register at [`PM1_CNT_PORT`].
//! The DSDT declares `\_S5_`, so a guest `poweroff` writes SLP_TYP=5|SLP_EN there and the VM
//! ends with reason `poweroff`.
//!
//! The tables live in the reserved area below 1 MiB ([`ACPI_START`]); the RSDP sits on a
//! 16-byte boundary there, where Linux's legacy scan finds it, and its address is also given in
//! the zero page (`acpi_rsdp_addr`).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{checksum, Error, Result};

/// Where the tables start (the RSDP first).
pub const ACPI_START: u64 = 0xe0000;
/// The PM1a event block (status and enable registers, 2 bytes each).
pub const PM1_EVT_PORT: u64 = 0x600;
/// The PM1a control register (2 bytes): SLP_TYP and SLP_EN for poweroff.
pub const PM1_CNT_PORT: u64 = 0x604;
/// The SCI's IRQ (level-triggered): raised while a power button press is unacknowledged.
pub const SCI_IRQ: u16 = 9;
/// IOAPIC base address.
const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base address.
const LAPIC_ADDR: u32 = 0xfee0_0000;

const OEM_ID: &[u8; 6] = b"VMMREF";
const OEM_TABLE_ID: &[u8; 8] = b"VMMREFTB";

/// An ACPI system description table under construction.
struct Sdt(Vec<u8>);

impl Sdt {
    fn new(signature: &[u8; 4], revision: u8) -> Self {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(signature);
        b.extend_from_slice(&[0; 4]); // length, set by finish()
        b.push(revision);
        b.push(0); // checksum
        b.extend_from_slice(OEM_ID);
        b.extend_from_slice(OEM_TABLE_ID);
        b.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        b.extend_from_slice(b"VMMR"); // creator id
        b.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        Sdt(b)
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[4..8].copy_from_slice(&len.to_le_bytes());
        self.0[9] = checksum(&self.0);
        self.0
    }
}

/// A Generic Address Structure for an I/O port register `bits` wide.
fn gas_io_port(port: u64, bits: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = bits;
    g[3] = bits / 8; // access size: 1 byte, 2 words, 4 dwords
    g[4..12].copy_from_slice(&port.to_le_bytes());
    g
}

/// The DSDT: `\_S5_` (soft-off is sleep type 5) and, inside `\_SB_`, the devices'
/// entries (`devices`, AML built by [`crate::device_manager`]).
fn dsdt(devices: &[u8]) -> Vec<u8> {
    use acpi_tables::{aml, Aml};
    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&5u8])).to_aml_bytes(&mut body);
    body.extend(aml::Scope::raw("\\_SB_".into(), devices.to_vec()));
    let mut t = Sdt::new(b"DSDT", 6);
    t.put(&body);
    t.finish()
}

/// The FADT (revision 6), hardware-reduced, pointing at the DSDT.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut body = [0u8; 276 - 36];
    let at = |off: usize| off - 36;
    body[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    body[at(46)..at(48)].copy_from_slice(&SCI_IRQ.to_le_bytes());
    // SMI_CMD stays 0: the machine is always in ACPI mode.
    body[at(56)..at(60)].copy_from_slice(&(PM1_EVT_PORT as u32).to_le_bytes());
    body[at(64)..at(68)].copy_from_slice(&(PM1_CNT_PORT as u32).to_le_bytes());
    body[at(88)] = 4; // PM1_EVT_LEN: status + enable
    body[at(89)] = 2; // PM1_CNT_LEN
                      // IAPC_BOOT_ARCH: legacy devices, an 8042, no VGA.
    body[at(109)..at(111)].copy_from_slice(&(1u16 | 2 | 4).to_le_bytes());
    body[at(112)..at(116)].copy_from_slice(&1u32.to_le_bytes()); // WBINVD works
    body[at(131)] = 5; // FADT minor version (6.5)
    body[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes()); // X_DSDT
    body[at(148)..at(160)].copy_from_slice(&gas_io_port(PM1_EVT_PORT, 32));
    body[at(172)..at(184)].copy_from_slice(&gas_io_port(PM1_CNT_PORT, 16));
    body[at(268)..at(276)].copy_from_slice(b"VMMREF\0\0"); // hypervisor vendor identity
    let mut t = Sdt::new(b"FACP", 6);
    t.put(&body);
    t.finish()
}

/// The MADT: one enabled local APIC per vCPU, the IOAPIC, the SCI's override, LINT1 as NMI.
fn madt(vcpus: u8) -> Vec<u8> {
    let mut t = Sdt::new(b"APIC", 5);
    t.put(&LAPIC_ADDR.to_le_bytes()).put(&1u32.to_le_bytes()); // PCAT_COMPAT: 8259s present
    for id in 0..vcpus {
        t.put(&[0, 8, id, id]).put(&1u32.to_le_bytes()); // processor local APIC, enabled
    }
    // The IOAPIC, with an id after the CPUs'. ISA IRQs keep their numbers as GSIs (no IRQ0 ->
    // GSI2 override): KVM's default routing sends the PIT to IOAPIC pin 0, and a guest told to
    // look for it on pin 2 never sees a timer tick. Only the SCI is overridden, to level.
    t.put(&[1, 12, vcpus, 0])
        .put(&IOAPIC_ADDR.to_le_bytes())
        .put(&0u32.to_le_bytes());
    t.put(&[2, 10, 0, SCI_IRQ as u8])
        .put(&u32::from(SCI_IRQ).to_le_bytes())
        .put(&0x000du16.to_le_bytes());
    t.put(&[4, 6, 0xff]).put(&0u16.to_le_bytes()).put(&[1]); // all CPUs: LINT1 is NMI
    t.finish()
}

/// The MCFG: ECAM of PCI segment 0, bus 0, at `ecam`.
fn mcfg(ecam: u64) -> Vec<u8> {
    use acpi_tables::Aml;
    let mut table = acpi_tables::mcfg::MCFG::new(*OEM_ID, *OEM_TABLE_ID, 1);
    table.add_ecam(ecam, 0, 0, 0);
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = Sdt::new(b"XSDT", 1);
    for e in entries {
        t.put(&e.to_le_bytes());
    }
    t.finish()
}

fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn align16(v: u64) -> u64 {
    (v + 15) & !15
}

/// The tables for `vcpus` CPUs, the devices in `dsdt_devices` and a PCI bus whose ECAM is at
/// `ecam` (if any) as `(address, bytes)`, RSDP first.
pub fn tables(vcpus: u8, dsdt_devices: &[u8], ecam: Option<u64>) -> Vec<(u64, Vec<u8>)> {
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align16(rsdp_addr + 36);
    let xsdt_len = 36 + if ecam.is_some() { 3 } else { 2 } * 8;
    let dsdt_addr = align16(xsdt_addr + xsdt_len);
    let dsdt = dsdt(dsdt_devices);
    let fadt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align16(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus);
    let mut pointed = vec![fadt_addr, madt_addr];
    let mut rest = vec![(dsdt_addr, dsdt), (fadt_addr, fadt)];
    let mut end = madt_addr + madt.len() as u64;
    rest.push((madt_addr, madt));
    if let Some(ecam) = ecam {
        let mcfg_addr = align16(end);
        let mcfg = mcfg(ecam);
        end = mcfg_addr + mcfg.len() as u64;
        pointed.push(mcfg_addr);
        rest.push((mcfg_addr, mcfg));
    }
    debug_assert!(end <= 0x10_0000, "the ACPI tables must stay below 1 MiB");
    let mut out = vec![(rsdp_addr, rsdp(xsdt_addr)), (xsdt_addr, xsdt(&pointed))];
    out.extend(rest);
    out
}

/// Writes the tables; returns the RSDP's address.
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    dsdt_devices: &[u8],
    ecam: Option<u64>,
) -> Result<u64> {
    for (addr, bytes) in tables(vcpus, dsdt_devices, ecam) {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory {
                what: "ACPI tables",
                source,
            })?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn every_table_checksums_to_zero_and_states_its_length() {
        let t = tables(4, &[], None);
        assert_eq!(&t[0].1[..8], b"RSD PTR ");
        assert_eq!(sum(&t[0].1[..20]), 0);
        assert_eq!(sum(&t[0].1), 0);
        for (_, table) in &t[1..] {
            assert_eq!(sum(table), 0, "{:?}", &table[..4]);
            assert_eq!(
                u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
                table.len()
            );
        }
        assert!(t.windows(2).all(|w| w[0].0 + w[0].1.len() as u64 <= w[1].0));
        let end = t.last().map(|(a, b)| a + b.len() as u64).unwrap();
        assert!(end <= 0x100000);
    }

    #[test]
    fn madt_lists_one_local_apic_per_vcpu() {
        let madt = madt(8);
        let mut off = 44;
        let mut apic_ids = vec![];
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            if kind == 0 {
                apic_ids.push(madt[off + 3]);
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(apic_ids, (0..8).collect::<Vec<u8>>());
    }

    #[test]
    fn fadt_has_the_pm1_blocks_and_the_dsdt() {
        let f = fadt(0xe1000);
        assert_eq!(f.len(), 276);
        assert_eq!(
            u32::from_le_bytes(f[112..116].try_into().unwrap()) & (1 << 20),
            0
        );
        assert_eq!(
            u32::from_le_bytes(f[64..68].try_into().unwrap()) as u64,
            PM1_CNT_PORT
        );
        assert_eq!(
            u64::from_le_bytes(f[176..184].try_into().unwrap()),
            PM1_CNT_PORT
        );
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), 0xe1000);
    }
}
