"""``twistd dht``: the command line options and the service tree of a node.

The plugin file (twisted/plugins/txdht_plugin.py) is one line that points here; Twisted imports
this module only when ``dht`` is the command, so ``twistd --help`` stays fast. Nothing here
touches the global reactor unless ``makeService`` is called without one (as twistd does).
"""

from __future__ import annotations

import errno
import math
import os
import re
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.python import usage

from txdht.core.items import MAX_VALUE_BYTES, Identity
from txdht.core.limits import DEFAULT_MAX_MESSAGE, DEFAULT_RPC_TIMEOUT, Limits, limit_options
from txdht.core.lookup import PATHS
from txdht.core.messages import DEFAULT_NETWORK, MAX_CONTACTS, check_network
from txdht.core.schedule import Intervals, interval_options
from txdht.datadir import DataDirInUse, DataDirLock
from txdht.node import Address, Node
from txdht.service import DHTService
from txdht.sqlite import SQLiteStorage, StorageError
from txdht.web import DEFAULT_TIMEOUT, APIResource, api_site

__all__ = ["Options", "makeService"]

DEFAULT_PORT = "tcp:4000"
DEFAULT_HTTP = "tcp:8470:interface=127.0.0.1"
#: The database file in the data directory.
DATABASE = "node.sqlite3"


