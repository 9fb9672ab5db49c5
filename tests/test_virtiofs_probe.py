"""virtio-fs, driven by the probe guest's own FUSE client (``probe.fs=...``, tests/guest/fs.c).

The host side is ``Vm(shares=[Share(path, tag=..., read_only=...)])``. Each run builds a tree
in a fresh directory: the share (``hello.txt``, ``dir/inner.txt``, ``big.bin``, a symlink
``escape`` to ``/etc`` and ``up`` to ``../outside-secret``) and, beside it, outside the share,
``outside-secret``. ``probe.fs=test`` then reads, lists, writes (``probe.fs_rw=1``) or is
refused (a read-only share), tries every way out of the share it can think of, sends hostile
requests, opens handles until the device refuses, and forgets 1000 lookups at once; every
answer is a ``PROBE: fs ...`` line (the formats are in fs.c's header comment). Every wait in the
probe is bounded (``PROBE: fs timeout <where>``), so a device that does not answer fails a
test instead of hanging it. ``probe.fs=list`` reports every virtio-fs device's tag.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from conftest import fnv1a64
from share_probe import (
    BIG,
    EMFILE,
    ENFILE,
    ENOSYS,
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
from vmm_reference import Share
from vmm_reference.host import detect_kvm_kind
from vmm_reference.pytest_plugin import skip_or_fail

TAG = "probe-share"
ROOT_NODE = 1
EXHAUST_MAX = 70000
ESCAPES = ("dotdot", "slash_name", "abs_symlink_open", "readlink", "rel_symlink_open", "dotdot_chain",
           "bad_nodeid", "zero_nodeid", "bad_fh", "rename_bad_dir")
# Hostile chains the device must answer (used, with an error or nothing written) and stay live.
BAD_ANSWERED = ("len_too_big", "len_too_small", "no_reply_buf", "unknown_opcode", "unterminated_name")
# Chains with a descriptor outside guest RAM: answered, or the device asks for a reset.
BAD_OUTSIDE = ("outside_ram", "outside_ram_reply")


def parse_fs(log: str) -> Report:
    """The ``PROBE: fs ...`` lines (formats in fs.c's header comment)."""
    return parse_report(log, "fs")


@pytest.fixture(scope="module", params=["rw", "ro"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, probe_elf: Path) -> Run:
    """``probe.fs=test`` on a read-write share (``probe.fs_rw=1``) or a read-only one."""
    if detect_kvm_kind() == "none":
        skip_or_fail(request.config, "/dev/kvm is not available (missing, or no read/write access)")
    root = tmp_path_factory.mktemp(f"fs-{request.param}")
    return probe_run(root, probe_elf, "fs", TAG, request.param == "rw", "virtiofs", 300)


def test_device_init_and_clean_end(run):
    """The probe found the share's device where boot_info says, with its tag and one request
    queue; INIT, every request and DESTROY were answered in time and by the protocol."""
    r, log = run.report, run.log
    assert run.reason == "reset", log
    assert r.failed == [] and r.timeouts == [] and r.malformed == [], log
    fs_devices = [(i, d) for i, d in enumerate(run.devices) if d.kind == "virtio-fs"]
    assert len(fs_devices) == 1 and len(r.devs) == 1, (run.devices, log)
    (index, dev), found = fs_devices[0], r.devs[0]
    assert (found["dev"], found["base"], found["gsi"]) == (index, dev.mmio_base, dev.gsi), log
    assert found["tag"] == TAG and found["num_queues"] == 1, found
    assert found["features"] & F_VERSION_1 and found["status"] == LIVE, found
    assert found["hiprio_size"] >= 1 and 4 <= found["queue_size"] <= 256, found
    init = r.lines["init"]
    assert init["error"] == 0 and init["major"] == 7 and 1 <= init["minor"] <= 31, init
    assert init["max_write"] >= 4096, init
    assert r.lines["destroy"]["error"] == 0, log
    assert r.done, log


def test_reads_and_readdir(run):
    """LOOKUP, GETATTR, OPEN, READ and RELEASE of small files; big.bin in 128 KiB READs (some
    with the reply over three descriptors) hashes as on the host; the root lists its entries."""
    r, log = run.report, run.log
    lookup = r.lines["lookup"]
    assert lookup["error"] == 0 and lookup["nodeid"] > ROOT_NODE, lookup
    assert lookup["size"] == len(HELLO) and stat.S_ISREG(lookup["mode"]), lookup
    assert r.lines["getattr"]["error"] == 0 and r.lines["getattr"]["size"] == len(HELLO), log
    for name, content in (("hello.txt", HELLO), ("dir/inner.txt", INNER)):
        read = r.reads.get(name)
        assert read, f"{name}: {log}"
        assert (read["error"], read["len"], read.get("data")) == (0, len(content), content), read
        assert r.releases[name]["error"] == 0, log
    big = r.lines["bigread"]
    assert big["error"] == 0 and big["bytes"] == len(BIG), big
    assert big["fnv"] == fnv1a64(BIG), f"big.bin read back different: {big}"
    assert big["reads"] >= 9, big  # 8 full READs, the last 123 bytes, an empty one at the end
    listing = r.lines["readdir"]
    names = listing["names"].split(",")
    assert listing["error"] == 0 and listing["count"] == len(names), listing
    assert IN_NAMES <= set(names), names
    assert set(names) <= IN_NAMES | {".", ".."}, names


def test_changes_only_where_allowed(run):
    """Read-write: the guest's new file is on the host, moved into its new directory, and the
    hard link is a link to hello.txt; nothing else changed. Read-only: every change is refused
    with EROFS by the host and the tree is as it was."""
    r, log = run.report, run.log
    if run.rw:
        assert r.lines["create"]["error"] == 0, log
        assert r.lines["write"] == {"error": 0, "size": len(WRITTEN), "release": 0}, log
        assert r.lines["mkdir"]["error"] == 0 and r.lines["rename"]["error"] == 0, log
        assert "ro" not in r.lines, log
        assert (run.share / "newdir" / "moved.txt").read_bytes() == WRITTEN
        assert not (run.share / "new.txt").exists()
        assert (run.share / "newdir").is_dir() and not (run.share / "newdir").is_symlink()
        assert r.escape["hardlink_inside"]["error"] == 0, r.escape["hardlink_inside"]
        assert (run.share / "hl").samefile(run.share / "hello.txt")
        assert (run.share / "hello.txt").read_bytes() == HELLO
        new = {k: v for k, v in run.after.items() if k not in run.before}
        assert set(new) == {"newdir", "newdir/moved.txt", "hl"}, new
        hello_after = run.after["hello.txt"]
        assert hello_after[:2] == run.before["hello.txt"][:2] and hello_after[2] == 2, hello_after
        unchanged = {k for k in run.before if k != "hello.txt"}
        assert {k: run.after.get(k) for k in unchanged} == {k: run.before[k] for k in unchanged}
    else:
        ro = r.lines["ro"]
        assert (ro["create"], ro["mkdir"], ro["unlink"]) == (-EROFS, -EROFS, -EROFS), ro
        assert ro["open_wr"] < 0, ro
        assert not {"create", "write", "mkdir", "rename"} & set(r.lines), log
        assert "hardlink_inside" not in r.escape, log
        assert run.after == run.before


def test_no_way_out_of_the_share(run):
    """`..` from the root, a name with a '/', both symlinks (absolute and relative), `..`
    chains, foreign node ids and handles, a rename into a node that does not exist: nothing
    outside the share is reached, read or changed."""
    r, log = run.report, run.log
    missing = [c for c in ESCAPES if c not in r.escape]
    assert not missing, f"{missing}: {log}"
    e = r.escape
    assert e["dotdot"]["error"] < 0 or e["dotdot"]["nodeid"] == ROOT_NODE, e["dotdot"]
    for case in ("slash_name", "abs_symlink_open", "rel_symlink_open", "dotdot_chain", "bad_nodeid",
                 "zero_nodeid", "bad_fh", "rename_bad_dir"):
        assert e[case]["error"] < 0, f"{case} was allowed: {e[case]}"
    for case in ("abs_symlink_open", "rel_symlink_open"):
        if e[case]["lookup"] == 0:  # the link itself may be looked up: it is an inode of the share
            assert stat.S_ISLNK(e[case]["mode"]), e[case]
    for case in ("abs_symlink_open", "rel_symlink_open", "bad_fh"):
        assert "data" not in e[case], f"{case} read something: {e[case]}"
    # The target is the guest's to resolve (in its own namespace): giving it is fine.
    assert e["readlink"]["error"] < 0 or e["readlink"].get("data") == b"/etc", e["readlink"]
    chain = e["dotdot_chain"]
    assert chain["up1"] in (0, ROOT_NODE) and chain["up2"] in (0, ROOT_NODE), chain
    token = run.secret.strip()
    assert token not in run.log.encode("latin-1"), "the secret outside the share reached the guest"
    assert (run.root / "outside-secret").read_bytes() == run.secret
    assert run.outside_after == run.outside_before == ["outside-secret", "share"]
    assert (run.share / "hello.txt").read_bytes() == HELLO  # rename_bad_dir moved nothing


def test_hostile_requests_and_handle_exhaustion(run):
    """Malformed requests are answered (an error, or the chain used with nothing written) and
    leave the device live; open handles are capped well below what the guest asks for, all
    come back, and the device serves on; 1000 lookups are forgotten in one FORGET."""
    r, log = run.report, run.log
    for case in BAD_ANSWERED + BAD_OUTSIDE:
        b = r.bad.get(case)
        assert b, f"{case}: {log}"
        if case in BAD_OUTSIDE and b["dev_status"] & NEEDS_RESET:
            continue  # the device may ask for a reset; the probe set it up again (below)
        assert b["used"] == 1, f"{case} was never answered: {b}"
        assert b["len"] in (0, 16) and b.get("error", -1) < 0, f"{case}: {b}"
        assert b["dev_status"] == LIVE, f"{case} left the device needing a reset: {b}"
    assert r.bad["no_reply_buf"]["len"] == 0, r.bad["no_reply_buf"]
    assert r.bad["unknown_opcode"].get("error") == -ENOSYS, r.bad["unknown_opcode"]
    assert all(x["error"] == 0 for x in r.reinits), r.reinits
    assert {x["after"] for x in r.reinits} <= set(BAD_OUTSIDE), r.reinits

    exhaustion = r.bad["handle_exhaustion"]
    assert 0 < exhaustion["opened"] < EXHAUST_MAX, exhaustion
    assert exhaustion["error"] in (-EMFILE, -ENFILE), exhaustion
    assert r.bad["after_exhaustion"] == {"case": "after_exhaustion", "error": 0, "release_errors": 0}, log
    forget = r.bad["forget"]
    assert (forget["used"], forget["len"], forget["lookup_errors"]) == (1, 0, 0), forget
    assert forget["getattr_after"] == 0, forget
    assert r.lines["destroy"]["error"] == 0 and r.done, log


def test_two_shares_are_two_devices(vm_factory, probe_elf, tmp_path):
    """Each share is its own virtio-fs device, in order, with its own tag (``probe.fs=list``)."""
    tags = ["first", "second-share-with-a-36-byte-tag-wxyz"]
    assert len(tags[1]) == 36  # the longest a tag can be: no NUL after it in config space
    shares = []
    for i, tag in enumerate(tags):
        (tmp_path / f"s{i}").mkdir()
        shares.append(Share(tmp_path / f"s{i}", tag=tag, read_only=i == 1))
    vm = vm_factory(kernel=probe_elf, cmdline="probe.fs=list", shares=shares, transport="mmio")
    vm.start()
    status = vm.wait(timeout=60)
    log = vm.console_log
    r = parse_fs(log)
    assert status.reason == "reset", log
    assert r.failed == [], log
    assert [d["tag"] for d in r.devs] == tags, log
    assert r.lines["list"]["count"] == 2, log
    fs_devices = [(i, d) for i, d in enumerate(vm.boot_info.devices) if d.kind == "virtio-fs"]
    assert [(d["dev"], d["base"]) for d in r.devs] == [(i, d.mmio_base) for i, d in fs_devices], log
    assert all(d["num_queues"] == 1 and d["status"] == LIVE for d in r.devs), log


def test_no_share_no_device(vm_factory, probe_elf):
    """Without shares there is no virtio-fs device, and the probe says so."""
    vm = vm_factory(kernel=probe_elf, cmdline="probe.fs=test", transport="mmio")
    vm.start()
    status = vm.wait(timeout=60)
    log = vm.console_log
    assert status.reason == "reset", log
    assert parse_fs(log).failed == ["no-device"], log
