//! The 9P2000.L wire format as far as the server speaks it (the Linux client's
//! `include/net/9p/9p.h` and the 9P2000.L protocol description): message numbers, the
//! header, strings, QIDs and the attribute bits, read and written field by field in
//! little-endian order.

use crate::devices::virtio::wire::{Fields, Out};

/// The version string we speak.
pub const VERSION: &[u8] = b"9P2000.L";
/// `size[4] type[1] tag[2]`: every message's header.
pub const HEADER_LEN: usize = 7;
/// The most names one Twalk may carry (`MAXWELEM`).
pub const MAX_WALK: usize = 16;
/// `V9FS_MAGIC`, Rstatfs's file system type.
pub const V9FS_MAGIC: u32 = 0x0102_1997;

/// Message numbers (`enum p9_msg_t`): each T-message's reply is one more.
#[allow(missing_docs)]
pub mod msg {
    pub const RLERROR: u8 = 7;
    pub const TSTATFS: u8 = 8;
    pub const TLOPEN: u8 = 12;
    pub const TLCREATE: u8 = 14;
    pub const TSYMLINK: u8 = 16;
    pub const TMKNOD: u8 = 18;
    pub const TRENAME: u8 = 20;
    pub const TREADLINK: u8 = 22;
    pub const TGETATTR: u8 = 24;
    pub const TSETATTR: u8 = 26;
    pub const TXATTRWALK: u8 = 30;
    pub const TXATTRCREATE: u8 = 32;
    pub const TREADDIR: u8 = 40;
    pub const TFSYNC: u8 = 50;
    pub const TLOCK: u8 = 52;
    pub const TGETLOCK: u8 = 54;
    pub const TLINK: u8 = 70;
    pub const TMKDIR: u8 = 72;
    pub const TRENAMEAT: u8 = 74;
    pub const TUNLINKAT: u8 = 76;
    pub const TVERSION: u8 = 100;
    pub const TAUTH: u8 = 102;
    pub const TATTACH: u8 = 104;
    pub const TFLUSH: u8 = 108;
    pub const TWALK: u8 = 110;
    pub const TREAD: u8 = 116;
    pub const TWRITE: u8 = 118;
    pub const TCLUNK: u8 = 120;
    pub const TREMOVE: u8 = 122;
}

/// Tsetattr's `valid` bits (`P9_ATTR_*`).
#[allow(missing_docs)]
pub mod attr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const ATIME_SET: u32 = 1 << 7;
    pub const MTIME_SET: u32 = 1 << 8;
}

/// Rgetattr's `valid`: `P9_STATS_BASIC`, the fields of `struct stat` (no birth time,
/// generation or data version).
pub const STATS_BASIC: u64 = 0x7ff;

/// Tlock's lock types and Rlock's statuses.
#[allow(missing_docs)]
pub mod lock {
    pub const RDLCK: u8 = 0;
    pub const WRLCK: u8 = 1;
    pub const UNLCK: u8 = 2;
    pub const SUCCESS: u8 = 0;
    pub const BLOCKED: u8 = 1;
}

/// Tunlinkat's flag for a directory (Linux's `AT_REMOVEDIR`).
pub const AT_REMOVEDIR: u32 = 0x200;

/// A message's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The whole message's size, header included.
    pub size: u32,
    /// Its number.
    pub kind: u8,
    /// The request's tag, echoed in the reply.
    pub tag: u16,
}

impl Header {
    /// Parses the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let mut f = Fields::new(bytes);
        Some(Header {
            size: f.u32()?,
            kind: f.u8()?,
            tag: f.u16()?,
        })
    }

    /// A reply's header: `size` bytes in all, of message `kind`, for the request `tag`.
    pub fn encode(size: usize, kind: u8, tag: u16) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&(size as u32).to_le_bytes());
        h[4] = kind;
        h[5..].copy_from_slice(&tag.to_le_bytes());
        h
    }
}

