//! Checking `himem_start` against the kernel and loading the kernel with linux-loader.

use std::fs::File;

use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::image::{KernelFormat, KernelImage};
use crate::arch::x86_64::layout::{HIMEM_START_ALIGN, HIMEM_START_MIN, MMIO_GAP_START};
use crate::error::{Error, Result};

/// A loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: u64,
    /// First byte past the kernel in guest memory.
    pub end: u64,
}

fn show(v: u64) -> String {
    format!("{v:#x} ({v})")
}

/// The accepted `himem_start` range for `img` when low RAM ends at `low_end`, or the
/// error to report when no value works (the memory is too small for the kernel).
pub fn himem_start_range(img: &KernelImage, low_end: u64, memory_mib: u64) -> Result<(u64, u64)> {
    let too_small = |need: u64| {
        Error::invalid(
            "memory_mib",
            memory_mib,
            format!(
                "the {} needs guest RAM up to {:#x}; expected at least {} MiB",
                img.format,
                need,
                need.div_ceil(1 << 20)
            ),
        )
    };
    // Beyond the MMIO gap no amount of RAM helps: low RAM ends there whatever `memory_mib`.
    let need = match img.format {
        KernelFormat::Elf => img.load_end,
        KernelFormat::BzImage => HIMEM_START_MIN.saturating_add(img.load_end),
    };
    if need > MMIO_GAP_START {
        return Err(Error::invalid(
            "kernel",
            format!("<{} needing guest RAM up to {need:#x}>", img.format),
            format!(
                "expected a kernel that fits below the MMIO gap at {MMIO_GAP_START:#x} (its \
                 headers ask for more: a damaged or hostile image)"
            ),
        ));
    }
    match img.format {
        // An ELF kernel loads at its own physical addresses; high memory may not start above.
        KernelFormat::Elf => {
            if img.load_start < HIMEM_START_MIN {
                return Err(Error::invalid(
                    "kernel",
                    format!("<ELF loading at {:#x}>", img.load_start),
                    format!(
                        "expected an ELF kernel that loads at or above {HIMEM_START_MIN:#x} \
                         (1 MiB): the boot structures and the BIOS area are below"
                    ),
                ));
            }
            if img.load_end > low_end {
                return Err(too_small(img.load_end));
            }
            Ok((HIMEM_START_MIN, img.load_start & !(HIMEM_START_ALIGN - 1)))
        }
        // A bzImage loads at himem_start and needs `load_end` bytes from there.
        KernelFormat::BzImage => {
            let need = HIMEM_START_MIN + img.load_end;
            if need > low_end {
                return Err(too_small(need));
            }
            Ok((
                HIMEM_START_MIN,
                (low_end - img.load_end) & !(HIMEM_START_ALIGN - 1),
            ))
        }
    }
}

/// Refuses a `himem_start` below 1 MiB, misaligned, or leaving no room for the kernel.
pub fn check_himem_start(
    img: &KernelImage,
    himem_start: u64,
    low_end: u64,
    memory_mib: u64,
) -> Result<()> {
    let (min, max) = himem_start_range(img, low_end, memory_mib)?;
    if himem_start < min || himem_start > max || himem_start % HIMEM_START_ALIGN != 0 {
        let why = match img.format {
            KernelFormat::Elf => format!("this ELF kernel loads at {:#x}", img.load_start),
            KernelFormat::BzImage => format!(
                "the bzImage needs {:#x} bytes below the end of low RAM at {:#x}",
                img.load_end, low_end
            ),
        };
        return Err(Error::invalid(
            "himem_start",
            show(himem_start),
            format!(
                "expected a multiple of {HIMEM_START_ALIGN:#x} from {} to {} ({why})",
                show(min),
                show(max)
            ),
        ));
    }
    Ok(())
}

/// Loads the kernel; `himem_start` must have passed [`check_himem_start`].
pub fn load(
    mem: &GuestMemoryMmap,
    img: &KernelImage,
    file: &mut File,
    himem_start: u64,
) -> Result<LoadedKernel> {
    let load_err = |e: linux_loader::loader::Error| Error::GuestMemory {
        what: "load the kernel",
        detail: e.to_string(),
    };
    match img.format {
        KernelFormat::Elf => {
            let r =
                Elf::load(mem, None, file, Some(GuestAddress(himem_start))).map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0,
                end: r.kernel_end.max(img.load_end),
            })
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, Some(GuestAddress(himem_start)), file, None)
                .map_err(load_err)?;
            Ok(LoadedKernel {
                entry: r.kernel_load.0 + img.entry,
                end: r.kernel_load.0 + img.load_end,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(load_start: u64, load_end: u64) -> KernelImage {
        KernelImage {
            format: KernelFormat::Elf,
            file_len: 0,
            entry: load_start,
            load_start,
            load_end,
            setup_header: None,
        }
    }

    fn bz(need: u64) -> KernelImage {
        KernelImage {
            format: KernelFormat::BzImage,
            entry: 0x200,
            load_start: 0,
            load_end: need,
            ..elf(0, 0)
        }
    }

    #[test]
    fn original_readme_example_is_refused_with_the_range() {
        let err = check_himem_start(&bz(0x80_0000), 1024, 256 << 20, 256)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid himem_start=0x400 (1024): expected a multiple of 0x1000"),
            "{err}"
        );
        assert!(
            err.contains("from 0x100000 (1048576) to 0xf800000"),
            "{err}"
        );
    }

    #[test]
    fn bzimage_range_depends_on_its_size() {
        assert!(check_himem_start(&bz(0x80_0000), 0x100000, 256 << 20, 256).is_ok());
        assert!(check_himem_start(&bz(0x80_0000), 0xf80_0000, 256 << 20, 256).is_ok());
        assert!(check_himem_start(&bz(0x80_0000), 0xf80_1000, 256 << 20, 256).is_err());
        assert!(check_himem_start(&bz(0x80_0000), 0x10_0800, 256 << 20, 256).is_err());
    }

    #[test]
    fn elf_range_ends_at_its_load_address() {
        let img = elf(0x100_0000, 0x300_0000);
        assert!(check_himem_start(&img, 0x100_0000, 256 << 20, 256).is_ok());
        let err = check_himem_start(&img, 0x200_0000, 256 << 20, 256)
            .unwrap_err()
            .to_string();
        assert!(err.contains("this ELF kernel loads at 0x1000000"), "{err}");
    }

    #[test]
    fn too_little_memory_blames_memory_mib() {
        let err =
            check_himem_start(&elf(0x100_0000, 0x300_0000), 0x100000, 32 << 20, 32).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid memory_mib=32"),
            "{err}"
        );
        assert!(check_himem_start(&bz(0x200_0000), 0x100000, 16 << 20, 16).is_err());
    }
}
