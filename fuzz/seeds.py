"""Writes the fuzz targets' starting corpus (fuzz/corpus/TARGET/seed-*): small, hand-made
inputs that reach deep into each harness (see src/fuzzing.rs). Run: python3 fuzz/seeds.py"""

from __future__ import annotations

import struct
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"


def elf(paddr: int = 0x1000000, entry: int | None = None, size: int = 0x2000) -> bytes:
    """An ELF64 x86-64 executable with one PT_LOAD at `paddr`."""
    eh = bytearray(64)
    eh[0:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HHIQQQIHHHHHH", eh, 16, 2, 62, 1, paddr if entry is None else entry, 64, 0, 0, 64, 56, 1,
                     0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, paddr, paddr, size, size, 0x1000)
    return bytes(eh) + ph + b"\0" * (0x1000 - 120) + b"\xf4" * size


def bzimage(init_size: int = 0x100000, cmdline_size: int = 2047) -> bytes:
    """A bzImage: one setup sector, a 64-bit boot protocol 2.15 header, a small payload."""
    setup = bytearray(2 * 512)
    setup[0x1F1] = 1  # setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    setup[0x211] = 1  # loadflags: LOADED_HIGH
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<H", setup, 0x236, 1)  # xloadflags: XLF_KERNEL_64
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + b"\x90" * 4096


def virtio_memory(size_knob: int = 4, event_idx: int = 0) -> bytearray:
    """Guest memory with one virtio-blk read request made available (see src/fuzzing.rs)."""
    mem = bytearray(0x800)
    mem[0], mem[1] = size_knob, event_idx
    mem += bytearray(0xB000 - len(mem))
    descs = [(0x8000, 16, 1, 1), (0x9000, 512, 1 | 2, 2), (0xA000, 1, 2, 0)]  # header, data, status
    for i, (addr, length, flags, nxt) in enumerate(descs):
        struct.pack_into("<QIHH", mem, 0x1000 + 16 * i, addr, length, flags, nxt)
    struct.pack_into("<HHH", mem, 0x3000, 0, 1, 0)  # avail: flags, idx 1, ring[0] = 0
    struct.pack_into("<IIQ", mem, 0x8000, 0, 0, 0)  # VIRTIO_BLK_T_IN, sector 0
    return mem


