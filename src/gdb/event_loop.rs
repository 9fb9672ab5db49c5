//! How the stub waits: on the gdb connection and on the vCPUs' debug exits at once (`poll`
//! on the socket and the exits' eventfd), waking every 100 ms to see whether the VM ended.

use std::os::fd::{AsRawFd, RawFd};

use gdbstub::common::Signal;
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::Target;

use super::target::VmTarget;

/// A gdb client's connection, over a UNIX socket or TCP.
pub struct Conn {
    /// The stream.
    pub stream: Box<dyn ConnectionExt<Error = std::io::Error>>,
    /// Its descriptor, to poll.
    pub fd: RawFd,
}

impl Conn {
    /// `stream` as a connection.
    pub fn new<S: ConnectionExt<Error = std::io::Error> + AsRawFd + 'static>(stream: S) -> Conn {
        let fd = stream.as_raw_fd();
        Conn {
            stream: Box::new(stream),
            fd,
        }
    }
}

impl Connection for Conn {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.stream.write(byte)
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.stream.write_all(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.stream.flush()
    }
}

impl ConnectionExt for Conn {
    fn read(&mut self) -> Result<u8, Self::Error> {
        self.stream.read()
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        self.stream.peek()
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
