"""docs/protocol.md, decision by decision, against the Twisted node and the asyncio twin.

Each test is one decision of the page, named for it, and runs against both implementations
over real loopback TCP. The tests talk to a node as a client written from the page alone
would: they write JSON objects in netstrings (signing items as the page says, with
``cryptography`` rather than txdht's own ``Identity``), read the netstrings that come back with
plain ``json``, and check those objects. Where a decision is about what a node asks of its
peers (lookups, read repair, the items it pushes to a newcomer), the test plays the peers on
raw connections of its own.

Each implementation lives in its own concurrency world, so a ``Kit`` makes its nodes and its
raw connections and does its waiting: the Twisted node on whatever reactor the test process
runs, the asyncio twin on a loop of its own in a worker thread. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from txdht.core.errors import ProtocolError
from txdht.core.framing import NetstringDecoder, netstring
from txdht.core.limits import Limits
from txdht.core.messages import Ping

KINDS = ["twisted", "aio"]
#: How long a test waits for what it expects (messages, a closed connection, a node's work).
WAIT = 5.0
#: How long a test watches a connection to see that nothing (more) comes back.
QUIET = 0.3
#: The step of every polling wait.
STEP = 0.01
#: Ids the test's clients and peers send as theirs (the page: 128 lowercase hex digits).
CLIENT = "c1" * 64
#: The error codes of the page's table, by name.
MALFORMED, BAD_VERSION, UNKNOWN_TYPE, MISSING_FIELD, BAD_FIELD = 100, 101, 102, 103, 104
BAD_SIGNATURE, STALE_SEQUENCE, VALUE_TOO_LARGE, STORAGE_FULL, CAS_MISMATCH = (
    200,
    201,
    203,
    204,
    205,
)
RATE_LIMITED = 300
Scenario = Callable[["Kit"], Coroutine[Any, Any, None]]


# -- the client's side of the page ---------------------------------------------------------------


def b64(data: bytes) -> str:
    """Bytes as the page writes them: standard base64, padded."""
    return base64.b64encode(data).decode("ascii")


def message(kind: str, rid: Any = 1, sender: str = CLIENT, port: Any = 0, **body: Any) -> bytes:
    """A payload: the envelope (v 1) and ``body``, compact JSON (any rid and port, as a
    client may write them)."""
    obj = {"v": 1, "type": kind, "rid": rid, "sender": sender, "port": port, **body}
    return json.dumps(obj, separators=(",", ":")).encode()


def peer_id(number: int) -> str:
    """The id a played peer number ``number`` claims: 128 hex digits."""
    return hashlib.sha512(b"peer %d" % number).hexdigest()


def blob(value: bytes) -> dict[str, Any]:
    """A blob item."""
    return {"value": b64(value)}


def signed(key: Ed25519PrivateKey, name: str, seq: int, value: bytes) -> dict[str, Any]:
    """A mutable item signed as the page says: Ed25519 over the tagged, length-prefixed
    name, the 8-byte seq and the value."""
    raw = name.encode()
    payload = b"txdht-item-v1\x00" + len(raw).to_bytes(2, "big") + raw
    payload += seq.to_bytes(8, "big") + value
    public = key.public_key().public_bytes_raw()
    signature = key.sign(payload)
    return {
        "value": b64(value),
        "public_key": b64(public),
        "name": name,
        "seq": seq,
        "signature": b64(signature),
    }


def key_of(item: dict[str, Any]) -> str:
    """Where ``item`` lives: sha512(value) for a blob, sha512(public key || name) otherwise."""
    if "public_key" in item:
        data = base64.b64decode(item["public_key"]) + item["name"].encode()
    else:
        data = base64.b64decode(item["value"])
    return hashlib.sha512(data).hexdigest()


OWNER = Ed25519PrivateKey.from_private_bytes(b"o" * 32)


class Wire:
    """One raw connection: payloads out as netstrings, netstrings in as JSON objects."""

    def __init__(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        self.sleep = sleep
        self.decoder = NetstringDecoder(1 << 21)
        #: Every object received, in order.
        self.received: list[dict[str, Any]] = []
        self.lost = False
        self.write: Callable[[bytes], None] = lambda data: None
        self.close: Callable[[], None] = lambda: None
        self._taken = 0

    def closed(self) -> bool:
        """Whether the connection has closed."""
        return self.lost

    def feed(self, data: bytes) -> None:
        """Bytes arrived."""
        self.received += [json.loads(payload) for payload in self.decoder.feed(data)]
        assert self.decoder.error is None, self.decoder.error

    def send(self, *payloads: bytes) -> None:
        """Write ``payloads``, framed, in one write."""
        self.write(b"".join(netstring(payload) for payload in payloads))

    async def until(self, check: Callable[[], bool], timeout: float = WAIT) -> bool:
        """Wait (bounded) until ``check()`` holds; whether it does."""
        for _ in range(int(timeout / STEP)):
            if check():
                return True
            await self.sleep(STEP)
        return check()

    async def messages(self, count: int) -> list[dict[str, Any]]:
        """What arrived once ``count`` objects have, the connection closed, or WAIT passed;
        then QUIET longer, to catch anything more."""
        await self.until(lambda: len(self.received) >= count or self.lost)
        await self.sleep(QUIET)
        return list(self.received)

    async def take(self, kind: str) -> dict[str, Any]:
        """The next object of type ``kind`` (waiting for it, bounded); the ones before it are
        passed over."""

        def found() -> bool:
            return any(m["type"] == kind for m in self.received[self._taken :])

        assert await self.until(found), f"no {kind} came: {self.received[self._taken :]}"
        while self.received[self._taken]["type"] != kind:
            self._taken += 1
        self._taken += 1
        return self.received[self._taken - 1]

    async def ask(self, payload: bytes) -> dict[str, Any]:
        """Send one request and return its one answer."""
        before = len(self.received)
        self.send(payload)
        assert await self.until(lambda: len(self.received) > before), "no answer came"
        return self.received[before]


def codes(received: list[dict[str, Any]]) -> list[tuple[str, int, int | None]]:
    """(type, rid, code) of each object received (code None when it is no error)."""
    return [(m["type"], m["rid"], m.get("code")) for m in received]


# -- the two implementations ------------------------------------------------------------------


class Kit:
    """What a scenario needs from one implementation."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.wires: list[Wire] = []

    async def node(self, **options: Any) -> Any:
        """A node listening on 127.0.0.1."""
        raise NotImplementedError

    async def connect(self, port: int) -> Wire:
        """A raw connection to ``port`` on 127.0.0.1."""
        raise NotImplementedError

    async def listen(self) -> tuple[int, list[Wire]]:
        """A port on 127.0.0.1, and the raw connections made to it (none answer anything)."""
        raise NotImplementedError

    def spawn(self, awaitable: Any) -> Any:
        """Run a node's operation concurrently; the handle can be awaited."""
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        """Let the world run for ``seconds``."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Close every raw connection, stop every node and listener."""
        raise NotImplementedError


