//! The terminal side of the command: raw mode (restored on every way out) and stdin copied
//! to the guest, where Ctrl-A then x ends the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::vm::{Vm, VmState};

const CTRL_A: u8 = 0x01;
/// How often the stdin thread looks whether it should stop, in milliseconds.
const POLL_MS: i32 = 100;

/// Raw mode on a terminal, put back as it was when dropped.
pub struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal; None otherwise.
    pub fn enter(fd: i32) -> Option<RawMode> {
        // SAFETY: isatty only looks at the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: a zeroed termios is a valid value for tcgetattr to overwrite.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios for tcgetattr to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &raw) } != 0 {
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: `saved` came from tcgetattr on this descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved) };
    }
}

/// Copies stdin to the guest on a thread; Ctrl-A x kills the VM.
pub struct StdinForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What one chunk of input means: bytes for the guest, and whether Ctrl-A x came.
pub fn filter_escape(data: &[u8], escape: &mut bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(data.len());
    for &b in data {
        if *escape {
            *escape = false;
            if b == b'x' || b == b'X' {
                return (out, true);
            }
            if b != CTRL_A {
                out.push(CTRL_A);
            }
            out.push(b);
        } else if b == CTRL_A {
            *escape = true;
        } else {
            out.push(b);
        }
    }
    (out, false)
}

impl StdinForwarder {
    /// Starts copying `fd` to `vm`'s console input.
    pub fn start(vm: Arc<Vm>, fd: i32) -> std::io::Result<StdinForwarder> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vmm-stdin".into())
            .spawn(move || forward(&vm, fd, &flag))?;
        Ok(StdinForwarder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StdinForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward(vm: &Vm, fd: i32, stop: &AtomicBool) {
    let mut escape = false;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        let (out, quit) = filter_escape(&buf[..n as usize], &mut escape);
        if !out.is_empty() && vm.state() == VmState::Running {
            let _ = vm.write_input(&out);
        }
        if quit {
            vm.kill();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_sends_one() {
        let mut esc = false;
        assert_eq!(filter_escape(b"ab\x01x", &mut esc), (b"ab".to_vec(), true));
        assert_eq!(
            filter_escape(b"\x01\x01c", &mut esc),
            (b"\x01c".to_vec(), false)
        );
        assert_eq!(filter_escape(b"\x01", &mut esc), (vec![], false));
        assert!(esc);
        assert_eq!(filter_escape(b"q", &mut esc), (b"\x01q".to_vec(), false));
    }
}
