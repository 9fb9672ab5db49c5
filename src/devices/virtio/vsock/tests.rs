use super::*;
use std::io::Read;
use std::os::unix::net::UnixListener;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};

const SIZE: u16 = 16;
// Queue i's rings at testing::ring(i); tx buffers at 0x40000, rx buffers at 0x80000.
use crate::devices::virtio::testing::ring;

struct Driver {
    mem: Arc<GuestMemoryMmap>,
    avail: [u16; 3],
    used_seen: [u16; 3],
}

impl Driver {
    fn start(dev: &mut Vsock) -> Driver {
        let mem = crate::devices::virtio::testing::activate(dev, SIZE);
        Driver {
            mem,
            avail: [0; 3],
            used_seen: [0; 3],
        }
    }

    /// Puts a one-descriptor chain at slot `avail % SIZE` of queue `q`.
    fn give(&mut self, q: usize, addr: u64, len: u32, write: bool) {
        let (d, a, _) = ring(q);
        let slot = self.avail[q] % SIZE;
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&addr.to_le_bytes());
        desc[8..12].copy_from_slice(&len.to_le_bytes());
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        desc[12..14].copy_from_slice(&flags.to_le_bytes());
        self.mem
            .write_slice(&desc, GuestAddress(d + 16 * u64::from(slot)))
            .unwrap();
        self.mem
            .write_obj(slot, GuestAddress(a + 4 + 2 * u64::from(slot)))
            .unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], GuestAddress(a + 2))
            .unwrap();
    }

    fn send(&mut self, dev: &mut Vsock, h: Header, payload: &[u8]) {
        let at = 0x40000 + 0x1000 * u64::from(self.avail[TXQ] % SIZE);
        let h = Header {
            len: payload.len() as u32,
            ..h
        };
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + HDR_LEN as u64))
            .unwrap();
        self.give(TXQ, at, (HDR_LEN + payload.len()) as u32, false);
        dev.process_queue(TXQ);
    }

    /// Gives the device receive buffers, lets it fill them; returns what it sent.
    fn receive(&mut self, dev: &mut Vsock) -> Vec<(Header, Vec<u8>)> {
        for _ in 0..4 {
            let at = 0x80000 + 0x2000 * u64::from(self.avail[RXQ] % SIZE);
            self.give(RXQ, at, 0x1000 + HDR_LEN as u32, true);
        }
        dev.process_queue(RXQ);
        let (_, _, u) = ring(RXQ);
        let idx: u16 = self.mem.read_obj(GuestAddress(u + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen[RXQ] != idx {
            let slot = u64::from(self.used_seen[RXQ] % SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(u + 4 + 8 * slot)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(u + 8 + 8 * slot)).unwrap();
            let (d, _, _) = ring(RXQ);
            let addr: u64 = self
                .mem
                .read_obj(GuestAddress(d + 16 * u64::from(id)))
                .unwrap();
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let mut payload = vec![0u8; len as usize - HDR_LEN];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            out.push((Header::from_bytes(&raw), payload));
            self.used_seen[RXQ] = self.used_seen[RXQ].wrapping_add(1);
        }
        // Buffers not used were given back: forget them.
        self.avail[RXQ] = self.used_seen[RXQ];
        let (_, a, _) = ring(RXQ);
        self.mem
            .write_obj(self.avail[RXQ], GuestAddress(a + 2))
            .unwrap();
        out
    }
}

fn temp_uds(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-ref-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("v.sock")
}

fn guest(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..Header::default()
    }
}

