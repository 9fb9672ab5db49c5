//! Recognising a kernel image and reading the headers that constrain how it is booted.
//!
//! Two formats are accepted, told apart by their magic numbers: an ELF64 x86-64 `vmlinux`
//! (`\x7fELF`) and a bzImage (`HdrS` at offset 0x202 of the real-mode setup header).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_ROOM};
use crate::error::{Error, Result};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 0x3e;
const PT_LOAD: u32 = 1;
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot protocol 2.12 introduced `xloadflags` and with it the 64-bit entry point.
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
const XLF_KERNEL_64: u16 = 1 << 0;
/// `initrd_addr_max` for kernels whose header predates the field.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// The kernel image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KernelFormat {
    /// An uncompressed ELF64 vmlinux, entered at its ELF entry point.
    Elf,
    /// A bzImage, entered at the 64-bit entry of its protected-mode part.
    BzImage,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelFormat::Elf => "ELF vmlinux",
            KernelFormat::BzImage => "bzImage",
        })
    }
}

/// What the kernel's headers say.
#[derive(Debug, Clone)]
pub struct KernelImage {
    /// The format.
    pub format: KernelFormat,
    /// The file's size in bytes.
    pub file_len: u64,
    /// ELF: entry point. bzImage: offset of the 64-bit entry from the load address.
    pub entry: u64,
    /// ELF: lowest physical load address of a `PT_LOAD` segment.
    pub load_start: u64,
    /// ELF: end of the highest `PT_LOAD` segment in memory. bzImage: bytes needed from the
    /// load address (the larger of the payload and `init_size`).
    pub load_end: u64,
    /// bzImage: the setup header.
    pub setup_header: Option<setup_header>,
}

impl KernelImage {
    /// The longest command line the kernel accepts, including the terminating NUL: what its
    /// header says, but never more than the memory map has room for (a header claiming
    /// gigabytes would otherwise let a long command line overwrite the MP table).
    pub fn cmdline_limit(&self) -> usize {
        match &self.setup_header {
            Some(hdr) if hdr.version >= 0x0206 && hdr.cmdline_size > 0 => (hdr.cmdline_size
                as usize)
                .saturating_add(1)
                .min(CMDLINE_ROOM),
            _ => CMDLINE_MAX_SIZE,
        }
    }

    /// The highest address the initrd may occupy.
    pub fn initrd_addr_max(&self) -> u64 {
        match &self.setup_header {
            Some(hdr) if hdr.version >= 0x0203 => u64::from(hdr.initrd_addr_max),
            Some(_) => DEFAULT_INITRD_ADDR_MAX,
            None => u64::from(u32::MAX),
        }
    }
}

/// Opens `path` for reading, reporting a missing or unreadable file against `arg`.
pub fn open_readable(arg: &'static str, path: &Path) -> Result<File> {
    Ok(crate::host_file::open_file(arg, path, false)?)
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}

/// Reads the headers of the kernel in `file` (named `path` in errors).
pub fn inspect(file: &mut File, path: &Path) -> Result<KernelImage> {
    let file_len = file
        .metadata()
        .map_err(|e| Error::Io {
            what: format!("cannot stat kernel={}", path.display()),
            source: e,
        })?
        .len();
    let not_a_kernel = |why: &str| {
        Error::invalid(
            "kernel",
            path.display(),
            format!("{why}; expected an x86-64 ELF vmlinux or a bzImage"),
        )
    };
    let mut magic = [0u8; 4];
    if read_at(file, 0, &mut magic).is_err() {
        return Err(not_a_kernel("the file is too short to be a kernel"));
    }
    if magic == ELF_MAGIC {
        return inspect_elf(file, file_len).map_err(|why| not_a_kernel(&why));
    }
    let mut hdr = setup_header::default();
    if read_at(file, SETUP_HEADER_OFFSET, hdr.as_mut_slice()).is_ok() && hdr.header == HDRS_MAGIC {
        return inspect_bzimage(hdr, file_len).map_err(|why| not_a_kernel(&why));
    }
    Err(not_a_kernel("the file is neither ELF nor bzImage"))
}

fn inspect_elf(file: &mut File, file_len: u64) -> std::result::Result<KernelImage, String> {
    let mut eh = [0u8; 64];
    read_at(file, 0, &mut eh).map_err(|_| "truncated ELF header".to_string())?;
    if eh[4] != ELFCLASS64 || u16_at(&eh, 0x12) != EM_X86_64 {
        return Err("an ELF file, but not ELF64 for x86-64".into());
    }
    let entry = u64_at(&eh, 0x18);
    let phoff = u64_at(&eh, 0x20);
    let phentsize = u64::from(u16_at(&eh, 0x36));
    let phnum = u64::from(u16_at(&eh, 0x38));
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return Err("an ELF file without usable program headers".into());
    }
    let (mut start, mut end) = (u64::MAX, 0u64);
    let mut entry_loaded = false;
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        read_at(file, phoff + i * phentsize, &mut ph)
            .map_err(|_| "truncated ELF program headers".to_string())?;
        if u32_at(&ph, 0) != PT_LOAD {
            continue;
        }
        let paddr = u64_at(&ph, 0x18);
        let memsz = u64_at(&ph, 0x28);
        let seg_end = paddr.checked_add(memsz).ok_or("ELF segment overflows")?;
        entry_loaded |= (paddr..seg_end).contains(&entry);
        start = start.min(paddr);
        end = end.max(seg_end);
    }
    if start == u64::MAX {
        return Err("an ELF file with nothing to load".into());
    }
    if !entry_loaded {
        // The vCPU would start in memory the kernel does not occupy (or outside RAM).
        return Err(format!(
            "an ELF file whose entry point {entry:#x} is not inside any segment it loads \
             ({start:#x} to {end:#x})"
        ));
    }
    Ok(KernelImage {
        format: KernelFormat::Elf,
        file_len,
        entry,
        load_start: start,
        load_end: end,
        setup_header: None,
    })
}

fn inspect_bzimage(hdr: setup_header, file_len: u64) -> std::result::Result<KernelImage, String> {
    let version = hdr.version;
    let xloadflags = hdr.xloadflags;
    if version < MIN_BZIMAGE_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 || hdr.loadflags & 1 == 0 {
        return Err(format!(
            "a bzImage without a 64-bit entry point (boot protocol {}.{:02}, needs 2.12 and \
             XLF_KERNEL_64)",
            version >> 8,
            version & 0xff
        ));
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_len = (setup_sects + 1) * 512;
    let payload = file_len
        .checked_sub(setup_len)
        .ok_or("a truncated bzImage")?;
    let init_size = u64::from(hdr.init_size);
    Ok(KernelImage {
        format: KernelFormat::BzImage,
        file_len,
        entry: 0x200,
        load_start: 0,
        load_end: payload.max(init_size),
        setup_header: Some(hdr),
    })
}
