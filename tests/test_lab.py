"""The nested-KVM lab's console cleaning and the environment its command gets (no lab boot here:
the full-boot tests run in it)."""

from __future__ import annotations

from vmm_reference import lab
from vmm_reference.assets import cache_dir


def read_newc(data: bytes) -> dict[str, bytes]:
    """The files of a newc cpio archive."""
    files, at = {}, 0
    while data[at:at + 6] == b"070701":
        fields = [int(data[at + 6 + 8 * i: at + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name_end = at + 110 + namesize
        name = data[at + 110:name_end - 1].decode()
        body = (name_end + 3) & ~3
        files[name] = data[body:body + size]
        at = (body + size + 3) & ~3
        if name == "TRAILER!!!":
            break
    return files


def test_boot_noise_is_dropped_and_the_rest_kept():
    assert lab._clean_boot_line("qemu-system-x86_64: warning: TCG doesn't support requested feature: "
                                "CPUID.0DH:EAX.xsavec [bit 1]\n") is None
    assert lab._clean_boot_line("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\n") is None
    assert lab._clean_boot_line("Booting from ROM..\x1bc\x1b[?7l\x1b[2JLAB: /dev/kvm ready\n") == \
        "LAB: /dev/kvm ready\n"
    assert lab._clean_boot_line("[    1.000000] a kernel line\n") == "[    1.000000] a kernel line\n"


def test_the_command_finds_the_host_asset_cache_offline(tmp_path):
    from vmm_reference.assets import fetch_lab

    out = tmp_path / "lab.cpio"
    lab._initramfs(fetch_lab(), "true", "/", out)
    files = read_newc(out.read_bytes())
    assert files["cache"].decode() == str(cache_dir().resolve())
    assert b'VMM_REFERENCE_OFFLINE=1 VMM_REFERENCE_CACHE="$(cat /cache)"' in files["init"]
