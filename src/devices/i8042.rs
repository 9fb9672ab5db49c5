//! The i8042 keyboard controller at 0x60 (data) and 0x64 (status/command), with a keyboard
//! on its first port and nothing on its second (AUX, the mouse).
//!
//! Why a model of our own rather than vm-superio's `I8042Device`: that one only knows the
//! reset command and reads every register as 0. Linux's i8042 driver reads the controller's
//! command byte (CTR) before anything else and polls the status register until "output buffer
//! full" — 10,000 polls of 50 µs, one VM exit each, before it gives up. Answering the
//! commands Linux sends (CTR read/write, self-tests, port enables, the AUX loop test, the
//! keyboard's GETID/LED/scan-set commands) lets its probe finish in a few dozen exits.
//!
//! A guest resets the PC by pulsing the output port's reset line (command 0xFE, or 0xF0–0xFF
//! with bit 0 clear, or writing the output port with bit 0 clear); that ends the VM with
//! reason `reset`, so `reboot` (with `reboot=k`) returns control to the host at once.
//!
//! Keyboard bytes (answers to keyboard commands) raise IRQ 1 while the CTR enables it; the
//! controller's own answers do not, as on real hardware: Linux polls for those.

use std::collections::VecDeque;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};

/// The data port.
pub const I8042_DATA_PORT: u64 = 0x60;
/// The command/status port.
pub const I8042_COMMAND_PORT: u64 = 0x64;
/// The command port's offset on the bus (the data port is offset 0).
pub const I8042_COMMAND_OFFSET: u64 = 4;
/// The keyboard's ISA IRQ.
pub const I8042_KBD_IRQ: u32 = 1;

// Status register bits.
const STS_OBF: u8 = 0x01; // output buffer full: a byte waits at 0x60
const STS_SYS: u8 = 0x04; // system flag: POST passed
const STS_CMD: u8 = 0x08; // the last write went to 0x64
const STS_UNLOCKED: u8 = 0x10; // keyboard not inhibited (no keylock)

// Command byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS: u8 = 0x04;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

/// The CTR at power-on, as firmware leaves it: keyboard interrupt on, POST passed, AUX port
/// off (there is no mouse), scan codes translated to set 1.
const CTR_RESET: u8 = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLED | CTR_XLATE;
/// The output port at power-on: reset line high (not asserted), A20 enabled.
const OUTP_RESET: u8 = 0x03;
/// Bytes the controller holds for the guest; a real one holds one, the keyboard a few more.
/// Every command answers with at most three, so a guest that never reads just loses bytes.
const BUF_LEN: usize = 16;

// Controller commands (written to 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;

// Keyboard commands (written to 0x60) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCAN_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_REPEAT: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_RESET_DISABLE: u8 = 0xf5;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_OK: u8 = 0xaa;
/// An MF2 keyboard's ID; the second byte as the controller passes it on when translating.
const KBD_ID: [u8; 2] = [0xab, 0x83];
const KBD_ID_TRANSLATED: [u8; 2] = [0xab, 0x41];

/// The controller and keyboard registers, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// The command byte.
    pub ctr: u8,
    /// The output port.
    pub outp: u8,
    /// Whether the last write went to the command port.
    pub last_was_command: bool,
    /// A controller command waiting for its parameter at 0x60.
    pub controller_param: Option<u8>,
    /// A keyboard command waiting for its parameter.
    pub keyboard_param: Option<u8>,
    /// The keyboard's scan code set (1, 2 or 3).
    pub scan_set: u8,
    /// Bytes waiting at 0x60, oldest first, each with whether it came from the keyboard.
    pub output: VecDeque<(u8, bool)>,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            ctr: CTR_RESET,
            outp: OUTP_RESET,
            last_was_command: false,
            controller_param: None,
            keyboard_param: None,
            scan_set: 2,
            output: VecDeque::with_capacity(BUF_LEN),
        }
    }
}

/// The controller and its keyboard.
pub struct I8042 {
    exit: Arc<ExitSignal>,
    irq: EventFd,
    state: I8042State,
}

impl I8042 {
    /// A controller whose reset line ends the VM through `exit` and whose keyboard interrupt
    /// is `irq` (an irqfd for IRQ 1).
    pub fn new(exit: Arc<ExitSignal>, irq: EventFd) -> Self {
        I8042 {
            exit,
            irq,
            state: I8042State::default(),
        }
    }

