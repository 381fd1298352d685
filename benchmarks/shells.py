"""One "shell" per contender: the same small interface over each implementation and loop.

A shell gives the measures (``benchmarks.measures``) what they need and nothing more:

- ``gather(coroutines)`` and ``sleep(seconds)``, awaitable on the shell's loop;
- ``new_node(k)`` (listening on 127.0.0.1, a free port), ``port(node)``, ``join(node, seed)``,
  ``light_join(node, seed)`` (for the memory measure's many nodes: ours ping the seed and ask
  it once for the contacts closest to their id, which go in the table uncontacted, so that each
  node holds one connection and 500 nodes fit in the open-file limit; kademlia's bootstrap and
  OpenDHT's are light already),
  ``settle(nodes)`` (wait until background joins are done; OpenDHT only), ``quiesce(nodes)``
  (wait until the background work a phase set off is done, before its messages are counted),
  ``stop_all(nodes)``;
- ``put(node, value)`` returning ``(key, finished_at | None)`` and ``get(node, key)`` returning
  ``(value | None, finished_at | None)``; ``holds(node, key)``; ``sent_total(nodes)`` and
  ``sent_by_kind(nodes)`` (requests sent so far by all nodes, in all and by kind; by kind
  None when the implementation cannot tell); ``replicas(k)``;
- ``rpc_pair()`` (a ping function between two endpoints, and a close function) and
  ``serving_server(contacts)`` (a port, a served-replies counter, and a close function), for
  the contenders that speak txdht's wire protocol, and for the floors.

Twisted shells are driven from ``Deferred.fromCoroutine``: their awaitables are Deferreds and
coroutines. Every other shell runs in an asyncio task: Deferreds (the adapter's Twisted node,
the asyncioreactor floor) are awaited through ``Deferred.asFuture``, as the adapter does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.common import unlimited
from txdht.core.framing import NetstringDecoder, netstring
from txdht.core.ids import Contact, id_from_hex
from txdht.core.messages import FindNode, Nodes, Ping, encode

__all__ = [
    "AdapterShell",
    "AioFloorShell",
    "AioShell",
    "KademliaShell",
    "OpenDHTShell",
    "TwistedFloorShell",
    "TwistedShell",
]

LOCALHOST = "127.0.0.1"
#: Frames up to this size are accepted by the floors (the nodes' default limit).
MAX_MESSAGE = 1024 * 1024
#: Contacts in the floor's canned find_node reply (k = 20, as in our nodes' replies).
REPLY_CONTACTS = 20
#: Seconds an OpenDHT operation may wait for its callback.
OP_TIMEOUT = 10.0
Address = tuple[str, int]


def _sent(metrics: Any) -> int:
    return sum(n for (direction, _, _), n in metrics.rpcs.items() if direction == "sent")


def _fill(engine: Any, contacts: int, now: float, seed: int = 7) -> int:
    """Put ``contacts`` made-up contacts in a routing table (never contacted: the benchmark's
    clients do not listen, so the server never has a reason to call anyone)."""
    rng = random.Random(seed)
    for i in range(contacts):
        engine.seen(Contact(rng.getrandbits(512), LOCALHOST, 20000 + i), now)
    return len(engine.routing)


def _learn(engine: Any, contacts: Any, now: float) -> None:
    """Add the contacts of a ``nodes`` reply to a routing table without contacting them."""
    for contact in contacts:
        engine.seen(contact, now)


def canned_nodes_reply(contacts: int = 20) -> bytes:
    """A real ``nodes`` reply with ``contacts`` contacts, as the floor's fixed answer."""
    rng = random.Random(3)
    nodes = tuple(Contact(rng.getrandbits(512), LOCALHOST, 20000 + i) for i in range(contacts))
    return encode(Nodes(rid=1, sender=rng.getrandbits(512), port=4000, nodes=nodes))


def ping_payload() -> bytes:
    """The bytes of a ping request, as the floor's echoed payload."""
    return encode(Ping(rid=12345, sender=random.Random(5).getrandbits(512), port=40000))


