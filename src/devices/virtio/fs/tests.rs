//! The device through its request queue: FUSE requests in guest memory, replies read back.

use super::fuse::{op, IN_HEADER_LEN, OUT_HEADER_LEN};
use super::*;
use crate::devices::virtio::testing::{activate, ring};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where request `n`'s buffers go: readable at 0x40000 + n * 0x8000, writable 0x4000 after.
fn bufs(n: u16) -> (u64, u64) {
    let base = 0x40000 + 0x8000 * u64::from(n % 16);
    (base, base + 0x4000)
}

/// Posts request `n` on queue `q`: `request` readable, then `reply_len` writable bytes
/// (none: no writable descriptor).
fn post(mem: &GuestMemoryMmap, q: usize, n: u16, request: &[u8], reply_len: u32) {
    let (desc, avail, _) = ring(q);
    let (rd, wr) = bufs(n);
    mem.write_slice(request, GuestAddress(rd)).unwrap();
    let slot = 2 * (n % 64);
    let d = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        b
    };
    let first = if reply_len > 0 {
        d(rd, request.len() as u32, 1, slot + 1) // NEXT
    } else {
        d(rd, request.len() as u32, 0, 0)
    };
    mem.write_slice(&first, GuestAddress(desc + 16 * u64::from(slot)))
        .unwrap();
    if reply_len > 0 {
        mem.write_slice(
            &d(wr, reply_len, 2, 0),
            GuestAddress(desc + 16 * u64::from(slot + 1)),
        )
        .unwrap();
    }
    mem.write_obj(slot, GuestAddress(avail + 4 + 2 * u64::from(n)))
        .unwrap();
    mem.write_obj(n + 1, GuestAddress(avail + 2)).unwrap();
}

fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&((IN_HEADER_LEN + body.len()) as u32).to_le_bytes());
    r.extend_from_slice(&opcode.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&[0u8; 16]);
    r.extend_from_slice(body);
    r
}

/// The used length of entry `n` on queue `q` and the reply's (error, body).
fn reply(mem: &GuestMemoryMmap, q: usize, n: u16) -> (u32, i32, Vec<u8>) {
    let (_, _, used) = ring(q);
    let len: u32 = mem
        .read_obj(GuestAddress(used + 4 + 8 * u64::from(n) + 4))
        .unwrap();
    let (_, wr) = bufs(n);
    if len < OUT_HEADER_LEN as u32 {
        return (len, 0, Vec::new());
    }
    let error: i32 = mem.read_obj(GuestAddress(wr + 4)).unwrap();
    let mut body = vec![0u8; len as usize - OUT_HEADER_LEN];
    mem.read_slice(&mut body, GuestAddress(wr + OUT_HEADER_LEN as u64))
        .unwrap();
    (len, error, body)
}

