//! Fuzzing harnesses: what each fuzz target (`fuzz/fuzz_targets/*.rs`, cargo-fuzz and
//! libFuzzer on nightly) feeds its input to, and what `tests/fuzz_corpus.rs` replays the
//! committed corpus through on stable, so that an input that once crashed stays fixed.
//!
//! Each harness takes arbitrary bytes and must return without panicking, whatever they are;
//! everything it builds is real (a memfd for files, guest memory, the devices themselves).

use std::fs::File;
use std::io::Write;
use std::os::unix::io::FromRawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueState};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{DiskConfig, KernelConfig, VmConfig};
use crate::console::{Console, ConsoleWriter};
use crate::devices::acpi_pm::AcpiPm1;
use crate::devices::boot_marker::{BootMarkerPort, BootMarkers};
use crate::devices::exit_device::ExitDevice;
use crate::devices::i8042::I8042;
use crate::devices::serial::{SerialDevice, SerialOutput};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::transport::mmio::MmioTransport;
use crate::devices::virtio::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use crate::exit::ExitSignal;
use crate::sync::Locked;

/// A file in memory holding `data`, and a path that opens it.
fn memfd(data: &[u8]) -> Option<(File, std::path::PathBuf)> {
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is ours.
    let fd = unsafe { libc::memfd_create(c"vmm-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(data).ok()?;
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{fd}"));
    Some((file, path))
}

/// Kernel image headers (ELF and bzImage) and the whole boot loader: `data` is the kernel
/// file; the first byte picks the command line's length and whether ACPI tables are built.
pub fn kernel_image(data: &[u8]) {
    let Some((_file, path)) = memfd(data) else {
        return;
    };
    let knob = data.first().copied().unwrap_or(0);
    let config = VmConfig {
        memory_mib: 64,
        kernel: KernelConfig {
            cmdline: "x".repeat(usize::from(knob) * 16),
            ..KernelConfig::new(path)
        },
        acpi: knob & 1 == 0,
        ..VmConfig::default()
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]) else {
        return;
    };
    let _ = crate::boot::load(&mem, &config, &crate::device_manager::Devices::none());
}

/// The command line: the first two bytes are the kernel's limit, the rest the user's text.
pub fn cmdline(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let limit = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let text = String::from_utf8_lossy(&data[2..]);
    let extra = vec!["virtio_mmio.device=4K@0xd0010000:5".to_string()];
    let _ = crate::boot::cmdline::build(&text, &extra, limit, false);
}

/// The legacy devices' registers: `data` is a sequence of accesses, 4 bytes each: device,
/// read or write with its size, offset, value.
pub fn legacy_devices(data: &[u8]) {
    let exit = match ExitSignal::new() {
        Ok(e) => Arc::new(e),
        Err(_) => return,
    };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let console = Arc::new(Console::new(4096));
    let mut serial =
        SerialDevice::new(irq, SerialOutput::new(ConsoleWriter(console), exit.clone()));
    let Ok(kbd_irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let mut i8042 = I8042::new(exit.clone(), kbd_irq);
    let mut pm1 = AcpiPm1::new(exit.clone(), Box::new(|_| {}));
    let mut exit_dev = ExitDevice(exit.clone());
    let mut marker = BootMarkerPort(Arc::new(BootMarkers::default()));
    serial.queue_input(b"input for the guest\n");
    for op in data.chunks_exact(4) {
        let device: &mut dyn BusDevice = match op[0] % 5 {
            0 => &mut serial,
            1 => &mut i8042,
            2 => &mut pm1,
            3 => &mut exit_dev,
            _ => &mut marker,
        };
        let len = [1, 2, 4, 8][usize::from(op[1] >> 1) % 4];
        let offset = u64::from(op[2]);
        let mut buf = [op[3]; 8];
        if op[1] & 1 == 0 {
            device.read(offset, &mut buf[..len]);
        } else {
            device.write(offset, &buf[..len]);
        }
    }
}

const MEM_SIZE: u64 = 1 << 20;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;

/// Guest memory whose first bytes (rings, descriptors, buffers) are `data`.
fn fuzzed_memory(data: &[u8]) -> Option<Arc<GuestMemoryMmap>> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()?;
    let n = data.len().min(MEM_SIZE as usize);
    mem.write_slice(&data[..n], GuestAddress(0)).ok()?;
    Some(Arc::new(mem))
}

/// A disk image in memory, for the block harnesses.
fn disk() -> Option<(File, Block)> {
    let (file, path) = memfd(&[0x5a; 64 << 10])?;
    let block = Block::new(0, &DiskConfig::new(path)).ok()?;
    Some((file, block))
}

/// virtio-blk request parsing and serving: `data` is guest memory with the queue's
/// descriptor table at 0x1000, avail ring at 0x3000 and used ring at 0x4000 (byte 0: the
/// queue size, byte 1: EVENT_IDX), notified a few times.
pub fn virtio_block(data: &[u8]) {
    let Some(mem) = fuzzed_memory(data) else {
        return;
    };
    let Some((_image, mut block)) = disk() else {
        return;
    };
    let size = 1u16 << (data.first().copied().unwrap_or(0) % 9);
    let Ok(queue) = Queue::try_from(QueueState {
        max_size: 256,
        size,
        ready: true,
        desc_table: DESC,
        avail_ring: AVAIL,
        used_ring: USED,
        event_idx_enabled: data.get(1).is_some_and(|b| b & 1 == 1),
        ..QueueState::default()
    }) else {
        return;
    };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let activated = block.activate(Activation {
        queues: vec![queue],
        mem,
        interrupt: Arc::new(Interrupt::new(irq)),
        features: VIRTIO_F_VERSION_1,
    });
    if activated.is_ok() {
        for _ in 0..4 {
            if !block.process_queue(0) {
                break;
            }
        }
    }
}

/// The virtio-mmio transport in front of a disk: `data` is guest memory, and from byte 0x800
/// a sequence of register accesses, 6 bytes each (read/write, offset/4, value), as a driver
/// would make them — setting up queues anywhere, activating, notifying, resetting.
pub fn virtio_mmio(data: &[u8]) {
    let Some(mem) = fuzzed_memory(data) else {
        return;
    };
    let Some((_image, block)) = disk() else {
        return;
    };
    let (Ok(irq), Ok(notify)) = (
        EventFd::new(libc::EFD_NONBLOCK),
        EventFd::new(libc::EFD_NONBLOCK),
    ) else {
        return;
    };
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
    let mut transport = MmioTransport::new(
        device.clone(),
        mem,
        Arc::new(Interrupt::new(irq)),
        vec![notify],
    );
    for op in data.get(0x800..).unwrap_or(&[]).chunks_exact(6) {
        let offset = u64::from(op[1]) * 4;
        let value = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        match op[0] % 4 {
            0 => transport.read(offset, &mut [0u8; 4]),
            1 => transport.write(offset, &value.to_le_bytes()),
            2 => transport.read(offset + u64::from(op[0] >> 2), &mut [0u8; 1]),
            _ => {
                device.locked().process_queue(0);
            }
        }
    }
}

/// A router that takes every MSI route (the fuzzer has no KVM to give them to).
struct AnyRoute;

impl crate::arch::x86_64::irq_routing::MsiRouter for AnyRoute {
    fn route(&self, _gsi: u32, _message: Option<(u64, u32)>) -> Result<(), String> {
        Ok(())
    }
}

/// The virtio-pci function in front of a disk: `data` is guest memory, and from byte 0x800
/// a sequence of accesses, 8 bytes each (kind and size, offset (u16), value (u32), one
/// spare): configuration-space reads and writes at any offset and size, BAR reads and writes
/// (common configuration, ISR, device configuration, notify, MSI-X table and PBA) and queue
/// service, as a driver — or a guest sweeping everything — would make them.
pub fn virtio_pci(data: &[u8]) {
    use crate::devices::pci::msix::Msix;
    use crate::devices::pci::PciFunction;
    use crate::devices::virtio::transport::pci::{PciResources, VirtioPci};
    let Some(mem) = fuzzed_memory(data) else {
        return;
    };
    let Some((_image, block)) = disk() else {
        return;
    };
    let fds: Option<Vec<EventFd>> = (0..4)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).ok())
        .collect();
    let Some(mut fds) = fds else {
        return;
    };
    let intx = fds.remove(0);
    let notify = fds.remove(0);
    let msix = Arc::new(Msix::new(fds, vec![24, 25], Arc::new(AnyRoute)));
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
    let mut function = VirtioPci::new(
        device.clone(),
        PciResources {
            mem,
            vm_fd: None,
            queue_events: vec![notify],
            intx,
            gsi: 5,
            msix,
            bar: 0xc000_0000,
            window: (0xc000_0000, 0xd000_0000),
        },
    );
    for op in data.get(0x800..).unwrap_or(&[]).chunks_exact(8) {
        let len = [1usize, 2, 4, 8][usize::from(op[0] >> 4) % 4];
        let offset = u16::from_le_bytes([op[1], op[2]]);
        let value =
            u64::from(u32::from_le_bytes([op[3], op[4], op[5], op[6]])) | (u64::from(op[7]) << 32);
        let bytes = value.to_le_bytes();
        match op[0] % 5 {
            0 => function.read_config(offset % 0x1000, &mut [0u8; 8][..len.min(4)]),
            1 => function.write_config(offset % 0x1000, &bytes[..len.min(4)]),
            2 => function.read_bar(0, u64::from(offset) % 0x8000, &mut [0u8; 8][..len]),
            3 => function.write_bar(0, u64::from(offset) % 0x8000, &bytes[..len]),
            _ => {
                device.locked().process_queue(0);
            }
        }
    }
}

