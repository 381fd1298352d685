"""A hostile node as a real process, for tests/test_hostile_processes.py.

``python -m tests.hostile_node --kind KIND --port PORT --peer HOST:PORT [--ally PORT ...]``
runs a Twisted node that joins the network honestly (so it holds a place in honest routing
tables) and answers pings honestly, but serves the rest of its requests as the simulator's
adversary of the same kind does (``txdht/sim/adversary.py``, docs/reliability.md, "Hostile
nodes"), speaking the protocol correctly throughout:

- ``far``: answers every ``find_node`` and ``find_value``, and every store that asks for
  contacts, with k made-up contacts nearer the target than any real node, at addresses that
  refuse connections (sockets this process binds and never listens on); acknowledges stores and
  keeps nothing; never returns a value.
- ``collude``: answers the same requests with its allies (the other hostile processes, by
  port, as its routing table knows them) nearest the target, and nothing else; acknowledges
  stores and keeps nothing; never returns a value.
- ``stale``: routes honestly, keeps the first version of each key it is sent, acknowledges the
  later ones without keeping them, and returns the old one to every ``find_value``.

It runs no housekeeping (no refresh, replication or republishing of its own). Each hostile
answer is logged as a line ``hostile: <kind> answered <type>``, so that the test can see the
attack was made. It stops on SIGTERM or SIGKILL.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
from typing import Any

from txdht.core.commands import Command
from txdht.core.ids import Contact, id_to_hex
from txdht.core.messages import FindNode, FindValue, Message, Nodes, Ok, Ping, Store
from txdht.node import Node

KINDS = ("far", "collude", "stale")
#: Made-up ids differ from the target in the low bits only: nearer it than any real node.
NEAR_BITS = 496


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, required=True, help="DHT port on 127.0.0.1")
    parser.add_argument("--peer", type=_address, action="append", default=[], help="HOST:PORT")
    parser.add_argument("--ally", type=int, action="append", default=[], help="an ally's port")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    kind, rng, k = args.kind, random.Random(args.seed), args.k
    node = Node(reactor, k=k)
    engine = node.engine
    # Bound and never listening: a connection to one of these is refused at once.
    dead = [socket.socket() for _ in range(k)]
    for sock in dead:
        sock.bind(("127.0.0.1", 0))
    dead_ports = [sock.getsockname()[1] for sock in dead]
    allies = set(args.ally)
    honest = engine.request_received

    def made_up(target: int) -> tuple[Contact, ...]:
        return tuple(
            Contact(target ^ (rng.getrandbits(NEAR_BITS) | 1), "127.0.0.1", port)
            for port in dead_ports
        )

    def colluders(target: int) -> tuple[Contact, ...]:
        known = [c for c in engine.routing.contacts() if c.port in allies]
        known.sort(key=lambda c: c.id ^ target)
        return tuple(known[:k])

    def contacts(target: int) -> tuple[Contact, ...]:
        return made_up(target) if kind == "far" else colluders(target)

    def answer(request: Message) -> Message | None:
        """The hostile answer to ``request``; None: answer it honestly."""
        if kind == "stale":
            if isinstance(request, Store) and engine.get(request.item.key, engine.now):
                return engine.message(Ok, request.rid)  # a later version, not kept
            return None
        if isinstance(request, FindNode):
            return engine.message(Nodes, request.rid, nodes=contacts(request.target))
        if isinstance(request, FindValue):
            return engine.message(Nodes, request.rid, nodes=contacts(request.key))
        if isinstance(request, Store):
            named = contacts(request.item.key) if request.closest else None
            return engine.message(Ok, request.rid, nodes=named)
        return None

    def hostile(
        request: Message, host: str, port: int, now: float, link: object = None
    ) -> tuple[Message | None, list[Command]]:
        if not isinstance(request, Ping):
            engine.now = now
            reply = answer(request)
            if reply is not None:
                print(f"hostile: {kind} answered {request.TYPE}", flush=True)
                return reply, engine.settle()
        return honest(request, host, port, now, link)

    engine.request_received = hostile  # type: ignore[method-assign]

    def joined(count: int) -> None:
        print(f"hostile: id {id_to_hex(engine.id)}", flush=True)
        print(f"hostile: {kind} node joined, {count} contacts", flush=True)

    def failed(failure: Any) -> None:
        print(f"hostile: {kind} node failed to start: {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    d = node.listen(f"tcp:{args.port}:interface=127.0.0.1")
    d.addCallback(lambda _: node.join(args.peer))
    d.addCallbacks(joined, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
