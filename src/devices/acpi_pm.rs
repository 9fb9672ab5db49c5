//! The ACPI PM1a registers: the event block (status and enable) and the control register.
//!
//! The one event is the fixed-feature power button: [`AcpiPm1::press_power_button`] sets
//! PWRBTN_STS, and while the guest has PWRBTN_EN set the SCI (a level-triggered interrupt)
//! stays raised until the guest writes the status bit back to clear it. Linux's `button`
//! driver turns that into a KEY_POWER input event, which the guest's userspace (acpid,
//! systemd-logind) answers with a shutdown.
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
/// The power button's bit in PM1_STS and PM1_EN.
const PWRBTN: u16 = 1 << 8;

/// Raises (`true`) or lowers the SCI.
pub type SciLine = Box<dyn Fn(bool) + Send>;

/// The PM1a event block (offsets 0..4) and control register (offsets 4..6).
pub struct AcpiPm1 {
    exit: Arc<ExitSignal>,
    sci: SciLine,
    status: u16,
    enable: u16,
}

/// PM1_STS and PM1_EN, as saved in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pm1State {
    /// PM1_STS.
    pub status: u16,
    /// PM1_EN.
    pub enable: u16,
}

impl super::Persist for AcpiPm1 {
    type State = Pm1State;

    fn save(&self) -> Pm1State {
        Pm1State {
            status: self.status,
            enable: self.enable,
        }
    }

    fn restore(&mut self, state: &Pm1State) -> Result<(), String> {
        self.status = state.status;
        self.enable = state.enable;
        Ok(())
    }
}

impl AcpiPm1 {
    /// Registers that end the VM through `exit` on a soft-off request and signal events on `sci`.
    pub fn new(exit: Arc<ExitSignal>, sci: SciLine) -> Self {
        AcpiPm1 {
            exit,
            sci,
            status: 0,
            enable: 0,
        }
    }

    /// Presses the power button: the guest sees PWRBTN_STS and, if it enabled the event, an SCI.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        self.update_sci();
    }

    /// Whether the guest enabled the power button event (its ACPI button driver is loaded).
    pub fn power_button_enabled(&self) -> bool {
        self.enable & PWRBTN != 0
    }

    fn update_sci(&self) {
        (self.sci)(self.status & self.enable & PWRBTN != 0);
    }
}

impl BusDevice for AcpiPm1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            0 => self.status,
            PM1_EN_OFFSET => self.enable,
            PM1_CNT_OFFSET => SCI_EN,
            _ => 0,
        };
        for (byte, v) in data.iter_mut().zip(value.to_le_bytes()) {
            *byte = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() < 2 {
            return;
        }
        let value = u16::from_le_bytes([data[0], data[1]]);
        match offset {
            0 => {
                self.status &= !value; // write 1 to clear
                self.update_sci();
                return;
            }
            PM1_EN_OFFSET => {
                self.enable = value;
                self.update_sci();
                return;
            }
            _ => {}
        }
        if offset != PM1_CNT_OFFSET {
            return;
        }
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
        let mut dev = AcpiPm1::new(exit.clone(), Box::new(|_| {}));
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
        assert_eq!((status.reason, status.code), (ExitReason::Poweroff, None));
    }

    #[test]
    fn the_power_button_raises_the_sci_while_enabled_and_unacknowledged() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let line = Arc::new(AtomicBool::new(false));
        let l = line.clone();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut dev = AcpiPm1::new(
            exit,
            Box::new(move |level| l.store(level, Ordering::SeqCst)),
        );
        let read = |dev: &mut AcpiPm1, offset| {
            let mut b = [0u8; 2];
            dev.read(offset, &mut b);
            u16::from_le_bytes(b)
        };
        dev.press_power_button(); // not enabled yet: status only
        assert_eq!(read(&mut dev, 0), PWRBTN);
        assert!(!line.load(Ordering::SeqCst) && !dev.power_button_enabled());
        dev.write(PM1_EN_OFFSET, &PWRBTN.to_le_bytes());
        assert_eq!(read(&mut dev, PM1_EN_OFFSET), PWRBTN);
        assert!(line.load(Ordering::SeqCst));
        dev.write(0, &PWRBTN.to_le_bytes()); // the guest acknowledges
        assert_eq!(read(&mut dev, 0), 0);
        assert!(!line.load(Ordering::SeqCst));
    }
}
