//! A host directory served to the guest: the inodes it has looked up and the files it has
//! open, and every operation on them, confined to the directory.
//!
//! How the guest is kept inside the share:
//! - each inode the guest knows is held as an `O_PATH` descriptor, reached from the share's
//!   root one name at a time (`openat(parent, name, O_PATH | O_NOFOLLOW)`, the name a single
//!   component: no `/`, never empty); symbolic links are never followed on the host (the
//!   guest resolves them itself, in its own namespace), so neither an absolute nor a
//!   relative link leads anywhere the guest could not reach by names;
//! - `..` is answered only with an inode the guest already holds (reached from the root by
//!   names), and the root's `..` is the root;
//! - files are opened again through `/proc/self/fd/N` of their `O_PATH` descriptor, only
//!   regular files and directories, so a name swapped between lookup and open cannot redirect
//!   the open;
//! - every other operation is an `*at` call relative to a descriptor held here, or one on a
//!   descriptor (`ftruncate`, `fchmodat` through `/proc/self/fd`), never a path from the root;
//! - read-only is the host's: no descriptor is opened for writing and every operation that
//!   would change the tree answers `EROFS`;
//! - set-user-ID and set-group-ID bits are never set on the host, and device nodes are never
//!   made; the guest acts with the VMM's own user and never more;
//! - the host's kernel file systems (procfs, sysfs, debugfs, tracefs, cgroup, ...) are
//!   mount points and nothing more: a guest sharing the host's `/` can mount its own over
//!   them, but never looks inside the host's or opens them (the VMM's own `/proc/self`
//!   would otherwise be one lookup away);
//! - inodes and open files per device are capped ([`MAX_INODES`], [`MAX_HANDLES`]): past
//!   them the guest gets `ENFILE`/`EMFILE`, the host process's descriptors are not exhausted.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::config::ShareConfig;
use crate::refusal::{HostError, Refusal};

/// The most inodes one device holds at once.
pub const MAX_INODES: usize = 65_536;
/// The most files and directories one device has open at once.
pub const MAX_HANDLES: usize = 16_384;
/// The root's node id (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;

/// An operation's failure: a positive errno, which the reply carries negated.
pub type Errno = i32;
/// An operation's result.
pub type Res<T> = Result<T, Errno>;

/// The calling thread's errno (EIO if it has none).
pub fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `ret` as a result: -1 is the thread's errno.
pub fn check(ret: libc::c_int) -> Res<libc::c_int> {
    if ret < 0 {
        Err(last_errno())
    } else {
        Ok(ret)
    }
}

/// The host directory of share number `index` (errors name `shares[index]`), opened to
/// serve; the process's open-file limit raised for the descriptors its inodes will be.
pub fn open_share(index: usize, config: &ShareConfig) -> Result<Passthrough, HostError> {
    let arg = format!("shares[{index}]");
    let path = &config.path;
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(HostError::Refused(Refusal::invalid(
                arg,
                format!("{path:?}"),
                "expected a directory to share",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HostError::Refused(Refusal::FileNotFound {
                arg: arg.into(),
                path: path.clone(),
            }))
        }
        Err(e) => return Err(HostError::io(format!("{arg}: cannot open {path:?}"))(e)),
    }
    let fs = Passthrough::new(path, config.read_only)
        .map_err(HostError::io(format!("{arg}: cannot open {path:?}")))?;
    raise_open_file_limit();
    Ok(fs)
}

