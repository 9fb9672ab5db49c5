//! FUSE's READDIR and READDIRPLUS: a directory's entries ([`scan`]) as `fuse_dirent`s (and,
//! for READDIRPLUS, each with its `fuse_entry_out`, which counts as a lookup).

use super::fuse::{self, Out, Reply};
use crate::devices::virtio::share::passthrough::{Passthrough, Res};
use crate::devices::virtio::share::readdir::{scan, Step};

/// READDIR(PLUS): entries of the open directory `fh` (of inode `node`) from `offset`, at
/// most `size` bytes.
pub fn read(
    fs: &mut Passthrough,
    node: u64,
    fh: u64,
    offset: u64,
    size: usize,
    plus: bool,
) -> Res<Vec<u8>> {
    let mut out = Out::default();
    scan(fs, fh, offset, size, |fs, e| {
        let need = fuse::dirent_len(e.name.len()) + if plus { fuse::ENTRY_OUT_LEN } else { 0 };
        if out.0.len() + need > size {
            return Step::Full;
        }
        if plus {
            if e.name == b"." || e.name == b".." {
                // No entry for these: node id 0 tells the guest to look them up itself.
                // SAFETY: stat64 is plain data; all zeroes is a valid value.
                let zero: libc::stat64 = unsafe { std::mem::zeroed() };
                out.entry(0, &zero, 0);
            } else {
                match fs.lookup(node, e.name) {
                    Ok((n, st)) => {
                        out.entry(n, &st, 1);
                    }
                    // Gone since, or past the inode cap: leave it out of this reply.
                    Err(_) => return Step::Skipped,
                }
            }
        }
        out.dirent(e.ino, e.off, u32::from(e.kind), e.name);
        Step::Took
    })?;
    Ok(out.0)
}
