//! Placing the initrd: page-aligned at the top of low RAM, as high as the kernel allows.
//!
//! High is where bootloaders put it, so that the kernel's own early allocations below it
//! never collide with it.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::image::open_readable;
use crate::arch::x86_64::layout::PAGE_SIZE;
use crate::error::{Error, Result};

/// The page-aligned address for `size` bytes below `top` (exclusive) and above `floor`.
pub fn placement(size: u64, floor: u64, top: u64) -> Option<u64> {
    let start = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= floor.next_multiple_of(PAGE_SIZE)).then_some(start)
}

/// Loads the initrd at `path` above `kernel_end`, ending at or below `low_end` and
/// `addr_max`. Returns its address and size.
pub fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_end: u64,
    addr_max: u64,
) -> Result<(u64, u64)> {
    let mut file = open_readable("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|e| Error::Io {
            what: format!("cannot stat initrd={}", path.display()),
            source: e,
        })?
        .len();
    let top = low_end.min(addr_max.saturating_add(1));
    let addr = placement(size, kernel_end, top).ok_or_else(|| {
        Error::invalid(
            "initrd",
            path.display(),
            format!(
                "{size} bytes do not fit between the kernel's end at {kernel_end:#x} and {top:#x}; \
                 expected a smaller initrd or more memory_mib"
            ),
        )
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| Error::GuestMemory {
            what: "load the initrd",
            detail: e.to_string(),
        })?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_page_aligned_at_the_top() {
        assert_eq!(placement(0x1800, 0x100_0000, 0x1000_0000), Some(0xfffe000));
        assert_eq!(placement(0x1000, 0x100_0000, 0x1000_0000), Some(0xffff000));
    }

    #[test]
    fn refused_when_it_would_overlap_the_kernel() {
        assert_eq!(
            placement(0x20_0000, 0x0f00_0000, 0x1000_0000),
            Some(0xfe0_0000)
        );
        assert_eq!(placement(0x200_0000, 0x0f00_0000, 0x1000_0000), None);
        assert_eq!(placement(u64::MAX, 0, 0x1000), None);
    }
}
