//! seccomp filters for the threads the VMM owns (the `seccompiler` crate).
//!
//! Each kind of thread installs, on itself and before it touches anything a guest controls,
//! an allowlist of the system calls its work needs. The caller's own threads (Python's) are
//! never filtered: the VMM lives in their process and must not change what they may do. A
//! system call outside a thread's list fails with `EPERM` instead of running: a guest that
//! found a bug in a device could not `execve`, open files, fork or map executable memory
//! from the VMM's threads, and a syscall the lists missed becomes an error in that one
//! operation (which the tests would show), never the death of the user's process.
//!
//! The lists, by thread:
//! - vCPU threads: KVM's ioctls (`KVM_RUN`, state save and restore, IRQ lines) and
//!   `TUNSETOFFLOAD` (TAP offloads set when a driver starts a network device), no other
//!   ioctl; eventfd writes (irqfds, the exit signal), futexes, memory management, the kick
//!   signal's return, clock reads, thread exit;
//! - the event loop: epoll, reads and writes of every kind (disk images, TAPs, sockets),
//!   `fsync`/`fdatasync`/`fallocate` (flush, discard), UNIX sockets only (vsock connections
//!   to `<uds>_<port>`, `accept4` on the listening socket), `FIONBIO` as its one ioctl,
//!   `unlink` (the socket file at stop), `kill` with `SIGKILL` and `wait4`/`waitid` of its own
//!   passt children only (stopping them), `tgkill` of this process's threads with the kick
//!   signal only (kicking vCPUs), sleeping;
//! - the reaper: `close` and `munmap` of dropped VMs, futexes.
//!
//! No thread may map or make memory executable (`mmap`/`mprotect` with `PROT_EXEC`). A filter
//! that cannot be installed fails the VM's start rather than leaving the thread unfiltered
//! ([`spawn`]).

use std::collections::BTreeMap;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of threads the VMM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread.
    Vcpu,
    /// A VM's event loop.
    EventLoop,
    /// The process-wide reaper.
    Reaper,
}

/// What a thread may reach beyond itself: the processes its kind may signal and wait for.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The event loop's child processes (passt), which it kills and reaps when the VM stops.
    pub children: Vec<u32>,
    /// The signal the event loop kicks this process's vCPU threads with (0: none).
    pub kick_signal: i32,
    /// The event loop serves shared directories: it may open, make, rename, link and
    /// remove files ([`SHARES`]), relative to the descriptors the file server holds.
    pub shares: bool,
}

/// System calls every VMM thread makes: memory, futexes, signals, clocks, exit (`mmap` and
/// `mprotect` come with a rule of their own: never `PROT_EXEC`).
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_close,
    libc::SYS_write,
    libc::SYS_read,
    libc::SYS_exit,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
];

const VCPU: &[i64] = &[libc::SYS_writev];

const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_settime,
];

/// What the event loop may also do when it serves shared directories (virtio-fs, virtio-9p):
/// the file servers' calls. Paths cannot be checked here (seccomp sees pointers), so the
/// passthrough's own rules keep it inside each share (`devices/virtio/share/passthrough.rs`).
const SHARES: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_open,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_readlinkat,
    libc::SYS_chmod,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_ftruncate,
    libc::SYS_utimensat,
    libc::SYS_getdents64,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
];

const REAPER: &[i64] = &[];

/// `ioctl` request numbers of KVM (`_IO(KVMIO, ...)`: type 0xAE in bits 8..16).
const KVMIO: u64 = 0xAE;
/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: u64 = 0x4004_54d0;

/// Argument `arg` (as a 32-bit value) compared with `value`.
fn arg32(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(Into::into)
}

