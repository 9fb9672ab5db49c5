//! The `vmm-reference` command: boot a kernel with its serial console on this terminal, in
//! the original project's syntax. This module owns the whole command line — options, help,
//! messages, exit statuses, the terminal — for both ways it is started: the native program
//! (`src/bin`, which starts in about a millisecond) and `python -m vmm_reference`, whose
//! `cli.py` calls [`run`] through the extension.
//!
//! `-- COMMAND` (run a command in the guest through its agent) needs the agent's client,
//! which is Python: [`run`] parses and checks everything, then hands back a
//! [`CommandRequest`] instead of booting. The native program answers that by handing its
//! command line to `python3 -m vmm_reference` (the interpreter installed beside it, or
//! `$VMM_REFERENCE_PYTHON`, or `python3` on `PATH`); a boot to userspace dwarfs interpreter
//! start-up.
//!
//! Exit status: 0 when the guest reset, shut down or powered off the machine; the guest's
//! code when it wrote one to the exit device; 1 when the VM failed, panicked or was killed;
//! 2 on a usage error (a malformed option or a value the VMM does not accept, including a
//! missing file); 130 when interrupted.

pub mod args;
mod help;
pub mod terminal;

use std::io::Write;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use args::{Refused, Request, Usage, HELP, PROG, USAGE};

use crate::config::{self, VmConfig, DEFAULT_CONSOLE_LIMIT};
use crate::error::{Error, ErrorKind};
use crate::exit::{ExitReason, ExitStatus};
use crate::vm::Vm;

/// Exit status for a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the VM failed or ended badly.
pub const EXIT_FAILED: i32 = 1;
/// Exit status after SIGINT, SIGTERM or SIGHUP.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Whether an error from building the VM is the command line's fault (exit status 2).
pub fn is_usage_error(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidArgument | ErrorKind::FileNotFound
    )
}

/// The exit status for how the VM ended, and the message to print (if any).
pub fn exit_code(status: &ExitStatus) -> (i32, Option<String>) {
    match (status.reason, status.code) {
        (ExitReason::Poweroff, Some(code)) => ((code & 0xff) as i32, None),
        (ExitReason::Reset | ExitReason::Shutdown | ExitReason::Poweroff, _) => (0, None),
        (reason, _) => {
            let detail = status
                .detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            (
                EXIT_FAILED,
                Some(format!("the VM ended with reason {reason}{detail}")),
            )
        }
    }
}

/// The signal that asked us to stop, or 0.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// SIGUSR1s received: each asks for a core of the guest ([`dump_on_signal`]).
static DUMP_SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_stop_signal(signo: libc::c_int) {
    if signo == libc::SIGUSR1 {
        DUMP_SIGNALS.fetch_add(1, Ordering::Relaxed);
    } else {
        STOP_SIGNAL.store(signo, Ordering::Relaxed);
    }
}

/// SIGINT, SIGTERM and SIGHUP (stop) and SIGUSR1 (write a core) caught while the console
/// runs, and the handlers they had put back when dropped (inside Python, its own SIGINT
/// handler comes back).
struct StopSignals {
    saved: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopSignals {
    fn catch() -> StopSignals {
        STOP_SIGNAL.store(0, Ordering::Relaxed);
        let mut saved = Vec::new();
        for signo in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            // SAFETY: a zeroed sigaction with a handler that only stores to an atomic is valid
            // and async-signal-safe; SA_RESTART is deliberately off so blocking waits return.
            // The previous action is written into a zeroed sigaction we own.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signo, &sa, &mut old) == 0 {
                    saved.push((signo, old));
                }
            }
        }
        StopSignals { saved }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        for (signo, old) in &self.saved {
            // SAFETY: `old` is the action sigaction returned for this signal.
            unsafe { libc::sigaction(*signo, old, std::ptr::null_mut()) };
        }
    }
}

fn error(message: &str) {
    eprintln!("{PROG}: error: {message}");
}

/// What the Python package runs: `-- COMMAND` (through the guest agent's client), or a VM on
/// the host's root without an initramfs of its own (the package's is the default); the VM is
/// checked, not built.
#[derive(Debug)]
pub struct CommandRequest {
    /// The VM, without its vsock device (the agent's client adds one with its socket).
    pub config: VmConfig,
    /// The command and its arguments (none: the console, with a shell on the host's root).
    pub command: Vec<String>,
    /// `--console`: copy the guest's console to stderr.
    pub console: bool,
    /// `--ready-timeout`, seconds.
    pub ready_timeout: f64,
}

