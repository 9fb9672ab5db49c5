"""virtio-9p, driven by the probe guest's own 9P2000.L client (``probe.p9=...``, tests/guest/p9.c).

The host side is ``Vm(shares=[Share(path, tag=..., read_only=..., protocol="9p")])``, on the
same tree the virtio-fs probe test shares (``hello.txt``, ``dir/inner.txt``, ``big.bin``, the
symlinks ``escape`` to ``/etc`` and ``up`` to ``../outside-secret``, and beside the share,
outside it, ``outside-secret``). ``probe.p9=test`` reads (big.bin in zero-copy-shaped Treads),
lists, writes (``probe.p9_rw=1``) or is refused (a read-only share), tries every way out of the
share, sends hostile requests and takes open files and fids until the device refuses; every
answer is a ``PROBE: p9 ...`` line (the formats are in p9.c's header comment), and the host's
tree is compared before and after. Every wait in the probe is bounded.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from conftest import fnv1a64
from share_probe import (
    BIG,
    EBADF,
    EINVAL,
    ELOOP,
    EMFILE,
    ENFILE,
    ENOENT,
    EOPNOTSUPP,
    EROFS,
    F_VERSION_1,
    HELLO,
    IN_NAMES,
    INNER,
    LIVE,
    NEEDS_RESET,
    WRITTEN,
    Report,
    Run,
    parse_report,
    probe_run,
)
from vmm_reference import Share, Vm, VmConfigError
from vmm_reference.host import detect_kvm_kind
from vmm_reference.pytest_plugin import skip_or_fail

TAG = "probe-9p"
MOUNT_TAG = 1  # VIRTIO_9P_MOUNT_TAG
MAX_OPEN, MAX_FIDS = 16384, 32768
BAD_ANSWERED = ("size_too_big", "size_too_small", "unknown_type", "short_body", "walk_too_long", "bad_string")
BAD_OUTSIDE = ("outside_ram", "outside_ram_reply")


def parse_p9(log: str) -> Report:
    """The ``PROBE: p9 ...`` lines (formats in p9.c's header comment)."""
    return parse_report(log, "p9")


@pytest.fixture(scope="module", params=["rw", "ro"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, probe_elf: Path) -> Run:
    """``probe.p9=test`` on a read-write share (``probe.p9_rw=1``) or a read-only one."""
    if detect_kvm_kind() == "none":
        skip_or_fail(request.config, "/dev/kvm is not available (missing, or no read/write access)")
    root = tmp_path_factory.mktemp(f"p9-{request.param}")
    return probe_run(root, probe_elf, "p9", TAG, request.param == "rw", "9p", 600)


def test_device_version_attach_and_clean_end(run):
    """The probe found the share's device where boot_info says, with its tag (offered with
    VIRTIO_9P_MOUNT_TAG); Tversion agreed on 9P2000.L and the probe's msize, Tattach gave the
    root directory, and every request was answered in time and by the protocol."""
    r, log = run.report, run.log
    assert run.reason == "reset", log
    assert r.failed == [] and r.timeouts == [] and r.malformed == [], log
    p9_devices = [(i, d) for i, d in enumerate(run.devices) if d.kind == "virtio-9p"]
    assert len(p9_devices) == 1 and len(r.devs) == 1, (run.devices, log)
    (index, dev), found = p9_devices[0], r.devs[0]
    assert (found["dev"], found["base"], found["gsi"]) == (index, dev.mmio_base, dev.gsi), log
    assert found["tag"] == TAG, found
    assert found["features"] & F_VERSION_1 and found["features"] & MOUNT_TAG, found
    assert found["status"] == LIVE and 4 <= found["queue_size"] <= 128, found
    assert r.lines["version"] == {"error": 0, "msize": 131072, "version": "9P2000.L"}, log
    assert r.lines["attach"] == {"error": 0, "qid_type": 0x80}, log
    assert r.done, log


def test_reads_and_readdir(run):
    """Twalk, Tgetattr, Tlopen, Tread and Tclunk of small files; big.bin in 64 KiB Treads whose
    replies are split like Linux's zero-copy ones hashes as on the host; Treaddir in small
    pieces lists the root."""
    r, log = run.report, run.log
    g = r.named["getattr"]["hello.txt"]
    assert g["error"] == 0 and g["size"] == len(HELLO) and stat.S_ISREG(g["mode"]), g
    for name, content in (("hello.txt", HELLO), ("dir/inner.txt", INNER)):
        read = r.reads.get(name)
        assert read, f"{name}: {log}"
        assert (read["error"], read["len"], read.get("data")) == (0, len(content), content), read
    big = r.lines["bigread"]
    assert big["error"] == 0 and big["bytes"] == len(BIG), big
    assert big["fnv"] == fnv1a64(BIG), f"big.bin read back different: {big}"
    assert big["reads"] == len(BIG) // 65536 + 2, big  # 16 full, the last 123 bytes, an empty one
    listing = r.lines["readdir"]
    names = listing["names"].split(",")
    assert listing["error"] == 0 and listing["count"] == len(names), listing
    assert IN_NAMES | {".", ".."} == set(names), names


def test_changes_only_where_allowed(run):
    """Read-write: the new file (written in the zero-copy layout) is on the host, moved into
    its new directory, and hl is a hard link to hello.txt; nothing else changed. Read-only:
    every change is refused with EROFS by the host and the tree is as it was."""
    r, log = run.report, run.log
    if run.rw:
        assert r.lines["create"]["error"] == 0, log
        assert r.lines["write"] == {"error": 0, "count": len(WRITTEN), "clunk": 0}, log
        for step in ("mkdir", "rename", "link"):
            assert r.lines[step]["error"] == 0, (step, log)
        assert "ro" not in r.lines, log
        assert (run.share / "newdir" / "moved.txt").read_bytes() == WRITTEN
        assert not (run.share / "new.txt").exists()
        assert (run.share / "hl").samefile(run.share / "hello.txt")
        new = {k: v for k, v in run.after.items() if k not in run.before}
        assert set(new) == {"newdir", "newdir/moved.txt", "hl"}, new
        unchanged = {k for k in run.before if k != "hello.txt"}
        assert {k: run.after.get(k) for k in unchanged} == {k: run.before[k] for k in unchanged}
        assert run.after["hello.txt"][3] == HELLO
    else:
        ro = r.lines["ro"]
        assert (ro["create"], ro["mkdir"], ro["unlink"], ro["open_wr"]) == (-EROFS,) * 4, ro
        assert not {"create", "write", "mkdir", "rename", "link"} & set(r.lines), log
        assert run.after == run.before


def test_no_way_out_of_the_share(run):
    """`..` from the root (the root again), `..` chains, a name with a '/', both symlinks
    (walked through, opened), a foreign fid, a rename to a name with a '/', a link the guest
    made: nothing outside the share is reached, read or changed."""
    r, log = run.report, run.log
    e = r.escape
    cases = ["dotdot", "dotdot_secret", "dotdot_chain", "slash_name", "abs_symlink_walk", "abs_symlink_open",
             "rel_symlink_open", "readlink", "bad_fid", "rename_out"] + (["symlink_made"] if run.rw else [])
    missing = [c for c in cases if c not in e]
    assert not missing, f"{missing}: {log}"
    assert e["dotdot"]["error"] == 0 and e["dotdot"]["same_as_root"] == 1, e["dotdot"]
    assert e["dotdot_secret"]["error"] == -ENOENT and e["dotdot_secret"]["nwqid"] == 1, e["dotdot_secret"]
    assert e["dotdot_chain"]["error"] == -ENOENT and e["dotdot_chain"]["nwqid"] == 4, e["dotdot_chain"]
    assert e["slash_name"]["error"] == -EINVAL, e["slash_name"]
    assert e["abs_symlink_walk"]["nwqid"] == 1 and e["abs_symlink_walk"]["error"] < 0, e["abs_symlink_walk"]
    for case in ("abs_symlink_open", "rel_symlink_open") + (("symlink_made",) if run.rw else ()):
        assert e[case]["error"] == -ELOOP and "data" not in e[case], e[case]
    assert e["readlink"] == {"case": "readlink", "error": 0, "nwqid": 0, "data": b"../outside-secret"}, e
    assert e["bad_fid"]["error"] == -EBADF, e["bad_fid"]
    assert e["rename_out"]["error"] == (-EINVAL if run.rw else -EROFS), e["rename_out"]
    assert run.secret.strip() not in log.encode("latin-1"), "the secret outside the share reached the guest"
    assert (run.root / "outside-secret").read_bytes() == run.secret
    assert run.outside_after == run.outside_before == ["outside-secret", "share"]


def test_hostile_requests_and_exhaustion(run):
    """Malformed requests get an Rlerror and leave the device live; a chain with nowhere to
    answer goes back unused; open files and fids are capped where the device says, all come
    back with Tclunk, and the device serves on."""
    r, log = run.report, run.log
    for case in BAD_ANSWERED + BAD_OUTSIDE + ("no_reply_buf",):
        b = r.bad.get(case)
        assert b, f"{case}: {log}"
        if case in BAD_OUTSIDE and b["dev_status"] & NEEDS_RESET:
            continue  # the device may ask for a reset; the probe set it up again
        assert b["used"] == 1 and b["dev_status"] == LIVE, f"{case}: {b}"
        if case in BAD_ANSWERED:
            assert b["len"] == 11 and b.get("error", 0) < 0, f"{case}: {b}"
    assert r.bad["no_reply_buf"]["len"] == 0, r.bad["no_reply_buf"]
    assert r.bad["unknown_type"]["error"] == -EOPNOTSUPP, r.bad["unknown_type"]
    for case in ("size_too_big", "size_too_small", "short_body", "walk_too_long", "bad_string"):
        assert r.bad[case]["error"] == -EINVAL, r.bad[case]
    assert all(x["error"] == 0 for x in r.reinits), r.reinits
    opened = r.bad["open_exhaustion"]
    assert opened["opened"] == MAX_OPEN and opened["error"] in (-EMFILE, -ENFILE), opened
    fids = r.bad["fid_exhaustion"]
    assert fids["error"] == -EMFILE and 0 < fids["fids"] < MAX_FIDS, fids
    assert r.bad["after_exhaustion"] == {"case": "after_exhaustion", "error": 0, "clunk_errors": 0}, log


def test_two_shares_of_both_protocols(vm_factory, probe_elf, tmp_path):
    """A 9p share and a virtio-fs share are two devices of their own kinds, each with its tag
    (``probe.p9=list`` and ``probe.fs=list``)."""
    for i in range(3):
        (tmp_path / f"s{i}").mkdir()
    shares = [Share(tmp_path / "s0", tag="nine", protocol="9p"),
              Share(tmp_path / "s1", tag="fuse"),
              Share(tmp_path / "s2", tag="nine-too", read_only=True, protocol="9p")]
    vm = vm_factory(kernel=probe_elf, cmdline="probe.p9=list probe.fs=list", shares=shares, transport="mmio")
    vm.start()
    status = vm.wait(timeout=120)
    log = vm.console_log
    assert status.reason == "reset", log
    p9, fs = parse_p9(log), parse_report(log, "fs")
    assert p9.failed == [] and fs.failed == [], log
    assert [d["tag"] for d in p9.devs] == ["nine", "nine-too"], log
    assert [d["tag"] for d in fs.devs] == ["fuse"], log
    kinds = [d.kind for d in vm.boot_info.devices if d.kind in ("virtio-9p", "virtio-fs")]
    assert kinds == ["virtio-9p", "virtio-fs", "virtio-9p"], kinds


def test_no_9p_share_no_device(vm_factory, probe_elf, tmp_path):
    """A virtio-fs share is no 9p device: the probe finds none."""
    vm = vm_factory(kernel=probe_elf, cmdline="probe.p9=test", transport="mmio",
                    shares=[Share(tmp_path, tag="fuse-only")])
    vm.start()
    status = vm.wait(timeout=60)
    log = vm.console_log
    assert status.reason == "reset", log
    assert parse_p9(log).failed == ["no-device"], log


def test_a_protocol_not_known_is_refused(probe_elf, tmp_path):
    """An unknown protocol is a VmConfigError naming shares[i].protocol and the accepted names
    (checked by the VMM, like every other argument)."""
    with pytest.raises(VmConfigError) as e:
        Vm(kernel=probe_elf, shares=[Share(tmp_path, tag="a"), Share(tmp_path, tag="b", protocol="nfs")])
    assert str(e.value) == 'invalid shares[1].protocol="nfs": expected "virtiofs" or "9p"'
    assert e.value.argument == "shares[1].protocol" and e.value.value == '"nfs"'
