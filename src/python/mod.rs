//! The PyO3 layer: a thin class over [`crate::Vm`], used by `python/vmm_reference/vm.py`.
//!
//! Conventions that hold for every method here:
//! - blocking happens with the GIL released ([`Python::detach`]) in short slices, between
//!   which pending signals are checked, so Ctrl-C and Jupyter's interrupt button work;
//! - a Rust panic is caught and becomes a `VmError`, never a `PanicException` or an abort;
//! - errors become the classes of `vmm_reference.errors` (made in [`errors`]), chosen by
//!   [`ErrorKind`](crate::error::ErrorKind), with their fields as attributes.

mod cli;
mod errors;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::config::{DiskConfig, KernelConfig, VmConfig, VsockConfig};
use crate::error::Error;
use crate::exit::ExitStatus;
use crate::vm::{ForkSpec, RestoreOptions, Vm};
use errors::{raise, to_py};

/// How long one GIL-free wait lasts before signals are checked again.
const SLICE: Duration = Duration::from_millis(50);

/// Runs `f`, turning a panic into a `VmError`.
fn guarded<T>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(py, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(raise(
                py,
                "VmError",
                format!("internal error in the VMM: {what}"),
            ))
        }
    }
}

/// An integer argument as Python gave it: any size, converted and range-checked in Rust
/// (`config::int_arg`), so the message states the real accepted range.
fn int<T: TryFrom<i128>>(
    py: Python<'_>,
    arg: &'static str,
    value: &Bound<'_, PyAny>,
    range: impl FnOnce() -> String,
) -> PyResult<T> {
    let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
    crate::config::int_arg(arg, value.extract::<i128>().ok(), &shown, range)
        .map_err(|e| to_py(py, e))
}

/// Runs `f` without the GIL (it may take a while and never touches Python), turning its
/// error into the matching exception and a panic into a `VmError` naming `what` it was doing.
fn detached<T: Send>(
    py: Python<'_>,
    what: &str,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> PyResult<T> {
    released(py, what, f)?.map_err(|e| to_py(py, e))
}

/// Runs `f` without the GIL; a panic becomes a `VmError` naming `what` it was doing, never
/// a `PanicException` or an abort.
fn released<T: Send>(py: Python<'_>, what: &str, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f)))
        .map_err(|_| {
            raise(
                py,
                "VmError",
                format!("internal error in the VMM while {what}"),
            )
        })
}

fn deadline(timeout: Option<f64>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)))
}

fn next_slice(deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
        None => SLICE,
    }
}

