"""Guest-asset helpers: the initramfs writer and the vmlinux extraction."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess

import pytest
from vmm_reference.initramfs import build_initramfs
from vmm_reference.kernel_image import extract_vmlinux, lz4_legacy_decompress


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_initramfs_layout(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    out = build_initramfs(busybox, "#!/bin/sh\necho hi\n", tmp_path / "i.cpio.gz")
    entries = parse_newc(gzip.decompress(out.read_bytes()))
    assert entries["init"] == (0o100755, b"#!/bin/sh\necho hi\n")
    assert entries["bin/busybox"][1] == busybox.read_bytes()
    assert entries["dev/console"][0] == 0o020600
    assert entries["bin/sh"] == (0o120777, b"busybox")


@pytest.mark.skipif(not shutil.which("lz4"), reason="needs the lz4 tool to make test data")
def test_lz4_legacy_decoder_matches_the_tool(tmp_path):
    data = (b"abcabcabc" * 1000 + bytes(range(256)) * 50 + b"z" * 70000) * 3
    src = tmp_path / "d"
    src.write_bytes(data)
    subprocess.run(["lz4", "-l", "-q", "-f", str(src), str(tmp_path / "d.lz4")], check=True)
    assert lz4_legacy_decompress((tmp_path / "d.lz4").read_bytes()) == data


def test_extract_vmlinux_from_a_gzip_bzimage(tmp_path):
    elf = b"\x7fELF" + bytes(5000)
    payload = gzip.compress(elf)
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    struct.pack_into("<II", setup, 0x248, 16, len(payload))
    image = tmp_path / "bzImage"
    image.write_bytes(bytes(setup) + bytes(16) + payload)
    assert extract_vmlinux(image) == elf
    with pytest.raises(ValueError, match="not a bzImage"):
        extract_vmlinux(elf_file(tmp_path))


def elf_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x7fELF" + bytes(600))
    return p


def test_guest_assets_are_bootable_files(guest_assets):
    assert guest_assets.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert guest_assets.bzimage.read_bytes()[0x202:0x206] == b"HdrS"
    assert (guest_assets.modules / "kernel").is_dir()
    entries = parse_newc(gzip.decompress(guest_assets.initrd.read_bytes()))
    assert b"VMM-REFERENCE-GUEST-READY" in entries["init"][1]


def test_cache_list_verify_and_clear(tmp_path):
    from vmm_reference import assets

    entry = tmp_path / "linux-image-x_1"
    (entry / "boot").mkdir(parents=True)
    (entry / ".complete").touch()
    vmlinux, bz = entry / "vmlinux", entry / "boot" / "vmlinuz-x"
    vmlinux.write_bytes(b"\x7fELF" + bytes(1000))
    bz.write_bytes(b"bz" * 100)
    assets._record(entry, [vmlinux, bz])
    (tmp_path / "partial_2").mkdir()
    assert assets.listing(tmp_path) == [("linux-image-x_1", 1004 + 200 + (entry / "SHA256SUMS").stat().st_size, True),
                                        ("partial_2", 0, False)]
    assert assets.verify(tmp_path) == []
    vmlinux.write_bytes(b"\x7fELF" + bytes(999) + b"!")  # one byte changed
    bz.unlink()
    problems = assets.verify(tmp_path)
    assert problems == [f"{bz}: missing", f"{vmlinux}: sha256 differs from the one recorded when it was built"]
    assert assets.main(["verify", "--cache-dir", str(tmp_path)]) == 1
    assert assets.clear(tmp_path) > 0
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    assert assets.main(["verify", "--cache-dir", str(tmp_path)]) == 0
