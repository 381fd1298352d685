"""The native asyncio twin (``txdht.aio``) on real loopback TCP: the Twisted node's behaviour.

pytest-twisted runs a reactor in the main thread (on the asyncio pass, the reactor owns the main
thread's event loop), so every scenario here runs under ``asyncio.run`` in a thread of its own,
through ``run_async``. Each scenario is bounded by a timeout, and every node, server, transport
and loop it opens is closed before it ends (warnings are errors). The twin has no injected clock:
tests that wait for timeouts use an ``rpc_timeout`` of a fraction of a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import uvloop

from tests.test_bad_input import (
    ERROR_CASES,
    FRAMING_CASES,
    PUBLISHER,
    message,
    netstring,
    padded_ping,
    store,
)
from txdht.aio import Lookup, NetstringProtocol, Node, run
from txdht.core.engine import Handled
from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.framing import NetstringDecoder
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import Identity, Item, blob
from txdht.core.messages import (
    Error,
    FindNode,
    Message,
    Ping,
    Pong,
    Store,
    Value,
    decode,
    encode,
)
from txdht.core.storage import StoredItem
from txdht.core.errors import JoinError, NotFoundError, PutError, RemoteError
from txdht.core.schedule import Intervals
from txdht.core.limits import Limits

ROOT = Path(__file__).resolve().parent.parent
#: The rpc_timeout of tests that wait for requests to time out.
FAST = 0.3
#: How long a test waits for something that should happen at once on loopback.
SOON = 2.0
#: A key under which nothing is ever stored.
MISSING = hashlib.sha512(b"nothing is stored under this").hexdigest()

_T = TypeVar("_T")


def in_thread(function: Callable[[], _T], timeout: float = 60.0) -> _T:
    """Call ``function`` in a fresh thread; return its result or raise its exception."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = function()
        except BaseException as e:  # handed to the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=target, name="aio-scenario", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    assert not thread.is_alive(), f"the scenario did not end within {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return cast(_T, outcome["result"])


async def bounded(coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
    """``coro``'s result, or TimeoutError after ``timeout`` seconds."""
    return await asyncio.wait_for(coro, timeout)


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, _T]], timeout: float = 60.0) -> _T:
    """Run ``asyncio.run(coro_fn())`` in a fresh thread, bounded by ``timeout`` seconds."""
    return in_thread(lambda: asyncio.run(bounded(coro_fn(), timeout)), timeout)


async def until(predicate: Callable[[], bool], timeout: float = SOON) -> None:
    """Wait until ``predicate()`` holds, polling; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "the condition did not become true in time"
        await asyncio.sleep(0.005)


def address(node: Node) -> tuple[str, int]:
    """Where ``node`` listens."""
    return ("127.0.0.1", node.port)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ignore(protocol: NetstringProtocol, request: Message) -> None:
    """A request handler that never answers."""


def silence(node: Node) -> None:
    """From now on ``node`` answers no request (it still reads them)."""
    vars(node)["request_received"] = _ignore


def unsilence(node: Node) -> None:
    """``node`` answers requests again."""
    del vars(node)["request_received"]


def pending(node: Node) -> int:
    """How many requests of ``node`` await a reply."""
    return sum(len(p.pending) for p in node._protocols)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """How many records of logger ``txdht.aio`` contain ``text``."""
    return sum(text in r.getMessage() for r in caplog.records if r.name == "txdht.aio")


class Net:
    """Nodes on loopback in one event loop; ``close()`` stops them all."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    async def add(self, **options: Any) -> Node:
        """A new started node (rpc_timeout 0.5 s unless given)."""
        node = Node(**{"rpc_timeout": 0.5, **options})
        await node.start()
        self.nodes.append(node)
        return node

    async def create(self, count: int, **options: Any) -> list[Node]:
        """``count`` new nodes, each joined through the first one."""
        nodes = [await self.add(**options) for _ in range(count)]
        for node in nodes[1:]:
            await node.join([address(nodes[0])])
        return nodes

    async def close(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            await node.stop()


@asynccontextmanager
async def network() -> AsyncIterator[Net]:
    """A ``Net`` whose nodes are all stopped on the way out."""
    net = Net()
    try:
        yield net
    finally:
        await net.close()


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A raw TCP server that accepts connections and never answers; yields its port."""
    transports: list[asyncio.BaseTransport] = []

    class Swallow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)

    server = await asyncio.get_running_loop().create_server(Swallow, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for transport in transports:
            transport.close()
        await server.wait_closed()
        await asyncio.sleep(0)


class Raw:
    """A raw TCP connection to a node, for feeding it arbitrary bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = NetstringDecoder(10 * 1024 * 1024)
        self.received: list[Message] = []

    @classmethod
    async def open(cls, node: Node) -> Raw:
        """A new connection to ``node``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        """Write ``data`` as it is."""
        self.writer.write(data)

    async def replies(self, count: int) -> list[Message]:
        """The next ``count`` messages the node sends."""
        while len(self.received) < count:
            data = await asyncio.wait_for(self.reader.read(65536), SOON)
            assert data, "the node closed the connection"
            self.received += [decode(payload) for payload in self.decoder.feed(data)]
        found, self.received = self.received[:count], self.received[count:]
        return found

    async def lost(self) -> bytes:
        """Everything the node sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), SOON)

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        await self.writer.wait_closed()


