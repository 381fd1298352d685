"""``twistd dht`` options and the service tree makeService builds (on a memory reactor)."""

from __future__ import annotations

import re
import shutil
import socket
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.web.server import Site

from txdht.core.limits import Limits
from txdht.core.lookup import PATHS
from txdht.core.schedule import JOBS, REFRESH_INTERVAL, Intervals
from txdht.service import DHTService
from txdht.sqlite import SQLiteStorage
from txdht.tap import (
    DATABASE,
    Options,
    can_listen,
    default_data_dir,
    makeService,
    parse_peer,
)


def parse(*args: str) -> Options:
    """Options parsed from ``args``."""
    options = Options()
    options.parseOptions(list(args))  # type: ignore[no-untyped-call]
    return options


def test_defaults() -> None:
    """Without arguments: port 4000, HTTP on 127.0.0.1:8470, k 20, alpha 3, no peers."""
    options = parse()
    assert options["port"] == "tcp:4000"
    assert options["http"] == "tcp:8470:interface=127.0.0.1"
    assert (options["k"], options["alpha"], options["peers"]) == (20, 3, [])
    assert options["data-dir"] is None


def test_peers_repeat_and_resolve() -> None:
    """--peer repeats; IPv4, [IPv6] and host names become (IP, port) pairs."""
    options = parse("--peer", "127.0.0.1:4000", "-P", "[::1]:4001", "--peer", "localhost:4002")
    assert options["peers"][:2] == [("127.0.0.1", 4000), ("::1", 4001)]
    assert options["peers"][2][1] == 4002
    assert options["peers"][2][0] in {"127.0.0.1", "::1"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:0", "from 1 to 65535"),
        ("127.0.0.1:70000", "from 1 to 65535"),
        ("::1:4000", "expected HOST:PORT"),
        ("no-such-host.invalid:4000", "cannot resolve"),
    ],
)
def test_bad_peers_are_usage_errors(text: str, message: str) -> None:
    """A malformed or unresolvable --peer is a usage error that says what is wrong."""
    with pytest.raises(usage.UsageError, match=message):
        parse_peer(text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "0"], "--k must be from 1 to 64"),
        (["--k", "65"], "--k must be from 1 to 64"),
        (["--alpha", "0"], "must be a finite number above 0"),
        (["--rpc-timeout", "-1"], "must be a finite number above 0"),
        (["--rpc-timeout", "nan"], "must be a finite number above 0, got nan"),
        (["--http-timeout", "inf"], "must be a finite number above 0, got inf"),
        (["--refresh-interval", "soon"], "could not convert"),
        (["--max-value", "0"], "must be a finite number above 0"),
        (["--peer-rate", "0"], r"peer_rate \(--peer-rate\) must be above 0, got 0.0"),
        (["--cool-off", "-5"], r"--cool-off\) must be above 0"),
        (["--max-items", "0"], r"--max-items\) must be above 0"),
        (["--max-per-subnet", "-1"], r"--max-per-subnet\) must be 0 or more"),
        (["--max-items", "many"], "invalid literal"),
        (["--max-listens-per-peer", "0"], r"--max-listens-per-peer\) must be above 0"),
        (["--min-lease", "100", "--max-lease", "50"], r"min_lease \(--min-lease"),
        (["--network", "Two Words"], "a network name is 1 to 64"),
    ],
)
def test_bad_numbers_are_usage_errors(args: list[str], message: str) -> None:
    """Out-of-range or non-numeric values are refused with a clear message."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_help_explains_the_node() -> None:
    """--help text names the common options and says what the node does."""
    text = str(Options())
    options = ("--port", "--peer", "--data-dir", "--http", "--http-host", "--k", "--rpc-timeout")
    for option in options:
        assert option in text
    assert "SQLite" in text
    assert "127.0.0.1" in text


def help_entries() -> dict[str, str]:
    """The option table of ``twistd dht --help``: each long option's entry, whitespace collapsed."""
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in str(Options()).split("\n\n")[0].splitlines()[2:]:
        match = re.match(r"  (?:-\w, |    )--([\w-]+)=?\s+(.*)", line)
        if match:
            current = entries.setdefault(match.group(1), [])
            line = match.group(2)
        current.append(line)
    return {name: " ".join(" ".join(lines).split()) for name, lines in entries.items()}


