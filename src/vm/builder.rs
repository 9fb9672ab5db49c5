//! Building a VM from a configuration, or from saved state: KVM, memory, devices, the
//! boot images or the saved device and KVM state, vCPUs.

use super::*;
use crate::config::ShareProtocol;
use crate::devices::virtio::p9::P9;
use crate::sync::Locked;

impl Vm {
    /// Builds the VM `config` describes on `ram`: booting it, or giving everything the state
    /// `origin` saved (then memory already holds the guest).
    pub(super) fn build(
        kvm: Kvm,
        config: VmConfig,
        ram: GuestRam,
        origin: Origin<'_>,
    ) -> Result<Vm> {
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
        for (i, share) in config.shares.iter().enumerate() {
            match share.protocol {
                ShareProtocol::VirtioFs => {
                    dm.register_virtio(Fs::new(i, share)?)?;
                }
                ShareProtocol::P9 => {
                    dm.register_virtio(P9::new(i, share)?)?;
                }
            }
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
        // A gdb stub's socket is bound now, so that its errors are the VM's construction's.
        let gdb = match &config.gdb {
            Some(g) => Some(crate::gdb::listen(g)?),
            None => None,
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
                if let Some(g) = &gdb {
                    vcpu.set_debug_stops(g.vcpu_stops.clone());
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
            gdb: Mutex::new(gdb),
            gdb_thread: Mutex::new(None),
            gdb_client: Arc::new(Mutex::new(None)),
            gdb_hold: Arc::new(AtomicBool::new(false)),
            devices: devices.info,
            resources: Some(Resources {
                vm_fd,
                _kvm: kvm,
                ram,
            }),
        })
    }
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
        .locked()
        .restore(&saved.serial)
        .map_err(snapshot_error)?;
    legacy
        .i8042
        .locked()
        .restore(&saved.i8042)
        .map_err(snapshot_error)?;
    if let (Some(pm1), Some(state)) = (&legacy.pm1, &saved.pm1) {
        pm1.locked().restore(state).map_err(snapshot_error)?;
    }
    if saved.virtio.len() != transports.len() {
        return Err(snapshot_error(format!(
            "the snapshot has {} virtio devices, the configuration {}",
            saved.virtio.len(),
            transports.len()
        )));
    }
    for (i, (t, state)) in transports.iter().zip(&saved.virtio).enumerate() {
        t.locked()
            .restore(state)
            .map_err(|e| snapshot_error(format!("virtio device {i}: {e}")))?;
    }
    Ok(())
}

// The devices' errors become the public one here, where the devices are built: the device
// modules know nothing of `crate::error`.
impl From<crate::devices::virtio::block::Error> for Error {
    fn from(e: crate::devices::virtio::block::Error) -> Self {
        match e {
            crate::devices::virtio::block::Error::Image(h) => h.into(),
        }
    }
}

impl From<crate::devices::virtio::share::Error> for Error {
    fn from(e: crate::devices::virtio::share::Error) -> Self {
        match e {
            crate::devices::virtio::share::Error::Share(h) => h.into(),
        }
    }
}

impl From<crate::devices::virtio::net::Error> for Error {
    fn from(e: crate::devices::virtio::net::Error) -> Self {
        match e {
            crate::devices::virtio::net::Error::Tap(h)
            | crate::devices::virtio::net::Error::Passt(h) => h.into(),
        }
    }
}

impl From<crate::devices::virtio::vsock::Error> for Error {
    fn from(e: crate::devices::virtio::vsock::Error) -> Self {
        match e {
            crate::devices::virtio::vsock::Error::Socket(h) => h.into(),
        }
    }
}
