"""The native asyncio twin (``txdht.aio``) on real loopback TCP: sockets and the driver's I/O.

Connections and their reuse, lost connections and connect failures, framing, the batching of
writes, stopping, the rejoin through ``serve``, uvloop, and a few end-to-end puts and gets. The
DHT's decisions (joins, puts and gets, timeouts, cancellation, the routing table, bad messages,
housekeeping) are tested in virtual time on ``txdht.aio.testing`` in tests/test_aio_node.py.

pytest-twisted runs a reactor in the main thread (on the asyncio pass, the reactor owns the main
thread's event loop), so every scenario here runs under ``asyncio.run`` in a thread of its own,
through ``run_async``. Each scenario is bounded by a timeout, and every node, server, transport
and loop it opens is closed before it ends (warnings are errors). These nodes run on the loop's
clock: tests that wait for timeouts use an ``rpc_timeout`` of a fraction of a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
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

from tests.test_bad_input import FRAMING_CASES, PUBLISHER, message, padded_ping
from txdht.aio import NetstringProtocol, Node, run
from txdht.aio.node import READ_SIZE, read_buffer
from txdht.core import operations as ops
from txdht.core.commands import Command
from txdht.core.framing import NetstringDecoder
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import MAX_VALUE_BYTES, Item, blob
from txdht.core.messages import FindValue, Message, Ping, Pong, Value, decode, encode
from txdht.core.schedule import Intervals
from txdht.core.streams import Link

ROOT = Path(__file__).resolve().parent.parent
#: The rpc_timeout of tests that wait for requests to time out.
FAST = 0.3
#: How long a test waits for something that should happen at once on loopback.
SOON = 2.0

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
    request: Message, host: str, port: int, now: float, link: object = None
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
    return [
        *(f"request {r.rid} to {r.peer}" for r in node.engine.pending()),
        *(f"operation {type(op).__name__}" for op in node.engine.running()),
        *(f"connect attempt {task!r}" for task in node._connects),
        *(["a core timer"] if node.engine.next_timer() is not None else []),
        *(["the loop timer"] if node._timer is not None else []),
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


# -- end to end: put and get over TCP ------------------------------------------------------------


def test_put_and_get_over_loopback_tcp() -> None:
    """A signed item and a blob put on one node of four are read back over TCP by the others."""

    async def scenario() -> None:
        async with network() as net:
            nodes = await net.create(4)
            assert all(len(n.engine.routing) == 3 for n in nodes)
            key = await nodes[1].put("greeting", b"hello")
            for node in nodes:
                assert await node.get(key) == b"hello"
            blob_key = await nodes[2].put_blob(b"immutable")
            assert blob_key == id_to_hex(blob(b"immutable").key)
            assert await nodes[3].get(blob_key) == b"immutable"

    run_async(scenario)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_message_longer_than_one_read_arrives_whole(loop: str) -> None:
    """Reads go into one buffer of READ_SIZE bytes per thread: a store and a value of the
    largest item (each spans several reads) arrive whole, on both loops."""
    item = blob(random.Random(7).randbytes(MAX_VALUE_BYTES))
    assert len(encode(Value(rid=1, sender=0, port=0, item=item))) > READ_SIZE

    async def scenario() -> bytes:
        async with network() as net:
            a, b = await net.create(2)
            key = await a.put_blob(item.value)  # a store to b
            held = b.engine.get(item.key, b.now())
            assert held is not None
            assert held.value == item.value
            reply = await b.call(address(a), FindValue, key=item.key)  # a value from a
            assert isinstance(reply, Value)
            assert key == id_to_hex(reply.item.key)
            return reply.item.value

    assert in_thread(lambda: run(bounded(scenario(), 30.0), loop=loop)) == item.value


def test_a_proactor_loop_gives_each_connection_a_buffer_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proactor loop (Windows') reads on many sockets at once: there, no buffer is shared."""

    class Proactor(asyncio.SelectorEventLoop):
        """Stands for Windows' ProactorEventLoop, which this platform has not."""

    selector = asyncio.SelectorEventLoop()
    assert NetstringProtocol(Node(loop=selector))._buffer is read_buffer()
    monkeypatch.setattr(asyncio, "ProactorEventLoop", Proactor, raising=False)
    proactor = Proactor()
    try:
        one, two = NetstringProtocol(Node(loop=proactor)), NetstringProtocol(Node(loop=proactor))
        assert one._buffer is not two._buffer
        assert len(one._buffer) == READ_SIZE
        assert NetstringProtocol(Node(loop=selector))._buffer is read_buffer()
    finally:
        proactor.close()
        selector.close()


