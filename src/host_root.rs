//! The host's root as the guest's root (`Vm(root="host")`, `--root host`): what it adds to a
//! VM — the shares the guest's init mounts and the command-line words that tell it to.
//!
//! The guest's side is the initramfs's `/init` (`assets/init/host-root.sh`): it mounts the
//! share tagged [`ROOT_TAG`] read-only as the new root, writable overlays and tmpfs where
//! programs write, the host's working directory ([`CWD_TAG`], read-write) where it is on the
//! host, a kernel's modules ([`MODULES_TAG`]) at `/lib/modules/$(uname -r)`, and switches to
//! it with the guest agent running, so commands run in the host's userspace.

use std::path::{Path, PathBuf};

use crate::config::{HostRootConfig, ShareConfig, ShareProtocol, VmConfig};
use crate::refusal::Refusal;

/// The tag of the host's `/`.
pub const ROOT_TAG: &str = "vmm-root";
/// The tag of the host's working directory, shared read-write.
pub const CWD_TAG: &str = "vmm-cwd";
/// The tag of the kernel modules' directory.
pub const MODULES_TAG: &str = "vmm-modules";

/// A path the guest's init is told on its command line: absolute, a directory, and nothing
/// a command line would split or mangle.
fn checked_dir(arg: &'static str, path: &Path) -> Result<(), Refusal> {
    let shown = format!("{path:?}");
    let text = path
        .to_str()
        .ok_or_else(|| Refusal::invalid(arg, &shown, "expected a UTF-8 path"))?;
    if !path.is_absolute() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Refusal::invalid(
            arg,
            shown,
            "expected an absolute path without spaces or control characters",
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Refusal::invalid(arg, shown, "expected a directory")),
        Err(_) => Err(Refusal::FileNotFound {
            arg: arg.into(),
            path: path.to_path_buf(),
        }),
    }
}

impl HostRootConfig {
    /// `config` with the host's root: its shares added (after the caller's) and the guest's
    /// init told what to mount.
    pub fn apply(&self, mut config: VmConfig) -> Result<VmConfig, Refusal> {
        let mut words = vec!["vmm.root=host".to_string()];
        if self.protocol == ShareProtocol::P9 {
            words.push("vmm.share=9p".into());
        }
        config.shares.push(ShareConfig {
            path: PathBuf::from("/"),
            tag: ROOT_TAG.into(),
            read_only: true,
            protocol: self.protocol,
        });
        if let Some(cwd) = &self.cwd {
            checked_dir("cwd", cwd)?;
            config.shares.push(ShareConfig {
                path: cwd.clone(),
                tag: CWD_TAG.into(),
                read_only: false,
                protocol: self.protocol,
            });
            words.push(format!("vmm.cwd={}", cwd.display()));
        }
        if let Some(modules) = &self.modules {
            checked_dir("modules", modules)?;
            config.shares.push(ShareConfig {
                path: modules.clone(),
                tag: MODULES_TAG.into(),
                read_only: true,
                protocol: self.protocol,
            });
            words.push("vmm.modules=1".into());
        }
        let cmdline = &mut config.kernel.cmdline;
        for w in words {
            if !cmdline.is_empty() {
                cmdline.push(' ');
            }
            cmdline.push_str(&w);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_root_adds_its_shares_and_tells_the_init() {
        let dir = std::env::temp_dir();
        let config = HostRootConfig {
            cwd: Some(dir.clone()),
            modules: None,
            ..Default::default()
        }
        .apply(VmConfig::default())
        .unwrap();
        let tags: Vec<_> = config.shares.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(tags, [ROOT_TAG, CWD_TAG]);
        assert!(config.shares[0].read_only && !config.shares[1].read_only);
        assert!(config
            .kernel
            .cmdline
            .ends_with(&format!("vmm.root=host vmm.cwd={}", dir.display())));
        let bad = |cwd: &str| {
            HostRootConfig {
                cwd: Some(cwd.into()),
                modules: None,
                ..Default::default()
            }
            .apply(VmConfig::default())
            .unwrap_err()
            .to_string()
        };
        assert!(bad("relative").contains("expected an absolute path"));
        assert!(bad("/tmp/with space").contains("without spaces"));
        assert!(bad("/nonexistent-dir").contains("no such file"));
    }
}
