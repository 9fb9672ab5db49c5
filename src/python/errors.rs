//! The exception classes of `vmm_reference.errors`, made here so that the extension raises
//! them with their fields set and Python code (`errors.py` re-exports them) raises the same
//! classes. Each derives from `VmError` and from the built-in exception that fits, so
//! `except ValueError` or `except FileNotFoundError` work as expected; PyO3's
//! `create_exception!` takes one base only, so the classes are made with `type()`.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::{Error, ErrorKind};
use crate::refusal::Refusal;

/// One class: its name, the built-in base beside `VmError` (None: `VmError` itself or a
/// subclass of another class here), its docstring, and its attributes (default None).
struct Spec {
    name: &'static str,
    builtin: Option<&'static str>,
    parent: Option<&'static str>,
    doc: &'static str,
    fields: &'static [&'static str],
}

const SPECS: &[Spec] = &[
    Spec {
        name: "VmError",
        builtin: Some("Exception"),
        parent: None,
        doc: "Base class of every error raised by vmm_reference.",
        fields: &[],
    },
    Spec {
        name: "VmConfigError",
        builtin: Some("ValueError"),
        parent: None,
        doc: "A configuration value is out of range or malformed.\n\n\
              When the VMM refused it, ``argument``, ``value`` and ``accepted`` say which \
              argument (as the caller wrote it: ``memory_mib``, ``disks[1]``, ``net[0].tap``), \
              the value given (as the message shows it) and what is accepted instead (the \
              real range on this host); otherwise they are None.",
        fields: &["argument", "value", "accepted"],
    },
    Spec {
        name: "VmFileNotFoundError",
        builtin: Some("FileNotFoundError"),
        parent: None,
        doc: "A file the configuration names (kernel, initrd, disk, passt, a socket's \
              directory) does not exist.\n\n\
              ``argument`` is the argument that named it (``kernel``, ``disks[0]``, \
              ``vsock.uds``) and ``path`` the path that does not exist.",
        fields: &["argument", "path"],
    },
    Spec {
        name: "VmPermissionError",
        builtin: Some("PermissionError"),
        parent: None,
        doc: "A file, or ``/dev/kvm``, exists but cannot be opened by this user.\n\n\
              ``argument`` is the argument that named it (``kvm`` for ``/dev/kvm``) and \
              ``path`` the path that cannot be opened.",
        fields: &["argument", "path"],
    },
    Spec {
        name: "KvmUnavailableError",
        builtin: Some("OSError"),
        parent: None,
        doc: "KVM is missing or unusable on this host.",
        fields: &[],
    },
    Spec {
        name: "VmStateError",
        builtin: Some("RuntimeError"),
        parent: None,
        doc: "The call is not allowed in the VM's current state (e.g. ``start()`` twice).",
        fields: &[],
    },
    Spec {
        name: "VmTimeoutError",
        builtin: Some("TimeoutError"),
        parent: None,
        doc: "A wait ran out of time; the message shows the last console lines.\n\n\
              When ``Vm.run`` times out, ``stdout`` and ``stderr`` hold what the command \
              printed until then (bytes, or str with ``text=True``).",
        fields: &["stdout", "stderr"],
    },
    Spec {
        name: "VmSnapshotError",
        builtin: None,
        parent: None,
        doc: "A snapshot cannot be written or used, or the VM cannot be forked.\n\n\
              Raised for a snapshot that is truncated, damaged, not a snapshot at all, \
              written by another snapshot format version, or whose guest uses CPU features \
              this host's KVM lacks; and for a fork whose clones could not have the VM's \
              devices (a writable disk, a TAP, forwarded ports).",
        fields: &[],
    },
    Spec {
        name: "VmAgentError",
        builtin: None,
        parent: None,
        doc: "The guest agent (``vmm-agent``) is not there, failed a request, or broke the \
              connection.\n\n\
              When ``Vm.run`` fails once a command ran, ``stdout`` and ``stderr`` hold what \
              it printed until then (up to ``max_output``).",
        fields: &["stdout", "stderr"],
    },
    Spec {
        name: "CliError",
        builtin: None,
        parent: Some("VmConfigError"),
        doc: "A command-line option is malformed (the message names the option).",
        fields: &[],
    },
];

