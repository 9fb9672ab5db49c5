//! The i8042 keyboard controller at 0x60/0x64, from vm-superio.
//!
//! A guest resets a PC by sending the controller command 0xFE; here that ends the VM with
//! reason `reset`, so `reboot` (with `reboot=k`) returns control to the host at once.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};

/// The data port.
pub const I8042_DATA_PORT: u64 = 0x60;
/// The command/status port.
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// The command port's offset in vm-superio's register numbering.
pub const I8042_COMMAND_OFFSET: u64 = 4;

/// Ends the VM with reason `reset`.
#[derive(Debug, Clone)]
pub struct ResetTrigger(pub Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitStatus::new(ExitReason::Reset));
        Ok(())
    }
}

/// The controller.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// A controller whose reset command ends the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042(I8042Device::new(ResetTrigger(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(reg), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.0.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) {
            let _ = self.0.write(reg, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm_with_reset() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(I8042_COMMAND_OFFSET, &[0x20]);
        assert!(!exit.stop_requested());
        dev.write(I8042_COMMAND_OFFSET, &[0xfe]);
        assert_eq!(exit.status().unwrap().reason, ExitReason::Reset);
    }
}
