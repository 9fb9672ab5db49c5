//! User-mode networking through passt: no root, no TAP. The VMM starts `passt` on one end of
//! a socket pair (`--fd`) and speaks its frame protocol on the other — each Ethernet frame
//! preceded by its length as a 32-bit big-endian number, as QEMU's `-netdev stream` does.
//! passt answers DHCP, maps the guest's connections onto the host's sockets, and forwards
//! the host ports it is told to the guest.

use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use crate::refusal::{HostError, Refusal};

/// The largest frame passt sends or takes (its MTU of 65520 plus the Ethernet header).
pub const MAX_FRAME: usize = 65_520 + 14;

/// A running passt and the VMM's end of its socket.
#[derive(Debug)]
pub struct Passt {
    stream: UnixStream,
    child: Child,
    /// A frame (with its length prefix) not fully read yet.
    rx: Vec<u8>,
    /// A frame (with its length prefix) not fully written yet.
    tx: Vec<u8>,
}

impl Passt {
    /// Starts passt with TCP port forwards `(host port, guest port)`; errors name `arg`.
    pub fn start(arg: &str, forward: &[(u16, u16)]) -> Result<Passt, HostError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(HostError::io("cannot create passt's socket pair"))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new("passt");
        // MTU 1500: the guest's receive buffers are sized for it unless it takes TSO (which
        // passt frames do not need).
        cmd.args(["--foreground", "--quiet", "--fd", "3", "--mtu", "1500"]);
        for (host, guest) in forward {
            cmd.args(["-t", &format!("{host}:{guest}")]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls: dup2 onto fd 3 (which
        // clears close-on-exec there), or clearing it directly when the socket is fd 3.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HostError::Refused(Refusal::FileNotFound {
                arg: format!("{arg}.user").into(),
                path: "passt".into(),
            }),
            _ => HostError::Io {
                what: format!("cannot start passt for {arg}"),
                source: e,
            },
        })?;
        drop(theirs);
        ours.set_nonblocking(true)
            .map_err(HostError::io("cannot make passt's socket non-blocking"))?;
        Ok(Passt {
            stream: ours,
            child,
            rx: Vec::new(),
            tx: Vec::new(),
        })
    }

    /// The next whole frame from passt, if one is in; `Err` once passt is gone.
    pub fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.rx.len() >= 4 {
                let len =
                    u32::from_be_bytes([self.rx[0], self.rx[1], self.rx[2], self.rx[3]]) as usize;
                if len > MAX_FRAME {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                }
                if self.rx.len() >= 4 + len {
                    let frame = self.rx[4..4 + len].to_vec();
                    self.rx.drain(..4 + len);
                    return Ok(Some(frame));
                }
            }
            // Read at most the rest of this frame: never more than one frame is held.
            let want = if self.rx.len() < 4 {
                4 - self.rx.len()
            } else {
                let len =
                    u32::from_be_bytes([self.rx[0], self.rx[1], self.rx[2], self.rx[3]]) as usize;
                4 + len - self.rx.len()
            };
            let start = self.rx.len();
            self.rx.resize(start + want, 0);
            match self.stream.read(&mut self.rx[start..]) {
                Ok(0) => {
                    self.rx.truncate(start);
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                Ok(n) => self.rx.truncate(start + n),
                Err(e) => {
                    self.rx.truncate(start);
                    return if e.kind() == io::ErrorKind::WouldBlock {
                        Ok(None)
                    } else {
                        Err(e)
                    };
                }
            }
        }
    }

    /// passt's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether a frame is still being written (then the guest's next frames wait).
    pub fn busy(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Queues `frame` for passt and writes what the socket takes; `false` if a frame is
    /// still waiting (call [`Passt::flush`] when the socket is writable).
    pub fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        if self.busy() {
            return Ok(false);
        }
        self.tx
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.tx.extend_from_slice(frame);
        self.flush()?;
        Ok(true)
    }

    /// Writes what is left of the current frame.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.tx.is_empty() {
            match self.stream.write(&self.tx) {
                Ok(n) => {
                    self.tx.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsRawFd for Passt {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
