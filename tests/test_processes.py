"""Real processes: `twistd -n dht` nodes on loopback, driven with the `txdht` command.

These tests start real node processes; every process is killed at the end, pass or fail, and
every wait is bounded. They run once, on the default reactor's pass of the suite (the nodes are
other processes, so the test process's reactor does not matter to them).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
#: Bound on the wait for a process to go after SIGKILL.
KILL_TIMEOUT = 10.0
#: The dashboard's files, shipped as package data in ``txdht/static``.
DASHBOARD_FILES = ("index.html", "app.js", "style.css")
#: The lowest port ``free_port`` hands out, and how many ports it tries before it gives up.
FIRST_PORT = 10000
PORT_ATTEMPTS = 1000
#: The ports ``free_port`` has handed out: never twice, so that two nodes not yet listening
#: cannot be given the same one.
_given: set[int] = set()
#: Its own random numbers, whatever a test does with the module's.
_ports = random.Random()


@pytest.fixture(autouse=True)
def _once(request: pytest.FixtureRequest) -> None:
    """Skip on the asyncio pass: the processes do not depend on this process's reactor."""
    if request.config.getoption("reactor") != "default":
        pytest.skip("real-process tests run on the default reactor pass only")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, never handed out before by this
    process, and below the kernel's range of ephemeral ports.

    A port from that range (what binding port 0 gives) can be taken by any outgoing connection,
    a node's own or another program's, between this check and the node's listen, which then
    fails with "Address already in use"; below it, only a program that binds that very port
    can take it.
    """
    for _ in range(PORT_ATTEMPTS):
        port = _ports.randrange(FIRST_PORT, ephemeral_ports()[0])
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise AssertionError(f"no free port found in {PORT_ATTEMPTS} tries")


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ephemeral ports (Linux; its default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except OSError:
        return 32768, 60999
    return int(low), int(high)


def environment() -> dict[str, str]:
    """The environment for child processes: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class NodeProcess:
    """One `twistd -n dht` process with its own data dir, DHT port and HTTP port."""

    def __init__(self, data_dir: Path, reactor: str = "default") -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.http = free_port()
        self.reactor = reactor
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "twistd.log"

    @property
    def url(self) -> str:
        """The node's HTTP API."""
        return f"http://127.0.0.1:{self.http}"

    def start(
        self,
        peers: list[NodeProcess] = (),  # type: ignore[assignment]
        k: int = 5,
        options: Sequence[str] = (),
    ) -> None:
        """Start the process (it joins through ``peers``, or its saved contacts), with more
        ``twistd dht`` options."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = self.command("-n", "--pidfile=", f"--reactor={self.reactor}")
        args += ["--k", str(k), "--rpc-timeout", "2", *options]
        for peer in peers:
            args += ["--peer", f"127.0.0.1:{peer.port}"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=self.data_dir
            )

    def command(self, *twistd_options: str) -> list[str]:
        """``twistd [twistd_options] dht`` on this node's ports and data dir."""
        args = [str(BIN / "twistd"), *twistd_options, "dht"]
        args += ["--port", f"tcp:{self.port}:interface=127.0.0.1", "--data-dir", str(self.data_dir)]
        return [*args, "--http", f"tcp:{self.http}:interface=127.0.0.1"]

    def detach(self, pidfile: Path, logfile: Path) -> subprocess.CompletedProcess[bytes]:
        """Run twistd without -n, so that it detaches: what the command itself did."""
        return subprocess.run(
            self.command(f"--pidfile={pidfile}", f"--logfile={logfile}"),
            env=environment(),
            cwd=self.data_dir,
            capture_output=True,
            timeout=START_TIMEOUT,
        )

    def api(self, path: str, method: str = "GET", body: bytes | None = None) -> Any:
        """One JSON answer from the node's HTTP API."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def status(self) -> dict[str, object]:
        """The node's /v1/status."""
        return dict(self.api("/v1/status"))

    def wait_ready(self, peers: int = 0, timeout: float = START_TIMEOUT) -> dict[str, object]:
        """Wait at most ``timeout`` seconds until the API answers and the node knows at least
        ``peers`` contacts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"node exited: {self.log_tail()}")
            try:
                status = self.status()
                if int(status["peers"]) >= peers:  # type: ignore[call-overload]
                    return status
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node not ready in {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        """The end of the node's log, without the access lines of the API's status polling."""
        lines = self.log.read_text().splitlines()
        return "\n".join(line for line in lines if "GET /v1/status" not in line)[-3000:]

    def kill(self) -> None:
        """SIGKILL: no goodbye, no clean shutdown; wait (bounded) for the process to go."""
        self.send_kill()
        self.wait_gone()

    def send_kill(self) -> None:
        """Send SIGKILL if the process is running, without waiting for it."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` if the process is running (SIGSTOP freezes it, SIGCONT thaws it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def wait_gone(self, timeout: float = KILL_TIMEOUT) -> None:
        """Wait at most ``timeout`` seconds for the process to exit (TimeoutExpired if not)."""
        if self.process is not None:
            self.process.wait(timeout=timeout)

    def terminate(self) -> int:
        """SIGTERM and wait (bounded) for a clean exit; the exit code."""
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout=20)


