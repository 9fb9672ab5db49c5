//! The 9P server on a real directory, its requests and replies in guest memory; the device's
//! configuration space and features.

use super::protocol::{msg, HEADER_LEN};
use super::server::MAX_FIDS;
use super::*;
use crate::devices::virtio::bufs::GuestBufs;
use crate::devices::virtio::share::passthrough::Passthrough;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const REQ: u64 = 0x1000;
const REPLY: u64 = 0x20000;

/// A guest talking 9P to a server.
struct Guest {
    mem: GuestMemoryMmap,
    server: Server,
    tag: u16,
}

/// A request's body being built.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn s(mut self, v: &[u8]) -> Self {
        self = self.u16(v.len() as u16);
        self.0.extend_from_slice(v);
        self
    }
}

impl Guest {
    fn new(dir: &std::path::Path, read_only: bool) -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let fs = Passthrough::new(dir, read_only).unwrap();
        Guest {
            mem,
            server: Server::new(fs),
            tag: 0,
        }
    }

    /// Sends message `kind` with `body` (its size field `size` if given), with `room`
    /// bytes for the reply; the reply's type and body, or None when the chain went back
    /// unused.
    fn raw(
        &mut self,
        kind: u8,
        body: &[u8],
        size: Option<u32>,
        room: u32,
    ) -> Option<(u8, Vec<u8>)> {
        self.tag = self.tag.wrapping_add(1);
        let mut m = Vec::new();
        m.extend_from_slice(
            &size
                .unwrap_or((HEADER_LEN + body.len()) as u32)
                .to_le_bytes(),
        );
        m.push(kind);
        m.extend_from_slice(&self.tag.to_le_bytes());
        m.extend_from_slice(body);
        self.mem.write_slice(&m, GuestAddress(REQ)).unwrap();
        let r = GuestBufs::new([(GuestAddress(REQ), m.len() as u32)]);
        let w = GuestBufs::new([(GuestAddress(REPLY), room)]);
        let done = self.server.handle(&self.mem, &r, &w);
        if done.used == 0 {
            return None;
        }
        let mut out = vec![0u8; done.used as usize];
        self.mem.read_slice(&mut out, GuestAddress(REPLY)).unwrap();
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), done.used);
        assert_eq!(u16::from_le_bytes(out[5..7].try_into().unwrap()), self.tag);
        Some((out[4], out[HEADER_LEN..].to_vec()))
    }

    /// Sends `kind`; its reply's body, or the errno of an Rlerror.
    fn call(&mut self, kind: u8, body: Body) -> Result<Vec<u8>, i32> {
        let (rkind, rbody) = self.raw(kind, &body.0, None, 1 << 20).expect("a reply");
        if rkind == msg::RLERROR {
            return Err(i32::from_le_bytes(rbody[..4].try_into().unwrap()));
        }
        assert_eq!(rkind, kind + 1);
        Ok(rbody)
    }

    fn attach(&mut self, fid: u32) {
        let v = self
            .call(msg::TVERSION, Body::default().u32(1 << 16).s(b"9P2000.L"))
            .unwrap();
        assert_eq!(u32::from_le_bytes(v[..4].try_into().unwrap()), 1 << 16);
        assert_eq!(&v[6..], b"9P2000.L");
        let q = self
            .call(
                msg::TATTACH,
                Body::default().u32(fid).u32(!0).s(b"").s(b"").u32(0),
            )
            .unwrap();
        assert_eq!(q[0], 0x80, "the root is a directory");
    }

    /// Walks `names` from `fid` to `newfid`: how many QIDs came back.
    fn walk(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Result<u16, i32> {
        let mut b = Body::default().u32(fid).u32(newfid).u16(names.len() as u16);
        for n in names {
            b = b.s(n);
        }
        self.call(msg::TWALK, b)
            .map(|r| u16::from_le_bytes(r[..2].try_into().unwrap()))
    }

    fn lopen(&mut self, fid: u32, flags: u32) -> Result<Vec<u8>, i32> {
        self.call(msg::TLOPEN, Body::default().u32(fid).u32(flags))
    }

    fn read(&mut self, fid: u32, offset: u64, count: u32) -> Result<Vec<u8>, i32> {
        self.call(msg::TREAD, Body::default().u32(fid).u64(offset).u32(count))
            .map(|r| r[4..].to_vec())
    }

    fn clunk(&mut self, fid: u32) -> Result<Vec<u8>, i32> {
        self.call(msg::TCLUNK, Body::default().u32(fid))
    }
}