type StatusTuple = (&'static str, Option<String>, Option<u32>);

/// A network device as Python passes it: kind (`tap`/`user`), TAP name, MAC, TCP forwards.
type NetArg = (String, String, Option<String>, Vec<(i64, i64)>);

/// The network devices `net` (what Python's `net_tuples` makes) describes; errors name `net[i]`.
fn net_configs(net: &[NetArg]) -> Result<Vec<crate::config::NetConfig>, crate::refusal::Refusal> {
    net.iter()
        .enumerate()
        .map(|(i, (kind, name, mac, forward))| {
            crate::config::net_config(i, kind, name, mac.as_deref(), forward)
        })
        .collect()
}

/// The disks `(path, read_only, serial)` describe.
fn disk_configs(disks: Vec<(PathBuf, bool, Option<String>)>) -> Vec<DiskConfig> {
    disks
        .into_iter()
        .map(|(path, read_only, serial)| DiskConfig {
            path,
            read_only,
            serial,
        })
        .collect()
}

fn status_tuple(s: ExitStatus) -> StatusTuple {
    (s.reason.as_str(), s.detail, s.code)
}

/// A VM owned by Python. See `vmm_reference.Vm` for the documented API.
#[pyclass(frozen, module = "vmm_reference._native", name = "NativeVm")]
pub(crate) struct NativeVm {
    vm: Vm,
}

#[pymethods]
impl NativeVm {
    #[new]
    #[pyo3(signature = (memory_mib, vcpus, kernel, cmdline, himem_start, initrd, console_limit, acpi, disks=Vec::new(), net=Vec::new(), vsock=None, seccomp=true, transport="mmio", rng=false, rng_rate=None, shares=Vec::new(), host_root=None, gdb=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        memory_mib: &Bound<'_, PyAny>,
        vcpus: &Bound<'_, PyAny>,
        kernel: PathBuf,
        cmdline: String,
        himem_start: &Bound<'_, PyAny>,
        initrd: Option<PathBuf>,
        console_limit: &Bound<'_, PyAny>,
        acpi: bool,
        disks: Vec<(PathBuf, bool, Option<String>)>,
        net: Vec<NetArg>,
        vsock: Option<(i128, PathBuf)>,
        seccomp: bool,
        transport: &str,
        rng: bool,
        rng_rate: Option<&Bound<'_, PyAny>>,
        shares: Vec<(PathBuf, String, bool, String)>,
        host_root: Option<(Option<PathBuf>, Option<PathBuf>, String)>,
        gdb: Option<String>,
    ) -> PyResult<Self> {
        use crate::config::{console_limit_range, himem_start_range};
        let memory_mib = int(py, "memory_mib", memory_mib, crate::kvm::memory_range)?;
        let vcpus = int(py, "vcpus", vcpus, crate::kvm::vcpus_range)?;
        let himem_start = int(py, "himem_start", himem_start, himem_start_range)?;
        let console_limit = int(py, "console_limit", console_limit, console_limit_range)?;
        let net = net_configs(&net).map_err(|e| to_py(py, e))?;
        let vsock = match vsock {
            Some((cid, uds)) => Some(VsockConfig {
                cid: crate::config::guest_cid(cid).map_err(|e| to_py(py, e))?,
                uds,
            }),
            None => None,
        };
        let transport = crate::config::Transport::parse(transport).map_err(|e| to_py(py, e))?;
        let rng = if rng {
            let rate = match rng_rate {
                Some(r) => Some(int(py, "rng.rate", r, crate::config::rng_rate_range)?),
                None => None,
            };
            Some(crate::config::RngConfig { rate })
        } else {
            None
        };
        use crate::config::{HostRootConfig, ShareConfig, ShareProtocol};
        let shares = shares
            .into_iter()
            .enumerate()
            .map(|(i, (path, tag, read_only, protocol))| {
                Ok(ShareConfig {
                    path,
                    tag,
                    read_only,
                    protocol: ShareProtocol::parse(format!("shares[{i}].protocol"), &protocol)
                        .map_err(|e| to_py(py, e))?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let host_root = match host_root {
            Some((cwd, modules, protocol)) => Some(HostRootConfig {
                cwd,
                modules,
                protocol: ShareProtocol::parse("root_protocol", &protocol)
                    .map_err(|e| to_py(py, e))?,
            }),
            None => None,
        };
        let gdb = gdb_config(py, gdb)?;
        let config = VmConfig {
            memory_mib,
            vcpus,
            kernel: KernelConfig {
                path: kernel,
                cmdline,
                himem_start,
                initrd,
            },
            console_limit,
            acpi,
            disks: disk_configs(disks),
            net,
            vsock,
            rng,
            shares,
            host_root,
            transport,
            seccomp,
            gdb,
        };
        detached(py, "building the VM", || Vm::new(config)).map(|vm| NativeVm { vm })
    }

    fn start(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || self.vm.start())
    }

    /// Writes a snapshot into the directory `path`; returns the bytes of memory written.
    fn snapshot(&self, py: Python<'_>, path: PathBuf) -> PyResult<u64> {
        detached(py, "snapshotting", || self.vm.snapshot(&path))
    }

    /// Writes an ELF core of the guest to `path`; returns the bytes of RAM written.
    fn dump_core(&self, py: Python<'_>, path: PathBuf) -> PyResult<u64> {
        detached(py, "dumping the guest", || self.vm.dump_core(&path))
    }

    /// The configuration: `(memory_mib, vcpus, kernel, acpi, disks, vsock)`, disks as
    /// `(path, read_only, serial)` and vsock as `(cid, uds)`.
    #[allow(clippy::type_complexity)]
    fn config(
        &self,
    ) -> (
        u64,
        u32,
        PathBuf,
        bool,
        Vec<(PathBuf, bool, Option<String>)>,
        Option<(u32, PathBuf)>,
    ) {
        let c = self.vm.config();
        (
            c.memory_mib,
            c.vcpus,
            c.kernel.path.clone(),
            c.acpi,
            c.disks
                .iter()
                .map(|d| (d.path.clone(), d.read_only, d.serial.clone()))
                .collect(),
            c.vsock.as_ref().map(|v| (v.cid, v.uds.clone())),
        )
    }

    /// A paused VM from the snapshot in `path`; `disks`/`net` (None: the saved ones) are
    /// what the caller gives it, `seccomp` whatever the saved VM had.
    #[staticmethod]
    #[pyo3(signature = (path, console_limit=None, vsock_uds=None, seccomp=true, disks=None, net=None, gdb=None))]
    #[allow(clippy::too_many_arguments)] // the keywords of Python's Vm.restore
    fn restore(
        py: Python<'_>,
        path: PathBuf,
        console_limit: Option<&Bound<'_, PyAny>>,
        vsock_uds: Option<PathBuf>,
        seccomp: bool,
        disks: Option<Vec<(PathBuf, bool, Option<String>)>>,
        net: Option<Vec<NetArg>>,
        gdb: Option<String>,
    ) -> PyResult<NativeVm> {
        let console_limit = console_limit
            .map(|c| int(py, "console_limit", c, crate::config::console_limit_range))
            .transpose()?;
        let net = net
            .map(|n| net_configs(&n))
            .transpose()
            .map_err(|e| to_py(py, e))?;
        let options = RestoreOptions {
            console_limit,
            vsock_uds,
            seccomp,
            disks: disks.map(disk_configs),
            net,
            gdb: gdb_config(py, gdb)?,
        };
        detached(py, "restoring", || Vm::restore(&path, options)).map(|vm| NativeVm { vm })
    }

    /// Paused clones, one per entry of `vsock_uds` (each clone's vsock socket, or None).
    fn fork(&self, py: Python<'_>, vsock_uds: Vec<Option<PathBuf>>) -> PyResult<Vec<NativeVm>> {
        let specs: Vec<ForkSpec> = vsock_uds
            .into_iter()
            .map(|uds| ForkSpec { vsock_uds: uds })
            .collect();
        detached(py, "forking", || self.vm.fork(&specs))
            .map(|vms| vms.into_iter().map(|vm| NativeVm { vm }).collect())
    }

    /// Waits up to `timeout` seconds (forever if None); None on timeout.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<StatusTuple>> {
        if self.vm.state() == crate::VmState::Created {
            return Err(to_py(
                py,
                Error::InvalidState {
                    operation: "wait",
                    state: crate::VmState::Created.as_str(),
                },
            ));
        }
        let end = deadline(timeout);
        loop {
            let slice = next_slice(end);
            if let Some(s) = released(py, "waiting", || self.vm.wait(Some(slice)))? {
                return Ok(Some(status_tuple(s)));
            }
            py.check_signals()?;
            if end.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }

    fn pause(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, "pausing", || self.vm.pause())
    }

    fn resume(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || self.vm.resume())
    }

    fn kill(&self, py: Python<'_>) -> PyResult<()> {
        released(py, "killing the VM", || self.vm.kill())
    }

    fn press_power_button(&self, py: Python<'_>) -> PyResult<bool> {
        guarded(py, || self.vm.press_power_button())
    }

    #[getter]
    fn state(&self) -> &'static str {
        self.vm.state().as_str()
    }

    #[getter]
    fn exit_status(&self) -> Option<StatusTuple> {
        self.vm.exit_status().map(status_tuple)
    }

    /// Reads up to `max` console bytes from `offset`, waiting up to `timeout` seconds
    /// (forever if None) for some to arrive. Returns (start, data, eof).
    #[pyo3(signature = (offset, max, timeout=None))]
    fn read_console<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        max: usize,
        timeout: Option<f64>,
    ) -> PyResult<(u64, Bound<'py, PyBytes>, bool)> {
        let end = deadline(timeout);
        let console = self.vm.console().clone();
        loop {
            let slice = next_slice(end);
            let chunk = released(py, "reading the console", || {
                console.read_batched(offset, max, slice)
            })?;
            let expired = end.is_some_and(|d| Instant::now() >= d);
            if !chunk.data.is_empty() || chunk.eof || expired {
                return Ok((chunk.start, PyBytes::new(py, &chunk.data), chunk.eof));
            }
            py.check_signals()?;
        }
    }

    /// Everything retained: (offset of the first byte, bytes).
    fn console_snapshot<'py>(&self, py: Python<'py>) -> (u64, Bound<'py, PyBytes>) {
        let (start, data) = self.vm.console().snapshot();
        (start, PyBytes::new(py, &data))
    }

    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        guarded(py, || self.vm.write_input(data))
    }

    fn boot_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let info = self.vm.boot_info();
        let d = PyDict::new(py);
        d.set_item("format", info.format.to_string())?;
        d.set_item("entry", info.entry)?;
        d.set_item("kernel_end", info.kernel_end)?;
        d.set_item("cmdline", &info.cmdline)?;
        d.set_item("initrd", info.initrd)?;
        let e820: Vec<(u64, u64, u32)> =
            info.e820.iter().map(|e| (e.addr, e.size, e.kind)).collect();
        d.set_item("e820", e820)?;
        #[allow(clippy::type_complexity)]
        let devices: Vec<(&str, u64, u64, u32, &str, Option<String>, u16)> = self
            .vm
            .devices()
            .iter()
            .map(|dev| {
                (
                    dev.kind,
                    dev.mmio_base,
                    dev.mmio_len,
                    dev.gsi,
                    dev.transport.as_str(),
                    dev.bdf.map(|(b, d, f)| format!("{b:02x}:{d:02x}.{f}")),
                    dev.msix_vectors,
                )
            })
            .collect();
        d.set_item("devices", devices)?;
        Ok(d)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.vm.stats();
        let d = PyDict::new(py);
        let exits = PyDict::new(py);
        exits.set_item("io", s.exits.pio)?;
        exits.set_item("io_unhandled", s.exits.pio_unhandled)?;
        exits.set_item("mmio", s.exits.mmio)?;
        exits.set_item("mmio_unhandled", s.exits.mmio_unhandled)?;
        exits.set_item("hlt", s.exits.hlt)?;
        exits.set_item("interrupted", s.exits.interrupted)?;
        d.set_item("exits", exits)?;
        d.set_item("rss_bytes", rss_bytes())?;
        d.set_item("console_bytes", s.console_bytes)?;
        d.set_item("disk_requests", self.vm.disk_requests())?;
        let net: Vec<(u64, u64, u64)> = self
            .vm
            .net_counters()
            .iter()
            .map(|c| (c.tx_frames, c.rx_frames, c.dropped))
            .collect();
        d.set_item("net_frames", net)?;
        d.set_item("uptime", s.uptime.as_secs_f64())?;
        Ok(d)
    }

    /// Boot-time markers: [(value, seconds since start)].
    fn boot_markers(&self) -> Vec<(u8, f64)> {
        self.vm
            .boot_markers()
            .into_iter()
            .map(|(v, t)| (v, t.as_secs_f64()))
            .collect()
    }

    /// When console output arrived: (the first byte's seconds since start, or None;
    /// [(offset one past a line's newline, seconds since start)] for the first lines).
    fn console_times(&self) -> (Option<f64>, Vec<(u64, f64)>) {
        let (first, lines) = self.vm.console_times();
        let lines = lines.into_iter().map(|(o, t)| (o, t.as_secs_f64()));
        (first.map(|t| t.as_secs_f64()), lines.collect())
    }

    /// Seconds from start to when the exit status was decided, or None.
    #[getter]
    fn exit_time(&self) -> Option<f64> {
        self.vm.exit_time().map(|t| t.as_secs_f64())
    }

    #[getter]
    fn console_limit(&self) -> usize {
        self.vm.console().limit()
    }
}

