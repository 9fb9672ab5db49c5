//! The 16550A UART at 0x3f8 (COM1, IRQ 4), from vm-superio.
//!
//! Output goes to the [`Console`](crate::console::Console). Input arrives from the host
//! through [`SerialDevice::queue_input`] and waits in a bounded queue until the UART's
//! receive FIFO has room; the FIFO is topped up each time the guest reads a byte.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::console::ConsoleWriter;
use crate::exit::{ExitReason, ExitSignal, ExitStatus};

/// What Linux prints when it panics; seeing it ends the VM with reason `panic`.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// Longest line kept for panic detection; the rest of a longer line is not inspected.
const MAX_LINE: usize = 1024;

/// The UART's output: appends to the console and watches lines for a kernel panic.
pub struct SerialOutput {
    console: ConsoleWriter,
    exit: Arc<ExitSignal>,
    line: Vec<u8>,
}

impl SerialOutput {
    /// Output into `console`; a panic line ends the VM through `exit`.
    pub fn new(console: ConsoleWriter, exit: Arc<ExitSignal>) -> Self {
        SerialOutput {
            console,
            exit,
            line: Vec::new(),
        }
    }

    /// Another output into the same console, with no partial line.
    fn fresh(&self) -> Self {
        SerialOutput::new(self.console.clone(), self.exit.clone())
    }

    fn end_of_line(&mut self) {
        if let Some(at) = self
            .line
            .windows(PANIC_MARKER.len())
            .position(|w| w == PANIC_MARKER)
        {
            let text = String::from_utf8_lossy(&self.line[at..])
                .trim_end()
                .to_string();
            self.exit
                .request(ExitStatus::with_detail(ExitReason::Panic, text));
        }
        self.line.clear();
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.console.write_all(buf)?;
        for &b in buf {
            if b == b'\n' {
                self.end_of_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// COM1's base port.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's register count.
pub const COM1_LEN: u64 = 8;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;
/// Host input waiting for the guest beyond this is refused.
pub const INPUT_QUEUE_LIMIT: usize = 1 << 20;

const RBR_OFFSET: u8 = 0;

/// Raises the UART's interrupt through an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, SerialOutput>,
    pending: VecDeque<u8>,
}

/// The UART's registers and receive FIFO, as saved in a snapshot (vm-superio's
/// `SerialState`, which has no serde). Host input not yet in the FIFO is not kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// The receive FIFO.
    pub fifo: Vec<u8>,
}

impl super::Persist for SerialDevice {
    type State = SerialSnapshot;

    fn save(&self) -> SerialSnapshot {
        let st = self.uart.state();
        SerialSnapshot {
            registers: [
                st.baud_divisor_low,
                st.baud_divisor_high,
                st.interrupt_enable,
                st.interrupt_identification,
                st.line_control,
                st.line_status,
                st.modem_control,
                st.modem_status,
                st.scratch,
            ],
            fifo: st.in_buffer,
        }
    }

    /// Host input not yet in the FIFO is dropped.
    fn restore(&mut self, saved: &SerialSnapshot) -> Result<(), String> {
        let r = saved.registers;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: saved.fifo.clone(),
        };
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| format!("cannot clone the serial interrupt: {e}"))?;
        let out = self.uart.writer().fresh();
        self.uart = Serial::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .map_err(|e| format!("the saved serial state does not fit: {e:?}"))?;
        self.pending.clear();
        Ok(())
    }
}

impl SerialDevice {
    /// A UART raising `irq` and printing into `out`.
    pub fn new(irq: EventFd, out: SerialOutput) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
            pending: VecDeque::new(),
        }
    }

    /// Queues host input for the guest; returns how many bytes were accepted (fewer than
    /// `data.len()` once [`INPUT_QUEUE_LIMIT`] bytes are waiting).
    pub fn queue_input(&mut self, data: &[u8]) -> usize {
        let room = INPUT_QUEUE_LIMIT.saturating_sub(self.pending.len());
        let n = data.len().min(room);
        self.pending.extend(&data[..n]);
        self.refill();
        n
    }

    /// Bytes waiting for room in the receive FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    fn refill(&mut self) {
        let n = self.uart.fifo_capacity().min(self.pending.len());
        if n == 0 {
            return;
        }
        let bytes: Vec<u8> = self.pending.drain(..n).collect();
        // Only the interrupt can fail to be raised; the bytes are in the FIFO regardless.
        let _ = self.uart.enqueue_raw_bytes(&bytes);
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(reg), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(reg);
            if reg == RBR_OFFSET {
                self.refill();
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) {
            // A failed interrupt injection is not the guest's fault and cannot be reported
            // to it; the byte itself has been handled.
            let _ = self.uart.write(reg, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::Console;

    fn device() -> (SerialDevice, Arc<Console>) {
        let console = Arc::new(Console::new(1024));
        let evt = EventFd::new(0).unwrap();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let out = SerialOutput::new(ConsoleWriter(console.clone()), exit);
        (SerialDevice::new(evt, out), console)
    }

    #[test]
    fn a_kernel_panic_line_ends_the_vm() {
        let console = Arc::new(Console::new(1024));
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut out = SerialOutput::new(ConsoleWriter(console), exit.clone());
        out.write_all(b"[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root")
            .unwrap();
        assert!(!exit.stop_requested(), "only a whole line counts");
        out.write_all(b"\r\n").unwrap();
        let status = exit.status().unwrap();
        assert_eq!(status.reason, ExitReason::Panic);
        let detail = status.detail.as_deref();
        assert_eq!(
            detail,
            Some("Kernel panic - not syncing: VFS: Unable to mount root")
        );
    }

    #[test]
    fn guest_output_reaches_the_console() {
        let (mut s, console) = device();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(console.snapshot().1, b"hi\n");
    }

    #[test]
    fn input_beyond_the_fifo_waits_and_is_delivered_in_order() {
        let (mut s, _) = device();
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(s.queue_input(&input), 200);
        assert!(s.pending_input() > 0, "the FIFO holds 64 bytes");
        let mut got = Vec::new();
        let mut lsr = [0u8];
        loop {
            s.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            s.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
    }

    #[test]
    fn input_queue_is_bounded() {
        let (mut s, _) = device();
        let big = vec![b'a'; INPUT_QUEUE_LIMIT + 1000];
        assert_eq!(s.queue_input(&big), INPUT_QUEUE_LIMIT);
        s.queue_input(&big);
        assert!(s.pending_input() <= INPUT_QUEUE_LIMIT);
    }
}