/// What [`run`] did.
#[derive(Debug)]
pub enum Outcome {
    /// It is over: exit with this status (help, a usage error, or the VM ran and ended).
    Exit(i32),
    /// The command line asks for a command in the guest: the agent's client runs it.
    Command(Box<CommandRequest>),
}

/// The native program: [`run`], and `-- COMMAND` handed to the Python package.
pub fn main(argv: Vec<String>) -> i32 {
    match run(&argv) {
        Outcome::Exit(code) => code,
        Outcome::Command(_) => run_in_python(&argv),
    }
}

/// Runs the command line `argv` (without the program name): prints the help, the version or
/// a usage error, or boots the VM with its console on this terminal until it ends; a
/// command after `--` comes back as [`Outcome::Command`] once its options are checked.
pub fn run(argv: &[String]) -> Outcome {
    let opts = match args::parse(argv) {
        Ok(Request::Help) => {
            print!("{USAGE}{HELP}");
            return Outcome::Exit(0);
        }
        Ok(Request::Version) => {
            println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
            return Outcome::Exit(0);
        }
        Ok(Request::Run(opts)) => opts,
        Err(Usage::Syntax(m)) => {
            eprint!("{USAGE}");
            error(&m);
            return Outcome::Exit(EXIT_USAGE);
        }
        Err(Usage::Value(m)) => {
            error(&m);
            return Outcome::Exit(EXIT_USAGE);
        }
    };
    let config = match config(&opts) {
        Ok(config) => config,
        Err(e) => return Outcome::Exit(refused(e)),
    };
    // The host's root needs the package's initramfs (its /init mounts it) unless one is given.
    let needs_python = config.host_root.is_some() && config.kernel.initrd.is_none();
    if !opts.command.is_empty() || needs_python {
        let ready_timeout = opts
            .ready_timeout
            .as_deref()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .unwrap_or(DEFAULT_READY_TIMEOUT);
        return Outcome::Command(Box::new(CommandRequest {
            config,
            command: opts.command,
            console: opts.console,
            ready_timeout,
        }));
    }
    Outcome::Exit(boot_console(config))
}

/// Boots `config` with its console on this terminal until it ends; the exit status.
pub fn boot_console(config: VmConfig) -> i32 {
    let vm = match Vm::new(config) {
        Ok(vm) => Arc::new(vm),
        Err(e) => return refused(Refused::Vm(e)),
    };
    let signals = StopSignals::catch();
    let raw = terminal::RawMode::enter(libc::STDIN_FILENO);
    let status = console(&vm);
    drop(raw);
    drop(signals);
    match status {
        Ok(Some(status)) => {
            let (code, message) = exit_code(&status);
            if let Some(m) = message {
                eprintln!("\n{PROG}: {m}");
            }
            code
        }
        Ok(None) => {
            eprintln!("\n{PROG}: interrupted");
            EXIT_INTERRUPTED
        }
        Err(e) => {
            error(&e.to_string());
            EXIT_FAILED
        }
    }
}

/// The console of a VM on the host's root whose initramfs the package gave (`initrd`): a
/// shell on the console (`vmm.init=shell`); the exit status.
pub fn host_root_console(mut config: VmConfig, initrd: Option<std::path::PathBuf>) -> i32 {
    if config.kernel.initrd.is_none() {
        config.kernel.initrd = initrd;
    }
    config.kernel.cmdline.push_str(" vmm.init=shell");
    boot_console(config)
}

/// How long `-- COMMAND` waits for the guest agent when `--ready-timeout` is not given.
pub const DEFAULT_READY_TIMEOUT: f64 = 120.0;

/// Prints why the VM was refused; returns the exit status.
fn refused(e: Refused) -> i32 {
    match e {
        Refused::Usage(Usage::Syntax(m) | Usage::Value(m)) => {
            error(&m);
            EXIT_USAGE
        }
        Refused::Vm(e) => {
            error(&e.to_string());
            if is_usage_error(&e) {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            }
        }
    }
}