/// virtio-vsock packet parsing and its connection state machine: `data` is guest memory
/// holding three queues (descriptor table, avail and used rings of the receive queue at
/// 0x1000/0x3000/0x4000, the transmit queue 0x8000 further up, the event queue 0x10000; byte
/// 0: the queue size, byte 1: EVENT_IDX) whose
/// transmit packets — requests, data, shutdowns, credit updates, resets, from any port, of
/// any length — are served, with the receive queue filled in turn.
pub fn virtio_vsock(data: &[u8]) {
    use crate::devices::virtio::vsock::Vsock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let Some(mem) = fuzzed_memory(data) else {
        return;
    };
    let uds = std::env::temp_dir().join(format!(
        "vmm-fuzz-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let Ok(mut vsock) = Vsock::new(&crate::config::VsockConfig {
        cid: 3,
        uds: uds.clone(),
    }) else {
        return;
    };
    let size = 1u16 << (data.first().copied().unwrap_or(0) % 9);
    let event_idx = data.get(1).is_some_and(|b| b & 1 == 1);
    let queues: Option<Vec<Queue>> = (0..3u64)
        .map(|i| {
            let base = 0x1000 + i * 0x8000;
            Queue::try_from(QueueState {
                max_size: 256,
                size,
                ready: true,
                desc_table: base,
                avail_ring: base + 0x2000,
                used_ring: base + 0x3000,
                event_idx_enabled: event_idx,
                ..QueueState::default()
            })
            .ok()
        })
        .collect();
    let (Some(queues), Ok(irq)) = (queues, EventFd::new(libc::EFD_NONBLOCK)) else {
        return;
    };
    if vsock
        .activate(Activation {
            queues,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            features: VIRTIO_F_VERSION_1,
        })
        .is_ok()
    {
        for _ in 0..3 {
            vsock.process_queue(1);
            vsock.process_queue(0);
        }
        vsock.restored();
        vsock.reset();
    }
    vsock.release();
    let _ = std::fs::remove_file(&uds);
}

