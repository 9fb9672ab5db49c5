//! The device manager: where every device gets its address, its interrupt, its ACPI entry
//! and its event handlers.
//!
//! [`crate::vm::Vm`] builds the devices before the boot tables, so the DSDT describes
//! exactly the devices that exist:
//!
//! 1. [`legacy::attach`] puts COM1, the i8042, the boot-marker registers, the exit device and
//!    the ACPI PM1 block at their fixed PC addresses;
//! 2. one [`DeviceManager::register_virtio`] call per virtio device (disks first, in order)
//!    puts it on the VM's transport without the caller or the device knowing which:
//!    - virtio-mmio: the next MMIO page of the virtio window and the next free GSI
//!      ([`allocator`]), an irqfd on that GSI, one ioeventfd per queue on its QueueNotify
//!      register and a `LNRO0005` device in the DSDT (how Linux's `virtio_mmio` finds it);
//!    - virtio-pci: the next slot on bus 0 ([`pci`]) with its BAR in the host bridge's
//!      window, one MSI-X vector per queue plus one for configuration changes (each an irqfd
//!      on its own MSI route, [`crate::arch::x86_64::irq_routing`]), INTx on a GSI for
//!      drivers without MSI-X, and one ioeventfd per queue on its notify address;
//!
//!    and in both cases a handler in the event loop that serves its queues;
//! 3. [`DeviceManager::finish`] adds the PCI host bridge if a device is on PCI (ECAM, the
//!    0xCF8 ports, the BAR window, `PCI0` in the DSDT, the MCFG) and hands over the buses
//!    (for the vCPUs), the DSDT's device entries (for [`crate::boot`]) and the event
//!    handlers (for [`crate::event_loop`]).
//!
//! Adding a device means one folder under [`crate::devices::virtio`] and one call here.
//! Interrupts: KVM's in-kernel IOAPIC routes GSIs 0–23 to its pins by default (the routing
//! table `KVM_CREATE_IRQCHIP` installs), so an irqfd on the GSI is all an MMIO device needs.

pub mod allocator;
pub mod legacy;
pub mod pci;

use std::sync::{Arc, Mutex};

use acpi_tables::aml;
use acpi_tables::Aml;
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::allocator::{Allocator, MMIO_SLOT};
use self::pci::PciBus;
use crate::arch::x86_64::irq_routing::GsiRouting;
use crate::config::Transport;
use crate::devices::bus::{Buses, Overlap, SharedDevice};
use crate::devices::pci::msix::Msix;
use crate::devices::virtio::transport::mmio::{MmioTransport, NOTIFY_OFFSET};
use crate::devices::virtio::transport::pci::{IntxResample, PciResources, VirtioPci, BAR_SIZE};
use crate::devices::virtio::transport::{TransportState, VirtioTransport};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::Bus;
use crate::sync::Locked;

/// What can go wrong while wiring devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two devices claim the same range.
    #[error(transparent)]
    Overlap(#[from] Overlap),
    /// The machine has no address, slot or interrupt left for another device.
    #[error(transparent)]
    Exhausted(#[from] allocator::Exhausted),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for {what}: {source}")]
    EventFd {
        /// What it was for.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// KVM refused an irqfd or ioeventfd.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
}

/// A device as the user can see it: `vm.boot_info` lists these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The kind, e.g. `virtio-blk`.
    pub kind: &'static str,
    /// How the guest reaches it.
    pub transport: Transport,
    /// Its registers: the MMIO page, or the PCI function's BAR0 as the VMM placed it.
    pub mmio_base: u64,
    /// Their length.
    pub mmio_len: u64,
    /// Its interrupt line (on PCI, INTx's, for drivers without MSI-X).
    pub gsi: u32,
    /// Bus, device and function on PCI.
    pub bdf: Option<(u8, u8, u8)>,
    /// Its MSI-X vectors on PCI (one per queue and one for configuration changes).
    pub msix_vectors: u16,
}

/// The devices, once built.
pub struct Devices {
    /// The buses the vCPUs dispatch to.
    pub buses: Buses,
    /// The DSDT's device entries (AML, inside `\_SB_`).
    pub dsdt_devices: Vec<u8>,
    /// ECAM's base when the VM has a PCI bus (for the MCFG and the e820 map).
    pub ecam: Option<u64>,
    /// The event loop's handlers.
    pub subscribers: Vec<Box<dyn MutEventSubscriber + Send>>,
    /// The virtio devices, in registration order.
    pub info: Vec<DeviceInfo>,
    /// The same devices, to release when the VM stops.
    pub virtio: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    /// Their transports, whose state snapshots carry.
    pub transports: Vec<Arc<Mutex<dyn VirtioTransport>>>,
}

impl Devices {
    /// No devices at all (the boot path on its own, as the fuzz targets drive it).
    pub fn none() -> Self {
        Devices {
            buses: Buses {
                pio: Arc::new(Bus::new()),
                mmio: Arc::new(Bus::new()),
            },
            dsdt_devices: Vec::new(),
            ecam: None,
            subscribers: Vec::new(),
            info: Vec::new(),
            virtio: Vec::new(),
            transports: Vec::new(),
        }
    }
}

/// Every device's state, as saved in a snapshot: COM1, the i8042, the PM1 block (with ACPI)
/// and each virtio transport with its queues, in registration order. The exit device and the
/// boot-marker port keep no guest-visible state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevicesState {
    /// COM1.
    pub serial: crate::devices::serial::SerialSnapshot,
    /// The keyboard controller.
    pub i8042: crate::devices::i8042::I8042State,
    /// PM1_STS and PM1_EN.
    pub pm1: Option<crate::devices::acpi_pm::Pm1State>,
    /// The virtio transports.
    pub virtio: Vec<TransportState>,
}