/// This process's resident set size in bytes, from /proc/self/statm (0 if unreadable).
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// KVM's vCPU limit on this host, or None when KVM is unavailable.
#[pyfunction]
fn max_vcpus() -> Option<usize> {
    crate::kvm::open_kvm().ok().map(|k| k.get_max_vcpus())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::add(m)?;
    m.add_class::<NativeVm>()?;
    cli::add(m)?;
    m.add_function(wrap_pyfunction!(max_vcpus, m)?)?;
    m.add("DEFAULT_CMDLINE", crate::config::DEFAULT_CMDLINE)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "DEFAULT_CONSOLE_LIMIT",
        crate::config::DEFAULT_CONSOLE_LIMIT,
    )?;
    m.add("DEFAULT_MEMORY_MIB", crate::config::DEFAULT_MEMORY_MIB)?;
    m.add("MAX_FORK", crate::vm::MAX_FORK)?;
    m.add(
        "HIMEM_START_DEFAULT",
        crate::arch::x86_64::layout::HIMEM_START_MIN,
    )?;
    Ok(())
}

/// A front end's `gdb` argument, parsed (errors name `gdb`).
fn gdb_config(py: Python<'_>, gdb: Option<String>) -> PyResult<Option<crate::config::GdbConfig>> {
    gdb.map(|g| crate::config::GdbConfig::parse(&g).map_err(|e| to_py(py, e)))
        .transpose()
}