class TwistedKit(Kit):
    """``txdht.node.Node`` on the reactor pytest-twisted runs."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.ports: list[Any] = []

    async def node(self, **options: Any) -> Any:
        from txdht.node import Node

        node = Node(self.reactor, **options)
        await node.listen()
        self.nodes.append(node)
        return node

    def _wire(self) -> _TwistedWire:
        wire = Wire(self.sleep)
        self.wires.append(wire)
        return _TwistedWire(wire)

    async def connect(self, port: int) -> Wire:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        protocol: _TwistedWire = await connectProtocol(endpoint, self._wire())
        return protocol.wire

    async def listen(self) -> tuple[int, list[Wire]]:
        accepted: list[Wire] = []

        def build(addr: object) -> Protocol:
            protocol = self._wire()
            accepted.append(protocol.wire)
            return protocol

        factory = Factory()
        factory.buildProtocol = build  # type: ignore[method-assign]
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port, accepted

    def spawn(self, awaitable: Any) -> Any:
        return awaitable

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, seconds)

    async def stop(self) -> None:
        for wire in self.wires:
            wire.close()
        await defer.gatherResults([node.stop() for node in self.nodes])
        for port in self.ports:
            await port.stopListening()
        await self.sleep(0)


class _TwistedWire(Protocol):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def connectionMade(self) -> None:
        transport: Any = self.transport
        self.wire.write, self.wire.close = transport.write, transport.loseConnection

    def dataReceived(self, data: bytes) -> None:
        self.wire.feed(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.wire.lost = True


class AioKit(Kit):
    """``txdht.aio.Node`` on an asyncio loop of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: list[asyncio.Server] = []

    async def node(self, **options: Any) -> Any:
        from txdht.aio import Node

        node = Node(**options)
        await node.start()
        self.nodes.append(node)
        return node

    def _wire(self) -> _AioWire:
        wire = Wire(self.sleep)
        self.wires.append(wire)
        return _AioWire(wire)

    async def connect(self, port: int) -> Wire:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(self._wire, "127.0.0.1", port)
        return protocol.wire

    async def listen(self) -> tuple[int, list[Wire]]:
        accepted: list[Wire] = []

        def build() -> _AioWire:
            protocol = self._wire()
            accepted.append(protocol.wire)
            return protocol

        server = await asyncio.get_running_loop().create_server(build, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1]), accepted

    def spawn(self, awaitable: Any) -> Any:
        return asyncio.ensure_future(awaitable)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def stop(self) -> None:
        for wire in self.wires:
            wire.close()
        for node in self.nodes:
            await node.stop()
        for server in self.servers:
            server.close()
            await server.wait_closed()
        await self.sleep(0)