# -- our nodes ---------------------------------------------------------------------------------


class _OursMixin:
    """What every txdht shell shares: the engine and metrics of a node."""

    def engine(self, node: Any) -> Any:
        return node.engine

    def metrics(self, node: Any) -> Any:
        return node.metrics

    def replicas(self, k: int) -> int:
        return k

    def holds(self, node: Any, key: str) -> bool:
        return bool(self.engine(node).get(id_from_hex(key), self.now()) is not None)

    def sent_total(self, nodes: list[Any]) -> int:
        return sum(_sent(self.metrics(node)) for node in nodes)

    def sent_by_kind(self, nodes: list[Any]) -> dict[str, int] | None:
        counts: dict[str, int] = {}
        for node in nodes:
            for (direction, kind, _), n in self.metrics(node).rpcs.items():
                if direction == "sent":
                    counts[kind] = counts.get(kind, 0) + n
        return counts

    async def settle(self, nodes: list[Any]) -> bool:
        return True

    async def quiesce(self, nodes: list[Any], timeout: float = 5.0) -> None:
        """Wait (``timeout`` seconds at most) until no node has a request in flight: the
        background work a phase set off (a handoff's stores to a node that just heard of a
        newcomer) ends, and is counted, in that phase, not the next."""
        deadline = time.monotonic() + timeout
        while any(self.engine(node).pending() for node in nodes):
            if time.monotonic() >= deadline:
                return
            await self.sleep(0.01)

    def now(self) -> float:
        raise NotImplementedError

    # Twisted's Node and the asyncio twin share these (the adapter has its own).

    def port(self, node: Any) -> int:
        return int(node.port)

    async def join(self, node: Any, seed: Address) -> None:
        await node.join([seed])

    async def light_join(self, node: Any, seed: Address) -> None:
        pong = await node.call(seed, Ping)
        seed_contact = Contact(pong.sender, *seed)
        node.engine.seen(seed_contact, self.now())
        reply = await node.call(seed_contact, FindNode, target=node.engine.id)
        _learn(node.engine, reply.nodes, self.now())

    async def put(self, node: Any, value: bytes) -> tuple[str, None]:
        return await node.put_blob(value), None

    async def get(self, node: Any, key: str) -> tuple[bytes, None]:
        return await node.get(key), None