def txdht(
    node: NodeProcess, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the `txdht` command against ``node``."""
    script = BIN / "txdht"
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "import sys; from txdht.cli import main; sys.exit(main())"]
    )
    return subprocess.run(
        [*command, "--node", node.url, *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env=environment(),
        check=False,
    )


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Ten node processes (two on asyncioreactor); all are killed at the end."""
    started = [
        NodeProcess(tmp_path / f"node{i}", reactor="asyncio" if i in (4, 7) else "default")
        for i in range(10)
    ]
    try:
        start_joined(started)
        yield started
    finally:
        kill_all(started)


def start_joined(
    nodes: Sequence[NodeProcess],
    k: int = 5,
    timeout: float = START_TIMEOUT,
    options: Sequence[str] = (),
) -> None:
    """Start ``nodes`` (with more ``twistd dht`` options), the first alone and the others
    joining through it, and wait (at most ``timeout`` seconds for each) until every one of
    them knows a peer."""
    first = nodes[0]
    first.start(k=k, options=options)
    first.wait_ready()
    for node in nodes[1:]:
        node.start(peers=[first], k=k, options=options)
    for node in nodes:
        node.wait_ready(peers=1, timeout=timeout)


def kill_all(nodes: Sequence[NodeProcess]) -> None:
    """SIGKILL every node first, then wait (bounded) for each, so one slow exit strands none."""
    for node in nodes:
        node.send_kill()
    stuck = []
    for node in nodes:
        try:
            node.wait_gone()
        except subprocess.TimeoutExpired:
            stuck.append(node.data_dir.name)
    assert not stuck, f"still running {KILL_TIMEOUT} s after SIGKILL: {stuck}"


def test_put_get_kill_restart(nodes: list[NodeProcess]) -> None:
    """20 values put through one node are read through another, survive SIGKILL of three
    nodes (the writer among them), and the restarted nodes serve their items again."""
    writer, reader = nodes[1], nodes[8]
    values = {f"name-{i}": f"value {i} \u2603".encode() * (i + 1) for i in range(20)}
    keys = {}
    for name, value in values.items():
        result = txdht(writer, "put", name, "-", stdin=value)
        assert result.returncode == 0, result.stderr
        keys[name] = result.stdout.decode().strip()
        assert len(keys[name]) == 128
    for name, key in keys.items():
        result = txdht(reader, "get", key)
        assert (result.returncode, result.stdout) == (0, values[name])
    killed = [writer, nodes[4], nodes[6]]
    before = {id(n): n.status() for n in killed}
    for node in killed:
        node.kill()
    for name, key in keys.items():
        result = txdht(reader, "get", key)
        assert (result.returncode, result.stdout) == (0, values[name]), result.stderr
    for node in killed:
        node.start()  # no --peer: it rejoins through the contacts it saved
    for node in killed:
        status = node.wait_ready(peers=1)
        assert status["id"] == before[id(node)]["id"]
        # Nothing lost; a node may hold more after rejoining (newcomers are handed copies).
        assert int(status["items"]) >= int(before[id(node)]["items"])  # type: ignore[call-overload]
    held = 0
    for node in killed:
        for name, key in keys.items():
            result = txdht(node, "get", key)
            assert (result.returncode, result.stdout) == (0, values[name]), result.stderr
        held += int(node.status()["items"])  # type: ignore[call-overload]
    assert held > 0
    missing = txdht(reader, "get", "ab" * 64)
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"txdht: ")


