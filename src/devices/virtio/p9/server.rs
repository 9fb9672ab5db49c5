//! One 9P2000.L request in, one reply out, on a [`Passthrough`]: the guest's fids, each an
//! inode it walked to (one lookup held) and perhaps a file it opened there.
//!
//! Whatever the guest sends is checked before use, as the FUSE server does: a size that
//! disagrees with the chain, a body too short for its message, a fid that is not one of
//! ours or already taken, a walk of more than 16 names, a message we do not serve — each
//! gets an Rlerror (`EINVAL`, `EBADF`, `EOPNOTSUPP`, ...), and a chain with no room for a
//! reply is returned unused (and, without room for an Rlerror, not carried out). Fids per
//! device are capped ([`MAX_FIDS`]); the inodes and open files behind them are capped by
//! the passthrough.
//!
//! Tread and Twrite move file data straight between the host file and guest memory
//! (`preadv`/`pwritev` on the guest's buffers), so the Linux client's zero-copy requests
//! (a small header buffer, then the pages of the user's buffer) cost no copy here.
//! Locks are the host's open-file-description locks on the fid's open file, so they hold
//! between the guest's fids as between host processes.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use vm_memory::GuestMemoryMmap;

use super::protocol::{
    self, attr, lock, msg, put_getattr, put_qid, put_string, qid_path, qid_type, string, Header,
    HEADER_LEN,
};
use crate::devices::virtio::bufs::GuestBufs;
use crate::devices::virtio::share::passthrough::{
    check, setattr::fattr, to_off, vectored, Passthrough, Res, SetAttr, ROOT,
};
use crate::devices::virtio::share::readdir::{scan, Step};
use crate::devices::virtio::share::{empty, need, ok, Answer, Done, Protocol};
use crate::devices::virtio::wire::{Fields, Out};

/// The most fids one device holds.
pub const MAX_FIDS: usize = 32_768;
/// The largest message size we agree to (and so the most one Tread or Twrite moves).
pub const MAX_MSIZE: u32 = 1 << 20;
/// The smallest message size we agree to (the Linux client's own minimum).
pub const MIN_MSIZE: u32 = 4096;
/// The most bytes of a request other than Twrite's data copied in: any such request fits
/// (16 names of 255 bytes, a link target of 4,095).
const MAX_BODY: usize = 8 << 10;
/// Tread's reply before the data: header, `count[4]`.
const READ_HEADER: usize = HEADER_LEN + 4;
/// Twrite's request before the data: header, `fid[4] offset[8] count[4]`.
const WRITE_HEADER: usize = HEADER_LEN + 16;

/// What the guest holds by one fid.
#[derive(Debug, Clone, Copy)]
struct Fid {
    /// The inode (one lookup of it held).
    node: u64,
    /// The open file or directory, after Tlopen or Tlcreate.
    open: Option<u64>,
}

/// The server of one share: its file system, the guest's fids and the agreed size.
pub struct Server {
    fs: Passthrough,
    fids: HashMap<u32, Fid>,
    /// The message size agreed by Tversion; 0 before it.
    msize: u32,
    /// The share root's device, for QID paths.
    root_dev: u64,
}

impl Server {
    /// A server for `fs`, waiting for Tversion.
    pub fn new(fs: Passthrough) -> Server {
        let root_dev = fs.getattr(ROOT).map(|st| st.st_dev).unwrap_or(0);
        Server {
            fs,
            fids: HashMap::new(),
            msize: 0,
            root_dev,
        }
    }

    /// How many fids the guest holds.
    pub fn fids(&self) -> usize {
        self.fids.len()
    }

    fn fid(&self, fid: u32) -> Res<Fid> {
        self.fids.get(&fid).copied().ok_or(libc::EBADF)
    }

    /// The open file or directory of `fid`.
    fn open_of(&self, fid: u32) -> Res<u64> {
        self.fid(fid)?.open.ok_or(libc::EBADF)
    }