class Target:
    """A 6-node network in which ``node`` (the target) holds a signed item at seq 2."""

    def __init__(self, net: Net, node: Node, other: Node, item: Item) -> None:
        self.net = net
        self.node = node
        self.other = other
        self.item = item

    @classmethod
    async def create(cls, net: Net, max_message: int = 1024 * 1024) -> Target:
        """Build it on ``net``."""
        nodes = await net.create(5)
        node = await net.add(max_message=max_message, max_value=1000)
        await node.join([address(nodes[0])])
        item = PUBLISHER.sign("kept", b"precious", 2)
        node.engine.store(item, 3600.0, node.now())
        return cls(net, node, nodes[1], item)

    async def still_serving(self) -> None:
        """The node answers a ping from another peer and still holds its item."""
        reply = await self.other.call(address(self.node), Ping)
        assert isinstance(reply, Pong)
        assert reply.sender == self.node.engine.id
        assert self.node.engine.get(self.item.key, self.node.now()) == self.item


def _far_pair(own: int, count: int) -> list[Identity]:
    """Identities in the half of the id space opposite ``own``, sorted by distance to ``own``."""
    found = []
    for i in range(10_000):
        identity = Identity.from_private_bytes(i.to_bytes(32, "big"))
        if (identity.node_id ^ own) >> 511:
            found.append(identity)
        if len(found) == count:
            break
    return sorted(found, key=lambda ident: ident.node_id ^ own)


# -- the public API ------------------------------------------------------------------------------


def test_put_and_get_across_ten_nodes() -> None:
    """A signed item and a blob put on one node are read back, verified, from every other node."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(10)
            assert all(len(n.engine.routing) >= 5 for n in nodes)
            key = await nodes[3].put("greeting", b"hello")
            assert len(key) == 128
            for node in nodes:
                assert await node.get(key) == b"hello"
            blob_key = await nodes[1].put_blob(b"immutable")
            assert blob_key == id_to_hex(blob(b"immutable").key)
            assert await nodes[9].get(blob_key) == b"immutable"

    run_async(scenario)


def test_get_unknown_key_fails_with_not_found() -> None:
    """Getting a key nobody holds fails with NotFoundError after the lookup ends."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(6)
            with pytest.raises(NotFoundError):
                await nodes[2].get(MISSING)

    run_async(scenario)


def test_join_without_answering_seed_fails(caplog: pytest.LogCaptureFixture) -> None:
    """Joining through seeds where nobody listens fails with JoinError, and the log says why."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            node = await net.add()
            seeds = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
            with pytest.raises(JoinError, match="none of the 2 seed"):
                await node.join(seeds)

    run_async(scenario)
    assert logged(caplog, "did not answer") == 2


def test_join_tolerates_one_dead_seed() -> None:
    """One answering seed is enough to join."""

    async def scenario() -> None:
        async with network() as net:
            first = await net.add()
            node = await net.add()
            assert await node.join([("127.0.0.1", free_port()), address(first)]) == 1

    run_async(scenario)


def test_put_again_bumps_the_sequence_and_replaces() -> None:
    """A second put under the same name has a higher sequence and replaces the first value."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(10)
            key = await nodes[0].put("name", b"first")
            assert await nodes[0].put("name", b"second") == key
            published = nodes[0].engine.storage.published(int(key, 16))
            assert published is not None
            assert published.item.seq == 2
            assert await nodes[9].get(key) == b"second"

    run_async(scenario)


def test_put_stores_on_the_k_closest() -> None:
    """A put stores the item on exactly the k nodes closest to its key."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(10, k=3)
            key = await nodes[0].put("n", b"v")
            holders = {n.id for n in nodes if n.engine.storage.get(int(key, 16))}
            closest = sorted(nodes, key=lambda n: n.engine.id ^ int(key, 16))[:3]
            assert holders == {n.id for n in closest}

    run_async(scenario)


def test_compare_and_swap_put() -> None:
    """A put with cas stores only where the held sequence is cas; a stale cas fails the put."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(3, k=3)
            key = await nodes[0].put("counter", b"1")
            assert await nodes[0].put("counter", b"2", cas=1) == key
            assert await nodes[2].get(key) == b"2"
            with pytest.raises(PutError, match="no node stored") as caught:
                await nodes[0].put("counter", b"3", cas=1)
            assert "this node" in str(caught.value)
            published = nodes[0].engine.storage.published(int(key, 16))
            assert published is not None
            assert published.item.value == b"2"
            assert [await node.get(key) for node in nodes] == [b"2"] * 3

    run_async(scenario)


