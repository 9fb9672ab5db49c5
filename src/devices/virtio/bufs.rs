//! Guest buffers of one descriptor chain, seen as one byte range.
//!
//! Devices whose packets have a header (vsock, net) read and write it across whatever
//! descriptors the driver chose, bounds-checked, and move payloads straight between host
//! file descriptors and guest memory with `readv`/`writev` on [`GuestBufs::iovecs`].

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// A packet does not fit its buffers, or they are not in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet buffers too short or outside guest memory")]
pub struct BadBuffers;

/// Guest buffers of one descriptor chain, in order, seen as one byte range.
#[derive(Debug, Default)]
pub struct GuestBufs {
    bufs: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl GuestBufs {
    /// Takes the buffers `(address, length)` of a chain.
    pub fn new(bufs: impl IntoIterator<Item = (GuestAddress, u32)>) -> GuestBufs {
        let bufs: Vec<(GuestAddress, usize)> =
            bufs.into_iter().map(|(a, l)| (a, l as usize)).collect();
        let len = bufs.iter().map(|&(_, l)| l).sum();
        GuestBufs { bufs, len }
    }

    /// The device-writable buffers of a descriptor chain (a receive buffer); the driver's
    /// read-only ones, which a receive chain should not have, are left out.
    pub fn writable(
        chain: impl IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
    ) -> GuestBufs {
        GuestBufs::new(
            chain
                .into_iter()
                .filter(|d| d.is_write_only())
                .map(|d| (d.addr(), d.len())),
        )
    }

    /// The driver-readable buffers of a descriptor chain (a transmit buffer), or None when
    /// the chain has a device-writable one, which a transmit chain must not have.
    pub fn readable(
        chain: impl IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
    ) -> Option<GuestBufs> {
        let mut readable = Vec::new();
        for d in chain {
            if d.is_write_only() {
                return None;
            }
            readable.push((d.addr(), d.len()));
        }
        Some(GuestBufs::new(readable))
    }

    /// A request chain's driver-readable buffers and the device-writable ones after them
    /// (the reply's room); None when a readable buffer follows a writable one.
    pub fn request(
        chain: impl IntoIterator<Item = virtio_queue::desc::split::Descriptor>,
    ) -> Option<(GuestBufs, GuestBufs)> {
        let (mut readable, mut writable) = (Vec::new(), Vec::new());
        for d in chain {
            if d.is_write_only() {
                writable.push((d.addr(), d.len()));
            } else if writable.is_empty() {
                readable.push((d.addr(), d.len()));
            } else {
                return None;
            }
        }
        Some((GuestBufs::new(readable), GuestBufs::new(writable)))
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no byte at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces covering `offset..offset+len` (clipped to the buffers).
    fn pieces(&self, mut offset: usize, mut len: usize) -> Vec<(GuestAddress, usize)> {
        let mut out = Vec::new();
        for &(addr, blen) in &self.bufs {
            if len == 0 {
                break;
            }
            if offset >= blen {
                offset -= blen;
                continue;
            }
            let n = (blen - offset).min(len);
            out.push((GuestAddress(addr.0.wrapping_add(offset as u64)), n));
            len -= n;
            offset = 0;
        }
        out
    }

    /// Copies `out.len()` bytes from `offset`; fails if the buffers are shorter or not in guest
    /// memory.
    pub fn read(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), BadBuffers> {
        let mut done = 0;
        for (addr, n) in self.pieces(offset, out.len()) {
            mem.read_slice(&mut out[done..done + n], addr)
                .map_err(|_| BadBuffers)?;
            done += n;
        }
        if done == out.len() {
            Ok(())
        } else {
            Err(BadBuffers)
        }
    }

    /// Writes `data` at `offset`; fails if the buffers are shorter or not in guest memory.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        data: &[u8],
    ) -> Result<(), BadBuffers> {
        let mut done = 0;
        for (addr, n) in self.pieces(offset, data.len()) {
            mem.write_slice(&data[done..done + n], addr)
                .map_err(|_| BadBuffers)?;
            done += n;
        }
        if done == data.len() {
            Ok(())
        } else {
            Err(BadBuffers)
        }
    }

    /// `iovec`s over `offset..offset+len` for a `readv`/`writev` straight to or from guest
    /// memory; fails if a piece is not in guest memory.
    pub fn iovecs(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        len: usize,
    ) -> Result<Vec<libc::iovec>, BadBuffers> {
        let mut iovecs = Vec::new();
        for (addr, n) in self.pieces(offset, len) {
            for slice in GuestMemoryBackend::get_slices(mem, addr, n) {
                let slice = slice.map_err(|_| BadBuffers)?;
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        Ok(iovecs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bufs_read_and_write_across_descriptors() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let bufs = GuestBufs::new([(GuestAddress(0x100), 10), (GuestAddress(0x2000), 40)]);
        assert_eq!(bufs.len(), 50);
        let data: Vec<u8> = (0..44).collect();
        bufs.write(&mem, 0, &data).unwrap();
        let mut back = [0u8; 44];
        bufs.read(&mem, 0, &mut back).unwrap();
        assert_eq!(&back[..], &data[..]);
        let mut b = [0u8; 10];
        assert!(bufs.read(&mem, 45, &mut b).is_err(), "past the end");
        let outside = GuestBufs::new([(GuestAddress(0x7f00_0000_0000), 64)]);
        assert!(outside.write(&mem, 0, &[1]).is_err());
        assert_eq!(bufs.iovecs(&mem, 5, 20).unwrap().len(), 2);
    }
}