/// Builds the VM's devices; see the module documentation.
pub struct DeviceManager {
    vm_fd: Arc<VmFd>,
    mem: Arc<GuestMemoryMmap>,
    transport: Transport,
    allocator: Allocator,
    pio: Bus,
    mmio: Bus,
    dsdt_devices: Vec<u8>,
    subscribers: Vec<Box<dyn MutEventSubscriber + Send>>,
    info: Vec<DeviceInfo>,
    virtio: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    transports: Vec<Arc<Mutex<dyn VirtioTransport>>>,
    pci: Arc<PciBus>,
    routing: Arc<GsiRouting>,
}

impl DeviceManager {
    /// A device manager for the VM `vm_fd` with guest memory `mem`, whose virtio devices go
    /// on `transport`.
    pub fn new(vm_fd: Arc<VmFd>, mem: Arc<GuestMemoryMmap>, transport: Transport) -> Self {
        DeviceManager {
            routing: Arc::new(GsiRouting::new(vm_fd.clone())),
            vm_fd,
            mem,
            transport,
            allocator: Allocator::default(),
            pio: Bus::new(),
            mmio: Bus::new(),
            dsdt_devices: Vec::new(),
            subscribers: Vec::new(),
            info: Vec::new(),
            virtio: Vec::new(),
            transports: Vec::new(),
            pci: Arc::new(PciBus::new()),
        }
    }

