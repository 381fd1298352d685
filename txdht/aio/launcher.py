"""``python -m txdht.aio``: run a native asyncio node until SIGINT or SIGTERM.

It keeps its items, identity and contacts in SQLite in ``--data-dir`` (like ``twistd dht``), so a
restarted node keeps its id and rejoins through its saved contacts when no ``--peer`` is given.
Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import math
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

from txdht.aio.node import DEFAULT_RPC_TIMEOUT, Node, run
from txdht.core.arguments import check_count, check_seconds
from txdht.core.items import MAX_VALUE_BYTES, Identity
from txdht.core.limits import Limits, limit_options
from txdht.core.lookup import PATHS
from txdht.core.messages import DEFAULT_NETWORK, MAX_CONTACTS, check_network
from txdht.core.schedule import Intervals, interval_options
from txdht.datadir import DataDirInUse, DataDirLock
from txdht.sqlite import SQLiteStorage, StorageError

__all__ = ["main", "parse_args"]

log = logging.getLogger("txdht.aio")


def _peer(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _network(text: str) -> str:
    try:
        return check_network(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The launcher's options."""
    parser = argparse.ArgumentParser(
        prog="python -m txdht.aio",
        description="Run a txdht node on asyncio (the native twin of `twistd dht`).",
    )
    parser.add_argument(
        "--port", type=int, default=4000, help="TCP port to listen on (default 4000)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--peer",
        type=_peer,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a node to join through; repeat for several (default: the saved contacts)",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="where the database lives")
    parser.add_argument("--k", type=int, default=20, help="bucket size and replicas (default 20)")
    parser.add_argument("--alpha", type=int, default=3, help="lookup parallelism (default 3)")
    parser.add_argument(
        "--lookup-paths",
        type=int,
        default=PATHS,
        help="disjoint paths each lookup takes (S/Kademlia; 1: plain Kademlia): more paths "
        f"resist hostile nodes, at about that many times the messages (default {PATHS})",
    )
    parser.add_argument(
        "--rpc-timeout", type=float, default=DEFAULT_RPC_TIMEOUT, help="seconds to wait for a reply"
    )
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="the event loop to run on"
    )
    parser.add_argument(
        "--max-value", type=int, default=MAX_VALUE_BYTES, help="largest value stored, in bytes"
    )
    parser.add_argument(
        "--network",
        type=_network,
        default=DEFAULT_NETWORK,
        help="the network's name: nodes of other networks are refused, and never added "
        f"(default {DEFAULT_NETWORK})",
    )
    timing = parser.add_argument_group("housekeeping intervals, in seconds")
    for name, seconds, text, field in interval_options():
        timing.add_argument(
            f"--{name}",
            dest=field,
            type=float,
            default=seconds,
            help=f"{text} (default {seconds:g})",
        )
    limits = parser.add_argument_group("limits on what peers may ask (docs/security.md)")
    for name, kind, default, text in limit_options():
        limits.add_argument(name, type=kind, default=default, help=f"{text} (default {default})")
    args = parser.parse_args(argv)
    try:
        args.limits = Limits(**{spec.name: getattr(args, spec.name) for spec in fields(Limits)})
    except ValueError as e:
        parser.error(str(e))
    if args.max_value < 1:
        parser.error("--max-value must be above 0")
    if args.lookup_paths < 1:
        parser.error("--lookup-paths must be at least 1")
    try:  # the core's checks of the same settings, named as options
        check_count("--port", args.port, 0, 65535)
        check_count("--k", args.k, 1, MAX_CONTACTS)
        check_count("--alpha", args.alpha)
        check_seconds("--rpc-timeout", args.rpc_timeout)
    except ValueError as e:
        parser.error(str(e))
    options = interval_options()
    for name, _, _, field in options:
        if not 0 < getattr(args, field) < math.inf:
            parser.error(f"--{name} must be a finite number of seconds above 0")
    args.intervals = Intervals(**{field: getattr(args, field) for _, _, _, field in options})
    return args


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    """Run one node until ``stop`` is set (or SIGINT/SIGTERM arrives)."""
    args.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(args.data_dir)  # one running node per data directory
    try:
        storage = SQLiteStorage(args.data_dir / "node.sqlite3")
    except BaseException:
        lock.release()
        raise
    try:
        raw = storage.identity()
        identity = Identity.from_private_bytes(raw) if raw else Identity.generate()
        storage.set_identity(identity.private_bytes())
        node = Node(
            identity=identity,
            storage=storage,
            k=args.k,
            alpha=args.alpha,
            paths=args.lookup_paths,
            rpc_timeout=args.rpc_timeout,
            max_value=args.max_value,
            limits=args.limits,
            network=args.network,
        )
        await node.start(args.host, args.port)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        # Signal handlers can only be set in the main thread (tests run serve() in others).
        in_main_thread = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGTERM) if in_main_thread else ()
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        log.info("node %s listens on %s:%d", node.id[:16], args.host, node.port)
        node.serve(args.peer, args.intervals)
        await stop.wait()
        log.info("stopping")
        for signum in signals:
            loop.remove_signal_handler(signum)
        await node.stop()
    finally:
        storage.close()
        lock.release()


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the node; the exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.loop == "uvloop":
        # Before serve() makes a coroutine that run() could not start (and Python would warn
        # that it was never awaited).
        try:
            importlib.import_module("uvloop")
        except ImportError as e:
            print(
                f"txdht: --loop uvloop needs uvloop ({e}): pip install 'txdht[uvloop]'",
                file=sys.stderr,
            )
            return 1
    try:
        run(serve(args), loop=args.loop)
    except (StorageError, OSError, DataDirInUse) as e:
        print(f"txdht: {e}", file=sys.stderr)
        return 1
    return 0
