//! The guest console's output, buffered with a bound.
//!
//! The serial device appends what the guest prints; readers (the Python iterator, the CLI,
//! tests) read from a byte offset of their own, so none of them takes bytes from another.
//! Offsets count every byte the guest ever printed. At most `limit` bytes are retained:
//! beyond that the oldest are dropped, so a guest flooding its console costs the host a
//! fixed amount of memory, and a reader that fell behind sees the gap in
//! [`ConsoleChunk::start`].
//!
//! The console also notes when output arrived ([`ConsoleTimes`]): the first byte, and the
//! end of each of the first [`MAX_LINE_TIMES`] lines. That is the host's own clock for a
//! boot's console lines (what a boot timeline puts the kernel's log on), taken where the
//! guest's bytes land rather than where a reader happens to read them: a reader may come
//! late, or never. Bounded, as the buffer is: a guest that prints for ever costs 64 KiB.

use crate::sync::Locked;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long [`Console::read_batched`] waits for more output after a small first chunk.
pub const READ_LINGER: Duration = Duration::from_millis(1);
/// A first chunk this large is returned by [`Console::read_batched`] at once.
pub const READ_BATCH: usize = 4096;

/// How many line ends [`Console`] timestamps: the first lines a guest prints (its boot's).
pub const MAX_LINE_TIMES: usize = 4096;

/// When console output arrived (see the module's documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleTimes {
    /// When the first byte arrived.
    pub first_byte: Option<Instant>,
    /// `(offset one past the line's newline, when that newline arrived)` for each of the
    /// first [`MAX_LINE_TIMES`] lines.
    pub line_ends: Vec<(u64, Instant)>,
}

/// The console buffer. Shared between the serial device and readers.
#[derive(Debug)]
pub struct Console {
    inner: Mutex<Inner>,
    changed: Condvar,
    limit: usize,
}

#[derive(Debug, Default)]
struct Inner {
    buf: VecDeque<u8>,
    /// Offset one past the last byte ever written.
    end: u64,
    /// No more output will come (the VM has stopped).
    closed: bool,
    /// Readers blocked in [`Console::read_wait`]. The guest writes its console a byte per
    /// exit, so waking nobody must cost nothing: `push` signals only when someone waits.
    waiters: usize,
    /// When output arrived; the clock is read only for a first byte or a newline.
    times: ConsoleTimes,
}

/// Bytes read from the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// Offset of `data[0]`; larger than the offset asked for if those bytes were dropped.
    pub start: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// The console is closed and `start + data.len()` is its end.
    pub eof: bool,
}

impl Console {
    /// A console retaining at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Console {
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a reader panicked; the buffer itself stays consistent.
        self.inner.locked()
    }

    /// The retention bound in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Appends guest output.
    pub fn push(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let timed = inner.times.line_ends.len() < MAX_LINE_TIMES && data.contains(&b'\n');
        if inner.times.first_byte.is_none() || timed {
            let now = Instant::now();
            let base = inner.end;
            let times = &mut inner.times;
            times.first_byte.get_or_insert(now);
            let ends = data.iter().enumerate().filter(|&(_, &b)| b == b'\n');
            for (i, _) in ends.take(MAX_LINE_TIMES - times.line_ends.len()) {
                times.line_ends.push((base + i as u64 + 1, now));
            }
        }
        inner.end += data.len() as u64;
        let keep = &data[data.len().saturating_sub(self.limit)..];
        let overflow = (inner.buf.len() + keep.len()).saturating_sub(self.limit);
        inner.buf.drain(..overflow);
        inner.buf.extend(keep);
        let wake = inner.waiters > 0;
        drop(inner);
        if wake {
            self.changed.notify_all();
        }
    }

    /// Marks the end of output and wakes every reader.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Whether the console is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Total bytes the guest has printed.
    pub fn total(&self) -> u64 {
        self.lock().end
    }

    /// Up to `max` bytes from `offset` (or from the oldest retained byte, if later).
    pub fn read(&self, offset: u64, max: usize) -> ConsoleChunk {
        let inner = self.lock();
        Self::chunk(&inner, offset, max)
    }

    fn chunk(inner: &Inner, offset: u64, max: usize) -> ConsoleChunk {
        let first = inner.end - inner.buf.len() as u64;
        let start = offset.clamp(first, inner.end);
        let skip = (start - first) as usize;
        let data: Vec<u8> = inner.buf.iter().skip(skip).take(max).copied().collect();
        let eof = inner.closed && start + data.len() as u64 == inner.end;
        ConsoleChunk { start, data, eof }
    }

    /// Like [`Console::read`], but first waits up to `timeout` for output past `offset` or
    /// for the console to close.
    pub fn read_wait(&self, offset: u64, max: usize, timeout: Duration) -> ConsoleChunk {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        while inner.end <= offset && !inner.closed {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            inner.waiters += 1;
            inner = self
                .changed
                .wait_timeout(inner, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
            inner.waiters -= 1;
        }
        Self::chunk(&inner, offset, max)
    }

    /// Like [`Console::read_wait`], but when the first bytes are few ([`READ_BATCH`]) and more
    /// may come, sleeps [`READ_LINGER`] and returns everything by then.
    ///
    /// A guest prints a byte per vCPU exit; a reader woken for every few bytes spends more
    /// on wake-ups and locking than on the bytes, and slows the guest down with it. Lingering
    /// a millisecond lets output pile up (like interrupt coalescing), for at most that much
    /// latency: small next to a human or a shell prompt.
    pub fn read_batched(&self, offset: u64, max: usize, timeout: Duration) -> ConsoleChunk {
        let first = self.read_wait(offset, max, timeout);
        if first.eof || first.data.is_empty() || first.data.len() >= READ_BATCH.min(max) {
            return first;
        }
        std::thread::sleep(READ_LINGER);
        self.read(offset, max)
    }

    /// When output arrived: the first byte, and the first lines' ends.
    pub fn times(&self) -> ConsoleTimes {
        self.lock().times.clone()
    }

    /// Everything retained: the offset of its first byte, and the bytes.
    pub fn snapshot(&self) -> (u64, Vec<u8>) {
        let inner = self.lock();
        (
            inner.end - inner.buf.len() as u64,
            inner.buf.iter().copied().collect(),
        )
    }
}