/// A 9P string (`len[2]` then the bytes), or None past the end.
pub fn string<'a>(f: &mut Fields<'a>) -> Option<&'a [u8]> {
    let n = f.u16()?;
    f.bytes(n as usize)
}

/// Appends a 9P string.
pub fn put_string(out: &mut Out, s: &[u8]) {
    // A name is at most 255 bytes and a link target 4,095: never past u16.
    let s = &s[..s.len().min(u16::MAX as usize)];
    out.u16(s.len() as u16).bytes(s);
}

/// A QID's type byte for a host file of mode `mode` (`P9_QTDIR`, `P9_QTSYMLINK`, file).
pub fn qid_type(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 0x80,
        libc::S_IFLNK => 0x02,
        _ => 0,
    }
}

/// A QID's path for host inode `ino` on device `dev`, where `root_dev` is the share's:
/// unique per host file as the guest's inode cache needs, even across the mount points a
/// share of the host's `/` spans (their inode numbers are told apart by a hash of the
/// device in the top 16 bits).
pub fn qid_path(dev: u64, ino: u64, root_dev: u64) -> u64 {
    if dev == root_dev {
        return ino;
    }
    let mut h = dev.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    ino ^ (((h & 0xffff) | 1) << 48)
}

/// Appends a QID (`type[1] version[4] path[8]`); the version is 0, as the guest's cache
/// is told of changes by attributes, not versions.
pub fn put_qid(out: &mut Out, kind: u8, path: u64) {
    out.u8(kind).u32(0).u64(path);
}

/// Appends Rgetattr's body for `st` (its QID path `path`).
pub fn put_getattr(out: &mut Out, st: &libc::stat64, path: u64) {
    out.u64(STATS_BASIC);
    put_qid(out, qid_type(st.st_mode), path);
    out.u32(st.st_mode)
        .u32(st.st_uid)
        .u32(st.st_gid)
        .u64(st.st_nlink)
        .u64(st.st_rdev)
        .u64(st.st_size as u64)
        .u64(st.st_blksize as u64)
        .u64(st.st_blocks as u64)
        .u64(st.st_atime as u64)
        .u64(st.st_atime_nsec as u64)
        .u64(st.st_mtime as u64)
        .u64(st.st_mtime_nsec as u64)
        .u64(st.st_ctime as u64)
        .u64(st.st_ctime_nsec as u64)
        .zeros(32); // btime (2), gen, data_version
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_strings_and_qids() {
        let h = Header::encode(11, msg::TREAD + 1, 0x1234);
        assert_eq!(
            Header::parse(&h),
            Some(Header {
                size: 11,
                kind: 117,
                tag: 0x1234
            })
        );
        assert_eq!(Header::parse(&h[..6]), None);
        let mut out = Out::default();
        put_string(&mut out, b"abc");
        assert_eq!(out.0, [3, 0, b'a', b'b', b'c']);
        let mut f = Fields::new(&out.0);
        assert_eq!(string(&mut f), Some(&b"abc"[..]));
        assert_eq!(
            string(&mut Fields::new(&[9, 0, b'a'])),
            None,
            "past the end"
        );
        assert_eq!(qid_type(libc::S_IFDIR | 0o755), 0x80);
        assert_eq!(qid_type(libc::S_IFLNK), 0x02);
        assert_eq!(qid_type(libc::S_IFREG), 0);
        assert_eq!(qid_path(5, 42, 5), 42);
        assert_ne!(
            qid_path(6, 42, 5),
            42,
            "another device's inode 42 is another file"
        );
        assert_ne!(qid_path(6, 42, 5), qid_path(7, 42, 5));
        let mut out = Out::default();
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let st: libc::stat64 = unsafe { std::mem::zeroed() };
        put_getattr(&mut out, &st, 1);
        assert_eq!(
            out.0.len(),
            8 + 13 + 12 + 8 * 15,
            "Rgetattr's body is 153 bytes"
        );
    }
}