/// Raises this process's soft limit on open files to its hard limit: each inode the guest
/// holds is a descriptor, and the default soft limit (1,024) is smaller than a tree.
fn raise_open_file_limit() {
    // SAFETY: a zeroed rlimit is valid for getrlimit to fill.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid rlimit; setrlimit only raises the soft limit to the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `v` as a file offset, or EINVAL past `i64::MAX`.
pub fn to_off(v: u64) -> Res<libc::off64_t> {
    libc::off64_t::try_from(v).map_err(|_| libc::EINVAL)
}

/// `preadv` (guest buffers `iov` filled from `fd` at `offset`) or, `write`, `pwritev`.
pub fn vectored(
    fd: libc::c_int,
    iov: &[libc::iovec],
    offset: libc::off64_t,
    write: bool,
) -> Res<usize> {
    if iov.is_empty() {
        return Ok(0);
    }
    let count = libc::c_int::try_from(iov.len()).map_err(|_| libc::EINVAL)?;
    // SAFETY: every iovec covers guest memory that GuestBufs::iovecs checked is mapped (and,
    // for a read, device-writable in this chain); the kernel touches at most their lengths.
    let n = unsafe {
        if write {
            libc::pwritev64(fd, iov.as_ptr(), count, offset)
        } else {
            libc::preadv64(fd, iov.as_ptr(), count, offset)
        }
    };
    if n < 0 {
        Err(last_errno())
    } else {
        Ok(n as usize)
    }
}

struct Inode {
    fd: OwnedFd,
    /// `(st_dev, st_ino)`: one node id per host inode, as the guest's kernel expects.
    key: (u64, u64),
    /// Lookups not yet forgotten.
    refs: u64,
    /// `st_mode & S_IFMT`.
    kind: u32,
    /// On one of the host kernel's own file systems ([`is_kernel_fs`]): never looked into
    /// or opened.
    kernel_fs: bool,
}

/// Whether the file system of `fd` is one of the host kernel's views of itself (statfs
/// magic numbers from `linux/magic.h`).
fn is_kernel_fs(fd: libc::c_int) -> bool {
    const MAGICS: &[i64] = &[
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0x0027_e0eb, // cgroup
        0x6367_7270, // cgroup2
        0x7363_6673, // securityfs
        0xcafe_4a11, // bpf
        0x1cd1,      // devpts
        0xde5e_81e4, // efivarfs
        0x6265_6570, // configfs
        0x6165_676c, // pstore
        0x6573_5543, // fusectl
        0xf97c_ff8c, // selinuxfs
        0x4249_4e4d, // binfmt_misc
        0x6e73_6673, // nsfs
        0x1980_0202, // mqueue
    ];
    // SAFETY: a zeroed statfs is valid for fstatfs to fill.
    let mut st: libc::statfs64 = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid statfs64 and `fd` a descriptor we hold.
    if unsafe { libc::fstatfs64(fd, &mut st) } != 0 {
        return true; // cannot tell: keep out
    }
    MAGICS.contains(&(st.f_type as i64))
}

/// An open file or directory.
pub struct Handle {
    /// The descriptor.
    pub file: File,
    /// Whether it is a directory (READDIR) rather than a file (READ/WRITE).
    pub dir: bool,
}

/// One share: its root, what the guest holds, and whether it may write.
pub struct Passthrough {
    inodes: HashMap<u64, Inode>,
    by_key: HashMap<(u64, u64), u64>,
    handles: HashMap<u64, Handle>,
    next_node: u64,
    next_handle: u64,
    read_only: bool,
}

fn stat_fd(fd: libc::c_int) -> Res<libc::stat64> {
    // SAFETY: a zeroed stat64 is valid for fstatat64 to fill.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: the empty path with AT_EMPTY_PATH makes fstatat64 describe `fd` itself; `st`
    // is a valid stat64.
    check(unsafe {
        libc::fstatat64(
            fd,
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// `/proc/self/fd/N` for `fd`: the descriptor's own inode, whatever its name is now.
fn proc_path(fd: libc::c_int) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default()
}

/// A name from the guest as one path component: not empty, no `/`, at most 255 bytes.
/// `.` and `..` are refused here (only LOOKUP answers them, itself).
pub fn component(name: &[u8]) -> Res<CString> {
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(libc::EINVAL);
    }
    if name.len() > 255 {
        return Err(libc::ENAMETOOLONG);
    }
    CString::new(name).map_err(|_| libc::EINVAL)
}

/// What a guest's mode may set on the host: permissions and the sticky bit, never
/// set-user-ID or set-group-ID.
fn safe_mode(mode: u32) -> libc::mode_t {
    mode & 0o1777
}

/// `O_*` flags from the guest that we pass on when opening; the rest (`O_CREAT`, `O_EXCL`,
/// `O_PATH`, `O_TMPFILE`, `O_NOCTTY`, `O_DIRECTORY`, ...) are ours to choose.
fn open_flags(flags: u32) -> libc::c_int {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_NONBLOCK
        | libc::O_DSYNC
        | libc::O_SYNC
        | libc::O_NOATIME
        | libc::O_DIRECT;
    (flags as libc::c_int) & keep
}

fn writes(flags: libc::c_int) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Passthrough {
    /// The directory `root`, opened; `read_only` refuses every change.
    pub fn new(root: &Path, read_only: bool) -> std::io::Result<Passthrough> {
        let path = CString::new(root.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `path` is NUL-terminated; the flags open a path descriptor of a directory.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = stat_fd(fd.as_raw_fd()).map_err(std::io::Error::from_raw_os_error)?;
        let mut fs = Passthrough {
            inodes: HashMap::new(),
            by_key: HashMap::new(),
            handles: HashMap::new(),
            next_node: ROOT + 1,
            next_handle: 1,
            read_only,
        };
        let kernel_fs = is_kernel_fs(fd.as_raw_fd());
        fs.insert(ROOT, fd, &st, kernel_fs);
        Ok(fs)
    }

    /// Whether the share refuses changes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Inodes held (the root included).
    pub fn inodes(&self) -> usize {
        self.inodes.len()
    }

    /// Files and directories open.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Forgets everything but the root (the driver reset or unmounted).
    pub fn reset(&mut self) {
        self.handles.clear();
        self.inodes.retain(|&n, _| n == ROOT);
        self.by_key.retain(|_, n| *n == ROOT);
        if let Some(root) = self.inodes.get_mut(&ROOT) {
            root.refs = 1;
        }
    }

    fn inode(&self, node: u64) -> Res<&Inode> {
        self.inodes.get(&node).ok_or(libc::ENOENT)
    }

    fn fd(&self, node: u64) -> Res<libc::c_int> {
        Ok(self.inode(node)?.fd.as_raw_fd())
    }

    fn writable(&self) -> Res<()> {
        if self.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    /// Attributes of `node`.
    pub fn getattr(&self, node: u64) -> Res<libc::stat64> {
        stat_fd(self.fd(node)?)
    }

    /// Holds `fd` (of the inode `st` describes) as node `node`, looked up once.
    fn insert(&mut self, node: u64, fd: OwnedFd, st: &libc::stat64, kernel_fs: bool) {
        let key = (st.st_dev, st.st_ino);
        self.inodes.insert(
            node,
            Inode {
                fd,
                key,
                refs: 1,
                kind: st.st_mode & libc::S_IFMT,
                kernel_fs,
            },
        );
        self.by_key.insert(key, node);
    }

    /// Takes `fd` (an `O_PATH` descriptor of something inside the share) as an inode the guest
    /// looked up once more: its node id and attributes.
    fn adopt(&mut self, fd: OwnedFd, parent_dev: u64) -> Res<(u64, libc::stat64)> {
        let st = stat_fd(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        if let Some(&node) = self.by_key.get(&key) {
            if let Some(inode) = self.inodes.get_mut(&node) {
                inode.refs += 1;
                return Ok((node, st));
            }
        }
        if self.inodes.len() >= MAX_INODES {
            return Err(libc::ENFILE);
        }
        let node = self.next_node;
        self.next_node += 1;
        // Only a mount point can be on another file system than its parent.
        let kernel_fs = st.st_dev != parent_dev && is_kernel_fs(fd.as_raw_fd());
        self.insert(node, fd, &st, kernel_fs);
        Ok((node, st))
    }

    /// The inode `name` in directory `parent` (one more lookup of it).
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Res<(u64, libc::stat64)> {
        let dir = self.inode(parent)?;
        if dir.kind != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        if dir.kernel_fs {
            return Err(libc::EACCES);
        }
        let parent_dev = dir.key.0;
        match name {
            b"." => return self.again(parent),
            b".." if parent == ROOT => return self.again(ROOT),
            b".." => {
                // Only an inode the guest already holds: its parent was reached from the
                // root by names, so it is inside the share.
                let fd = self.open_path(dir.fd.as_raw_fd(), c"..")?;
                let st = stat_fd(fd.as_raw_fd())?;
                let node = *self
                    .by_key
                    .get(&(st.st_dev, st.st_ino))
                    .ok_or(libc::ENOENT)?;
                return self.again(node);
            }
            _ => {}
        }
        let name = component(name)?;
        let fd = self.open_path(dir.fd.as_raw_fd(), &name)?;
        self.adopt(fd, parent_dev)
    }

    /// One more lookup of `node`, an inode the guest holds: its attributes.
    pub fn again(&mut self, node: u64) -> Res<(u64, libc::stat64)> {
        let st = self.getattr(node)?;
        if let Some(inode) = self.inodes.get_mut(&node) {
            inode.refs += 1;
        }
        Ok((node, st))
    }

    fn open_path(&self, dir: libc::c_int, name: &std::ffi::CStr) -> Res<OwnedFd> {
        // SAFETY: `name` is NUL-terminated; O_PATH | O_NOFOLLOW opens the entry itself,
        // following no link.
        let fd = check(unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The guest forgets `count` lookups of `node`; the inode goes when none is left.
    pub fn forget(&mut self, node: u64, count: u64) {
        if node == ROOT {
            return;
        }
        let Some(inode) = self.inodes.get_mut(&node) else {
            return;
        };
        inode.refs = inode.refs.saturating_sub(count);
        if inode.refs == 0 {
            if let Some(gone) = self.inodes.remove(&node) {
                self.by_key.remove(&gone.key);
            }
        }
    }

    fn add_handle(&mut self, file: File, dir: bool) -> Res<u64> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(libc::EMFILE);
        }
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, Handle { file, dir });
        Ok(fh)
    }

    /// Opens `node` (a regular file, or a directory when `dir`) with the guest's `flags`.
    pub fn open(&mut self, node: u64, flags: u32, dir: bool) -> Res<u64> {
        let inode = self.inode(node)?;
        if inode.kernel_fs {
            return Err(libc::EACCES);
        }
        let flags = if dir {
            libc::O_RDONLY | libc::O_DIRECTORY
        } else {
            open_flags(flags)
        };
        match (inode.kind, dir) {
            (libc::S_IFDIR, true) | (libc::S_IFREG, false) => {}
            (libc::S_IFDIR, false) => return Err(libc::EISDIR),
            (_, true) => return Err(libc::ENOTDIR),
            (libc::S_IFLNK, false) => return Err(libc::ELOOP),
            _ => return Err(libc::EACCES), // devices, FIFOs and sockets stay the host's
        }
        if writes(flags) {
            self.writable()?;
        }
        let path = proc_path(inode.fd.as_raw_fd());
        // SAFETY: `path` is NUL-terminated; the flags come from `open_flags`, O_CLOEXEC added.
        let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        self.add_handle(file, dir)
    }

    /// Flushes the open file or directory `fh` to the host's disk (its data only, with
    /// `datasync`).
    pub fn fsync(&self, fh: u64, datasync: bool) -> Res<()> {
        let fd = self.handle(fh)?.file.as_raw_fd();
        // SAFETY: fsync/fdatasync on a descriptor we own.
        let ret = unsafe {
            if datasync {
                libc::fdatasync(fd)
            } else {
                libc::fsync(fd)
            }
        };
        check(ret).map(|_| ())
    }

    /// The open file or directory `fh`.
    pub fn handle(&self, fh: u64) -> Res<&Handle> {
        self.handles.get(&fh).ok_or(libc::EBADF)
    }

    /// Closes `fh`.
    pub fn release(&mut self, fh: u64) -> Res<()> {
        self.handles.remove(&fh).map(|_| ()).ok_or(libc::EBADF)
    }

    /// Creates and opens the regular file `name` in `parent`: its entry and handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
    ) -> Res<(u64, libc::stat64, u64)> {
        self.writable()?;
        let name = component(name)?;
        if self.inode(parent)?.kernel_fs {
            return Err(libc::EACCES);
        }
        let dir = self.fd(parent)?;
        if self.handles.len() >= MAX_HANDLES {
            return Err(libc::EMFILE);
        }
        let flags = open_flags(flags) | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `name` is NUL-terminated; O_NOFOLLOW refuses a link in its place.
        let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags, safe_mode(mode)) })?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // The inode is the file just opened, not whatever the name means by now.
        let path = proc_path(file.as_raw_fd());
        // SAFETY: `path` is NUL-terminated.
        let pfd = check(unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) })?;
        let parent_dev = self.inode(parent)?.key.0;
        // SAFETY: `pfd` was just opened and is owned by nothing else.
        let (node, st) = self.adopt(unsafe { OwnedFd::from_raw_fd(pfd) }, parent_dev)?;
        let fh = self.add_handle(file, false)?;
        Ok((node, st, fh))
    }

    /// Makes `name` in `parent` with `make` (mkdirat, mknodat, symlinkat) and looks it up.
    fn make(
        &mut self,
        parent: u64,
        name: &[u8],
        make: impl FnOnce(libc::c_int, &std::ffi::CStr) -> libc::c_int,
    ) -> Res<(u64, libc::stat64)> {
        self.writable()?;
        let name = component(name)?;
        let parent_inode = self.inode(parent)?;
        if parent_inode.kernel_fs {
            return Err(libc::EACCES);
        }
        let (dir, parent_dev) = (parent_inode.fd.as_raw_fd(), parent_inode.key.0);
        check(make(dir, &name))?;
        let fd = self.open_path(dir, &name)?;
        self.adopt(fd, parent_dev)
    }

    /// Makes the directory `name` in `parent`.
    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> Res<(u64, libc::stat64)> {
        // SAFETY: `n` is NUL-terminated and `d` a directory descriptor held here.
        self.make(parent, name, |d, n| unsafe {
            libc::mkdirat(d, n.as_ptr(), safe_mode(mode))
        })
    }

    /// Makes a regular file, FIFO or socket `name` in `parent`; never a device node.
    pub fn mknod(&mut self, parent: u64, name: &[u8], mode: u32) -> Res<(u64, libc::stat64)> {
        let kind = mode & libc::S_IFMT;
        if ![libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK].contains(&kind) {
            return Err(libc::EPERM);
        }
        // SAFETY: as in `mkdir`; no device number is passed.
        self.make(parent, name, |d, n| unsafe {
            libc::mknodat(d, n.as_ptr(), kind | safe_mode(mode), 0)
        })
    }

    /// Makes the symbolic link `name` in `parent` pointing at `target` (text; never followed
    /// on the host).
    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8]) -> Res<(u64, libc::stat64)> {
        let target = CString::new(target).map_err(|_| libc::EINVAL)?;
        if target.as_bytes().is_empty() || target.as_bytes().len() > 4095 {
            return Err(libc::EINVAL);
        }
        // SAFETY: both strings are NUL-terminated; `d` is a directory descriptor held here.
        self.make(parent, name, |d, n| unsafe {
            libc::symlinkat(target.as_ptr(), d, n.as_ptr())
        })
    }

    /// A new name `name` in `parent` for the inode `node` (a hard link inside the share).
    pub fn link(&mut self, node: u64, parent: u64, name: &[u8]) -> Res<(u64, libc::stat64)> {
        let inode = self.inode(node)?;
        if inode.kind == libc::S_IFDIR {
            return Err(libc::EPERM);
        }
        let from = proc_path(inode.fd.as_raw_fd());
        // SAFETY: both paths are NUL-terminated; AT_SYMLINK_FOLLOW follows only the
        // /proc/self/fd magic link to the inode held here.
        self.make(parent, name, |d, n| unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                d,
                n.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
    }

    /// Removes `name` from `parent` (`rmdir` for a directory).
    pub fn unlink(&mut self, parent: u64, name: &[u8], rmdir: bool) -> Res<()> {
        self.writable()?;
        let name = component(name)?;
        let dir = self.fd(parent)?;
        let flags = if rmdir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: `name` is NUL-terminated; `dir` is a directory descriptor held here.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) }).map(|_| ())
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent` (both inside the share).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Res<()> {
        self.writable()?;
        let allowed = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !allowed != 0 {
            return Err(libc::EINVAL);
        }
        let (name, new_name) = (component(name)?, component(new_name)?);
        let (from, to) = (self.fd(parent)?, self.fd(new_parent)?);
        // SAFETY: both names are NUL-terminated; both descriptors are directories held here.
        check(unsafe { libc::renameat2(from, name.as_ptr(), to, new_name.as_ptr(), flags) })
            .map(|_| ())
    }

    /// The target of the symbolic link `node`.
    pub fn readlink(&self, node: u64) -> Res<Vec<u8>> {
        let inode = self.inode(node)?;
        if inode.kind != libc::S_IFLNK {
            return Err(libc::EINVAL);
        }
        let mut buf = vec![0u8; 4096];
        // SAFETY: the empty path with a symlink's O_PATH descriptor reads that link; `buf`
        // has room for `buf.len()` bytes.
        let n = unsafe {
            libc::readlinkat(
                inode.fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(last_errno());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// `statfs` of the file system `node` is on.
    pub fn statfs(&self, node: u64) -> Res<libc::statvfs64> {
        // SAFETY: a zeroed statvfs64 is valid for fstatvfs64 to fill.
        let mut st: libc::statvfs64 = unsafe { std::mem::zeroed() };
        let fd = self.fd(node)?;
        // SAFETY: `st` is a valid statvfs64; fstatvfs works on O_PATH descriptors.
        check(unsafe { libc::fstatvfs64(fd, &mut st) })?;
        Ok(st)
    }

    /// Writing to `fh` is allowed (the share is writable; a read-only share has no handle
    /// open for writing anyway).
    pub fn check_write(&self) -> Res<()> {
        self.writable()
    }
}

#[path = "setattr.rs"]
pub mod setattr;
pub use setattr::SetAttr;

#[cfg(test)]
#[path = "passthrough_tests.rs"]
mod tests;
