//! The FUSE wire format (the kernel's `include/uapi/linux/fuse.h`) as far as the server
//! speaks it: opcodes, flags, and the request and reply structures, read and written field by
//! field in little-endian order (no `unsafe` casts of guest bytes into structs).

pub use crate::devices::virtio::wire::{Fields, Out};

/// The protocol version we speak: 7.31 (Linux 5.4 and later send at least this).
pub const KERNEL_VERSION: u32 = 7;
/// The minor version we answer with (the guest's, if older).
pub const KERNEL_MINOR_VERSION: u32 = 31;

/// `struct fuse_in_header`'s size.
pub const IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header`'s size.
pub const OUT_HEADER_LEN: usize = 16;
/// `struct fuse_attr`'s size.
pub const ATTR_LEN: usize = 88;
/// `struct fuse_entry_out`'s size.
pub const ENTRY_OUT_LEN: usize = 40 + ATTR_LEN;
/// `struct fuse_write_in`'s size.
pub const WRITE_IN_LEN: usize = 40;

/// Opcodes (`enum fuse_opcode`).
#[allow(missing_docs)]
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// `FUSE_INIT` flags we may offer.
#[allow(missing_docs)]
pub mod init {
    pub const ASYNC_READ: u32 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const MAX_PAGES: u32 = 1 << 22;
    pub const CACHE_SYMLINKS: u32 = 1 << 23;
}

/// `FUSE_SETATTR`'s `valid` bits, which [`SetAttr`](crate::devices::virtio::share::passthrough::setattr::SetAttr) takes.
pub use crate::devices::virtio::share::passthrough::setattr::fattr;

/// `struct fuse_in_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// The whole request's length, header included.
    pub len: u32,
    /// What is asked.
    pub opcode: u32,
    /// The request's id, echoed in the reply.
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
    /// The guest process's credentials (not used: every operation runs as the VMM's user).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
}

impl InHeader {
    /// Parses the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<InHeader> {
        let mut f = Fields::new(bytes.get(..IN_HEADER_LEN)?);
        Some(InHeader {
            len: f.u32()?,
            opcode: f.u32()?,
            unique: f.u64()?,
            nodeid: f.u64()?,
            uid: f.u32()?,
            gid: f.u32()?,
        })
    }
}

/// The start of a reply: `struct fuse_out_header` for `len` bytes in all and `error` (0 or
/// a negative errno).
pub fn out_header(len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[..4].copy_from_slice(&(len as u32).to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..].copy_from_slice(&unique.to_le_bytes());
    h
}

/// The FUSE structures a reply body is made of.
pub trait Reply {
    /// Appends `struct fuse_attr` for `st`.
    fn attr(&mut self, st: &libc::stat64) -> &mut Self;
    /// Appends `struct fuse_entry_out` for inode `nodeid` with attributes `st`, both valid
    /// for `valid_secs`.
    fn entry(&mut self, nodeid: u64, st: &libc::stat64, valid_secs: u64) -> &mut Self;
    /// Appends `struct fuse_attr_out`.
    fn attr_out(&mut self, st: &libc::stat64, valid_secs: u64) -> &mut Self;
    /// Appends a `struct fuse_dirent` (padded to 8 bytes).
    fn dirent(&mut self, ino: u64, off: u64, kind: u32, name: &[u8]) -> &mut Self;
}

impl Reply for Out {
    fn attr(&mut self, st: &libc::stat64) -> &mut Self {
        self.u64(st.st_ino)
            .u64(st.st_size as u64)
            .u64(st.st_blocks as u64)
            .u64(st.st_atime as u64)
            .u64(st.st_mtime as u64)
            .u64(st.st_ctime as u64)
            .u32(st.st_atime_nsec as u32)
            .u32(st.st_mtime_nsec as u32)
            .u32(st.st_ctime_nsec as u32)
            .u32(st.st_mode)
            .u32(st.st_nlink as u32)
            .u32(st.st_uid)
            .u32(st.st_gid)
            .u32(st.st_rdev as u32)
            .u32(st.st_blksize as u32)
            .u32(0)
    }

    fn entry(&mut self, nodeid: u64, st: &libc::stat64, valid_secs: u64) -> &mut Self {
        self.u64(nodeid)
            .u64(0)
            .u64(valid_secs)
            .u64(valid_secs)
            .u32(0)
            .u32(0)
            .attr(st)
    }

    fn attr_out(&mut self, st: &libc::stat64, valid_secs: u64) -> &mut Self {
        self.u64(valid_secs).u32(0).u32(0).attr(st)
    }

    fn dirent(&mut self, ino: u64, off: u64, kind: u32, name: &[u8]) -> &mut Self {
        self.u64(ino).u64(off).u32(name.len() as u32).u32(kind);
        self.0.extend_from_slice(name);
        self.zeros(dirent_padding(name.len()))
    }
}

/// The padding after a dirent's `name_len`-byte name.
pub fn dirent_padding(name_len: usize) -> usize {
    (8 - (24 + name_len) % 8) % 8
}

/// A `struct fuse_dirent`'s size for a name of `name_len` bytes.
pub fn dirent_len(name_len: usize) -> usize {
    24 + name_len + dirent_padding(name_len)
}

/// The NUL-terminated name at the start of `bytes`, and what follows it; None without a NUL.
pub fn c_name(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_fields_read_and_write_little_endian() {
        let mut req = Vec::new();
        for v in [48u32, op::LOOKUP] {
            req.extend_from_slice(&v.to_le_bytes());
        }
        req.extend_from_slice(&7u64.to_le_bytes());
        req.extend_from_slice(&1u64.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]);
        let h = InHeader::parse(&req).unwrap();
        assert_eq!((h.len, h.opcode, h.unique, h.nodeid), (48, 1, 7, 1));
        assert!(InHeader::parse(&req[..39]).is_none());
        assert_eq!(out_header(16, -2, 9)[4..8], (-2i32).to_le_bytes());
        assert_eq!(c_name(b"abc\0rest"), Some((&b"abc"[..], &b"rest"[..])));
        assert_eq!(c_name(b"abc"), None);
        assert_eq!(dirent_len(1), 32);
        assert_eq!(dirent_len(8), 32);
        assert_eq!(dirent_len(9), 40);
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let st: libc::stat64 = unsafe { std::mem::zeroed() };
        assert_eq!(Out::default().entry(2, &st, 1).0.len(), ENTRY_OUT_LEN);
        assert_eq!(Out::default().attr_out(&st, 1).0.len(), 16 + ATTR_LEN);
        assert_eq!(
            Out::default().dirent(1, 2, 4, b"name").0.len(),
            dirent_len(4)
        );
    }
}