class _AioWire(asyncio.Protocol):
    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer: Any = transport
        self.wire.write, self.wire.close = writer.write, writer.close

    def data_received(self, data: bytes) -> None:
        self.wire.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire.lost = True


def _in_thread(scenario: Scenario) -> None:
    """Run the scenario against the asyncio twin with ``asyncio.run`` in a worker thread (the
    main thread's loop, if any, belongs to pytest-twisted's reactor)."""
    errors: list[BaseException] = []

    async def main() -> None:
        kit = AioKit()
        try:
            await scenario(kit)
        finally:
            await kit.stop()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60.0)
    assert not thread.is_alive(), "the scenario did not finish in time"
    if errors:
        raise errors[0]


def conformance(scenario: Scenario) -> Callable[..., Any]:
    """The test of one decision: ``scenario`` run against each implementation."""

    @pytest.mark.parametrize("kind", KINDS)
    @pytest_twisted.ensureDeferred
    async def test(kind: str, reactor: Any) -> None:
        if kind == "aio":
            _in_thread(scenario)
            return
        kit = TwistedKit(reactor)
        try:
            await scenario(kit)
        finally:
            await kit.stop()

    test.__name__ = test.__qualname__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    named: Callable[..., Any] = test
    return named


# -- the decisions ----------------------------------------------------------------------------


