//! The host side of the vsock device: UNIX sockets, with Firecracker's protocol.
//!
//! The VMM listens on `uds`; a host program connects and writes `CONNECT <port>\n` to reach
//! the guest's listener on `port`, and is answered `OK <host port>\n` once the guest accepts.
//! A guest connecting to the host's port `P` is connected to the UNIX socket `<uds>_<P>`.
//! Every socket is non-blocking: the event loop never waits on a host program.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::refusal::{HostError, Refusal};

/// The longest `CONNECT <port>\n` line accepted.
pub const MAX_CONNECT_LINE: usize = 32;

/// The listening socket; its file is removed when dropped.
#[derive(Debug)]
pub struct Listener {
    socket: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Binds `path` (named `vsock.uds` in errors); it must not exist.
    pub fn bind(path: &Path) -> Result<Listener, HostError> {
        if path.symlink_metadata().is_ok() {
            return Err(HostError::Refused(Refusal::invalid(
                "vsock.uds",
                format!("{path:?}"),
                "expected a path that does not exist yet (the VMM creates the socket there)",
            )));
        }
        let socket = UnixListener::bind(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HostError::Refused(Refusal::FileNotFound {
                arg: "vsock.uds".into(),
                path: path.parent().unwrap_or(path).into(),
            }),
            io::ErrorKind::PermissionDenied => HostError::Refused(Refusal::PermissionDenied {
                arg: "vsock.uds".into(),
                path: path.into(),
                hint: "choose a directory this user may create files in".into(),
            }),
            _ => HostError::Io {
                what: format!("cannot listen on vsock.uds={}", path.display()),
                source: e,
            },
        })?;
        socket
            .set_nonblocking(true)
            .map_err(HostError::io("cannot make the vsock socket non-blocking"))?;
        Ok(Listener {
            socket,
            path: path.into(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A pending host connection, if any.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.socket.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connects to `<uds>_<port>` without blocking: a listener whose backlog is full refuses
/// like one that is not there.
pub fn connect_port(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    let path = Path::new(&path);
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: a new socket; its fd is owned by the UnixStream built below (or closed).
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just made and own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of the size given.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(stream)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Parses a `CONNECT <port>\n` line (without its newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    text.strip_prefix("CONNECT ")?.trim().parse().ok()
}

/// Takes a `CONNECT` line from `stream` without reading past it (the host program may send
/// data right after the `OK`): `Ok(None)` while it is incomplete.
///
/// What has come of an incomplete line is moved into `partial` (it is all part of the
/// line), so the socket is drained and the event loop is not woken for the same bytes again
/// (the sockets are watched level-triggered): a client sending its line a byte at a time, or
/// half a line and then nothing, costs one wake-up per write. A line longer than
/// [`MAX_CONNECT_LINE`] is `InvalidData`; the end of the stream `UnexpectedEof`.
pub fn read_connect_line(
    stream: &UnixStream,
    partial: &mut Vec<u8>,
) -> io::Result<Option<Vec<u8>>> {
    let room = MAX_CONNECT_LINE.saturating_sub(partial.len());
    if room == 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    let mut buf = [0u8; MAX_CONNECT_LINE];
    // SAFETY: recv into a local buffer, at most `room` <= its length.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            room,
            libc::MSG_PEEK,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let n = n as usize;
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    let (take, complete) = match buf[..n].iter().position(|&b| b == b'\n') {
        Some(end) => (end + 1, true),
        None => (n, false),
    };
    let start = partial.len();
    partial.resize(start + take, 0);
    io::Read::read_exact(&mut &*stream, &mut partial[start..])?;
    if !complete {
        return if partial.len() >= MAX_CONNECT_LINE {
            Err(io::Error::from(io::ErrorKind::InvalidData))
        } else {
            Ok(None)
        };
    }
    partial.pop();
    Ok(Some(std::mem::take(partial)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
    }

    #[test]
    fn listener_refuses_an_existing_path_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("vmm-ref-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let l = Listener::bind(&path).unwrap();
        let err = Listener::bind(&path).unwrap_err().to_string();
        assert!(
            err.contains("vsock.uds") && err.contains("does not exist yet"),
            "{err}"
        );
        // A program connects and sends its line and some data: only the line is taken.
        let mut c = UnixStream::connect(&path).unwrap();
        io::Write::write_all(&mut c, b"CONNECT 1234\nDATA").unwrap();
        let s = l.accept().unwrap().unwrap();
        assert_eq!(
            read_connect_line(&s, &mut Vec::new()).unwrap().unwrap(),
            b"CONNECT 1234"
        );
        let mut rest = [0u8; 4];
        io::Read::read_exact(&mut &s, &mut rest).unwrap();
        assert_eq!(&rest, b"DATA");
        // Nobody on <uds>_9: refused at once.
        assert!(connect_port(&path, 9).is_err());
        let port = UnixListener::bind(dir.join("v.sock_9")).unwrap();
        assert!(connect_port(&path, 9).is_ok());
        drop(port);
        let _ = std::fs::remove_file(dir.join("v.sock_9"));
        drop(l);
        assert!(!path.exists());
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn a_connect_line_in_pieces_is_assembled_and_data_after_it_is_left() {
        let (host, mut client) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let mut partial = Vec::new();
        assert_eq!(read_connect_line(&host, &mut partial).unwrap(), None);
        io::Write::write_all(&mut client, b"CONN").unwrap();
        assert_eq!(read_connect_line(&host, &mut partial).unwrap(), None);
        // The partial bytes were taken off the socket: nothing is left to wake the loop.
        let mut probe = [0u8; 1];
        // SAFETY: recv into a local one-byte buffer.
        let n = unsafe {
            libc::recv(
                host.as_raw_fd(),
                probe.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        assert_eq!(n, -1, "the partial line must not stay readable");
        io::Write::write_all(&mut client, b"ECT 52\nhello").unwrap();
        assert_eq!(
            read_connect_line(&host, &mut partial).unwrap(),
            Some(b"CONNECT 52".to_vec())
        );
        let mut rest = [0u8; 5];
        io::Read::read_exact(&mut &host, &mut rest).unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn an_overlong_or_abandoned_connect_line_is_an_error() {
        let (host, mut client) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let mut partial = Vec::new();
        io::Write::write_all(&mut client, &[b'x'; MAX_CONNECT_LINE - 1]).unwrap();
        assert_eq!(read_connect_line(&host, &mut partial).unwrap(), None);
        io::Write::write_all(&mut client, b"yy").unwrap();
        let e = read_connect_line(&host, &mut partial).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        let (host, mut client) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let mut partial = Vec::new();
        io::Write::write_all(&mut client, b"CONNECT 5").unwrap();
        drop(client);
        assert_eq!(read_connect_line(&host, &mut partial).unwrap(), None);
        let e = read_connect_line(&host, &mut partial).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