/// The VM the options describe, checked (files are opened when it is built).
pub fn config(opts: &args::Options) -> Result<VmConfig, Refused> {
    let a = args::vm_args(opts)?;
    let memory_mib = config::int_arg(
        "memory_mib",
        a.memory_mib.0,
        &a.memory_mib.1,
        crate::kvm::memory_range,
    )?;
    let vcpus = config::int_arg("vcpus", a.vcpus.0, &a.vcpus.1, crate::kvm::vcpus_range)?;
    let himem_start = config::int_arg(
        "himem_start",
        a.himem_start.0,
        &a.himem_start.1,
        config::himem_start_range,
    )?;
    Ok(VmConfig {
        memory_mib,
        vcpus,
        kernel: config::KernelConfig {
            himem_start,
            ..a.kernel
        },
        console_limit: DEFAULT_CONSOLE_LIMIT,
        acpi: true,
        disks: a.disks,
        net: a.net,
        vsock: None,
        rng: a.rng,
        shares: a.shares,
        host_root: a.host_root,
        transport: a.transport,
        seccomp: true,
        gdb: a.gdb,
    })
}

/// Starts the VM and copies its console to stdout until it ends; None when a signal
/// stopped us first (the VM is killed).
fn console(vm: &Arc<Vm>) -> Result<Option<ExitStatus>, Error> {
    vm.start()?;
    let forwarder = terminal::StdinForwarder::start(vm.clone(), libc::STDIN_FILENO).ok();
    let console = vm.console();
    let mut offset = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut interrupted = false;
    let mut dumps = DUMP_SIGNALS.load(Ordering::Relaxed);
    loop {
        if STOP_SIGNAL.load(Ordering::Relaxed) != 0 && !interrupted {
            interrupted = true;
            vm.kill();
        }
        let asked = DUMP_SIGNALS.load(Ordering::Relaxed);
        if asked != dumps {
            dumps = asked;
            dump_on_signal(vm);
        }
        let chunk = console.read_wait(offset, 64 * 1024, Duration::from_millis(200));
        offset = chunk.start + chunk.data.len() as u64;
        if !chunk.data.is_empty() {
            // A closed stdout only means nobody reads: keep draining until the VM ends.
            let _ = stdout.write_all(&chunk.data).and_then(|()| stdout.flush());
        } else if chunk.eof {
            break;
        }
    }
    drop(forwarder);
    let status = vm.wait(None);
    if interrupted {
        return Ok(None);
    }
    Ok(status)
}

/// Writes a core of the guest (`kill -USR1`) to `vmm-reference-PID-N.core` in the current
/// directory (N counts this process's dumps), and says where on stderr.
fn dump_on_signal(vm: &Vm) {
    static WRITTEN: AtomicU32 = AtomicU32::new(0);
    let n = WRITTEN.fetch_add(1, Ordering::Relaxed) + 1;
    let path = std::path::PathBuf::from(format!("{PROG}-{}-{n}.core", std::process::id()));
    // The terminal is raw: a line ends in "\r\n".
    match vm.dump_core(&path) {
        Ok(bytes) => eprint!(
            "\r\n{PROG}: guest core written to {} ({} MiB of RAM)\r\n",
            path.display(),
            bytes >> 20
        ),
        Err(e) => eprint!("\r\n{PROG}: cannot write a core: {e}\r\n"),
    }
}

/// Hands the command line to the Python package's CLI (for `-- COMMAND`); returns only on
/// failure.
fn run_in_python(argv: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;

    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("python3")))
        .filter(|p| p.exists());
    let python = std::env::var_os("VMM_REFERENCE_PYTHON")
        .map(std::path::PathBuf::from)
        .or(beside)
        .unwrap_or_else(|| "python3".into());
    let err = std::process::Command::new(&python)
        .args(["-m", "vmm_reference"])
        .args(argv)
        .exec();
    error(&format!(
        "running a command in the guest needs the Python package (`{} -m vmm_reference`): {err}",
        python.display()
    ));
    EXIT_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_one_rule() {
        let s = |reason, code| ExitStatus {
            reason,
            detail: None,
            code,
        };
        assert_eq!(exit_code(&s(ExitReason::Reset, None)).0, 0);
        assert_eq!(exit_code(&s(ExitReason::Poweroff, None)).0, 0);
        assert_eq!(exit_code(&s(ExitReason::Poweroff, Some(7))).0, 7);
        assert_eq!(exit_code(&s(ExitReason::Poweroff, Some(0x1ff))).0, 0xff);
        let (code, msg) = exit_code(&ExitStatus::with_detail(ExitReason::Panic, "oops"));
        assert_eq!(code, EXIT_FAILED);
        assert_eq!(msg.unwrap(), "the VM ended with reason panic: oops");
        assert!(is_usage_error(&Error::invalid(
            "vcpus",
            0,
            "expected 1 to 2"
        )));
    }
}