def mmio_ops() -> bytes:
    """A driver's set-up of queue 0, DRIVER_OK, a notification and a request served."""
    def w(offset: int, value: int) -> bytes:
        return struct.pack("<BBI", 1, offset // 4, value)

    ops = [w(0x70, 1), w(0x70, 3), w(0x24, 1), w(0x20, 1), w(0x24, 0), w(0x20, 0), w(0x70, 11), w(0x30, 0),
           w(0x38, 16), w(0x80, 0x1000), w(0x84, 0), w(0x90, 0x3000), w(0x94, 0), w(0xA0, 0x4000), w(0xA4, 0),
           w(0x44, 1), w(0x70, 15), w(0x50, 0), struct.pack("<BBI", 3, 0, 0), struct.pack("<BBI", 0, 0x60 // 4, 0),
           w(0x64, 1), w(0x70, 0)]
    return b"".join(ops)


def pci_ops() -> bytes:
    """A virtio-pci driver's set-up (see src/fuzzing.rs): BAR sizing, MSI-X on, queue 0 with a
    vector, DRIVER_OK, a notification, a request served, the ISR read, a reset."""
    def cfg_w(offset: int, value: int, size: int = 4) -> bytes:
        return struct.pack("<BHIB", 1 | ({1: 0, 2: 1, 4: 2}[size] << 4), offset, value, 0)

    def bar_w(offset: int, value: int, size: int = 4) -> bytes:
        return struct.pack("<BHIB", 3 | ({1: 0, 2: 1, 4: 2}[size] << 4), offset, value, 0)

    def bar_r(offset: int, size: int = 4) -> bytes:
        return struct.pack("<BHIB", 2 | ({1: 0, 2: 1, 4: 2}[size] << 4), offset, 0, 0)

    ops = [cfg_w(0x10, 0xFFFFFFFF), struct.pack("<BHIB", 0x20, 0x10, 0, 0), cfg_w(0x10, 0xC0000000),
           cfg_w(0x42, 0x8000, 2), bar_w(0x4000, 0xFEE00000), bar_w(0x4008, 0x41), bar_w(0x400C, 0),
           bar_w(0x14, 1, 1), bar_w(0x14, 3, 1), bar_w(0x08, 1), bar_w(0x0C, 1), bar_w(0x08, 0), bar_w(0x0C, 0),
           bar_w(0x14, 11, 1), bar_w(0x16, 0, 2), bar_w(0x18, 16, 2), bar_w(0x1A, 0, 2), bar_w(0x20, 0x1000),
           bar_w(0x24, 0), bar_w(0x28, 0x3000), bar_w(0x2C, 0), bar_w(0x30, 0x4000), bar_w(0x34, 0),
           bar_w(0x1C, 1, 2), bar_w(0x14, 15, 1), bar_w(0x3000, 0, 2), struct.pack("<BHIB", 4, 0, 0, 0),
           bar_r(0x1000, 1), bar_r(0x6000), cfg_w(0x04, 0, 2), bar_w(0x14, 0, 1)]
    return b"".join(ops)


def vsock_memory() -> bytes:
    """Three vsock queues (see src/fuzzing.rs): a REQUEST then an RW packet from the guest on
    the transmit queue, two receive buffers."""
    mem = bytearray(0x19000)
    mem[0], mem[1] = 4, 0

    def header(op: int, length: int) -> bytes:  # src_cid, dst_cid, src_port, dst_port, len, type, op, flags, buf_alloc, fwd_cnt
        return struct.pack("<QQIIIHHIII", 3, 2, 1024, 5000, length, 1, op, 0, 65536, 0)

    rx, tx = 0x1000, 0x9000
    for i in range(2):  # receive buffers: one writable descriptor each
        struct.pack_into("<QIHH", mem, rx + 16 * i, 0x15000 + 0x1000 * i, 4096, 2, 0)
        struct.pack_into("<H", mem, rx + 0x2000 + 4 + 2 * i, i)
    struct.pack_into("<HH", mem, rx + 0x2000, 0, 2)
    packets = [header(1, 0), header(5, 5) + b"hello"]  # OP_REQUEST, OP_RW
    for i, pkt in enumerate(packets):
        addr = 0x17000 + 0x400 * i
        mem[addr:addr + len(pkt)] = pkt
        struct.pack_into("<QIHH", mem, tx + 16 * i, addr, len(pkt), 0, 0)
        struct.pack_into("<H", mem, tx + 0x2000 + 4 + 2 * i, i)
    struct.pack_into("<HH", mem, tx + 0x2000, 0, 2)
    return bytes(mem)


def fuse(opcode: int, unique: int, nodeid: int, body: bytes) -> bytes:
    """A FUSE request: fuse_in_header, then ``body``."""
    return struct.pack("<IIQQIIIHH", 40 + len(body), opcode, unique, nodeid, 0, 0, 1, 0, 0) + body


def fs_memory(size_knob: int = 4) -> bytes:
    """Guest memory with FUSE requests on virtio-fs's request queue (INIT, LOOKUP, OPEN, READ,
    READDIR, a lookup of ``..`` and an unknown opcode) and a FORGET on its high-priority queue."""
    mem = bytearray(0x40000)
    mem[0] = size_knob
    read_in = struct.pack("<QQIIQII", 1, 0, 4096, 0, 0, 0, 0)
    requests = [fuse(26, 1, 0, struct.pack("<IIII", 7, 31, 0x20000, 0xFFFFFFFF)),
                fuse(1, 2, 1, b"hello.txt\0"), fuse(14, 3, 2, struct.pack("<II", 0, 0)),
                fuse(15, 4, 2, read_in), fuse(27, 5, 1, struct.pack("<II", 0, 0)),
                fuse(44, 6, 1, read_in), fuse(1, 7, 1, b"..\0"), fuse(9999, 8, 1, b"")]
    q = 0x9000  # the request queue: descriptors, avail ring at +0x2000
    for i, req in enumerate(requests):
        rd, wr = 0x14000 + 0x2000 * i, 0x15000 + 0x2000 * i
        mem[rd:rd + len(req)] = req
        struct.pack_into("<QIHH", mem, q + 32 * i, rd, len(req), 1, 2 * i + 1)
        struct.pack_into("<QIHH", mem, q + 32 * i + 16, wr, 0x1000, 2, 0)
        struct.pack_into("<H", mem, q + 0x2000 + 4 + 2 * i, 2 * i)
    struct.pack_into("<HH", mem, q + 0x2000, 0, len(requests))
    forget = fuse(2, 9, 2, struct.pack("<Q", 1))
    mem[0x13000:0x13000 + len(forget)] = forget
    struct.pack_into("<QIHH", mem, 0x1000, 0x13000, len(forget), 0, 0)
    struct.pack_into("<HHH", mem, 0x3000, 0, 1, 0)
    return bytes(mem)


def p9(kind: int, tag: int, body: bytes) -> bytes:
    """A 9P message: size[4] type[1] tag[2], then ``body``."""
    return struct.pack("<IBH", 7 + len(body), kind, tag) + body


def p9s(text: bytes) -> bytes:
    """A 9P string."""
    return struct.pack("<H", len(text)) + text


def p9_memory(size_knob: int = 5) -> bytes:
    """Guest memory with 9P2000.L messages on virtio-9p's queue: Tversion, Tattach, Twalk to
    hello.txt, Tlopen, Tread, Tgetattr, Twalk of ``..`` and through a link, Treaddir of the
    root, an unknown message and Tclunk."""
    mem = bytearray(0x40000)
    mem[0] = size_knob
    none = 0xFFFFFFFF
    requests = [p9(100, 0xFFFF, struct.pack("<I", 65536) + p9s(b"9P2000.L")),
                p9(104, 1, struct.pack("<II", 0, none) + p9s(b"") + p9s(b"") + struct.pack("<I", 0)),
                p9(110, 2, struct.pack("<IIH", 0, 1, 1) + p9s(b"hello.txt")),
                p9(12, 3, struct.pack("<II", 1, 0)),
                p9(116, 4, struct.pack("<IQI", 1, 0, 4096)),
                p9(24, 5, struct.pack("<IQ", 1, 0x7FF)),
                p9(110, 6, struct.pack("<IIH", 0, 2, 2) + p9s(b"..") + p9s(b"escape")),
                p9(110, 7, struct.pack("<IIH", 0, 3, 0)),
                p9(12, 8, struct.pack("<II", 3, 0o200000)),
                p9(40, 9, struct.pack("<IQI", 3, 0, 512)),
                p9(250, 10, b""),
                p9(120, 11, struct.pack("<I", 1))]
    q = 0x1000  # the queue: descriptors, avail ring at +0x2000
    for i, req in enumerate(requests):
        rd, wr = 0x14000 + 0x2000 * i, 0x15000 + 0x2000 * i
        mem[rd:rd + len(req)] = req
        struct.pack_into("<QIHH", mem, q + 32 * i, rd, len(req), 1, 2 * i + 1)
        struct.pack_into("<QIHH", mem, q + 32 * i + 16, wr, 0x1000, 2, 0)
        struct.pack_into("<H", mem, q + 0x2000 + 4 + 2 * i, 2 * i)
    struct.pack_into("<HH", mem, q + 0x2000, 0, len(requests))
    return bytes(mem)


def main() -> None:
    seeds = {
        "kernel_image": [elf(), elf(entry=0x7000), bzimage(), bzimage(init_size=0xFFFF0000),
                         bzimage(cmdline_size=0xFFFFFFFF), b"\x7fELF\x01" + b"\0" * 60, b"MZ" + b"\0" * 600],
        "cmdline": [b"\x00\x08console=ttyS0 quiet", b"\x10\x00reboot=k panic=-1", b"\xff\xffroot=/dev/vda \xc3\xa9",
                    b"\x05\x00longer than five"],
        "legacy_devices": [bytes([0, 1, 3, 0x80, 0, 1, 0, 0x0C, 0, 1, 3, 0x03, 0, 1, 0, ord("x"), 0, 0, 5, 0, 0, 0, 0, 0]),
                           bytes([1, 1, 4, 0xFE, 1, 0, 0, 0, 1, 1, 4, 0x20, 1, 0, 0, 0]),
                           bytes([2, 3, 2, 0x01, 2, 5, 4, 0x34, 2, 0, 0, 0, 3, 5, 0, 7, 4, 1, 0, 9])],
        "virtio_block": [bytes(virtio_memory()), bytes(virtio_memory(8, 1)), bytes(virtio_memory(0))],
        "virtio_vsock": [vsock_memory()],
        "virtio_fs": [fs_memory(), fs_memory(8)],
        "virtio_9p": [p9_memory(), p9_memory(8)],
        "virtio_mmio": [bytes(virtio_memory()[:0x800]) + mmio_ops() + bytes(virtio_memory()[0x800 + len(mmio_ops()):])],
        "virtio_pci": [bytes(virtio_memory()[:0x800]) + pci_ops() + bytes(virtio_memory()[0x800 + len(pci_ops()):])],
    }
    # snapshot_state's seeds are not made here: seed-0 is the body and seed-1 the whole state
    # file of a real snapshot (a 2-vCPU probe VM with a disk, `probe.end=tick`), as
    # `vm.snapshot()` writes it, seed-2 and seed-3 the same of a VM with transport="pci" and
    # rng=True (PCI config space, MSI-X table, vectors); remake them the same way when the
    # format version changes.
    for target, inputs in seeds.items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(inputs):
            (d / f"seed-{i}").write_bytes(data)


if __name__ == "__main__":
    main()