    /// The descriptor of `fid`'s open regular file.
    fn file_fd(&self, fid: u32) -> Res<libc::c_int> {
        let h = self.fs.handle(self.open_of(fid)?)?;
        if h.dir {
            return Err(libc::EISDIR);
        }
        Ok(h.file.as_raw_fd())
    }

    /// Makes `fid` (not in use) stand for `node`, whose lookup the caller holds.
    fn bind(&mut self, fid: u32, node: u64) -> Res<()> {
        if self.fids.len() >= MAX_FIDS {
            self.fs.forget(node, 1);
            return Err(libc::EMFILE);
        }
        self.fids.insert(fid, Fid { node, open: None });
        Ok(())
    }

    /// Lets go of `fid`: its open file closed, its lookup forgotten.
    fn clunk(&mut self, fid: u32) -> Res<()> {
        let f = self.fids.remove(&fid).ok_or(libc::EBADF)?;
        if let Some(fh) = f.open {
            let _ = self.fs.release(fh);
        }
        self.fs.forget(f.node, 1);
        Ok(())
    }

    fn qid(&self, out: &mut Out, st: &libc::stat64) {
        put_qid(
            out,
            qid_type(st.st_mode),
            qid_path(st.st_dev, st.st_ino, self.root_dev),
        );
    }

    /// The QID of something just made (`made`: its node, with one lookup we do not keep).
    fn made(&mut self, made: (u64, libc::stat64)) -> Res<Answer> {
        let (node, st) = made;
        self.fs.forget(node, 1);
        let mut out = Out::default();
        self.qid(&mut out, &st);
        ok(&mut out)
    }

    /// The body (after the header, `size` bytes in all) copied out of the chain.
    fn body_of(mem: &GuestMemoryMmap, readable: &GuestBufs, size: usize) -> Res<Vec<u8>> {
        let n = size - HEADER_LEN;
        if n > MAX_BODY {
            return Err(libc::EINVAL);
        }
        let mut body = vec![0u8; n];
        readable
            .read(mem, HEADER_LEN, &mut body)
            .map_err(|_| libc::EFAULT)?;
        Ok(body)
    }