    fn status(&self) -> u8 {
        let mut status = STS_SYS | STS_UNLOCKED;
        if !self.state.output.is_empty() {
            status |= STS_OBF;
        }
        if self.state.last_was_command {
            status |= STS_CMD;
        }
        status
    }

    fn reset_line(&self) {
        self.exit.request(ExitStatus::new(ExitReason::Reset));
    }

    /// A byte from the controller itself (the guest polls for it).
    fn answer(&mut self, byte: u8) {
        if self.state.output.len() < BUF_LEN {
            self.state.output.push_back((byte, false));
        }
    }

    /// Bytes from the keyboard: interrupt the guest if it enabled that.
    fn keyboard_says(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.state.output.len() < BUF_LEN {
                self.state.output.push_back((b, true));
            }
        }
        self.interrupt_if_keyboard_byte();
    }

    fn interrupt_if_keyboard_byte(&self) {
        if self.state.ctr & CTR_KBD_INT != 0 && matches!(self.state.output.front(), Some((_, true)))
        {
            // A full eventfd counter only means the interrupt is already pending.
            let _ = self.irq.write(1);
        }
    }

    fn controller_command(&mut self, cmd: u8) {
        self.state.controller_param = None;
        match cmd {
            CMD_READ_CTR => {
                // Linux reads the CTR right after flushing; anything stale would be read as it.
                self.state.output.clear();
                self.answer(self.state.ctr);
            }
            0x21..=0x3f | CMD_READ_INPUT => self.answer(0),
            CMD_WRITE_CTR
            | 0x61..=0x7f
            | CMD_WRITE_OUTP
            | CMD_WRITE_KBD_OUT
            | CMD_WRITE_AUX_OUT
            | CMD_WRITE_AUX => self.state.controller_param = Some(cmd),
            CMD_AUX_DISABLE => self.state.ctr |= CTR_AUX_DISABLED,
            CMD_AUX_ENABLE => self.state.ctr &= !CTR_AUX_DISABLED,
            // No AUX device: "clock line stuck high".
            CMD_AUX_TEST => self.answer(0x02),
            CMD_SELF_TEST => self.answer(0x55),
            CMD_KBD_TEST => self.answer(0x00),
            CMD_KBD_DISABLE => self.state.ctr |= 0x10,
            CMD_KBD_ENABLE => self.state.ctr &= !0x10,
            CMD_READ_OUTP => self.answer(self.state.outp),
            // Pulse output lines: bit 0 low pulses the CPU reset line.
            0xf0..=0xff if cmd & 1 == 0 => self.reset_line(),
            _ => {}
        }
    }

    fn controller_param(&mut self, cmd: u8, value: u8) {
        match cmd {
            CMD_WRITE_CTR => {
                self.state.ctr = value;
                self.interrupt_if_keyboard_byte();
            }
            CMD_WRITE_OUTP => {
                self.state.outp = value;
                if value & 1 == 0 {
                    self.reset_line();
                }
            }
            CMD_WRITE_KBD_OUT => self.keyboard_says(&[value]),
            // The AUX loop comes back without the AUX-data flag (there is no AUX port), which
            // tells Linux at once that there is none; bytes for the AUX device are dropped.
            CMD_WRITE_AUX_OUT => self.answer(value),
            _ => {}
        }
    }

    fn keyboard_command(&mut self, byte: u8) {
        if let Some(cmd) = self.state.keyboard_param.take() {
            match (cmd, byte) {
                (KBD_SCAN_SET, 0) => {
                    let set = self.translated(self.state.scan_set);
                    self.keyboard_says(&[KBD_ACK, set]);
                }
                (KBD_SCAN_SET, 1..=3) => {
                    self.state.scan_set = byte;
                    self.keyboard_says(&[KBD_ACK]);
                }
                (KBD_SCAN_SET, _) => self.keyboard_says(&[KBD_RESEND]),
                _ => self.keyboard_says(&[KBD_ACK]),
            }
            return;
        }
        match byte {
            KBD_SET_LEDS | KBD_SCAN_SET | KBD_SET_REPEAT => {
                self.state.keyboard_param = Some(byte);
                self.keyboard_says(&[KBD_ACK]);
            }
            KBD_ECHO => self.keyboard_says(&[KBD_ECHO]),
            KBD_GET_ID => {
                let id = if self.state.ctr & CTR_XLATE != 0 {
                    KBD_ID_TRANSLATED
                } else {
                    KBD_ID
                };
                self.keyboard_says(&[KBD_ACK, id[0], id[1]]);
            }
            KBD_RESET => {
                self.state.scan_set = 2;
                self.keyboard_says(&[KBD_ACK, KBD_SELF_TEST_OK]);
            }
            KBD_RESET_DISABLE => {
                self.state.scan_set = 2;
                self.keyboard_says(&[KBD_ACK]);
            }
            KBD_ENABLE..=0xfd => self.keyboard_says(&[KBD_ACK]),
            _ => self.keyboard_says(&[KBD_RESEND]),
        }
    }

    /// The scan-set number as the guest reads it: translated like any keyboard byte when
    /// the controller translates (set 2 reads as 0x41, as on real hardware).
    fn translated(&self, set: u8) -> u8 {
        if self.state.ctr & CTR_XLATE == 0 {
            return set;
        }
        match set {
            1 => 0x43,
            2 => 0x41,
            _ => 0x3f,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            I8042_COMMAND_OFFSET => self.status(),
            0 => {
                let byte = self.state.output.pop_front().map_or(0, |(b, _)| b);
                self.interrupt_if_keyboard_byte();
                byte
            }
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            I8042_COMMAND_OFFSET => {
                self.state.last_was_command = true;
                self.controller_command(value);
            }
            0 => {
                self.state.last_was_command = false;
                match self.state.controller_param.take() {
                    Some(cmd) => self.controller_param(cmd, value),
                    None => self.keyboard_command(value),
                }
            }
            _ => {}
        }
    }
}