/// The classes, in [`SPECS`]' order, made once per interpreter.
static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn make(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    let builtins = py.import("builtins")?;
    let type_ = builtins.getattr("type")?;
    let mut made: Vec<Py<PyType>> = Vec::with_capacity(SPECS.len());
    for spec in SPECS {
        let by_name = |name: &str| {
            SPECS
                .iter()
                .position(|s| s.name == name)
                .and_then(|i| made.get(i))
                .map(|c| c.bind(py).clone().into_any())
        };
        let mut bases = Vec::new();
        if spec.name != "VmError" {
            bases.push(by_name(spec.parent.unwrap_or("VmError")).ok_or_else(|| {
                PyRuntimeError::new_err(format!("{} is made before its base", spec.name))
            })?);
        }
        if let Some(b) = spec.builtin {
            bases.push(builtins.getattr(b)?);
        }
        let attrs = PyDict::new(py);
        attrs.set_item("__doc__", spec.doc)?;
        attrs.set_item("__module__", "vmm_reference.errors")?;
        for field in spec.fields {
            attrs.set_item(*field, py.None())?;
        }
        let class = type_.call1((spec.name, PyTuple::new(py, bases)?, attrs))?;
        made.push(class.cast_into::<PyType>()?.unbind());
    }
    Ok(made)
}

/// The class called `name` (one of [`SPECS`]).
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let classes = CLASSES.get_or_try_init(py, || make(py))?;
    SPECS
        .iter()
        .position(|s| s.name == name)
        .and_then(|i| classes.get(i))
        .map(|c| c.bind(py).clone())
        .ok_or_else(|| PyRuntimeError::new_err(format!("no exception class {name}")))
}

/// Adds every class to the extension module.
pub fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for spec in SPECS {
        m.add(spec.name, class(m.py(), spec.name)?)?;
    }
    Ok(())
}

fn class_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "VmConfigError",
        ErrorKind::FileNotFound => "VmFileNotFoundError",
        ErrorKind::PermissionDenied => "VmPermissionError",
        ErrorKind::KvmUnavailable => "KvmUnavailableError",
        ErrorKind::InvalidState => "VmStateError",
        ErrorKind::Snapshot => "VmSnapshotError",
        ErrorKind::Internal => "VmError",
    }
}

/// An exception of class `name` with `message` and the attributes `fields` set.
pub fn raise_with(
    py: Python<'_>,
    name: &str,
    message: String,
    fields: &[(&str, Option<String>)],
) -> PyErr {
    let made = class(py, name)
        .and_then(|cls| cls.call1((message.clone(),)))
        .and_then(|exc| {
            for (field, value) in fields {
                exc.setattr(*field, value)?;
            }
            Ok(exc)
        });
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyRuntimeError::new_err(message),
    }
}

/// An exception of class `name` with `message`.
pub fn raise(py: Python<'_>, name: &str, message: String) -> PyErr {
    raise_with(py, name, message, &[])
}

/// The exception for `e`: its class by kind; a refusal's parts (which argument, the value
/// given, what is accepted, or the file) become its attributes, as the message says them.
pub fn to_py(py: Python<'_>, e: impl Into<Error>) -> PyErr {
    let e: Error = e.into();
    let fields: Vec<(&str, Option<String>)> = match &e {
        Error::Refused(Refusal::InvalidArgument {
            arg,
            value,
            expected,
        }) => vec![
            ("argument", Some(arg.to_string())),
            ("value", Some(value.clone())),
            ("accepted", Some(expected.clone())),
        ],
        Error::Refused(Refusal::FileNotFound { arg, path })
        | Error::Refused(Refusal::PermissionDenied { arg, path, .. }) => vec![
            ("argument", Some(arg.to_string())),
            ("path", Some(path.display().to_string())),
        ],
        _ => Vec::new(),
    };
    raise_with(py, class_of(e.kind()), e.to_string(), &fields)
}
