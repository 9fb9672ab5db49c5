"""Reading Linux kernel images: turning a bzImage into the ELF vmlinux inside it."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Union

__all__ = ["extract_vmlinux", "lz4_legacy_decompress"]

_LZ4_LEGACY_MAGIC = 0x184C2102


def lz4_legacy_decompress(data: bytes) -> bytes:
    """Decompress the LZ4 "legacy" frame format the kernel's build uses (pure Python).

    Trailing bytes after the last block (the kernel appends the uncompressed size) are
    ignored.
    """
    if struct.unpack_from("<I", data, 0)[0] != _LZ4_LEGACY_MAGIC:
        raise ValueError("not an LZ4 legacy stream")
    out = bytearray()
    pos = 4
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if size == _LZ4_LEGACY_MAGIC:  # concatenated stream
            pos += 4
            continue
        pos += 4
        if size == 0 or pos + size > len(data) or size > 8 << 20:
            break
        _lz4_block(data, pos, pos + size, out)
        pos += size
    return bytes(out)


def _lz4_length(src: bytes, i: int, n: int) -> tuple[int, int]:
    """Extend a 4-bit length field of 15 by the 255-terminated bytes at ``src[i:]``."""
    if n == 15:
        while True:
            b = src[i]
            i += 1
            n += b
            if b != 255:
                break
    return n, i


def _lz4_block(src: bytes, i: int, end: int, out: bytearray) -> None:
    while i < end:
        token = src[i]
        lit, i = _lz4_length(src, i + 1, token >> 4)
        out += src[i:i + lit]
        i += lit
        if i >= end:
            return
        offset = src[i] | (src[i + 1] << 8)
        n, i = _lz4_length(src, i + 2, token & 15)
        n += 4
        start = len(out) - offset
        if offset >= n:
            out += out[start:start + n]
        else:
            while n > 0:
                chunk = out[start:start + min(n, offset)]
                out += chunk
                n -= len(chunk)


def _run(tool: str, args: list[str], data: bytes) -> bytes:
    # The kernel appends its uncompressed size after the stream, which the tools report as
    # trailing garbage after writing everything: the output, not the exit code, decides.
    return subprocess.run([tool, *args], input=data, capture_output=True, check=False).stdout


def _decompress(payload: bytes) -> bytes:
    if payload[:2] == b"\x1f\x8b":
        return gzip.decompress(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(payload, format=lzma.FORMAT_XZ)
    if payload[:3] == b"BZh":
        return bz2.decompress(payload)
    if payload[:3] == b"\x5d\x00\x00":
        return lzma.decompress(payload, format=lzma.FORMAT_ALONE)
    if payload[:4] == b"\x02\x21\x4c\x18":
        lz4 = shutil.which("lz4")
        if lz4:
            return _run(lz4, ["-dc"], payload)
        return lz4_legacy_decompress(payload)
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        zstd = shutil.which("zstd")
        if not zstd:
            raise ValueError("the kernel is zstd-compressed: install zstd to extract it")
        return _run(zstd, ["-dcq"], payload)
    raise ValueError(f"unknown kernel compression (magic {payload[:4].hex()})")


def extract_vmlinux(bzimage: Union[str, Path]) -> bytes:
    """Return the ELF vmlinux compressed inside ``bzimage``.

    The payload is located through the setup header (``payload_offset``/``payload_length``,
    boot protocol 2.08+) and decompressed by its magic number: gzip, xz, bzip2, lzma with the
    standard library, LZ4 (legacy frames) with the ``lz4`` tool or a built-in decoder, zstd
    with the ``zstd`` tool.
    """
    data = Path(bzimage).read_bytes()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise ValueError(f"{bzimage}: not a bzImage")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x0208:
        raise ValueError(f"{bzimage}: boot protocol {version:#x} has no payload fields")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    elf = _decompress(data[start:start + length])
    if elf[:4] != b"\x7fELF":
        raise ValueError(f"{bzimage}: the payload did not decompress to an ELF file")
    return elf
