//! A whole virtual machine: built from a [`VmConfig`], started, waited on, killed.
//!
//! [`Vm::new`] does everything that can fail because of the configuration — it opens KVM,
//! maps memory, loads the kernel and creates the vCPUs — so that [`Vm::start`] only spawns
//! threads. Every method takes `&self`: one thread may block in [`Vm::wait`] while another
//! calls [`Vm::kill`] or reads the console.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use event_manager::MutEventSubscriber;

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;
use crate::boot::{self, BootInfo};
use crate::config::VmConfig;
use crate::console::Console;
use crate::device_manager::DevicesState;
use crate::device_manager::{legacy, DeviceInfo, DeviceManager};
use crate::devices::acpi_pm::AcpiPm1;
use crate::devices::boot_marker::BootMarkers;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::net::{Net, NetCounters};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::transport::VirtioTransport;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{DeviceStats, ExitCounts, Persist};
use crate::error::{Error, Result};
use crate::event_loop::{ConsoleInput, EventLoop, Finished};
pub use crate::exit::{ExitReason, ExitSignal, ExitStatus};
use crate::memory::{
    create_guest_memory, create_guest_memory_backed, register_guest_memory, GuestRam,
};
use crate::snapshot::{self, Snapshot};
use crate::vcpu::{register_kick_handler, Vcpu, VcpuEvent, VcpuHandles, VcpuResponse};

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, not started.
    Created,
    /// vCPUs are running (or stopping).
    Running,
    /// Paused: every vCPU is parked outside `KVM_RUN` until [`Vm::resume`].
    Paused,
    /// Every vCPU has stopped; the exit status is known.
    Exited,
}

impl VmState {
    /// The state's name, as the Python API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Exited => "exited",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters describing a VM's activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmStats {
    /// vCPU exits by kind.
    pub exits: ExitCounts,
    /// Bytes the guest printed on its console.
    pub console_bytes: u64,
    /// Time since [`Vm::start`].
    pub uptime: Duration,
}

/// Parts that only exist between [`Vm::new`] and [`Vm::start`].
struct Unstarted {
    vcpus: Vec<Vcpu>,
    subscribers: Vec<Box<dyn MutEventSubscriber + Send>>,
}

/// A virtual machine.
pub struct Vm {
    config: VmConfig,
    boot: BootInfo,
    console: Arc<Console>,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042>>,
    input: Arc<ConsoleInput>,
    exit: Arc<ExitSignal>,
    finished: Arc<Finished>,
    stats: Arc<DeviceStats>,
    markers: Arc<BootMarkers>,
    /// The vCPU threads' handles, once started.
    vcpus: Arc<VcpuHandles>,
    /// Every vCPU is paused (between [`Vm::pause`] and [`Vm::resume`]).
    paused: AtomicBool,
    unstarted: Mutex<Option<Unstarted>>,
    event_loop: Mutex<Option<JoinHandle<()>>>,
    started_at: Mutex<Option<Instant>>,
    pm1: Option<Arc<Mutex<AcpiPm1>>>,
    /// The virtio devices, in the order they were registered.
    devices: Vec<DeviceInfo>,
    /// Every virtio device and its transport, in registration order (snapshots).
    virtio: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    transports: Vec<Arc<Mutex<dyn VirtioTransport>>>,
    /// The file guest RAM privately maps, if it does (a restored or forked VM, or a parent
    /// since its first fork); None for anonymous memory.
    memory_base: Mutex<Option<MemoryBase>>,
    /// Released by `Drop` once the vCPU threads are joined (guest memory must outlive them),
    /// through [`crate::reaper`].
    resources: Option<Resources>,
}

/// A file guest RAM is a private mapping of.
#[derive(Clone)]
struct MemoryBase {
    file: Arc<File>,
    /// A sealed memfd this VMM made for forks (as opposed to a user's snapshot file).
    sealed: bool,
}

/// The kernel VM and the guest memory: slow to release, so released off the caller's thread.
struct Resources {
    // Fields drop in order: the VM (which maps the memory) before the memory.
    vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    ram: GuestRam,
}