class TwistedShell(_OursMixin):
    """The Twisted node on the running reactor (twisted-epoll)."""

    def __init__(self, reactor: Any) -> None:
        from twisted.internet import defer, task

        self.reactor = reactor
        self._defer = defer
        self._task = task

    def gather(self, coroutines: list[Any]) -> Any:
        from twisted.internet.defer import Deferred

        return self._defer.gatherResults(
            [Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True
        )

    def sleep(self, seconds: float) -> Any:
        return self._task.deferLater(self.reactor, seconds)

    def now(self) -> float:
        return float(self.reactor.seconds())

    async def new_node(self, k: int) -> Any:
        from txdht.node import Node

        node = Node(self.reactor, k=k, limits=unlimited())
        await node.listen(f"tcp:0:interface={LOCALHOST}")
        return node

    async def stop_all(self, nodes: list[Any]) -> None:
        await self._defer.DeferredList([n.stop() for n in nodes], consumeErrors=True)

    async def rpc_pair(self) -> tuple[Callable[[], Any], Callable[[], Awaitable[None]]]:
        server, client = await self.new_node(20), await self.new_node(20)
        address = (LOCALHOST, server.port)
        await client.call(address, Ping)

        async def close() -> None:
            await self.stop_all([client, server])

        return (lambda: client.call(address, Ping)), close

    async def serving_server(self, contacts: int) -> tuple[int, Callable[[], int], Any]:
        node = await self.new_node(20)
        _fill(node.engine, contacts, self.now())

        async def close() -> None:
            await node.stop()

        return node.port, (lambda: node.metrics.rpcs[("received", "find_node", "ok")]), close


class AdapterShell(_OursMixin):
    """The Twisted node through ``txdht.asyncio_adapter.AsyncioNode`` on asyncioreactor."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def gather(self, coroutines: list[Any]) -> Any:
        return asyncio.gather(*coroutines)

    def sleep(self, seconds: float) -> Any:
        return asyncio.sleep(seconds)

    def now(self) -> float:
        return self.loop.time()

    def engine(self, node: Any) -> Any:
        return node.node.engine

    def metrics(self, node: Any) -> Any:
        return node.node.metrics

    def holds(self, node: Any, key: str) -> bool:
        engine = self.engine(node)
        return bool(engine.get(id_from_hex(key), node.node.reactor.seconds()) is not None)

    async def new_node(self, k: int) -> Any:
        from txdht.asyncio_adapter import AsyncioNode

        node = AsyncioNode(k=k, limits=unlimited())
        await node.start(LOCALHOST, 0)
        return node

    def port(self, node: Any) -> int:
        return int(node.port)

    async def join(self, node: Any, seed: Address) -> None:
        await node.join([seed])

    async def light_join(self, node: Any, seed: Address) -> None:
        twisted_node = node.node
        pong = await twisted_node.call(seed, Ping).asFuture(self.loop)
        seed_contact = Contact(pong.sender, *seed)
        twisted_node.engine.seen(seed_contact, twisted_node.reactor.seconds())
        call = twisted_node.call(seed_contact, FindNode, target=twisted_node.engine.id)
        reply = await call.asFuture(self.loop)
        _learn(twisted_node.engine, reply.nodes, twisted_node.reactor.seconds())

    async def put(self, node: Any, value: bytes) -> tuple[str, None]:
        return await node.put_blob(value), None

    async def get(self, node: Any, key: str) -> tuple[bytes, None]:
        return await node.get(key), None

    async def stop_all(self, nodes: list[Any]) -> None:
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)

    async def rpc_pair(self) -> tuple[Callable[[], Any], Callable[[], Awaitable[None]]]:
        server, client = await self.new_node(20), await self.new_node(20)
        address = (LOCALHOST, server.port)
        twisted_client = client.node
        await twisted_client.call(address, Ping).asFuture(self.loop)

        async def close() -> None:
            await self.stop_all([client, server])

        return (lambda: twisted_client.call(address, Ping).asFuture(self.loop)), close

    async def serving_server(self, contacts: int) -> tuple[int, Callable[[], int], Any]:
        node = await self.new_node(20)
        _fill(node.node.engine, contacts, node.node.reactor.seconds())
        metrics = node.node.metrics
        return node.port, (lambda: metrics.rpcs[("received", "find_node", "ok")]), node.stop


class AioShell(_OursMixin):
    """The native asyncio twin, on whatever loop runs it (asyncio or uvloop)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def gather(self, coroutines: list[Any]) -> Any:
        return asyncio.gather(*coroutines)

    def sleep(self, seconds: float) -> Any:
        return asyncio.sleep(seconds)

    def now(self) -> float:
        return self.loop.time()

    async def new_node(self, k: int) -> Any:
        from txdht.aio import Node

        node = Node(k=k, limits=unlimited())
        await node.start(LOCALHOST, 0)
        return node

    async def stop_all(self, nodes: list[Any]) -> None:
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)

    async def rpc_pair(self) -> tuple[Callable[[], Any], Callable[[], Awaitable[None]]]:
        server, client = await self.new_node(20), await self.new_node(20)
        address = (LOCALHOST, server.port)
        await client.call(address, Ping)

        async def close() -> None:
            await self.stop_all([client, server])

        return (lambda: client.call(address, Ping)), close

    async def serving_server(self, contacts: int) -> tuple[int, Callable[[], int], Any]:
        node = await self.new_node(20)
        _fill(node.engine, contacts, self.now())
        return node.port, (lambda: node.metrics.rpcs[("received", "find_node", "ok")]), node.stop