#[test]
fn guest_connects_to_a_host_listener_and_data_flows_both_ways() {
    let uds = temp_uds("out");
    let mut dev = Vsock::new(&VsockConfig {
        cid: 3,
        uds: uds.clone(),
    })
    .unwrap();
    let mut drv = Driver::start(&mut dev);
    let host = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    drv.send(&mut dev, guest(OP_REQUEST, 777, 5000), &[]);
    let got = drv.receive(&mut dev);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (OP_RESPONSE, 5000, 777)
    );
    assert_eq!(got[0].0.buf_alloc, CONN_BUF);
    let (mut conn, _) = host.accept().unwrap();
    drv.send(&mut dev, guest(OP_RW, 777, 5000), b"hello host");
    let mut buf = [0u8; 10];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello host");
    // The host answers: once the socket is seen readable, the guest gets the bytes.
    conn.write_all(b"hi guest").unwrap();
    let token = dev.conns[&(5000, 777)].token;
    dev.conn_event(token, EventSet::IN);
    let got = drv.receive(&mut dev);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].1.as_slice()),
        (OP_RW, &b"hi guest"[..])
    );
    assert_eq!(
        got[0].0.fwd_cnt, 10,
        "the host consumed the guest's 10 bytes"
    );
    // The host closes: the guest is told both directions are shut.
    drop(conn);
    dev.conn_event(token, EventSet::IN | EventSet::HANG_UP);
    let got = drv.receive(&mut dev);
    assert_eq!(
        (got[0].0.op, got[0].0.flags),
        (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    drv.send(&mut dev, guest(OP_RST, 777, 5000), &[]);
    assert_eq!(dev.connections(), 0);
    let _ = std::fs::remove_dir_all(uds.parent().unwrap());
}

#[test]
fn a_guest_keeping_the_transmit_queue_full_cannot_hold_the_loop() {
    // Spoofed packets (dropped early, without an answer) in every slot: however many the
    // guest keeps offering, one call serves a batch and says more is left, so the event
    // loop's other work (stopping, pausing, other devices) comes in between.
    let uds = temp_uds("flood");
    let mut dev = Vsock::new(&VsockConfig {
        cid: 3,
        uds: uds.clone(),
    })
    .unwrap();
    dev.batch = 4;
    let mut drv = Driver::start(&mut dev);
    for slot in 0..SIZE {
        let at = 0x40000 + 0x1000 * u64::from(slot);
        let h = Header {
            src_cid: 9,
            ..guest(OP_REQUEST, 1, 5001)
        };
        drv.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        drv.give(TXQ, at, HDR_LEN as u32, false);
    }
    let (_, _, used) = ring(TXQ);
    for round in 1..=4u16 {
        dev.process_queue(TXQ);
        let done: u16 = drv.mem.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(done, 4 * round, "one batch per call");
        assert!(dev.tx_more, "round {round}");
    }
    // A full batch says "more" even when it happened to take the last chain; the next
    // call finds nothing.
    dev.process_queue(TXQ);
    assert!(!dev.tx_more);
    // Receive buffers shorter than a header while control packets wait: bounded too.
    for i in 0..8u32 {
        dev.push((1, i), OP_RST, 0);
    }
    for _ in 0..SIZE {
        drv.give(RXQ, 0x80000, 8, true);
    }
    dev.process_queue(RXQ);
    assert!(dev.rx_more, "the receive loop must stop after a batch");
}

#[test]
fn refused_ports_and_spoofed_or_broken_packets() {
    let uds = temp_uds("bad");
    let mut dev = Vsock::new(&VsockConfig {
        cid: 3,
        uds: uds.clone(),
    })
    .unwrap();
    let mut drv = Driver::start(&mut dev);
    drv.send(&mut dev, guest(OP_REQUEST, 1, 5001), &[]);
    // Not from this guest, not to the host: dropped without an answer.
    drv.send(
        &mut dev,
        Header {
            src_cid: 9,
            ..guest(OP_REQUEST, 2, 5001)
        },
        &[],
    );
    drv.send(
        &mut dev,
        Header {
            dst_cid: 7,
            ..guest(OP_REQUEST, 3, 5001)
        },
        &[],
    );
    // Data on no connection, an unknown op, a datagram type: reset.
    drv.send(&mut dev, guest(OP_RW, 4, 5001), b"x");
    drv.send(&mut dev, guest(99, 5, 5001), &[]);
    drv.send(
        &mut dev,
        Header {
            type_: 2,
            ..guest(OP_REQUEST, 6, 5001)
        },
        &[],
    );
    let got = drv.receive(&mut dev);
    let ports: Vec<(u16, u32)> = got.iter().map(|(h, _)| (h.op, h.dst_port)).collect();
    assert_eq!(
        ports,
        vec![(OP_RST, 1), (OP_RST, 4), (OP_RST, 5), (OP_RST, 6)]
    );
    // A header claiming more payload than the buffer holds.
    let at = 0x40000;
    let h = Header {
        len: 5000,
        ..guest(OP_RW, 8, 5001)
    };
    drv.mem
        .write_slice(&h.to_bytes(), GuestAddress(at))
        .unwrap();
    drv.give(TXQ, at, HDR_LEN as u32 + 10, false);
    dev.process_queue(TXQ);
    assert_eq!(drv.receive(&mut dev)[0].0.op, OP_RST);
    assert_eq!(dev.connections(), 0);
    let _ = std::fs::remove_dir_all(uds.parent().unwrap());
}

#[test]
fn host_program_connects_with_the_firecracker_protocol_and_credit_bounds_reads() {
    let uds = temp_uds("in");
    let mut dev = Vsock::new(&VsockConfig {
        cid: 3,
        uds: uds.clone(),
    })
    .unwrap();
    let mut drv = Driver::start(&mut dev);
    let mut client = UnixStream::connect(&uds).unwrap();
    dev.accept();
    client.write_all(b"CONNECT 52\n").unwrap();
    let token = *dev.tokens.keys().next().unwrap();
    dev.conn_event(token, EventSet::IN);
    let got = drv.receive(&mut dev);
    let req = got[0].0;
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 52, 3));
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    // The guest accepts with only 100 bytes of credit.
    let accept = Header {
        buf_alloc: 100,
        ..guest(OP_RESPONSE, 52, req.src_port)
    };
    drv.send(&mut dev, accept, &[]);
    let mut ok = [0u8; 14];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(ok, *format!("OK {}\n", req.src_port).as_bytes());
    // The program sends 1000 bytes: the guest gets 100, then nothing until it has read.
    client.write_all(&[7u8; 1000]).unwrap();
    let key = (req.src_port, 52);
    dev.conn_event(dev.conns[&key].token, EventSet::IN);
    let got = drv.receive(&mut dev);
    assert_eq!(got.iter().map(|(_, p)| p.len()).sum::<usize>(), 100);
    assert!(drv.receive(&mut dev).is_empty());
    let update = Header {
        buf_alloc: 100,
        fwd_cnt: 100,
        ..guest(OP_CREDIT_UPDATE, 52, req.src_port)
    };
    drv.send(&mut dev, update, &[]);
    let got = drv.receive(&mut dev);
    assert_eq!(got.iter().map(|(_, p)| p.len()).sum::<usize>(), 100);
    let _ = std::fs::remove_dir_all(uds.parent().unwrap());
}