    fn dispatch(
        &mut self,
        mem: &GuestMemoryMmap,
        h: &Header,
        readable: &GuestBufs,
        writable: &GuestBufs,
        done: &mut Done,
    ) -> Res<Answer> {
        let size = h.size as usize;
        if size < HEADER_LEN || size > readable.len() {
            return Err(libc::EINVAL);
        }
        if h.kind == msg::TWRITE {
            return self.write(mem, size, readable, done);
        }
        let body = Self::body_of(mem, readable, size)?;
        let mut f = Fields::new(&body);
        if h.kind == msg::TVERSION {
            return self.version(&mut f);
        }
        if self.msize == 0 {
            return Err(libc::EIO); // Tversion comes first
        }
        let mut out = Out::default();
        match h.kind {
            msg::TATTACH => {
                let fid = need(f.u32())?;
                if self.fids.contains_key(&fid) {
                    return Err(libc::EBADF);
                }
                let (_, st) = self.fs.again(ROOT)?;
                self.bind(fid, ROOT)?;
                self.qid(&mut out, &st);
                ok(&mut out)
            }
            msg::TWALK => self.walk(&mut f),
            msg::TREAD => self.read(mem, &mut f, writable, done),
            msg::TCLUNK => {
                self.clunk(need(f.u32())?)?;
                empty()
            }
            msg::TREMOVE => {
                // The Linux client removes with Tunlinkat; Tremove clunks the fid, as it
                // must even when it fails.
                self.clunk(need(f.u32())?)?;
                Err(libc::EOPNOTSUPP)
            }
            msg::TFLUSH => empty(), // every request is done before the next is read
            msg::TLOPEN => {
                let (fid, flags) = (need(f.u32())?, need(f.u32())?);
                let Fid { node, open } = self.fid(fid)?;
                if open.is_some() {
                    return Err(libc::EBADF);
                }
                let st = self.fs.getattr(node)?;
                let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let fh = self.fs.open(node, flags, dir)?;
                if let Some(slot) = self.fids.get_mut(&fid) {
                    slot.open = Some(fh);
                }
                self.qid(&mut out, &st);
                out.u32(0); // iounit: msize minus the headers
                ok(&mut out)
            }
            msg::TLCREATE => {
                let fid = need(f.u32())?;
                let name = need(string(&mut f))?;
                let (flags, mode) = (need(f.u32())?, need(f.u32())?);
                let Fid { node, open } = self.fid(fid)?;
                if open.is_some() {
                    return Err(libc::EBADF);
                }
                let (new, st, fh) = self.fs.create(node, name, mode, flags)?;
                // The fid now stands for the new file, opened.
                self.fids.insert(
                    fid,
                    Fid {
                        node: new,
                        open: Some(fh),
                    },
                );
                self.fs.forget(node, 1);
                self.qid(&mut out, &st);
                out.u32(0);
                ok(&mut out)
            }
            msg::TSTATFS => {
                let st = self.fs.statfs(self.fid(need(f.u32())?)?.node)?;
                out.u32(protocol::V9FS_MAGIC)
                    .u32(st.f_bsize as u32)
                    .u64(st.f_blocks)
                    .u64(st.f_bfree)
                    .u64(st.f_bavail)
                    .u64(st.f_files)
                    .u64(st.f_ffree)
                    .u64(st.f_fsid)
                    .u32(st.f_namemax as u32);
                ok(&mut out)
            }
            msg::TGETATTR => {
                let st = self.fs.getattr(self.fid(need(f.u32())?)?.node)?;
                put_getattr(&mut out, &st, qid_path(st.st_dev, st.st_ino, self.root_dev));
                ok(&mut out)
            }
            msg::TSETATTR => self.setattr(&mut f),
            msg::TREADDIR => self.readdir(&mut f, writable),
            msg::TFSYNC => {
                let (fid, datasync) = (need(f.u32())?, need(f.u32())? != 0);
                self.fs.fsync(self.open_of(fid)?, datasync)?;
                empty()
            }
            msg::TMKDIR => {
                let dfid = need(f.u32())?;
                let name = need(string(&mut f))?;
                let mode = need(f.u32())?;
                let made = self.fs.mkdir(self.fid(dfid)?.node, name, mode)?;
                self.made(made)
            }
            msg::TSYMLINK => {
                let dfid = need(f.u32())?;
                let name = need(string(&mut f))?;
                let target = need(string(&mut f))?;
                let made = self.fs.symlink(self.fid(dfid)?.node, name, target)?;
                self.made(made)
            }
            msg::TMKNOD => {
                let dfid = need(f.u32())?;
                let name = need(string(&mut f))?;
                let mode = need(f.u32())?; // major and minor follow: never a device node
                let made = self.fs.mknod(self.fid(dfid)?.node, name, mode)?;
                self.made(made)
            }
            msg::TLINK => {
                let (dfid, fid) = (need(f.u32())?, need(f.u32())?);
                let name = need(string(&mut f))?;
                let (dir, node) = (self.fid(dfid)?.node, self.fid(fid)?.node);
                let made = self.fs.link(node, dir, name)?;
                self.fs.forget(made.0, 1);
                empty()
            }
            msg::TRENAMEAT => {
                let old_dir = need(f.u32())?;
                let old_name = need(string(&mut f))?;
                let new_dir = need(f.u32())?;
                let new_name = need(string(&mut f))?;
                let (from, to) = (self.fid(old_dir)?.node, self.fid(new_dir)?.node);
                self.fs.rename(from, old_name, to, new_name, 0)?;
                empty()
            }
            msg::TUNLINKAT => {
                let dfid = need(f.u32())?;
                let name = need(string(&mut f))?;
                let flags = need(f.u32())?;
                let rmdir = flags & protocol::AT_REMOVEDIR != 0;
                self.fs.unlink(self.fid(dfid)?.node, name, rmdir)?;
                empty()
            }
            msg::TREADLINK => {
                let target = self.fs.readlink(self.fid(need(f.u32())?)?.node)?;
                put_string(&mut out, &target);
                ok(&mut out)
            }
            msg::TLOCK => self.lock(&mut f),
            msg::TGETLOCK => self.getlock(&mut f),
            // Trename names no old parent (the client renames with Trenameat); extended
            // attributes are not shared; there is no authentication.
            msg::TRENAME | msg::TXATTRWALK | msg::TXATTRCREATE | msg::TAUTH => {
                Err(libc::EOPNOTSUPP)
            }
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    fn version(&mut self, f: &mut Fields) -> Res<Answer> {
        let msize = need(f.u32())?;
        let version = need(string(f))?;
        if msize < MIN_MSIZE {
            return Err(libc::EINVAL);
        }
        // A new session: everything the guest held is let go.
        self.fids.clear();
        self.fs.reset();
        let mut out = Out::default();
        let msize = msize.min(MAX_MSIZE);
        out.u32(msize);
        if version.starts_with(protocol::VERSION) {
            self.msize = msize;
            put_string(&mut out, protocol::VERSION);
        } else {
            self.msize = 0;
            put_string(&mut out, b"unknown");
        }
        ok(&mut out)
    }

    fn walk(&mut self, f: &mut Fields) -> Res<Answer> {
        let (fid, newfid) = (need(f.u32())?, need(f.u32())?);
        let count = need(f.u16())? as usize;
        if count > protocol::MAX_WALK {
            return Err(libc::EINVAL);
        }
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            names.push(need(string(f))?);
        }
        let start = self.fid(fid)?.node;
        let mut out = Out::default();
        if count == 0 && newfid == fid {
            return ok(out.u16(0)); // a clone onto itself changes nothing
        }
        if newfid != fid && self.fids.contains_key(&newfid) {
            return Err(libc::EBADF);
        }
        out.u16(0);
        // Each name is one lookup; all but the last are let go again.
        let mut held: Vec<u64> = Vec::with_capacity(count);
        let mut walked = 0u16;
        for name in &names {
            let at = held.last().copied().unwrap_or(start);
            match self.fs.lookup(at, name) {
                Ok((node, st)) => {
                    self.qid(&mut out, &st);
                    held.push(node);
                    walked += 1;
                }
                Err(e) if held.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        out.0[..2].copy_from_slice(&walked.to_le_bytes());
        if held.len() < names.len() {
            // Partly walked: the guest learns how far, newfid is not made.
            for node in held {
                self.fs.forget(node, 1);
            }
            return ok(&mut out);
        }
        let target = match held.pop() {
            Some(node) => node,
            None => self.fs.again(start)?.0, // a clone
        };
        for node in held {
            self.fs.forget(node, 1);
        }
        if newfid == fid {
            let _ = self.clunk(fid);
        }
        self.bind(newfid, target)?;
        ok(&mut out)
    }

    fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        f: &mut Fields,
        writable: &GuestBufs,
        done: &mut Done,
    ) -> Res<Answer> {
        let (fid, offset, count) = (need(f.u32())?, need(f.u64())?, need(f.u32())?);
        let fd = self.file_fd(fid)?;
        let room = writable.len().saturating_sub(READ_HEADER);
        let max = self.msize as usize - READ_HEADER;
        let count = (count as usize).min(max).min(room);
        let iov = writable
            .iovecs(mem, READ_HEADER, count)
            .map_err(|_| libc::EFAULT)?;
        let n = vectored(fd, &iov, to_off(offset)?, false)?;
        done.read += n as u64;
        Ok(Answer::Data(n))
    }

    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        size: usize,
        readable: &GuestBufs,
        done: &mut Done,
    ) -> Res<Answer> {
        if self.msize == 0 {
            return Err(libc::EIO);
        }
        let mut raw = [0u8; WRITE_HEADER - HEADER_LEN];
        readable
            .read(mem, HEADER_LEN, &mut raw)
            .map_err(|_| libc::EINVAL)?;
        let mut f = Fields::new(&raw);
        let (fid, offset, count) = (need(f.u32())?, need(f.u64())?, need(f.u32())?);
        let count = count as usize;
        if WRITE_HEADER + count > size {
            return Err(libc::EINVAL);
        }
        self.fs.check_write()?;
        let fd = self.file_fd(fid)?;
        let iov = readable
            .iovecs(mem, WRITE_HEADER, count)
            .map_err(|_| libc::EFAULT)?;
        let n = vectored(fd, &iov, to_off(offset)?, true)?;
        done.written += n as u64;
        let mut out = Out::default();
        ok(out.u32(n as u32))
    }

    fn setattr(&mut self, f: &mut Fields) -> Res<Answer> {
        let (fid, valid) = (need(f.u32())?, need(f.u32())?);
        let (mode, uid, gid) = (need(f.u32())?, need(f.u32())?, need(f.u32())?);
        let size = need(f.u64())?;
        let (atime, atimensec) = (need(f.u64())?, need(f.u64())?);
        let (mtime, mtimensec) = (need(f.u64())?, need(f.u64())?);
        let node = self.fid(fid)?.node;
        // 9P's bits onto FUSE's, which the passthrough takes: a time without its _SET bit
        // is "now".
        let map = [
            (attr::MODE, fattr::MODE),
            (attr::UID, fattr::UID),
            (attr::GID, fattr::GID),
            (attr::SIZE, fattr::SIZE),
        ];
        let mut bits = map
            .iter()
            .filter(|(p9, _)| valid & p9 != 0)
            .fold(0, |acc, (_, fuse)| acc | fuse);
        for (time, set, fuse, now) in [
            (attr::ATIME, attr::ATIME_SET, fattr::ATIME, fattr::ATIME_NOW),
            (attr::MTIME, attr::MTIME_SET, fattr::MTIME, fattr::MTIME_NOW),
        ] {
            if valid & time != 0 {
                bits |= if valid & set != 0 { fuse } else { fuse | now };
            }
        }
        if bits == 0 {
            return empty(); // only ctime: the host sets it as it changes the inode
        }
        // The size changes through the inode, not the fid's open file: the guest may
        // truncate through a fid it opened read-only for another reader.
        let set = SetAttr {
            valid: bits,
            fh: 0,
            size,
            atime,
            mtime,
            atimensec: atimensec.min(999_999_999) as u32,
            mtimensec: mtimensec.min(999_999_999) as u32,
            mode,
            uid,
            gid,
        };
        self.fs.setattr(node, &set)?;
        empty()
    }

    fn readdir(&mut self, f: &mut Fields, writable: &GuestBufs) -> Res<Answer> {
        let (fid, offset, count) = (need(f.u32())?, need(f.u64())?, need(f.u32())?);
        let fh = self.open_of(fid)?;
        let room = writable.len().saturating_sub(READ_HEADER);
        let size = (count as usize)
            .min(self.msize as usize - READ_HEADER)
            .min(room);
        let root_dev = self.root_dev;
        let dev = self.fs.getattr(self.fid(fid)?.node)?.st_dev;
        let mut out = Out::default();
        out.u32(0);
        scan(&mut self.fs, fh, offset, size, |_, e| {
            // qid[13] offset[8] type[1] name[s]
            let need = 13 + 8 + 1 + 2 + e.name.len();
            if out.0.len() - 4 + need > size {
                return Step::Full;
            }
            let kind = match e.kind {
                libc::DT_DIR => 0x80,
                libc::DT_LNK => 0x02,
                _ => 0,
            };
            put_qid(&mut out, kind, qid_path(dev, e.ino, root_dev));
            out.u64(e.off).u8(e.kind);
            put_string(&mut out, e.name);
            Step::Took
        })?;
        let n = (out.0.len() - 4) as u32;
        out.0[..4].copy_from_slice(&n.to_le_bytes());
        ok(&mut out)
    }

    /// The `struct flock` of a Tlock or Tgetlock: its type, start and length.
    fn flock(kind: u8, start: u64, length: u64) -> Res<libc::flock64> {
        // SAFETY: flock64 is plain data; all zeroes is a valid value.
        let mut fl: libc::flock64 = unsafe { std::mem::zeroed() };
        fl.l_type = match kind {
            lock::RDLCK => libc::F_RDLCK,
            lock::WRLCK => libc::F_WRLCK,
            lock::UNLCK => libc::F_UNLCK,
            _ => return Err(libc::EINVAL),
        } as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_start = to_off(start)?;
        fl.l_len = to_off(length)?;
        Ok(fl)
    }

    fn lock(&mut self, f: &mut Fields) -> Res<Answer> {
        let (fid, kind, _flags) = (need(f.u32())?, need(f.u8())?, need(f.u32())?);
        let (start, length) = (need(f.u64())?, need(f.u64())?);
        let fd = self.file_fd(fid)?;
        let mut fl = Self::flock(kind, start, length)?;
        // Never waits: a lock held elsewhere answers BLOCKED, and the client asks again.
        // SAFETY: F_OFD_SETLK with a valid flock64 on a descriptor we own.
        let ret = unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) };
        let status = match check(ret) {
            Ok(_) => lock::SUCCESS,
            Err(libc::EAGAIN) | Err(libc::EACCES) => lock::BLOCKED,
            Err(e) => return Err(e),
        };
        let mut out = Out::default();
        ok(out.u8(status))
    }

    fn getlock(&mut self, f: &mut Fields) -> Res<Answer> {
        let (fid, kind) = (need(f.u32())?, need(f.u8())?);
        let (start, length) = (need(f.u64())?, need(f.u64())?);
        let proc_id = need(f.u32())?;
        let client = need(string(f))?.to_vec();
        let fd = self.file_fd(fid)?;
        let mut fl = Self::flock(kind, start, length)?;
        // SAFETY: F_OFD_GETLK with a valid flock64 on a descriptor we own.
        check(unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) })?;
        let kind = match i32::from(fl.l_type) {
            libc::F_RDLCK => lock::RDLCK,
            libc::F_WRLCK => lock::WRLCK,
            _ => lock::UNLCK,
        };
        let mut out = Out::default();
        out.u8(kind).u64(fl.l_start as u64).u64(fl.l_len as u64);
        // Another open file's lock has no guest process; the asker's own name is echoed.
        out.u32(proc_id);
        put_string(&mut out, &client);
        ok(&mut out)
    }
}

