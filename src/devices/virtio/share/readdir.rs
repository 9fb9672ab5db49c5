//! A directory's entries from `getdents64`, handed one by one to the protocol's reply
//! (FUSE's READDIR, 9P's Treaddir).
//!
//! The offset the guest passes back is the host's `d_off` of the last entry it got, so a
//! reply that stops early (the guest's buffer is full) loses nothing: the next call seeks
//! to where it stopped.

use std::os::fd::AsRawFd;

use super::passthrough::{last_errno, Passthrough, Res};

/// How many bytes of host entries are read per `getdents64` call.
const CHUNK: usize = 32 << 10;

/// One host directory entry.
pub struct Entry<'a> {
    /// Its inode number on the host.
    pub ino: u64,
    /// The offset of the entry after it (what the guest passes back to go on from here).
    pub off: u64,
    /// Its `DT_*` type.
    pub kind: u8,
    /// Its name.
    pub name: &'a [u8],
}

/// What a reply did with an entry [`scan`] gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Took it; go on.
    Took,
    /// Left it out (gone since, or past a cap); go on.
    Skipped,
    /// No room for it: stop here, the guest asks again from its offset.
    Full,
}

/// Parses the `linux_dirent64` records in `buf`; stops at a malformed one.
fn entries(buf: &[u8]) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 19 <= buf.len() {
        let field = |o: usize, n: usize| &buf[at + o..at + o + n];
        let ino = u64::from_ne_bytes(field(0, 8).try_into().unwrap_or_default());
        let off = u64::from_ne_bytes(field(8, 8).try_into().unwrap_or_default());
        let reclen = u16::from_ne_bytes(field(16, 2).try_into().unwrap_or_default()) as usize;
        if reclen < 20 || at + reclen > buf.len() {
            break;
        }
        let raw = &buf[at + 19..at + reclen];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        out.push(Entry {
            ino,
            off,
            kind: buf[at + 18],
            name,
        });
        at += reclen;
    }
    out
}

/// Hands the entries of the open directory `fh` from `offset` (a `d_off` it gave) to `take`,
/// until it says [`Step::Full`] or the directory ends; `size` (the reply's room) bounds each
/// `getdents64` read. An error after an entry was taken ends the reply instead.
pub fn scan(
    fs: &mut Passthrough,
    fh: u64,
    offset: u64,
    size: usize,
    mut take: impl FnMut(&mut Passthrough, &Entry) -> Step,
) -> Res<()> {
    let handle = fs.handle(fh)?;
    if !handle.dir {
        return Err(libc::ENOTDIR);
    }
    let fd = handle.file.as_raw_fd();
    let offset = libc::off64_t::try_from(offset).map_err(|_| libc::EINVAL)?;
    // SAFETY: lseek on a directory descriptor we own, to an offset getdents gave.
    if unsafe { libc::lseek64(fd, offset, libc::SEEK_SET) } < 0 {
        return Err(last_errno());
    }
    let mut buf = vec![0u8; CHUNK.min(size.max(512))];
    let mut took = false;
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd,
                buf.as_mut_ptr(),
                buf.len() as libc::c_uint,
            )
        };
        if n < 0 {
            return if took { Ok(()) } else { Err(last_errno()) };
        }
        if n == 0 {
            return Ok(());
        }
        for e in entries(&buf[..n as usize]) {
            match take(fs, &e) {
                Step::Took => took = true,
                Step::Skipped => {}
                Step::Full => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_records_parse_and_stop_at_a_malformed_one() {
        let mut buf = Vec::new();
        for (ino, name) in [(5u64, &b"a"[..]), (6, b"longer-name")] {
            let reclen = (19 + name.len() + 1).div_ceil(8) * 8;
            let start = buf.len();
            buf.extend_from_slice(&ino.to_ne_bytes());
            buf.extend_from_slice(&(ino * 10).to_ne_bytes());
            buf.extend_from_slice(&(reclen as u16).to_ne_bytes());
            buf.push(8);
            buf.extend_from_slice(name);
            buf.resize(start + reclen, 0);
        }
        let e = entries(&buf);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[1].ino, e[1].off, e[1].kind, e[1].name),
            (6, 60, 8, &b"longer-name"[..])
        );
        buf.extend_from_slice(&[0u8; 18]);
        assert_eq!(entries(&buf).len(), 2, "a truncated record is not read");
        let mut bad = buf.clone();
        bad[16] = 200; // reclen past the end
        assert_eq!(entries(&bad).len(), 0);
    }
}