#: Every option of ``twistd dht``: the parameters, the flags, and those with an ``opt_`` method.
PARAMETERS = cast("list[list[Any]]", Options.optParameters)
OPTION_NAMES = sorted(
    [str(p[0]) for p in PARAMETERS]
    + [str(f[0]) for f in getattr(Options, "optFlags", None) or []]
    + [name[4:].replace("_", "-") for name in dir(Options) if re.fullmatch(r"opt_\w\w+", name)]
)


def test_the_option_list_is_what_twistd_parses() -> None:
    """The options the help test walks are exactly the long options twistd accepts."""
    assert sorted(name.rstrip("=") for name in Options().longOpt) == OPTION_NAMES
    assert set(OPTION_NAMES) == set(help_entries())
    intervals = {name for name in OPTION_NAMES if name.endswith("-interval")}
    assert intervals == {f"{job}-interval" for job in INTERVAL_JOBS}
    assert {"alpha", "max-message", "max-value", "peer", "help"} <= set(OPTION_NAMES)
    assert {spec.name.replace("_", "-") for spec in fields(Limits)} <= set(OPTION_NAMES)


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_help_explains_every_option(name: str) -> None:
    """Each option's --help entry is its own help text, which says more than the option's name,
    and a parameter's entry shows its default."""
    doc = " ".join(Options().docs[name].split())
    words = set(re.findall(r"[a-z]+", doc.lower())) - set(name.split("-"))
    assert len(words) >= 3, f"--{name}: {doc!r} does not say what it does"
    entry = help_entries()[name]
    assert entry.startswith(doc)
    default = next((p[2] for p in PARAMETERS if p[0] == name), None)
    if default is not None:
        assert f"[default: {default}]" in entry


