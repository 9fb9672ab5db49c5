//! gdb's `monitor` commands: what the target description leaves out. gdb's x86-64 registers
//! are the general, segment and vector ones; a kernel developer also wants the control
//! registers, EFER and the descriptor tables (`monitor sregs`), for every vCPU at once.

use gdbstub::outputln;
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd};

use super::target::VmTarget;

const HELP: &str = "monitor sregs: every vCPU's control registers, EFER, segment bases and \
descriptor tables\nmonitor help: this";

impl MonitorCmd for VmTarget {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), String> {
        match cmd.trim_ascii() {
            b"sregs" => {
                for id in self.ids.clone() {
                    match self.regs(id) {
                        Ok((_, s)) => {
                            outputln!(
                                out,
                                "vCPU {id}: cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} cr8={:#x} efer={:#x} apic_base={:#x}",
                                s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base
                            );
                            outputln!(
                                out,
                                "  fs_base={:#x} gs_base={:#x} gdt={:#x}/{:#x} idt={:#x}/{:#x} tr={:#x} ldt={:#x}",
                                s.fs.base, s.gs.base, s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit,
                                s.tr.selector, s.ldt.selector
                            );
                        }
                        Err(e) => outputln!(out, "vCPU {id}: {e}"),
                    }
                }
            }
            b"help" | b"" => outputln!(out, "{HELP}"),
            other => {
                outputln!(
                    out,
                    "unknown monitor command {:?}",
                    String::from_utf8_lossy(other)
                );
                outputln!(out, "{HELP}");
            }
        }
        Ok(())
    }
}