def default_data_dir(endpoint: str) -> Path:
    """The per-user data directory of a node: one subdirectory per listening endpoint."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    match = re.match(r"(?:tcp6?:)?(?:port=)?(\d+)", endpoint)
    name = match.group(1) if match else re.sub(r"[^A-Za-z0-9.-]+", "_", endpoint)
    return Path(base) / "txdht" / name


def _positive(kind: type[float] | type[int]) -> Any:
    def coerce(text: str) -> float | int:
        value = kind(text)
        if not 0 < value < math.inf:  # (NaN too: a timer of NaN never fires)
            raise ValueError(f"must be a finite number above 0, got {text}")
        return value

    coerce.coerceDoc = "Must be above 0."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """The options of ``twistd dht``."""

    synopsis = "[--port ENDPOINT] [--peer HOST:PORT ...] [--data-dir DIR] [--http ENDPOINT]"
    longdesc = (
        "Run a txdht node: a Kademlia DHT peer that stores and serves signed items for the "
        "network. Without --peer it starts a new network, or rejoins through the contacts saved "
        "in its data directory. Items, the node's identity and its contacts live in an SQLite "
        "database in the data directory, so a restarted node keeps its id and its items. "
        "The HTTP JSON API (used by the `txdht` command) listens on 127.0.0.1 by default: "
        "anyone who can reach it can store through this node."
    )
    optParameters = [
        [
            "port",
            "p",
            DEFAULT_PORT,
            "Endpoint to listen on for peers: tcp:PORT (or just PORT) on every interface, "
            "tcp:PORT:interface=ADDRESS on one, tcp6:PORT:interface=ADDRESS for IPv6.",
        ],
        [
            "data-dir",
            "d",
            None,
            "Where the node keeps its database [default: "
            "$XDG_DATA_HOME/txdht/PORT, else ~/.local/share/txdht/PORT].",
        ],
        [
            "http",
            None,
            DEFAULT_HTTP,
            "Endpoint of the HTTP JSON API (any Twisted server endpoint: tcp:PORT:interface="
            "ADDRESS, unix:PATH), or 'none' to disable it.",
        ],
        [
            "http-timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds a get or put through the HTTP API may take before it answers 504 "
            "(a request may ask for another with ?timeout=).",
            _positive(float),
        ],
        ["k", "k", 20, f"Bucket size and replicas per item (1 to {MAX_CONTACTS}).", int],
        ["alpha", "a", 3, "Requests in flight per lookup.", _positive(int)],
        [
            "lookup-paths",
            None,
            PATHS,
            "Disjoint paths each lookup takes (S/Kademlia; 1: plain Kademlia): more paths "
            "resist hostile nodes that steer lookups, at about that many times the messages.",
            _positive(int),
        ],
        [
            "rpc-timeout",
            None,
            DEFAULT_RPC_TIMEOUT,
            "Seconds to wait for a peer's reply.",
            _positive(float),
        ],
        [
            "max-message",
            None,
            DEFAULT_MAX_MESSAGE,
            "Longest message accepted, in bytes.",
            _positive(int),
        ],
        *(
            [name, None, default, text, _positive(float)]
            for name, default, text, _ in interval_options()
        ),
        ["max-value", None, MAX_VALUE_BYTES, "Largest value stored, in bytes.", _positive(int)],
        [
            "network",
            None,
            DEFAULT_NETWORK,
            "The network's name: nodes of other networks are refused, and never added "
            "(1 to 64 of a-z, 0-9, '.', '_', '-').",
            check_network,
        ],
        *([name[2:], None, default, text, kind] for name, kind, default, text in limit_options()),
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["peers"] = []
        self["http-hosts"] = []

    def opt_version(self) -> None:
        """Print txdht's version and exit (twistd --version, before dht, prints Twisted's)."""
        from txdht import __version__

        print(f"txdht {__version__}")
        raise SystemExit(0)

    def opt_peer(self, value: str) -> None:
        """A node to join through, as HOST:PORT ([::1]:PORT for IPv6); repeat for several."""
        self["peers"].append(parse_peer(value))

    opt_P = opt_peer

    def opt_http_host(self, value: str) -> None:
        """A host name the HTTP API answers to, besides IP addresses and localhost (which it
        always does); repeat for several. Requests naming any other host are refused, against
        DNS rebinding by web pages: give the machine's name when --http listens beyond
        loopback and clients use that name."""
        name = value.strip().lower()
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", name):
            raise usage.UsageError(f"--http-host {value!r}: expected a host name, like dht.lan")
        self["http-hosts"].append(name)

    def postOptions(self) -> None:
        """Check what one option alone cannot, and the endpoints (before anything is made on
        disk for them: the data directory is named after the port)."""
        self["port"] = check_endpoint("port", self["port"], tcp_only=True)
        if http_enabled(self):
            self["http"] = check_endpoint("http", self["http"], tcp_only=False)
        if not 1 <= self["k"] <= MAX_CONTACTS:
            raise usage.UsageError(f"--k must be from 1 to {MAX_CONTACTS}")
        try:
            self["limits"] = Limits(
                **{spec.name: self[spec.name.replace("_", "-")] for spec in fields(Limits)}
            )
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def check_endpoint(option: str, text: str, *, tcp_only: bool) -> str:
    """``text`` as a server endpoint string (a bare port number is ``tcp:PORT``), checked the
    way ``serverFromString`` will read it at start; a ``UsageError`` naming ``--option``
    otherwise. With ``tcp_only`` it must be TCP: peers reach a node at a host and a port."""
    text = text.strip()
    if text.isdigit():
        text = f"tcp:{text}"
    try:
        endpoint = _parse(text)
    except (ValueError, TypeError, ImportError) as e:
        raise usage.UsageError(
            f"--{option} {text!r} is not a server endpoint ({e}); expected tcp:PORT, "
            "tcp:PORT:interface=ADDRESS or tcp6:PORT:interface=ADDRESS"
        ) from None
    if isinstance(endpoint, _TCP):
        if not 0 <= endpoint._port <= 65535:
            raise usage.UsageError(f"--{option} {text!r}: the port must be from 0 to 65535")
    elif tcp_only:
        raise usage.UsageError(
            f"--{option} {text!r}: peers reach a node over TCP; expected tcp:PORT, "
            "tcp:PORT:interface=ADDRESS or tcp6:PORT:interface=ADDRESS"
        )
    return text


def http_enabled(options: Options) -> bool:
    """Whether ``--http`` asks for the HTTP API (anything but ``none``, in any case)."""
    return bool(options["http"].strip().lower() != "none")


#: The TCP server endpoints: what a node listens for peers on, and what ``can_listen`` tries.
_TCP = TCP4ServerEndpoint | TCP6ServerEndpoint


def _parse(text: str) -> Any:
    """The server endpoint ``text`` describes (``serverFromString``'s errors otherwise).
    Parsing builds the endpoint object only; the reactor is used when it listens."""
    return serverFromString(cast(Any, None), text)


def parse_peer(text: str) -> Address:
    """``HOST:PORT`` as an (IP address, port) pair; a host name is resolved once, here."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise usage.UsageError(f"--peer {text!r}: expected HOST:PORT (or [IPv6]:PORT)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise usage.UsageError(f"--peer {text!r}: the port must be from 1 to 65535")
    try:
        info = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as e:
        raise usage.UsageError(f"--peer {text!r}: cannot resolve {host!r}: {e}") from None
    return (str(info[0][4][0]), port)


class _ClosingService(Service):
    """Closes the database, and lets the data directory go, when the node's service tree
    stops."""

    def __init__(self, storage: SQLiteStorage, lock: DataDirLock) -> None:
        self.storage = storage
        self.lock = lock

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.storage.close()
        self.lock.release()


def can_listen(option: str, text: str) -> None:
    """Try to bind the address of the TCP endpoint ``text`` (from ``--option``), then let it
    go: ``SystemExit`` with one line saying which option and why when the port is taken, not
    allowed, or on an address this machine does not have. ``twistd`` makes the service before
    it detaches, and listens after (where a failure is a traceback in the log, and a daemon's
    launcher gets its first 100 bytes), so this is where a clear refusal can be given."""
    endpoint = _parse(text)
    if not isinstance(endpoint, _TCP) or not endpoint._port:
        return  # another kind of endpoint, or any free port
    v6 = isinstance(endpoint, TCP6ServerEndpoint)
    interface = endpoint._interface or ("::" if v6 else "")
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's ports do
        try:
            probe.bind((interface, endpoint._port))
        except OSError as e:
            why = e.strerror or str(e)
            if e.errno == errno.EADDRINUSE:
                why += " (another node, or another program, listens there)"
            raise SystemExit(
                f"txdht: cannot listen on {text} (--{option}): {why}; choose another with "
                f"--{option}"
            ) from None


def makeService(
    options: Options, reactor: Any = None, check_ports: bool | None = None
) -> MultiService:
    """The service tree of one node: the DHT node and, unless disabled, its HTTP API.

    With ``check_ports`` (by default, when no reactor is given: as ``twistd`` calls it), the
    TCP ports are tried first (``can_listen``), before the data directory is made."""
    if check_ports is None:
        check_ports = reactor is None
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if check_ports:
        can_listen("port", options["port"])
        if http_enabled(options):
            can_listen("http", options["http"])
    data_dir = Path(options["data-dir"] or default_data_dir(options["port"]))
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = DataDirLock(data_dir)
    except DataDirInUse as e:
        raise SystemExit(f"txdht: {e}") from None
    except OSError as e:
        raise SystemExit(f"txdht: cannot use the data directory {data_dir}: {e}") from None
    try:
        storage = SQLiteStorage(data_dir / DATABASE)
    except StorageError as e:
        lock.release()
        raise SystemExit(f"txdht: cannot use the data directory {data_dir}: {e}") from None
    raw = storage.identity()
    identity = Identity.from_private_bytes(raw) if raw is not None else Identity.generate()
    if raw is None:
        storage.set_identity(identity.private_bytes())
    node = Node(
        reactor,
        identity=identity,
        storage=storage,
        k=options["k"],
        alpha=options["alpha"],
        paths=options["lookup-paths"],
        rpc_timeout=options["rpc-timeout"],
        max_message=options["max-message"],
        max_value=options["max-value"],
        limits=options["limits"],
        network=options["network"],
    )
    intervals = Intervals(**{field: options[name] for name, _, _, field in interval_options()})
    root = MultiService()
    # The first child stops last: the database closes after the node has stopped using it.
    _ClosingService(storage, lock).setServiceParent(root)  # type: ignore[no-untyped-call]
    dht = DHTService(node, endpoint=options["port"], seeds=options["peers"], intervals=intervals)
    dht.setServiceParent(root)  # type: ignore[no-untyped-call]
    if http_enabled(options):
        endpoints = {"dht": options["port"], "http": options["http"]}
        api = APIResource(
            node,
            endpoints,
            allowed_hosts=options["http-hosts"],
            timeout=options["http-timeout"],
        )
        http = strports.service(options["http"], api_site(api), reactor=reactor)
        http.setServiceParent(root)
    return root