# -- the floors: netstring echo, no DHT logic --------------------------------------------------


class TwistedFloorShell:
    """A bare netstring echo with txdht's ``NetstringDecoder`` (the Twisted node's framing),
    on the epoll reactor (``loop=None``: driven from ``Deferred.fromCoroutine``) or on
    asyncioreactor (``loop`` given: Deferreds awaited through ``asFuture``).

    Its sockets set TCP_NODELAY, as asyncio's (and uvloop's) do by default, and as the Twisted
    node does, and it writes as the node does (one write per segment received, straight to the
    socket when nothing is queued: ``txdht.node.eager_writer``), so that the four floors are
    the best each loop can do.
    """

    def __init__(self, reactor: Any, loop: asyncio.AbstractEventLoop | None = None) -> None:
        from twisted.internet import defer, task

        self.reactor = reactor
        self.loop = loop
        self._defer = defer
        self._task = task

    def _wait(self, d: Any) -> Any:
        return d if self.loop is None else d.asFuture(self.loop)

    def gather(self, coroutines: list[Any]) -> Any:
        if self.loop is not None:
            return asyncio.gather(*coroutines)
        from twisted.internet.defer import Deferred

        return self._defer.gatherResults(
            [Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True
        )

    def sleep(self, seconds: float) -> Any:
        if self.loop is not None:
            return asyncio.sleep(seconds)
        return self._task.deferLater(self.reactor, seconds)

    async def _listen(self, protocol: type) -> Any:
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory

        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface=LOCALHOST)
        return await self._wait(endpoint.listen(Factory.forProtocol(protocol)))

    async def rpc_pair(self) -> tuple[Callable[[], Any], Callable[[], Awaitable[None]]]:
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory, Protocol

        from txdht.node import eager_writer

        class Echo(Protocol):
            def connectionMade(self) -> None:
                self.decoder = NetstringDecoder(MAX_MESSAGE)
                self.transport.setTcpNoDelay(True)
                self.write = eager_writer(self.transport)

            def dataReceived(self, data: bytes) -> None:
                replies = [netstring(payload) for payload in self.decoder.feed(data)]
                if replies:  # one write per segment, as the node holds its writes
                    self.write(b"".join(replies))

        defer = self._defer

        class Client(Protocol):
            def __init__(self) -> None:
                self.decoder = NetstringDecoder(MAX_MESSAGE)
                self.waiting: deque[Any] = deque()
                self.held: list[bytes] | None = None

            def connectionMade(self) -> None:
                self.transport.setTcpNoDelay(True)
                self.write = eager_writer(self.transport)

            def dataReceived(self, data: bytes) -> None:
                # The requests sent from the callbacks leave together, as the node's do.
                self.held = held = []
                for payload in self.decoder.feed(data):
                    self.waiting.popleft().callback(payload)
                self.held = None
                if held:
                    self.write(b"".join(held))

            def request(self, payload: bytes) -> Any:
                d = defer.Deferred()
                self.waiting.append(d)
                if self.held is None:
                    self.write(netstring(payload))
                else:
                    self.held.append(netstring(payload))
                return d

        port = await self._listen(Echo)
        endpoint = TCP4ClientEndpoint(self.reactor, LOCALHOST, port.getHost().port)
        client = await self._wait(endpoint.connect(Factory.forProtocol(Client)))
        payload = ping_payload()

        async def close() -> None:
            client.transport.loseConnection()
            await self._wait(defer.maybeDeferred(port.stopListening))

        return (lambda: self._wait(client.request(payload))), close

    async def serving_server(self, contacts: int) -> tuple[int, Callable[[], int], Any]:
        from twisted.internet.protocol import Protocol

        from txdht.node import eager_writer

        reply = netstring(canned_nodes_reply(REPLY_CONTACTS))
        served = [0]
        connections: list[Any] = []

        class Canned(Protocol):
            def connectionMade(self) -> None:
                self.decoder = NetstringDecoder(MAX_MESSAGE)
                self.transport.setTcpNoDelay(True)
                self.write = eager_writer(self.transport)
                connections.append(self)

            def dataReceived(self, data: bytes) -> None:
                count = sum(1 for _ in self.decoder.feed(data))
                if count:  # one write per segment, as the node holds its writes
                    self.write(reply * count)
                    served[0] += count

        port = await self._listen(Canned)

        async def close() -> None:
            for connection in connections:
                connection.transport.loseConnection()
            await self._wait(self._defer.maybeDeferred(port.stopListening))

        return port.getHost().port, (lambda: served[0]), close


