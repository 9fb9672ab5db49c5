//! Guest memory in snapshots and forks: written sparsely, mapped back copy-on-write.
//!
//! A snapshot's memory file holds the guest's RAM ranges one after another, with holes where
//! the guest never wrote (or wrote only zeros), so a 4 GiB guest that used 100 MiB makes a
//! 100 MiB file. Which pages hold data comes from `/proc/self/pagemap` (present or swapped:
//! unlike `mincore`, a swapped-out page is not mistaken for an empty one) and, for memory
//! that is itself a private mapping of a file (a restored VM), from that file's data
//! ranges (`SEEK_DATA`).
//!
//! Restoring maps the file `MAP_PRIVATE` over the VM's RAM: pages are read when the guest
//! first touches them and its writes stay in the process. A fork does the same with a
//! sealed memfd that both the parent and its clones map privately.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, FromRawFd};

/// The host page size this module works in.
pub const PAGE: usize = 4096;
/// Pages examined per pagemap read.
const PAGEMAP_CHUNK: usize = 4096;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

/// One host mapping of guest RAM and where it goes in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Host address of the mapping.
    pub addr: usize,
    /// Its length in bytes (a multiple of [`PAGE`]).
    pub len: usize,
    /// Its offset in the memory file.
    pub offset: u64,
}

/// Whether each page of `addr..addr+len` has ever held data in this process: present in
/// RAM or in swap.
fn populated(pagemap: &File, addr: usize, len: usize) -> io::Result<Vec<bool>> {
    let mut out = Vec::with_capacity(len / PAGE);
    scan_pagemap(pagemap, addr, len, |v| {
        out.push(v & (PM_PRESENT | PM_SWAPPED) != 0);
        false
    })?;
    Ok(out)
}

/// Calls `stop` with the pagemap entry of each page of `addr..addr+len`, in order, until it
/// returns true; returns whether it did.
fn scan_pagemap(
    pagemap: &File,
    addr: usize,
    len: usize,
    mut stop: impl FnMut(u64) -> bool,
) -> io::Result<bool> {
    let pages = len / PAGE;
    let mut buf = vec![0u8; PAGEMAP_CHUNK * 8];
    let mut page = 0;
    while page < pages {
        let n = (pages - page).min(PAGEMAP_CHUNK);
        pagemap.read_exact_at(&mut buf[..n * 8], ((addr / PAGE + page) * 8) as u64)?;
        for e in buf[..n * 8].chunks_exact(8) {
            if stop(u64::from_le_bytes([
                e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7],
            ])) {
                return Ok(true);
            }
        }
        page += n;
    }
    Ok(false)
}

/// Marks the pages of `base` (the file a mapping privately maps, from `offset`) that hold
/// data: pages the process never touched still read from there.
fn mark_file_data(base: &File, offset: u64, pages: &mut [bool]) -> io::Result<()> {
    let fd = base.as_raw_fd();
    let end = offset + (pages.len() * PAGE) as u64;
    let mut pos = offset;
    while pos < end {
        // SAFETY: lseek on a descriptor we own; no memory is involved.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(()) // no data past `pos`
            } else {
                Err(e)
            };
        }
        let data = data as u64;
        if data >= end {
            return Ok(());
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        let first = ((data - offset) as usize) / PAGE;
        let last = ((hole - offset) as usize).div_ceil(PAGE);
        let last = last.min(pages.len());
        for p in &mut pages[first..last] {
            *p = true;
        }
        pos = hole;
    }
    Ok(())
}

/// Writes the guest RAM in `mappings` into `out` at their offsets plus `at`, skipping pages
/// that never held data or hold only zeros (left as holes: they read as zeros). `base` is the
/// file the mappings privately map (at their offsets), if they do. Returns the bytes written.
///
/// The caller keeps the guest from writing meanwhile (vCPUs paused, devices locked).
pub fn write_sparse(
    mappings: &[Mapping],
    base: Option<&File>,
    out: &File,
    at: u64,
) -> io::Result<u64> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let total: u64 = mappings
        .iter()
        .map(|m| at + m.offset + m.len as u64)
        .max()
        .unwrap_or(at);
    out.set_len(total)?;
    let mut written = 0u64;
    for m in mappings {
        let mut pages = populated(&pagemap, m.addr, m.len)?;
        if let Some(base) = base {
            mark_file_data(base, m.offset, &mut pages)?;
        }
        // SAFETY: `m.addr..m.addr+m.len` is a live mapping of guest RAM, readable, which the
        // caller keeps mapped (and unwritten) for this call.
        let ram = unsafe { std::slice::from_raw_parts(m.addr as *const u8, m.len) };
        let has_data: Vec<bool> = pages
            .iter()
            .enumerate()
            .map(|(i, &populated)| {
                populated && ram[i * PAGE..(i + 1) * PAGE].iter().any(|&b| b != 0)
            })
            .collect();
        let mut p = 0;
        while p < has_data.len() {
            if !has_data[p] {
                p += 1;
                continue;
            }
            let start = p;
            while p < has_data.len() && has_data[p] {
                p += 1;
            }
            let bytes = &ram[start * PAGE..p * PAGE];
            out.write_all_at(bytes, at + m.offset + (start * PAGE) as u64)?;
            written += bytes.len() as u64;
        }
    }
    Ok(written)
}