def test_publish_counts_the_nodes_that_stored() -> None:
    """publish() returns how many nodes accepted the item."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(10, k=3)
            assert await nodes[2].publish(blob(b"counted")) == 3

    run_async(scenario)


def test_single_node_stores_locally() -> None:
    """A node alone in its network keeps its own items and reads them back."""

    async def scenario() -> None:
        async with Node() as node:
            assert node.port != 0
            assert len(node.id) == 128
            key = await node.put("solo", b"alone")
            assert await node.get(key) == b"alone"

    run_async(scenario)


def test_get_malformed_key_is_the_callers_error() -> None:
    """A key that is not 128 hex characters raises ValueError."""

    async def scenario() -> None:
        node = Node()
        assert node.port == 0
        with pytest.raises(ValueError, match="hex"):
            await node.get("not a key")
        await node.stop()

    run_async(scenario)


def test_publish_refuses_an_invalid_item_at_once() -> None:
    """Publishing an item that does not verify raises VALUE_TOO_LARGE before any request."""

    async def scenario() -> None:
        node = Node(max_value=4)
        with pytest.raises(ProtocolError) as caught:
            await node.put_blob(b"too large")
        assert caught.value.code == ErrorCode.VALUE_TOO_LARGE
        assert list(node.engine.storage.published_items()) == []

    run_async(scenario)


def test_put_fails_when_no_node_accepts(caplog: pytest.LogCaptureFixture) -> None:
    """When every target refuses the item (and the publisher is not among them), put fails."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            a = await net.add(k=1)
            b = await net.add(k=1, max_value=1)
            await a.join([address(b)])
            value = next(
                v
                for v in (str(i).encode() * 2 for i in range(1000))
                if blob(v).key ^ b.engine.id < blob(v).key ^ a.engine.id
            )
            with pytest.raises(PutError, match="no node stored"):
                await a.put_blob(value)

    run_async(scenario)
    assert logged(caplog, "did not store")


def test_put_whose_store_is_never_answered_fails_without_codes() -> None:
    """A store that times out (not refused) fails the put with no refusal codes."""

    async def scenario() -> None:
        async with network() as net:
            a = await net.add(k=1, rpc_timeout=FAST)
            b = await net.add(k=1)
            await a.join([address(b)])
            value = next(
                v
                for v in (str(i).encode() * 2 for i in range(1000))
                if blob(v).key ^ b.engine.id < blob(v).key ^ a.engine.id
            )
            real = b.request_received

            def no_stores(protocol: Any, request: Any) -> None:
                if not isinstance(request, Store):
                    real(protocol, request)

            b.request_received = no_stores  # type: ignore[method-assign]
            with pytest.raises(PutError, match="no node stored") as caught:
                await a.put_blob(value)
            assert caught.value.codes == frozenset()

    run_async(scenario)


# -- timeouts ------------------------------------------------------------------------------------


def test_call_to_a_silent_peer_times_out() -> None:
    """A request to a peer that never answers fails with TimeoutError after rpc_timeout."""

    async def scenario() -> None:
        async with network() as net, silent_server() as port:
            node = await net.add(rpc_timeout=FAST)
            started = node.now()
            with pytest.raises(asyncio.TimeoutError):
                await node.call(("127.0.0.1", port), Ping)
            assert node.now() - started >= FAST - 0.01
            assert pending(node) == 0

    run_async(scenario)


def test_lookup_completes_through_others_when_a_third_are_silent() -> None:
    """With a third of the nodes silent, lookups time out on them and still complete."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(12, k=4, rpc_timeout=FAST)
            key = await nodes[0].put("survives", b"yes")
            holders = [n for n in nodes if n.engine.storage.get(int(key, 16))]
            silent = [n for n in nodes[1:] if n not in holders][::3]
            assert len(silent) >= 3
            for node in silent:
                silence(node)
            reader = next(n for n in nodes if n not in holders and n not in silent)
            assert await reader.get(key) == b"yes"
            started = reader.now()
            machine = await reader.lookup(silent[0].engine.id)
            assert reader.now() - started >= FAST - 0.01
            assert machine.closest()
            assert not {n.engine.id for n in silent} & {c.id for c in machine.closest()}

    run_async(scenario)


def test_lookup_does_not_wait_for_a_silent_peer_left_outside_the_closest() -> None:
    """Once the k closest have answered, a query still out to a farther, silent peer is
    cancelled: the lookup ends at once, not after the peer's timeout."""

    async def scenario() -> None:
        async with network() as net:
            asker = await net.add(k=2, alpha=2, rpc_timeout=5.0)
            near, far, target = await net.add(), await net.add(), await net.add()
            goal = target.engine.id
            if near.engine.id ^ goal > far.engine.id ^ goal:
                near, far = far, near
            await near.join([("127.0.0.1", target.port)])
            silence(far)
            for node in (near, far):
                asker.engine.seen(Contact(node.engine.id, "127.0.0.1", node.port), asker.now())
            started = asker.now()
            machine = await asker.lookup(goal)
            assert asker.now() - started < 1.0
            assert [c.id for c in machine.closest()] == [goal, near.engine.id]
            assert ("sent", Contact(far.engine.id, "127.0.0.1", far.port)) in machine.trace

    run_async(scenario)


