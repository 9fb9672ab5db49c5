//! Snapshots: a VM's whole state in a directory, and the format of its files.
//!
//! A snapshot is a directory with two files:
//! - `state`: a header — the magic bytes `VMMRSNAP`, the format version, the body's length
//!   and its CRC-32 — then the body, a [`Snapshot`] encoded with postcard (serde): the
//!   configuration, where the boot images went, KVM's VM state (PIT, PICs, IOAPIC, clock),
//!   every vCPU's state and every device's;
//! - `memory`: guest RAM, sparse (see [`memory`]).
//!
//! Reading checks everything that can be checked without touching all of memory: the magic,
//! the version (a snapshot from another format version is refused, not guessed at), the
//! checksum, that the body decodes completely, that the memory file has the right length,
//! and that this host's KVM offers every CPU feature the saved vCPUs were given.
//! Memory contents are not checksummed: that would read all of it and lose the lazy
//! restore.

pub mod memory;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::state::{KvmVmState, VcpuState};
use crate::boot::BootInfo;
use crate::config::VmConfig;
use crate::device_manager::DevicesState;

/// The first bytes of a state file.
pub const MAGIC: &[u8; 8] = b"VMMRSNAP";
/// The version of the format written; only this one is read.
pub const FORMAT_VERSION: u32 = 4;
/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Header: magic, version (u32), body length (u64), CRC-32 of the body (u32).
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// A state file larger than this is not one of ours (the body is kilobytes per vCPU).
const MAX_BODY: u64 = 64 << 20;

/// Why a snapshot cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the snapshot could not be read or written.
    #[error("{what} {path:?}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The state file does not start with the magic bytes.
    #[error("{0:?} is not a vmm-reference snapshot state file")]
    NotASnapshot(PathBuf),
    /// Another format version.
    #[error("{path:?} has snapshot format version {found}; this vmm-reference reads version {expected} only")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// Truncated, or damaged.
    #[error("{path:?} is damaged: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The host lacks CPU features the guest was using.
    #[error("this host's KVM lacks CPU features the snapshot's guest uses: {0}")]
    CpuFeatures(String),
    /// The snapshot cannot be taken or used for another reason.
    #[error("{0}")]
    Unsupported(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything about a VM except its memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The vmm-reference version that wrote it (informational: the format version decides).
    pub vmm_version: String,
    /// The VM's configuration.
    pub config: VmConfig,
    /// Where the boot images went.
    pub boot: BootInfo,
    /// The length of the memory file.
    pub memory_len: u64,
    /// KVM's VM-wide state.
    pub vm: KvmVmState,
    /// Each vCPU's state, in id order.
    pub vcpus: Vec<VcpuState>,
    /// The devices' state.
    pub devices: DevicesState,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes `snapshot` with its header.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>> {
    let body = postcard::to_stdvec(snapshot)
        .map_err(|e| Error::Unsupported(format!("cannot encode the VM state: {e}")))?;
    Ok(frame(&body))
}

/// A state file: the header (magic, this format version, the body's length and CRC-32),
/// then `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a state file's bytes (`path` is for messages).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Snapshot> {
    let corrupt = |detail: String| Error::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::NotASnapshot(path.to_path_buf()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(Error::Version {
            path: path.to_path_buf(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(corrupt(format!(
            "the header announces {len} bytes of state, the file has {}",
            body.len()
        )));
    }
    if crc32fast::hash(body) != u32_at(20) {
        return Err(corrupt("the state's checksum does not match".into()));
    }
    let (snapshot, rest) = postcard::take_from_bytes::<Snapshot>(body)
        .map_err(|e| corrupt(format!("the state does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(corrupt(format!(
            "{} stray bytes after the state",
            rest.len()
        )));
    }
    Ok(snapshot)
}

/// Creates the directory `dir` and an empty memory file in it, for the caller to fill with
/// [`write_memory`] before [`write_state`].
pub fn create_memory_file(dir: &Path) -> Result<(File, PathBuf)> {
    std::fs::create_dir_all(dir).map_err(io("cannot create the snapshot directory", dir))?;
    let path = dir.join(MEMORY_FILE);
    let file = File::create(&path).map_err(io("cannot create", &path))?;
    Ok((file, path))
}

/// Writes guest RAM (`mappings`, privately mapping `base` if given) sparsely into the memory
/// file `file` at `path`, and syncs it; returns the bytes written.
pub fn write_memory(
    mappings: &[memory::Mapping],
    base: Option<&File>,
    file: &File,
    path: &Path,
) -> Result<u64> {
    let written = memory::write_sparse(mappings, base, file, 0)
        .and_then(|n| file.sync_all().map(|()| n))
        .map_err(io("cannot write guest memory to", path))?;
    Ok(written)
}

/// Writes `snapshot`'s state file into `dir` (its memory file is written first, by the
/// caller). Written aside and renamed: a crash mid-write never leaves a half state file
/// behind a complete-looking name.
pub fn write_state(dir: &Path, snapshot: &Snapshot) -> Result<()> {
    let state_path = dir.join(STATE_FILE);
    let bytes = encode(snapshot)?;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
    f.write_all(&bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io("cannot write", &state_path))?;
    Ok(())
}

/// Opens `path` for reading if it is a regular file: a FIFO or a device in its place must
/// not block the caller or be read from.
fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(io("cannot open", path))?;
    if !meta.is_file() {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: "not a regular file".into(),
        });
    }
    File::open(path).map_err(io("cannot open", path))
}

/// Reads and checks the snapshot in `dir`; returns it with its memory file, opened.
pub fn read(dir: &Path) -> Result<(Snapshot, File)> {
    let state_path = dir.join(STATE_FILE);
    let mut f = open_regular(&state_path)?;
    let size = f.metadata().map_err(io("cannot read", &state_path))?.len();
    if size > MAX_BODY {
        return Err(Error::NotASnapshot(state_path));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.read_to_end(&mut bytes)
        .map_err(io("cannot read", &state_path))?;
    let snapshot = decode(&bytes, &state_path)?;
    let mem_path = dir.join(MEMORY_FILE);
    let mut mem = open_regular(&mem_path)?;
    if !memory::check_len(&mut mem, snapshot.memory_len).map_err(io("cannot read", &mem_path))? {
        return Err(Error::Corrupt {
            path: mem_path,
            detail: format!("not the {} bytes the state says", snapshot.memory_len),
        });
    }
    Ok((snapshot, mem))
}

impl From<Error> for crate::error::Error {
    fn from(e: Error) -> Self {
        crate::error::Error::Snapshot(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_guards_the_body() {
        let bytes = frame(b"state");
        let p = Path::new("s");
        // A good header over a body that is not a Snapshot: refused as damaged, not a panic.
        assert!(matches!(decode(&bytes, p), Err(Error::Corrupt { .. })));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let e = decode(&flipped, p).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let mut version = bytes.clone();
        version[8] = 99;
        assert!(matches!(
            decode(&version, p),
            Err(Error::Version { found: 99, .. })
        ));
        assert!(matches!(decode(b"VMM", p), Err(Error::NotASnapshot(_))));
        assert!(matches!(
            decode(&bytes[..12], p),
            Err(Error::Corrupt { .. })
        ));
        // Every truncation is refused.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], p).is_err());
        }
    }
}
