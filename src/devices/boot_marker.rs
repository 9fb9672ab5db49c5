//! Boot-time markers: a guest writes a byte to [`BOOT_MARKER_PORT`] (or to the MMIO register
//! [`BOOT_MARKER_MMIO_ADDR`]) to timestamp a milestone.
//!
//! Each write records `(value, time since the VM started)`; front ends list them (Python:
//! `vm.events`). Only the first [`MAX_MARKERS`] writes are kept, so a guest writing in a loop
//! costs bounded memory. From a freestanding guest or the kernel: `outb(123, 0x440)`. From a
//! shell: `devmem 0xd0001000 8 123` (busybox; Debian's kernels have `/dev/mem` but no
//! `/dev/port`, and let `/dev/mem` reach unclaimed MMIO).

use crate::sync::Locked;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bus::BusDevice;

/// The marker port (unused on PCs).
pub const BOOT_MARKER_PORT: u64 = 0x440;
/// The marker's MMIO register (one byte is recorded per write, whatever its width), in the
/// 32-bit MMIO gap a page after the exit device.
pub const BOOT_MARKER_MMIO_ADDR: u64 = 0xd000_1000;
/// How many markers are kept.
pub const MAX_MARKERS: usize = 1024;

/// Recorded markers, shared with the VM.
#[derive(Debug, Default)]
pub struct BootMarkers {
    start: Mutex<Option<Instant>>,
    events: Mutex<Vec<(u8, Duration)>>,
}

impl BootMarkers {
    /// Sets time zero (when the VM starts).
    pub fn start_clock(&self) {
        *self.start.locked() = Some(Instant::now());
    }

    /// The markers so far.
    pub fn events(&self) -> Vec<(u8, Duration)> {
        self.events.locked().clone()
    }

    fn record(&self, value: u8) {
        let start = *self.start.locked();
        let since = start.map(|t| t.elapsed()).unwrap_or_default();
        let mut events = self.events.locked();
        if events.len() < MAX_MARKERS {
            events.push((value, since));
        }
    }
}

/// The marker device, on the port-I/O bus and the MMIO bus.
pub struct BootMarkerPort(pub Arc<BootMarkers>);

impl BusDevice for BootMarkerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.0.record(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_timestamped_and_bounded() {
        let markers = Arc::new(BootMarkers::default());
        markers.start_clock();
        let mut port = BootMarkerPort(markers.clone());
        port.write(0, &[123]);
        assert_eq!(markers.events()[0].0, 123);
        for _ in 0..2 * MAX_MARKERS {
            port.write(0, &[1]);
        }
        assert_eq!(markers.events().len(), MAX_MARKERS);
    }
}
