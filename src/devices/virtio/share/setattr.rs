//! SETATTR: mode, owner, size and times of an inode the guest holds, changed through its own
//! descriptor (`/proc/self/fd/N`), never by a path from the share's root; never a set-ID bit.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{check, proc_path, safe_mode, Passthrough, Res};

/// What [`SetAttr::valid`] says counts: FUSE's `FATTR_*` bits (its `FUSE_SETATTR` passes
/// them through; 9P's `Tsetattr` bits are mapped onto them).
#[allow(missing_docs)]
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// What to change of an inode (FUSE's `struct fuse_setattr_in`, the fields used).
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    /// FATTR_* bits saying which fields count.
    pub valid: u32,
    /// The open file to use (FATTR_FH).
    pub fh: u64,
    /// New size.
    pub size: u64,
    /// New access time, seconds.
    pub atime: u64,
    /// New modification time, seconds.
    pub mtime: u64,
    /// Nanoseconds of `atime`.
    pub atimensec: u32,
    /// Nanoseconds of `mtime`.
    pub mtimensec: u32,
    /// New mode.
    pub mode: u32,
    /// New owner.
    pub uid: u32,
    /// New group.
    pub gid: u32,
}

impl Passthrough {
    /// Changes what `valid` (FATTR_* bits) says of `node` (through `fh` when given);
    /// returns the attributes after.
    pub fn setattr(&mut self, node: u64, set: &SetAttr) -> Res<libc::stat64> {
        self.writable()?;
        let inode = self.inode(node)?;
        let path = proc_path(inode.fd.as_raw_fd());
        if set.valid & fattr::MODE != 0 {
            if inode.kind == libc::S_IFLNK {
                return Err(libc::EOPNOTSUPP);
            }
            // SAFETY: `path` is NUL-terminated; the mode never has set-ID bits.
            check(unsafe { libc::chmod(path.as_ptr(), safe_mode(set.mode)) })?;
        }
        if set.valid & (fattr::UID | fattr::GID) != 0 {
            let uid = if set.valid & fattr::UID != 0 {
                set.uid
            } else {
                u32::MAX
            };
            let gid = if set.valid & fattr::GID != 0 {
                set.gid
            } else {
                u32::MAX
            };
            // SAFETY: the empty path with AT_EMPTY_PATH changes the descriptor's own inode.
            check(unsafe {
                libc::fchownat(
                    inode.fd.as_raw_fd(),
                    c"".as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if set.valid & fattr::SIZE != 0 {
            if inode.kind != libc::S_IFREG {
                return Err(libc::EINVAL);
            }
            let size = libc::off64_t::try_from(set.size).map_err(|_| libc::EFBIG)?;
            let by_handle = (set.valid & fattr::FH != 0)
                .then(|| self.handles.get(&set.fh))
                .flatten()
                .filter(|h| !h.dir);
            let ret = match by_handle {
                // SAFETY: ftruncate on a descriptor we own.
                Some(h) => unsafe { libc::ftruncate64(h.file.as_raw_fd(), size) },
                None => {
                    // SAFETY: `path` is NUL-terminated.
                    let fd = check(unsafe {
                        libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC)
                    })?;
                    // SAFETY: `fd` was just opened and is owned by nothing else.
                    let f = unsafe { OwnedFd::from_raw_fd(fd) };
                    // SAFETY: ftruncate on a descriptor we own.
                    unsafe { libc::ftruncate64(f.as_raw_fd(), size) }
                }
            };
            check(ret)?;
        }
        if set.valid & (fattr::ATIME | fattr::MTIME) != 0 {
            let time = |set_it: bool, now: bool, secs: u64, nsecs: u32| libc::timespec {
                tv_sec: if set_it && !now {
                    secs as libc::time_t
                } else {
                    0
                },
                tv_nsec: match (set_it, now) {
                    (false, _) => libc::UTIME_OMIT,
                    (true, true) => libc::UTIME_NOW,
                    (true, false) => libc::c_long::from(nsecs.min(999_999_999) as i32),
                },
            };
            let times = [
                time(
                    set.valid & fattr::ATIME != 0,
                    set.valid & fattr::ATIME_NOW != 0,
                    set.atime,
                    set.atimensec,
                ),
                time(
                    set.valid & fattr::MTIME != 0,
                    set.valid & fattr::MTIME_NOW != 0,
                    set.mtime,
                    set.mtimensec,
                ),
            ];
            if inode.kind == libc::S_IFLNK {
                return Err(libc::EOPNOTSUPP);
            }
            // SAFETY: `path` is NUL-terminated and `times` holds two timespecs.
            check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) })?;
        }
        self.getattr(node)
    }
}
