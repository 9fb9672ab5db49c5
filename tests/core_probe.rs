//! Drives the Rust core directly (no Python): boots the probe guest from `tests/guest` and
//! checks what it reports against the configuration.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use vmm_reference::{ExitReason, KernelConfig, Vm, VmConfig, VmState};

fn probe(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/guest");
    BUILT.get_or_init(|| {
        let status = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("run make");
        assert!(status.success(), "building the probe guest failed");
    });
    dir.join("build").join(name)
}

fn config(kernel: &str, cmdline: &str) -> VmConfig {
    VmConfig {
        memory_mib: 128,
        kernel: KernelConfig {
            cmdline: cmdline.into(),
            ..KernelConfig::new(probe(kernel))
        },
        ..VmConfig::default()
    }
}

fn run(config: VmConfig) -> (vmm_reference::ExitStatus, String) {
    let vm = Vm::new(config).expect("build the VM");
    assert_eq!(vm.state(), VmState::Created);
    vm.start().expect("start");
    let status = vm
        .wait(Some(Duration::from_secs(60)))
        .expect("the probe ends by itself");
    assert_eq!(vm.state(), VmState::Exited);
    let log = String::from_utf8_lossy(&vm.console().snapshot().1).into_owned();
    (status, log)
}

#[test]
fn elf_probe_reports_its_boot_and_resets() {
    let (status, log) = run(config("probe.elf", "probe.test=1"));
    assert_eq!(status.reason, ExitReason::Reset, "{status:?}\n{log}");
    assert!(
        log.contains("PROBE: entry=0x0000000000200000 zero_page=0x0000000000007000"),
        "{log}"
    );
    assert!(
        log.contains("PROBE: cmdline=probe.test=1 console=ttyS0 pci=off\n"),
        "{log}"
    );
    assert!(
        log.contains("PROBE: e820 0x0000000000100000 0x0000000007f00000 1"),
        "{log}"
    );
    assert!(log.contains("signature=KVMKVMKVM"), "{log}");
}

#[test]
fn bzimage_probe_runs_at_himem_start() {
    let mut c = config("probe.bzImage", "");
    c.kernel.himem_start = 0x40_0000;
    let (status, log) = run(c);
    assert_eq!(status.reason, ExitReason::Reset, "{status:?}\n{log}");
    assert!(log.contains("PROBE: entry=0x0000000000400200"), "{log}");
}

#[test]
fn triple_fault_is_shutdown_and_kill_stops_a_halted_guest() {
    let (status, log) = run(config("probe.elf", "probe.end=triple"));
    assert_eq!(status.reason, ExitReason::Shutdown, "{status:?}\n{log}");

    let vm = Vm::new(config("probe.elf", "probe.end=halt")).unwrap();
    vm.start().unwrap();
    assert!(vm.wait(Some(Duration::from_millis(300))).is_none());
    vm.kill();
    let status = vm
        .wait(Some(Duration::from_secs(10)))
        .expect("kill stops the VM");
    assert_eq!(status.reason, ExitReason::Killed);
}

#[test]
fn start_twice_is_an_error() {
    let vm = Vm::new(config("probe.elf", "")).unwrap();
    vm.start().unwrap();
    let err = vm.start().unwrap_err();
    assert_eq!(err.kind(), vmm_reference::ErrorKind::InvalidState);
    vm.wait(Some(Duration::from_secs(60)));
}