def test_status_peers_and_blob_from_the_command_line(nodes: list[NodeProcess]) -> None:
    """put-blob, status and peers work against a real node."""
    blob_file = nodes[0].data_dir / "blob.bin"
    blob_file.write_bytes(bytes(range(256)))
    result = txdht(nodes[2], "put-blob", str(blob_file))
    assert result.returncode == 0, result.stderr
    got = txdht(nodes[5], "get", result.stdout.decode().strip())
    assert got.stdout == bytes(range(256))
    status = txdht(nodes[3], "status", "--json")
    assert json.loads(status.stdout)["peers"] >= 1
    peers = txdht(nodes[3], "peers")
    assert peers.returncode == 0
    assert b"127.0.0.1:" in peers.stdout


def test_sigterm_stops_cleanly_and_keeps_the_data(tmp_path: Path) -> None:
    """SIGTERM stops a node cleanly; it restarts with the same id and items."""
    node = NodeProcess(tmp_path / "solo")
    try:
        node.start()
        node.wait_ready()
        assert txdht(node, "put", "kept", "v", stdin=None).returncode == 0
        first = node.status()
        # twistd shuts down cleanly, then reports the signal as its exit status.
        assert node.terminate() in (0, -signal.SIGTERM)
        assert "Main loop terminated." in node.log.read_text()
        node.start()
        again = node.wait_ready()
        assert (again["id"], again["items"]) == (first["id"], first["items"])
    finally:
        node.kill()


def test_a_second_node_on_a_data_dir_in_use_stops_with_a_clear_message(tmp_path: Path) -> None:
    """Two `twistd dht` on one data dir: the second exits 1 with one line, and the first
    goes on serving, with its id; once the first has stopped, the second starts."""
    first = NodeProcess(tmp_path / "shared")
    second = NodeProcess(tmp_path / "shared")
    second.log = tmp_path / "second.log"
    try:
        first.start()
        ident = first.wait_ready()["id"]
        second.start()
        assert second.process is not None
        assert second.process.wait(timeout=START_TIMEOUT) == 1
        assert second.log.read_text() == (
            f"txdht: the data directory {first.data_dir} is in use by another running node: "
            "give each node its own data directory\n"
        )
        assert first.status()["id"] == ident
        assert first.terminate() in (0, -signal.SIGTERM)
        second.start()
        assert second.wait_ready()["id"] == ident
    finally:
        kill_all([first, second])


def test_damaged_database_stops_the_node_with_a_clear_message(tmp_path: Path) -> None:
    """A damaged database makes `twistd dht` exit non-zero with one line naming the file."""
    node = NodeProcess(tmp_path / "bad")
    node.data_dir.mkdir()
    (node.data_dir / "node.sqlite3").write_bytes(b"garbage" * 1000)
    try:
        node.start()
        assert node.process is not None
        code = node.process.wait(timeout=START_TIMEOUT)
        output = node.log.read_text()
        assert code != 0
        assert "node.sqlite3" in output
        assert "not a txdht database or is damaged" in output
    finally:
        node.kill()


def test_busy_port_stops_the_node_with_a_clear_message(tmp_path: Path) -> None:
    """A DHT port already in use makes the node exit non-zero with one line saying which
    option and why (no traceback), before it makes anything in its data dir."""
    node = NodeProcess(tmp_path / "busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", node.port))
        taken.listen()
        try:
            node.start()
            assert node.process is not None
            assert node.process.wait(timeout=START_TIMEOUT) != 0
            output = node.log.read_text()
            assert output == (
                f"txdht: cannot listen on tcp:{node.port}:interface=127.0.0.1 (--port): Address "
                "already in use (another node, or another program, listens there); choose "
                "another with --port\n"
            )
            assert not (node.data_dir / "node.sqlite3").exists()  # tried before it is made
        finally:
            node.kill()


