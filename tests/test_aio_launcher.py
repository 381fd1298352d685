"""``python -m txdht.aio``: its options, ``serve()`` and ``main()`` in a thread, real processes.

As in tests/test_aio.py, every event loop runs in a thread of its own (``run_async``,
``in_thread``): pytest-twisted's reactor owns the main thread. Signal handlers can only be set
in the main thread, so the in-thread ``serve()`` sets none; the signal path is tested with a
stand-in for the main-thread check and, for real, with ``python -m txdht.aio`` processes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_aio import free_port, in_thread, logged, network, run_async, until
from txdht.aio import launcher
from txdht.aio.launcher import main, parse_args, serve
from txdht.aio.node import Node
from txdht.core.ids import id_to_hex
from txdht.core.items import Identity
from txdht.core.limits import Limits, limit_options
from txdht.core.lookup import PATHS
from txdht.core.schedule import Intervals
from txdht.datadir import DataDirLock
from txdht.sqlite import SQLiteStorage, StorageError

ROOT = Path(__file__).resolve().parent.parent
#: How long a real process may take to start listening, and then to stop.
PROCESS_TIMEOUT = 10.0
#: The log line of a node that joined knowing one contact.
JOINED_ONE = "joined the network; it knows 1 contacts"


@pytest.fixture(autouse=True)
def _root_logger() -> Iterator[None]:
    """Undo what ``main()``'s ``logging.basicConfig`` may do to the root logger."""
    handlers, level = list(logging.root.handlers), logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


def options(data_dir: Path, *more: str, port: int | None = None) -> argparse.Namespace:
    """The launcher's options for a node in ``data_dir`` on a free port (or ``port``)."""
    port = free_port() if port is None else port
    return parse_args(["--port", str(port), "--data-dir", str(data_dir), *more])


def saved(data_dir: Path) -> tuple[int, list[int]]:
    """The node id and the ids of the contacts saved in ``data_dir``'s database."""
    storage = SQLiteStorage(data_dir / "node.sqlite3")
    try:
        raw = storage.identity()
        assert raw is not None
        return Identity.from_private_bytes(raw).node_id, [c.id for c in storage.contacts()]
    finally:
        storage.close()


async def serving(args: argparse.Namespace, ready: Callable[[], bool]) -> None:
    """Run ``serve(args)`` until ``ready()`` holds, then stop it and wait for it to end."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(args, stop))

    def done_or_ready() -> bool:
        if task.done():
            task.result()  # raise what went wrong
        return ready()

    await until(done_or_ready, 5.0)
    stop.set()
    await asyncio.wait_for(task, 5.0)


# -- options -------------------------------------------------------------------------------------


def test_parse_args_defaults() -> None:
    """Only --data-dir is required; the rest has the documented defaults."""
    args = parse_args(["--data-dir", "somewhere"])
    assert args.port == 4000
    assert args.host == "127.0.0.1"
    assert args.peer == []
    assert args.data_dir == Path("somewhere")
    assert (args.k, args.alpha, args.rpc_timeout, args.loop) == (20, 3, 5.0, "asyncio")


def test_parse_args_repeated_peers_and_ipv6() -> None:
    """--peer repeats, and a bracketed IPv6 address loses its brackets."""
    args = parse_args(
        ["--data-dir", "d", "--peer", "10.0.0.1:4001", "--peer", "[::1]:4000", "--peer", "h:5"]
    )
    assert args.peer == [("10.0.0.1", 4001), ("::1", 4000), ("h", 5)]


@pytest.mark.parametrize("peer", ["nocolon", ":4000", "host:", "host:abc", "host:0", "host:65536"])
def test_parse_args_refuses_bad_peers(peer: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A peer that is not HOST:PORT with a port from 1 to 65535 exits with status 2 and says why."""
    with pytest.raises(SystemExit) as caught:
        parse_args(["--data-dir", "d", "--peer", peer])
    assert caught.value.code == 2
    assert f"expected HOST:PORT, got {peer!r}" in capsys.readouterr().err


def test_parse_args_loop_choices(capsys: pytest.CaptureFixture[str]) -> None:
    """--loop takes asyncio or uvloop, and nothing else."""
    assert parse_args(["--data-dir", "d", "--loop", "uvloop"]).loop == "uvloop"
    assert parse_args(["--data-dir", "d", "--loop", "asyncio"]).loop == "asyncio"
    with pytest.raises(SystemExit) as caught:
        parse_args(["--data-dir", "d", "--loop", "trio"])
    assert caught.value.code == 2
    assert "invalid choice: 'trio'" in capsys.readouterr().err


