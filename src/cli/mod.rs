//! The `vmm-reference` command, natively: boot a kernel with its serial console on this
//! terminal, in the original project's syntax. It behaves as `python -m vmm_reference` does
//! (the same options, messages, exit statuses and terminal handling; the CLI tests run both)
//! but starts in about a millisecond instead of the ~30 ms Python needs to start and import.
//!
//! `-- COMMAND` (run a command in the guest through its agent) is the Python package's: the
//! guest agent's client is Python, and a boot to userspace dwarfs interpreter start-up, so
//! the command hands the whole command line to `python3 -m vmm_reference` (the interpreter
//! installed beside this program, or `$VMM_REFERENCE_PYTHON`, or `python3` on `PATH`).
//!
//! Exit status: 0 when the guest reset, shut down or powered off the machine; the guest's
//! code when it wrote one to the exit device; 1 when the VM failed, panicked or was killed;
//! 2 on a usage error (a malformed option or a value the VMM does not accept, including a
//! missing file); 130 when interrupted.

pub mod args;
pub mod terminal;

use std::io::Write;
use std::sync::atomic::{AtomicI32, Ordering};
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

extern "C" fn on_stop_signal(signo: libc::c_int) {
    STOP_SIGNAL.store(signo, Ordering::Relaxed);
}

fn catch_stop_signals() {
    for signo in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic is valid
        // and async-signal-safe; SA_RESTART is deliberately off so blocking waits return.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signo, &sa, std::ptr::null_mut());
        }
    }
}

fn error(message: &str) {
    eprintln!("{PROG}: error: {message}");
}

/// Runs the command with `argv` (without the program name); returns the exit status.
pub fn main(argv: Vec<String>) -> i32 {
    let opts = match args::parse(&argv) {
        Ok(Request::Help) => {
            print!("{USAGE}{HELP}");
            return 0;
        }
        Ok(Request::Version) => {
            println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Ok(Request::Run(opts)) => opts,
        Err(Usage::Syntax(m)) => {
            eprint!("{USAGE}");
            error(&m);
            return EXIT_USAGE;
        }
        Err(Usage::Value(m)) => {
            error(&m);
            return EXIT_USAGE;
        }
    };
    if !opts.command.is_empty() {
        return run_in_python(&argv);
    }
    let vm = match build(&opts) {
        Ok(vm) => Arc::new(vm),
        Err(Refused::Usage(Usage::Syntax(m) | Usage::Value(m))) => {
            error(&m);
            return EXIT_USAGE;
        }
        Err(Refused::Vm(e)) => {
            error(&e.to_string());
            return if is_usage_error(&e) {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            };
        }
    };
    catch_stop_signals();
    let raw = terminal::RawMode::enter(libc::STDIN_FILENO);
    let status = run(&vm);
    drop(raw);
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

/// The VM the options describe, built and not started.
fn build(opts: &args::Options) -> Result<Vm, Refused> {
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
    let config = VmConfig {
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
        transport: a.transport,
        seccomp: true,
    };
    Ok(Vm::new(config)?)
}

/// Starts the VM and copies its console to stdout until it ends; None when a signal
/// stopped us first (the VM is killed).
fn run(vm: &Arc<Vm>) -> Result<Option<ExitStatus>, Error> {
    vm.start()?;
    let forwarder = terminal::StdinForwarder::start(vm.clone(), libc::STDIN_FILENO).ok();
    let console = vm.console();
    let mut offset = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut interrupted = false;
    loop {
        if STOP_SIGNAL.load(Ordering::Relaxed) != 0 && !interrupted {
            interrupted = true;
            vm.kill();
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