fn tree(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-p9-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::write(dir.join("sub/inner"), b"inner").unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../..", dir.join("rel-link")).unwrap();
    dir
}

#[test]
fn a_session_walks_reads_and_lists_a_read_only_share() {
    let dir = tree("ro");
    let mut g = Guest::new(&dir, true);
    // Before Tversion nothing is served.
    assert_eq!(
        g.call(
            msg::TATTACH,
            Body::default().u32(0).u32(!0).s(b"").s(b"").u32(0)
        ),
        Err(libc::EIO)
    );
    g.attach(0);
    assert_eq!(g.walk(0, 1, &[b"sub", b"inner"]), Ok(2));
    let open = g.lopen(1, libc::O_RDONLY as u32).unwrap();
    assert_eq!(open[0], 0, "a file's QID");
    assert_eq!(g.read(1, 0, 4096).unwrap(), b"inner");
    assert_eq!(g.read(1, 2, 2).unwrap(), b"ne");
    assert_eq!(g.read(1, 100, 10).unwrap(), b"", "past the end");

    // Rgetattr: mode, size.
    let a = g
        .call(msg::TGETATTR, Body::default().u32(1).u64(0x7ff))
        .unwrap();
    assert_eq!(a.len(), 153);
    let mode = u32::from_le_bytes(a[21..25].try_into().unwrap());
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    let size = u64::from_le_bytes(a[49..57].try_into().unwrap());
    assert_eq!(size, 5);

    // Treaddir of the root, in two small replies that together list everything.
    assert_eq!(g.walk(0, 2, &[]), Ok(0));
    g.lopen(2, (libc::O_RDONLY | libc::O_DIRECTORY) as u32)
        .unwrap();
    let mut names = Vec::new();
    let mut offset = 0u64;
    loop {
        let r = g
            .call(msg::TREADDIR, Body::default().u32(2).u64(offset).u32(64))
            .unwrap();
        let n = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
        assert!(n <= 64);
        if n == 0 {
            break;
        }
        let mut at = 4;
        while at < 4 + n {
            offset = u64::from_le_bytes(r[at + 13..at + 21].try_into().unwrap());
            let len = u16::from_le_bytes(r[at + 22..at + 24].try_into().unwrap()) as usize;
            names.push(String::from_utf8(r[at + 24..at + 24 + len].to_vec()).unwrap());
            at += 24 + len;
        }
    }
    names.sort();
    assert_eq!(
        names,
        [".", "..", "abs-link", "hello.txt", "rel-link", "sub"]
    );

    // Writes of every kind are refused by the host.
    let fid = g_walk(&mut g, 3, b"hello.txt");
    assert_eq!(g.lopen(fid, libc::O_RDWR as u32), Err(libc::EROFS));
    assert_eq!(
        g.call(
            msg::TMKDIR,
            Body::default().u32(0).s(b"new").u32(0o755).u32(0)
        ),
        Err(libc::EROFS)
    );
    assert_eq!(
        g.call(
            msg::TUNLINKAT,
            Body::default().u32(0).s(b"hello.txt").u32(0)
        ),
        Err(libc::EROFS)
    );
    assert!(dir.join("hello.txt").exists());

    // Clunks let go of everything.
    for fid in [0, 1, 2, 3] {
        g.clunk(fid).unwrap();
    }
    assert_eq!(g.clunk(1), Err(libc::EBADF));
    assert_eq!(g.server.fids(), 0);
    assert_eq!(g.server.fs().open_handles(), 0);
    assert_eq!(g.server.fs().inodes(), 1, "only the root is held");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Walks `name` from the root (fid 0) to `fid`.
fn g_walk(g: &mut Guest, fid: u32, name: &[u8]) -> u32 {
    assert_eq!(g.walk(0, fid, &[name]), Ok(1));
    fid
}

#[test]
fn nothing_outside_the_share_is_reached() {
    let dir = tree("escape");
    let mut g = Guest::new(&dir.join("sub"), false);
    g.attach(0);
    // `..` of the root is the root; a name with a slash or an empty one is refused.
    assert_eq!(g.walk(0, 1, &[b".."]), Ok(1));
    let root = g
        .call(msg::TGETATTR, Body::default().u32(0).u64(0x7ff))
        .unwrap();
    let up = g
        .call(msg::TGETATTR, Body::default().u32(1).u64(0x7ff))
        .unwrap();
    assert_eq!(root[8..21], up[8..21], "the same QID");
    assert_eq!(g.walk(0, 2, &[b"../hello.txt"]), Err(libc::EINVAL));
    assert_eq!(g.walk(0, 2, &[b""]), Err(libc::EINVAL));
    // A walk that fails past its first name tells how far it got and makes no fid.
    assert_eq!(g.walk(0, 2, &[b"..", b"..", b"hello.txt"]), Ok(2));
    assert_eq!(g.server.fids(), 2);
    // A link made by the guest is never followed on the host.
    g.call(
        msg::TSYMLINK,
        Body::default().u32(0).s(b"out").s(b"/etc").u32(0),
    )
    .unwrap();
    assert_eq!(
        g.walk(0, 2, &[b"out", b"passwd"]),
        Ok(1),
        "stops at the link"
    );
    assert_eq!(g.server.fids(), 2, "a partial walk makes no fid");
    assert_eq!(g.walk(0, 2, &[b"out"]), Ok(1));
    assert_eq!(g.lopen(2, libc::O_RDONLY as u32), Err(libc::ELOOP));
    // Renames and links stay inside: names are single components.
    assert_eq!(
        g.call(
            msg::TRENAMEAT,
            Body::default().u32(0).s(b"inner").u32(0).s(b"../stolen")
        ),
        Err(libc::EINVAL)
    );
    assert!(!dir.join("stolen").exists());
    // No device nodes, no set-ID bits.
    assert_eq!(
        g.call(
            msg::TMKNOD,
            Body::default()
                .u32(0)
                .s(b"dev")
                .u32(libc::S_IFCHR | 0o666)
                .u32(1)
                .u32(3)
                .u32(0)
        ),
        Err(libc::EPERM)
    );
    g.call(
        msg::TLCREATE,
        Body::default().u32(2).s(b"x").u32(0).u32(0o644).u32(0),
    )
    .expect_err("a link's fid is no directory");
    assert_eq!(g.walk(0, 3, &[]), Ok(0));
    g.call(
        msg::TLCREATE,
        Body::default()
            .u32(3)
            .s(b"made")
            .u32(libc::O_RDWR as u32)
            .u32(0o6755)
            .u32(0),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("sub/made"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "no set-ID bits: {mode:o}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_read_write_share_creates_writes_renames_and_removes() {
    let dir = tree("rw");
    let mut g = Guest::new(&dir, false);
    g.attach(0);
    assert_eq!(g.walk(0, 1, &[]), Ok(0));
    g.call(
        msg::TLCREATE,
        Body::default()
            .u32(1)
            .s(b"new.txt")
            .u32(libc::O_RDWR as u32)
            .u32(0o644)
            .u32(0),
    )
    .unwrap();
    let data = b"written by the guest";
    let mut w = Body::default().u32(1).u64(0).u32(data.len() as u32);
    w.0.extend_from_slice(data);
    let r = g.call(msg::TWRITE, w).unwrap();
    assert_eq!(
        u32::from_le_bytes(r[..4].try_into().unwrap()),
        data.len() as u32
    );
    assert_eq!(std::fs::read(dir.join("new.txt")).unwrap(), data);
    // A count past the message is refused.
    let mut w = Body::default().u32(1).u64(0).u32(100);
    w.0.extend_from_slice(b"short");
    assert_eq!(g.call(msg::TWRITE, w), Err(libc::EINVAL));
    // Tsetattr: size through the open file, mode.
    g.call(
        msg::TSETATTR,
        Body::default()
            .u32(1)
            .u32(1 | 8)
            .u32(0o600)
            .u32(0)
            .u32(0)
            .u64(7)
            .u64(0)
            .u64(0)
            .u64(0)
            .u64(0),
    )
    .unwrap();
    assert_eq!(std::fs::read(dir.join("new.txt")).unwrap(), b"written");
    // Locks: ours succeeds, another open file's conflicting one is BLOCKED until unlocked.
    assert_eq!(g.walk(0, 2, &[b"new.txt"]), Ok(1));
    g.lopen(2, libc::O_RDWR as u32).unwrap();
    let lock = |fid: u32, kind: u8| {
        Body::default()
            .u32(fid)
            .u8(kind)
            .u32(0)
            .u64(0)
            .u64(0)
            .u32(1)
            .s(b"guest")
    };
    assert_eq!(g.call(msg::TLOCK, lock(1, 1)).unwrap(), [0]);
    assert_eq!(g.call(msg::TLOCK, lock(2, 1)).unwrap(), [1]);
    let held = g
        .call(
            msg::TGETLOCK,
            Body::default()
                .u32(2)
                .u8(1)
                .u64(0)
                .u64(0)
                .u32(1)
                .s(b"guest"),
        )
        .unwrap();
    assert_eq!(held[0], 1, "a write lock is held");
    assert_eq!(g.call(msg::TLOCK, lock(1, 2)).unwrap(), [0]);
    assert_eq!(g.call(msg::TLOCK, lock(2, 1)).unwrap(), [0]);
    // mkdir, rename into it, unlink, rmdir.
    g.call(
        msg::TMKDIR,
        Body::default().u32(0).s(b"d").u32(0o755).u32(0),
    )
    .unwrap();
    assert_eq!(g.walk(0, 3, &[b"d"]), Ok(1));
    g.call(
        msg::TRENAMEAT,
        Body::default().u32(0).s(b"new.txt").u32(3).s(b"moved"),
    )
    .unwrap();
    assert!(dir.join("d/moved").exists());
    g.call(msg::TLINK, Body::default().u32(0).u32(2).s(b"hard"))
        .unwrap();
    assert!(dir.join("hard").exists());
    g.call(msg::TUNLINKAT, Body::default().u32(3).s(b"moved").u32(0))
        .unwrap();
    assert_eq!(
        g.call(msg::TUNLINKAT, Body::default().u32(0).s(b"sub").u32(0)),
        Err(libc::EISDIR)
    );
    g.call(msg::TUNLINKAT, Body::default().u32(0).s(b"d").u32(0x200))
        .unwrap();
    assert!(!dir.join("d").exists());
    let fid = g_walk(&mut g, 4, b"abs-link");
    let target = g.call(msg::TREADLINK, Body::default().u32(fid)).unwrap();
    assert_eq!(&target[2..], b"/etc");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hostile_requests_get_errors_and_caps_hold() {
    let dir = tree("hostile");
    let mut g = Guest::new(&dir, true);
    g.attach(0);
    // A size past the chain, or under the header: Rlerror.
    assert_eq!(
        g.raw(msg::TCLUNK, &[0; 4], Some(1 << 20), 4096).unwrap().0,
        msg::RLERROR
    );
    assert_eq!(
        g.raw(msg::TCLUNK, &[0; 4], Some(3), 4096).unwrap().0,
        msg::RLERROR
    );
    // No room for a reply: the chain goes back unused.
    assert_eq!(g.raw(msg::TCLUNK, &[0; 4], None, 4), None);
    // Bodies too short, unknown messages, fids not ours, a fid taken, a walk too long.
    assert_eq!(
        g.call(msg::TWALK, Body::default().u32(0)),
        Err(libc::EINVAL)
    );
    assert_eq!(
        g.call(msg::TWALK, Body::default().u32(0).u32(1).u16(1).u16(200)),
        Err(libc::EINVAL)
    );
    assert_eq!(g.call(250, Body::default()), Err(libc::EOPNOTSUPP));
    assert_eq!(g.read(77, 0, 10), Err(libc::EBADF));
    assert_eq!(g.lopen(0, libc::O_RDONLY as u32).map(|_| ()), Ok(()));
    assert_eq!(
        g.lopen(0, libc::O_RDONLY as u32),
        Err(libc::EBADF),
        "already open"
    );
    assert_eq!(g.read(0, 0, 10), Err(libc::EISDIR));
    assert_eq!(g.walk(0, 5, &[]), Ok(0));
    assert_eq!(g.walk(5, 5, &[b"sub"]), Ok(1), "a walk onto itself");
    assert_eq!(g.clunk(5), Ok(Vec::new()));
    assert_eq!(g.walk(0, 1, &[&b"sub"[..]; 17]), Err(libc::EINVAL));
    assert_eq!(g.walk(0, 1, &[b"hello.txt"]), Ok(1));
    assert_eq!(
        g.walk(0, 1, &[b"hello.txt"]),
        Err(libc::EBADF),
        "fid 1 is taken"
    );
    assert_eq!(
        g.call(
            msg::TATTACH,
            Body::default().u32(1).u32(!0).s(b"").s(b"").u32(0)
        ),
        Err(libc::EBADF)
    );
    // Tversion with a tiny msize is refused; an unknown version answers "unknown".
    assert_eq!(
        g.call(msg::TVERSION, Body::default().u32(100).s(b"9P2000.L")),
        Err(libc::EINVAL)
    );
    let v = g
        .call(msg::TVERSION, Body::default().u32(8192).s(b"9P2000"))
        .unwrap();
    assert_eq!(&v[6..], b"unknown");
    assert_eq!(g.server.fids(), 0, "a new version lets every fid go");
    g.attach(0);
    // Fids are capped, and the host's descriptors are not spent on them.
    for fid in 1..=MAX_FIDS as u32 {
        match g.walk(0, fid, &[]) {
            Ok(0) => {}
            Err(e) => {
                assert_eq!(e, libc::EMFILE);
                assert_eq!(fid as usize, MAX_FIDS);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(g.server.fids(), MAX_FIDS);
    assert_eq!(g.server.fs().inodes(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_device_offers_its_tag_and_one_queue() {
    let dir = tree("dev");
    let mut dev = P9::new(
        0,
        &ShareConfig {
            path: dir.clone(),
            tag: "hostshare".into(),
            read_only: true,
            protocol: crate::config::ShareProtocol::P9,
        },
    )
    .unwrap();
    assert_eq!(dev.device_type(), 9);
    assert_ne!(dev.features() & VIRTIO_9P_MOUNT_TAG, 0);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE]);
    let mut cfg = [0u8; 11];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..2], &9u16.to_le_bytes());
    assert_eq!(&cfg[2..], b"hostshare");
    let err = P9::new(
        3,
        &ShareConfig {
            path: dir.join("hello.txt"),
            tag: "x".into(),
            read_only: true,
            protocol: crate::config::ShareProtocol::P9,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("shares[3]") && err.contains("directory"),
        "{err}"
    );
    dev.reset();
    std::fs::remove_dir_all(&dir).unwrap();
}
