//! How the stub waits: on the gdb connection and on the vCPUs' debug exits at once (`poll`
//! on the socket and the exits' eventfd), waking every 100 ms to see whether the VM ended.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::Target;

use super::target::VmTarget;

/// The bytes a connection holds each way: the stub takes and gives one byte at a time, and
/// a system call for each would let a client that streams bytes cost two calls a byte.
const CONN_BUF: usize = 16 * 1024;

/// What a connection's stream is: a UNIX or TCP socket.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A gdb client's connection, over a UNIX socket or TCP, buffered both ways. Output is sent
/// whenever the stub is about to wait for input (so an acknowledgement never waits for the
/// reply to the command it acknowledges) and at each packet's end.
pub struct Conn {
    stream: Box<dyn Stream>,
    /// Its descriptor, to poll.
    pub fd: RawFd,
    input: Box<[u8; CONN_BUF]>,
    start: usize,
    end: usize,
    output: Vec<u8>,
}

impl Conn {
    /// `stream` as a connection.
    pub fn new<S: Read + Write + Send + AsRawFd + 'static>(stream: S) -> Conn {
        let fd = stream.as_raw_fd();
        Conn {
            stream: Box::new(stream),
            fd,
            input: Box::new([0; CONN_BUF]),
            start: 0,
            end: 0,
            output: Vec::with_capacity(CONN_BUF),
        }
    }

    /// Whether input is waiting in the buffer (the socket then need not be polled).
    pub fn buffered(&self) -> bool {
        self.start < self.end
    }

    /// Fills an empty input buffer; `wait`: block for input, else only take what is there.
    /// Whether a byte is buffered.
    fn fill(&mut self, wait: bool) -> std::io::Result<bool> {
        if self.buffered() {
            return Ok(true);
        }
        self.send()?;
        if !wait && !super::readable(self.fd, 0) {
            return Ok(false);
        }
        let n = loop {
            match self.stream.read(&mut self.input[..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.start = 0;
        self.end = n;
        Ok(true)
    }

    /// Sends the buffered output.
    pub fn send(&mut self) -> std::io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output)?;
            self.output.clear();
        }
        Ok(())
    }
}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.output.push(byte);
        if self.output.len() >= CONN_BUF {
            self.send()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.send()
    }
}

impl ConnectionExt for Conn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        self.fill(true)?;
        let byte = self.input[self.start];
        self.start += 1;
        Ok(byte)
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        Ok(self.fill(false)?.then(|| self.input[self.start]))
    }
}

/// The stub's event loop.
pub enum StubLoop {}

type StopError = WaitForStopReasonError<<VmTarget as Target>::Error, std::io::Error>;

impl BlockingEventLoop for StubLoop {
    type Target = VmTarget;
    type Connection = Conn;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut VmTarget,
        conn: &mut Conn,
    ) -> Result<Event<Self::StopReason>, StopError> {
        loop {
            if conn.buffered() {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
            conn.send().map_err(WaitForStopReasonError::Connection)?;
            if let Some(status) = target.ended() {
                return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(
                    status.code.unwrap_or(0) as u8,
                )));
            }
            let mut fds = [
                libc::pollfd {
                    fd: conn.fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: target.doorbell.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the length given.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(WaitForStopReasonError::Connection(e));
            }
            if fds[1].revents != 0 {
                let _ = target.doorbell.read();
                let stops: Vec<_> = target.stops.try_iter().collect();
                if let Some((id, exit)) = stops.first() {
                    target.pause_all().map_err(WaitForStopReasonError::Target)?;
                    match target.stop_reason(*id, exit) {
                        Some(reason) => return Ok(Event::TargetStopped(reason)),
                        // The guest's own int3: give it back and go on.
                        None => target
                            .resume_all()
                            .map_err(WaitForStopReasonError::Target)?,
                    }
                }
            }
            if fds[0].revents != 0 {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
        }
    }

    fn on_interrupt(
        target: &mut VmTarget,
    ) -> Result<Option<Self::StopReason>, <VmTarget as Target>::Error> {
        target.pause_all()?;
        Ok(Some(MultiThreadStopReason::Signal(Signal::SIGINT)))
    }
}
