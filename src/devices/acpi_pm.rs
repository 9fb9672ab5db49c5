//! The ACPI sleep control and status registers of the hardware-reduced FADT.
//!
//! Writing SLP_EN with sleep type 5 (the DSDT's `\_S5_`, soft-off) to the control register is
//! how Linux powers off; the VM then ends with reason `poweroff`. Other sleep states are not
//! supported and are ignored.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const S5_SOFT_OFF: u8 = 5;

/// The sleep control register (offset 0) and sleep status register (offset 1).
pub struct AcpiSleep(pub Arc<ExitSignal>);

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if offset == 0 && value & SLP_EN != 0 && sleep_type == S5_SOFT_OFF {
            self.0.request(ExitStatus::new(ExitReason::Poweroff));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = AcpiSleep(exit.clone());
        dev.write(0, &[S5_SOFT_OFF << SLP_TYP_SHIFT]); // no SLP_EN
        dev.write(0, &[SLP_EN | (3 << SLP_TYP_SHIFT)]); // S3: ignored
        assert!(!exit.stop_requested());
        dev.write(0, &[SLP_EN | (S5_SOFT_OFF << SLP_TYP_SHIFT)]);
        let status = exit.status().unwrap();
        assert_eq!((status.reason, status.code), (ExitReason::Poweroff, None));
    }
}
