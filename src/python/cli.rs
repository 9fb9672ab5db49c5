//! `python -m vmm_reference`: the command line is [`crate::cli`]'s — parsing, messages, exit
//! statuses and the console on the terminal — and only `-- COMMAND` comes back to Python,
//! whose guest-agent client runs it in the VM this module builds.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::prelude::*;

use super::errors::{raise, to_py};
use super::{detached, released, NativeVm};
use crate::cli::{CommandRequest, Outcome};
use crate::config::VsockConfig;
use crate::sync::Locked;

/// Runs the command line `argv` (without the program name) with the GIL released: returns
/// the exit status, or a [`CliCommand`] when it asks for a command in the guest.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<String>) -> PyResult<Py<PyAny>> {
    let outcome = released(py, "running the command line", || {
        let outcome = crate::cli::run(&argv);
        // The extension's Rust runtime never flushes stdout at exit: flush it now.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        outcome
    })?;
    match outcome {
        Outcome::Exit(code) => Ok(code.into_pyobject(py)?.into_any().unbind()),
        Outcome::Command(request) => Ok(Py::new(
            py,
            CliCommand {
                host_root: request.config.host_root.is_some(),
                command: request.command.clone(),
                console: request.console,
                ready_timeout: request.ready_timeout,
                request: Mutex::new(Some(*request)),
            },
        )?
        .into_any()),
    }
}

/// `-- COMMAND`, checked: the command, its options and the VM to build for it.
#[pyclass(frozen, module = "vmm_reference._native", name = "CliCommand")]
struct CliCommand {
    #[pyo3(get)]
    command: Vec<String>,
    #[pyo3(get)]
    console: bool,
    #[pyo3(get)]
    ready_timeout: f64,
    #[pyo3(get)]
    host_root: bool,
    request: Mutex<Option<CommandRequest>>,
}

#[pymethods]
impl CliCommand {
    /// Builds the VM, with a vsock device of context `cid` on the socket `uds` and `initrd`
    /// when the command line named none (once).
    #[pyo3(signature = (cid, uds, initrd=None))]
    fn build(
        &self,
        py: Python<'_>,
        cid: i128,
        uds: PathBuf,
        initrd: Option<PathBuf>,
    ) -> PyResult<NativeVm> {
        let mut config = self.take(py)?.config;
        if config.kernel.initrd.is_none() {
            config.kernel.initrd = initrd;
        }
        config.vsock = Some(VsockConfig {
            cid: crate::config::guest_cid(cid).map_err(|e| to_py(py, e))?,
            uds,
        });
        detached(py, "building the VM", || crate::vm::Vm::new(config)).map(|vm| NativeVm { vm })
    }

    /// Boots the VM on the host's root with its console on this terminal, `initrd` when the
    /// command line named none (once); the exit status.
    fn run_console(&self, py: Python<'_>, initrd: Option<PathBuf>) -> PyResult<i32> {
        let config = self.take(py)?.config;
        released(py, "running the console", move || {
            let code = crate::cli::host_root_console(config, initrd);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            code
        })
    }
}

impl CliCommand {
    fn take(&self, py: Python<'_>) -> PyResult<CommandRequest> {
        self.request
            .locked()
            .take()
            .ok_or_else(|| raise(py, "VmStateError", "the VM was built already".into()))
    }
}

/// A `--blk` value as `(path, read_only, serial)`; a malformed one raises `CliError`.
#[pyfunction]
fn cli_disk(py: Python<'_>, text: &str) -> PyResult<(PathBuf, bool, Option<String>)> {
    match crate::cli::args::parse_disk(text) {
        Ok(d) => Ok((d.path, d.read_only, d.serial)),
        Err(crate::cli::args::Usage::Syntax(m) | crate::cli::args::Usage::Value(m)) => {
            Err(raise(py, "CliError", m))
        }
    }
}

/// A `--fs` value as `(path, tag, read_only, protocol)`; a malformed one raises `CliError`.
#[pyfunction]
fn cli_share(py: Python<'_>, text: &str) -> PyResult<(PathBuf, String, bool, &'static str)> {
    match crate::cli::args::parse_share(text) {
        Ok(s) => Ok((s.path, s.tag, s.read_only, s.protocol.as_str())),
        Err(crate::cli::args::Usage::Syntax(m) | crate::cli::args::Usage::Value(m)) => {
            Err(raise(py, "CliError", m))
        }
    }
}

/// Adds the functions and class.
pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CliCommand>()?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    m.add_function(wrap_pyfunction!(cli_disk, m)?)?;
    m.add_function(wrap_pyfunction!(cli_share, m)?)?;
    Ok(())
}
