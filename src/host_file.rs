//! Opening the files the user names (kernel, initrd, disk images) without being fooled.
//!
//! The path is checked before it is opened: opening a FIFO would block until a writer came
//! (for ever, and past Ctrl-C), and opening a device can have effects of its own. It is
//! opened non-blocking too, for a FIFO put there in between, and checked again.

use std::fs::File;
use std::path::Path;

use crate::refusal::{HostError, Refusal};

/// Clears `O_NONBLOCK` on a file known to be regular: it was set only so that opening a FIFO
/// could not hang; left on, reads from filesystems that honour it (9p without caching,
/// FUSE) fail with `EAGAIN` instead of waiting for the data.
fn clear_nonblocking(file: File) -> std::io::Result<File> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL on a file descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

/// What a non-regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "not a regular file"
    }
}

/// `e` (from opening `path`) as the refusal of `arg` it is: a missing file, or one this user
/// may not use (`hint` says what to do); other errors stay the host's.
fn refusal(
    e: std::io::Error,
    arg: std::borrow::Cow<'static, str>,
    path: &Path,
    hint: &str,
    doing: &str,
) -> HostError {
    match e.kind() {
        std::io::ErrorKind::NotFound => HostError::Refused(Refusal::FileNotFound {
            arg,
            path: path.into(),
        }),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            HostError::Refused(Refusal::PermissionDenied {
                arg,
                path: path.into(),
                hint: hint.into(),
            })
        }
        _ => HostError::Io {
            what: format!("cannot {doing} {arg}={}", path.display()),
            source: e,
        },
    }
}

/// Creates (or truncates) the file `path` for writing an output into, reporting a missing
/// directory or one this user may not write in against `arg`.
pub fn create_file(
    arg: impl Into<std::borrow::Cow<'static, str>>,
    path: &Path,
) -> Result<File, HostError> {
    let arg = arg.into();
    std::fs::File::create(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::IsADirectory => HostError::Refused(Refusal::invalid(
            arg,
            path.display(),
            "expected a file to write, this is a directory",
        )),
        _ => refusal(
            e,
            arg,
            path,
            "write it where this user may create files",
            "create",
        ),
    })
}

/// Opens the regular file `path` for reading (and writing with `writable`), reporting a
/// missing, inaccessible or non-regular file against `arg` (e.g. `disks[1]`).
pub fn open_file(
    arg: impl Into<std::borrow::Cow<'static, str>>,
    path: &Path,
    writable: bool,
) -> Result<File, HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let arg = arg.into();
    let not_regular = |arg, kind: &str| {
        HostError::Refused(Refusal::invalid(
            arg,
            path.display(),
            format!("expected a regular file, this is {kind}"),
        ))
    };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(not_regular(arg, file_kind(&meta))),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(not_regular(arg, "a loop of symbolic links"))
        }
        _ => {} // missing or inaccessible: opening says which
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => match f.metadata() {
            Ok(meta) if meta.is_file() => clear_nonblocking(f).map_err(|e| HostError::Io {
                what: format!("cannot read {arg}={}", path.display()),
                source: e,
            }),
            Ok(meta) => Err(not_regular(arg, file_kind(&meta))),
            Err(e) => Err(HostError::Io {
                what: format!("cannot read {arg}={}", path.display()),
                source: e,
            }),
        },
        Err(e) => Err(match e.kind() {
            std::io::ErrorKind::IsADirectory => not_regular(arg, "a directory"),
            _ => {
                let hint = if writable {
                    "make the file readable and writable by this user, or attach it read-only"
                } else {
                    "make the file readable by this user"
                };
                refusal(e, arg, path, hint, "open")
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn a_regular_file_is_read_blocking() {
        // Opened non-blocking (a FIFO must not hang the open), then cleared once regular:
        // 9p without caching and FUSE fail reads of a file left non-blocking.
        let path = std::env::temp_dir().join(format!("vmm-ref-open-{}", std::process::id()));
        std::fs::write(&path, b"kernel").unwrap();
        for writable in [false, true] {
            let f = open_file("kernel", &path, writable).unwrap();
            // SAFETY: F_GETFL on a file descriptor we own.
            let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(flags & libc::O_NONBLOCK, 0, "writable={writable}");
        }
        std::fs::remove_file(&path).unwrap();
    }
}
