"""``python -m vmm_reference.assets``: fetch, list, verify or clear the cache."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from typing import Optional

from .agent import build_agent
from .cache import clear, listing, verify
from .common import AssetError, cache_dir
from .fetch import fetch_guest, fetch_lab


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: fetch the assets and print their paths (``--json`` for machines)."""
    parser = argparse.ArgumentParser(
        prog="python -m vmm_reference.assets",
        description="Fetch Debian's cloud kernel and busybox into the cache and build a bootable initramfs "
                    "and an ext4 root filesystem image; or list, verify or clear the cache.",
    )
    parser.add_argument("action", nargs="?", default="fetch", choices=["fetch", "agent", "list", "verify", "clear"],
                        help="fetch (the default) and print the paths; agent: build the guest agent and print "
                             "its path; list the cache's entries; verify the built files' sha256 against their "
                             "manifests; clear the cache")
    parser.add_argument("--cache-dir", help="cache directory (default: $VMM_REFERENCE_CACHE or "
                        "~/.cache/vmm-reference)")
    parser.add_argument("--lab", action="store_true", help="also fetch the nested-KVM lab's generic kernel")
    parser.add_argument("--json", action="store_true", help="print the paths as JSON")
    parser.add_argument("--env", action="store_true",
                        help="print shell exports (VMM_VMLINUX, VMM_BZIMAGE, VMM_INITRD, VMM_ROOTFS) for eval")
    args = parser.parse_args(argv)
    if args.action == "list":
        print(f"{cache_dir(args.cache_dir)}:")
        for name, size, complete in listing(args.cache_dir):
            print(f"  {name}  {size / (1 << 20):.1f} MiB{'' if complete else '  (incomplete)'}")
        return 0
    if args.action == "verify":
        problems = verify(args.cache_dir)
        for problem in problems:
            print(f"vmm_reference.assets: {problem}", file=sys.stderr)
        print("ok" if not problems else f"{len(problems)} problem(s); `clear` and fetch again")
        return 1 if problems else 0
    if args.action == "clear":
        print(f"freed {clear(args.cache_dir) / (1 << 20):.1f} MiB from {cache_dir(args.cache_dir)}")
        return 0
    if args.action == "agent":
        try:
            print(build_agent(args.cache_dir))
        except AssetError as e:
            print(f"vmm_reference.assets: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        result: dict[str, object] = {"guest": asdict(fetch_guest(args.cache_dir))}
        if args.lab:
            result["lab"] = asdict(fetch_lab(args.cache_dir))
    except AssetError as e:
        print(f"vmm_reference.assets: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, default=str, indent=2))
    elif args.env:
        guest = result["guest"]
        assert isinstance(guest, dict)
        for name, key in (("VMM_VMLINUX", "vmlinux"), ("VMM_BZIMAGE", "bzimage"), ("VMM_INITRD", "initrd"),
                          ("VMM_ROOTFS", "rootfs")):
            print(f"export {name}={shlex.quote(str(guest[key]))}")
    else:
        for group, values in result.items():
            assert isinstance(values, dict)
            for key, value in values.items():
                print(f"{group}.{key}={value}")
    return 0