def test_plugin_is_found_after_a_plain_pip_install(tmp_path: Path) -> None:
    """After a plain (non-editable) `pip install` in a fresh venv, `twistd --help` lists dht."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)]
    subprocess.run(pip, check=True, timeout=600, cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    help_text = subprocess.run(
        [str(venv / "bin" / "twistd"), "--help"],
        capture_output=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
        env=env,
    ).stdout.decode()
    assert any(line.split()[:1] == ["dht"] for line in help_text.splitlines())
    site = next((venv / "lib").glob("python*/site-packages"))
    assert (site / "twisted" / "plugins" / "txdht_plugin.py").exists()
    assert (site / "twisted" / "__init__.py").exists()  # Twisted's own, not overwritten by us
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    names = zipfile.ZipFile(next(wheel_dir.glob("txdht-*.whl"))).namelist()
    assert "twisted/plugins/txdht_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "txdht/py.typed" in names
    # The dashboard is package data: in the wheel, and installed, byte for byte.
    for name in DASHBOARD_FILES:
        assert f"txdht/static/{name}" in names
        installed = site / "txdht" / "static" / name
        assert installed.is_file(), f"{installed} was not installed"
        assert installed.read_bytes() == (ROOT / "txdht" / "static" / name).read_bytes()


def test_daemon_mode_writes_a_pidfile_logs_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`twistd dht` without -n detaches: the command returns once the node has started, the
    node serves from the pid in its pidfile and logs to --logfile; SIGTERM stops it cleanly
    (pidfile removed, process gone), and it starts again detached with the same id and items."""
    node = NodeProcess(tmp_path / "daemon")  # its ports and data dir; the process is detached
    node.data_dir.mkdir()
    pidfile, logfile = node.data_dir / "twistd.pid", node.data_dir / "daemon.log"

    def launch() -> int:
        """Start the daemon; once it answers, the pid its pidfile names."""
        launcher = node.detach(pidfile, logfile)
        assert launcher.returncode == 0, launcher.stderr
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                status = node.status()
                pids.append(int(pidfile.read_text()))
                assert status["port"] == node.port
                return pids[-1]
            except (OSError, ValueError):
                time.sleep(0.1)
        raise AssertionError(f"daemon not serving in {START_TIMEOUT} s: {logfile.read_text()}")

    def stop(pid: int) -> None:
        """SIGTERM, then wait (bounded) for the clean exit: the pidfile goes and the log says so."""
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pidfile.exists(), logfile.read_text()[-3000:]
        assert "Main loop terminated." in logfile.read_text()
        wait_until_gone(str(node.data_dir))

    pids: list[int] = []
    try:
        pid = launch()
        assert running_with(str(node.data_dir)) == [pid]
        assert txdht(node, "put", "kept", "v").returncode == 0
        first = node.status()
        assert f"node {str(first['id'])[:16]} listens on port {node.port}" in logfile.read_text()
        stop(pid)
        pid = launch()
        again = node.status()
        assert (again["id"], again["items"]) == (first["id"], first["items"])
        stop(pid)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # gone, as it should be
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("fault", ["damaged database", "busy port"])
def test_daemon_mode_reports_a_failed_start_from_the_command_itself(
    tmp_path: Path, fault: str
) -> None:
    """Without -n, a node that cannot start makes the twistd command exit non-zero, saying
    why on the terminal; no daemon is left behind."""
    node = NodeProcess(tmp_path / "daemon")
    data, port, log = node.data_dir, node.port, node.data_dir / "daemon.log"
    data.mkdir()
    with socket.socket() as taken:
        if fault == "busy port":
            taken.bind(("127.0.0.1", port))
            taken.listen()
        else:
            (data / "node.sqlite3").write_bytes(b"garbage" * 1000)
        launcher = node.detach(data / "twistd.pid", log)
    said = (launcher.stdout + launcher.stderr).decode()
    assert launcher.returncode != 0
    # Both are found while the service is made, before twistd detaches or opens the log.
    if fault == "busy port":
        assert f"txdht: cannot listen on tcp:{port}:interface=127.0.0.1 (--port)" in said
        assert "Address already in use" in said
    else:
        assert "node.sqlite3 is not a txdht database or is damaged" in said
    # The daemon tells the launcher first and removes its pid file after, as it exits: look
    # for the file once the daemon has gone (a look before could still find it).
    wait_until_gone(str(data))
    assert not (data / "twistd.pid").exists()
    assert not log.exists()  # no daemon was started to write one


def wait_until_gone(argument: str) -> None:
    """Wait (bounded) until no process has ``argument`` on its command line."""
    deadline = time.monotonic() + KILL_TIMEOUT
    while running_with(argument) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_with(argument) == []


def running_with(argument: str) -> list[int]:
    """The pids of live processes whose command line holds ``argument`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:  # gone meanwhile
            continue
        if argument.encode() in command.split(b"\0"):
            found.append(int(entry.name))
    return found
