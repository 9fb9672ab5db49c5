//! A dump of the guest for `crash`, `drgn` or `gdb` ([`crate::coredump`] is the format).

use super::*;
use crate::coredump::{find_vmcoreinfo, write_core, CpuRegs, RamRange};
use crate::sync::Locked;

impl Vm {
    /// Writes an ELF core of the guest (its RAM, sparse, and every vCPU's registers) to
    /// `path`, replacing what is there: pauses the VM if it runs and resumes it after.
    /// Returns the bytes of RAM written (pages never touched are holes).
    pub fn dump_core(&self, path: &Path) -> Result<u64> {
        self.while_paused("dump_core", || {
            let Some(resources) = &self.resources else {
                return Err(Error::InvalidState {
                    operation: "dump_core",
                    state: "stopped",
                });
            };
            let cannot = |what: String| Error::Dump(what);
            let cpus: Vec<CpuRegs> = self.saved_vcpus(cannot)?.iter().map(CpuRegs::of).collect();
            let ranges = crate::arch::x86_64::layout::ram_ranges(self.config.memory_bytes());
            let ram: Vec<RamRange> = ranges
                .iter()
                .zip(resources.ram.mappings())
                .map(|(&(gpa, _), mapping)| RamRange { gpa, mapping })
                .collect();
            // SAFETY: each mapping is live guest RAM, kept mapped and unwritten (the VM is
            // paused) while these slices are read.
            let views: Vec<&[u8]> = ram
                .iter()
                .map(|r| unsafe {
                    std::slice::from_raw_parts(r.mapping.addr as *const u8, r.mapping.len)
                })
                .collect();
            let vmcoreinfo = find_vmcoreinfo(&views);
            let out = crate::host_file::create_file("path", path)?;
            let base = self.memory_base.locked().clone();
            let written = write_core(
                &out,
                &ram,
                base.as_ref().map(|b| &*b.file),
                &cpus,
                vmcoreinfo.as_deref(),
            )
            .and_then(|n| out.sync_all().map(|()| n))
            .map_err(|e| cannot(format!("cannot write {}: {e}", path.display())))?;
            Ok(written)
        })
    }
}
