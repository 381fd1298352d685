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
from txdht.core import operations as ops
from txdht.core.commands import Command
from txdht.core.errors import (
    ErrorCode,
    JoinError,
    NotFoundError,
    ProtocolError,
    PutError,
    RemoteError,
)
from txdht.core.framing import NetstringDecoder
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import Identity, Item, blob
from txdht.core.limits import Limits
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
from txdht.core.schedule import JOBS, Intervals
from txdht.core.storage import MemoryStorage, StoredItem
from txdht.core.streams import Link

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


def _ignore(
    request: Message, host: str, port: int, now: float
) -> tuple[Message | None, list[Command]]:
    """A core's answer to every request: none (and nothing learnt from it)."""
    return None, []


def silence(node: Node) -> None:
    """From now on ``node`` answers no request (it still reads them)."""
    vars(node.engine)["request_received"] = _ignore


def unsilence(node: Node) -> None:
    """``node`` answers requests again."""
    del vars(node.engine)["request_received"]


def pending(node: Node) -> int:
    """How many requests of ``node`` await a reply (or a connection to go out on)."""
    return len(node.engine.pending())


def link_to(node: Node, peer: Node) -> Link:
    """The connection ``node``'s requests to ``peer`` go out on (there must be one)."""
    link = node.streams.link_to(address(peer))
    assert link is not None, "no connection to the peer"
    return link


def connection(node: Node, peer: Node) -> NetstringProtocol:
    """The protocol of the connection ``node``'s requests to ``peer`` go out on."""
    protocol = link_to(node, peer).handle
    assert isinstance(protocol, NetstringProtocol)
    return protocol


def left_behind(node: Node) -> list[str]:
    """What a stopped ``node`` still has: requests, operations, connect attempts, timers."""
    timer = node._timer
    return [
        *(f"request {r.rid} to {r.peer}" for r in node.engine.pending()),
        *(f"operation {type(op).__name__}" for op in node.engine.running()),
        *(f"connect attempt {task!r}" for task in node._connects),
        *(["a core timer"] if node.engine.next_timer() is not None else []),
        *(["the loop timer"] if timer is not None and not timer.cancelled() else []),
    ]


def idle(node: Node) -> bool:
    """Whether ``node`` has nothing in flight: no request, no operation, no connect attempt."""
    return not node.engine.pending() and not node.engine.running() and not node._connects


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
            real = b.engine.request_received

            def no_stores(
                request: Message, host: str, port: int, now: float
            ) -> tuple[Message | None, list[Command]]:
                if isinstance(request, Store):
                    return None, []
                return real(request, host, port, now)

            vars(b.engine)["request_received"] = no_stores
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
            with pytest.raises(TimeoutError, match=f"no reply within {FAST:g} s"):
                await node.call(("127.0.0.1", port), Ping)
            assert node.now() - started >= FAST - 0.01
            assert idle(node)

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
                contact = Contact(node.engine.id, "127.0.0.1", node.port)
                asker.run(asker.engine.seen(contact, asker.now()))
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
            await until(lambda: idle(nodes[0]))

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
            queries = list(lookup.op.requests.values())
            assert {q.op for q in queries} == {lookup.op}
            assert lookup.cancel()
            with pytest.raises(asyncio.CancelledError):
                await lookup
            await until(lambda: pending(nodes[0]) == 0 and not lookup.op.requests)
            assert lookup.op.ended
            assert all(query.ended for query in queries)
            assert idle(nodes[0])

    run_async(scenario)


def test_many_requests_share_one_connection() -> None:
    """Concurrent requests to one peer share one connection, and each gets its own reply."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.add(), await net.add()
            replies = await asyncio.gather(*(a.call(address(b), Ping) for _ in range(5)))
            assert all(isinstance(r, Pong) for r in replies)
            assert len({r.rid for r in replies}) == 5
            assert len(a.streams.links) == 1

    run_async(scenario)


def test_incoming_connection_is_reused_for_requests_back() -> None:
    """A node answering a peer reuses the peer's connection to send it requests."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            incoming = link_to(a, b)
            assert a.streams.links == {incoming}
            assert isinstance(await a.call(address(b), Ping), Pong)
            assert a.streams.links == {incoming}

    run_async(scenario)