@conformance
async def test_a_reply_is_never_answered_even_when_broken(kit: Kit) -> None:
    """A broken reply, to nothing or to one of the node's own requests, draws no error reply:
    the request it answers fails instead, and the connection goes on."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    wire.send(
        message("pong", rid=4242, port=-1),
        message("error", rid=9, code="104", message="x"),
        message("value", rid=5, item={"value": "!"}),
        message("pong", rid=6, v=2),
        message("nodes", rid=7, nodes="x"),
        message("ok", rid="x"),
        message("ping", rid=8),
    )
    assert codes(await wire.messages(1)) == [("pong", 8, None)]
    # The node's own request, on the connection a peer opened (port 9: nothing listens there).
    peer = await kit.connect(node.port)
    assert (await peer.ask(message("ping", sender=peer_id(1), port=9)))["type"] == "pong"
    call = kit.spawn(node.call(("127.0.0.1", 9), Ping))
    ping = await peer.take("ping")
    peer.send(message("pong", rid=ping["rid"], sender=peer_id(1), port="x"))
    with pytest.raises(ProtocolError, match="'port'"):
        await call
    assert [m["type"] for m in await peer.messages(2)] == ["pong", "ping"]
    assert not peer.closed()


@conformance
async def test_the_tenth_payload_that_does_not_decode_closes_the_connection(kit: Kit) -> None:
    """Payloads that do not decode (broken replies too) are each answered if they are not
    replies; the tenth on one connection closes it, and nothing after it is served."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    junk = [b"junk %d" % i for i in range(8)]
    wire.send(*junk, message("pong", rid=77, port=-1), message("ping", rid=1))
    got = await wire.messages(9)
    assert codes(got) == [("error", 0, MALFORMED)] * 8 + [("pong", 1, None)]
    assert not wire.closed()
    wire.send(b"the tenth", message("ping", rid=2))
    got = await wire.messages(10)
    assert codes(got[9:]) == [("error", 0, MALFORMED)]
    assert wire.closed()
    # Another connection starts afresh.
    other = await kit.connect(node.port)
    assert (await other.ask(message("ping", rid=3)))["type"] == "pong"


@conformance
async def test_the_request_rate_is_counted_per_connection_on_loopback(kit: Kit) -> None:
    """Requests that decode are counted per remote address (per connection on loopback, never
    per sender id): past the burst one is refused with RATE_LIMITED, and the next ones get no
    reply for the cool-off; payloads that do not decode are still answered."""
    assert Limits().peer_rate == 50.0
    assert Limits().peer_burst == 100.0
    assert Limits().cool_off == 10.0
    assert (Limits().global_rate, Limits().global_burst) == (5000.0, 10000.0)
    node = await kit.node(limits=Limits(peer_burst=5.0, peer_rate=0.01, cool_off=60.0))
    wire = await kit.connect(node.port)
    pings = [message("ping", rid=rid, sender=peer_id(rid)) for rid in range(1, 6)]
    forged = {**signed(OWNER, "n", 1, b"v"), "signature": b64(bytes(64))}
    store = message("store", rid=6, item=forged, ttl=60)
    wire.send(
        *pings, store, message("ping", rid=7), b"junk", message("find_node", rid=8, target=CLIENT)
    )
    got = await wire.messages(7)
    assert codes(got) == [("pong", rid, None) for rid in range(1, 6)] + [
        ("error", 6, RATE_LIMITED),
        ("error", 0, MALFORMED),
    ]
    other = await kit.connect(node.port)
    assert (await other.ask(message("ping", rid=9)))["type"] == "pong"


@conformance
async def test_nesting_deeper_than_32_levels_is_malformed(kit: Kit) -> None:
    """A message may nest objects and arrays 32 levels deep (itself level 1), unknown fields
    included; one level more is MALFORMED, with rid 0."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    deepest = message("ping", rid=1, x=0).replace(b'"x":0', b'"x":' + b"[" * 31 + b"]" * 31)
    too_deep = message("ping", rid=2, x=0).replace(
        b'"x":0', b'"x":' + b'{"a":' * 32 + b"0" + b"}" * 32
    )
    wire.send(deepest, too_deep)
    assert codes(await wire.messages(2)) == [("pong", 1, None), ("error", 0, MALFORMED)]


@conformance
async def test_a_request_with_rid_0_is_refused(kit: Kit) -> None:
    """rid 0 is reserved for errors about unreadable rids: a request with it is refused with
    BAD_FIELD (rid 0) and not served; a reply with it (an error) is dropped like any other."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    item = blob(b"never stored")
    wire.send(
        message("ping", rid=0),
        message("store", rid=0, item=item, ttl=60),
        message("error", rid=0, code=MALFORMED, message="about something of yours"),
        message("find_value", rid=1, key=key_of(item)),
    )
    got = await wire.messages(3)
    assert codes(got) == [("error", 0, BAD_FIELD), ("error", 0, BAD_FIELD), ("nodes", 1, None)]
    assert all(m["sender"] == node.id for m in got)


