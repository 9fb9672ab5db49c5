//! The PC devices at their fixed addresses: COM1, the i8042, the boot-marker port and
//! register, the exit device and (with ACPI) the PM1 block. COM1 and the i8042 are described
//! in the DSDT too (`PNP0501`, `PNP0303`), as on a real PC.

use std::sync::{Arc, Mutex};

use acpi_tables::{aml, Aml};

use super::{DeviceManager, Error};
use crate::arch::x86_64::acpi::{PM1_EVT_PORT, SCI_IRQ};
use crate::console::{Console, ConsoleWriter};
use crate::devices::acpi_pm::{AcpiPm1, PM1_LEN};
use crate::devices::boot_marker::{
    BootMarkerPort, BootMarkers, BOOT_MARKER_MMIO_ADDR, BOOT_MARKER_PORT,
};
use crate::devices::exit_device::{ExitDevice, EXIT_DEVICE_ADDR, EXIT_DEVICE_LEN};
use crate::devices::i8042::{
    I8042, I8042_COMMAND_OFFSET, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_KBD_IRQ,
};
use crate::devices::serial::{SerialDevice, SerialOutput, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::exit::ExitSignal;

/// The legacy devices the VM keeps handles to.
pub struct Legacy {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// What the guest wrote to the boot-marker port and register.
    pub markers: Arc<BootMarkers>,
    /// The PM1 block, with ACPI.
    pub pm1: Option<Arc<Mutex<AcpiPm1>>>,
}

/// Attaches the legacy devices; `acpi` adds the PM1 block.
pub fn attach(
    dm: &mut DeviceManager,
    console: &Arc<Console>,
    exit: &Arc<ExitSignal>,
    acpi: bool,
) -> Result<Legacy, Error> {
    let serial_irq = dm.irqfd(COM1_IRQ)?;
    let serial_out = SerialOutput::new(ConsoleWriter(console.clone()), exit.clone());
    let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_out)));
    dm.add_pio(COM1_PORT, COM1_LEN, 0, serial.clone())?;
    dm.add_dsdt(&LegacyAml {
        name: "COM1",
        hid: "PNP0501",
        ports: &[(COM1_PORT as u16, COM1_LEN as u8)],
        irq: COM1_IRQ,
    });

    let kbd_irq = dm.irqfd(I8042_KBD_IRQ)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone(), kbd_irq)));
    dm.add_pio(I8042_DATA_PORT, 1, 0, i8042.clone())?;
    dm.add_pio(I8042_COMMAND_PORT, 1, I8042_COMMAND_OFFSET, i8042.clone())?;
    dm.add_dsdt(&LegacyAml {
        name: "PS2K",
        hid: "PNP0303",
        ports: &[(I8042_DATA_PORT as u16, 1), (I8042_COMMAND_PORT as u16, 1)],
        irq: I8042_KBD_IRQ,
    });

    let markers = Arc::new(BootMarkers::default());
    let marker_port = Arc::new(Mutex::new(BootMarkerPort(markers.clone())));
    dm.add_pio(BOOT_MARKER_PORT, 1, 0, marker_port.clone())?;
    dm.add_mmio(BOOT_MARKER_MMIO_ADDR, 4, marker_port)?;
    dm.add_mmio(
        EXIT_DEVICE_ADDR,
        EXIT_DEVICE_LEN,
        Arc::new(Mutex::new(ExitDevice(exit.clone()))),
    )?;

    let pm1 = if acpi {
        // Weak: the VM fd's last owner must be `Vm`, which hands it to the reaper.
        let line = Arc::downgrade(dm.vm_fd());
        let sci = Box::new(move |level: bool| {
            if let Some(vm_fd) = line.upgrade() {
                // KVM_IRQ_LINE only fails for a GSI with no route; 9 always has one.
                let _ = vm_fd.set_irq_line(u32::from(SCI_IRQ), level);
            }
        });
        let pm1 = Arc::new(Mutex::new(AcpiPm1::new(exit.clone(), sci)));
        dm.add_pio(PM1_EVT_PORT, PM1_LEN, 0, pm1.clone())?;
        Some(pm1)
    } else {
        None
    };
    Ok(Legacy {
        serial,
        i8042,
        markers,
        pm1,
    })
}

/// An ISA device in the DSDT: its ports and its (edge-triggered, active-high) IRQ.
struct LegacyAml {
    name: &'static str,
    hid: &'static str,
    ports: &'static [(u16, u8)],
    irq: u32,
}

impl Aml for LegacyAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let ios: Vec<aml::IO> = self
            .ports
            .iter()
            .map(|&(port, len)| aml::IO::new(port, port, 1, len))
            .collect();
        let irq = aml::Interrupt::new(true, true, false, false, self.irq);
        let mut resources: Vec<&dyn Aml> = ios.iter().map(|io| io as &dyn Aml).collect();
        resources.push(&irq);
        let crs = aml::ResourceTemplate::new(resources);
        let hid = aml::EISAName::new(self.hid);
        aml::Device::new(
            self.name.into(),
            vec![
                &aml::Name::new("_HID".into(), &hid),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn com1_entry_has_eisa_id_ports_and_irq() {
        let mut aml = Vec::new();
        LegacyAml {
            name: "COM1",
            hid: "PNP0501",
            ports: &[(0x3f8, 8)],
            irq: 4,
        }
        .to_aml_bytes(&mut aml);
        if let Ok(path) = std::env::var("VMM_DUMP_DSDT") {
            let (_, dsdt) = crate::arch::x86_64::acpi::tables(1, &aml, None).swap_remove(2);
            std::fs::write(path, dsdt).unwrap();
        }
        let find = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        // _HID as a compressed EISA id (PNP0501 = 0x0105d041), then IO(0x3f8, 0x3f8, 1, 8).
        assert!(find(&[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(find(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        assert!(find(&[0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0]));
    }
}
