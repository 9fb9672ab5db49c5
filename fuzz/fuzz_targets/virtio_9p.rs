//! Fuzz target: `vmm_reference::fuzzing::virtio_9p` (see src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmm_reference::fuzzing::virtio_9p(data);
});
