//! One FUSE request in, one reply out: the request's header and body read from the chain's
//! driver-readable buffers, the operation done on the [`Passthrough`], the reply written to
//! the device-writable ones. READ and WRITE move file data straight between the host file
//! and guest memory (`preadv`/`pwritev` on the guest's buffers), without a copy here.
//!
//! Whatever the guest sends is checked before use: a header whose length disagrees with the
//! chain, a body too short for its opcode, a name without its NUL, a node id or file handle
//! that is not one of ours, an opcode we do not serve — each gets an error reply (`EINVAL`,
//! `ENOENT`, `EBADF`, `ENOSYS`), and a chain with no room for a reply is returned unused.

use std::os::fd::AsRawFd;

use vm_memory::GuestMemoryMmap;

use super::fuse::{self, op, Fields, InHeader, Out, Reply};
use crate::devices::virtio::bufs::GuestBufs;
use crate::devices::virtio::share::passthrough::{
    check, last_errno, to_off, vectored, Passthrough, Res, SetAttr, ROOT,
};
use crate::devices::virtio::share::{empty, need, ok, Answer, Done, Protocol};

/// The most bytes one READ or WRITE moves (the `max_write` and `max_pages` we offer).
pub const MAX_IO: usize = 1 << 20;
/// The most bytes of a request body copied in (names, symlink targets, the structs): any
/// request we serve fits; bigger ones are refused.
const MAX_BODY: usize = 8 << 10;
/// How long the guest may cache names and attributes, in seconds.
const VALID_SECS: u64 = 1;
/// `FUSE_GETATTR_FH` and friends are not needed: attributes come from the inode.
const INIT_FLAGS: u32 = fuse::init::ASYNC_READ
    | fuse::init::ATOMIC_O_TRUNC
    | fuse::init::BIG_WRITES
    | fuse::init::DO_READDIRPLUS
    | fuse::init::PARALLEL_DIROPS
    | fuse::init::MAX_PAGES
    | fuse::init::CACHE_SYMLINKS;

/// The server of one share: its file system and whether the driver said INIT.
pub struct Server {
    fs: Passthrough,
    initialized: bool,
}

fn name_of(bytes: &[u8]) -> Res<(&[u8], &[u8])> {
    need(fuse::c_name(bytes))
}

impl Server {
    /// A server for `fs`, waiting for INIT.
    pub fn new(fs: Passthrough) -> Server {
        Server {
            fs,
            initialized: false,
        }
    }

