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
//! - vCPU threads: `KVM_RUN` and the vCPU/VM ioctls (state save and restore, IRQ lines, TAP
//!   offloads set when a driver starts a network device), eventfd writes (irqfds, the exit
//!   signal), futexes, memory management, the kick signal's return, clock reads, thread exit;
//! - the event loop: epoll, reads and writes of every kind (disk images, TAPs, sockets),
//!   `fsync`/`fdatasync`/`fallocate` (flush, discard), socket calls (vsock connections to
//!   `<uds>_<port>`, `accept4` on the listening socket), `unlink` (the socket file at stop),
//!   `kill`/`wait4`/`waitid` (stopping passt), `tgkill` (kicking vCPUs), sleeping;
//! - the reaper: `close` and `munmap` of dropped VMs, futexes.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

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

/// System calls every VMM thread makes: memory, futexes, signals, clocks, exit.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
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

const VCPU: &[i64] = &[libc::SYS_ioctl, libc::SYS_writev];

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
    libc::SYS_ioctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_socket,
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
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_pidfd_send_signal,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_settime,
];

const REAPER: &[i64] = &[];

/// The filter for `kind`, compiled.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, seccompiler::Error> {
    let own = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::EventLoop => EVENT_LOOP,
        ThreadKind::Reaper => REAPER,
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = COMMON
        .iter()
        .chain(own)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    filter.try_into().map_err(seccompiler::Error::Backend)
}

/// Installs the filter for `kind` on the calling thread (only). Failing to install it is
/// reported, not fatal: the thread then runs unfiltered, as with `seccomp=False`.
pub fn install(kind: ThreadKind) -> Result<(), seccompiler::Error> {
    let prog = program(kind)?;
    seccompiler::apply_filter(&prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread that installed the filter for `kind`.
    fn filtered<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            install(kind).expect("install the filter");
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
}
