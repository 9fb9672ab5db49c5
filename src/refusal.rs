//! What the user named and the VMM refused, and host failures on what the user named.
//!
//! A leaf module (it uses nothing else of the crate), so that every module that checks a
//! user's argument — devices, the boot loader, the configuration — can say so in the same
//! words without importing the crate's top-level error: a [`Refusal`] names the argument,
//! the value given and what is accepted; [`HostError`] is that or a host I/O failure.
//! [`crate::error::Error`] carries both as they are, so the messages users see are made
//! once, here.

use std::borrow::Cow;
use std::path::PathBuf;

/// A value the user gave is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A configuration value is out of range or malformed.
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
    /// A file cannot be opened as asked.
    #[error("{arg}={path:?}: permission denied; {hint}")]
    PermissionDenied {
        /// The argument that named the file, or `kvm`.
        arg: Cow<'static, str>,
        /// The path.
        path: PathBuf,
        /// What to do about it.
        hint: String,
    },
}

impl Refusal {
    /// Shorthand for a [`Refusal::InvalidArgument`].
    pub fn invalid(
        arg: impl Into<Cow<'static, str>>,
        value: impl ToString,
        expected: impl ToString,
    ) -> Self {
        Refusal::InvalidArgument {
            arg: arg.into(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// Using a host resource the user named (a file, a socket path, a TAP) failed: the user's
/// value was refused, or the host failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The value was refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The host failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl HostError {
    /// A host failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
        let what = what.into();
        move |source| HostError::Io { what, source }
    }
}