impl super::Persist for I8042 {
    type State = I8042State;

    fn save(&self) -> I8042State {
        self.state.clone()
    }

    fn restore(&mut self, state: &I8042State) -> Result<(), String> {
        if state.output.len() > BUF_LEN || !(1..=3).contains(&state.scan_set) {
            return Err(format!(
                "i8042: not a state this controller can be in: {state:?}"
            ));
        }
        self.state = state.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::Persist;

    fn controller() -> (I8042, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(exit.clone(), irq.try_clone().unwrap());
        (dev, exit, irq)
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut b = [0];
        dev.read(I8042_COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut b = [0];
        dev.read(0, &mut b);
        b[0]
    }

    /// Linux's `i8042_command`: the command, its parameters, then each answer byte after
    /// "output buffer full" — which must come on the first poll, not after 10,000.
    fn command(dev: &mut I8042, cmd: u8, params: &[u8], answers: usize) -> Vec<u8> {
        dev.write(I8042_COMMAND_OFFSET, &[cmd]);
        for &p in params {
            dev.write(0, &[p]);
        }
        (0..answers)
            .map(|_| {
                assert_ne!(status(dev) & STS_OBF, 0, "command {cmd:#x}: no answer");
                data(dev)
            })
            .collect()
    }

    #[test]
    fn linux_controller_init_reads_and_writes_the_ctr() {
        let (mut dev, exit, _) = controller();
        // i8042_flush: nothing to read, and the status is not 0xff ("no controller").
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        assert_ne!(status(&mut dev), 0xff);
        let ctr = command(&mut dev, CMD_READ_CTR, &[], 1)[0];
        assert_eq!(ctr, CTR_RESET);
        assert_eq!(
            command(&mut dev, CMD_READ_CTR, &[], 1)[0],
            ctr,
            "a stable CTR"
        );
        command(&mut dev, CMD_WRITE_CTR, &[(ctr | 0x10) & !CTR_KBD_INT], 0);
        assert_eq!(command(&mut dev, CMD_READ_CTR, &[], 1)[0], 0x74);
        assert_eq!(command(&mut dev, CMD_SELF_TEST, &[], 1), [0x55]);
        assert_eq!(command(&mut dev, CMD_KBD_TEST, &[], 1), [0x00]);
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        assert!(!exit.stop_requested());
    }

    #[test]
    fn the_aux_loop_test_says_there_is_no_aux_port() {
        let (mut dev, _, _) = controller();
        command(&mut dev, CMD_WRITE_AUX_OUT, &[0x5a], 0);
        assert_ne!(status(&mut dev) & STS_OBF, 0);
        assert_eq!(status(&mut dev) & 0x20, 0, "no AUX-data flag");
        assert_eq!(data(&mut dev), 0x5a);
        let answer = command(&mut dev, CMD_AUX_TEST, &[], 1)[0];
        assert!(answer != 0 && answer != 0xfa && answer != 0xff);
    }

    #[test]
    fn the_keyboard_answers_atkbd_and_interrupts_when_enabled() {
        let (mut dev, _, irq) = controller();
        dev.write(0, &[KBD_GET_ID]);
        assert_eq!(irq.read().unwrap(), 1, "keyboard bytes interrupt");
        assert_eq!(
            [data(&mut dev), data(&mut dev), data(&mut dev)],
            [0xfa, 0xab, 0x41]
        );
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        // Each read that leaves a keyboard byte behind interrupts again.
        assert_eq!(irq.read().unwrap(), 2);
        // Untranslated, interrupt off: the raw MF2 id and no interrupt.
        command(&mut dev, CMD_WRITE_CTR, &[CTR_SYS], 0);
        dev.write(0, &[KBD_GET_ID]);
        assert!(irq.read().is_err());
        assert_eq!(
            [data(&mut dev), data(&mut dev), data(&mut dev)],
            [0xfa, 0xab, 0x83]
        );
        // LEDs take a parameter and ack both bytes; scan set 0 reads the set back.
        dev.write(0, &[KBD_SET_LEDS]);
        dev.write(0, &[0x07]);
        assert_eq!([data(&mut dev), data(&mut dev)], [0xfa, 0xfa]);
        dev.write(0, &[KBD_SCAN_SET]);
        dev.write(0, &[0]);
        assert_eq!(
            [data(&mut dev), data(&mut dev), data(&mut dev)],
            [0xfa, 0xfa, 2]
        );
        dev.write(0, &[KBD_RESET]);
        assert_eq!([data(&mut dev), data(&mut dev)], [0xfa, 0xaa]);
        dev.write(0, &[0x01]);
        assert_eq!(data(&mut dev), KBD_RESEND);
        assert_eq!(data(&mut dev), 0, "an empty buffer reads 0");
    }

    #[test]
    fn reset_line_ends_the_vm_with_reset() {
        for (cmd, param) in [(0xfe, None), (0xf0, None), (CMD_WRITE_OUTP, Some(0x02))] {
            let (mut dev, exit, _) = controller();
            command(&mut dev, CMD_READ_CTR, &[], 1);
            command(&mut dev, CMD_WRITE_OUTP, &[0xdf], 0); // A20 on: no reset
            assert!(!exit.stop_requested());
            dev.write(I8042_COMMAND_OFFSET, &[cmd]);
            if let Some(p) = param {
                dev.write(0, &[p]);
            }
            assert_eq!(exit.status().unwrap().reason, ExitReason::Reset, "{cmd:#x}");
        }
        let (mut dev, exit, _) = controller();
        dev.write(I8042_COMMAND_OFFSET, &[0xff]); // pulse nothing
        assert!(!exit.stop_requested());
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut dev, _, _) = controller();
        for _ in 0..10_000 {
            dev.write(0, &[KBD_GET_ID]);
        }
        assert_eq!(dev.state.output.len(), BUF_LEN);
    }

    #[test]
    fn state_survives_a_snapshot_and_bad_states_are_refused() {
        let (mut dev, _, _) = controller();
        command(&mut dev, CMD_WRITE_CTR, &[0x47], 0);
        dev.write(0, &[KBD_SET_LEDS]);
        let saved = dev.save();
        let (mut fresh, _, _) = controller();
        fresh.restore(&saved).unwrap();
        assert_eq!(fresh.save(), saved);
        assert_eq!(data(&mut fresh), KBD_ACK);
        fresh.write(0, &[0]);
        assert_eq!(
            data(&mut fresh),
            KBD_ACK,
            "the LED parameter was still awaited"
        );
        let bad = I8042State {
            output: vec![(0, false); BUF_LEN + 1].into(),
            ..I8042State::default()
        };
        assert!(fresh.restore(&bad).is_err());
    }
}