const PM_FILE_OR_SHARED: u64 = 1 << 61;

/// Whether the guest RAM in `mappings` (a private mapping of a file) holds pages of its own:
/// written since it was mapped, so no longer what the file holds.
pub fn diverged(mappings: &[Mapping]) -> io::Result<bool> {
    let pagemap = File::open("/proc/self/pagemap")?;
    for m in mappings {
        // A private page of ours: anonymous (not the file's), in RAM or in swap.
        let private =
            |v: u64| v & PM_SWAPPED != 0 || (v & PM_PRESENT != 0 && v & PM_FILE_OR_SHARED == 0);
        if scan_pagemap(&pagemap, m.addr, m.len, private)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Maps `file` from each mapping's offset over the mapping, privately: the guest sees the
/// file's contents, and its writes stay in this process.
///
/// # Safety
/// Every mapping must be a mapping of guest RAM that this VM owns; whatever it held is
/// replaced (the caller has written it to `file` first if it is to be kept).
pub unsafe fn map_private(mappings: &[Mapping], file: &File) -> io::Result<()> {
    for m in mappings {
        // SAFETY: per this function's contract the range is ours to replace; MAP_FIXED swaps
        // the pages under the same addresses atomically (no other thread sees a hole), and
        // KVM's MMU notifier drops its mappings of the old pages.
        let p = unsafe {
            libc::mmap(
                m.addr as *mut libc::c_void,
                m.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                m.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A new memfd holding a copy of the guest RAM in `mappings` (see [`write_sparse`]), sealed
/// against any change: the base that a forked VM and its parent map privately.
pub fn freeze(mappings: &[Mapping], base: Option<&File>) -> io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor returned is ours.
    let fd = unsafe {
        libc::memfd_create(
            c"vmm-reference-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    write_sparse(mappings, base, &file, 0)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on our descriptor; nobody maps it writable-shared, so the seals take.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The length of `file`, checked to be `expected`: a truncated memory file would give the
/// guest SIGBUS (the process dies) at the first touch of a missing page.
pub fn check_len(file: &mut File, expected: u64) -> io::Result<bool> {
    Ok(file.seek(SeekFrom::End(0))? == expected)
}

/// Reads `len` bytes at `offset` of `file` (tests, checks).
pub fn read_at(file: &mut File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An anonymous mapping of `pages` pages, unmapped on drop.
    struct Anon(usize, usize);
    impl Anon {
        fn new(pages: usize) -> Anon {
            let len = pages * PAGE;
            // SAFETY: a fresh anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Anon(p as usize, len)
        }
        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: our own mapping, alive while `self` is, borrowed mutably through it.
            unsafe { std::slice::from_raw_parts_mut(self.0 as *mut u8, self.1) }
        }
        fn mapping(&self, offset: u64) -> Mapping {
            Mapping {
                addr: self.0,
                len: self.1,
                offset,
            }
        }
    }
    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`.
            unsafe { libc::munmap(self.0 as *mut libc::c_void, self.1) };
        }
    }

    /// An unlinked read-write file in the temporary directory.
    fn temp() -> File {
        let path = std::env::temp_dir().join(format!(
            "vmm-ref-mem-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn only_pages_with_data_are_written_at_their_offsets() {
        let mut a = Anon::new(16);
        a.bytes()[3 * PAGE] = 7; // page 3: data
        a.bytes()[5 * PAGE..6 * PAGE].fill(0); // page 5: touched, zeros only
        a.bytes()[15 * PAGE + 100] = 9; // page 15: data
        let mut out = temp();
        let written = write_sparse(&[a.mapping(PAGE as u64)], None, &out, 0).unwrap();
        assert_eq!(written, 2 * PAGE as u64);
        assert_eq!(out.metadata().unwrap().len(), 17 * PAGE as u64);
        assert_eq!(read_at(&mut out, 4 * PAGE as u64, 1).unwrap(), [7]);
        assert_eq!(read_at(&mut out, 16 * PAGE as u64 + 100, 1).unwrap(), [9]);
        assert_eq!(
            read_at(&mut out, 6 * PAGE as u64, PAGE).unwrap(),
            vec![0; PAGE]
        );
    }

    #[test]
    fn a_frozen_copy_is_sealed_and_a_private_mapping_of_it_diverges_only_when_written() {
        let mut a = Anon::new(8);
        a.bytes()[PAGE] = 1;
        let base = freeze(&[a.mapping(0)], None).unwrap();
        // Sealed: nobody can change the base under the clones.
        assert!(base.write_at(&[2], 0).is_err());
        // SAFETY: `a` is ours; its contents are in `base`.
        unsafe { map_private(&[a.mapping(0)], &base) }.unwrap();
        assert_eq!(a.bytes()[PAGE], 1);
        assert!(!diverged(&[a.mapping(0)]).unwrap(), "reads only");
        a.bytes()[2 * PAGE] = 5;
        assert!(diverged(&[a.mapping(0)]).unwrap());
        // A second freeze sees both the base's data and the private page.
        let second = freeze(&[a.mapping(0)], Some(&base)).unwrap();
        let mut second = second;
        assert_eq!(read_at(&mut second, PAGE as u64, 1).unwrap(), [1]);
        assert_eq!(read_at(&mut second, 2 * PAGE as u64, 1).unwrap(), [5]);
    }
}