def test_lookup_with_every_peer_silent_ends_empty() -> None:
    """When no peer answers, the lookup ends after the timeouts with no contacts."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(5, rpc_timeout=FAST)
            for node in nodes[1:]:
                silence(node)
            started = nodes[0].now()
            machine = await nodes[0].lookup(12345)
            assert machine.closest() == []
            assert nodes[0].now() - started >= FAST - 0.01
            entry = nodes[0].engine.routing.entry(nodes[4].engine.id)
            assert entry is not None
            assert entry.failures >= 1

    run_async(scenario)


# -- cancellation and connections ----------------------------------------------------------------


def test_get_and_put_can_be_cancelled() -> None:
    """Cancelling a task awaiting get or put raises CancelledError and leaves nothing pending."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(6)
            for node in nodes[1:]:
                silence(node)
            get = asyncio.create_task(nodes[0].get(MISSING))
            put = asyncio.create_task(nodes[0].put("n", b"v"))
            await until(lambda: pending(nodes[0]) >= 6)
            get.cancel()
            put.cancel()
            with pytest.raises(asyncio.CancelledError):
                await get
            with pytest.raises(asyncio.CancelledError):
                await put
            await until(lambda: pending(nodes[0]) == 0)
            await until(lambda: not nodes[0]._background)

    run_async(scenario)


def test_lookup_can_be_cancelled() -> None:
    """Cancelling a Lookup cancels its queries and fails it with CancelledError."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(6)
            for node in nodes[1:]:
                silence(node)
            lookup = nodes[0].lookup(99)
            assert isinstance(lookup, Lookup)
            await until(lambda: pending(nodes[0]) == 3)
            queries = list(lookup._queries.values())
            assert lookup.cancel()
            with pytest.raises(asyncio.CancelledError):
                await lookup
            await until(lambda: pending(nodes[0]) == 0 and not lookup._queries)
            assert all(query.cancelled() for query in queries)

    run_async(scenario)


def test_many_requests_share_one_connection() -> None:
    """Concurrent requests to one peer share one connection, and each gets its own reply."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.add(), await net.add()
            replies = await asyncio.gather(*(a.call(address(b), Ping) for _ in range(5)))
            assert all(isinstance(r, Pong) for r in replies)
            assert len({r.rid for r in replies}) == 5
            assert len(a._protocols) == 1

    run_async(scenario)


def test_incoming_connection_is_reused_for_requests_back() -> None:
    """A node answering a peer reuses the peer's connection to send it requests."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            assert address(b) in a._connections
            assert isinstance(await a.call(address(b), Ping), Pong)
            assert len(a._protocols) == 1

    run_async(scenario)


def test_cancelling_one_waiter_keeps_the_connection_attempt() -> None:
    """A cancelled waiter for a connection does not cancel the attempt another request awaits."""

    async def scenario() -> None:
        async with network() as net:
            peer, node = await net.add(), await net.add()
            gate = asyncio.Event()
            connect = node._connect

            async def slow_connect(to: tuple[str, int]) -> NetstringProtocol:
                await gate.wait()
                return await connect(to)

            vars(node)["_connect"] = slow_connect
            first = asyncio.create_task(node.call(address(peer), Ping))
            second = asyncio.create_task(node.call(address(peer), Ping))
            for _ in range(10):
                await asyncio.sleep(0)
            assert list(node._connecting) == [address(peer)]
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            gate.set()
            assert isinstance(await second, Pong)
            assert node._connecting == {}
            assert len(node._protocols) == 1

    run_async(scenario)


def test_reply_from_another_id_fails_the_call() -> None:
    """A contact answering with another id than expected fails the call with ProtocolError."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            impostor = Contact(b.engine.id ^ 1, "127.0.0.1", b.port)
            with pytest.raises(ProtocolError, match="another id"):
                await a.call(impostor, Ping)

    run_async(scenario)


def test_error_reply_fails_the_call_with_remote_error() -> None:
    """A peer's error reply becomes RemoteError with its code and message."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            stale = Identity.from_private_bytes(b"s" * 32)
            await a.call(address(b), Store, item=stale.sign("n", b"v", 5), ttl=60.0)
            with pytest.raises(RemoteError) as caught:
                await a.call(address(b), Store, item=stale.sign("n", b"v", 4), ttl=60.0)
            assert caught.value.code == ErrorCode.STALE_SEQUENCE
            assert "older" in caught.value.message

    run_async(scenario)


def test_lost_connection_fails_pending_requests_and_reconnects() -> None:
    """A connection closed under a pending request fails it; the next request reconnects."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            silence(b)
            call = asyncio.create_task(a.call(address(b), Ping))
            await until(lambda: pending(a) == 1)
            for protocol in list(a._protocols):
                assert protocol.transport is not None
                protocol.transport.close()
            with pytest.raises(ConnectionResetError, match="lost"):
                await call
            unsilence(b)
            assert isinstance(await a.call(address(b), Ping), Pong)
            assert len(a._protocols) == 1

    run_async(scenario)


def test_call_to_nobody_fails_with_connection_refused() -> None:
    """A request to an address where nothing listens fails with an OSError (refused)."""

    async def scenario() -> None:
        async with network() as net:
            node = await net.add()
            with pytest.raises(ConnectionRefusedError):
                await node.call(("127.0.0.1", free_port()), Ping)
            assert node._connecting == {}

    run_async(scenario)


