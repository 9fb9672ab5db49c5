//! A gdb stub for the guest (`Vm(gdb=...)`, `--gdb`), on the `gdbstub` crate: gdb's remote
//! protocol on a UNIX socket or a TCP port of 127.0.0.1, one client at a time.
//!
//! A VM with a stub starts with its vCPUs held before their first instruction; gdb's
//! `continue` runs them. Every vCPU is one of gdb's threads; when one stops (a breakpoint, a
//! watchpoint, a step, Ctrl-C) all stop. The stub runs on a thread of its own and asks the
//! stopped vCPUs' threads, which own their descriptors, for registers, address translation
//! and guest-debug settings ([`crate::vcpu::DebugOp`]); guest memory it reads and writes
//! itself. Breakpoints (`break` and `hbreak`) and watchpoints live in the debug registers,
//! four in all: the stub never writes `int3` into guest memory, so nothing of it is ever in
//! a snapshot, fork or dump, and breakpoints work where KVM does not intercept `int3` (PVM).
//! Detaching (or gdb going away, or a client breaking the protocol) removes every breakpoint
//! and lets the VM run, and the next client may attach (it finds the guest stopped); gdb's
//! `kill` kills the VM. The socket and the thread last as long as the VM.

pub mod event_loop;
pub mod monitor;
pub mod regs;
pub mod target;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use gdbstub::stub::{DisconnectReason, GdbStubBuilder};
use kvm_bindings::kvm_debug_exit_arch;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::config::GdbConfig;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};
use crate::refusal::{HostError, Refusal};
use crate::sync::Locked;
use crate::vcpu::{DebugStops, VcpuHandles};
use event_loop::{Conn, StubLoop};
use target::VmTarget;

/// The largest packet a client may send (gdb is told so, as its PacketSize): room for a
/// `G` of every register and a `X`/`M` write of several KiB.
const PACKET_BUF: usize = 16 * 1024;

/// The socket a client connects to.
enum Socket {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

/// A stub made with the VM, waiting for it to start: the socket (bound, so that a path that
/// exists or a port in use is an error of the VM's construction) and where the vCPUs'
/// debug exits arrive.
pub struct Pending {
    socket: Socket,
    stops: Receiver<(u8, kvm_debug_exit_arch)>,
    doorbell: Arc<EventFd>,
    /// What each vCPU reports its debug exits to.
    pub vcpu_stops: DebugStops,
}

/// Binds the stub's socket as `config` says; errors name `gdb`.
pub fn listen(config: &GdbConfig) -> Result<Pending, HostError> {
    let socket = match config {
        GdbConfig::Unix(path) => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(Refusal::invalid(
                    "gdb",
                    format!("\"unix:{}\"", path.display()),
                    "expected a path where a socket can be made: this one exists",
                )
                .into());
            }
            let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => HostError::Refused(Refusal::FileNotFound {
                    arg: "gdb".into(),
                    path: path.clone(),
                }),
                _ => HostError::Io {
                    what: format!("cannot make the gdb socket {}", path.display()),
                    source: e,
                },
            })?;
            Socket::Unix(listener, path.clone())
        }
        GdbConfig::Tcp(port) => {
            let listener = TcpListener::bind(("127.0.0.1", *port)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    HostError::Refused(Refusal::invalid(
                        "gdb",
                        port,
                        "expected a free TCP port: this one is in use",
                    ))
                } else {
                    HostError::Io {
                        what: format!("cannot listen on 127.0.0.1:{port} for gdb"),
                        source: e,
                    }
                }
            })?;
            Socket::Tcp(listener)
        }
    };
    let (tx, stops) = channel();
    let doorbell = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| HostError::Io {
        what: "cannot make the gdb stub's eventfd".into(),
        source: e,
    })?);
    Ok(Pending {
        socket,
        stops,
        vcpu_stops: DebugStops {
            tx,
            doorbell: doorbell.clone(),
        },
        doorbell,
    })
}

