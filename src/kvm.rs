//! Opening `/dev/kvm` and the host limits a configuration is checked against.

use std::path::{Path, PathBuf};

use kvm_ioctls::Kvm;

use crate::error::{Error, Result};

/// The KVM device.
pub const KVM_PATH: &str = "/dev/kvm";

/// Opens `/dev/kvm`, turning the usual failures into errors that say what to do.
pub fn open_kvm() -> Result<Kvm> {
    open_kvm_at(Path::new(KVM_PATH))
}

/// Opens the KVM device at `path` (for tests and unusual hosts).
pub fn open_kvm_at(path: &Path) -> Result<Kvm> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid("kvm", path.display(), "expected a path without NUL bytes"))?;
    let unavailable = |reason: String, hint: &str| Error::KvmUnavailable {
        path: PathBuf::from(path),
        reason,
        hint: hint.to_string(),
    };
    let kvm = match Kvm::new_with_path(&cpath) {
        Ok(kvm) => kvm,
        Err(e) => {
            return Err(match e.errno() {
                libc::ENOENT | libc::ENODEV | libc::ENXIO => unavailable(
                    "the device does not exist".into(),
                    "load the kvm module (kvm_intel or kvm_amd) or run on a host with \
                     hardware virtualization",
                ),
                libc::EACCES | libc::EPERM => {
                    Error::Refused(crate::refusal::Refusal::PermissionDenied {
                        arg: "kvm".into(),
                        path: PathBuf::from(path),
                        hint: "add your user to the group that owns /dev/kvm (usually `kvm`: \
                           sudo usermod -aG kvm $USER, then log in again)"
                            .into(),
                    })
                }
                _ => unavailable(e.to_string(), "check that /dev/kvm is the KVM device"),
            })
        }
    };
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(unavailable(
            format!(
                "KVM API version {version}, expected {}",
                kvm_bindings::KVM_API_VERSION
            ),
            "use a Linux kernel with the stable KVM API",
        ));
    }
    Ok(kvm)
}

/// The host's physical RAM in MiB, the upper bound for `memory_mib`.
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysconf only reads system configuration values.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page_size <= 0 {
        return u64::MAX >> 20;
    }
    (pages as u64).saturating_mul(page_size as u64) >> 20
}

/// The accepted `memory_mib` on this host, as front ends report it.
pub fn memory_range() -> String {
    crate::config::memory_range(host_memory_mib())
}

/// The accepted `vcpus` on this host (KVM's limit, if `/dev/kvm` opens), as front ends
/// report it.
pub fn vcpus_range() -> String {
    let max = open_kvm().map_or(crate::config::MAX_VCPUS_XAPIC as usize, |k| {
        k.get_max_vcpus()
    });
    crate::config::vcpus_range(u32::try_from(max).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_says_so() {
        let err = open_kvm_at(Path::new("/nonexistent/kvm")).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::KvmUnavailable);
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn host_memory_is_positive() {
        assert!(host_memory_mib() > 0);
    }
}
