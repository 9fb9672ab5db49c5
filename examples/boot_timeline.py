"""Boot the Debian guest and draw its timeline (how docs/boot-timeline.png is made).

    python examples/boot_timeline.py out.png          # boot here (hardware KVM), draw
    python examples/boot_timeline.py --json           # boot here, print the timeline as JSON
    python examples/boot_timeline.py --from LOG out.png   # draw the JSON line found in LOG

On a PVM host the Debian kernel cannot boot to userspace: boot it in the nested-KVM lab and
draw on the host from what the lab printed (the lab sees the host read-only)::

    python -m vmm_reference.lab 'cd REPO && .venv/bin/python examples/boot_timeline.py --json
        --where "nested-KVM lab, emulated"' > lab.log   # one command line
    python examples/boot_timeline.py --from lab.log docs/boot-timeline.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vmm_reference import Vm
from vmm_reference.assets import fetch_guest
from vmm_reference.timeline import Timeline

PREFIX = "TIMELINE-JSON "


def boot(where: str) -> Timeline:
    """Boot the Debian guest to its agent, write a boot marker from its shell, power it off."""
    guest = fetch_guest()
    with Vm(memory_mib=256, kernel=guest.vmlinux, initrd=guest.initrd, vsock=True) as vm:
        vm.start()
        vm.wait_ready(timeout=300)
        vm.run("devmem 0xd0001000 8 42", check=True, timeout=60)
        vm.stop(timeout=60)
        title = f"Debian's cloud kernel {guest.modules.name}: boot to the guest agent, a marker, poweroff"
        return vm.timeline(title=title + (f" ({where})" if where else ""))


def main() -> None:
    """Parse the arguments and do it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", nargs="?", help="write the picture here")
    parser.add_argument("--json", action="store_true", help=f"print the timeline as one line: {PREFIX!r} + JSON")
    parser.add_argument("--from", dest="log", help="draw the timeline printed in this log instead of booting")
    parser.add_argument("--where", default="", help="where it ran, for the title")
    args = parser.parse_args()
    if args.log:
        line = next(line for line in Path(args.log).read_text(errors="replace").splitlines() if PREFIX in line)
        timeline = Timeline.from_dict(json.loads(line.split(PREFIX, 1)[1].strip()))
    else:
        timeline = boot(args.where)
    if args.json:
        print(PREFIX + json.dumps(timeline.to_dict(), separators=(",", ":")), flush=True)
    print(timeline)
    if args.png:
        png = timeline.png(dpi=90)
        if png is None:
            raise SystemExit("drawing needs matplotlib (pip install matplotlib)")
        Path(args.png).write_bytes(png)
        print(f"{args.png}: {len(png)} bytes")


if __name__ == "__main__":
    main()