def test_each_thread_reads_into_its_own_buffer() -> None:
    """The read buffer is shared by the connections of one thread, and by no other thread."""
    mine = read_buffer()
    assert read_buffer() is mine
    assert len(mine) == READ_SIZE
    theirs = in_thread(read_buffer)
    assert theirs is not mine


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


# -- connections ---------------------------------------------------------------------------------


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


def test_replies_to_one_segment_leave_in_one_write() -> None:
    """Replies to requests that arrived together leave together, in one write to the socket."""

    async def scenario() -> None:
        async with network() as net:
            node = await net.add()
            raw = await Raw.open(node)
            await until(lambda: len(node.streams.links) == 1)
            (link,) = node.streams.links
            transport = link.handle.transport
            writes: list[bytes] = []
            write = transport.write

            def recorded(data: bytes) -> None:
                writes.append(bytes(data))
                write(data)

            vars(transport)["write"] = recorded
            raw.send(b"".join(message(rid=rid) for rid in (1, 2, 3)))
            replies = await raw.replies(3)
            assert [(r.TYPE, r.rid) for r in replies] == [("pong", 1), ("pong", 2), ("pong", 3)]
            assert len(writes) == 1
            await raw.close()

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


# -- bad input on the wire: framing ---------------------------------------------------------------


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


# -- housekeeping --------------------------------------------------------------------------------


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


def test_stop_cancels_a_connection_attempt_still_on_its_way() -> None:
    """stop() cancels a connection attempt that has not finished (and the operation waiting
    for it), and leaves no task behind."""

    async def scenario() -> None:
        started = asyncio.Event()

        async def hanging(address: tuple[str, int], factory: object) -> NetstringProtocol:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("never reached")

        node = Node(connect=hanging)
        await node.start()
        call = asyncio.create_task(node.call(("127.0.0.1", 1), Ping))
        await started.wait()
        assert len(node._connects) == 1
        await node.stop()
        assert not node._connects
        with pytest.raises(asyncio.CancelledError):
            await call

    run_async(scenario)


def test_a_timer_due_at_once_on_uvloop_is_rearmed_without_asking_it_when() -> None:
    """uvloop's ``call_at`` returns a plain ``Handle``, which has no ``when()``, for a time
    already come: the node asked it anyway as the next event came, and the ``AttributeError``
    aborted a healthy connection (seen in a soak of twins on uvloop). The node keeps the time
    itself."""

    async def scenario() -> None:
        async with Node() as node:
            loop = asyncio.get_running_loop()
            due = loop.time() - 0.001  # an engine timer already due: the loop ran late
            node.engine.next_timer = lambda: due  # type: ignore[method-assign]
            if node._timer is not None:
                node._timer.cancel()
            node._timer = None
            node._arm()
            assert not hasattr(node._timer, "when")  # uvloop's plain Handle
            node.run([])  # the next event, before the Handle runs: no AttributeError
            sooner = due - 1.0
            node.engine.next_timer = lambda: sooner  # type: ignore[method-assign]
            node._arm()  # a sooner deadline still replaces it
            assert node._timer_at == sooner

    in_thread(lambda: run(bounded(scenario(), 30.0), loop="uvloop"))