@conformance
async def test_the_rid_is_echoed_whatever_else_is_wrong(kit: Kit) -> None:
    """An error reply carries the message's rid whenever it is an integer in range, whatever
    else is wrong (the version included), and rid 0 when it is not."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    without_v = json.dumps({"type": "ping", "rid": 10, "sender": CLIENT, "port": 0}).encode()
    wire.send(
        message("ping", rid=9, v=2),
        without_v,
        message("gossip", rid=11),
        message("ping", rid=12, sender="ab"),
        message("find_node", rid=13),
        message("ping", rid="14"),
        message("ping", rid=2**53, v=2),
    )
    assert codes(await wire.messages(7)) == [
        ("error", 9, BAD_VERSION),
        ("error", 10, MISSING_FIELD),
        ("error", 11, UNKNOWN_TYPE),
        ("error", 12, BAD_FIELD),
        ("error", 13, MISSING_FIELD),
        ("error", 0, BAD_FIELD),
        ("error", 0, BAD_VERSION),
    ]


@conformance
async def test_a_byte_order_mark_is_malformed(kit: Kit) -> None:
    """A payload starting with a UTF-8 byte order mark is not a JSON text here: MALFORMED."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    wire.send(b"\xef\xbb\xbf" + message("ping", rid=5), message("ping", rid=6))
    assert codes(await wire.messages(2)) == [("error", 0, MALFORMED), ("pong", 6, None)]


@conformance
async def test_ttl_is_any_json_number_above_0_up_to_48_hours(kit: Kit) -> None:
    """ttl may be written as any JSON number (1000, 1000.0, 1e3, 1E+3); the item then expires
    that many seconds after it arrived; 0, over 172800, or too large for a double is BAD_FIELD."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    spellings = [b"1000", b"1000.0", b"1e3", b"1E+3", b"172800"]
    items = [blob(b"ttl %d" % i) for i in range(len(spellings) + 3)]
    payloads = [
        message("store", rid=rid, item=item, ttl="TTL").replace(b'"TTL"', text)
        for rid, (item, text) in enumerate(
            zip(items, [*spellings, b"0", b"172800.5", b"1e400"], strict=True), start=1
        )
    ]
    wire.send(*payloads)
    got = await wire.messages(len(payloads))
    assert codes(got) == [("ok", rid, None) for rid in range(1, 6)] + [
        ("error", 6, BAD_FIELD),
        ("error", 7, BAD_FIELD),
        ("error", 8, BAD_FIELD),
    ]
    engine = node.engine
    for item, ttl in zip(items, [1000, 1000, 1000, 1000, 172800], strict=False):
        record = engine.storage.get(int(key_of(item), 16))
        assert abs(record.expires_at - engine.now - ttl) < 2.0


@conformance
async def test_null_is_no_field_value(kit: Kit) -> None:
    """A field that is present with null is BAD_FIELD, even an optional one (challenge, cas,
    an item's name): null never stands for absent."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    item = signed(OWNER, "n", 1, b"v")
    wire.send(
        message("ping", rid=1, challenge=None),
        message("store", rid=2, item=item, ttl=60, cas=None),
        message("store", rid=3, item={**item, "name": None}, ttl=60),
        message("ping", rid=4, challenge=b64(bytes(16))),
    )
    got = await wire.messages(4)
    assert codes(got[:3]) == [("error", rid, BAD_FIELD) for rid in (1, 2, 3)]
    assert got[3]["type"] == "pong"
    assert len(base64.b64decode(got[3]["proof"])) == 96


@conformance
async def test_cas_is_an_integer_from_0_to_2_to_the_63_minus_1(kit: Kit) -> None:
    """cas is a JSON integer from 0 to 2**63 - 1, checked when the store is decoded (BAD_FIELD
    otherwise), then compared with the held sequence number (0: none held)."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    item = signed(OWNER, "cas", 1, b"v")
    bad = [-1, 2**63, 1.0, "0", True]
    wire.send(*(message("store", rid=i, item=item, ttl=60, cas=c) for i, c in enumerate(bad, 1)))
    wire.send(message("store", rid=6, item=item, ttl=60, cas=2**63 - 1))
    wire.send(message("store", rid=7, item=item, ttl=60, cas=0))
    wire.send(message("store", rid=8, item=signed(OWNER, "cas", 2, b"w"), ttl=60, cas=1))
    assert codes(await wire.messages(8)) == [("error", rid, BAD_FIELD) for rid in range(1, 6)] + [
        ("error", 6, CAS_MISMATCH),
        ("ok", 7, None),
        ("ok", 8, None),
    ]


@conformance
async def test_a_store_marked_closest_is_answered_with_what_a_find_node_would_name(
    kit: Kit,
) -> None:
    """A store with ``closest`` is also a lookup's query: the ok names the node's closest
    contacts to the item's key, the same list its nodes reply to a find_node for that key
    holds; a plain store's ok names nobody; ``closest`` is a JSON boolean (BAD_FIELD
    otherwise), and a refused store is an error with no contacts."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    # The node hears of a peer, a contact to name (the asker, on port 0, is none).
    assert (await wire.ask(message("ping", rid=1, sender=peer_id(1), port=4567)))["rid"] == 1
    item, key = blob(b"closest"), hashlib.sha512(b"closest").hexdigest()
    asker: dict[str, Any] = {"sender": peer_id(2), "port": 0}
    found = await wire.ask(message("find_node", rid=2, target=key, **asker))
    stored = await wire.ask(message("store", rid=3, item=item, ttl=60, closest=True, **asker))
    plain = await wire.ask(message("store", rid=4, item=item, ttl=60, **asker))
    assert (found["type"], stored["type"], plain["type"]) == ("nodes", "ok", "ok")
    assert stored["nodes"] == found["nodes"] == [[peer_id(1), "127.0.0.1", 4567]]
    assert "nodes" not in plain
    bad = await wire.ask(message("store", rid=5, item=item, ttl=60, closest="yes", **asker))
    assert (bad["type"], bad["code"]) == ("error", BAD_FIELD)
    held = signed(OWNER, "closest", 3, b"v3")
    older = signed(OWNER, "closest", 2, b"v2")
    assert (await wire.ask(message("store", rid=6, item=held, ttl=60, **asker)))["type"] == "ok"
    refused = await wire.ask(message("store", rid=7, item=older, ttl=60, closest=True, **asker))
    assert (refused["type"], refused["code"]) == ("error", STALE_SEQUENCE)
    assert "nodes" not in refused
    assert not wire.closed()