@pytest.mark.parametrize(
    ("endpoint", "leaf"),
    [
        ("tcp:4000", "4000"),
        ("tcp:port=4001:interface=::1", "4001"),
        ("4002", "4002"),
        ("unix:/tmp/x", "unix_tmp_x"),
    ],
)
def test_default_data_dir_is_per_user_and_per_port(
    endpoint: str, leaf: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The default data dir is $XDG_DATA_HOME/txdht/<port>, else ~/.local/share/txdht/<port>."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir(endpoint) == tmp_path / "txdht" / leaf
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir(endpoint) == tmp_path / "home" / ".local" / "share" / "txdht" / leaf


def test_make_service_builds_node_and_http(tmp_path: Path) -> None:
    """makeService gives a node service and an HTTP service; the node listens on start."""
    reactor = MemoryReactorClock()
    options = parse("--port", "tcp:4123", "--data-dir", str(tmp_path), "--http", "tcp:8123")
    root = makeService(options, reactor)
    assert IServiceCollection.providedBy(root)
    services = list(root)
    dht = next(s for s in services if isinstance(s, DHTService))
    assert dht.endpoint == "tcp:4123"
    root.privilegedStartService()
    root.startService()
    assert sorted(port for port, *_ in reactor.tcpServers) == [4123, 8123]
    assert (tmp_path / DATABASE).exists()
    root.stopService()


def test_http_hosts_repeat_and_reach_the_api(tmp_path: Path) -> None:
    """--http-host repeats (lower-cased) and the API answers to those names."""
    options = parse("--data-dir", str(tmp_path), "--http-host", "DHT.lan", "--http-host", "box")
    assert options["http-hosts"] == ["dht.lan", "box"]
    reactor = MemoryReactorClock()
    root = makeService(options, reactor)
    root.privilegedStartService()
    root.startService()
    (site,) = [factory for port, factory, *_ in reactor.tcpServers if port == 8470]
    assert isinstance(site, Site)
    assert site.resource.allowed_hosts == {"localhost", "dht.lan", "box"}
    root.stopService()
    assert parse()["http-hosts"] == []


@pytest.mark.parametrize("name", ["", "dht.lan:8470", "http://dht.lan", "-x", "a b", "dht.lan."])
def test_a_bad_http_host_is_a_usage_error(name: str) -> None:
    """--http-host takes a bare host name; anything else says so."""
    with pytest.raises(usage.UsageError, match="expected a host name"):
        parse("--http-host", name)


def test_identity_is_kept_in_the_data_dir(tmp_path: Path) -> None:
    """Two services on the same data dir have the same node id (the key is saved once)."""
    ids = []
    for _ in range(2):  # one after the other: a data dir has one running node at a time
        root = makeService(
            parse("--data-dir", str(tmp_path), "--http", "none"), MemoryReactorClock()
        )
        dht = next(s for s in root if isinstance(s, DHTService))
        ids.append(dht.node.id)
        assert not any(s.name == "http" for s in root)
        root.startService()
        root.stopService()
    assert ids[0] == ids[1]


def test_http_none_disables_the_api(tmp_path: Path) -> None:
    """--http none starts no HTTP server."""
    reactor = MemoryReactorClock()
    root = makeService(
        parse("--port", "tcp:4124", "--data-dir", str(tmp_path), "--http", "none"), reactor
    )
    root.startService()
    assert [port for port, *_ in reactor.tcpServers] == [4124]
    root.stopService()


def test_damaged_database_is_a_clear_error_at_start(tmp_path: Path) -> None:
    """A damaged database stops the start with one line naming the file, never an empty store."""
    (tmp_path / DATABASE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SystemExit) as caught:
        makeService(parse("--data-dir", str(tmp_path)), MemoryReactorClock())
    message = str(caught.value)
    assert message.startswith("txdht: cannot use the data directory")
    assert DATABASE in message
    assert (tmp_path / DATABASE).read_bytes() == b"this is not sqlite" * 100


def test_unusable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A data dir that is a file is refused with a message naming it."""
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit, match="cannot use the data directory"):
        makeService(parse("--data-dir", str(target)), MemoryReactorClock())


def test_database_is_closed_when_the_service_stops(tmp_path: Path) -> None:
    """After stopService the database is closed and can be opened by the next node."""
    root = makeService(parse("--data-dir", str(tmp_path), "--http", "none"), MemoryReactorClock())
    root.startService()
    root.stopService()
    SQLiteStorage(tmp_path / DATABASE).close()


def test_plugin_is_found_and_points_at_tap() -> None:
    """twistd finds the dht plugin, whose options and service maker are txdht.tap's."""
    from twisted.application.service import IServiceMaker

    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "dht" in makers
    assert makers["dht"].options is Options
    assert IPlugin.providedBy(makers["dht"])
    assert makers["dht"].description == "Run a txdht Kademlia DHT node."


def test_every_limit_is_an_option_with_its_default_in_the_help() -> None:
    """Each field of Limits is a twistd option (with its default), and --help explains it."""
    text = str(Options())
    defaults = Limits()
    for spec in fields(Limits):
        option = "--" + spec.name.replace("_", "-")
        assert option in text
        assert parse()[option[2:]] == getattr(defaults, spec.name)
    assert "Requests a peer may send at once. [default: 100.0]" in " ".join(text.split())
    assert parse()["limits"] == defaults


def test_limits_and_max_value_reach_the_node(tmp_path: Path) -> None:
    """The limits given on the command line are the node's limits."""
    options = parse(
        "--data-dir",
        str(tmp_path),
        "--http",
        "none",
        "--peer-rate",
        "7.5",
        "--max-items",
        "12",
        "--max-per-subnet",
        "0",
        "--max-value",
        "2048",
        "--max-listens",
        "40",
        "--max-listens-per-key",
        "5",
        "--network",
        "lab-7",
    )
    root = makeService(options, MemoryReactorClock())
    node = next(s for s in root if isinstance(s, DHTService)).node
    assert node.engine.limits == Limits(
        peer_rate=7.5, max_items=12, max_per_subnet=0, max_listens=40, max_listens_per_key=5
    )
    assert node.engine.network == "lab-7"
    assert parse()["network"] == "txdht"
    assert node.engine.max_value == 2048
    assert node.engine.routing.max_per_subnet == 0


def test_good_numbers_are_taken() -> None:
    """Valid numbers are converted to their types."""
    options = parse("--alpha", "5", "--rpc-timeout", "2.5", "--k", "8")
    assert (options["alpha"], options["rpc-timeout"], options["k"]) == (5, 2.5, 8)


def test_make_service_defaults_to_the_global_reactor(tmp_path: Path) -> None:
    """Without a reactor argument (as twistd calls it), the global reactor is used."""
    from twisted.internet import reactor

    root = makeService(parse("--data-dir", str(tmp_path), "--http", "none"))
    dht = next(s for s in root if isinstance(s, DHTService))
    assert dht.node.reactor is reactor
    dht.node.engine.storage.close()  # type: ignore[attr-defined]


#: Each housekeeping job, and the engine method it calls first.
INTERVAL_JOBS = {
    "refresh": "refresh_targets",
    "replicate": "replication_jobs",
    "republish": "republish_jobs",
    "expire": "expire",
    "save": "save_contacts",
}


@pytest.mark.parametrize("job", sorted(INTERVAL_JOBS))
def test_each_interval_option_sets_how_often_its_job_runs(
    job: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --JOB-interval 2.5 the service runs that job every 2.5 s of the reactor's clock."""
    reactor = MemoryReactorClock()
    options = parse("--data-dir", str(tmp_path), "--http", "none", f"--{job}-interval", "2.5")
    root = makeService(options, reactor)
    dht = next(s for s in root if isinstance(s, DHTService))
    assert set(INTERVAL_JOBS) == set(JOBS)
    assert dht.intervals == replace(Intervals(), **{job: 2.5})
    runs: dict[str, list[float]] = {name: [] for name in INTERVAL_JOBS}

    def record(name: str, *args: object, **options: object) -> list[object]:
        runs[name].append(reactor.seconds())
        return []

    for name, method in INTERVAL_JOBS.items():
        monkeypatch.setattr(dht.node.engine, method, partial(record, name))
    # Replication's first run falls at a random point of its interval: halfway here, so that
    # with its default hour it cannot fall inside the 10 s pumped for another job's test (with
    # the node's unseeded random number, it did, about once in 360 runs).
    monkeypatch.setattr(dht.node.engine, "jitter", lambda span: span / 2)
    root.startService()
    assert dht.ready  # the first node of a network: the jobs run from the first interval on
    reactor.pump([0.25] * 41)
    # Replication first runs at a random point of its interval, then every interval.
    times = runs[job]
    first = times[0] if job == "replicate" else 2.5
    assert 0 < first <= 2.5
    assert times == pytest.approx([first + 2.5 * n for n in range(len(times))])
    assert len(times) == (4 if job != "replicate" else int((10.25 - first) // 2.5) + 1)
    assert all(not runs[name] for name in INTERVAL_JOBS if name != job)
    root.stopService()
    assert not [call for call in reactor.getDelayedCalls() if call.active()]


def test_ping_after_sets_the_routing_tables_staleness_window(tmp_path: Path) -> None:
    """--ping-after (15 minutes by default) is how long a full bucket's oldest contact must
    be quiet before a newcomer sets off a ping of it: the node's table uses it once started."""
    reactor = MemoryReactorClock()
    options = parse("--data-dir", str(tmp_path), "--http", "none", "--ping-after", "30")
    root = makeService(options, reactor)
    dht = next(s for s in root if isinstance(s, DHTService))
    assert dht.intervals.ping_after == 30.0
    assert Intervals().ping_after == 900.0
    root.startService()
    assert dht.node.engine.routing.ping_after == 30.0
    root.stopService()


def test_the_stale_bucket_threshold_is_the_kademlia_hour_whatever_the_refresh_interval(
    tmp_path: Path,
) -> None:
    """--refresh-interval sets how often idle buckets are looked for, not how long a bucket must
    be idle (an hour) to be refreshed; that threshold has no option."""
    options = parse("--data-dir", str(tmp_path), "--http", "none", "--refresh-interval", "60")
    root = makeService(options, MemoryReactorClock())
    dht = next(s for s in root if isinstance(s, DHTService))
    assert (dht.intervals.refresh, dht.intervals.stale_bucket) == (60.0, REFRESH_INTERVAL)
    assert "stale-bucket" not in Options().docs
    dht.node.engine.storage.close()  # type: ignore[attr-defined]


def test_lookup_paths_sets_how_many_disjoint_paths_each_lookup_takes(tmp_path: Path) -> None:
    """--lookup-paths (the default from the adversary measurements) reaches the node's core;
    zero is refused."""
    options = parse("--data-dir", str(tmp_path), "--http", "none", "--lookup-paths", "3")
    root = makeService(options, MemoryReactorClock())
    dht = next(s for s in root if isinstance(s, DHTService))
    assert dht.node.engine.paths == 3
    assert parse("--data-dir", str(tmp_path))["lookup-paths"] == PATHS
    with pytest.raises(usage.UsageError):
        parse("--data-dir", str(tmp_path), "--lookup-paths", "0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "notaport"], r"--port 'notaport' is not a server endpoint"),
        (["--port", "tcp:abc"], r"--port 'tcp:abc' is not a server endpoint"),
        (["--port", "tcp:4000:bogus=1"], r"is not a server endpoint .*bogus"),
        (["--port", "tcp:70000"], r"--port 'tcp:70000': the port must be from 0 to 65535"),
        (["--port", "unix:/tmp/dht.sock"], r"--port 'unix:/tmp/dht.sock': peers reach a node"),
        (["--port", ""], r"--port '' is not a server endpoint"),
        (["--http", "8470:interface"], r"--http '8470:interface' is not a server endpoint"),
        (["--http", "tcp:99999"], r"--http 'tcp:99999': the port must be from 0 to 65535"),
    ],
)
def test_a_bad_endpoint_is_a_usage_error(args: list[str], message: str) -> None:
    """--port and --http are read as twistd will read them at start, and refused at once with
    what was expected (the data dir, named after the port, is never made for a bad one)."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_endpoints_a_bare_port_and_other_kinds() -> None:
    """A bare port number is tcp:PORT; the HTTP API may listen on any kind of endpoint, the
    node on TCP only; 'none' (any case) disables the API."""
    options = parse("--port", " 4001 ", "--http", "unix:/tmp/txdht-api.sock")
    assert (options["port"], options["http"]) == ("tcp:4001", "unix:/tmp/txdht-api.sock")
    assert parse("--port", "tcp6:4002:interface=\\:\\:1")["port"] == "tcp6:4002:interface=\\:\\:1"
    assert parse("--http", "None")["http"] == "None"


def taken_port(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    """A listening socket on a free loopback port (the caller closes it)."""
    taken = socket.socket(family)
    taken.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    taken.listen()
    return taken


def test_can_listen_refuses_a_taken_port_with_one_line() -> None:
    """A port another socket listens on ends the start with one line naming the option, the
    endpoint and why; a free one passes, and the probe leaves it free."""
    with taken_port() as taken:
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        with pytest.raises(SystemExit) as caught:
            can_listen("http", endpoint)
    assert str(caught.value) == (
        f"txdht: cannot listen on {endpoint} (--http): Address already in use (another node, "
        "or another program, listens there); choose another with --http"
    )
    can_listen("port", endpoint)  # free again: passes, and binds nothing that stays
    can_listen("port", endpoint)


def test_can_listen_says_why_an_address_cannot_be_had() -> None:
    """An interface this machine does not have, or cannot resolve, is named with the reason."""
    with pytest.raises(SystemExit, match=r"\(--port\): Cannot assign requested address"):
        can_listen("port", "tcp:4000:interface=192.0.2.1")  # TEST-NET-1: never local
    with pytest.raises(SystemExit, match=r"cannot listen on tcp:4000:interface=nohost.invalid"):
        can_listen("port", "tcp:4000:interface=nohost.invalid")


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 here")
def test_can_listen_on_ipv6() -> None:
    """A tcp6 endpoint is tried on IPv6."""
    try:
        taken = taken_port(socket.AF_INET6)
    except OSError:  # pragma: no cover - IPv6 is compiled in but has no ::1 here
        pytest.skip("no ::1 here")
    with taken:
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match="Address already in use"):
            can_listen("port", f"tcp6:{port}:interface=\\:\\:1")


def test_can_listen_leaves_other_endpoints_alone(tmp_path: Path) -> None:
    """Port 0 (any free port) and endpoints that are not TCP are not tried."""
    can_listen("port", "tcp:0:interface=127.0.0.1")
    can_listen("http", f"unix:{tmp_path / 'api.sock'}")
    assert not (tmp_path / "api.sock").exists()


def test_make_service_tries_the_ports_before_the_data_dir(tmp_path: Path) -> None:
    """As twistd calls it (no reactor given), makeService tries both ports first: a taken one
    stops it before the data dir or its database is made. Given a reactor, it does not."""
    with taken_port() as taken:
        port = taken.getsockname()[1]
        for args in (
            ["--port", f"tcp:{port}:interface=127.0.0.1", "--http", "none"],
            ["--port", "tcp:0:interface=127.0.0.1", "--http", f"tcp:{port}:interface=127.0.0.1"],
        ):
            data_dir = tmp_path / "node"
            options = parse(*args, "--data-dir", str(data_dir))
            with pytest.raises(SystemExit, match=f"cannot listen on tcp:{port}"):
                makeService(options)
            with pytest.raises(SystemExit, match=f"cannot listen on tcp:{port}"):
                makeService(options, MemoryReactorClock(), check_ports=True)
            assert not data_dir.exists()
            root = makeService(options, MemoryReactorClock())  # a reactor given: not tried
            assert (data_dir / DATABASE).exists()
            root.startService()  # on the memory reactor: nothing is bound
            root.stopService()  # and the database is closed
            shutil.rmtree(data_dir)


def test_version_is_txdhts(capsys: pytest.CaptureFixture[str]) -> None:
    """``twistd dht --version`` prints txdht's version and exits 0."""
    from txdht import __version__

    with pytest.raises(SystemExit) as caught:
        parse("--version")
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"txdht {__version__}\n"


def test_a_data_dir_has_one_running_node(tmp_path: Path) -> None:
    """A second node on a data dir another running node holds stops with one line (and
    leaves the first's database alone); once the first has stopped, it starts."""
    options = parse("--data-dir", str(tmp_path), "--http", "none")
    first = makeService(options, MemoryReactorClock())
    first.startService()
    with pytest.raises(SystemExit) as caught:
        makeService(options, MemoryReactorClock())
    assert str(caught.value) == (
        f"txdht: the data directory {tmp_path} is in use by another running node: give each "
        "node its own data directory"
    )
    first.stopService()
    second = makeService(options, MemoryReactorClock())
    second.startService()
    second.stopService()


def test_a_database_that_cannot_be_opened_lets_the_data_dir_go(tmp_path: Path) -> None:
    """When the database is refused, the lock taken on the data dir is let go with it."""
    (tmp_path / DATABASE).write_bytes(b"not sqlite" * 100)
    options = parse("--data-dir", str(tmp_path), "--http", "none")
    for _ in range(2):  # the second is refused for the database again, not for the lock
        with pytest.raises(SystemExit, match="not a txdht database"):
            makeService(options, MemoryReactorClock())
