//! The exit device: one 32-bit MMIO register through which a guest ends the VM with a code.
//!
//! A write of `CODE` to [`EXIT_DEVICE_ADDR`] ends the VM at once with reason `poweroff` and
//! that code, like an `exit(CODE)` for the whole machine. The address lies in the 32-bit MMIO
//! gap where no other device is, so Debian's kernels let `/dev/mem` reach it:
//!
//! ```sh
//! devmem 0xd0000000 32 3        # busybox: ends the VM with code 3
//! ```
//!
//! From C in the guest: write the code to an `mmap` of `/dev/mem` at offset `0xd0000000`
//! (or to the physical address itself in a freestanding guest).

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};

/// Guest-physical address of the exit register.
pub const EXIT_DEVICE_ADDR: u64 = 0xd000_0000;
/// Size of the register.
pub const EXIT_DEVICE_LEN: u64 = 4;

/// The exit device.
pub struct ExitDevice(pub Arc<ExitSignal>);

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        let start = (offset as usize).min(4);
        let n = data.len().min(4 - start);
        bytes[start..start + n].copy_from_slice(&data[..n]);
        let code = u32::from_le_bytes(bytes);
        self.0.request(ExitStatus {
            code: Some(code),
            ..ExitStatus::new(ExitReason::Poweroff)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_ends_the_vm_with_its_code() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = ExitDevice(exit.clone());
        let mut d = [0xffu8; 4];
        dev.read(0, &mut d);
        assert_eq!(d, [0; 4]);
        assert!(!exit.stop_requested());
        dev.write(0, &7u32.to_le_bytes());
        let status = exit.status().unwrap();
        assert_eq!(
            (status.reason, status.code),
            (ExitReason::Poweroff, Some(7))
        );
    }
}