@conformance
async def test_a_store_reports_the_first_problem_in_the_documented_order(kit: Kit) -> None:
    """Of several problems with a store, the one reported is the first in the page's order:
    decoding (ttl, cas, the item's fields), then the value's size, the sizes, name and seq,
    the signature, cas against what is held, the replacement rule, the quotas."""
    node = await kit.node(max_value=1000, limits=Limits(max_items=1))
    wire = await kit.connect(node.port)
    held = signed(OWNER, "held", 3, b"v3")
    assert (await wire.ask(message("store", rid=1, item=held, ttl=60)))["type"] == "ok"
    older = signed(OWNER, "held", 2, b"v2")
    huge = signed(OWNER, "held", 9, b"x" * 1001)
    cases = [
        # ttl, cas, replica and closest before the item, the item's fields in order.
        (message("store", item={"value": "!"}, ttl=0), BAD_FIELD, "ttl"),
        (message("store", item={}, ttl=60, cas=-1), BAD_FIELD, "cas"),
        (message("store", item={}, ttl=60, replica="yes"), BAD_FIELD, "replica"),
        (message("store", item={}, ttl=60, closest=1), BAD_FIELD, "closest"),
        (
            message("store", item={**held, "public_key": "x", "seq": "3"}, ttl=60),
            BAD_FIELD,
            "public_key",
        ),
        (message("store", item={**held, "name": 5, "seq": None}, ttl=60), BAD_FIELD, "name"),
        # Then the value's size, before the signature.
        (message("store", item={**huge, "signature": b64(bytes(64))}, ttl=60), VALUE_TOO_LARGE, ""),
        # A seq out of range before the signature.
        (message("store", item={**held, "seq": 2**63}, ttl=60), BAD_FIELD, "seq"),
        # The signature before cas.
        (message("store", item={**held, "value": b64(b"x")}, ttl=60, cas=7), BAD_SIGNATURE, ""),
        # cas before the replacement rule.
        (message("store", item=older, ttl=60, cas=1), CAS_MISMATCH, ""),
        (message("store", item=older, ttl=60, cas=3), STALE_SEQUENCE, ""),
        # The replacement rule before the quota (the node holds max_items = 1 item).
        (message("store", item=older, ttl=60), STALE_SEQUENCE, ""),
        (message("store", item=blob(b"new"), ttl=60), STORAGE_FULL, ""),
    ]
    for payload, code, word in cases:
        reply = await wire.ask(payload)
        assert (reply["type"], reply.get("code")) == ("error", code), payload
        assert word in reply["message"], reply
    assert not wire.closed()