/// What a VM is built from.
enum Origin<'a> {
    /// A fresh boot of the configured kernel.
    Boot,
    /// A saved state (restore or fork): memory already holds the guest.
    Saved(&'a Snapshot),
}

impl Vm {
    /// Builds a VM: validates `config`, creates the KVM VM with its in-kernel irqchip and
    /// PIT, maps and registers guest memory, loads the boot images and creates the vCPUs.
    pub fn new(config: VmConfig) -> Result<Vm> {
        let kvm = crate::kvm::open_kvm()?;
        config.validate(crate::kvm::host_memory_mib(), kvm.get_max_vcpus() as u32)?;
        let ram = create_guest_memory(config.memory_bytes())?;
        Self::build(kvm, config, ram, Origin::Boot)
    }

    /// Builds the VM `config` describes on `ram`: booting it, or giving everything the state
    /// `origin` saved (then memory already holds the guest).
    fn build(kvm: Kvm, config: VmConfig, ram: GuestRam, origin: Origin<'_>) -> Result<Vm> {
        register_kick_handler()?;
        let vm_fd = Arc::new(kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(Error::kvm("KVM_CREATE_PIT2"))?;

        // `ram` was made first and is dropped last: if building fails below, every other
        // user of the memory is gone by the time it unmaps it.
        let memory = ram.memory().clone();
        crate::memory::advise_huge_pages(&memory);
        register_guest_memory(&vm_fd, &memory)?;

        // Devices first: the DSDT the boot tables carry describes them.
        let exit = Arc::new(ExitSignal::new().map_err(io_err("cannot create the exit eventfd"))?);
        let console = Arc::new(Console::new(config.console_limit));
        let mut dm = DeviceManager::new(vm_fd.clone(), memory.clone(), config.transport);
        let legacy = legacy::attach(&mut dm, &console, &exit, config.acpi)?;
        // Every device is held by its transport and the device list (`devices.virtio`); the
        // VM keeps no handle per kind.
        for (i, disk) in config.disks.iter().enumerate() {
            dm.register_virtio(Block::new(i, disk)?)?;
        }
        for (i, net) in config.net.iter().enumerate() {
            dm.register_virtio(Net::new(i, net)?)?;
        }
        if let Some(v) = &config.vsock {
            dm.register_virtio(Vsock::new(v)?)?;
        }
        if let Some(r) = &config.rng {
            dm.register_virtio(Rng::new(r))?;
        }
        let devices = dm.finish()?;
        let boot = match origin {
            Origin::Boot => boot::load(&memory, &config, &devices)?,
            Origin::Saved(snap) => {
                restore_devices(&snap.devices, &legacy, &devices.transports)?;
                crate::arch::x86_64::state::restore_vm(&vm_fd, &snap.vm)?;
                snap.boot.clone()
            }
        };
        let buses = devices.buses;

        let stats = Arc::new(DeviceStats::default());
        let count = config.vcpus as u8;
        let msr_indices = Arc::new(crate::arch::x86_64::state::msrs_to_save(&kvm)?);
        let supported = match origin {
            Origin::Boot => Some(
                crate::arch::x86_64::cpuid::supported(&kvm)
                    .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?,
            ),
            Origin::Saved(_) => None,
        };
        let vcpus = (0..count)
            .map(|id| {
                let mut vcpu = Vcpu::create(
                    &vm_fd,
                    id,
                    buses.clone(),
                    exit.clone(),
                    stats.clone(),
                    msr_indices.clone(),
                )?;
                match (origin_state(&origin, id), &supported) {
                    (Some(state), _) => vcpu.restore(state)?,
                    (None, Some(cpuid)) => {
                        vcpu.configure_boot(count, cpuid, &memory, boot.entry)?
                    }
                    (None, None) => {
                        return Err(snapshot_error(format!(
                            "the snapshot has no state for vCPU {id}"
                        )))
                    }
                }
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Vm {
            config,
            boot,
            console,
            serial: legacy.serial,
            i8042: legacy.i8042,
            input: Arc::new(
                ConsoleInput::new().map_err(io_err("cannot create the input eventfd"))?,
            ),
            exit,
            finished: Arc::new(Finished::default()),
            stats,
            markers: legacy.markers,
            vcpus: Arc::new(VcpuHandles::default()),
            paused: AtomicBool::new(false),
            unstarted: Mutex::new(Some(Unstarted {
                vcpus,
                subscribers: devices.subscribers,
            })),
            virtio: devices.virtio,
            transports: devices.transports,
            memory_base: Mutex::new(None),
            event_loop: Mutex::new(None),
            started_at: Mutex::new(None),
            pm1: legacy.pm1,
            devices: devices.info,
            resources: Some(Resources {
                vm_fd,
                _kvm: kvm,
                ram,
            }),
        })
    }

    /// Starts the vCPU threads and the event loop. A VM starts once.
    pub fn start(&self) -> Result<()> {
        self.start_threads(false)
    }

    /// Starts the vCPU threads (`paused`: held out of guest code until [`Vm::resume`]) and
    /// the event loop.
    fn start_threads(&self, paused: bool) -> Result<()> {
        let parts = self
            .unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(parts) = parts else {
            return Err(Error::InvalidState {
                operation: "start",
                state: self.state(),
            });
        };
        *self.started_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.markers.start_clock();
        let mut handles = Vec::with_capacity(parts.vcpus.len());
        self.paused.store(paused, Ordering::SeqCst);
        let mut vcpu_error = None;
        for vcpu in parts.vcpus {
            match vcpu.start(paused, self.config.seccomp) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    self.exit.request(ExitStatus::with_detail(
                        ExitReason::Error,
                        format!("cannot start a vCPU thread: {e}"),
                    ));
                    vcpu_error = Some(e);
                    break;
                }
            }
        }
        self.vcpus.set(handles);
        let event_loop = EventLoop {
            exit: self.exit.clone(),
            input: self.input.clone(),
            serial: self.serial.clone(),
            console: self.console.clone(),
            finished: self.finished.clone(),
            vcpus: self.vcpus.clone(),
            subscribers: parts.subscribers,
            devices: self.virtio.clone(),
            seccomp: self.config.seccomp,
            children: self
                .virtio
                .iter()
                .filter_map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).child_pid())
                .collect(),
        };
        let handle = match event_loop.spawn() {
            Ok(handle) => handle,
            Err(e) => {
                // Nothing else would stop the vCPUs that did start: stop them here, and end
                // the VM as the event loop would have.
                let status = ExitStatus::with_detail(
                    ExitReason::Error,
                    format!("cannot start the event loop thread: {e}"),
                );
                self.exit.request(status.clone());
                self.vcpus.stop_and_join(Duration::from_millis(5));
                crate::event_loop::release_devices(&self.virtio);
                self.finished.set(self.exit.status().unwrap_or(status));
                self.console.close();
                return Err(io_err("cannot start the event loop thread")(e));
            }
        };
        *self.event_loop.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        match vcpu_error {
            Some(e) => Err(io_err("cannot start a vCPU thread")(e)),
            None => Ok(()),
        }
    }

    /// Writes a snapshot of the VM into the directory `dir`: pauses it if it runs, saves
    /// every vCPU, KVM's VM state, every device and guest memory (sparse), and resumes it if
    /// it was running. Returns the bytes of memory written.
    pub fn snapshot(&self, dir: &Path) -> Result<u64> {
        self.while_paused("snapshot", || {
            let (out, mem_path) = snapshot::create_memory_file(dir)?;
            let base = self
                .memory_base
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let (snap, written) = self.capture(|mappings| {
                let base = base.as_ref().map(|b| &*b.file);
                Ok(snapshot::write_memory(mappings, base, &out, &mem_path)?)
            })?;
            snapshot::write_state(dir, &snap)?;
            Ok(written)
        })
    }

    /// A VM from the snapshot in `dir`, paused: [`Vm::resume`] runs it from the instruction
    /// where it was saved. Its memory is the snapshot's memory file mapped copy-on-write
    /// (read as the guest touches it). What the host gives it comes from `options` where
    /// they say, from the saved configuration otherwise (disk images, TAPs, a new passt, the
    /// vsock socket, which must be free); its seccomp filter always comes from `options`,
    /// never from the file (docs/security.md: a snapshot is not trusted to widen the sandbox).
    pub fn restore(dir: &Path, options: RestoreOptions) -> Result<Vm> {
        let (snap, mem) = snapshot::read(dir)?;
        let config = options.apply(snap.config.clone())?;
        let mem = Arc::new(mem);
        Self::from_snapshot(
            config,
            &snap,
            MemoryBase {
                file: mem,
                sealed: false,
            },
        )
    }

    /// Builds a paused VM from `snap`, its memory a private mapping of `base`.
    fn from_snapshot(config: VmConfig, snap: &Snapshot, base: MemoryBase) -> Result<Vm> {
        let kvm = crate::kvm::open_kvm()?;
        config.validate(crate::kvm::host_memory_mib(), kvm.get_max_vcpus() as u32)?;
        if snap.vcpus.len() != config.vcpus as usize {
            return Err(snapshot_error(format!(
                "the snapshot has {} vCPU states for {} vCPUs",
                snap.vcpus.len(),
                config.vcpus
            )));
        }
        let supported = crate::arch::x86_64::cpuid::supported(&kvm)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let missing = snap
            .vcpus
            .first()
            .map(|v| crate::arch::x86_64::state::missing_cpu_features(&v.cpuid, &supported))
            .unwrap_or_default();
        if !missing.is_empty() {
            let list: Vec<String> = missing
                .iter()
                .map(|(leaf, reg, bits)| format!("CPUID {leaf:#x} {reg} bits {bits:#x}"))
                .collect();
            return Err(snapshot::Error::CpuFeatures(list.join(", ")).into());
        }
        let ram = create_guest_memory_backed(config.memory_bytes(), Some(&base.file))?;
        if ram.file_len() != snap.memory_len {
            return Err(snapshot_error(format!(
                "the memory file has {} bytes, {} MiB of RAM needs {}",
                snap.memory_len,
                config.memory_mib,
                ram.file_len()
            )));
        }
        let vm = Self::build(kvm, config, ram, Origin::Saved(snap))?;
        *vm.memory_base.lock().unwrap_or_else(|e| e.into_inner()) = Some(base);
        vm.start_threads(true)?;
        Ok(vm)
    }

    /// Clones the VM `specs.len()` times, each paused, sharing its memory copy-on-write: a
    /// clone's writes are its own, and neither the parent's later writes nor another
    /// clone's reach it. The parent is paused meanwhile and runs on afterwards if it ran.
    ///
    /// What a clone gets of devices that reach outside the VM: read-only disks are opened
    /// again (writable ones are refused: two VMs would write one image), a vsock device gets
    /// the socket the spec names (its guest sees its connections reset), user-mode
    /// networking without forwarded ports gets its own passt; TAPs and forwarded ports are
    /// refused (they cannot be shared).
    pub fn fork(&self, specs: &[ForkSpec]) -> Result<Vec<Vm>> {
        if specs.is_empty() || specs.len() > MAX_FORK {
            return Err(Error::invalid(
                "n",
                specs.len(),
                format!("expected 1 to {MAX_FORK} clones per call"),
            ));
        }
        self.check_forkable(specs)?;
        self.while_paused("fork", || {
            let current = self
                .memory_base
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let (snap, base) = self.capture(|mappings| {
                // The parent's memory as it is now, as an immutable base: the one made at the
                // last fork if the parent has not written since, else a new one, which the
                // parent then maps privately too.
                if let Some(b) = current.as_ref().filter(|b| b.sealed) {
                    let diverged = snapshot::memory::diverged(mappings)
                        .map_err(io_err("cannot read this process's page map"))?;
                    if !diverged {
                        return Ok(b.file.clone());
                    }
                }
                let file = snapshot::memory::freeze(mappings, current.as_ref().map(|b| &*b.file))
                    .map_err(io_err("cannot copy guest memory for the clones"))?;
                // SAFETY: the mappings are this VM's RAM, just copied whole into `file`;
                // the vCPUs are paused and the devices locked (inside `capture`).
                unsafe { snapshot::memory::map_private(mappings, &file) }
                    .map_err(io_err("cannot map guest memory copy-on-write"))?;
                Ok(Arc::new(file))
            })?;
            *self.memory_base.lock().unwrap_or_else(|e| e.into_inner()) = Some(MemoryBase {
                file: base.clone(),
                sealed: true,
            });
            let build = |spec: &ForkSpec| {
                let mut config = self.config.clone();
                if let (Some(v), Some(uds)) = (config.vsock.as_mut(), spec.vsock_uds.as_ref()) {
                    v.uds = uds.clone();
                }
                Self::from_snapshot(
                    config,
                    &snap,
                    MemoryBase {
                        file: base.clone(),
                        sealed: true,
                    },
                )
            };
            // Clones are independent and most of a clone's cost is waiting on KVM (memory
            // slots): build them on as many threads as there are CPUs.
            let workers = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .clamp(1, specs.len().max(1));
            let chunk = specs.len().div_ceil(workers).max(1);
            std::thread::scope(|scope| {
                let handles: Vec<_> = specs
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || part.iter().map(build).collect::<Vec<_>>()))
                    .collect();
                let mut clones = Vec::with_capacity(specs.len());
                for h in handles {
                    let part = h
                        .join()
                        .map_err(|_| snapshot_error("building a clone panicked".into()))?;
                    for clone in part {
                        clones.push(clone?);
                    }
                }
                Ok(clones)
            })
        })
    }

    /// Refuses a fork whose clones could not have their devices.
    fn check_forkable(&self, specs: &[ForkSpec]) -> Result<()> {
        let refuse =
            |arg: String, why: &str| Err(snapshot_error(format!("cannot fork: {arg}: {why}")));
        for (i, d) in self.config.disks.iter().enumerate() {
            if !d.read_only {
                return refuse(
                    format!("disks[{i}]"),
                    "a writable disk cannot be shared by clones: attach it read-only to fork",
                );
            }
        }
        for (i, n) in self.config.net.iter().enumerate() {
            match &n.backend {
                crate::config::NetBackendConfig::Tap { .. } => {
                    return refuse(format!("net[{i}]"), "a TAP cannot be shared by clones");
                }
                crate::config::NetBackendConfig::User { forward } if !forward.is_empty() => {
                    return refuse(
                        format!("net[{i}]"),
                        "forwarded host ports cannot be shared by clones: fork without `forward`",
                    );
                }
                crate::config::NetBackendConfig::User { .. } => {}
            }
        }
        if self.config.vsock.is_some() && specs.iter().any(|s| s.vsock_uds.is_none()) {
            return refuse(
                "vsock".into(),
                "each clone of a VM with vsock needs a socket path of its own",
            );
        }
        Ok(())
    }

    /// Runs `f` with the VM paused for `operation`: a running VM is paused first and resumed
    /// afterwards (whether `f` succeeded or not), a paused one stays paused.
    fn while_paused<T>(&self, operation: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let was_running = match self.state() {
            VmState::Running => {
                self.pause()?;
                true
            }
            VmState::Paused => false,
            state => return Err(Error::InvalidState { operation, state }),
        };
        let result = f();
        if was_running {
            self.resume()?;
        }
        result
    }

    /// Saves everything but memory while the VM is paused, then lets `memory` deal with
    /// guest RAM while every device is still held (no queue is served, so no device writes
    /// guest memory, until it returns).
    fn capture<R>(
        &self,
        memory: impl FnOnce(&[snapshot::memory::Mapping]) -> Result<R>,
    ) -> Result<(Snapshot, R)> {
        let Some(resources) = &self.resources else {
            return Err(snapshot_error("the VM is gone".into()));
        };
        let answers = self
            .vcpus
            .request(|_| crate::vcpu::VcpuEvent::SaveState)
            .ok_or_else(|| snapshot_error("a vCPU did not answer".into()))?;
        let mut vcpus = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer {
                VcpuResponse::Saved(state) => vcpus.push(*state),
                VcpuResponse::Failed(why) => {
                    return Err(snapshot_error(format!("cannot save a vCPU: {why}")))
                }
                other => return Err(snapshot_error(format!("unexpected vCPU answer {other:?}"))),
            }
        }
        // Transports before devices: the order a vCPU's MMIO access takes them in.
        let transports: Vec<_> = self
            .transports
            .iter()
            .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let devices: Vec<_> = self
            .virtio
            .iter()
            .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let state = DevicesState {
            serial: self.serial.lock().unwrap_or_else(|e| e.into_inner()).save(),
            i8042: self.i8042.lock().unwrap_or_else(|e| e.into_inner()).save(),
            pm1: self
                .pm1
                .as_ref()
                .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).save()),
            virtio: transports
                .iter()
                .zip(&devices)
                .map(|(t, d)| t.save_with(&**d))
                .collect(),
        };
        let vm = crate::arch::x86_64::state::save_vm(&resources.vm_fd)?;
        let ram = &resources.ram;
        let out = memory(&ram.mappings())?;
        drop(devices);
        drop(transports);
        Ok((
            Snapshot {
                vmm_version: env!("CARGO_PKG_VERSION").to_string(),
                config: self.config.clone(),
                boot: self.boot.clone(),
                memory_len: ram.file_len(),
                vm,
                vcpus,
                devices: state,
            },
            out,
        ))
    }

    /// Waits up to `timeout` (forever with `None`) for the VM to stop; returns its status,
    /// or `None` on timeout or if the VM was never started.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        if self.state() == VmState::Created {
            return None;
        }
        self.finished.wait(timeout)
    }

    /// Pauses a running VM: returns once every vCPU has left guest code (its last port or
    /// MMIO access completed) and waits for the next event.
    pub fn pause(&self) -> Result<()> {
        self.require_state(VmState::Running, "pause")?;
        let answers = self.vcpus.request(|_| VcpuEvent::Pause);
        let all_paused =
            answers.is_some_and(|a| a.iter().all(|r| matches!(r, VcpuResponse::Paused)));
        if all_paused {
            self.paused.store(true, Ordering::SeqCst);
            Ok(())
        } else if self.exit.stop_requested() {
            // The VM stopped meanwhile: nothing is left to pause.
            Ok(())
        } else {
            // Some vCPU did not answer: let the others run on rather than half-pause.
            self.vcpus.request(|_| VcpuEvent::Resume);
            Err(Error::PauseTimeout(crate::vcpu::VCPU_ANSWER_TIMEOUT))
        }
    }

    /// Resumes a paused VM.
    pub fn resume(&self) -> Result<()> {
        self.require_state(VmState::Paused, "resume")?;
        self.paused.store(false, Ordering::SeqCst);
        self.vcpus.request(|_| VcpuEvent::Resume);
        Ok(())
    }

    /// Stops the VM with reason `killed` (unless it already stopped for another reason).
    /// Returns at once; [`Vm::wait`] returns when every vCPU has stopped. Killing a VM that
    /// was never started makes it exited.
    pub fn kill(&self) {
        self.exit.request(ExitStatus::new(ExitReason::Killed));
        let unstarted = self
            .unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if unstarted.is_some() {
            crate::event_loop::release_devices(&self.virtio);
            self.console.close();
            self.finished.set(ExitStatus::new(ExitReason::Killed));
        }
    }

    /// Presses the ACPI power button. Returns whether the guest listens for it (its ACPI button
    /// driver enabled the event); a guest that does not will never see the press.
    ///
    /// The guest decides what a press means: Linux hands it to userspace as KEY_POWER, where
    /// acpid or systemd-logind usually shut down, which ends the VM with reason `poweroff`.
    pub fn press_power_button(&self) -> Result<bool> {
        self.require_state(VmState::Running, "press_power_button")?;
        let Some(pm1) = &self.pm1 else {
            return Err(Error::invalid(
                "acpi",
                false,
                "acpi=true: the power button is an ACPI device",
            ));
        };
        let mut pm1 = pm1.lock().unwrap_or_else(|e| e.into_inner());
        pm1.press_power_button();
        Ok(pm1.power_button_enabled())
    }

    /// Fails with [`Error::InvalidState`] naming `operation` unless the VM is in `expected`.
    fn require_state(&self, expected: VmState, operation: &'static str) -> Result<()> {
        let state = self.state();
        if state != expected {
            return Err(Error::InvalidState { operation, state });
        }
        Ok(())
    }

    /// The VM's state.
    pub fn state(&self) -> VmState {
        if self.finished.get().is_some() {
            VmState::Exited
        } else if self
            .unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            VmState::Created
        } else if self.paused.load(Ordering::SeqCst) {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// The exit status, once the VM has stopped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.finished.get()
    }

    /// The console output buffer.
    pub fn console(&self) -> &Arc<Console> {
        &self.console
    }

    /// Sends `data` to the guest's serial input; returns how many bytes were accepted
    /// (input waiting for the guest is bounded).
    pub fn write_input(&self, data: &[u8]) -> Result<usize> {
        if self.state() == VmState::Exited {
            return Err(Error::InvalidState {
                operation: "write to the console",
                state: VmState::Exited,
            });
        }
        Ok(self.input.push(data))
    }

    /// Where the boot images went.
    pub fn boot_info(&self) -> &BootInfo {
        &self.boot
    }

    /// The virtio devices: kind, MMIO page and GSI, in registration order (disks first).
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// Requests each disk has served, in `config.disks` order.
    pub fn disk_requests(&self) -> Vec<u64> {
        self.counters_of("virtio-blk")
            .iter()
            .map(|c| counter(c, "requests"))
            .collect()
    }

    /// Frames each network device moved, in `config.net` order.
    pub fn net_counters(&self) -> Vec<NetCounters> {
        self.counters_of("virtio-net")
            .iter()
            .map(|c| NetCounters {
                tx_frames: counter(c, "tx_frames"),
                rx_frames: counter(c, "rx_frames"),
                dropped: counter(c, "dropped"),
            })
            .collect()
    }

    /// The counters of every device of `kind`, in registration order.
    fn counters_of(&self, kind: &str) -> Vec<Vec<(&'static str, u64)>> {
        self.virtio
            .iter()
            .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()))
            .filter(|d| d.kind() == kind)
            .map(|d| d.counters())
            .collect()
    }

    /// Boot-time markers the guest wrote to the marker port: `(value, time since start)`.
    pub fn boot_markers(&self) -> Vec<(u8, Duration)> {
        self.markers.events()
    }

    /// The configuration the VM was built from.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Activity counters; cheap enough to call in a loop.
    pub fn stats(&self) -> VmStats {
        let started = *self.started_at.lock().unwrap_or_else(|e| e.into_inner());
        VmStats {
            exits: self.stats.snapshot(),
            console_bytes: self.console.total(),
            uptime: started.map(|t| t.elapsed()).unwrap_or_default(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        let handle = self
            .event_loop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        // Everything that holds guest memory (devices, their transports, vCPUs never
        // started) goes with the memory, in one piece, dropped before it: guest RAM is
        // unmapped only by the last holder, so a holder left behind here would leak it.
        crate::reaper::release(Teardown {
            _unstarted: self
                .unstarted
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
            _transports: std::mem::take(&mut self.transports),
            _virtio: std::mem::take(&mut self.virtio),
            _resources: self.resources.take(),
        });
    }
}

/// A dropped VM's parts that hold guest memory or kernel objects, released together (fields
/// drop in order: every user of the memory before the memory itself, in `resources`).
struct Teardown {
    _unstarted: Option<Unstarted>,
    _transports: Vec<Arc<Mutex<dyn VirtioTransport>>>,
    _virtio: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    _resources: Option<Resources>,
}

/// What the caller of [`Vm::restore`] decides, rather than the snapshot file.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The console's limit (the saved one if None).
    pub console_limit: Option<usize>,
    /// The vsock socket (the saved path if None; it is usually still taken by the VM the
    /// snapshot came from).
    pub vsock_uds: Option<PathBuf>,
    /// Filter the restored VM's threads with seccomp (whatever the saved VM had).
    pub seccomp: bool,
    /// The disk images, one per saved disk, in order (the saved paths if None).
    pub disks: Option<Vec<crate::config::DiskConfig>>,
    /// The network backends, one per saved device, in order (the saved ones if None).
    pub net: Option<Vec<crate::config::NetConfig>>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            console_limit: None,
            vsock_uds: None,
            seccomp: true,
            disks: None,
            net: None,
        }
    }
}

