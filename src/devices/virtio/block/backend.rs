//! A raw disk image: sectors map one-to-one onto the bytes of a host file.
//!
//! Reads and writes go straight between the file and guest memory (`preadv`/`pwritev` on the
//! guest's buffers, no bounce copy); discard and write-zeroes punch holes, so a sparse image
//! stays sparse.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::request::SECTOR_SIZE;
use crate::refusal::{HostError, Refusal};

/// At most this many buffers go to one `preadv`/`pwritev` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// An open raw image.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    sectors: u64,
    read_only: bool,
}

impl RawFile {
    /// Opens `path` (named `arg` in errors) for reading, and writing unless `read_only`.
    pub fn open(arg: String, path: &Path, read_only: bool) -> Result<RawFile, HostError> {
        let file = crate::host_file::open_file(arg.clone(), path, !read_only)?;
        let len = file
            .metadata()
            .map_err(HostError::io(format!(
                "cannot read the size of {arg}={}",
                path.display()
            )))?
            .len();
        let sectors = len / SECTOR_SIZE;
        if sectors == 0 {
            return Err(HostError::Refused(Refusal::invalid(
                arg,
                path.display(),
                format!(
                    "expected a raw disk image of at least {SECTOR_SIZE} bytes (it has {len}); \
                     its size sets the disk's capacity"
                ),
            )));
        }
        Ok(RawFile {
            file,
            sectors,
            read_only,
        })
    }

    /// Capacity in 512-byte sectors (a partial last sector is not part of the disk).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads from byte `offset` into the guest buffers `bufs`, filling them all.
    pub fn read_into(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
        offset: u64,
    ) -> io::Result<()> {
        self.transfer(mem, bufs, offset, false)
    }

    /// Writes the guest buffers `bufs` at byte `offset`.
    pub fn write_from(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
        offset: u64,
    ) -> io::Result<()> {
        self.transfer(mem, bufs, offset, true)
    }

    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        bufs: &[(GuestAddress, u32)],
        mut offset: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(bufs.len());
        for &(addr, len) in bufs {
            for slice in GuestMemoryBackend::get_slices(mem, addr, len as usize) {
                let slice = slice.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        let mut iovecs = &mut iovecs[..];
        while !iovecs.is_empty() {
            let count = iovecs.len().min(IOV_MAX);
            let fd = self.file.as_raw_fd();
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: every iovec points into guest memory that `mem` keeps mapped for the
            // whole call (checked by `get_slices`), with its length. The kernel copies to or
            // from it; a guest changing the buffers meanwhile only changes the data moved.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, iovecs.as_ptr(), count as libc::c_int, off)
                } else {
                    libc::preadv(fd, iovecs.as_ptr(), count as libc::c_int, off)
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut done = n as usize;
            offset += done as u64;
            while let Some(first) = iovecs.first_mut() {
                if done < first.iov_len {
                    // SAFETY: advancing within the same buffer, by less than its length.
                    first.iov_base = unsafe { first.iov_base.cast::<u8>().add(done) }.cast();
                    first.iov_len -= done;
                    break;
                }
                done -= first.iov_len;
                iovecs = &mut iovecs[1..];
            }
        }
        Ok(())
    }

    /// Makes written data durable.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Makes `len` bytes at `offset` read as zero: punches a hole, or writes zeroes where the
    /// file system cannot punch holes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.punch_hole(offset, len).is_ok() {
            return Ok(());
        }
        const CHUNK: u64 = 64 << 10;
        let zeroes = vec![0u8; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            self.file
                .write_all_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// Tells the file system the range is no longer needed (a discard). Best effort: a file
    /// system without hole punching keeps the data, which a discard allows.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = self.punch_hole(offset, len);
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
