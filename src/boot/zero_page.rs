//! The zero page (`struct boot_params`) and its e820 memory map.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::cmdline::KernelCmdline;
use super::image::KernelImage;
use crate::arch::x86_64::layout::{
    low_ram_end, CMDLINE_START, EBDA_START, HIMEM_START_MIN, MMIO_GAP_END, MMIO_GAP_START,
    ZERO_PAGE_START,
};
use crate::error::{Error, Result};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map for `mem_bytes` of RAM with high memory from `himem_start`: conventional
/// memory below the EBDA, the EBDA/BIOS area reserved, RAM from `himem_start` to the MMIO
/// gap, and the rest above 4 GiB.
pub fn e820_map(mem_bytes: u64, himem_start: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START_MIN - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = low_ram_end(mem_bytes);
    if low_end > himem_start {
        map.push(E820Entry {
            addr: himem_start,
            size: low_end - himem_start,
            kind: E820_RAM,
        });
    }
    if mem_bytes > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_bytes - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Fills the zero page for `img` and writes it at [`ZERO_PAGE_START`].
pub fn write(
    mem: &GuestMemoryMmap,
    img: &KernelImage,
    cmdline: &KernelCmdline,
    initrd: Option<(u64, u64)>,
    acpi_rsdp: u64,
    e820: &[E820Entry],
) -> Result<()> {
    let mut params = boot_params {
        acpi_rsdp_addr: acpi_rsdp,
        ..Default::default()
    };
    if let Some(hdr) = img.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.text.len() as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(Error::GuestMemory {
            what: "write the e820 map",
            detail: "too many entries".into(),
        });
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| Error::GuestMemory {
        what: "write the zero page",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_map() {
        let map = e820_map(256 << 20, 0x100000);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (256 << 20) - 0x100000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn large_guest_map_goes_above_4g() {
        let mem = 6u64 << 30;
        let map = e820_map(mem, 0x200000);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 0x200000,
                size: MMIO_GAP_START - 0x200000,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[3],
            E820Entry {
                addr: 1 << 32,
                size: mem - MMIO_GAP_START,
                kind: E820_RAM
            }
        );
    }
}
