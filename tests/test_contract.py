"""One contract, three implementations: the Twisted node, the Twisted node through the asyncio
adapter (on asyncioreactor), and the native asyncio twin. The same scenarios with the same
assertions run against each, over real loopback TCP.

Each implementation lives in its own concurrency world, so each gets a ``Kit`` that makes its
nodes and turns its waiting into something a scenario can ``await``: Deferreds for Twisted,
asyncio coroutines for the other two. The adapter runs only on the ``--reactor=asyncio`` pass
(it needs asyncioreactor); the native twin runs on its own loop in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from tests.test_bad_input import ERROR_CASES, FRAMING_CASES, PUBLISHER, message, store
from txdht.core.errors import ErrorCode, JoinError, NotFoundError
from txdht.core.framing import NetstringDecoder, netstring
from txdht.core.ids import id_from_hex, id_to_hex
from txdht.core.messages import Error, Message, Ping, Pong, decode, encode
from txdht.core.storage import StoredItem

KINDS = ["twisted", "adapter", "aio"]
PING = netstring(encode(Ping(rid=1, sender=1, port=0)))
#: How long ``Kit.exchange`` waits for the replies it expects (or the connection to close).
EXCHANGE_TIMEOUT = 5.0
Scenario = Callable[["Kit"], Awaitable[None]]


class Replies:
    """The messages a node sent on one connection, decoded as their bytes arrive."""

    def __init__(self) -> None:
        self._decoder = NetstringDecoder(1 << 20)
        self.messages: list[Message] = []

    def feed(self, data: bytes) -> int:
        """Decode what ``data`` completes; how many messages have arrived in all."""
        self.messages.extend(decode(payload) for payload in self._decoder.feed(data))
        return len(self.messages)


class Kit:
    """What a scenario needs from one implementation."""

    cancelled: type[BaseException]

    async def start(self, **options: Any) -> Any:
        """A started (listening) node."""
        raise NotImplementedError

    async def network(self, count: int, **options: Any) -> list[Any]:
        """``count`` started nodes, each joined through the first."""
        nodes = [await self.start(**options) for _ in range(count)]
        for node in nodes[1:]:
            await node.join([("127.0.0.1", nodes[0].port)])
        return nodes

    def spawn(self, awaitable: Any) -> Any:
        """Run ``awaitable`` concurrently; the handle can be cancelled and awaited."""
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        """Let the world run for ``seconds``."""
        raise NotImplementedError

    async def silent_address(self, port: int = 0) -> tuple[str, int]:
        """An address (on ``port``, or any free one) that accepts connections, never answers."""
        raise NotImplementedError

    async def exchange(self, port: int, data: bytes, replies: int) -> tuple[list[Message], bool]:
        """Send ``data`` on a fresh connection; the messages that came back, and whether the
        connection closed, once ``replies`` messages came (0: once it closed), it closed, or
        EXCHANGE_TIMEOUT passed."""
        raise NotImplementedError

    async def stop(self, nodes: list[Any]) -> None:
        """Stop every node."""
        for node in nodes:
            await node.stop()


class TwistedKit(Kit):
    """The Twisted node, with Deferreds, on whatever reactor the test process runs."""

    cancelled = defer.CancelledError

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.listening: list[Any] = []

    async def start(self, **options: Any) -> Any:
        from txdht.node import Node

        node = Node(self.reactor, **options)
        await node.listen()
        return node

    def spawn(self, awaitable: Any) -> Any:
        return awaitable

    async def sleep(self, seconds: float) -> None:
        await defer.Deferred.fromCoroutine(_twisted_sleep(self.reactor, seconds))

    async def silent_address(self, port: int = 0) -> tuple[str, int]:
        factory = Factory.forProtocol(Protocol)
        listening = self.reactor.listenTCP(port, factory, interface="127.0.0.1")
        self.listening.append(listening)
        return ("127.0.0.1", listening.getHost().port)

    async def exchange(self, port: int, data: bytes, replies: int) -> tuple[list[Message], bool]:
        from twisted.internet.protocol import ClientCreator

        done: Deferred[None] = Deferred()

        def finish() -> None:
            if not done.called:
                done.callback(None)

        class Raw(Protocol):
            def __init__(self) -> None:
                self.replies = Replies()
                self.lost = False

            def dataReceived(self, chunk: bytes) -> None:
                if self.replies.feed(chunk) >= replies > 0:
                    finish()

            def connectionLost(self, reason: object = None) -> None:
                self.lost = True
                finish()

        protocol = await ClientCreator(self.reactor, Raw).connectTCP("127.0.0.1", port)
        protocol.transport.write(data)
        # On timeout, report what came so far: the scenario's assertions say what is missing.
        await done.addTimeout(EXCHANGE_TIMEOUT, self.reactor, onTimeoutCancel=lambda _, __: None)
        result = (protocol.replies.messages, protocol.lost)
        protocol.transport.loseConnection()
        await self.sleep(0)
        return result

    async def stop(self, nodes: list[Any]) -> None:
        await defer.gatherResults([n.stop() for n in nodes])
        for port in self.listening:
            await port.stopListening()


async def _twisted_sleep(reactor: Any, seconds: float) -> None:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


class AsyncioKit(Kit):
    """Shared by the adapter and the native twin: asyncio waiting, asyncio sockets."""

    cancelled = asyncio.CancelledError

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []

    def spawn(self, awaitable: Any) -> Any:
        return asyncio.ensure_future(awaitable)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def silent_address(self, port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", port)
        self.servers.append(server)
        return ("127.0.0.1", int(server.sockets[0].getsockname()[1]))

    async def exchange(self, port: int, data: bytes, replies: int) -> tuple[list[Message], bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        got = Replies()
        closed = False
        deadline = time.monotonic() + EXCHANGE_TIMEOUT
        while replies == 0 or len(got.messages) < replies:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            except TimeoutError:
                break
            except ConnectionError:
                chunk = b""
            if not chunk:
                closed = True
                break
            got.feed(chunk)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        return got.messages, closed

    async def stop(self, nodes: list[Any]) -> None:
        await super().stop(nodes)
        for server in self.servers:
            server.close()
            await server.wait_closed()


class AdapterKit(AsyncioKit):
    """The Twisted node through txdht.asyncio_adapter, on the reactor's own asyncio loop."""

    async def start(self, **options: Any) -> Any:
        from txdht.asyncio_adapter import AsyncioNode

        node = AsyncioNode(**options)
        await node.start()
        return node


