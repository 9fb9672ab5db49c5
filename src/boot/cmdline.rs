//! The kernel command line: defaults, the kernel's length limit, and writing it.

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::CMDLINE_START;
use crate::error::{Error, Result};

/// A checked command line.
#[derive(Debug, Clone)]
pub struct KernelCmdline {
    /// The text the guest sees.
    pub text: String,
    inner: Cmdline,
}

/// The console added when the user names none: the 16550A at 0x3f8.
pub const DEFAULT_CONSOLE: &str = "console=ttyS0";

/// Added when the user's command line has no `pci=` and the VM has no PCI device: then it has
/// no PCI bus, and without this Linux probes PCI configuration space through ports
/// 0xcf8/0xcfc (about 1,500 VM exits).
pub const DEFAULT_PCI: &str = "pci=off";

fn has_word(cmdline: &str, prefix: &str) -> bool {
    cmdline.split_whitespace().any(|w| w.starts_with(prefix))
}

/// Builds the command line from the user's text, adding `console=ttyS0` when it has no
/// `console=`, `pci=off` when it has no `pci=` and the VM no PCI bus (`pci` false), and then
/// `extra` (words the VMM adds), and checks it against `limit` (bytes including the NUL).
pub fn build(user: &str, extra: &[String], limit: usize, pci: bool) -> Result<KernelCmdline> {
    let mut text = user.trim().to_string();
    let mut defaults = vec![("console=", DEFAULT_CONSOLE)];
    if !pci {
        defaults.push(("pci=", DEFAULT_PCI));
    }
    for (prefix, default) in defaults {
        if !has_word(&text, prefix) {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(default);
        }
    }
    for word in extra {
        text.push(' ');
        text.push_str(word);
    }
    if text.len() + 1 > limit {
        return Err(Error::invalid(
            "cmdline",
            format!("<{} bytes>", text.len()),
            format!(
                "this kernel accepts at most {} bytes of command line",
                limit.saturating_sub(1)
            ),
        ));
    }
    let bad = |why: String| Error::invalid("cmdline", format!("{text:?}"), why);
    if let Some(c) = text.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(bad(format!("expected printable ASCII, found {c:?}")));
    }
    let inner = Cmdline::try_from(&text, limit)
        .map_err(|e| bad(format!("not a valid command line: {e}")))?;
    Ok(KernelCmdline { text, inner })
}

/// Writes the command line at [`CMDLINE_START`].
pub fn write(mem: &GuestMemoryMmap, cmdline: &KernelCmdline) -> Result<()> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline.inner).map_err(|e| Error::GuestMemory {
        what: "write the command line",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_and_pci_off_are_added_only_when_missing() {
        assert_eq!(
            build("reboot=k", &[], 2048, false).unwrap().text,
            "reboot=k console=ttyS0 pci=off"
        );
        assert_eq!(
            build("", &[], 2048, false).unwrap().text,
            "console=ttyS0 pci=off"
        );
        assert_eq!(
            build("", &[], 2048, true).unwrap().text,
            "console=ttyS0",
            "a VM with PCI devices keeps its bus"
        );
        assert_eq!(
            build("console=hvc0 quiet pci=nomsi", &[], 2048, false)
                .unwrap()
                .text,
            "console=hvc0 quiet pci=nomsi"
        );
    }

    #[test]
    fn length_is_checked_against_the_limit() {
        let long = "a".repeat(2026);
        // 2026 + " console=ttyS0" (14) + " pci=off" (8) = 2048 bytes + NUL > 2048
        let err = build(&long, &[], 2048, false).unwrap_err().to_string();
        assert!(err.contains("at most 2047 bytes"), "{err}");
        assert!(build(&"a".repeat(2025), &[], 2048, false).is_ok());
        let extra = ["virtio_mmio.device=4K@0xd0010000:5".to_string()];
        assert_eq!(
            build("quiet", &extra, 2048, false).unwrap().text,
            "quiet console=ttyS0 pci=off virtio_mmio.device=4K@0xd0010000:5"
        );
        assert!(build(&"a".repeat(2000), &extra, 2048, false).is_err());
    }

    #[test]
    fn non_ascii_is_refused() {
        let err = build("quiet é", &[], 2048, false).unwrap_err().to_string();
        assert!(err.starts_with("invalid cmdline="), "{err}");
    }
}