def test_parse_args_limits_default_and_configurable() -> None:
    """Every limit is an option; without them the node gets the default limits."""
    assert parse_args(["--data-dir", "d"]).limits == Limits()
    assert parse_args(["--data-dir", "d"]).max_value == 65536
    args = parse_args(
        ["--data-dir", "d", "--peer-burst", "3", "--max-bad-messages", "1", "--max-value", "9"]
    )
    assert args.limits == Limits(peer_burst=3.0, max_bad_messages=1)
    assert args.max_value == 9
    assert parse_args(["--data-dir", "d"]).network == "txdht"
    args = parse_args(["--data-dir", "d", "--network", "lab-7", "--max-listens-per-peer", "4"])
    assert args.network == "lab-7"
    assert args.limits == Limits(max_listens_per_peer=4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--global-rate", "0"], r"global_rate \(--global-rate\) must be above 0"),
        (["--max-connections-per-ip", "0"], r"\(--max-connections-per-ip\) must be above 0"),
        (["--max-per-subnet", "-2"], r"\(--max-per-subnet\) must be 0 or more"),
        (["--max-value", "0"], "--max-value must be above 0"),
        (["--tracked-peers", "lots"], "invalid int value: 'lots'"),
        (["--network", "Bad"], "a network name is 1 to 64"),
        (["--min-lease", "100", "--max-lease", "50"], r"min_lease \(--min-lease"),
        (["--port", "70000"], "--port must be from 0 to 65535, not 70000"),
        (["--port", "-1"], "--port must be from 0 to 65535, not -1"),
        (["--k", "0"], "--k must be from 1 to 64, not 0"),
        (["--k", "65"], "--k must be from 1 to 64, not 65"),
        (["--alpha", "0"], "--alpha must be at least 1, not 0"),
        (["--rpc-timeout", "0"], "--rpc-timeout is a finite number of seconds above 0, not 0.0"),
        (["--rpc-timeout", "nan"], "--rpc-timeout is a finite number of seconds above 0, not nan"),
        (["--refresh-interval", "inf"], "--refresh-interval must be a finite number of seconds"),
        (["--peer-rate", "nan"], r"peer_rate \(--peer-rate\) must be above 0, got nan"),
    ],
)
def test_parse_args_refuses_bad_limits(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A limit that makes no sense exits with status 2 and names the option."""
    with pytest.raises(SystemExit) as caught:
        parse_args(["--data-dir", "d", *args])
    assert caught.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_parse_args_intervals_default_and_configurable(capsys: pytest.CaptureFixture[str]) -> None:
    """Every housekeeping interval, and the ping-before-evict window, is an option of the
    launcher as of twistd dht; zero or less is refused, naming the option."""
    assert parse_args(["--data-dir", "d"]).intervals == Intervals()
    args = parse_args(["--data-dir", "d", "--ping-after", "60", "--replicate-interval", "120"])
    assert args.intervals == Intervals(ping_after=60.0, replicate=120.0)
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", "d", "--ping-after", "0"])
    assert "--ping-after must be a finite number of seconds above 0" in capsys.readouterr().err


def test_help_lists_every_limit(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names every limit with its default."""
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, _, default, _ in limit_options():
        assert f"{name} " in text
        assert f"(default {default})" in text
    assert "Seconds a peer over its rate is ignored. (default 10.0)" in text


# -- serve() in a thread -------------------------------------------------------------------------


def test_serve_joins_saves_contacts_and_keeps_its_identity(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """serve() joins through --peer, saves contacts; restarted, it keeps its id and rejoins."""
    caplog.set_level(logging.INFO, logger="txdht.aio")
    data = tmp_path / "data" / "node"

    async def scenario() -> None:
        async with network() as net:
            peer = await net.add()
            args = options(data, "--peer", f"127.0.0.1:{peer.port}", "--rpc-timeout", "0.5")
            await serving(args, lambda: logged(caplog, JOINED_ONE) == 1)
            node_id, contacts = saved(data)
            assert contacts == [peer.engine.id]
            assert node_id in peer.engine.routing
            peer.engine.routing.remove(node_id)
            await serving(options(data), lambda: logged(caplog, "joined the network") == 2)
            assert saved(data) == (node_id, [peer.engine.id])
            assert node_id in peer.engine.routing

    run_async(scenario)
    node_id, _ = saved(data)
    assert logged(caplog, f"node {id_to_hex(node_id)[:16]} listens on 127.0.0.1:") == 2
    assert logged(caplog, "stopping") == 2


def test_serve_alone_is_the_first_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With no --peer and no saved contacts, serve() says it starts a new network."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        await serving(options(tmp_path), lambda: logged(caplog, "first node of a new network") == 1)

    run_async(scenario)
    assert saved(tmp_path)[1] == []


def test_serve_that_cannot_join_keeps_running_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A join that fails is logged and retried after 1 s, then 2 s; the node serves on until
    it is stopped, and stopping ends the retries."""
    caplog.set_level(logging.INFO, logger="txdht.aio")
    args = options(tmp_path, "--peer", f"127.0.0.1:{free_port()}", "--rpc-timeout", "0.5")

    async def scenario() -> None:
        await serving(args, lambda: logged(caplog, "could not join yet") == 2)

    run_async(scenario)
    assert logged(caplog, "retrying in 1 s") == 1
    assert logged(caplog, "retrying in 2 s") == 1
    assert logged(caplog, "stopping") == 1
    assert logged(caplog, "joined the network") == 0


def test_serve_alone_joins_through_the_first_node_that_contacts_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first node of a network joins through the first node that contacts it and saves
    its contacts, so that it can rejoin after a crash."""
    caplog.set_level(logging.INFO, logger="txdht.aio")
    args = options(tmp_path)

    async def scenario() -> None:
        async with network() as net:
            stop = asyncio.Event()
            task = asyncio.create_task(serve(args, stop))
            await until(lambda: logged(caplog, "first node of a new network") == 1, 5.0)
            other = await net.add()
            await other.join([("127.0.0.1", args.port)])
            await until(lambda: logged(caplog, JOINED_ONE) == 1, 5.0)
            stop.set()
            await asyncio.wait_for(task, 5.0)
            assert saved(tmp_path)[1] == [other.engine.id]

    run_async(scenario)


def test_serve_joins_once_its_peer_comes_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose peer is down at start joins at a retry once the peer listens."""
    caplog.set_level(logging.INFO, logger="txdht.aio")
    port = free_port()
    args = options(tmp_path, "--peer", f"127.0.0.1:{port}", "--rpc-timeout", "0.5")

    async def scenario() -> None:
        async with network() as net:
            stop = asyncio.Event()
            task = asyncio.create_task(serve(args, stop))
            await until(lambda: logged(caplog, "could not join yet") == 1, 5.0)
            peer = Node(rpc_timeout=0.5)
            await peer.start("127.0.0.1", port)
            net.nodes.append(peer)
            await until(lambda: logged(caplog, JOINED_ONE) == 1, 5.0)
            assert len(peer.engine.routing) == 1
            stop.set()
            await asyncio.wait_for(task, 5.0)

    run_async(scenario)


def test_serve_in_the_main_thread_handles_sigint_and_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the main thread serve() stops on SIGINT or SIGTERM, and removes its handlers after."""
    current = object()
    stand_in = SimpleNamespace(current_thread=lambda: current, main_thread=lambda: current)
    monkeypatch.setattr(launcher, "threading", stand_in)
    handlers: dict[int, Callable[[], None]] = {}
    removed: list[int] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def add_signal_handler(signum: int, callback: Callable[[], None]) -> None:
            handlers[signum] = callback

        def remove_signal_handler(signum: int) -> bool:
            removed.append(signum)
            return True

        monkeypatch.setattr(loop, "add_signal_handler", add_signal_handler)
        monkeypatch.setattr(loop, "remove_signal_handler", remove_signal_handler)
        task = asyncio.create_task(serve(options(tmp_path)))
        await until(lambda: signal.SIGTERM in handlers)
        assert set(handlers) == {signal.SIGINT, signal.SIGTERM}
        handlers[signal.SIGTERM]()
        await asyncio.wait_for(task, 5.0)

    run_async(scenario)
    assert removed == [signal.SIGINT, signal.SIGTERM]


# -- main() --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_main_runs_the_node_and_exits_0(
    loop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """main() runs serve() on the chosen loop and returns 0 when it ends."""
    real_serve = launcher.serve
    loops: list[str] = []

    async def serve_briefly(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
        loops.append(type(asyncio.get_running_loop()).__module__)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        await real_serve(args, stop)

    monkeypatch.setattr(launcher, "serve", serve_briefly)
    argv = ["--port", str(free_port()), "--data-dir", str(tmp_path), "--loop", loop]
    assert in_thread(lambda: main(argv), 30.0) == 0
    assert loops[0].startswith(loop)
    assert saved(tmp_path)[1] == []


def test_main_refuses_a_damaged_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that is not SQLite makes main() return 1 with a one-line message."""
    (tmp_path / "node.sqlite3").write_bytes(b"this is not a database, " * 100)
    argv = ["--port", str(free_port()), "--data-dir", str(tmp_path)]
    assert in_thread(lambda: main(argv), 30.0) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("txdht: ")


def test_main_refuses_a_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A port another socket listens on makes main() return 1 with a one-line message."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["--port", str(port), "--data-dir", str(tmp_path)]
        assert in_thread(lambda: main(argv), 30.0) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("txdht: ")
    assert "in use" in err


def test_main_refuses_a_data_dir_another_node_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data dir another running node holds makes main() return 1 with one line, before
    anything is opened; the database is left to its node, and the lock goes with it."""
    held = DataDirLock(tmp_path)
    try:
        argv = ["--port", str(free_port()), "--data-dir", str(tmp_path)]
        assert in_thread(lambda: main(argv), 30.0) == 1
        err = capsys.readouterr().err
        assert err == (
            f"txdht: the data directory {tmp_path} is in use by another running node: give "
            "each node its own data directory\n"
        )
        assert not (tmp_path / "node.sqlite3").exists()
    finally:
        held.release()


def test_serve_lets_the_data_dir_go_when_the_database_is_refused(tmp_path: Path) -> None:
    """A damaged database ends serve() with the lock let go: the next try is refused for the
    database again, not for the lock."""
    (tmp_path / "node.sqlite3").write_bytes(b"not a database" * 100)
    args = parse_args(["--port", "0", "--data-dir", str(tmp_path)])
    for _ in range(2):
        with pytest.raises(StorageError, match="not a txdht database"):
            run_async(lambda: serve(args))
    DataDirLock(tmp_path).release()


def test_main_without_uvloop_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--loop uvloop without uvloop makes main() return 1 with a one-line fix, starting nothing."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an import finds when it is missing
    data = tmp_path / "data"
    assert main(["--port", str(free_port()), "--data-dir", str(data), "--loop", "uvloop"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("txdht: --loop uvloop needs uvloop (")
    assert err.endswith(": pip install 'txdht[uvloop]'\n")
    assert not data.exists()


WITHOUT_UVLOOP = """
import runpy, sys
sys.modules["uvloop"] = None
sys.argv = ["txdht.aio", *sys.argv[1:]]
runpy.run_module("txdht.aio", run_name="__main__", alter_sys=True)
"""


def test_process_without_uvloop_exits_1_with_one_line(tmp_path: Path) -> None:
    """``python -m txdht.aio --loop uvloop`` with uvloop missing prints one line, no traceback
    and no never-awaited warning, and exits 1."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    argv = ["--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--loop", "uvloop"]
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", WITHOUT_UVLOOP, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=PROCESS_TIMEOUT * 3,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "txdht: --loop uvloop needs uvloop (import of uvloop halted; None in sys.modules): "
        "pip install 'txdht[uvloop]'"
    ]


def test_run_module_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m txdht.aio --help`` (run in-process by runpy) prints the usage and exits 0."""
    monkeypatch.setattr(sys, "argv", ["txdht.aio", "--help"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("txdht.aio", run_name="__main__")
    assert caught.value.code == 0
    assert "python -m txdht.aio" in capsys.readouterr().out


# -- real processes ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("signum", "loop"),
    [
        pytest.param(signal.SIGTERM, "asyncio", id="sigterm"),
        pytest.param(signal.SIGINT, "asyncio", id="sigint"),
        pytest.param(signal.SIGTERM, "uvloop", id="sigterm-uvloop"),
    ],
)
def test_process_stops_cleanly_on_a_signal(signum: int, loop: str, tmp_path: Path) -> None:
    """A real ``python -m txdht.aio`` process listens, then exits 0 on SIGTERM or SIGINT."""
    port = free_port()
    data = tmp_path / "data"
    log = tmp_path / "node.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "txdht.aio", "--port", str(port), "--data-dir", str(data)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--loop", loop], stdout=output, stderr=subprocess.STDOUT, env=env
        )
    try:

        def listening() -> bool:
            assert process.poll() is None, log.read_text()
            return "listens on" in log.read_text()

        wait_until(listening, PROCESS_TIMEOUT, "the node to listen")
        assert accepts(port)
        process.send_signal(signum)
        assert process.wait(timeout=PROCESS_TIMEOUT) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=PROCESS_TIMEOUT)
    text = log.read_text()
    assert "no --peer and no saved contacts" in text
    assert "stopping" in text
    assert "Traceback" not in text
    assert (data / "node.sqlite3").exists()


def test_parse_args_lookup_paths(capsys: pytest.CaptureFixture[str]) -> None:
    """--lookup-paths defaults to the core's PATHS; fewer than one is refused, naming it."""
    assert parse_args(["--data-dir", "d"]).lookup_paths == PATHS
    assert parse_args(["--data-dir", "d", "--lookup-paths", "2"]).lookup_paths == 2
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", "d", "--lookup-paths", "0"])
    assert "--lookup-paths must be at least 1" in capsys.readouterr().err