/// An [`io::Write`] that appends to a [`Console`]; the serial device's output.
#[derive(Debug, Clone)]
pub struct ConsoleWriter(pub Arc<Console>);

impl io::Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_their_own_offsets() {
        let c = Console::new(1024);
        c.push(b"hello ");
        c.push(b"world");
        let a = c.read(0, 100);
        assert_eq!(
            (a.start, a.data.as_slice(), a.eof),
            (0, &b"hello world"[..], false)
        );
        let b = c.read(6, 3);
        assert_eq!((b.start, b.data.as_slice()), (6, &b"wor"[..]));
        assert_eq!(c.total(), 11);
    }

    #[test]
    fn flooding_keeps_memory_bounded() {
        let c = Console::new(8);
        for _ in 0..1000 {
            c.push(b"0123456789");
        }
        let (start, data) = c.snapshot();
        assert_eq!(data.len(), 8);
        assert_eq!(start, 10_000 - 8);
        assert_eq!(data, b"23456789");
        // A reader that fell behind resumes at the oldest retained byte.
        assert_eq!(c.read(0, 100).start, 10_000 - 8);
        c.push(&[b'x'; 100]);
        assert_eq!(c.snapshot().1, vec![b'x'; 8]);
    }

    #[test]
    fn line_ends_are_timestamped_and_bounded() {
        let c = Console::new(16);
        assert_eq!(c.times(), ConsoleTimes::default());
        let before = Instant::now();
        c.push(b"ab");
        let first = c.times().first_byte.unwrap();
        assert!(first >= before && c.times().line_ends.is_empty());
        c.push(b"c\nd\n\n");
        let t = c.times();
        assert_eq!(t.first_byte, Some(first));
        let offsets: Vec<u64> = t.line_ends.iter().map(|&(o, _)| o).collect();
        assert_eq!(offsets, [4, 6, 7]); // one past each newline, counting every byte
        assert!(t.line_ends.iter().all(|&(_, at)| at >= first));
        for _ in 0..2 * MAX_LINE_TIMES {
            c.push(b"x\n");
        }
        let t = c.times();
        assert_eq!(t.line_ends.len(), MAX_LINE_TIMES); // the first lines, however many follow
        assert_eq!(t.line_ends[3].0, 9);
        c.push(b"many\nlines\n"); // a chunk past the bound takes no time at all
        assert_eq!(c.times().line_ends.len(), MAX_LINE_TIMES);
    }

    #[test]
    fn read_wait_returns_on_data_close_or_timeout() {
        let c = Arc::new(Console::new(64));
        let t0 = Instant::now();
        let empty = c.read_wait(0, 10, Duration::from_millis(50));
        assert!(empty.data.is_empty() && !empty.eof);
        assert!(t0.elapsed() >= Duration::from_millis(50));

        let writer = c.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.push(b"x");
            writer.close();
        });
        let got = c.read_wait(0, 10, Duration::from_secs(10));
        assert_eq!(got.data, b"x");
        h.join().unwrap();
        assert!(c.read_wait(1, 10, Duration::from_secs(10)).eof);
    }

    #[test]
    fn read_batched_gathers_what_follows_a_small_first_chunk() {
        let c = Arc::new(Console::new(1 << 20));
        let writer = c.clone();
        let t = std::thread::spawn(move || {
            writer.push(b"a");
            for _ in 0..100 {
                writer.push(b"b");
            }
        });
        let got = c.read_batched(0, 1 << 20, Duration::from_secs(10));
        t.join().unwrap();
        assert_eq!(got.start, 0);
        assert_eq!(got.data[0], b'a');
        // Whatever arrived during the linger came too; nothing was skipped.
        let rest = c.read(got.data.len() as u64, 1 << 20);
        assert_eq!(got.data.len() + rest.data.len(), 101);
    }
}
