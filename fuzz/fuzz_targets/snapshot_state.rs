//! Fuzz target: `vmm_reference::fuzzing::snapshot_state` (see src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm_reference::fuzzing::snapshot_state(data);
});