    fn dispatch(
        &mut self,
        mem: &GuestMemoryMmap,
        h: &InHeader,
        readable: &GuestBufs,
        writable: &GuestBufs,
        done: &mut Done,
    ) -> Res<Answer> {
        let len = h.len as usize;
        if len < fuse::IN_HEADER_LEN || len > readable.len() {
            return Err(libc::EINVAL);
        }
        if h.opcode == op::INIT {
            let body = Self::body_of(mem, readable, len)?;
            return self.init(&body);
        }
        if !self.initialized {
            return Err(libc::EIO);
        }
        match h.opcode {
            op::READ => return self.read(mem, h, readable, writable, done),
            op::WRITE => return self.write(mem, h, readable, done),
            _ => {}
        }
        let node = h.nodeid;
        let fs = &mut self.fs;
        match h.opcode {
            op::FORGET => {
                let body = Self::body_of(mem, readable, len)?;
                if let Some(n) = Fields::new(&body).u64() {
                    fs.forget(node, n);
                }
                return Ok(Answer::Nothing);
            }
            op::BATCH_FORGET => {
                let body = Self::body_of(mem, readable, len)?;
                let mut f = Fields::new(&body);
                let count = f.u32().unwrap_or(0);
                f.skip(4);
                for _ in 0..count {
                    let (Some(n), Some(c)) = (f.u64(), f.u64()) else {
                        break;
                    };
                    fs.forget(n, c);
                }
                return Ok(Answer::Nothing);
            }
            op::INTERRUPT => return Ok(Answer::Nothing), // every request is done at once
            _ => {}
        }
        let body = Self::body_of(mem, readable, len)?;
        let mut f = Fields::new(&body);
        let mut out = Out::default();
        match h.opcode {
            op::LOOKUP => {
                let (name, _) = name_of(&body)?;
                let (n, st) = fs.lookup(node, name)?;
                ok(out.entry(n, &st, VALID_SECS))
            }
            op::GETATTR => {
                let st = fs.getattr(node)?;
                ok(out.attr_out(&st, VALID_SECS))
            }
            op::SETATTR => {
                let valid = need(f.u32())?;
                f.skip(4);
                let fh = need(f.u64())?;
                let size = need(f.u64())?;
                let _lock_owner = need(f.u64())?;
                let (atime, mtime, _ctime) = (need(f.u64())?, need(f.u64())?, need(f.u64())?);
                let (atimensec, mtimensec, _) = (need(f.u32())?, need(f.u32())?, need(f.u32())?);
                let mode = need(f.u32())?;
                f.skip(4);
                let (uid, gid) = (need(f.u32())?, need(f.u32())?);
                let set = SetAttr {
                    valid,
                    fh,
                    size,
                    atime,
                    mtime,
                    atimensec,
                    mtimensec,
                    mode,
                    uid,
                    gid,
                };
                let st = fs.setattr(node, &set)?;
                ok(out.attr_out(&st, VALID_SECS))
            }
            op::READLINK => Ok(Answer::Body(fs.readlink(node)?)),
            op::SYMLINK => {
                let (name, rest) = name_of(&body)?;
                let (target, _) = name_of(rest)?;
                let (n, st) = fs.symlink(node, name, target)?;
                ok(out.entry(n, &st, VALID_SECS))
            }
            op::MKNOD => {
                let mode = need(f.u32())?;
                need(f.skip(12))?;
                let (name, _) = name_of(f.rest())?;
                let (n, st) = fs.mknod(node, name, mode)?;
                ok(out.entry(n, &st, VALID_SECS))
            }
            op::MKDIR => {
                let mode = need(f.u32())?;
                need(f.skip(4))?;
                let (name, _) = name_of(f.rest())?;
                let (n, st) = fs.mkdir(node, name, mode)?;
                ok(out.entry(n, &st, VALID_SECS))
            }
            op::UNLINK | op::RMDIR => {
                let (name, _) = name_of(&body)?;
                fs.unlink(node, name, h.opcode == op::RMDIR)?;
                empty()
            }
            op::RENAME | op::RENAME2 => {
                let new_dir = need(f.u64())?;
                let flags = if h.opcode == op::RENAME2 {
                    let flags = need(f.u32())?;
                    need(f.skip(4))?;
                    flags
                } else {
                    0
                };
                let (name, rest) = name_of(f.rest())?;
                let (new_name, _) = name_of(rest)?;
                fs.rename(node, name, new_dir, new_name, flags)?;
                empty()
            }
            op::LINK => {
                let old = need(f.u64())?;
                let (name, _) = name_of(f.rest())?;
                let (n, st) = fs.link(old, node, name)?;
                ok(out.entry(n, &st, VALID_SECS))
            }
            op::OPEN | op::OPENDIR => {
                let flags = need(f.u32())?;
                let fh = fs.open(node, flags, h.opcode == op::OPENDIR)?;
                ok(out.u64(fh).u32(0).u32(0))
            }
            op::CREATE => {
                let (flags, mode) = (need(f.u32())?, need(f.u32())?);
                need(f.skip(8))?;
                let (name, _) = name_of(f.rest())?;
                let (n, st, fh) = fs.create(node, name, mode, flags)?;
                out.entry(n, &st, VALID_SECS).u64(fh).u32(0).u32(0);
                ok(&mut out)
            }
            op::RELEASE | op::RELEASEDIR => {
                fs.release(need(f.u64())?)?;
                empty()
            }
            op::FLUSH => {
                fs.handle(need(f.u64())?)?;
                empty()
            }
            op::FSYNC | op::FSYNCDIR => {
                let fh = need(f.u64())?;
                fs.fsync(fh, need(f.u32())? & 1 != 0)?;
                empty()
            }
            op::STATFS => {
                let st = fs.statfs(if node == 0 { ROOT } else { node })?;
                out.u64(st.f_blocks)
                    .u64(st.f_bfree)
                    .u64(st.f_bavail)
                    .u64(st.f_files)
                    .u64(st.f_ffree)
                    .u32(st.f_bsize as u32)
                    .u32(st.f_namemax as u32)
                    .u32(st.f_frsize as u32)
                    .u32(0)
                    .zeros(24);
                ok(&mut out)
            }
            op::READDIR | op::READDIRPLUS => {
                let fh = need(f.u64())?;
                let offset = need(f.u64())?;
                let size = (need(f.u32())? as usize).min(MAX_IO);
                let size = size.min(writable.len().saturating_sub(fuse::OUT_HEADER_LEN));
                let plus = h.opcode == op::READDIRPLUS;
                Ok(Answer::Body(super::readdir::read(
                    fs, node, fh, offset, size, plus,
                )?))
            }
            op::FALLOCATE => {
                fs.check_write()?;
                let (fh, offset, length) = (need(f.u64())?, need(f.u64())?, need(f.u64())?);
                let mode = need(f.u32())?;
                let fd = file_fd(fs, fh)?;
                let (offset, length) = (to_off(offset)?, to_off(length)?);
                // SAFETY: fallocate on a descriptor we own.
                check(unsafe { libc::fallocate64(fd, mode as libc::c_int, offset, length) })?;
                empty()
            }
            op::LSEEK => {
                let (fh, offset) = (need(f.u64())?, need(f.u64())?);
                let whence = need(f.u32())? as libc::c_int;
                if ![
                    libc::SEEK_SET,
                    libc::SEEK_CUR,
                    libc::SEEK_END,
                    libc::SEEK_DATA,
                    libc::SEEK_HOLE,
                ]
                .contains(&whence)
                {
                    return Err(libc::EINVAL);
                }
                let fd = file_fd(fs, fh)?;
                // SAFETY: lseek on a descriptor we own.
                let at = unsafe { libc::lseek64(fd, to_off(offset)?, whence) };
                if at < 0 {
                    return Err(last_errno());
                }
                ok(out.u64(at as u64))
            }
            op::DESTROY => {
                fs.reset();
                self.initialized = false;
                empty()
            }
            _ => Err(libc::ENOSYS),
        }
    }

