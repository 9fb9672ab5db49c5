//! Putting the guest's boot images in memory: kernel, initrd, command line, zero page.
//!
//! [`load`] is the whole step: it reads the kernel's headers ([`image`]), checks
//! `himem_start` and the command line against them, loads the kernel with linux-loader
//! ([`kernel`]), places the initrd ([`initrd`]), writes the command line ([`cmdline`]) and
//! the MP table ([`crate::arch::x86_64::mptable`]) and ACPI tables
//! ([`crate::arch::x86_64::acpi`]) and finally the zero page with the e820
//! map ([`zero_page`]).

pub mod cmdline;
pub mod image;
pub mod initrd;
pub mod kernel;
pub mod zero_page;

use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::layout::low_ram_end;
use crate::config::VmConfig;
use crate::device_manager::Devices;
use crate::error::Result;

/// Where things ended up, for the vCPUs and for anyone inspecting the VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootInfo {
    /// The kernel's format.
    pub format: image::KernelFormat,
    /// The 64-bit entry point (`rip` of the boot vCPU).
    pub entry: u64,
    /// First byte past the loaded kernel.
    pub kernel_end: u64,
    /// The command line as the guest sees it.
    pub cmdline: String,
    /// Guest address and size of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// The e820 map given to the guest.
    pub e820: Vec<zero_page::E820Entry>,
}

/// Loads everything `config` names into `mem` for `devices`: with ACPI they are in the DSDT
/// (and a PCI bus in the MCFG); without, the command line names the MMIO ones
/// (`virtio_mmio.device=`, for kernels built with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`) and
/// the kernel finds PCI devices by probing the 0xCF8 ports.
pub fn load(mem: &GuestMemoryMmap, config: &VmConfig, devices: &Devices) -> Result<BootInfo> {
    let kc = &config.kernel;
    let mem_bytes = config.memory_bytes();
    let low_end = low_ram_end(mem_bytes);

    let mut file = image::open_readable("kernel", &kc.path)?;
    let img = image::inspect(&mut file, &kc.path)?;
    kernel::check_himem_start(&img, kc.himem_start, low_end, config.memory_mib)?;
    let extra: Vec<String> = if config.acpi {
        Vec::new()
    } else {
        devices
            .info
            .iter()
            .filter(|d| d.bdf.is_none())
            .map(|d| {
                format!(
                    "virtio_mmio.device={}K@{:#x}:{}",
                    d.mmio_len >> 10,
                    d.mmio_base,
                    d.gsi
                )
            })
            .collect()
    };
    let cmdline = cmdline::build(
        &kc.cmdline,
        &extra,
        img.cmdline_limit(),
        devices.ecam.is_some(),
    )?;
    let loaded = kernel::load(mem, &img, &mut file, kc.himem_start)?;

    let initrd = match &kc.initrd {
        Some(path) => Some(initrd::load(
            mem,
            path,
            loaded.end,
            low_end,
            img.initrd_addr_max(),
        )?),
        None => None,
    };
    cmdline::write(mem, &cmdline)?;
    crate::arch::x86_64::mptable::setup_mptable(mem, config.vcpus as u8)?;
    let rsdp = if config.acpi {
        crate::arch::x86_64::acpi::setup_acpi(
            mem,
            config.vcpus as u8,
            &devices.dsdt_devices,
            devices.ecam,
        )?
    } else {
        0
    };
    let mut e820 = zero_page::e820_map(mem_bytes, kc.himem_start);
    if let Some(ecam) = devices.ecam {
        // Linux uses MMCONFIG only where the firmware's map reserves it.
        let at = e820
            .iter()
            .position(|e| e.addr > ecam)
            .unwrap_or(e820.len());
        e820.insert(
            at,
            zero_page::E820Entry {
                addr: ecam,
                size: crate::device_manager::pci::ECAM_SIZE,
                kind: zero_page::E820_RESERVED,
            },
        );
    }
    zero_page::write(mem, &img, &cmdline, initrd, rsdp, &e820)?;

    Ok(BootInfo {
        format: img.format,
        entry: loaded.entry,
        kernel_end: loaded.end,
        cmdline: cmdline.text,
        initrd,
        e820,
    })
}
