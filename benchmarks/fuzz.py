"""Fuzz targets for atheris: ``python -m benchmarks.fuzz TARGET --runs N``.

Targets:

- ``framer``: any bytes, cut anywhere, into the netstring decoder: it never raises, it only
  sets ``error``; what it decodes from a valid prefix is the same however the bytes are cut.
- ``codec``: any bytes into ``decode``: a ``Message`` or a ``ProtocolError``, nothing else; a
  decoded message encodes and decodes to itself.
- ``node``: any bytes from a new peer into a running Twisted node (on the in-memory network):
  nothing escapes, nothing is logged as an unhandled error, the node still answers a ping
  from another node and still holds its item.

Install atheris (``pip install atheris``) to run them; each run prints atheris's statistics.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from txdht.core.errors import ProtocolError
    from txdht.core.framing import NetstringDecoder
    from txdht.core.messages import decode, encode

LIMIT = 4096


def framer(data: bytes) -> None:
    """Cut ``data`` in two at a fuzzed place; both ways must agree and never raise."""
    if not data:
        return
    payload = data[1:]
    cut = data[0] % (len(payload) + 1)
    whole, pieces = NetstringDecoder(LIMIT), NetstringDecoder(LIMIT)
    one = whole.feed(payload)
    two = pieces.feed(payload[:cut]) + pieces.feed(payload[cut:])
    assert one == two, (one, two)
    assert (whole.error is None) == (pieces.error is None)


def codec(data: bytes) -> None:
    """Any payload decodes to a message that round-trips, or raises ProtocolError."""
    try:
        message = decode(data)
    except ProtocolError:
        return
    assert decode(encode(message)) == message


def _node_target() -> Callable[[bytes], None]:
    from twisted.logger import globalLogPublisher

    from txdht.core.items import blob
    from txdht.core.messages import Ping, Pong
    from txdht.testing import MemoryNetwork

    net = MemoryNetwork()
    node, other = net.create(2)
    item = blob(b"must survive")
    node.engine.store(item, 1e9, 0.0)
    failures: list[object] = []
    globalLogPublisher.addObserver(
        lambda event: failures.append(event) if event.get("log_failure") else None
    )
    count = [0]

    def target(data: bytes) -> None:
        raw = net.open_raw(node)
        raw.send(data)
        net.flush()
        raw.transport.loseConnection()  # type: ignore[union-attr]
        net.flush()
        assert not failures, failures
        count[0] += 1
        if count[0] % 100 == 0:
            assert isinstance(net.run(other.call(("127.0.0.1", node.port), Ping)), Pong)
            assert node.engine.get(item.key, net.clock.seconds()) == item

    return target


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "framer": lambda: framer,
    "codec": lambda: codec,
    "node": _node_target,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs of every message type, to start the fuzzer from (framed where needed)."""
    from txdht.core.framing import netstring
    from txdht.core.ids import Contact
    from txdht.core.items import Identity, blob
    from txdht.core.messages import Error, FindNode, FindValue, Nodes, Ok, Ping, Pong, Store, Value

    item = Identity.from_private_bytes(bytes(32)).sign("name", b"value", 3)
    head = {"rid": 7, "sender": 12345, "port": 4000}
    messages = [
        Ping(**head),
        Pong(**head),
        Ok(**head),
        Store(**head, item=item, ttl=60.0),
        Store(**head, item=blob(b"x"), ttl=1.0, cas=2),
        Store(**head, item=blob(b"y"), ttl=5.0, replica=True, closest=True),
        Ok(**head, nodes=(Contact(5, "127.0.0.1", 4001),)),
        FindNode(**head, target=99),
        FindValue(**head, key=item.key),
        Nodes(**head, nodes=(Contact(5, "127.0.0.1", 4001), Contact(6, "::1", 4002))),
        Value(**head, item=item),
        Error(**head, code=201, message="stale"),
    ]
    encoded = [encode(m) for m in messages]
    if target == "codec":
        return encoded
    framed = [netstring(e) for e in encoded]
    return (
        [bytes([i * 7 % 256]) + f for i, f in enumerate(framed)] if target == "framer" else framed
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the options and fuzz one target, starting from a corpus of valid messages."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--runs", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--corpus", help="corpus directory (default: a new one, seeded)")
    args, rest = parser.parse_known_args(argv)
    corpus = args.corpus or tempfile.mkdtemp(prefix=f"txdht-fuzz-{args.target}-")
    for i, seed in enumerate(seeds(args.target)):
        Path(corpus, f"seed-{i}").write_bytes(seed)
    target = TARGETS[args.target]()
    atheris.Setup([sys.argv[0], f"-runs={args.runs}", *rest, corpus], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