    /// The body (after the header, `len` bytes in all) copied out of the chain.
    fn body_of(mem: &GuestMemoryMmap, readable: &GuestBufs, len: usize) -> Res<Vec<u8>> {
        let n = len - fuse::IN_HEADER_LEN;
        if n > MAX_BODY {
            return Err(libc::EINVAL);
        }
        let mut body = vec![0u8; n];
        readable
            .read(mem, fuse::IN_HEADER_LEN, &mut body)
            .map_err(|_| libc::EFAULT)?;
        Ok(body)
    }

    fn init(&mut self, body: &[u8]) -> Res<Answer> {
        let mut f = Fields::new(body);
        let (major, minor) = (need(f.u32())?, need(f.u32())?);
        let (readahead, flags) = (need(f.u32())?, need(f.u32())?);
        if major < fuse::KERNEL_VERSION {
            return Err(libc::EPROTO);
        }
        let mut out = Out::default();
        out.u32(fuse::KERNEL_VERSION);
        if major > fuse::KERNEL_VERSION {
            // The driver speaks a newer major version: say ours and let it ask again.
            out.zeros(20);
            return ok(&mut out);
        }
        let minor = minor.min(fuse::KERNEL_MINOR_VERSION);
        out.u32(minor)
            .u32(readahead)
            .u32(flags & INIT_FLAGS)
            .u16(64)
            .u16(48)
            .u32(MAX_IO as u32);
        if minor >= 23 {
            out.u32(1).u16((MAX_IO / 4096) as u16).u16(0).zeros(32);
        }
        self.fs.reset();
        self.initialized = true;
        ok(&mut out)
    }

    fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        h: &InHeader,
        readable: &GuestBufs,
        writable: &GuestBufs,
        done: &mut Done,
    ) -> Res<Answer> {
        let body = Self::body_of(mem, readable, h.len as usize)?;
        let mut f = Fields::new(&body);
        let (fh, offset, size) = (need(f.u64())?, need(f.u64())?, need(f.u32())?);
        let fd = file_fd(&self.fs, fh)?;
        let room = writable.len().saturating_sub(fuse::OUT_HEADER_LEN);
        let size = (size as usize).min(MAX_IO).min(room);
        let iov = writable
            .iovecs(mem, fuse::OUT_HEADER_LEN, size)
            .map_err(|_| libc::EFAULT)?;
        let n = vectored(fd, &iov, to_off(offset)?, false)?;
        done.read += n as u64;
        Ok(Answer::Data(n))
    }

    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        h: &InHeader,
        readable: &GuestBufs,
        done: &mut Done,
    ) -> Res<Answer> {
        self.fs.check_write()?;
        let mut raw = [0u8; fuse::WRITE_IN_LEN];
        readable
            .read(mem, fuse::IN_HEADER_LEN, &mut raw)
            .map_err(|_| libc::EINVAL)?;
        let mut f = Fields::new(&raw);
        let (fh, offset, size) = (need(f.u64())?, need(f.u64())?, need(f.u32())?);
        let size = size as usize;
        let at = fuse::IN_HEADER_LEN + fuse::WRITE_IN_LEN;
        if size > MAX_IO || at + size > h.len as usize {
            return Err(libc::EINVAL);
        }
        let fd = file_fd(&self.fs, fh)?;
        let iov = readable.iovecs(mem, at, size).map_err(|_| libc::EFAULT)?;
        let n = vectored(fd, &iov, to_off(offset)?, true)?;
        done.written += n as u64;
        let mut out = Out::default();
        ok(out.u32(n as u32).u32(0))
    }
}

impl Protocol for Server {
    fn fs(&self) -> &Passthrough {
        &self.fs
    }

    fn reset(&mut self) {
        self.fs.reset();
        self.initialized = false;
    }

    fn handle(
        &mut self,
        mem: &GuestMemoryMmap,
        readable: &GuestBufs,
        writable: &GuestBufs,
    ) -> Done {
        let mut raw = [0u8; fuse::IN_HEADER_LEN];
        if readable.read(mem, 0, &mut raw).is_err() {
            return Done::default();
        }
        let Some(h) = InHeader::parse(&raw) else {
            return Done::default();
        };
        let mut done = Done::default();
        let answer = self.dispatch(mem, &h, readable, writable, &mut done);
        let (error, body): (i32, &[u8]) = match &answer {
            Ok(Answer::Nothing) => return done,
            Ok(Answer::Body(b)) => (0, b.as_slice()),
            Ok(Answer::Data(_)) => (0, &[]),
            Err(e) => (-e, &[]),
        };
        let data = match answer {
            Ok(Answer::Data(n)) => n,
            _ => 0,
        };
        let len = fuse::OUT_HEADER_LEN + body.len() + data;
        if writable.len() < len {
            return done; // no room for the reply: the chain goes back unused
        }
        let header = fuse::out_header(len, error, h.unique);
        if writable.write(mem, 0, &header).is_err()
            || writable.write(mem, fuse::OUT_HEADER_LEN, body).is_err()
        {
            return done;
        }
        done.used = len as u32;
        done
    }
}

/// The descriptor of open file `fh` (not a directory).
fn file_fd(fs: &Passthrough, fh: u64) -> Res<libc::c_int> {
    let h = fs.handle(fh)?;
    if h.dir {
        return Err(libc::EISDIR);
    }
    Ok(h.file.as_raw_fd())
}