    /// The KVM VM, for devices that need an ioctl.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm_fd
    }

    /// Puts `device` on the port-I/O bus at a fixed `base..base+len`, seeing offsets from
    /// `offset`.
    pub fn add_pio(
        &mut self,
        base: u64,
        len: u64,
        offset: u64,
        device: SharedDevice,
    ) -> Result<(), Error> {
        Ok(self.pio.insert(base, len, offset, device)?)
    }

    /// Puts `device` on the MMIO bus at a fixed `base..base+len`.
    pub fn add_mmio(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), Error> {
        Ok(self.mmio.insert(base, len, 0, device)?)
    }

    /// Adds a device's entry to the DSDT.
    pub fn add_dsdt(&mut self, entry: &dyn Aml) {
        entry.to_aml_bytes(&mut self.dsdt_devices);
    }

    /// Adds a handler to the event loop.
    pub fn add_subscriber(&mut self, subscriber: Box<dyn MutEventSubscriber + Send>) {
        self.subscribers.push(subscriber);
    }

    fn eventfd(what: &'static str) -> Result<EventFd, Error> {
        EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd { what, source })
    }

    fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }

    /// Creates an eventfd that raises `gsi` when written.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd, Error> {
        let irqfd = Self::eventfd("an interrupt")?;
        self.vm_fd
            .register_irqfd(&irqfd, gsi)
            .map_err(Self::kvm("KVM_IRQFD"))?;
        Ok(irqfd)
    }

    /// Adds a virtio device on the VM's transport, with its interrupts, its queues'
    /// notifications, its ACPI description and its queue handler. Returns the shared device.
    pub fn register_virtio<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
    ) -> Result<Arc<Mutex<D>>, Error> {
        let queues = device.queue_max_sizes().len();
        let device = Arc::new(Mutex::new(device));
        let events = (0..queues)
            .map(|_| Self::eventfd("a queue notification"))
            .collect::<Result<Vec<_>, _>>()?;
        let transport_events = events
            .iter()
            .map(|e| {
                e.try_clone().map_err(|source| Error::EventFd {
                    what: "a queue notification",
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shared: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let (transport, info) = match self.transport {
            Transport::Mmio => self.attach_mmio(shared.clone(), transport_events)?,
            Transport::Pci => self.attach_pci(shared.clone(), transport_events)?,
        };
        self.virtio.push(shared);
        self.transports.push(transport);
        self.info.push(info);
        self.add_subscriber(D::subscriber(device.clone(), events));
        Ok(device)
    }

    fn attach_mmio(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
        events: Vec<EventFd>,
    ) -> Result<(Arc<Mutex<dyn VirtioTransport>>, DeviceInfo), Error> {
        let base = self.allocator.mmio_slot()?;
        let gsi = self.allocator.gsi()?;
        let interrupt = Arc::new(Interrupt::new(self.irqfd(gsi)?));
        for (index, event) in events.iter().enumerate() {
            self.vm_fd
                .register_ioevent(
                    event,
                    &IoEventAddress::Mmio(base + NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(Self::kvm("KVM_IOEVENTFD"))?;
        }
        let kind = crate::devices::virtio::transport::lock(&device).kind();
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.mem.clone(),
            interrupt,
            events,
        )));
        self.mmio.insert(base, MMIO_SLOT, 0, transport.clone())?;
        let number = self.info.len();
        self.add_dsdt(&VirtioMmioAml { number, base, gsi });
        let info = DeviceInfo {
            kind,
            transport: Transport::Mmio,
            mmio_base: base,
            mmio_len: MMIO_SLOT,
            gsi,
            bdf: None,
            msix_vectors: 0,
        };
        Ok((transport, info))
    }

    fn attach_pci(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
        events: Vec<EventFd>,
    ) -> Result<(Arc<Mutex<dyn VirtioTransport>>, DeviceInfo), Error> {
        let slot = self.allocator.pci_slot()?;
        let gsi = self.allocator.gsi()?;
        let vectors = events.len() as u32 + 1;
        let gsis = self.allocator.msi_gsis(vectors)?;
        let mut irqfds = Vec::with_capacity(gsis.len());
        for &g in &gsis {
            irqfds.push(self.irqfd(g)?);
        }
        let msix = Arc::new(Msix::new(irqfds, gsis, self.routing.clone()));
        // INTx is level-triggered: KVM holds the line until the guest's EOI, then tells us
        // through `resample` so that a still-pending ISR raises it again.
        let intx = Self::eventfd("INTx")?;
        let resample = Self::eventfd("INTx resampling")?;
        self.vm_fd
            .register_irqfd_with_resample(&intx, &resample, gsi)
            .map_err(Self::kvm("KVM_IRQFD (resample)"))?;
        let bar = pci::WINDOW_START + u64::from(slot - 1) * BAR_SIZE;
        let kind = crate::devices::virtio::transport::lock(&device).kind();
        let function = Arc::new(Mutex::new(VirtioPci::new(
            device,
            PciResources {
                mem: self.mem.clone(),
                vm_fd: Some(self.vm_fd.clone()),
                queue_events: events,
                intx,
                gsi,
                msix,
                bar,
                window: (pci::WINDOW_START, pci::WINDOW_END),
            },
        )));
        let interrupt = function.locked().interrupt().clone();
        self.add_subscriber(Box::new(IntxResample::new(interrupt, resample)));
        self.pci.add(usize::from(slot), function.clone());
        let info = DeviceInfo {
            kind,
            transport: Transport::Pci,
            mmio_base: bar,
            mmio_len: BAR_SIZE,
            gsi,
            bdf: Some((0, slot, 0)),
            msix_vectors: vectors as u16,
        };
        Ok((function, info))
    }

    /// Puts the PCI host bridge on the buses and in the DSDT, for the devices on PCI.
    fn attach_pci_bus(&mut self) -> Result<(), Error> {
        let slots: Vec<(u8, u32)> = self
            .info
            .iter()
            .filter_map(|d| d.bdf.map(|(_, slot, _)| (slot, d.gsi)))
            .collect();
        self.mmio.insert(
            pci::ECAM_BASE,
            pci::ECAM_SIZE,
            0,
            Arc::new(Mutex::new(pci::Ecam::new(self.pci.clone()))),
        )?;
        self.mmio.insert(
            pci::WINDOW_START,
            pci::WINDOW_END - pci::WINDOW_START,
            0,
            Arc::new(Mutex::new(pci::BarWindow::new(self.pci.clone()))),
        )?;
        self.pio.insert(
            pci::CONFIG_ADDRESS,
            pci::CONFIG_PORTS,
            0,
            Arc::new(Mutex::new(pci::ConfigPorts::new(self.pci.clone()))),
        )?;
        self.add_dsdt(&pci::PciAml { slots });
        Ok(())
    }

    /// Everything built, for the boot tables, the vCPUs and the event loop.
    pub fn finish(mut self) -> Result<Devices, Error> {
        let has_pci = self.info.iter().any(|d| d.bdf.is_some());
        if has_pci {
            self.attach_pci_bus()?;
        }
        Ok(Devices {
            buses: Buses {
                pio: Arc::new(self.pio),
                mmio: Arc::new(self.mmio),
            },
            dsdt_devices: self.dsdt_devices,
            ecam: has_pci.then_some(pci::ECAM_BASE),
            subscribers: self.subscribers,
            info: self.info,
            virtio: self.virtio,
            transports: self.transports,
        })
    }
}

/// A virtio-mmio device in the DSDT: `_HID "LNRO0005"` with its page and its interrupt in
/// `_CRS`, which is what Linux's `virtio_mmio` driver matches through ACPI.
struct VirtioMmioAml {
    number: usize,
    base: u64,
    gsi: u32,
}

impl Aml for VirtioMmioAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let name = format!("VR{:02X}", self.number & 0xff);
        let uid = self.number as u32;
        let range = aml::Memory32Fixed::new(true, self.base as u32, MMIO_SLOT as u32);
        let irq = aml::Interrupt::new(true, true, false, false, self.gsi);
        let resources = aml::ResourceTemplate::new(vec![&range, &irq]);
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &resources),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_devices_are_listed_for_release() {
        use crate::config::VsockConfig;
        use crate::devices::virtio::vsock::Vsock;

        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(_) => return, // no KVM here: the probe-guest tests cover it
        };
        let vm_fd = Arc::new(kvm.create_vm().unwrap());
        vm_fd.create_irq_chip().unwrap();
        let mem = Arc::new(
            GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap(),
        );
        let mut dm = DeviceManager::new(vm_fd, mem, Transport::Mmio);
        let uds = std::env::temp_dir().join(format!("vmm-ref-dm-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&uds);
        dm.register_virtio(
            Vsock::new(&VsockConfig {
                cid: 3,
                uds: uds.clone(),
            })
            .unwrap(),
        )
        .unwrap();
        let devices = dm.finish().unwrap();
        assert_eq!(devices.virtio.len(), 1);
        assert!(uds.exists());
        crate::event_loop::release_devices(&devices.virtio);
        assert!(!uds.exists(), "release closes the listening socket");
    }

    #[test]
    fn virtio_dsdt_entry_has_the_hid_page_and_interrupt() {
        let mut aml = Vec::new();
        VirtioMmioAml {
            number: 1,
            base: 0xd001_1000,
            gsi: 6,
        }
        .to_aml_bytes(&mut aml);
        if let Ok(path) = std::env::var("VMM_DUMP_DSDT") {
            let dsdt = crate::arch::x86_64::acpi::tables(1, &aml, None)
                .into_iter()
                .find(|(_, t)| t.starts_with(b"DSDT"))
                .map(|(_, t)| t)
                .unwrap();
            std::fs::write(path, dsdt).unwrap();
        }
        assert_eq!(&aml[..1], &[0x5b]); // ExtOpPrefix: DeviceOp
        let find = |needle: &[u8]| aml.windows(needle.len()).position(|w| w == needle);
        assert!(find(b"VR01").is_some());
        assert!(find(b"\x0dLNRO0005\x00").is_some(), "_HID as a string");
        // Memory32Fixed, read-write, base, length.
        let mut mem = vec![0x86, 0x09, 0x00, 0x01];
        mem.extend_from_slice(&0xd001_1000u32.to_le_bytes());
        mem.extend_from_slice(&0x1000u32.to_le_bytes());
        assert!(find(&mem).is_some());
        // Extended interrupt: consumer, edge, active high, exclusive, one GSI.
        assert!(find(&[0x89, 0x06, 0x00, 0x03, 0x01, 6, 0, 0, 0]).is_some());
    }
}