@conformance
async def test_unknown_item_fields_are_ignored_and_not_kept(kit: Kit) -> None:
    """An item may carry fields the page does not name: they are ignored, the item is stored
    under the key of its known fields, and a find_value gets it back without them."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    plain, mutable = blob(b"plain"), signed(OWNER, "extra", 1, b"v")
    for rid, item in enumerate([plain, mutable], start=1):
        extra = {**item, "note": "mine", "tags": [1, {"a": None}]}
        assert (await wire.ask(message("store", rid=rid, item=extra, ttl=60)))["type"] == "ok"
        reply = await wire.ask(message("find_value", rid=rid + 10, key=key_of(item)))
        assert (reply["type"], reply["item"]) == ("value", item)


@conformance
async def test_base64_must_be_canonical(kit: Kit) -> None:
    """Bytes are canonical base64: padded, and the unused bits of the last character zero
    (eA== is x; eB== is refused with BAD_FIELD), in items and in challenges alike."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    challenge = b64(bytes(16))
    assert challenge.endswith("AA==")
    wire.send(
        message("store", rid=1, item={"value": "eB=="}, ttl=60),
        message("store", rid=2, item={"value": "eA"}, ttl=60),
        message("ping", rid=3, challenge=challenge[:-3] + "B=="),
        message("store", rid=4, item={"value": "eA=="}, ttl=60),
    )
    got = await wire.messages(4)
    assert codes(got) == [("error", r, BAD_FIELD) for r in (1, 2, 3)] + [("ok", 4, None)]
    assert node.engine.storage.get(int(key_of(blob(b"x")), 16)) is not None


@conformance
async def test_a_get_stops_at_a_blob_but_asks_every_closest_node_for_a_signed_item(
    kit: Kit,
) -> None:
    """A lookup starts from the contacts the node knows. A get of a blob ends at the first
    blob that verifies; a get of a signed item waits for all of the k closest, keeps the
    highest seq, and stores it (ttl 86400, no cas) on each that sent an older one."""
    node = await kit.node()
    # Two peers, played on raw connections: each gives a listening port (where nothing
    # should ever connect: the node's requests come on the connections the peers opened).
    newer, older = signed(OWNER, "doc", 2, b"v2"), signed(OWNER, "doc", 1, b"v1")
    peers = []
    for number in (1, 2):
        port, accepted = await kit.listen()
        wire = await kit.connect(node.port)
        assert (await wire.ask(message("ping", sender=peer_id(number), port=port)))["rid"] == 1
        peers.append((wire, accepted))
    (has_newer, accepted_a), (has_older, accepted_b) = peers
    get = kit.spawn(node.get(key_of(newer)))
    asked = [await has_newer.take("find_value"), await has_older.take("find_value")]
    assert {m["key"] for m in asked} == {key_of(newer)}
    # The older version answers first; the get goes on for the newer.
    has_older.send(message("value", rid=asked[1]["rid"], sender=peer_id(2), item=older))
    await kit.sleep(0.05)
    has_newer.send(message("value", rid=asked[0]["rid"], sender=peer_id(1), item=newer))
    repair = await has_older.take("store")
    assert (repair["item"], repair["ttl"], "cas" in repair) == (newer, 86400, False)
    has_older.send(message("ok", rid=repair["rid"], sender=peer_id(2)))
    assert await get == b"v2"
    await kit.sleep(QUIET)
    assert [m["type"] for m in has_newer.received] == ["pong", "find_value"]
    assert accepted_a == accepted_b == []
    # A blob: the first peer's answer ends the get; the silent one is not waited for.
    node = await kit.node()
    item = blob(b"immutable")
    wires = []
    for number in (3, 4):
        port, _ = await kit.listen()  # one contact per address: each peer gives its own
        wire = await kit.connect(node.port)
        assert (await wire.ask(message("ping", sender=peer_id(number), port=port)))["rid"] == 1
        wires.append(wire)
    started = time.monotonic()
    get = kit.spawn(node.get(key_of(item)))
    question = await wires[0].take("find_value")
    await wires[1].take("find_value")
    wires[0].send(message("value", rid=question["rid"], sender=peer_id(3), item=item))
    assert await get == b"immutable"
    assert time.monotonic() - started < 2.0