impl RestoreOptions {
    /// The saved configuration with the caller's choices in place.
    fn apply(self, mut config: VmConfig) -> Result<VmConfig> {
        if let Some(limit) = self.console_limit {
            config.console_limit = limit;
        }
        if let (Some(v), Some(uds)) = (config.vsock.as_mut(), self.vsock_uds) {
            v.uds = uds;
        }
        config.seccomp = self.seccomp;
        replace_devices(&mut config.disks, self.disks, "disks", "disks", "disk")?;
        replace_devices(
            &mut config.net,
            self.net,
            "net",
            "devices",
            "network device",
        )?;
        Ok(config)
    }
}

/// Puts the caller's `given` devices in place of the `saved` ones, one for one: a different
/// count is an error naming `arg` (`"disks"`, `"net"`).
fn replace_devices<T>(
    saved: &mut Vec<T>,
    given: Option<Vec<T>>,
    arg: &'static str,
    plural: &str,
    one: &str,
) -> Result<()> {
    let Some(given) = given else {
        return Ok(());
    };
    if given.len() != saved.len() {
        return Err(Error::invalid(
            arg,
            format!("{} {plural}", given.len()),
            format!("one per {one} the snapshot's VM had: {}", saved.len()),
        ));
    }
    *saved = given;
    Ok(())
}