impl Protocol for Server {
    fn handle(
        &mut self,
        mem: &GuestMemoryMmap,
        readable: &GuestBufs,
        writable: &GuestBufs,
    ) -> Done {
        let mut raw = [0u8; HEADER_LEN];
        if readable.read(mem, 0, &mut raw).is_err() {
            return Done::default();
        }
        let Some(h) = Header::parse(&raw) else {
            return Done::default();
        };
        let mut done = Done::default();
        if writable.len() < HEADER_LEN + 4 {
            return done; // not even room for an Rlerror: the request is not carried out
        }
        let answer = self.dispatch(mem, &h, readable, writable, &mut done);
        // What follows the header: the body; Tread's count (its data is in place); the errno.
        let mut prefix = Out::default();
        let (kind, len) = match answer {
            Ok(Answer::Nothing) => return done,
            Ok(Answer::Body(b)) => {
                prefix.0 = b;
                (h.kind.wrapping_add(1), HEADER_LEN + prefix.0.len())
            }
            Ok(Answer::Data(n)) => {
                prefix.u32(n as u32);
                (h.kind.wrapping_add(1), READ_HEADER + n)
            }
            Err(e) => {
                prefix.u32(e as u32);
                (msg::RLERROR, HEADER_LEN + 4)
            }
        };
        if writable.len() < len {
            return done; // no room for the reply: the chain goes back unused
        }
        let header = Header::encode(len, kind, h.tag);
        if writable.write(mem, 0, &header).is_err()
            || writable.write(mem, HEADER_LEN, &prefix.0).is_err()
        {
            return done;
        }
        done.used = len as u32;
        done
    }

    fn reset(&mut self) {
        self.fids.clear();
        self.fs.reset();
        self.msize = 0;
    }

    fn fs(&self) -> &Passthrough {
        &self.fs
    }
}