/// The small read-only tree the sharing devices' harnesses serve: a file, a directory, and
/// links out of it (to `/etc`, and to a file beside the share).
fn fuzz_share(protocol: crate::config::ShareProtocol) -> Option<crate::config::ShareConfig> {
    use std::sync::OnceLock;
    static SHARE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let share = SHARE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmm-fuzz-fs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("share/dir")).ok()?;
        std::fs::write(dir.join("share/hello.txt"), b"hello from the host\n").ok()?;
        std::fs::write(dir.join("share/dir/inner.txt"), b"inner\n").ok()?;
        std::fs::write(dir.join("outside"), b"secret\n").ok()?;
        let _ = std::os::unix::fs::symlink("/etc", dir.join("share/escape"));
        let _ = std::os::unix::fs::symlink("../outside", dir.join("share/up"));
        Some(dir.join("share"))
    });
    Some(crate::config::ShareConfig {
        protocol,
        path: share.clone()?,
        tag: "fuzz".into(),
        read_only: true,
    })
}

/// Activates `dev` with `queues` queues in the fuzzed memory (queue i's descriptors at
/// 0x1000 + i * 0x8000, its avail ring 0x2000 and used ring 0x3000 further; byte 0 of `data`:
/// the queue size, byte 1: EVENT_IDX), serves them three rounds, last queue first, and resets.
fn serve_fuzzed(dev: &mut dyn VirtioDevice, data: &[u8], queues: u64) {
    let Some(mem) = fuzzed_memory(data) else {
        return;
    };
    let size = 1u16 << (data.first().copied().unwrap_or(0) % 8);
    let event_idx = data.get(1).is_some_and(|b| b & 1 == 1);
    let made: Option<Vec<Queue>> = (0..queues)
        .map(|i| {
            let base = 0x1000 + i * 0x8000;
            Queue::try_from(QueueState {
                max_size: 256,
                size,
                ready: true,
                desc_table: base,
                avail_ring: base + 0x2000,
                used_ring: base + 0x3000,
                event_idx_enabled: event_idx,
                ..QueueState::default()
            })
            .ok()
        })
        .collect();
    let (Some(made), Ok(irq)) = (made, EventFd::new(libc::EFD_NONBLOCK)) else {
        return;
    };
    if dev
        .activate(Activation {
            queues: made,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            features: VIRTIO_F_VERSION_1,
        })
        .is_ok()
    {
        for _ in 0..3 {
            for q in (0..queues as usize).rev() {
                dev.process_queue(q);
            }
        }
        dev.reset();
    }
}