def cancel_a_ping(protocol: NetstringProtocol, sender: Node) -> int:
    """Send a ping on ``protocol`` (which has no other request in flight) from ``sender`` and
    cancel it at once; its request id."""
    waiting = protocol.request(sender.engine.message(Ping))
    (rid,) = protocol.pending  # the only request in flight on it
    waiting.cancel()
    return rid


def test_reply_to_a_request_cancelled_an_instant_ago_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply, whole or broken, to a request cancelled before its entry is dropped is ignored:
    the whole one quietly (it was expected late), the broken one as a bad message; a second
    reply to an answered request is logged as unsolicited."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            protocol = b._connections[address(a)]
            rid = cancel_a_ping(protocol, b)
            protocol.data_received(netstring(encode(a.engine.message(Pong, rid))))
            assert logged(caplog, "which nobody awaits") == 0
            rid = cancel_a_ping(protocol, b)
            protocol.data_received(message(type="pong", rid=rid, port="bad"))
            assert logged(caplog, "bad message") == 1
            answered = protocol.request(b.engine.message(Ping))
            (rid,) = (r for r in protocol.pending if not protocol.pending[r].done())
            pong = netstring(encode(a.engine.message(Pong, rid)))
            protocol.data_received(pong + pong)  # the second comes before the entry is gone
            assert isinstance(await answered, Pong)
            assert logged(caplog, "which nobody awaits") == 1
            await until(lambda: not protocol.pending)
            assert isinstance(await b.call(address(a), Ping), Pong)
            assert len(b._protocols) == 1

    run_async(scenario)


def test_late_replies_to_abandoned_requests_are_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cancelled request's late reply is dropped without a log line (once: a second reply
    to it is unsolicited, and logged)."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            protocol = b._connections[address(a)]
            rid = cancel_a_ping(protocol, b)
            # The peer's real pong comes late: once the next ping on the connection (replies
            # keep their order) is answered, it has come, and was dropped without a word.
            assert isinstance(await b.call(address(a), Ping), Pong)
            assert not protocol.pending
            assert logged(caplog, "which nobody awaits") == 0
            protocol.data_received(netstring(encode(a.engine.message(Pong, rid))))
            assert logged(caplog, "which nobody awaits") == 1

    run_async(scenario)


def test_connection_lost_under_a_request_cancelled_an_instant_ago() -> None:
    """A connection lost while a just-cancelled request is still listed closes cleanly."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            protocol = b._connections[address(a)]
            other = protocol.request(b.engine.message(Ping))
            waiting = protocol.request(b.engine.message(Ping))
            assert protocol.transport is not None
            protocol.transport.close()
            waiting.cancel()
            await asyncio.wait_for(protocol.closed, SOON)
            with pytest.raises(ConnectionResetError):
                await other
            assert protocol not in b._protocols
            assert isinstance(await b.call(address(a), Ping), Pong)

    run_async(scenario)


# -- stopping ------------------------------------------------------------------------------------


def test_stop_closes_connections_and_cancels_work() -> None:
    """stop() cancels running operations, closes every connection and stops listening."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(5)
            silence(nodes[4])
            running = nodes[0].lookup(nodes[4].engine.id)
            await until(lambda: pending(nodes[0]) > 0)
            await nodes[0].stop()
            assert running.cancelled()
            assert nodes[0]._protocols == set()
            assert nodes[0]._connections == {}
            assert nodes[0]._background == set()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*address(nodes[0]))

    run_async(scenario)


def test_stop_before_start_and_twice() -> None:
    """A node that never listened stops at once, and stopping again is harmless."""

    async def scenario() -> None:
        node = Node()
        await node.stop()
        await node.stop()
        assert node._protocols == set()

    run_async(scenario)


def test_stop_waits_for_a_connection_without_a_transport() -> None:
    """stop() waits for a connection listed before its transport is set, and leaves it be."""

    async def scenario() -> None:
        async with network() as net:
            node = await net.add()
            ghost = NetstringProtocol(node)
            node._protocols.add(ghost)
            node.loop.call_later(0.05, ghost.connection_lost, None)
            await node.stop()
            assert ghost.closed.done()
            assert node._protocols == set()

    run_async(scenario)


def test_connection_made_after_stop_is_closed_at_once() -> None:
    """A connection that completes after stop() is closed as soon as it is made."""

    async def scenario() -> None:
        async with network() as net:
            node, peer = await net.add(), await net.add()
            await node.stop()
            transport, protocol = await node.loop.create_connection(
                lambda: NetstringProtocol(node), *address(peer)
            )
            assert transport.is_closing()
            await asyncio.wait_for(protocol.closed, SOON)
            assert node._protocols == set()

    run_async(scenario)


# -- the shell's side of the routing table -------------------------------------------------------


