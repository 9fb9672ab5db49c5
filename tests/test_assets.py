"""Guest-asset helpers: the initramfs writer and the vmlinux extraction."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import struct
import subprocess

import pytest
from vmm_reference import assets
from vmm_reference.assets import AssetError, e2fsprogs_command, module_load_order
from vmm_reference.initramfs import build_initramfs
from vmm_reference.kernel_image import extract_vmlinux, lz4_legacy_decompress
from vmm_reference.pytest_plugin import skip_or_fail


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_initramfs_layout(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF fake busybox")
    out = build_initramfs(busybox, "#!/bin/sh\necho hi\n", tmp_path / "i.cpio.gz")
    entries = parse_newc(gzip.decompress(out.read_bytes()))
    assert entries["init"] == (0o100755, b"#!/bin/sh\necho hi\n")
    assert entries["bin/busybox"][1] == busybox.read_bytes()
    assert entries["dev/console"][0] == 0o020600
    assert entries["bin/sh"] == (0o120777, b"busybox")


def test_lz4_legacy_decoder_matches_the_tool(tmp_path, request):
    if not shutil.which("lz4"):
        skip_or_fail(request.config, "needs the lz4 tool to make test data (Debian: lz4)")
    data = (b"abcabcabc" * 1000 + bytes(range(256)) * 50 + b"z" * 70000) * 3
    src = tmp_path / "d"
    src.write_bytes(data)
    subprocess.run(["lz4", "-l", "-q", "-f", str(src), str(tmp_path / "d.lz4")], check=True)
    assert lz4_legacy_decompress((tmp_path / "d.lz4").read_bytes()) == data


def test_extract_vmlinux_from_a_gzip_bzimage(tmp_path):
    elf = b"\x7fELF" + bytes(5000)
    payload = gzip.compress(elf)
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    struct.pack_into("<II", setup, 0x248, 16, len(payload))
    image = tmp_path / "bzImage"
    image.write_bytes(bytes(setup) + bytes(16) + payload)
    assert extract_vmlinux(image) == elf
    with pytest.raises(ValueError, match="not a bzImage"):
        extract_vmlinux(elf_file(tmp_path))


def elf_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x7fELF" + bytes(600))
    return p


def test_guest_assets_are_bootable_files(guest_assets):
    assert guest_assets.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert guest_assets.bzimage.read_bytes()[0x202:0x206] == b"HdrS"
    assert (guest_assets.modules / "kernel").is_dir()
    entries = parse_newc(gzip.decompress(guest_assets.initrd.read_bytes()))
    assert b"VMM-REFERENCE-GUEST-READY" in entries["init"][1]
    assert b"switch_root" in entries["init"][1]


def test_initramfs_loads_the_virtio_modules_after_their_dependencies(guest_assets):
    entries = parse_newc(gzip.decompress(guest_assets.initrd.read_bytes()))

    def loaded(where: str) -> list[str]:
        return [name[len(where) + 1:].split("-", 1)[1] for name in sorted(entries)
                if name.startswith(f"{where}/") and name.endswith(".ko") and "/" not in name[len(where) + 1:]]

    base, blk, vsock = loaded("lib/vmm"), loaded("lib/vmm/virtio-2"), loaded("lib/vmm/virtio-19")
    for module in ("evdev.ko", "button.ko", "virtio_mmio.ko", "virtio_pci.ko"):
        assert module in base, base  # modules in Debian's cloud kernel, which every guest loads
    for first, then in (("virtio.ko", "virtio_mmio.ko"), ("virtio_ring.ko", "virtio_mmio.ko")):
        assert base.index(first) < base.index(then), base
    # A device's drivers are loaded only for a device of its kind, after what every guest loads.
    assert blk == ["virtio_blk.ko"], blk  # virtio and virtio_ring are in the base already
    assert "virtio_blk.ko" not in base and "vmw_vsock_virtio_transport.ko" not in base
    assert vsock.index("vsock.ko") < vsock.index("vmw_vsock_virtio_transport.ko"), vsock
    assert "virtio_net.ko" in loaded("lib/vmm/virtio-1") and "virtiofs.ko" in loaded("lib/vmm/virtio-26")
    for where, names in (("lib/vmm", base), ("lib/vmm/virtio-2", blk)):
        for name in names:
            assert entries[f"{where}/{names.index(name):02d}-{name}"][1][:4] == b"\x7fELF"


def test_rootfs_is_an_ext4_image_with_busybox_and_an_init(guest_assets, request):
    image = guest_assets.rootfs.read_bytes()
    assert len(image) == assets.ROOTFS_SIZE_MIB << 20
    assert image[1024 + 0x38:1024 + 0x3A] == b"\x53\xef"  # the ext2/3/4 superblock magic
    try:
        debugfs = e2fsprogs_command("debugfs")
    except AssetError as e:
        skip_or_fail(request.config, str(e))
        raise
    done = subprocess.run([*debugfs, "-R", "cat /sbin/init", str(guest_assets.rootfs)], capture_output=True, check=True)
    assert assets.ROOTFS_READY_MARKER.encode() in done.stdout
    done = subprocess.run([*debugfs, "-R", "stat /bin/mount", str(guest_assets.rootfs)], capture_output=True,
                          text=True, check=True)
    assert "Type: symlink" in done.stdout and '"/bin/busybox"' in done.stdout


def test_env_exports_the_rootfs(guest_assets, capsys):
    assert assets.main(["--env"]) == 0
    assert f"export VMM_ROOTFS={guest_assets.rootfs}" in capsys.readouterr().out.splitlines()


def fake_module(depends: str, softdep: str = "") -> bytes:
    """A 64-bit ELF file with just a .modinfo section, as a kernel module has."""
    info = b"license=GPL\0" + (f"softdep={softdep}\0".encode() if softdep else b"") + f"depends={depends}\0".encode()
    strtab = b"\0.modinfo\0.shstrtab\0"
    body_at = 64
    strtab_at = body_at + len(info)
    shoff = (strtab_at + len(strtab) + 7) & ~7
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0,
                                                             64, 3, 2)
    sections = bytes(64)
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, body_at, len(info), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, strtab_at, len(strtab), 0, 0, 1, 0)
    return (header + info + strtab).ljust(shoff, b"\0") + sections


def test_module_load_order_reads_dependencies_from_the_modules(tmp_path):
    release = tmp_path / "6.0-test"
    files = {
        "kernel/drivers/block/top.ko.xz": lzma.compress(fake_module("mid,base")),
        "kernel/drivers/mid.ko": fake_module("base", softdep="pre: early no-such-alias post: late"),
        "kernel/lib/base.ko": fake_module(""),
        "kernel/lib/early.ko": fake_module(""),
        "kernel/lib/late.ko": fake_module(""),
        "kernel/lib/other-thing.ko": fake_module("base,inside"),
    }
    for name, data in files.items():
        (release / name).parent.mkdir(parents=True, exist_ok=True)
        (release / name).write_bytes(data)
    (release / "modules.builtin").write_text("kernel/fs/inside.ko\n")
    order = module_load_order(release, ["top", "missing", "other_thing", "inside"])
    assert [p.relative_to(release).as_posix() for p in order] == [
        "kernel/lib/early.ko", "kernel/lib/base.ko", "kernel/drivers/mid.ko", "kernel/drivers/block/top.ko.xz",
        "kernel/lib/other-thing.ko",
    ]
    assert assets._module_bytes(order[3]) == fake_module("mid,base")
    (release / "kernel/lib/base.ko").unlink()
    with pytest.raises(AssetError, match="mid depends on base"):
        module_load_order(release, ["top"])


def test_e2fsprogs_command_prefers_the_hosts_tool(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "mkfs.ext4"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert e2fsprogs_command("mkfs.ext4", tmp_path / "cache") == [str(tool)]


def test_e2fsprogs_command_offline_uses_the_cache_copy_or_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(assets.rootfs, "_find_tool", lambda tool: None)
    monkeypatch.setenv("VMM_REFERENCE_OFFLINE", "1")
    with pytest.raises(AssetError, match="install e2fsprogs"):
        e2fsprogs_command("debugfs", tmp_path)
    tree = tmp_path / "e2fsprogs_1.0"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin" / "debugfs").write_bytes(b"")
    (tree / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (tree / "lib" / "x86_64-linux-gnu" / "libext2fs.so.2").write_bytes(b"")
    (tree / ".complete").touch()
    assert e2fsprogs_command("debugfs", tmp_path) == [
        "env", f"LD_LIBRARY_PATH={tree / 'lib' / 'x86_64-linux-gnu'}", str(tree / "sbin" / "debugfs")]


def test_cache_list_verify_and_clear(tmp_path):
    entry = tmp_path / "linux-image-x_1"
    (entry / "boot").mkdir(parents=True)
    (entry / ".complete").touch()
    vmlinux, bz = entry / "vmlinux", entry / "boot" / "vmlinuz-x"
    vmlinux.write_bytes(b"\x7fELF" + bytes(1000))
    bz.write_bytes(b"bz" * 100)
    assets._record(entry, [vmlinux, bz])
    (tmp_path / "partial_2").mkdir()
    assert assets.listing(tmp_path) == [("linux-image-x_1", 1004 + 200 + (entry / "SHA256SUMS").stat().st_size, True),
                                        ("partial_2", 0, False)]
    assert assets.verify(tmp_path) == []
    vmlinux.write_bytes(b"\x7fELF" + bytes(999) + b"!")  # one byte changed
    bz.unlink()
    problems = assets.verify(tmp_path)
    assert problems == [f"{bz}: missing", f"{vmlinux}: sha256 differs from the one recorded when it was built"]
    assert assets.main(["verify", "--cache-dir", str(tmp_path)]) == 1
    assert assets.clear(tmp_path) > 0
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    assert assets.main(["verify", "--cache-dir", str(tmp_path)]) == 0


def test_initramfs_and_rootfs_carry_and_start_the_guest_agent(guest_assets, request):
    entries = parse_newc(gzip.decompress(guest_assets.initrd.read_bytes()))
    assert entries["sbin/vmm-agent"] == (0o100755, guest_assets.agent.read_bytes())
    # The vsock drivers, loaded when the transports found a vsock device (virtio ID 19), in order.
    vsock = [name.rsplit("/", 1)[1].split("-", 1)[1] for name in sorted(entries)
             if name.startswith("lib/vmm/virtio-19/") and name.endswith(".ko")]
    assert vsock == ["vsock.ko", "vmw_vsock_virtio_transport_common.ko", "vmw_vsock_virtio_transport.ko"], vsock
    assert "virtio-$id/*.ko" in entries["init"][1].decode()
    for init in (entries["init"][1].decode(), assets._ROOTFS_INIT):
        assert init.index("/sbin/vmm-agent") < init.index("READY")
    try:
        debugfs = e2fsprogs_command("debugfs")
    except AssetError as e:
        skip_or_fail(request.config, str(e))
        raise
    done = subprocess.run([*debugfs, "-R", "cat /sbin/vmm-agent", str(guest_assets.rootfs)], capture_output=True,
                          check=True)
    assert done.stdout == guest_assets.agent.read_bytes()


def test_assets_agent_prints_the_agent_path(guest_assets, capsys):
    assert assets.main(["agent"]) == 0
    assert capsys.readouterr().out.strip() == str(guest_assets.agent)