class _AioReads(asyncio.BufferedProtocol):
    """Reads as the twin reads: into the thread's shared buffer (``txdht.aio.node.
    read_buffer``), not a fresh 256 KiB object per read, so the floor stays the best the loop
    can do."""

    def __init__(self) -> None:
        from txdht.aio.node import read_buffer

        self.buffer = read_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    #: What each floor protocol does with the bytes read.
    data_received: Callable[[bytes], None]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.buffer[:nbytes].tobytes())


class _AioEcho(_AioReads):
    """Server side of the asyncio floor: every netstring comes back (or the canned reply)."""

    def __init__(self, reply: bytes | None, served: list[int]) -> None:
        super().__init__()
        self.decoder = NetstringDecoder(MAX_MESSAGE)
        self.reply = reply
        self.served = served
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        replies = [self.reply or netstring(payload) for payload in self.decoder.feed(data)]
        if replies:  # one write per segment, as the twin answers
            self.transport.write(b"".join(replies))
            self.served[0] += len(replies)


class _AioClient(_AioReads):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.decoder = NetstringDecoder(MAX_MESSAGE)
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            self.waiting.popleft().set_result(payload)

    def request(self, payload: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None
        waiting = self.loop.create_future()
        self.waiting.append(waiting)
        self.transport.write(netstring(payload))
        return waiting


class AioFloorShell:
    """A bare netstring echo with txdht's ``NetstringDecoder`` (the twin's framing), on the
    running asyncio loop (the default one, or uvloop)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def gather(self, coroutines: list[Any]) -> Any:
        return asyncio.gather(*coroutines)

    def sleep(self, seconds: float) -> Any:
        return asyncio.sleep(seconds)

    async def rpc_pair(self) -> tuple[Callable[[], Any], Callable[[], Awaitable[None]]]:
        served = [0]
        server = await self.loop.create_server(lambda: _AioEcho(None, served), LOCALHOST, 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await self.loop.create_connection(
            lambda: _AioClient(self.loop), LOCALHOST, port
        )
        payload = ping_payload()

        async def close() -> None:
            transport.close()
            server.close()
            await server.wait_closed()

        return (lambda: client.request(payload)), close

    async def serving_server(self, contacts: int) -> tuple[int, Callable[[], int], Any]:
        reply = netstring(canned_nodes_reply(REPLY_CONTACTS))
        served = [0]
        protocols: list[_AioEcho] = []

        def build() -> _AioEcho:
            protocol = _AioEcho(reply, served)
            protocols.append(protocol)
            return protocol

        server = await self.loop.create_server(build, LOCALHOST, 0)

        async def close() -> None:
            for protocol in protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
            server.close()
            await server.wait_closed()

        return server.sockets[0].getsockname()[1], (lambda: served[0]), close


# -- the other DHTs ----------------------------------------------------------------------------


class KademliaShell:
    """bmuller's kademlia 2.2.3 (asyncio, RPC over UDP with msgpack) on the default loop.

    Keys are the hex sha1 of the value (content-addressed, like our blobs); requests are
    counted by a protocol subclass that sees every datagram (kademlia keeps no such count).
    """

    def __init__(self) -> None:
        from kademlia.network import Server
        from kademlia.protocol import KademliaProtocol

        self.loop = asyncio.get_running_loop()
        counter = self.requests = [0]

        class CountingProtocol(KademliaProtocol):  # type: ignore[misc]
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if data[:1] == b"\x00":
                    counter[0] += 1
                super().datagram_received(data, addr)

        class CountingServer(Server):  # type: ignore[misc]
            protocol_class = CountingProtocol

        self._server_class = CountingServer

    def gather(self, coroutines: list[Any]) -> Any:
        return asyncio.gather(*coroutines)

    def sleep(self, seconds: float) -> Any:
        return asyncio.sleep(seconds)

    def replicas(self, k: int) -> int:
        return k

    async def new_node(self, k: int) -> Any:
        server = self._server_class(ksize=k, alpha=3)
        await server.listen(0, interface=LOCALHOST)
        return server

    def port(self, node: Any) -> int:
        return int(node.transport.get_extra_info("sockname")[1])

    async def join(self, node: Any, seed: Address) -> None:
        await node.bootstrap([seed])

    async def light_join(self, node: Any, seed: Address) -> None:
        # kademlia's bootstrap is already light: ping the seeds, then one crawl for our id.
        await node.bootstrap([seed])

    async def settle(self, nodes: list[Any]) -> bool:
        return True

    async def quiesce(self, nodes: list[Any]) -> None:
        pass

    async def put(self, node: Any, value: bytes) -> tuple[str, None]:
        key = hashlib.sha1(value).hexdigest()
        if not await node.set(key, value):
            raise RuntimeError("kademlia: no node stored the value")
        return key, None

    async def get(self, node: Any, key: str) -> tuple[bytes | None, None]:
        return await node.get(key), None

    def holds(self, node: Any, key: str) -> bool:
        from kademlia.utils import digest

        return node.storage.get(digest(key)) is not None

    def sent_total(self, nodes: list[Any]) -> int:
        return self.requests[0]

    def sent_by_kind(self, nodes: list[Any]) -> dict[str, int] | None:
        return None  # kademlia does not count its requests by kind

    async def stop_all(self, nodes: list[Any]) -> None:
        for node in nodes:
            node.stop()
        await asyncio.sleep(0)


class OpenDHTShell:
    """OpenDHT 4.4.2 ``DhtRunner``s in this process (each runs its own C++ thread).

    Each runner binds 127.0.0.1 and ::1 only, with peer discovery (multicast) off and the
    per-IP rate limit off (every peer here shares one IP). Operations complete in OpenDHT's
    callbacks on its threads: they record their finishing time there and wake the loop.
    A get finishes at the first value that matches (the callback then stops the search).
    Join: each runner bootstraps from the first; ``settle`` waits (at most ``settle_s``) until
    every runner's IPv4 routing table has min(8, N/2) good nodes. Every operation waits at
    most ``OP_TIMEOUT`` seconds for its callback.
    """

    def __init__(self, settle_s: float = 30.0) -> None:
        import opendht

        self.dht = opendht
        self.loop = asyncio.get_running_loop()
        self.settle_s = settle_s
        self.config = opendht.DhtConfig()
        self.config.setPeerDiscovery(False, False)
        self.config.setRateLimit(-1, -1)
        self._messages = 0
        self._lock = threading.Lock()
        #: OpenDHT callbacks still to come: the runners' synchronous calls (stats, logs) wait
        #: on a runner's thread while holding the GIL, so they must only be made when no
        #: callback (which needs the GIL on that thread) can come: see ``quiesce``.
        self._pending = 0
        self._keys: dict[str, Any] = {}
        self._held: dict[int, set[str]] = {}

    def gather(self, coroutines: list[Any]) -> Any:
        return asyncio.gather(*coroutines)

    def sleep(self, seconds: float) -> Any:
        return asyncio.sleep(seconds)

    def replicas(self, k: int) -> int:
        return 8  # OpenDHT stores on its 8 closest nodes (TARGET_NODES); k does not apply

    async def new_node(self, k: int) -> Any:
        runner = self.dht.DhtRunner()
        runner.run(port=0, ipv4=LOCALHOST, ipv6="::1", config=self.config)
        return runner

    def port(self, node: Any) -> int:
        return int(node.getBound().getPort())

    async def join(self, node: Any, seed: Address) -> None:
        node.bootstrap(seed[0], str(seed[1]))

    async def light_join(self, node: Any, seed: Address) -> None:
        node.bootstrap(seed[0], str(seed[1]))

    def _good(self, node: Any) -> int:
        import socket

        return int(node.getRoutingTablesLog(socket.AF_INET).count("[good]"))

    async def settle(self, nodes: list[Any]) -> bool:
        want = min(8, len(nodes) // 2)
        deadline = time.monotonic() + self.settle_s
        pending = list(nodes)
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if self._good(n) < want]
            if pending:
                await asyncio.sleep(0.05)
        return not pending

    def _resolve(self, future: asyncio.Future[Any], value: Any, last: bool = True) -> None:
        finished = time.perf_counter()
        self.loop.call_soon_threadsafe(_set_once, future, (value, finished))
        if last:  # the very last thing the callback does
            with self._lock:
                self._pending -= 1

    def _expect(self) -> None:
        with self._lock:
            self._pending += 1

    async def quiesce(self, nodes: list[Any], timeout: float = 30.0) -> None:
        """Wait until every callback OpenDHT owes us has run."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._pending:
            raise RuntimeError(f"opendht: {self._pending} callbacks never came")
        # Let the last callbacks return into OpenDHT (they may still need the GIL for that).
        await asyncio.sleep(0.05)

    async def put(self, node: Any, value: bytes) -> tuple[str, float]:
        key = hashlib.sha1(value).hexdigest()
        future = self.loop.create_future()
        self._held.clear()

        def done(ok: bool, nodes: Any) -> None:
            self._resolve(future, bool(ok))

        self._expect()
        node.put(self.dht.InfoHash.get(key), self.dht.Value(value), done)
        ok, finished = await asyncio.wait_for(future, OP_TIMEOUT)
        if not ok:
            raise RuntimeError("opendht: the put failed")
        self._keys[key] = self.dht.InfoHash.get(key)
        return key, finished

    async def get(self, node: Any, key: str) -> tuple[bytes | None, float]:
        future = self.loop.create_future()

        def got(value: Any) -> bool:
            self._resolve(future, bytes(value.data), last=False)
            return False  # the first value is enough: stop the search

        def done(ok: bool, nodes: Any) -> None:
            self._resolve(future, None)

        self._expect()
        node.get(self._keys[key], got, done)
        value, finished = await asyncio.wait_for(future, OP_TIMEOUT)
        return value, finished

    def holds(self, node: Any, key: str) -> bool:
        held = self._held.get(id(node))
        if held is None:
            # "Storage <key hex> ..." lines: the keys this runner stores.
            log = node.getStorageLog().splitlines()
            held = {line.split()[1] for line in log if line.startswith("Storage ")}
            self._held[id(node)] = held
        return str(self._keys[key]) in held

    def sent_by_kind(self, nodes: list[Any]) -> dict[str, int] | None:
        return None  # OpenDHT's message stats do not count requests by kind

    def sent_total(self, nodes: list[Any]) -> int:
        # getNodeMessageStats() returns the requests counted since the last call, and resets.
        with self._lock:
            for node in nodes:
                self._messages += sum(node.getNodeMessageStats())
            return self._messages

    async def stop_all(self, nodes: list[Any]) -> None:
        with contextlib.suppress(RuntimeError):
            await self.quiesce(nodes)
        # Shut down, then wait on the loop (which gives up the GIL) until every runner has
        # stopped before joining it: OpenDHT's shutdown callback takes the GIL on the runner's
        # thread, and starting a helper thread to join while those callbacks wait for it
        # deadlocked about one run in three.
        for node in nodes:
            node.shutdown()
        deadline = time.monotonic() + 10.0
        while any(node.isRunning() for node in nodes) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for node in nodes:
            node.join()


def _set_once(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