def test_ping_before_evict_keeps_a_live_contact() -> None:
    """A full bucket pings its oldest contact; if it answers, the newcomer only waits."""

    async def scenario() -> None:
        async with network() as net:
            home = await net.add(k=1)
            old, new = [await net.add(k=1, identity=i) for i in _far_pair(home.engine.id, 2)]
            await old.call(address(home), Ping)
            await new.call(address(home), Ping)
            bucket = home.engine.routing.bucket_for(old.engine.id)
            await until(lambda: bucket.pinging is None)
            assert old.engine.id in home.engine.routing
            assert new.engine.id not in home.engine.routing

    run_async(scenario)


def test_ping_before_evict_replaces_a_dead_contact(caplog: pytest.LogCaptureFixture) -> None:
    """If the oldest contact of a full bucket misses the ping, the newcomer replaces it."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            home = await net.add(k=1, rpc_timeout=FAST)
            old, new = [await net.add(k=1, identity=i) for i in _far_pair(home.engine.id, 2)]
            await old.call(address(home), Ping)
            silence(old)
            await new.call(address(home), Ping)
            await until(lambda: new.engine.id in home.engine.routing)
            assert old.engine.id not in home.engine.routing

    run_async(scenario)
    assert logged(caplog, "ping to ") == 1


def test_handoff_copies_held_items_to_a_newcomer() -> None:
    """A holder copies the items a newcomer is now among the k closest to."""

    async def scenario() -> None:
        async with network() as net:
            holder = await net.add(k=2)
            item = blob(b"held" * 10)
            holder.engine.store(item, 600.0, holder.now())
            newcomer = await net.add(k=2)
            await newcomer.join([address(holder)])
            await until(lambda: newcomer.engine.storage.count() == 1)
            assert newcomer.engine.get(item.key, newcomer.now()) == item

    run_async(scenario)


def test_handoff_that_fails_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A copy a newcomer refuses is logged and changes nothing else."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            holder = await net.add(k=2)
            holder.engine.store(blob(b"held" * 10), 600.0, holder.now())
            newcomer = await net.add(k=2, max_value=4)
            await newcomer.join([address(holder)])
            await until(lambda: logged(caplog, "store to ") == 1)
            assert newcomer.engine.storage.count() == 0
            assert newcomer.engine.id in holder.engine.routing
            entry = holder.engine.routing.entry(newcomer.engine.id)
            assert entry is not None
            assert entry.failures == 0

    run_async(scenario)


def test_forged_value_is_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A peer answering find_value with a forged item is counted as failed; the lookup goes on."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(10)
            key = await nodes[0].put("real", b"real value")
            liar = nodes[9]
            published = nodes[0].engine.storage.published(int(key, 16))
            assert published is not None
            real = published.item
            forged = type(real)(b"forged", real.public_key, real.name, real.seq + 1, real.signature)
            for node in nodes:
                node.engine.storage.delete(int(key, 16))
            original = liar.engine.get

            def lying_get(k: int, now: float) -> Item | None:
                return forged if k == int(key, 16) else original(k, now)

            vars(liar.engine)["get"] = lying_get
            with pytest.raises(NotFoundError):
                await nodes[1].get(key)
            entry = nodes[1].engine.routing.entry(liar.engine.id)
            assert entry is not None
            assert entry.failures >= 1

    run_async(scenario)
    assert logged(caplog, "sent an invalid value") == 1


def test_unexpected_reply_type_counts_as_a_failed_query() -> None:
    """A peer answering find_node with a value is treated as a failed query."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(3)
            odd = nodes[2]
            real_handle = odd.engine.handle

            def handle(request: Message, host: str, now: float) -> Handled:
                handled = real_handle(request, host, now)
                if isinstance(request, FindNode):
                    item = blob(b"not asked for")
                    reply = odd.engine.message(Value, request.rid, item=item)
                    return Handled(reply, handled.seen)
                return handled

            vars(odd.engine)["handle"] = handle
            machine = await nodes[0].lookup(odd.engine.id)
            assert odd.engine.id not in {c.id for c in machine.closest()}
            entry = nodes[0].engine.routing.entry(odd.engine.id)
            assert entry is not None
            assert entry.failures >= 1

    run_async(scenario)


# -- bad input on the wire -----------------------------------------------------------------------


