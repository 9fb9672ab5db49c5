//! The errors the public API returns.
//!
//! This module names nothing of the crate but the leaf [`crate::refusal`] and the module
//! errors it wraps whole (`arch`, the device manager), so every module may return it without
//! an import loop; modules whose errors it does not know convert them themselves
//! (`impl From<snapshot::Error> for Error` lives in `snapshot`, the devices' in
//! `vm::builder`).
//!
//! Every error a user can cause names the argument, the value given and what is accepted,
//! so a front end can show the message as it is. [`Error::kind`] tells front ends which
//! family an error belongs to (the Python layer maps it onto `ValueError`,
//! `FileNotFoundError`, `PermissionError`, ...).

use std::borrow::Cow;
use std::path::PathBuf;

use thiserror::Error;

pub use crate::refusal::{HostError, Refusal};

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
    /// A value the user gave is not accepted: out of range or malformed, a file that does not
    /// exist or cannot be opened as asked.
    #[error(transparent)]
    Refused(#[from] Refusal),
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
        /// The state the VM is in (`VmState::as_str`).
        state: &'static str,
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
    /// A snapshot cannot be written or used (`snapshot::Error`'s message: that module
    /// converts its errors, so this one needs nothing of it).
    #[error("{0}")]
    Snapshot(String),
    /// A dump of the guest cannot be taken or written.
    #[error("cannot dump the guest: {0}")]
    Dump(String),
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
            Error::Refused(Refusal::InvalidArgument { .. }) => ErrorKind::InvalidArgument,
            Error::Refused(Refusal::FileNotFound { .. }) => ErrorKind::FileNotFound,
            Error::Refused(Refusal::PermissionDenied { .. }) => ErrorKind::PermissionDenied,
            Error::KvmUnavailable { .. } => ErrorKind::KvmUnavailable,
            Error::InvalidState { .. } => ErrorKind::InvalidState,
            Error::Snapshot(_) => ErrorKind::Snapshot,
            _ => ErrorKind::Internal,
        }
    }

    /// Shorthand for a refused argument ([`Refusal::InvalidArgument`]).
    pub fn invalid(
        arg: impl Into<Cow<'static, str>>,
        value: impl ToString,
        expected: impl ToString,
    ) -> Self {
        Error::Refused(Refusal::invalid(arg, value, expected))
    }

    /// Shorthand for a KVM ioctl failure.
    pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }
}

impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Refused(r) => Error::Refused(r),
            HostError::Io { what, source } => Error::Io { what, source },
        }
    }
}

/// Result type of the public API.
pub type Result<T> = std::result::Result<T, Error>;