/// Most clones one [`Vm::fork`] makes.
pub const MAX_FORK: usize = 1024;

/// What a clone gets that its parent's configuration cannot give it.
#[derive(Debug, Clone, Default)]
pub struct ForkSpec {
    /// The clone's vsock socket (required when the parent has vsock).
    pub vsock_uds: Option<PathBuf>,
}

fn snapshot_error(detail: String) -> Error {
    snapshot::Error::Unsupported(detail).into()
}

/// The saved state of vCPU `id`, when building from a snapshot.
fn origin_state<'a>(
    origin: &Origin<'a>,
    id: u8,
) -> Option<&'a crate::arch::x86_64::state::VcpuState> {
    match origin {
        Origin::Boot => None,
        Origin::Saved(snap) => snap.vcpus.get(usize::from(id)),
    }
}

/// Gives freshly built devices their saved state.
fn restore_devices(
    saved: &DevicesState,
    legacy: &legacy::Legacy,
    transports: &[Arc<Mutex<dyn VirtioTransport>>],
) -> Result<()> {
    legacy
        .serial
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restore(&saved.serial)
        .map_err(snapshot_error)?;
    legacy
        .i8042
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .restore(&saved.i8042)
        .map_err(snapshot_error)?;
    if let (Some(pm1), Some(state)) = (&legacy.pm1, &saved.pm1) {
        pm1.lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(state)
            .map_err(snapshot_error)?;
    }
    if saved.virtio.len() != transports.len() {
        return Err(snapshot_error(format!(
            "the snapshot has {} virtio devices, the configuration {}",
            saved.virtio.len(),
            transports.len()
        )));
    }
    for (i, (t, state)) in transports.iter().zip(&saved.virtio).enumerate() {
        t.lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(state)
            .map_err(|e| snapshot_error(format!("virtio device {i}: {e}")))?;
    }
    Ok(())
}

/// The counter `name` of a device's `counters` (0 if it has none such).
fn counter(counters: &[(&'static str, u64)], name: &str) -> u64 {
    counters
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |&(_, v)| v)
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}