@pytest.mark.parametrize("data", FRAMING_CASES)
def test_framing_errors_close_the_connection(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """Broken framing closes that connection unanswered, is logged, and the node keeps serving."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            raw = await Raw.open(target.node)
            raw.send(data)
            assert await raw.lost() == b""
            await raw.close()
            await target.still_serving()

    run_async(scenario)
    assert logged(caplog, "framing lost") == 1


def test_configured_size_limit_applies(caplog: pytest.LogCaptureFixture) -> None:
    """A message of exactly max_message bytes is served; one byte more closes the connection."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            # Room for a pong with its handshake proof (about 320 bytes).
            target = await Target.create(net, max_message=400)
            caplog.clear()  # the target's own join met replies over its limit
            fits = await Raw.open(target.node)
            fits.send(padded_ping(400))
            assert [r.TYPE for r in await fits.replies(1)] == ["pong"]
            await fits.close()
            raw = await Raw.open(target.node)
            raw.send(padded_ping(401))
            assert await raw.lost() == b""
            await raw.close()
            await target.still_serving()

    run_async(scenario)
    assert logged(caplog, "framing lost") == 1
    assert logged(caplog, "the limit is 400 bytes") == 1


@pytest.mark.parametrize(("data", "code", "rid"), ERROR_CASES)
def test_bad_messages_get_an_error_reply(
    data: bytes, code: ErrorCode, rid: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-framed bad message gets an error reply with its code; the connection stays usable."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            raw = await Raw.open(target.node)
            raw.send(data)
            (error,) = await raw.replies(1)
            assert isinstance(error, Error)
            assert (error.code, error.rid, error.sender) == (code, rid, target.node.engine.id)
            assert error.message
            raw.send(message(rid=8))
            (pong,) = await raw.replies(1)
            assert isinstance(pong, Pong)
            assert pong.rid == 8
            await raw.close()
            await target.still_serving()

    run_async(scenario)
    assert logged(caplog, "bad message") + logged(caplog, "refused") == 1


def test_unsolicited_reply_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A well-formed reply to a request nobody sent draws no answer, only a log line."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            raw = await Raw.open(target.node)
            raw.send(message(type="pong", rid=99) + message(rid=8))
            assert [(r.TYPE, r.rid) for r in await raw.replies(1)] == [("pong", 8)]
            await raw.close()
            await target.still_serving()

    run_async(scenario)
    assert logged(caplog, "which nobody awaits") == 1


def test_broken_reply_fails_the_waiting_request(caplog: pytest.LogCaptureFixture) -> None:
    """A malformed reply fails the request it answers, instead of drawing an error reply."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            node, peer = target.node, target.other
            silence(peer)
            call = asyncio.create_task(node.call(address(peer), Ping))
            await until(lambda: address(peer) in node._connections and pending(node) == 1)
            connection = node._connections[address(peer)]
            (request_id,) = connection.pending
            connection.data_received(message(type="pong", rid=request_id, port="bad"))
            with pytest.raises(ProtocolError):
                await call
            assert pending(node) == 0
            unsilence(peer)
            await target.still_serving()

    run_async(scenario)
    assert logged(caplog, "bad message") == 1


def test_broken_unsolicited_reply_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A malformed reply to no request of ours is logged and draws no error reply."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            raw = await Raw.open(target.node)
            raw.send(message(type="pong", rid=4242, port="bad") + message(rid=8))
            assert [(r.TYPE, r.rid) for r in await raw.replies(1)] == [("pong", 8)]
            await raw.close()
            await target.still_serving()

    run_async(scenario)
    assert logged(caplog, "bad message") == 1


def test_garbage_then_valid_request_on_one_connection() -> None:
    """Bad messages on one connection are each answered, then a good one is served."""

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            raw = await Raw.open(target.node)
            raw.send(b"".join(netstring(b"junk %d" % i) for i in range(9)) + message())
            replies = await raw.replies(10)
            assert [type(r) for r in replies] == [Error] * 9 + [Pong]
            await raw.close()
            await target.still_serving()

    run_async(scenario)


def test_data_after_a_framing_error_is_not_processed(caplog: pytest.LogCaptureFixture) -> None:
    """After framing is lost, what follows is never treated as a request, and is logged once."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            raw = await Raw.open(target.node)
            raw.send(b"x:" + message())
            assert await raw.lost() == b""
            await raw.close()
            assert logged(caplog, "framing lost") == 1
            # Bytes already read when the connection broke are dropped without a second line.
            a, b = await net.create(2)
            protocol = b._connections[address(a)]
            protocol.data_received(b"y:")
            protocol.data_received(message())
            assert protocol.transport is not None
            assert protocol.transport.is_closing()
            await asyncio.wait_for(protocol.closed, SOON)
            assert logged(caplog, "framing lost") == 2
            await target.still_serving()

    run_async(scenario)


def test_store_of_a_valid_item_over_a_raw_connection_is_kept() -> None:
    """A valid store from a peer that does not listen is acknowledged and kept."""

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            item = PUBLISHER.sign("fresh", b"new value", 1)
            raw = await Raw.open(target.node)
            raw.send(store(item.to_json()))
            assert [r.TYPE for r in await raw.replies(1)] == ["ok"]
            await raw.close()
            assert target.node.engine.get(item.key, target.node.now()) == item

    run_async(scenario)


def test_a_peer_sending_too_much_garbage_is_disconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After max_bad_messages malformed messages, the connection is closed and logged."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            target = await Target.create(net)
            raw = await Raw.open(target.node)
            raw.send(b"".join(netstring(b"junk %d" % i) for i in range(12)))
            replies = await raw.replies(10)
            assert [type(r) for r in replies] == [Error] * 10
            assert await raw.lost() == b""
            await raw.close()
            await target.still_serving()

    run_async(scenario)
    assert logged(caplog, "closing connection from 127.0.0.1: 10 malformed messages") == 1


def test_a_peer_over_its_rate_is_refused_then_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A peer over its request rate gets one RATE_LIMITED error, then no answer at all."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            limits = Limits(peer_rate=0.001, peer_burst=2.0, cool_off=60.0)
            node = await net.add(limits=limits)
            raw = await Raw.open(node)
            raw.send(b"".join(message(rid=rid) for rid in (1, 2, 3, 4)))
            replies = await raw.replies(3)
            assert [(r.TYPE, r.rid) for r in replies] == [("pong", 1), ("pong", 2), ("error", 3)]
            assert isinstance(replies[2], Error)
            assert replies[2].code == ErrorCode.RATE_LIMITED
            await until(lambda: node.engine.rate_limiter.dropped == 1)
            assert node.metrics.rpcs[("received", "ping", "refuse")] == 1
            assert node.metrics.rpcs[("received", "ping", "drop")] == 1
            await raw.close()
            other = await net.add()
            assert isinstance(await other.call(address(node), Ping), Pong)

    run_async(scenario)
    assert logged(caplog, "is over its request rate") == 1


class FakeTransport(asyncio.Transport):
    """A transport from another host that only remembers being closed."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.host, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def test_too_many_connections_from_one_address_are_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connections from one (non-loopback) address beyond the limit are closed at once."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            node = await net.add(limits=Limits(max_connections_per_ip=2))
            local = [await Raw.open(node) for _ in range(3)]
            await until(lambda: len(node._protocols) == 3)
            assert not logged(caplog, "connections from it")
            protocols = [NetstringProtocol(node) for _ in range(4)]
            transports = [FakeTransport("192.0.2.7") for _ in protocols[:3]]
            transports.append(FakeTransport("192.0.2.8"))
            for protocol, transport in zip(protocols, transports, strict=True):
                protocol.connection_made(transport)
            assert [t.closing for t in transports] == [False, False, True, False]
            for protocol in protocols:
                protocol.connection_lost(None)
            for raw in local:
                await raw.close()

    run_async(scenario)
    assert logged(caplog, "closing connection from 192.0.2.7: over 2 connections from it") == 1


# -- housekeeping --------------------------------------------------------------------------------


def test_housekeeping_runs_every_job(caplog: pytest.LogCaptureFixture) -> None:
    """Housekeeping saves contacts and drops expired items; a failing job is logged, not fatal."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(3, k=3)
            short = blob(b"short-lived")
            nodes[0].engine.store(short, 0.2, nodes[0].now())
            await nodes[0].put("mine", b"kept")
            calls: list[float] = []
            expire = nodes[0].expire

            def flaky_expire() -> int:
                calls.append(nodes[0].now())
                if len(calls) == 1:
                    raise RuntimeError("the disk is on fire")
                return expire()

            vars(nodes[0])["expire"] = flaky_expire
            fast = Intervals(
                refresh=0.05,
                replicate=0.05,
                republish=0.05,
                expire=0.05,
                save=0.05,
                stale_bucket=0.0,
            )
            for node in nodes:
                node.start_housekeeping(fast)
            jobs = [t for t in nodes[0]._background if isinstance(t, asyncio.Task)]
            assert len(jobs) == 5
            await until(lambda: all(n.engine.storage.contacts() for n in nodes))
            await until(lambda: not any(n.engine.storage.get(short.key) for n in nodes))
            await until(lambda: len(calls) >= 3)
            await asyncio.sleep(0.2)
            assert all(n.engine.storage.count() == 1 for n in nodes)
            await nodes[0].stop()
            assert all(job.cancelled() for job in jobs)
            assert nodes[0]._background == set()

    run_async(scenario)
    failures = [r for r in caplog.records if "housekeeping job expire failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert not logged(caplog, "housekeeping job refresh failed")


def test_replicate_and_republish_return_counts() -> None:
    """replicate() and republish() return how many items were stored again; failures don't count."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(3, k=4)
            node = await net.add(k=4, max_value=20)
            await node.join([address(nodes[0])])
            await node.put("mine", b"value")
            assert await node.replicate() == 1
            assert await node.republish() == 1
            too_large = blob(b"x" * 100)
            node.engine.storage.put(StoredItem(too_large, node.now() + 60.0))
            assert await node.replicate() == 1
            assert node.expire() == 0
            assert node.save_contacts() == 3
            assert await node.refresh(0.0) >= 1

    run_async(scenario)


# -- event loops and imports ---------------------------------------------------------------------


def test_run_on_uvloop() -> None:
    """txdht.aio.run(..., loop="uvloop") runs on uvloop, where a put and a get work."""

    async def scenario() -> bytes:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with network() as net:
            a, b = await net.create(2)
            key = await a.put("on uvloop", b"fast")
            return await b.get(key)

    assert in_thread(lambda: run(bounded(scenario(), 30.0), loop="uvloop")) == b"fast"


def test_run_on_the_default_loop() -> None:
    """txdht.aio.run(coro) runs on asyncio's own loop and returns the coroutine's result."""

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        assert not isinstance(loop, uvloop.Loop)
        async with Node() as node:
            return await node.put_blob(b"default loop")

    assert in_thread(lambda: run(bounded(scenario(), 30.0))) == id_to_hex(blob(b"default loop").key)


def test_importing_txdht_aio_does_not_import_twisted() -> None:
    """The asyncio twin runs without Twisted: importing it imports no Twisted module."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = "import txdht.aio, sys; assert 'twisted' not in sys.modules, 'twisted was imported'"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
