//! Guest RAM: anonymous host mappings laid out around the MMIO gap and registered with KVM.
//!
//! Each mapping starts on a 2 MiB boundary, like the guest-physical range it backs: only then
//! can KVM map the guest's memory with 2 MiB pages where the host has transparent huge pages
//! (which [`advise_huge_pages`] asks for). An unaligned mapping leaves KVM with 4 KiB
//! mappings throughout, and a guest streaming through its memory (a disk read into the page
//! cache) pays for a fault per 4 KiB page.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::arch::x86_64::layout::ram_ranges;
use crate::error::{Error, Result};
use crate::snapshot::memory::{map_private, Mapping};

/// The alignment of every guest RAM mapping: a huge page.
pub const RAM_ALIGN: usize = 2 << 20;

/// Guest RAM: the [`GuestMemoryMmap`] and the host mappings under it, unmapped when this is
/// dropped and no other user of the memory is left (never while one remains: then they leak).
#[derive(Debug)]
pub struct GuestRam {
    memory: ManuallyDrop<Arc<GuestMemoryMmap>>,
    /// `(address, length)` of each mapping.
    mappings: Vec<(usize, usize)>,
}

impl GuestRam {
    /// The guest memory, to share with whoever reads or writes it.
    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        &self.memory
    }

    /// The host mappings, each with its offset in a snapshot's memory file (the RAM ranges
    /// one after another).
    pub fn mappings(&self) -> Vec<Mapping> {
        let mut offset = 0u64;
        self.mappings
            .iter()
            .map(|&(addr, len)| {
                let m = Mapping { addr, len, offset };
                offset += len as u64;
                m
            })
            .collect()
    }

    /// The memory file's length: all of RAM.
    pub fn file_len(&self) -> u64 {
        self.mappings.iter().map(|&(_, len)| len as u64).sum()
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `memory` is not used again after this (we are in drop).
        let memory = unsafe { ManuallyDrop::take(&mut self.memory) };
        let last = Arc::downgrade(&memory);
        drop(memory);
        if last.strong_count() != 0 {
            return;
        }
        for &(addr, len) in &self.mappings {
            // SAFETY: the mapping was made by `map_aligned` and nothing refers to it any more
            // (the last `GuestMemoryMmap` over it is gone).
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// Maps `len` bytes of anonymous memory starting on a [`RAM_ALIGN`] boundary.
fn map_aligned(len: usize) -> std::io::Result<usize> {
    let padded = len
        .checked_add(RAM_ALIGN)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = (start + RAM_ALIGN - 1) & !(RAM_ALIGN - 1);
    let (head, tail) = (aligned - start, start + padded - (aligned + len));
    // SAFETY: both ranges are inside the mapping just made and outside the part kept.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned)
}

/// Maps `mem_bytes` of guest RAM (see [`ram_ranges`]), each range 2 MiB-aligned on the host.
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestRam> {
    create_guest_memory_backed(mem_bytes, None)
}

/// Maps `mem_bytes` of guest RAM, anonymous or (`file`) a private copy-on-write mapping of a
/// memory file laid out as [`GuestRam::mappings`] says: a restored or forked VM.
pub fn create_guest_memory_backed(
    mem_bytes: u64,
    file: Option<&std::fs::File>,
) -> Result<GuestRam> {
    let refuse = |e: String| {
        Error::invalid(
            "memory_mib",
            mem_bytes >> 20,
            format!("the host could not map that much guest RAM ({e}); try a smaller size"),
        )
    };
    // Unmapped again on any error below.
    struct Mapped(Vec<(usize, usize)>);
    impl Drop for Mapped {
        fn drop(&mut self) {
            for &(addr, len) in &self.0 {
                // SAFETY: made by `map_aligned` just now; no region was built over it.
                unsafe { libc::munmap(addr as *mut libc::c_void, len) };
            }
        }
    }
    let mut mapped = Mapped(Vec::new());
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(mem_bytes) {
        let len = usize::try_from(len).map_err(|e| refuse(e.to_string()))?;
        let addr = map_aligned(len).map_err(|e| refuse(e.to_string()))?;
        mapped.0.push((addr, len));
        // SAFETY: `addr..addr+len` is the mapping just made, which the `GuestRam` returned
        // keeps until the memory built over it is gone.
        let region = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(addr as *mut u8) }
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| refuse(e.to_string()))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| refuse("a region wraps around the address space".into()))?;
        regions.push(Arc::new(region));
    }
    let memory = GuestMemoryMmap::from_arc_regions(regions).map_err(|e| refuse(e.to_string()))?;
    let ram = GuestRam {
        memory: ManuallyDrop::new(Arc::new(memory)),
        mappings: std::mem::take(&mut mapped.0),
    };
    if let Some(file) = file {
        // SAFETY: the mappings were just made for this RAM and hold nothing yet.
        unsafe { map_private(&ram.mappings(), file) }.map_err(|e| Error::Io {
            what: "cannot map the guest memory file".into(),
            source: e,
        })?;
    }
    Ok(ram)
}

/// Asks for transparent huge pages on guest RAM: fewer TLB misses for the guest and for
/// device I/O into guest buffers (the kernel copies disk data straight into them).
pub fn advise_huge_pages(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        if let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) {
            // SAFETY: madvise on a mapping `mem` owns, for its own length; MADV_HUGEPAGE only
            // changes how the kernel backs it, never its contents. Failure (no THP) is fine.
            unsafe {
                libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE);
            }
        }
    }
}

/// Tells KVM about every region of `mem`, one memory slot each.
pub fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::GuestMemory {
                what: "find a RAM mapping",
                detail: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping described by `region` belongs to `mem`, which the VM keeps alive
        // (and does not unmap) until every vCPU thread has stopped.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn mappings_are_huge_page_aligned_and_released() {
        let ram = create_guest_memory(64 << 20).unwrap();
        for region in ram.memory().iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap();
            assert_eq!(host as usize % RAM_ALIGN, 0);
        }
        let weak = Arc::downgrade(ram.memory());
        drop(ram);
        assert_eq!(weak.strong_count(), 0);
    }

    #[test]
    fn large_guest_memory_skips_the_gap() {
        let ram = create_guest_memory(4 << 30).unwrap();
        let mem = ram.memory();
        let regions: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(
            regions,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