@conformance
async def test_requests_to_a_peer_go_on_the_connection_it_opened(kit: Kit) -> None:
    """A connection stands for the address (its host, the port its first request with a
    non-zero port gave): the node sends its own requests to that address on it, not on a new
    connection; a later connection giving the same port does not take its place."""
    node = await kit.node()
    port, accepted = await kit.listen()
    first, second = await kit.connect(node.port), await kit.connect(node.port)
    assert (await first.ask(message("ping", rid=1, sender=peer_id(1), port=port)))["rid"] == 1
    assert (await second.ask(message("ping", rid=1, sender=peer_id(1), port=port)))["rid"] == 1
    call = kit.spawn(node.call(("127.0.0.1", port), Ping))
    ping = await first.take("ping")
    first.send(message("pong", rid=ping["rid"], sender=peer_id(1), port=port))
    pong = await call
    assert pong.sender == int(peer_id(1), 16)
    assert [m["type"] for m in await second.messages(1)] == ["pong"]
    assert accepted == []


@conformance
async def test_a_new_contact_that_gives_a_port_is_sent_what_it_should_hold(kit: Kit) -> None:
    """A peer new to the node's table that gives a listening port is sent, on its connection,
    a store of each item it is now among the k closest to (with the time the item has left):
    a client that gives a port must answer requests. One that gives port 0 is sent nothing."""
    node = await kit.node()
    writer = await kit.connect(node.port)
    item = blob(b"handed over")
    assert (await writer.ask(message("store", item=item, ttl=600)))["type"] == "ok"
    quiet = await kit.connect(node.port)
    assert (await quiet.ask(message("ping", sender=peer_id(1))))["type"] == "pong"
    newcomer = await kit.connect(node.port)
    assert (await newcomer.ask(message("ping", sender=peer_id(2), port=9)))["type"] == "pong"
    store = await newcomer.take("store")
    assert store["item"] == item
    assert 590 < store["ttl"] <= 600
    newcomer.send(message("ok", rid=store["rid"], sender=peer_id(2)))
    assert [m["type"] for m in await quiet.messages(1)] == ["pong"]


@conformance
async def test_unexpected_is_never_sent(kit: Kit) -> None:
    """A node routes replies by their type: a well-formed reply of any type that answers
    nothing of the node's gets no answer at all (UNEXPECTED, 105, is never sent)."""
    node = await kit.node()
    wire = await kit.connect(node.port)
    wire.send(
        message("pong", rid=1),
        message("ok", rid=2),
        message("nodes", rid=3, nodes=[[peer_id(1), "127.0.0.1", 9]]),
        message("value", rid=4, item=blob(b"v")),
        message("error", rid=5, code=105, message="?"),
        message("ping", rid=6),
    )
    assert codes(await wire.messages(1)) == [("pong", 6, None)]
    assert not wire.closed()
