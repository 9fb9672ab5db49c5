//! The file system on a real temporary directory: what the guest can reach and change.

use super::*;
use std::os::unix::fs::symlink;

struct Tree {
    base: std::path::PathBuf,
}

impl Tree {
    /// `base/share` with a file, a directory, links out of it; `base/outside-secret` beside.
    fn new(name: &str) -> Tree {
        let base = std::env::temp_dir().join(format!("vmm-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("share/dir")).unwrap();
        std::fs::write(base.join("share/hello.txt"), b"hello\n").unwrap();
        std::fs::write(base.join("share/dir/inner.txt"), b"inner\n").unwrap();
        std::fs::write(base.join("outside-secret"), b"secret\n").unwrap();
        symlink("/etc", base.join("share/escape")).unwrap();
        symlink("../outside-secret", base.join("share/up")).unwrap();
        Tree { base }
    }

    fn share(&self) -> std::path::PathBuf {
        self.base.join("share")
    }

    fn fs(&self, read_only: bool) -> Passthrough {
        Passthrough::new(&self.share(), read_only).unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn read_all(fs: &Passthrough, fh: u64) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut f = fs.handle(fh).unwrap().file.try_clone().unwrap();
    f.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn lookups_stay_inside_the_share() {
    let t = Tree::new("lookup");
    let mut fs = t.fs(false);
    let (hello, st) = fs.lookup(ROOT, b"hello.txt").unwrap();
    assert_eq!(st.st_size, 6);
    let fh = fs.open(hello, libc::O_RDONLY as u32, false).unwrap();
    assert_eq!(read_all(&fs, fh), b"hello\n");
    // The same inode is the same node id.
    assert_eq!(fs.lookup(ROOT, b"hello.txt").unwrap().0, hello);
    // A name is one component.
    assert_eq!(
        fs.lookup(ROOT, b"../outside-secret").unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(fs.lookup(ROOT, b"dir/inner.txt").unwrap_err(), libc::EINVAL);
    assert_eq!(fs.lookup(ROOT, b"").unwrap_err(), libc::EINVAL);
    assert_eq!(
        fs.lookup(ROOT, &[b'a'; 256]).unwrap_err(),
        libc::ENAMETOOLONG
    );
    // The root's parent is the root; a directory's parent only one the guest holds.
    assert_eq!(fs.lookup(ROOT, b"..").unwrap().0, ROOT);
    let (dir, _) = fs.lookup(ROOT, b"dir").unwrap();
    assert_eq!(fs.lookup(dir, b"..").unwrap().0, ROOT);
    assert_eq!(fs.lookup(dir, b".").unwrap().0, dir);
    // Links are inodes of their own, never followed, never opened.
    let (esc, st) = fs.lookup(ROOT, b"escape").unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(fs.readlink(esc).unwrap(), b"/etc");
    assert_eq!(
        fs.open(esc, libc::O_RDONLY as u32, false).unwrap_err(),
        libc::ELOOP
    );
    assert_eq!(fs.open(esc, 0, true).unwrap_err(), libc::ENOTDIR);
    assert_eq!(fs.lookup(esc, b"passwd").unwrap_err(), libc::ENOTDIR);
    let (up, _) = fs.lookup(ROOT, b"up").unwrap();
    assert_eq!(
        fs.open(up, libc::O_RDONLY as u32, false).unwrap_err(),
        libc::ELOOP
    );
    // Node ids and handles that are not ours.
    assert_eq!(fs.getattr(0xdead_beef).unwrap_err(), libc::ENOENT);
    assert_eq!(fs.lookup(0xdead_beef, b"x").unwrap_err(), libc::ENOENT);
    assert_eq!(fs.release(0xdead_beef).unwrap_err(), libc::EBADF);
    assert_eq!(fs.lookup(hello, b"x").unwrap_err(), libc::ENOTDIR);
}

#[test]
fn a_directory_moved_out_of_reach_gives_no_parent() {
    let t = Tree::new("moved");
    let mut fs = t.fs(false);
    let (dir, _) = fs.lookup(ROOT, b"dir").unwrap();
    // The host moves the directory out of the share while the guest holds it: its ".." is
    // no inode the guest holds.
    std::fs::rename(t.share().join("dir"), t.base.join("moved")).unwrap();
    assert_eq!(fs.lookup(dir, b"..").unwrap_err(), libc::ENOENT);
}

#[test]
fn read_only_is_enforced_on_the_host() {
    let t = Tree::new("ro");
    let mut fs = t.fs(true);
    let (hello, _) = fs.lookup(ROOT, b"hello.txt").unwrap();
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(
            fs.open(hello, flags as u32, false).unwrap_err(),
            libc::EROFS
        );
    }
    assert_eq!(
        fs.create(ROOT, b"new", 0o644, libc::O_WRONLY as u32)
            .unwrap_err(),
        libc::EROFS
    );
    assert_eq!(fs.mkdir(ROOT, b"d", 0o755).unwrap_err(), libc::EROFS);
    assert_eq!(
        fs.unlink(ROOT, b"hello.txt", false).unwrap_err(),
        libc::EROFS
    );
    assert_eq!(
        fs.rename(ROOT, b"hello.txt", ROOT, b"x", 0).unwrap_err(),
        libc::EROFS
    );
    assert_eq!(fs.link(hello, ROOT, b"hl").unwrap_err(), libc::EROFS);
    assert_eq!(fs.symlink(ROOT, b"s", b"/").unwrap_err(), libc::EROFS);
    let set = SetAttr {
        valid: crate::devices::virtio::fs::fuse::fattr::SIZE,
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(hello, &set).unwrap_err(), libc::EROFS);
    assert_eq!(
        std::fs::read(t.share().join("hello.txt")).unwrap(),
        b"hello\n"
    );
    assert!(!t.share().join("new").exists());
}

#[test]
fn changes_land_in_the_share_without_set_id_bits_or_devices() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new("rw");
    let mut fs = t.fs(false);
    let (file, _, fh) = fs
        .create(
            ROOT,
            b"new.txt",
            0o4755,
            (libc::O_WRONLY | libc::O_CREAT) as u32,
        )
        .unwrap();
    use std::io::Write;
    fs.handle(fh)
        .unwrap()
        .file
        .try_clone()
        .unwrap()
        .write_all(b"guest\n")
        .unwrap();
    fs.release(fh).unwrap();
    let mode = std::fs::metadata(t.share().join("new.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o6000, 0, "no set-user-ID bit on the host: {mode:o}");
    let (dir, _) = fs.mkdir(ROOT, b"newdir", 0o2755).unwrap();
    fs.rename(ROOT, b"new.txt", dir, b"moved.txt", 0).unwrap();
    assert_eq!(
        std::fs::read(t.share().join("newdir/moved.txt")).unwrap(),
        b"guest\n"
    );
    let (hl, st) = fs.link(file, ROOT, b"hl").unwrap();
    assert_eq!(
        (hl, st.st_nlink),
        (file, 2),
        "a hard link is the same inode"
    );
    let set = SetAttr {
        valid: setattr::fattr::MODE,
        mode: 0o6777,
        ..SetAttr::default()
    };
    assert_eq!(fs.setattr(file, &set).unwrap().st_mode & 0o7777, 0o777);
    assert_eq!(
        fs.mknod(ROOT, b"dev", libc::S_IFCHR | 0o666).unwrap_err(),
        libc::EPERM
    );
    assert!(fs.mknod(ROOT, b"fifo", libc::S_IFIFO | 0o644).is_ok());
    // A name that is a link is not followed by create.
    assert!(fs
        .create(ROOT, b"up", 0o644, libc::O_WRONLY as u32)
        .is_err());
    assert_eq!(
        std::fs::read(t.base.join("outside-secret")).unwrap(),
        b"secret\n"
    );
    fs.unlink(ROOT, b"hl", false).unwrap();
    assert_eq!(fs.unlink(ROOT, b"..", false).unwrap_err(), libc::EINVAL);
    assert_eq!(
        fs.rename(ROOT, b"hello.txt", ROOT, b"x", libc::RENAME_WHITEOUT)
            .unwrap_err(),
        libc::EINVAL
    );
}

#[test]
fn inodes_and_handles_are_capped_and_forgotten() {
    let t = Tree::new("caps");
    let mut fs = t.fs(false);
    let (hello, _) = fs.lookup(ROOT, b"hello.txt").unwrap();
    let mut handles = Vec::new();
    loop {
        match fs.open(hello, libc::O_RDONLY as u32, false) {
            Ok(fh) => handles.push(fh),
            Err(e) => {
                assert_eq!(e, libc::EMFILE);
                break;
            }
        }
        assert!(handles.len() <= MAX_HANDLES);
    }
    assert_eq!(handles.len(), MAX_HANDLES);
    for fh in handles {
        fs.release(fh).unwrap();
    }
    assert_eq!(fs.open_handles(), 0);
    fs.lookup(ROOT, b"hello.txt").unwrap();
    assert_eq!(fs.inodes(), 2);
    fs.forget(hello, 1);
    assert_eq!(fs.inodes(), 2, "one lookup is left");
    fs.forget(hello, 5);
    assert_eq!(fs.inodes(), 1);
    fs.forget(ROOT, 10);
    assert_eq!(fs.inodes(), 1, "the root stays");
    fs.lookup(ROOT, b"dir").unwrap();
    fs.reset();
    assert_eq!(fs.inodes(), 1);
}

#[test]
fn the_hosts_kernel_file_systems_are_mount_points_only() {
    let mut fs = Passthrough::new(Path::new("/"), true).unwrap();
    let (proc_, st) = fs.lookup(ROOT, b"proc").unwrap();
    assert_eq!(
        st.st_mode & libc::S_IFMT,
        libc::S_IFDIR,
        "the guest can mount over it"
    );
    assert_eq!(fs.lookup(proc_, b"self").unwrap_err(), libc::EACCES);
    assert_eq!(fs.open(proc_, 0, true).unwrap_err(), libc::EACCES);
    let (sys, _) = fs.lookup(ROOT, b"sys").unwrap();
    assert_eq!(fs.lookup(sys, b"kernel").unwrap_err(), libc::EACCES);
    // Ordinary directories of the host's root are served.
    let (etc, _) = fs.lookup(ROOT, b"etc").unwrap();
    assert!(fs.lookup(etc, b"hostname").is_ok() || fs.lookup(etc, b"passwd").is_ok());
}