/// virtio-fs request parsing and the FUSE server: `data` is guest memory holding the two
/// queues (high priority at 0x1000/0x3000/0x4000, requests 0x8000 further up; byte 0: the
/// queue size, byte 1: EVENT_IDX) whose chains are FUSE requests of any opcode, length and
/// node id, served against a small read-only share (a file, a directory, links out of it).
pub fn virtio_fs(data: &[u8]) {
    let Some(share) = fuzz_share(crate::config::ShareProtocol::VirtioFs) else {
        return;
    };
    if let Ok(mut fs) = crate::devices::virtio::fs::Fs::new(0, &share) {
        serve_fuzzed(&mut fs, data, 2);
    }
}

/// virtio-9p request parsing and the 9P2000.L server: `data` is guest memory holding its one
/// queue (at 0x1000/0x3000/0x4000; byte 0: the queue size, byte 1: EVENT_IDX) whose chains
/// are 9P messages of any type, size, fid and name, served against the same small read-only
/// share as `virtio_fs`.
pub fn virtio_9p(data: &[u8]) {
    let Some(share) = fuzz_share(crate::config::ShareProtocol::P9) else {
        return;
    };
    if let Ok(mut p9) = crate::devices::virtio::p9::P9::new(0, &share) {
        serve_fuzzed(&mut p9, data, 1);
    }
}

/// A snapshot's state file: `data` as the file itself, and `data` as the body of a file
/// with a correct header (length and CRC-32 made to match, so the decoder of every saved
/// structure is reached, not only the checksum). What decodes is checked as `Vm::restore`
/// checks it (the configuration against generous host limits) and encoded again.
pub fn snapshot_state(data: &[u8]) {
    let path = std::path::Path::new("fuzz/state");
    let _ = crate::snapshot::decode(data, path);
    if let Ok(snap) = crate::snapshot::decode(&crate::snapshot::frame(data), path) {
        let _ = snap.config.validate(1 << 20, 254);
        let _ = crate::snapshot::encode(&snap);
    }
}

/// A harness: takes any bytes, must not panic.
pub type Harness = fn(&[u8]);

/// Every harness, by the name its fuzz target and corpus directory have.
pub const TARGETS: &[(&str, Harness)] = &[
    ("kernel_image", kernel_image),
    ("cmdline", cmdline),
    ("legacy_devices", legacy_devices),
    ("virtio_block", virtio_block),
    ("virtio_mmio", virtio_mmio),
    ("virtio_pci", virtio_pci),
    ("virtio_vsock", virtio_vsock),
    ("virtio_fs", virtio_fs),
    ("virtio_9p", virtio_9p),
    ("snapshot_state", snapshot_state),
];
