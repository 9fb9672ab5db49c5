//! The errors the public API returns.
//!
//! Every error a user can cause names the argument, the value given and what is accepted,
//! so a front end can show the message as it is. [`Error::kind`] tells front ends which
//! family an error belongs to (the Python layer maps it onto `ValueError`,
//! `FileNotFoundError`, `PermissionError`, ...).

use std::borrow::Cow;
use std::path::PathBuf;

use thiserror::Error;

/// The family of an [`Error`], for front ends that map errors onto their own types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A configuration value is out of range or malformed.
    InvalidArgument,
    /// A file named in the configuration does not exist.
    FileNotFound,
    /// A file (or `/dev/kvm`) exists but cannot be opened.
    PermissionDenied,
    /// KVM is missing or unusable on this host.
    KvmUnavailable,
    /// The operation is not allowed in the VM's current state.
    InvalidState,
    /// A snapshot cannot be written or used (damaged, foreign, another version, CPU
    /// features missing) or the VM cannot be forked.
    Snapshot,
    /// Anything else: a KVM ioctl, a thread or guest memory failed.
    Internal,
}

/// An error from building, starting or running a VM.
#[derive(Debug, Error)]
pub enum Error {
    /// A configuration value is not accepted.
    #[error("invalid {arg}={value}: {expected}")]
    InvalidArgument {
        /// The argument's name, as the user wrote it (`memory_mib`, `himem_start`, `disks[1]`).
        arg: Cow<'static, str>,
        /// The value given.
        value: String,
        /// What is accepted instead.
        expected: String,
    },
    /// A file does not exist.
    #[error("{arg}={path:?}: no such file")]
    FileNotFound {
        /// The argument that named the file.
        arg: Cow<'static, str>,
        /// The path given.
        path: PathBuf,
    },
    /// A file cannot be opened for reading.
    #[error("{arg}={path:?}: permission denied; {hint}")]
    PermissionDenied {
        /// The argument that named the file, or `kvm`.
        arg: Cow<'static, str>,
        /// The path.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
    /// `/dev/kvm` is missing or not usable.
    #[error("KVM is not available at {path:?}: {reason}; {hint}")]
    KvmUnavailable {
        /// The device path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// The call is not valid in the VM's current state.
    #[error("cannot {operation}: the VM is {state}")]
    InvalidState {
        /// What was asked, e.g. `start`.
        operation: &'static str,
        /// The state the VM is in.
        state: crate::vm::VmState,
    },
    /// Setting up the vCPU boot state failed.
    #[error(transparent)]
    Arch(#[from] crate::arch::x86_64::Error),
    /// The vCPUs did not leave guest code in time for a pause.
    #[error("the vCPUs did not stop within {0:?}")]
    PauseTimeout(std::time::Duration),
    /// Building or wiring a device failed.
    #[error(transparent)]
    DeviceManager(#[from] crate::device_manager::Error),
    /// A KVM ioctl on the VM failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error KVM returned.
        source: kvm_ioctls::Error,
    },
    /// Reading a file or another host I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A snapshot cannot be written or used.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    /// Writing a boot structure or image into guest memory failed.
    #[error("cannot {what}: {detail}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// The underlying error, as text.
        detail: String,
    },
}

impl Error {
    /// The family of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::FileNotFound { .. } => ErrorKind::FileNotFound,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::KvmUnavailable { .. } => ErrorKind::KvmUnavailable,
            Error::InvalidState { .. } => ErrorKind::InvalidState,
            Error::Snapshot(_) => ErrorKind::Snapshot,
            _ => ErrorKind::Internal,
        }
    }

    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid(
        arg: impl Into<Cow<'static, str>>,
        value: impl ToString,
        expected: impl ToString,
    ) -> Self {
        Error::InvalidArgument {
            arg: arg.into(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }

    /// Shorthand for a KVM ioctl failure.
    pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }
}

/// Result type of the public API.
pub type Result<T> = std::result::Result<T, Error>;