def test_cancelling_one_waiter_keeps_the_connection_attempt() -> None:
    """A cancelled waiter for a connection does not cancel the attempt another request awaits."""

    async def scenario() -> None:
        async with network() as net:
            peer, node = await net.add(), await net.add()
            gate = asyncio.Event()
            connect = node._connect

            async def slow_connect(to: tuple[str, int]) -> None:
                await gate.wait()
                await connect(to)

            vars(node)["_connect"] = slow_connect
            first = asyncio.create_task(node.call(address(peer), Ping))
            second = asyncio.create_task(node.call(address(peer), Ping))
            await until(lambda: pending(node) == 2)
            assert node.streams.connecting == [address(peer)]
            assert len(node._connects) == 1
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert pending(node) == 1
            assert len(node._connects) == 1
            gate.set()
            assert isinstance(await second, Pong)
            assert node.streams.connecting == []
            assert len(node.streams.links) == 1
            assert idle(node)

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
            for link in list(a.streams.links):
                assert link.handle.transport is not None
                link.handle.transport.close()
            with pytest.raises(ConnectionResetError, match="lost"):
                await call
            assert pending(a) == 0
            unsilence(b)
            assert isinstance(await a.call(address(b), Ping), Pong)
            assert len(a.streams.links) == 1

    run_async(scenario)


def test_call_to_nobody_fails_with_connection_refused() -> None:
    """A request to an address where nothing listens fails with an OSError (refused)."""

    async def scenario() -> None:
        async with network() as net:
            node = await net.add()
            with pytest.raises(ConnectionRefusedError):
                await node.call(("127.0.0.1", free_port()), Ping)
            assert node.streams.connecting == []
            await until(lambda: idle(node))  # the connect attempt's task ends just after

    run_async(scenario)


def cancel_a_ping(node: Node, peer: Node) -> int:
    """Start a ping from ``node`` to ``peer`` on their connection (with nothing else in flight)
    and cancel its future at once; its request id. The core hears of the cancellation on the
    loop's next turn: until then, the request is still listed."""
    waiting = node.start_op(ops.Call(address(peer), Ping))
    (request,) = node.engine.pending()
    assert request.link is link_to(node, peer)
    waiting.cancel()
    return request.rid


def test_reply_to_a_request_cancelled_an_instant_ago_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply, whole or broken, to a request cancelled before the core has heard of it is
    ignored: the whole one quietly, the broken one as a bad message; a second reply to an
    answered request is logged as unsolicited."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            silence(a)  # only the replies written here reach b
            protocol = connection(b, a)
            rid = cancel_a_ping(b, a)
            protocol.data_received(netstring(encode(a.engine.message(Pong, rid))))
            assert logged(caplog, "which nobody awaits") == 0
            await until(lambda: idle(b))
            rid = cancel_a_ping(b, a)
            protocol.data_received(message(type="pong", rid=rid, port="bad"))
            assert logged(caplog, "bad message") == 1
            await until(lambda: idle(b))
            answered = b.start_op(ops.Call(address(a), Ping))
            (request,) = b.engine.pending()
            pong = netstring(encode(a.engine.message(Pong, request.rid)))
            protocol.data_received(pong + pong)
            assert isinstance(await answered, Pong)
            assert logged(caplog, "which nobody awaits") == 1
            assert idle(b)
            unsilence(a)
            assert isinstance(await b.call(address(a), Ping), Pong)
            assert len(b.streams.links) == 1

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
            protocol = connection(b, a)
            rid = cancel_a_ping(b, a)
            await until(lambda: idle(b))  # the core gave the request up before its reply came
            # The peer's real pong comes late: once the next ping on the connection (replies
            # keep their order) is answered, it has come, and was dropped without a word.
            assert isinstance(await b.call(address(a), Ping), Pong)
            assert pending(b) == 0
            assert logged(caplog, "which nobody awaits") == 0
            protocol.data_received(netstring(encode(a.engine.message(Pong, rid))))
            assert logged(caplog, "which nobody awaits") == 1

    run_async(scenario)


