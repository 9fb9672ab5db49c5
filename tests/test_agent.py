"""The guest agent (python/vmm_reference/guest_agent/agent.c) and its Python client, on the host: no VM needed.

The agent runs here with ``--listen-unix PATH`` and :class:`vmm_reference.agent.Client` talks
to it over that UNIX socket, exactly as it does over vsock in a guest (the full-boot tests in
test_full_boot.py do that). The Vm-level error paths use the probe guest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from vmm_reference import Vm, VmAgentError, VmConfigError, VmExitedError, VmStateError, VmTimeoutError
from vmm_reference.agent import CHUNK, Client
from vmm_reference.assets import AssetError, build_agent

MIB = 1 << 20


@pytest.fixture(scope="session")
def agent_binary(request) -> Path:
    from vmm_reference.pytest_plugin import skip_or_fail

    try:
        return build_agent()
    except AssetError as e:
        skip_or_fail(request.config, str(e))
        raise


class Agent:
    """A vmm-agent process serving a UNIX socket."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.path = str(directory / "agent.sock")
        self.proc = subprocess.Popen([str(binary), "--listen-unix", self.path], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.path):
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "the agent never listened"
            time.sleep(0.01)

    def client(self) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.path)
        return Client(sock)

    def handlers(self) -> list[int]:
        """The agent's per-connection children."""
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(p) for p in text.split()]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()


@pytest.fixture
def agent(agent_binary, tmp_path):
    a = Agent(agent_binary, tmp_path)
    yield a
    a.stop()


@pytest.fixture
def client(agent):
    with agent.client() as c:
        yield c


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_ping_answers_with_the_version(client):
    assert client.ping().startswith("vmm-agent ")


def test_the_binary_is_static(agent_binary):
    assert agent_binary.read_bytes()[:4] == b"\x7fELF"
    assert b"/ld-linux" not in agent_binary.read_bytes()[:4096]  # no PT_INTERP: static


def test_the_agent_build_is_cached_by_its_sources(agent_binary):
    assert build_agent() == agent_binary
    assert agent_binary.parent.name.startswith("vmm-agent-")


@pytest.mark.parametrize(("cmd", "code"), [("true", 0), ("false", 1), ("exit 7", 7), ("no-such-program", 127)])
def test_exit_codes(client, cmd, code):
    assert client.run(cmd).returncode == code


def test_a_list_runs_without_a_shell_and_a_missing_program_is_127(client):
    r = client.run(["printf", "%s|", "a b", "$HOME", ""])
    assert (r.returncode, r.stdout) == (0, b"a b|$HOME||")
    r = client.run(["/no/such/program", "x"])
    assert r.returncode == 127
    assert b"/no/such/program: No such file or directory" in r.stderr


def test_a_signal_is_a_negative_code(client):
    assert client.run("kill -TERM $$").returncode == -signal.SIGTERM
    assert client.run(["sh", "-c", "kill -KILL $$"]).returncode == -signal.SIGKILL


def test_stdout_and_stderr_are_kept_apart(client):
    r = client.run("echo out; echo err >&2; echo out2; echo err2 >&2; exit 3")
    assert r.args == "echo out; echo err >&2; echo out2; echo err2 >&2; exit 3"
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\nout2\n", b"err\nerr2\n")


def test_text_and_check_behave_as_in_subprocess(client):
    r = client.run("printf 'h\\303\\251 %s' $((6 * 7))", text=True)
    assert r.stdout == "hé 42" and r.stderr == ""
    with pytest.raises(subprocess.CalledProcessError) as e:
        client.run("echo no; exit 4", check=True)
    assert (e.value.returncode, e.value.stdout, e.value.cmd) == (4, b"no\n", "echo no; exit 4")


def test_input_goes_to_stdin_and_none_is_empty(client):
    data = os.urandom(3 * MIB + 17)
    r = client.run("sha256sum", input=data)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert client.run("cat", input="line\n", text=True).stdout == "line\n"
    assert client.run("wc -c").stdout.strip() == b"0"
    with open(os.devnull, "rb") as f:
        assert client.run("wc -c", input=f).stdout.strip() == b"0"


def test_input_and_output_flow_together_without_deadlock(client):
    data = os.urandom(16 * MIB)
    r = client.run("cat; cat /dev/null >&2", input=data, timeout=60)
    assert r.stdout == data