/// What the stub drives.
pub struct Machine {
    /// The vCPUs (started, held paused until gdb continues).
    pub vcpus: Arc<VcpuHandles>,
    /// Their ids.
    pub ids: Vec<u8>,
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The VM's end.
    pub exit: Arc<ExitSignal>,
    /// The client's socket while one is attached, for [`hang_up`] to cut it.
    pub client: Arc<Mutex<Option<i32>>>,
    /// Set while the vCPUs wait for gdb's first resume (the VM's own `resume` leaves
    /// them); the stub clears it when it resumes or detaches.
    pub hold: Arc<AtomicBool>,
}

/// Cuts the attached client's connection (the VM is going away), so that the stub, which may
/// be waiting for gdb's next packet, ends.
pub fn hang_up(client: &Mutex<Option<i32>>) {
    if let Some(fd) = *client.locked() {
        // SAFETY: `fd` is the client's socket, open while it is in `client` (the stub closes
        // it only after taking it out, under the same lock).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Socket::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Waits for `poll` on `fd` (input) for up to `ms` milliseconds; whether it is readable.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Starts the stub's thread: it waits for a client (while the VM lives), serves it, and
/// ends when it detaches or the VM ends.
pub fn spawn(pending: Pending, machine: Machine) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vmm-gdb".into())
        .spawn(move || serve(pending, machine))
}

fn serve(pending: Pending, machine: Machine) {
    let Pending {
        socket,
        stops,
        doorbell,
        ..
    } = pending;
    let client = machine.client.clone();
    let exit = machine.exit.clone();
    let mut target = VmTarget::new(
        machine.vcpus,
        machine.ids,
        machine.mem,
        machine.exit,
        stops,
        doorbell,
        machine.hold,
    );
    let mut first = true;
    while let Some(conn) = accept(&socket, &exit) {
        // gdb takes the target as stopped when it attaches: the first client finds the vCPUs
        // held at their start; a later one stops the running guest.
        if !first && target.pause_all().is_err() {
            return;
        }
        first = false;
        target.forget_stops();
        *client.locked() = Some(conn.fd);
        // A packet larger than this buffer ends the session: gdbstub's own would grow for as
        // long as a client sends one packet.
        let mut packet = vec![0u8; PACKET_BUF];
        let outcome = match GdbStubBuilder::new(conn)
            .with_packet_buffer(&mut packet)
            .build()
        {
            Ok(stub) => stub.run_blocking::<StubLoop>(&mut target),
            Err(_) => return,
        };
        // The connection is closed by now (run_blocking took it): no fd for hang_up to cut.
        *client.locked() = None;
        match outcome {
            Ok(DisconnectReason::Kill) => {
                exit.request(ExitStatus::with_detail(
                    ExitReason::Killed,
                    "killed from gdb",
                ));
                return;
            }
            other => {
                if let Err(e) = &other {
                    eprintln!("vmm-reference: gdb stub: {e}");
                }
                // Detached, gone or broken: the guest runs on without breakpoints, and the
                // next client may attach.
                if exit.stop_requested() || target.detach().is_err() {
                    return;
                }
            }
        }
    }
}

/// The next client, once one connects while the VM lives (None once it has ended).
fn accept(socket: &Socket, exit: &ExitSignal) -> Option<Conn> {
    let fd = match socket {
        Socket::Unix(l, _) => l.as_raw_fd(),
        Socket::Tcp(l) => l.as_raw_fd(),
    };
    loop {
        if exit.stop_requested() {
            return None;
        }
        if !readable(fd, 100) {
            continue;
        }
        let accepted = match socket {
            Socket::Unix(l, _) => l.accept().map(|(s, _)| Conn::new(s)),
            Socket::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Conn::new(s)
            }),
        };
        if let Ok(conn) = accepted {
            return Some(conn);
        }
    }
}