def test_connection_lost_under_a_request_cancelled_an_instant_ago() -> None:
    """A connection lost while a just-cancelled request is still listed closes cleanly."""

    async def scenario() -> None:
        async with network() as net:
            a, b = await net.create(2)
            protocol = connection(b, a)
            other = b.start_op(ops.Call(address(a), Ping))
            waiting = b.start_op(ops.Call(address(a), Ping))
            assert protocol.transport is not None
            protocol.transport.close()
            waiting.cancel()
            await asyncio.wait_for(protocol.closed, SOON)
            with pytest.raises(ConnectionResetError):
                await other
            assert protocol.link not in b.streams.links
            assert b.streams.link_to(address(a)) is None
            assert idle(b)
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
            assert running.op.ended
            assert nodes[0].streams.links == set()
            assert all(nodes[0].streams.link_to(address(n)) is None for n in nodes[1:])
            assert left_behind(nodes[0]) == []
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*address(nodes[0]))

    run_async(scenario)


def test_stop_before_start_and_twice() -> None:
    """A node that never listened stops at once, and stopping again is harmless."""

    async def scenario() -> None:
        node = Node()
        await node.stop()
        await node.stop()
        assert node.streams.links == set()
        assert left_behind(node) == []

    run_async(scenario)


def test_stop_waits_for_a_connection_without_a_transport() -> None:
    """stop() waits for a listed connection that has no transport to close, and leaves it be."""

    async def scenario() -> None:
        async with network() as net:
            node = await net.add()
            ghost = NetstringProtocol(node)
            node.opened(ghost, "127.0.0.1", 40000)
            assert ghost.link in node.streams.links
            node.loop.call_later(0.05, ghost.connection_lost, None)
            await node.stop()
            assert ghost.closed.done()
            assert node.streams.links == set()

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
            assert node.streams.links == set()

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
            await until(lambda: logged(caplog, "could not copy an item to the new contact") == 1)
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
            real = odd.engine.request_received

            def answer_with_a_value(
                request: Message, host: str, port: int, now: float
            ) -> tuple[Message | None, list[Command]]:
                reply, commands = real(request, host, port, now)
                if isinstance(request, FindNode):
                    item = blob(b"not asked for")
                    reply = odd.engine.message(Value, request.rid, item=item)
                return reply, commands

            vars(odd.engine)["request_received"] = answer_with_a_value
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
            await until(lambda: pending(node) == 1 and node.engine.pending()[0].link is not None)
            (request,) = node.engine.pending()
            assert request.link is link_to(node, peer)
            request.link.handle.data_received(message(type="pong", rid=request.rid, port="bad"))
            with pytest.raises(ProtocolError):
                await call
            assert idle(node)
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
            protocol = connection(b, a)
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
            await until(lambda: len(node.streams.links) == 3)
            assert not logged(caplog, "connections from it")
            protocols = [NetstringProtocol(node) for _ in range(4)]
            transports = [FakeTransport("192.0.2.7") for _ in protocols[:3]]
            transports.append(FakeTransport("192.0.2.8"))
            for protocol, transport in zip(protocols, transports, strict=True):
                protocol.connection_made(transport)
            assert [t.closing for t in transports] == [False, False, True, False]
            for protocol in protocols:
                protocol.connection_lost(None)
            assert len(node.streams.links) == 3
            for raw in local:
                await raw.close()

    run_async(scenario)
    assert logged(caplog, "closing connection from 192.0.2.7: over 2 connections from it") == 1


# -- housekeeping --------------------------------------------------------------------------------


