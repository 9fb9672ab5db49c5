//! Snapshot, restore and fork of a VM ([`crate::snapshot`] is the file format).

use super::*;
use crate::sync::Locked;

/// Most clones one [`Vm::fork`] makes.
pub const MAX_FORK: usize = 1024;

impl Vm {
    /// Writes a snapshot of the VM into the directory `dir`: pauses it if it runs, saves
    /// every vCPU, KVM's VM state, every device and guest memory (sparse), and resumes it if
    /// it was running. Returns the bytes of memory written.
    pub fn snapshot(&self, dir: &Path) -> Result<u64> {
        self.while_paused("snapshot", || {
            let (out, mem_path) = crate::snapshot::create_memory_file(dir)?;
            let base = self.memory_base.locked().clone();
            let (snap, written) = self.capture(|mappings| {
                let base = base.as_ref().map(|b| &*b.file);
                Ok(crate::snapshot::write_memory(
                    mappings, base, &out, &mem_path,
                )?)
            })?;
            crate::snapshot::write_state(dir, &snap)?;
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
        let (snap, mem) = crate::snapshot::read(dir)?;
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
    pub(super) fn from_snapshot(config: VmConfig, snap: &Snapshot, base: MemoryBase) -> Result<Vm> {
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
            return Err(crate::snapshot::Error::CpuFeatures(list.join(", ")).into());
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
        *vm.memory_base.locked() = Some(base);
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
            let current = self.memory_base.locked().clone();
            let (snap, base) = self.capture(|mappings| {
                // The parent's memory as it is now, as an immutable base: the one made at the
                // last fork if the parent has not written since, else a new one, which the
                // parent then maps privately too.
                if let Some(b) = current.as_ref().filter(|b| b.sealed) {
                    let diverged = crate::snapshot::memory::diverged(mappings)
                        .map_err(io_err("cannot read this process's page map"))?;
                    if !diverged {
                        return Ok(b.file.clone());
                    }
                }
                let file =
                    crate::snapshot::memory::freeze(mappings, current.as_ref().map(|b| &*b.file))
                        .map_err(io_err("cannot copy guest memory for the clones"))?;
                // SAFETY: the mappings are this VM's RAM, just copied whole into `file`;
                // the vCPUs are paused and the devices locked (inside `capture`).
                unsafe { crate::snapshot::memory::map_private(mappings, &file) }
                    .map_err(io_err("cannot map guest memory copy-on-write"))?;
                Ok(Arc::new(file))
            })?;
            *self.memory_base.locked() = Some(MemoryBase {
                file: base.clone(),
                sealed: true,
            });
            let build = |spec: &ForkSpec| {
                let mut config = self.config.clone();
                // The parent's stub is the parent's: a clone gets none.
                config.gdb = None;
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
    pub(super) fn check_forkable(&self, specs: &[ForkSpec]) -> Result<()> {
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
    pub(super) fn while_paused<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let was_running = match self.state() {
            VmState::Running => {
                self.pause()?;
                true
            }
            VmState::Paused => false,
            state => {
                return Err(Error::InvalidState {
                    operation,
                    state: state.as_str(),
                })
            }
        };
        let result = f();
        if was_running {
            self.resume()?;
        }
        result
    }

    /// Every vCPU's state (the VM paused); failures made into errors by `error`.
    pub(super) fn saved_vcpus(
        &self,
        error: impl Fn(String) -> Error,
    ) -> Result<Vec<crate::arch::x86_64::state::VcpuState>> {
        let answers = self
            .vcpus
            .request(|_| crate::vcpu::VcpuEvent::SaveState)
            .ok_or_else(|| error("a vCPU did not answer".into()))?;
        let mut vcpus = Vec::with_capacity(answers.len());
        for answer in answers {
            match answer {
                VcpuResponse::Saved(state) => vcpus.push(*state),
                VcpuResponse::Failed(why) => {
                    return Err(error(format!("cannot save a vCPU: {why}")))
                }
                other => return Err(error(format!("unexpected vCPU answer {other:?}"))),
            }
        }
        Ok(vcpus)
    }

    /// Saves everything but memory while the VM is paused, then lets `memory` deal with
    /// guest RAM while every device is still held (no queue is served, so no device writes
    /// guest memory, until it returns).
    pub(super) fn capture<R>(
        &self,
        memory: impl FnOnce(&[crate::snapshot::memory::Mapping]) -> Result<R>,
    ) -> Result<(Snapshot, R)> {
        let Some(resources) = &self.resources else {
            return Err(snapshot_error("the VM is gone".into()));
        };
        if !self.config.shares.is_empty() {
            return Err(snapshot_error(
                "cannot snapshot or fork a VM with shares: the guest's open files and inodes \
                 in them are held by this process and cannot be saved"
                    .into(),
            ));
        }
        let vcpus = self.saved_vcpus(snapshot_error)?;
        // Transports before devices: the order a vCPU's MMIO access takes them in.
        let transports: Vec<_> = self.transports.iter().map(|t| t.locked()).collect();
        let devices: Vec<_> = self.virtio.iter().map(|d| d.locked()).collect();
        let state = DevicesState {
            serial: self.serial.locked().save(),
            i8042: self.i8042.locked().save(),
            pm1: self.pm1.as_ref().map(|p| p.locked().save()),
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
    /// A gdb stub for the restored VM (never saved: a snapshot has none of its own).
    pub gdb: Option<crate::config::GdbConfig>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            console_limit: None,
            vsock_uds: None,
            seccomp: true,
            disks: None,
            net: None,
            gdb: None,
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
        config.gdb = self.gdb;
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

/// What a clone gets that its parent's configuration cannot give it.
#[derive(Debug, Clone, Default)]
pub struct ForkSpec {
    /// The clone's vsock socket (required when the parent has vsock).
    pub vsock_uds: Option<PathBuf>,
}

pub(super) fn snapshot_error(detail: String) -> Error {
    crate::snapshot::Error::Unsupported(detail).into()
}