/// A rule: all of `conditions`.
fn all(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::Error> {
    SeccompRule::new(conditions).map_err(Into::into)
}

/// The system calls allowed only with certain arguments, for `kind` in `scope`. (A system
/// call with no rule is not allowed at all: an empty rule list would allow every call.)
fn conditional(
    kind: ThreadKind,
    scope: &Scope,
) -> Result<Vec<(i64, Vec<SeccompRule>)>, seccompiler::Error> {
    let no_exec = || -> Result<Vec<SeccompRule>, seccompiler::Error> {
        let prot_exec = libc::PROT_EXEC as u64;
        Ok(vec![all(vec![arg32(
            2,
            SeccompCmpOp::MaskedEq(prot_exec),
            0,
        )?])?])
    };
    let mut out = vec![
        (libc::SYS_mmap, no_exec()?),
        (libc::SYS_mprotect, no_exec()?),
    ];
    match kind {
        ThreadKind::Vcpu => out.push((
            libc::SYS_ioctl,
            vec![
                all(vec![arg32(1, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8)?])?,
                all(vec![arg32(1, SeccompCmpOp::Eq, TUNSETOFFLOAD)?])?,
            ],
        )),
        ThreadKind::EventLoop => {
            out.push((
                libc::SYS_ioctl,
                vec![all(vec![arg32(1, SeccompCmpOp::Eq, libc::FIONBIO)?])?],
            ));
            out.push((
                libc::SYS_socket,
                vec![all(vec![arg32(
                    0,
                    SeccompCmpOp::Eq,
                    libc::AF_UNIX as u64,
                )?])?],
            ));
            if scope.kick_signal > 0 {
                // SAFETY: getpid has no arguments and cannot fail.
                let tgid = unsafe { libc::getpid() } as u64;
                out.push((
                    libc::SYS_tgkill,
                    vec![all(vec![
                        arg32(0, SeccompCmpOp::Eq, tgid)?,
                        arg32(2, SeccompCmpOp::Eq, scope.kick_signal as u64)?,
                    ])?],
                ));
            }
            if !scope.children.is_empty() {
                let each = |rule: &dyn Fn(u64) -> Result<SeccompRule, seccompiler::Error>| {
                    scope
                        .children
                        .iter()
                        .map(|&pid| rule(u64::from(pid)))
                        .collect::<Result<Vec<_>, _>>()
                };
                out.push((
                    libc::SYS_kill,
                    each(&|pid| {
                        all(vec![
                            arg32(0, SeccompCmpOp::Eq, pid)?,
                            arg32(1, SeccompCmpOp::Eq, libc::SIGKILL as u64)?,
                        ])
                    })?,
                ));
                out.push((
                    libc::SYS_wait4,
                    each(&|pid| all(vec![arg32(0, SeccompCmpOp::Eq, pid)?]))?,
                ));
                out.push((
                    libc::SYS_waitid,
                    each(&|pid| {
                        all(vec![
                            arg32(0, SeccompCmpOp::Eq, libc::P_PID as u64)?,
                            arg32(1, SeccompCmpOp::Eq, pid)?,
                        ])
                    })?,
                ));
            }
        }
        ThreadKind::Reaper => {}
    }
    Ok(out)
}

/// The filter for `kind` in `scope`, compiled.
pub fn program(kind: ThreadKind, scope: &Scope) -> Result<BpfProgram, seccompiler::Error> {
    let own = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::EventLoop => EVENT_LOOP,
        ThreadKind::Reaper => REAPER,
    };
    let shares: &[i64] = if kind == ThreadKind::EventLoop && scope.shares {
        SHARES
    } else {
        &[]
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(own)
        .chain(shares)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    rules.extend(conditional(kind, scope)?);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    filter.try_into().map_err(seccompiler::Error::Backend)
}

/// Installs the filter for `kind` in `scope` on the calling thread (only).
pub fn install(kind: ThreadKind, scope: &Scope) -> Result<(), seccompiler::Error> {
    let prog = program(kind, scope)?;
    seccompiler::apply_filter(&prog)
}

/// Starts thread `name` running `f`, first filtered as `filter` says (None: unfiltered);
/// returns once the filter is in place. A filter that cannot be compiled or installed is an
/// error here, and `f` never runs: a VM does not run with a thread less confined than asked.
pub fn spawn(
    name: String,
    filter: Option<(ThreadKind, Scope)>,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let prog = match &filter {
        Some((kind, scope)) => Some(program(*kind, scope).map_err(|e| {
            std::io::Error::other(format!(
                "cannot compile the seccomp filter of thread {name}: {e}"
            ))
        })?),
        None => None,
    };
    spawn_with(name, prog, f)
}

/// [`spawn`] with the filter already compiled.
fn spawn_with(
    name: String,
    prog: Option<BpfProgram>,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let failed = |e: &dyn std::fmt::Display| {
        std::io::Error::other(format!(
            "cannot install the seccomp filter of thread {name}: {e}"
        ))
    };
    let (tx, rx) = sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Some(prog) = prog {
                if let Err(e) = seccompiler::apply_filter(&prog) {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
            let _ = tx.send(Ok(()));
            f();
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(failed(&e))
        }
        Err(_) => {
            let _ = handle.join();
            Err(failed(&"the thread ended first"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread that installed the filter for `kind`.
    fn filtered<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            install(kind, &Scope::default()).expect("install the filter");
            f()
        })
        .join()
        .expect("the filtered thread")
    }

    #[test]
    fn a_filtered_thread_cannot_open_files_or_run_programs() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Reaper] {
            let (open, spawn) = filtered(kind, || {
                let open = std::fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
                let spawn = std::process::Command::new("/bin/true")
                    .spawn()
                    .map_err(|e| e.raw_os_error());
                (open.err(), spawn.err())
            });
            assert_eq!(open, Some(Some(libc::EPERM)), "{kind:?}: open");
            assert!(spawn.is_some(), "{kind:?}: spawning a program must fail");
        }
        // The caller's own threads are untouched.
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }

    #[test]
    fn a_filtered_thread_still_does_its_work() {
        let evt = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
        let n = filtered(ThreadKind::Vcpu, move || {
            evt.write(3).expect("an eventfd write (an irqfd)");
            let v: Vec<u8> = vec![7; 1 << 20]; // the allocator
            (
                evt.read().expect("read"),
                v.iter().map(|&x| u64::from(x)).sum::<u64>(),
            )
        });
        assert_eq!(n, (3, 7 << 20));
    }

    /// `errno` of a raw system call's result (0 when it succeeded).
    fn errno(ret: libc::c_long) -> i32 {
        if ret < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn no_filtered_thread_maps_or_makes_memory_executable() {
        for kind in [ThreadKind::Vcpu, ThreadKind::EventLoop, ThreadKind::Reaper] {
            let (map_exec, protect_exec, map_rw) = filtered(kind, || {
                // SAFETY: anonymous private mappings of one page, unmapped below when made.
                unsafe {
                    let len = 4096;
                    let prot = libc::PROT_READ | libc::PROT_WRITE;
                    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                    let exec = libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        prot | libc::PROT_EXEC,
                        flags,
                        -1,
                        0,
                    );
                    let map_exec = exec == libc::MAP_FAILED;
                    let rw = libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0);
                    let map_rw = rw != libc::MAP_FAILED;
                    let protect_exec =
                        libc::mprotect(rw, len, libc::PROT_READ | libc::PROT_EXEC) != 0;
                    libc::munmap(rw, len);
                    (map_exec, protect_exec, map_rw)
                }
            });
            assert!(
                map_exec && protect_exec,
                "{kind:?}: executable memory was allowed"
            );
            assert!(map_rw, "{kind:?}: ordinary memory must still map");
        }
    }

    #[test]
    fn ioctls_sockets_and_signals_are_narrowed_to_what_each_thread_needs() {
        let evt = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
        let fd = std::os::unix::io::AsRawFd::as_raw_fd(&evt);
        // TIOCSTI (typing into a terminal) is a TTY ioctl: refused with EPERM on a vCPU
        // thread (ENOTTY on this eventfd when unfiltered); a KVM-typed number reaches the
        // kernel (ENOTTY: not a KVM fd).
        let (tiocsti, kvm_typed) = filtered(ThreadKind::Vcpu, move || {
            // SAFETY: ioctls on an eventfd with no argument memory the kernel would write.
            unsafe {
                (
                    errno(libc::ioctl(fd, libc::TIOCSTI, c"x".as_ptr()) as libc::c_long),
                    errno(libc::ioctl(fd, 0xAE80 as libc::c_ulong) as libc::c_long),
                )
            }
        });
        assert_eq!((tiocsti, kvm_typed), (libc::EPERM, libc::ENOTTY));
        let (inet, unix, kill_parent, tgkill_other, fionbio) =
            filtered(ThreadKind::EventLoop, move || {
                // SAFETY: plain system calls; sockets made are closed at once.
                unsafe {
                    let inet = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    let result = (
                        errno(inet as libc::c_long),
                        errno(unix as libc::c_long),
                        errno(libc::kill(libc::getppid(), 0) as libc::c_long),
                        errno(libc::syscall(
                            libc::SYS_tgkill,
                            libc::getpid(),
                            libc::gettid(),
                            libc::SIGUSR1,
                        )),
                        errno(libc::ioctl(fd, libc::FIONBIO, &1i32) as libc::c_long),
                    );
                    libc::close(unix);
                    result
                }
            });
        assert_eq!(inet, libc::EPERM, "only UNIX sockets");
        assert_eq!(unix, 0);
        assert_eq!(kill_parent, libc::EPERM, "kill only its own children");
        assert_eq!(
            tgkill_other,
            libc::EPERM,
            "tgkill only with the kick signal"
        );
        assert_eq!(fionbio, 0);
        drop(evt);
    }

    #[test]
    fn the_event_loop_may_kill_and_reap_its_own_children_only() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let scope = Scope {
            children: vec![pid],
            kick_signal: 0,
            shares: false,
        };
        let (other, term, status) = std::thread::spawn(move || {
            install(ThreadKind::EventLoop, &scope).expect("install the filter");
            // SAFETY: signals to our own child and to our parent (signal 0: a check only).
            let other = errno(unsafe { libc::kill(libc::getppid(), 0) } as libc::c_long);
            // SAFETY: SIGTERM to the child this test started; no memory is passed.
            let term = errno(unsafe { libc::kill(pid as i32, libc::SIGTERM) } as libc::c_long);
            let _ = child.kill();
            (other, term, child.wait().map(|s| s.code()))
        })
        .join()
        .expect("the filtered thread");
        assert_eq!(
            (other, term),
            (libc::EPERM, libc::EPERM),
            "only SIGKILL, only to its children"
        );
        assert!(status.is_ok(), "the child is killed and reaped: {status:?}");
    }

    #[test]
    fn a_filter_that_cannot_be_installed_stops_the_thread_from_starting() {
        // The kernel refuses an empty program: spawn reports it and never runs the work.
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let result = spawn_with("inner".into(), Some(BpfProgram::new()), {
            let ran = ran.clone();
            move || ran.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        let e = result.expect_err("installing must fail").to_string();
        assert!(
            e.contains("cannot install the seccomp filter of thread inner"),
            "{e}"
        );
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        // And a good filter: the work runs, filtered.
        let handle = spawn(
            "ok".into(),
            Some((ThreadKind::Reaper, Scope::default())),
            || {
                assert!(std::fs::File::open("/etc/hostname").is_err());
            },
        )
        .expect("spawn");
        handle.join().expect("the filtered work");
    }
}