class FailingOnce(MemoryStorage):
    """An in-memory store whose first ``expire`` fails, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        #: When ``expire`` was called.
        self.expiries: list[float] = []

    def expire(self, now: float) -> int:
        self.expiries.append(now)
        if len(self.expiries) == 1:
            raise RuntimeError("the disk is on fire")
        return super().expire(now)


#: Every housekeeping job every 50 ms, and every bucket stale at once.
EVERY_50_MS = Intervals(
    refresh=0.05, replicate=0.05, republish=0.05, expire=0.05, save=0.05, stale_bucket=0.0
)


def test_housekeeping_runs_every_job(caplog: pytest.LogCaptureFixture) -> None:
    """serve() runs every housekeeping job on its interval (contacts saved, expired items
    dropped, items stored again); a failing job is logged, not fatal; stop() ends it all."""
    caplog.set_level(logging.DEBUG, logger="txdht.aio")

    async def scenario() -> None:
        async with network() as net:
            flaky = FailingOnce()
            nodes = [await net.add(k=3, storage=flaky), await net.add(k=3), await net.add(k=3)]
            for node in nodes[1:]:
                await node.join([address(nodes[0])])
            short = blob(b"short-lived")
            nodes[0].engine.store(short, 0.2, nodes[0].now())
            await nodes[0].put("mine", b"kept")
            seeds = [address(nodes[1]), address(nodes[0]), address(nodes[0])]
            services = [n.serve([seed], EVERY_50_MS) for n, seed in zip(nodes, seeds, strict=True)]
            await until(lambda: all(s.joined for s in services))
            await until(lambda: all(n.engine.storage.contacts() for n in nodes))
            await until(lambda: not any(n.engine.storage.get(short.key) for n in nodes))
            await until(lambda: len(flaky.expiries) >= 3)

            def every_job_ran() -> bool:
                return all(logged(caplog, f"{job} done: ") >= 3 for job in JOBS)

            await until(every_job_ran)
            await asyncio.sleep(0.2)
            assert all(n.engine.storage.count() == 1 for n in nodes)
            await nodes[0].stop()
            assert services[0].ended
            assert left_behind(nodes[0]) == []

    run_async(scenario)
    failures = [r for r in caplog.records if "housekeeping job" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [
        "housekeeping job expire failed: RuntimeError('the disk is on fire')"
    ]
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None


def test_serve_rejoins_through_its_seed_once_no_contact_is_live(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The asyncio twin rejoining when its table has emptied, as the Twisted service does: a
    node run by serve() whose every contact stopped answering joins again through its seed,
    at its next refresh job once the seed is back."""
    caplog.set_level(logging.INFO, logger="txdht.aio")
    intervals = Intervals(refresh=0.5, stale_bucket=0.0)

    async def scenario() -> None:
        async with network() as net:
            seed = await net.add()
            twin = await net.add(rpc_timeout=FAST)
            service = twin.serve([address(seed)], intervals)
            await until(lambda: service.joined, 5.0)
            seed_contact = Contact(seed.engine.id, *address(seed))
            assert twin.engine.routing.contacts(live=True) == [seed_contact]
            started: list[tuple[float, str]] = []  # when each refresh job began, and how

            def job_changed(job: str, running: bool) -> None:
                if job == "refresh" and running:
                    started.append((twin.now(), type(service.busy[job]).__name__))

            service.job_observers.append(job_changed)
            await seed.stop()
            # The refresh jobs' lookups fail on the seed until it no longer counts as live;
            # it stays in the table (there is no one to replace it with).
            await until(lambda: not twin.engine.routing.contacts(live=True), 5.0)
            assert twin.engine.routing.contacts() == [seed_contact]
            assert started[0][1] == "Refresh"  # the seed still counted as live then
            back = Node(identity=seed.engine.identity, rpc_timeout=0.5)
            await back.start(*address(seed))
            net.nodes.append(back)
            back_at = twin.now()
            await until(lambda: logged(caplog, "joined the network") == 2, 5.0)
            joins = [when for when, how in started if how == "Join" and when >= back_at]
            assert joins, f"no refresh job joined after the seed came back: {started}"
            assert joins[0] - back_at <= intervals.refresh + 0.5
            assert twin.engine.routing.contacts(live=True) == [seed_contact]
            assert twin.engine.id in back.engine.routing
            assert service.joined
            assert twin.engine.storage.contacts() == [seed_contact]

    run_async(scenario)


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
