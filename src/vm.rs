//! A whole virtual machine: built from a [`VmConfig`], started, waited on, killed.
//!
//! [`Vm::new`] does everything that can fail because of the configuration — it opens KVM,
//! maps memory, loads the kernel and creates the vCPUs — so that [`Vm::start`] only spawns
//! threads. Every method takes `&self`: one thread may block in [`Vm::wait`] while another
//! calls [`Vm::kill`] or reads the console.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use event_manager::MutEventSubscriber;

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;
use crate::boot::{self, BootInfo};
use crate::config::VmConfig;
use crate::console::Console;
use crate::device_manager::{legacy, DeviceInfo, DeviceManager};
use crate::devices::acpi_pm::AcpiPm1;
use crate::devices::boot_marker::BootMarkers;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::net::{Net, NetCounters};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::devices::{DeviceStats, ExitCounts};
use crate::error::{Error, Result};
use crate::event_loop::{ConsoleInput, EventLoop, Finished};
pub use crate::exit::{ExitReason, ExitSignal, ExitStatus};
use crate::memory::{create_guest_memory, register_guest_memory, GuestRam};
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
    devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
}

/// A virtual machine.
pub struct Vm {
    config: VmConfig,
    boot: BootInfo,
    console: Arc<Console>,
    serial: Arc<Mutex<SerialDevice>>,
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
    /// The disks, in `config.disks` order.
    disks: Vec<Arc<Mutex<Block>>>,
    /// The network devices, in `config.net` order.
    nets: Vec<Arc<Mutex<Net>>>,
    /// The vsock device.
    vsock: Option<Arc<Mutex<Vsock>>>,
    /// Released by `Drop` once the vCPU threads are joined (guest memory must outlive them),
    /// through [`crate::reaper`].
    resources: Option<Resources>,
}

/// The kernel VM and the guest memory: slow to release, so released off the caller's thread.
struct Resources {
    // Fields drop in order: the VM (which maps the memory) before the memory.
    _vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    _ram: GuestRam,
}

impl Vm {
    /// Builds a VM: validates `config`, creates the KVM VM with its in-kernel irqchip and
    /// PIT, maps and registers guest memory, loads the boot images and creates the vCPUs.
    pub fn new(config: VmConfig) -> Result<Vm> {
        let kvm = crate::kvm::open_kvm()?;
        config.validate(crate::kvm::host_memory_mib(), kvm.get_max_vcpus() as u32)?;
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

        // Declared first, dropped last: if building fails below, every other user of the
        // memory is gone by the time `ram` unmaps it.
        let ram = create_guest_memory(config.memory_bytes())?;
        let memory = ram.memory().clone();
        crate::memory::advise_huge_pages(&memory);
        register_guest_memory(&vm_fd, &memory)?;

        // Devices first: the DSDT the boot tables carry describes them.
        let exit = Arc::new(ExitSignal::new().map_err(io_err("cannot create the exit eventfd"))?);
        let console = Arc::new(Console::new(config.console_limit));
        let mut dm = DeviceManager::new(vm_fd.clone(), memory.clone());
        let legacy = legacy::attach(&mut dm, &console, &exit, config.acpi)?;
        let disks = config
            .disks
            .iter()
            .enumerate()
            .map(|(i, disk)| Ok(dm.register_virtio(Block::new(i, disk)?)?))
            .collect::<Result<Vec<_>>>()?;
        let nets = config
            .net
            .iter()
            .enumerate()
            .map(|(i, net)| Ok(dm.register_virtio(Net::new(i, net)?)?))
            .collect::<Result<Vec<_>>>()?;
        let vsock = match &config.vsock {
            Some(v) => Some(dm.register_virtio(Vsock::new(v)?)?),
            None => None,
        };
        let devices = dm.finish();
        let boot = boot::load(&memory, &config, &devices.info, &devices.dsdt_devices)?;
        let buses = devices.buses;

        let stats = Arc::new(DeviceStats::default());
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        let count = config.vcpus as u8;
        let msr_indices = Arc::new(crate::arch::x86_64::state::msrs_to_save(&kvm)?);
        let vcpus = (0..count)
            .map(|id| {
                let vcpu = Vcpu::create(
                    &vm_fd,
                    id,
                    buses.clone(),
                    exit.clone(),
                    stats.clone(),
                    msr_indices.clone(),
                )?;
                vcpu.configure_boot(count, &supported, &memory, boot.entry)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Vm {
            config,
            boot,
            console,
            serial: legacy.serial,
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
                devices: devices.virtio,
            })),
            event_loop: Mutex::new(None),
            started_at: Mutex::new(None),
            pm1: legacy.pm1,
            devices: devices.info,
            disks,
            nets,
            vsock,
            resources: Some(Resources {
                _vm_fd: vm_fd,
                _kvm: kvm,
                _ram: ram,
            }),
        })
    }

    /// Starts the vCPU threads and the event loop. A VM starts once.
    pub fn start(&self) -> Result<()> {
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
        for vcpu in parts.vcpus {
            match vcpu.start(false) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    self.exit.request(ExitStatus::with_detail(
                        ExitReason::Error,
                        format!("cannot start a vCPU thread: {e}"),
                    ));
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
            devices: parts.devices,
        };
        let handle = event_loop
            .spawn()
            .map_err(io_err("cannot start the event loop thread"))?;
        *self.event_loop.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
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
        if let Some(parts) = unstarted {
            crate::event_loop::release_devices(&parts.devices);
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
        self.disks
            .iter()
            .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).requests())
            .collect()
    }

    /// Frames each network device moved, in `config.net` order.
    pub fn net_counters(&self) -> Vec<NetCounters> {
        self.nets
            .iter()
            .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()).counters())
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
        // Devices hold guest memory too: let go of them first, so the reaper unmaps it.
        self.disks.clear();
        self.nets.clear();
        self.vsock = None;
        if let Some(resources) = self.resources.take() {
            crate::reaper::release(resources);
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}