fn init_body() -> Vec<u8> {
    let mut b = Vec::new();
    for v in [7u32, 31, 0x20000, u32::MAX] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn share() -> (std::path::PathBuf, Fs) {
    let dir = std::env::temp_dir().join(format!("vmm-fsdev-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello from the host\n").unwrap();
    let fs = Fs::new(
        0,
        &ShareConfig {
            path: dir.clone(),
            tag: "src".into(),
            read_only: true,
            protocol: Default::default(),
        },
    )
    .unwrap();
    (dir, fs)
}

#[test]
fn the_guest_mounts_looks_up_and_reads_through_the_request_queue() {
    let (dir, mut fs) = share();
    let mut tag = [0u8; 8];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..4], b"src\0");
    let mut nq = [0u8; 4];
    fs.read_config(TAG_LEN as u64, &mut nq);
    assert_eq!(u32::from_le_bytes(nq), 1);
    let mem = activate(&mut fs, 64);

    // Before INIT nothing is served.
    post(&mem, 1, 0, &request(op::GETATTR, 1, 1, &[0; 16]), 4096);
    fs.process_queue(1);
    assert_eq!(reply(&mem, 1, 0).1, -libc::EIO);

    post(&mem, 1, 1, &request(op::INIT, 2, 0, &init_body()), 4096);
    fs.process_queue(1);
    let (_, error, body) = reply(&mem, 1, 1);
    assert_eq!(error, 0);
    assert_eq!(&body[..8], &[7, 0, 0, 0, 31, 0, 0, 0]);
    assert_eq!(body.len(), 64);

    post(&mem, 1, 2, &request(op::LOOKUP, 3, 1, b"hello.txt\0"), 4096);
    fs.process_queue(1);
    let (_, error, body) = reply(&mem, 1, 2);
    assert_eq!(error, 0);
    let node = u64::from_le_bytes(body[..8].try_into().unwrap());
    let size = u64::from_le_bytes(body[48..56].try_into().unwrap());
    assert_eq!(size, 20);

    post(&mem, 1, 3, &request(op::OPEN, 4, node, &[0; 8]), 4096);
    fs.process_queue(1);
    let (_, error, body) = reply(&mem, 1, 3);
    assert_eq!(error, 0);
    let fh = &body[..8];
    let mut read_in = fh.to_vec();
    read_in.extend_from_slice(&0u64.to_le_bytes());
    read_in.extend_from_slice(&4096u32.to_le_bytes());
    read_in.extend_from_slice(&[0u8; 20]);
    post(&mem, 1, 4, &request(op::READ, 5, node, &read_in), 4096);
    fs.process_queue(1);
    let (len, error, body) = reply(&mem, 1, 4);
    assert_eq!((len, error), (OUT_HEADER_LEN as u32 + 20, 0));
    assert_eq!(body, b"hello from the host\n");
    assert_eq!(fs.counters()[1], ("bytes_read", 20));

    // Read-only on the host: a write-open is refused.
    post(
        &mem,
        1,
        5,
        &request(op::OPEN, 6, node, &[1, 0, 0, 0, 0, 0, 0, 0]),
        4096,
    );
    fs.process_queue(1);
    assert_eq!(reply(&mem, 1, 5).1, -libc::EROFS);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hostile_requests_get_errors_or_go_back_unused() {
    let (dir, mut fs) = share();
    let mem = activate(&mut fs, 64);
    post(&mem, 1, 0, &request(op::INIT, 1, 0, &init_body()), 4096);
    fs.process_queue(1);
    // A header claiming more than the chain has.
    let mut long = request(op::LOOKUP, 2, 1, b"hello.txt\0");
    long[..4].copy_from_slice(&4096u32.to_le_bytes());
    post(&mem, 1, 1, &long, 4096);
    // Shorter than its own header.
    let mut short = request(op::LOOKUP, 3, 1, b"hello.txt\0");
    short[..4].copy_from_slice(&8u32.to_le_bytes());
    post(&mem, 1, 2, &short, 4096);
    // An opcode we do not serve, a name without its NUL, a reply that does not fit.
    post(&mem, 1, 3, &request(9999, 4, 1, &[]), 4096);
    post(&mem, 1, 4, &request(op::LOOKUP, 5, 1, b"hello.txt"), 4096);
    post(&mem, 1, 5, &request(op::LOOKUP, 6, 1, b"hello.txt\0"), 8);
    post(&mem, 1, 6, &request(op::LOOKUP, 7, 1, b"hello.txt\0"), 0);
    fs.process_queue(1);
    assert_eq!(reply(&mem, 1, 1).1, -libc::EINVAL);
    assert_eq!(reply(&mem, 1, 2).1, -libc::EINVAL);
    assert_eq!(reply(&mem, 1, 3).1, -libc::ENOSYS);
    assert_eq!(reply(&mem, 1, 4).1, -libc::EINVAL);
    assert_eq!(
        reply(&mem, 1, 5).0,
        0,
        "no room for the reply: returned unused"
    );
    assert_eq!(reply(&mem, 1, 6).0, 0);
    // FORGET on the high-priority queue has no reply.
    post(
        &mem,
        0,
        0,
        &request(op::FORGET, 8, 2, &5u64.to_le_bytes()),
        0,
    );
    fs.process_queue(0);
    assert_eq!(reply(&mem, 0, 0).0, 0);
    let _ = std::fs::remove_dir_all(dir);
}
