"""Wraps the flat probe into a bzImage: a setup header as the Linux boot protocol (2.15) lays
it out, followed by the protected-mode code whose 64-bit entry point is at offset 0x200."""

import struct
import subprocess
import sys
import tempfile
from pathlib import Path

SETUP_SECTS = 4
CMDLINE_SIZE = 1023  # smaller than Linux's 2047, so tests can tell the header is honoured


def symbol(elf: str, name: str) -> int:
    out = subprocess.run(["nm", elf], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise SystemExit(f"{elf}: no symbol {name}")


def main(src: str, dst: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "flat.bin"
        subprocess.run(["objcopy", "-O", "binary", "-j", ".head", "-j", ".text", "-j", ".rodata",
                        "-j", ".data", src, str(flat)], check=True)
        payload = flat.read_bytes()
    image_end = symbol(src, "_image_end")
    setup = bytearray((SETUP_SECTS + 1) * 512)

    def put(fmt: str, off: int, value: int) -> None:
        struct.pack_into("<" + fmt, setup, off, value)

    put("B", 0x1F1, SETUP_SECTS)
    put("H", 0x1FE, 0xAA55)            # boot_flag
    put("H", 0x200, 0x66EB)            # jump over the header (never run)
    setup[0x202:0x206] = b"HdrS"
    put("H", 0x206, 0x020F)            # protocol 2.15
    put("B", 0x211, 0x01)              # loadflags: LOADED_HIGH
    put("I", 0x214, 0x100000)          # code32_start
    put("I", 0x22C, 0x7FFFFFFF)        # initrd_addr_max
    put("I", 0x230, 0x200000)          # kernel_alignment
    put("B", 0x234, 1)                 # relocatable_kernel
    put("H", 0x236, 0x0001)            # xloadflags: XLF_KERNEL_64
    put("I", 0x238, CMDLINE_SIZE)      # cmdline_size
    put("I", 0x260, (image_end + 0xFFF) & ~0xFFF)  # init_size: code plus bss
    Path(dst).write_bytes(bytes(setup) + payload)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