class AioKit(AsyncioKit):
    """The native asyncio twin, on a loop of its own."""

    async def start(self, **options: Any) -> Any:
        from txdht.aio import Node

        node = Node(**options)
        await node.start()
        return node


def _in_thread(scenario: Scenario, kit: Kit, timeout: float = 120.0) -> None:
    """Run the scenario with ``asyncio.run`` in a worker thread (the main thread's loop, if
    any, belongs to pytest-twisted's reactor)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(scenario(kit))  # type: ignore[arg-type]
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the scenario did not finish in time"
    if errors:
        raise errors[0]


async def run(kind: str, scenario: Scenario, request: pytest.FixtureRequest) -> None:
    """Run ``scenario`` against the implementation ``kind``."""
    reactor_name = request.config.getoption("reactor")
    if kind == "twisted":
        from twisted.internet import reactor

        await scenario(TwistedKit(reactor))
    elif kind == "adapter":
        if reactor_name != "asyncio":
            pytest.skip("the adapter runs on the --reactor=asyncio pass")
        await Deferred.fromFuture(asyncio.ensure_future(scenario(AdapterKit())))
    else:
        _in_thread(scenario, AioKit())


# -- the scenarios -------------------------------------------------------------------------------


async def join_put_get(kit: Kit) -> None:
    nodes = await kit.network(6)
    try:
        key = await nodes[1].put("greeting", b"hello")
        assert len(key) == 128
        for node in nodes:
            assert await node.get(key) == b"hello"
        assert await nodes[1].put("greeting", b"hello again") == key
        assert await nodes[5].get(key) == b"hello again"
        blob_key = await nodes[4].put_blob(b"\x00binary\xff")
        assert await nodes[0].get(blob_key) == b"\x00binary\xff"
    finally:
        await kit.stop(nodes)


def _held(node: Any, key: str) -> StoredItem:
    """The record ``node`` (any kind) holds under ``key``."""
    record = getattr(node, "node", node).engine.storage.get(id_from_hex(key))
    assert isinstance(record, StoredItem)
    return record


async def stale_copies_are_repaired(kit: Kit) -> None:
    nodes = await kit.network(4)
    try:
        key = await nodes[1].put("doc", b"v1")
        first = _held(nodes[0], key).item
        assert await nodes[1].put("doc", b"v2") == key
        newest = _held(nodes[0], key)
        assert newest.item.seq == first.seq + 1
        # Two nodes missed the second write (a partition, a restart from an old backup).
        for node in nodes[2:]:
            getattr(node, "node", node).engine.storage.put(StoredItem(first, newest.expires_at))
        # A holder of an old copy reads the newest from the network and keeps it, and gives
        # it to the peer that sent it an old one (read repair), after answering its caller.
        assert await nodes[2].get(key) == b"v2"
        assert _held(nodes[2], key).item == newest.item
        for _ in range(100):
            if _held(nodes[3], key).item == newest.item:
                break
            await kit.sleep(0.05)
        assert _held(nodes[3], key).item == newest.item
    finally:
        await kit.stop(nodes)


def _engine(node: Any) -> Any:
    """The core engine of a node of any kind."""
    return getattr(node, "node", node).engine


async def impostors_are_refused(kit: Kit) -> None:
    # An impostor: a real node that claims an id which is not the hash of its key.
    honest, newcomer, impostor = [await kit.start(k=1) for _ in range(3)]
    own = _engine(honest).id
    # Its claimed id sits in the newcomer's bucket of the honest node's table, and nearer to
    # the honest node than the newcomer (so no split makes room for both: the bucket is full).
    near = _engine(newcomer).id
    claimed = min((near ^ low for low in range(1, 1 << 16)), key=lambda i: i ^ own)
    assert claimed ^ own < near ^ own
    _engine(impostor).id = claimed
    # The honest node challenges the head of a full bucket however lately it heard from it
    # (by default, only after 15 quiet minutes: see docs/security.md).
    _engine(honest).routing.ping_after = 0.0
    try:
        # A seed that cannot prove its id is no seed.
        with pytest.raises(JoinError, match="proved its id"):
            await honest.join([("127.0.0.1", impostor.port)])
        assert len(_engine(honest).routing) == 0
        # The impostor gets into the table by calling (the table takes every caller)...
        await impostor.join([("127.0.0.1", honest.port)])
        assert claimed in _engine(honest).routing
        # ...but when the newcomer contests its full bucket, the honest node pings it with a
        # challenge, the proof fails, and the impostor is dropped for the newcomer. (It can
        # call its way back in later: callers are not challenged, see docs/security.md.)
        table = _engine(honest).routing
        dropped: list[int] = []
        remove = table.remove

        def recording_remove(ident: int) -> None:
            dropped.append(ident)
            remove(ident)

        table.remove = recording_remove
        await newcomer.join([("127.0.0.1", honest.port)])
        for _ in range(100):
            if dropped:
                break
            await kit.sleep(0.05)
        assert set(dropped) == {claimed}
        assert _engine(newcomer).id in table
    finally:
        await kit.stop([honest, newcomer, impostor])


async def not_found(kit: Kit) -> None:
    nodes = await kit.network(4)
    try:
        with pytest.raises(NotFoundError):
            await nodes[2].get("cd" * 64)
        with pytest.raises(ValueError, match="hex"):
            await nodes[2].get("not a key")
    finally:
        await kit.stop(nodes)


async def join_fails_without_seeds(kit: Kit) -> None:
    node = await kit.start(rpc_timeout=0.3)
    silent = await kit.silent_address()
    started = time.monotonic()
    try:
        with pytest.raises(JoinError):
            await node.join([("127.0.0.1", 1), silent])
        assert time.monotonic() - started < 5
    finally:
        await kit.stop([node])


async def timeouts_end_a_get(kit: Kit) -> None:
    nodes = await kit.network(3, rpc_timeout=0.3)
    try:
        # Every contact of nodes[0] now accepts connections and never answers.
        for node in nodes[1:]:
            port = node.port
            await node.stop()
            await kit.silent_address(port)
        started = time.monotonic()
        with pytest.raises(NotFoundError):
            await nodes[0].get("ab" * 64)
        assert 0.3 <= time.monotonic() - started < 5
    finally:
        await kit.stop(nodes[:1])


async def cancellation(kit: Kit) -> None:
    nodes = await kit.network(3, rpc_timeout=5.0)
    try:
        for node in nodes[1:]:
            port = node.port
            await node.stop()
            await kit.silent_address(port)
        # The get now waits on peers that never answer, and is cancelled.
        pending = kit.spawn(nodes[0].get("ef" * 64))
        await kit.sleep(0.1)
        pending.cancel()
        started = time.monotonic()
        with pytest.raises(kit.cancelled):
            await pending
        assert time.monotonic() - started < 1
        # The node still serves: a ping on a fresh connection gets its pong.
        replies, _ = await kit.exchange(nodes[0].port, PING, 1)
        assert [type(reply) for reply in replies] == [Pong]
    finally:
        await kit.stop(nodes[:1])


async def bad_input(kit: Kit) -> None:
    # The cases of tests/test_bad_input.py (which runs them on the Twisted node in memory), here
    # over TCP against every implementation. The target holds PUBLISHER's "kept" at seq 2 (the
    # bad-signature and stale-sequence cases refer to it) and takes values of 1000 bytes at most.
    nodes = await kit.network(2, max_value=1000)
    target, own_id = nodes[0], _engine(nodes[0]).id
    item = PUBLISHER.sign("kept", b"precious", 2)
    key = id_to_hex(item.key)
    try:
        replies, _ = await kit.exchange(target.port, store(item.to_json()), 1)
        assert [reply.TYPE for reply in replies] == ["ok"]
        # Broken framing (a malformed or over-size netstring): no reply, the connection closes.
        for case in FRAMING_CASES:
            (data,) = cast("tuple[bytes]", tuple(case.values))
            replies, closed = await kit.exchange(target.port, data, 0)
            assert (replies, closed) == ([], True), case.id
        # A well-framed bad message: an error reply with its code; the connection stays usable
        # (a ping sent after it on the same connection gets its pong).
        for case in ERROR_CASES:
            data, code, rid = cast("tuple[bytes, ErrorCode, int]", tuple(case.values))
            replies, closed = await kit.exchange(target.port, data + message(rid=8), 2)
            assert [type(reply) for reply in replies] == [Error, Pong], case.id
            error = cast(Error, replies[0])
            assert (error.code, error.rid, error.sender) == (code, rid, own_id), case.id
            assert error.message, case.id
            assert replies[1].rid == 8, case.id
            assert not closed, case.id
        # Another peer, on a fresh connection, is served; nothing stored was lost or replaced.
        replies, _ = await kit.exchange(target.port, PING, 1)
        assert [type(reply) for reply in replies] == [Pong]
        assert replies[0].sender == own_id
        assert _held(target, key).item == item
        assert await nodes[1].get(key) == b"precious"
    finally:
        await kit.stop(nodes)


SCENARIOS = [
    join_put_get,
    stale_copies_are_repaired,
    impostors_are_refused,
    not_found,
    join_fails_without_seeds,
    timeouts_end_a_get,
    cancellation,
    bad_input,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred
async def test_contract(kind: str, scenario: Scenario, request: pytest.FixtureRequest) -> None:
    """Every implementation passes every scenario with the same assertions."""
    await run(kind, scenario, request)
