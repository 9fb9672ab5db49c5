"""The ext4 root filesystem image, made with e2fsprogs' ``mkfs.ext4 -d`` (the host's or Debian's)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Union

from .cache import _cache_lock
from .common import AssetError, _offline, _run, _safe, _say, cache_dir
from .debian import _download, _version
from .scripts import _POWER_BUTTON_SCRIPT, _ROOTFS_INIT

#: Size of the root filesystem image (about 23 MiB of it free).
ROOTFS_SIZE_MIB = 32


def _rootfs(base: Path, busybox: Path, agent: Path) -> Path:
    """Build (once) the ext4 root filesystem image beside ``busybox``; return its path.

    Keyed like the initramfs: by busybox's version (its directory) and a hash of the recipe
    (the image's /sbin/init, the power-button script, the agent's build and the size).
    """
    recipe = hashlib.sha256(_ROOTFS_INIT.encode() + _POWER_BUTTON_SCRIPT.encode() + agent.parent.name.encode()
                            + str(ROOTFS_SIZE_MIB).encode()).hexdigest()[:12]
    image = busybox.parent / f"rootfs-{recipe}.ext4"
    if image.exists():
        return image
    mkfs = _e2fsprogs(base, "mkfs.ext4")
    listed = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
    if listed.returncode != 0 or not listed.stdout.strip():
        raise AssetError(f"`{busybox} --list-full` failed: {listed.stderr.strip()}")
    _say(f"building {image.name} (mkfs.ext4 -d)")
    with tempfile.TemporaryDirectory(dir=busybox.parent) as tmp:
        tree = Path(tmp) / "root"
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "mnt",
                  "var", "lib", "etc/acpi/PWRF"]:
            (tree / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(busybox, tree / "bin" / "busybox")
        (tree / "bin" / "busybox").chmod(0o755)
        for applet in listed.stdout.split():
            link = tree / applet
            if applet in ("sbin/init", "linuxrc") or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
        for path, text in (("sbin/init", _ROOTFS_INIT), ("etc/acpi/PWRF/00000080", _POWER_BUTTON_SCRIPT)):
            (tree / path).write_text(text)
            (tree / path).chmod(0o755)
        (tree / "etc" / "hostname").write_text("vmm-reference\n")
        shutil.copyfile(agent, tree / "sbin" / "vmm-agent")
        (tree / "sbin" / "vmm-agent").chmod(0o755)
        (tree / "var" / "run").symlink_to("../run")
        partial = Path(tmp) / image.name
        _run([*mkfs, "-q", "-t", "ext4", "-L", "rootfs", "-d", str(tree), "-F", str(partial), f"{ROOTFS_SIZE_MIB}M"])
        partial.replace(image)
    return image


def _find_tool(tool: str) -> Optional[str]:
    """Find the host's ``tool`` on ``$PATH`` or in /usr/sbin and /sbin (not on a user's PATH on Debian)."""
    return shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))


def _e2fsprogs_tree(base: Path) -> Optional[Path]:
    """Return the newest e2fsprogs unpacked in the cache, if any."""
    trees = sorted(base.glob("e2fsprogs_*/.complete"), key=lambda p: p.stat().st_mtime)
    return trees[-1].parent if trees else None


def _e2fsprogs_download(base: Path) -> Path:
    """Download e2fsprogs and the libraries it links (not libc) and unpack them into one directory."""
    version = _version("e2fsprogs")
    tree = base / f"e2fsprogs_{_safe(version)}"
    if (tree / ".complete").exists():
        return tree
    deps = re.findall(r"^\s*\|?(?:Pre)?Depends: (lib[\w.+-]+)$", _run(["apt-cache", "depends", "e2fsprogs"]), re.M)
    packages = ["e2fsprogs", *dict.fromkeys(d for d in deps if not d.startswith("libc6"))]
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        _say(f"downloading and unpacking {' '.join(packages)} (apt-get download): no mkfs.ext4 on this host")
        unpacked = _download(packages, Path(tmp))
        merged = Path(tmp) / "merged"
        for directory in unpacked.values():
            shutil.copytree(directory, merged, symlinks=True, dirs_exist_ok=True)
        if tree.exists():
            shutil.rmtree(tree)
        merged.rename(tree)
    (tree / ".complete").touch()
    return tree


def _e2fsprogs(base: Path, tool: str, download: bool = True) -> list[str]:
    """Return the command that runs e2fsprogs' ``tool``: the host's, else the cache's (downloaded if allowed)."""
    found = _find_tool(tool)
    if found:
        return [found]
    tree = _e2fsprogs_tree(base)
    if tree is None:
        if not download:
            raise AssetError(f"no {tool} on this host and no e2fsprogs in {base}: install e2fsprogs, or run "
                             "`python -m vmm_reference.assets` (it unpacks Debian's e2fsprogs into the cache)")
        tree = _e2fsprogs_download(base)
    binaries = [tree / d / tool for d in ("sbin", "usr/sbin", "bin", "usr/bin") if (tree / d / tool).exists()]
    if not binaries:
        raise AssetError(f"e2fsprogs in {tree} has no {tool}")
    libs = sorted({str(p.parent) for p in tree.rglob("*.so*")})
    env = [f"LD_LIBRARY_PATH={os.pathsep.join(libs)}"]
    if (tree / "etc" / "mke2fs.conf").exists():
        env.append(f"MKE2FS_CONFIG={tree / 'etc' / 'mke2fs.conf'}")
    return ["env", *env, str(binaries[0])]


def e2fsprogs_command(tool: str, cache: Optional[Union[str, Path]] = None) -> list[str]:
    """Return the command (a list to extend with arguments) that runs e2fsprogs' ``tool`` here.

    ``tool`` is ``mkfs.ext4``, ``debugfs``, ``e2fsck`` and so on. The host's own is used when
    it is installed (also from /usr/sbin when that is not on ``$PATH``); otherwise the copy
    of Debian's e2fsprogs package the asset cache holds, fetched with ``apt-get download``
    unless ``VMM_REFERENCE_OFFLINE`` is set. No root is needed: for example
    ``subprocess.run([*e2fsprogs_command("mkfs.ext4"), "-d", "tree/", "disk.img", "64M"])``
    makes an ext4 image holding ``tree/``.
    """
    if _find_tool(tool) or _offline():
        return _e2fsprogs(cache_dir(cache), tool, download=False)
    with _cache_lock(cache):
        return _e2fsprogs(cache_dir(cache), tool)
