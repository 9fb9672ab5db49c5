//! The ACPI PM1a registers: the event block (status, always 0; enable, read back as written,
//! which ACPICA checks before it trusts the hardware) and the control register.
//!
//! Writing SLP_EN with sleep type 5 (the DSDT's `\_S5_`, soft-off) to PM1a_CNT is how Linux
//! powers off; the VM then ends with reason `poweroff`. Other sleep states are not supported and
//! are ignored. PM1a_CNT reads back SCI_EN: the machine is always in ACPI mode.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};

const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
const S5_SOFT_OFF: u16 = 5;
/// Offset of PM1a_CNT from the start of the PM1a event block.
pub const PM1_CNT_OFFSET: u64 = 4;
/// Bytes from the event block's start to the control register's end.
pub const PM1_LEN: u64 = 6;

/// Offset of PM1a_EN from the start of the PM1a event block.
const PM1_EN_OFFSET: u64 = 2;

/// The PM1a event block (offsets 0..4) and control register (offsets 4..6).
pub struct AcpiPm1 {
    exit: Arc<ExitSignal>,
    enable: u16,
}

impl AcpiPm1 {
    /// Registers that end the VM through `exit` on a soft-off request.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPm1 { exit, enable: 0 }
    }
}

impl BusDevice for AcpiPm1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            PM1_EN_OFFSET => self.enable,
            PM1_CNT_OFFSET => SCI_EN,
            _ => 0,
        };
        for (byte, v) in data.iter_mut().zip(value.to_le_bytes()) {
            *byte = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == PM1_EN_OFFSET && data.len() >= 2 {
            self.enable = u16::from_le_bytes([data[0], data[1]]);
            return;
        }
        if offset != PM1_CNT_OFFSET || data.len() < 2 {
            return;
        }
        let value = u16::from_le_bytes([data[0], data[1]]);
        let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if value & SLP_EN != 0 && sleep_type == S5_SOFT_OFF {
            self.exit.request(ExitStatus::new(ExitReason::Poweroff));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = AcpiPm1::new(exit.clone());
        let mut cnt = [0u8; 2];
        dev.read(PM1_CNT_OFFSET, &mut cnt);
        assert_eq!(u16::from_le_bytes(cnt) & SCI_EN, SCI_EN);
        let w = |v: u16| v.to_le_bytes();
        dev.write(PM1_CNT_OFFSET, &w(S5_SOFT_OFF << SLP_TYP_SHIFT)); // no SLP_EN
        dev.write(PM1_CNT_OFFSET, &w(SLP_EN | (3 << SLP_TYP_SHIFT))); // S3: ignored
        dev.write(0, &w(SLP_EN | (S5_SOFT_OFF << SLP_TYP_SHIFT))); // not the control register
        assert!(!exit.stop_requested());
        dev.write(PM1_CNT_OFFSET, &w(SLP_EN | (S5_SOFT_OFF << SLP_TYP_SHIFT)));
        let status = exit.status().unwrap();
        let mut en = [0u8; 2];
        dev.write(PM1_EN_OFFSET, &w(0x0120));
        dev.read(PM1_EN_OFFSET, &mut en);
        assert_eq!(u16::from_le_bytes(en), 0x0120);
        assert_eq!((status.reason, status.code), (ExitReason::Poweroff, None));
    }
}
