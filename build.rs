//! Builds the native `vmm-reference` command alongside the Python extension.
//!
//! Why here: maturin packs exactly one Rust artifact for a PyO3 project, the extension
//! module, and has no hook to build a second one. The wheel should carry the command line
//! as a native program (it starts in ~1 ms; through Python it would take ~30 ms), so when
//! the `python` feature is on (maturin is building the extension) this script builds the
//! `vmm-reference` binary with a nested cargo, without that feature, for the same target and
//! profile and with the same environment (so maturin's zig linker for manylinux wheels
//! applies to it too), and leaves it at `target/wheel-cli/vmm-reference`. The wheel's data
//! directory (`packaging/wheel-data`, `[tool.maturin] data` in pyproject.toml) links it
//! into `scripts/`, which installers put on `PATH`.
//!
//! Plain `cargo build` / `cargo test` do not enable `python`, so they skip all this.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    if env::var_os("CARGO_FEATURE_PYTHON").is_none()
        || env::var_os("VMM_REFERENCE_NESTED_CLI").is_some()
    {
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target = env::var("TARGET").expect("set by cargo");
    let profile = env::var("PROFILE").expect("set by cargo");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = manifest_dir.join("target").join("wheel-cli-build");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--bin", "vmm-reference", "--target", &target])
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("VMM_REFERENCE_NESTED_CLI", "1")
        // The extension's feature set is not the program's.
        .env_remove("CARGO_FEATURE_PYTHON");
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .expect("cannot run cargo to build the vmm-reference command");
    assert!(
        status.success(),
        "building the vmm-reference command failed"
    );
    let built = target_dir
        .join(&target)
        .join(&profile)
        .join("vmm-reference");
    let dest_dir = manifest_dir.join("target").join("wheel-cli");
    std::fs::create_dir_all(&dest_dir).expect("cannot create target/wheel-cli");
    // Copy to a temporary name and rename, so a wheel never picks up half a binary.
    let tmp = dest_dir.join(".vmm-reference.tmp");
    std::fs::copy(&built, &tmp).expect("cannot copy the vmm-reference command");
    std::fs::rename(&tmp, dest_dir.join("vmm-reference"))
        .expect("cannot move the vmm-reference command into place");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");
}