def test_input_is_dropped_when_the_command_does_not_read_it(client):
    r = client.run("head -c 10", input=b"x" * (4 * MIB), timeout=30)
    assert (r.returncode, r.stdout) == (0, b"x" * 10)


def test_env_and_cwd(client, tmp_path):
    r = client.run('echo "$FOO|$BAR|$(pwd)"', env={"FOO": "foo bar", "BAR": "=x="}, cwd=tmp_path)
    assert r.stdout == f"foo bar|=x=|{tmp_path}\n".encode()
    assert client.run("echo $PATH").stdout.strip()  # the agent's environment stays
    r = client.run("true", cwd=tmp_path / "missing")
    assert r.returncode == 125 and b"cannot change directory" in r.stderr


def test_64_mib_of_output_stream_with_bounded_memory(agent, client):
    size = 64 * MIB
    r = client.run(f"head -c {size} /dev/zero | tr '\\0' 'a'; echo done >&2", timeout=120)
    assert (len(r.stdout), r.stdout.count(b"a"), r.stderr) == (size, size, b"done\n")
    # The connection's handler (still connected) never held much: its peak RSS.
    [handler] = agent.handlers()
    assert status_kb(handler, "VmHWM") < 16 * 1024
    assert status_kb(agent.proc.pid, "VmHWM") < 16 * 1024
    # And the client itself, handing chunks on instead of keeping them, holds little.
    seen = [0]
    tracemalloc.start()
    try:
        code = client.exec(["sh", "-c", f"head -c {size} /dev/zero"],
                           stdout=lambda b: seen.__setitem__(0, seen[0] + len(b)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (code, seen[0]) == (0, size)
    assert peak < 4 * MIB, peak


def test_output_chunks_are_at_most_64_kib(client):
    sizes = []
    assert client.exec(["sh", "-c", "head -c 1000000 /dev/zero"], stdout=lambda b: sizes.append(len(b))) == 0
    assert sum(sizes) == 1000000 and max(sizes) <= CHUNK


def test_timeout_kills_the_command_and_keeps_partial_output(client, tmp_path):
    pidfile = tmp_path / "pids"
    started = time.monotonic()
    with pytest.raises(VmTimeoutError) as e:
        client.run(f"echo partial; echo err >&2; sleep 60 & echo $$ $! >{pidfile}; wait", timeout=1)
    assert time.monotonic() - started < 10
    assert isinstance(e.value, TimeoutError)
    assert (e.value.stdout, e.value.stderr) == (b"partial\n", b"err\n")
    shell, background = map(int, pidfile.read_text().split())
    deadline = time.monotonic() + 5
    while not (gone(shell) and gone(background)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(shell) and gone(background)  # its whole process group
    with pytest.raises(VmTimeoutError) as e:
        client.run("echo partial; sleep 60", timeout=0.5, text=True)
    assert e.value.stdout == "partial\n"
    assert client.run("echo still serving").stdout == b"still serving\n"


def test_closing_the_connection_kills_the_command(agent, tmp_path):
    pidfile = tmp_path / "pid"
    c = agent.client()
    threading.Timer(1.0, c._sock.shutdown, args=(socket.SHUT_RDWR,)).start()
    with pytest.raises(VmAgentError):
        c.run(f"echo $$ >{pidfile}; exec sleep 60")
    c.close()
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def test_connections_are_served_at_once(agent):
    with agent.client() as slow, agent.client() as fast:
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("slow", slow.run("sleep 1; echo slow")))
        t.start()
        assert fast.run("echo fast").stdout == b"fast\n"
        t.join()
        assert result["slow"].stdout == b"slow\n"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_copy_round_trip_of_32_mib_keeps_bytes_and_mode(client, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(32 * MIB + 5))
    src.chmod(0o751)
    client.put(src, tmp_path / "in-guest.bin")
    assert sha256_file(tmp_path / "in-guest.bin") == sha256_file(src)
    assert stat.S_IMODE((tmp_path / "in-guest.bin").stat().st_mode) == 0o751
    back = tmp_path / "back.bin"
    client.get(tmp_path / "in-guest.bin", back)
    assert sha256_file(back) == sha256_file(src)
    assert stat.S_IMODE(back.stat().st_mode) == 0o751


def test_copy_into_an_existing_directory_and_of_trees(client, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.sh").write_text("#!/bin/sh\n")
    (tree / "sub" / "b.sh").chmod(0o755)
    (tree / "sub" / "deeper" / "empty").write_bytes(b"")
    (tree / "link").symlink_to("a.txt")
    (tree / "sub").chmod(0o750)
    guest = tmp_path / "guest"
    guest.mkdir()
    client.put(tree, guest)  # like cp -r: into guest/tree
    client.put(tree / "a.txt", guest)  # into guest/a.txt
    assert (guest / "a.txt").read_text() == "a"
    listing = client.run(f"cd {guest}/tree && find . | sort && stat -c %a sub sub/b.sh", text=True).stdout.split()
    assert listing == [".", "./a.txt", "./link", "./sub", "./sub/b.sh", "./sub/deeper", "./sub/deeper/empty",
                       "750", "755"]
    assert os.readlink(guest / "tree" / "link") == "a.txt"
    host = tmp_path / "host"
    client.get(guest / "tree", host)
    assert (host / "sub" / "b.sh").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE((host / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE((host / "sub" / "b.sh").stat().st_mode) == 0o755
    assert (host / "sub" / "deeper" / "empty").read_bytes() == b""
    assert os.readlink(host / "link") == "a.txt"


def test_copy_errors_name_the_path(client, tmp_path):
    with pytest.raises(VmAgentError, match=r"/no/such/file: No such file or directory"):
        client.get("/no/such/file", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    src = tmp_path / "f"
    src.write_bytes(b"data")
    with pytest.raises(VmAgentError, match=r"/no/such/dir/f: No such file or directory"):
        client.put(src, "/no/such/dir/f")
    with pytest.raises(FileNotFoundError):
        client.put(tmp_path / "missing", tmp_path / "y")
    assert client.ping()  # the connection still serves


def test_a_malformed_frame_gets_an_error_and_the_agent_keeps_serving(agent):
    with agent.client() as c:
        c._sock.setblocking(True)
        c._sock.sendall(struct.pack("<BI", 0x7E, 0))
        c._sock.setblocking(False)
        with pytest.raises(VmAgentError, match="unknown request type 0x7e"):
            c.ping()
    with agent.client() as c:
        c._sock.setblocking(True)
        c._sock.sendall(struct.pack("<BI", 0x02, 1 << 30))  # an EXEC too large to take
        c._sock.setblocking(False)
        with pytest.raises(VmAgentError, match="over the limit"):
            c.ping()
    with agent.client() as c:
        assert c.run("echo ok").stdout == b"ok\n"


def test_async_run_does_not_block_the_loop(client):
    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        r = await asyncio.to_thread(client.run, "sleep 0.5; echo hi")
        ticker.cancel()
        return r, ticks

    r, ticks = asyncio.run(main())
    assert r.stdout == b"hi\n" and ticks >= 5


# The Vm methods' error paths, with the probe guest (it has no agent).


def test_without_vsock_run_says_to_create_the_vm_with_it(probe_elf):
    with Vm(kernel=probe_elf, cmdline="probe.end=halt") as vm:
        vm.start()
        for call in (lambda: vm.run("true"), lambda: vm.copy_to(probe_elf, "/x"), lambda: vm.wait_ready(1)):
            with pytest.raises(VmConfigError, match="vsock=True"):
                call()


def test_no_agent_is_an_error_not_a_hang(probe_elf):
    with Vm(kernel=probe_elf, cmdline="probe.end=halt", vsock=True) as vm:
        with pytest.raises(VmStateError, match="start"):
            vm.run("true")
        vm.start()
        started = time.monotonic()
        with pytest.raises(VmTimeoutError, match="did not answer"):
            vm.wait_ready(timeout=1.5)
        assert time.monotonic() - started < 5
        with pytest.raises(VmAgentError, match="no guest agent answers on vsock port 52"):
            vm.run("true")
        vm.kill()
        vm.wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(VmExitedError):
            vm.run("true")
        with pytest.raises(VmExitedError):
            vm.wait_ready(timeout=30)
        assert time.monotonic() - started < 1
