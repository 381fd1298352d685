"""An in-memory network of real asyncio txdht nodes on a virtual clock, for your own tests.

``MemoryNetwork`` runs real ``txdht.aio.Node`` objects (the same core, protocol and storage as
over TCP) but connects them with in-memory transports and takes their time from a
``VirtualClock`` that moves only when told, so an asyncio test of code that uses a DHT needs no
sockets and no waiting. It lives in a running event loop (make it inside ``asyncio.run``):
``flush()`` delivers every byte in flight, ``advance(seconds)`` moves time (timeouts, expiry,
housekeeping), ``await settle()`` flushes and lets the loop run what that woke, and
``await run(awaitable)`` settles and moves time, timer by timer, until the awaitable is done::

    import asyncio

    from txdht.aio.testing import MemoryNetwork

    def test_my_app() -> None:
        async def scenario() -> None:
            net = MemoryNetwork()
            nodes = await net.create(10)
            key = await net.run(nodes[0].put("greeting", b"hello"))
            assert await net.run(nodes[7].get(key)) == b"hello"
            await net.stop()

        asyncio.run(scenario())

``silence(node)`` makes a node stop answering (its requests time out, in virtual time),
``await kill(node)`` stops it (connecting to it is then refused), ``open_raw(node)`` gives a
raw connection to feed a node arbitrary bytes, and ``await stop()`` stops every node. Await the
nodes' work through ``run``: nothing moves the network while a bare ``await node.get(key)``
waits, so it waits forever. Code under test should take its time from the nodes' clock, not
from ``asyncio.sleep``, whose seconds are real ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from txdht.aio.node import NetstringProtocol, Node
from txdht.core.framing import NetstringDecoder
from txdht.core.items import Identity
from txdht.core.limits import Limits
from txdht.core.messages import Message, decode

__all__ = ["MemoryNetwork", "MemoryTransport", "RawConnection", "VirtualClock", "VirtualTimer"]

T = TypeVar("T")
Address = tuple[str, int]

#: ``flush`` (and ``settle``) deliver at most this many events before deciding that the nodes
#: talk in a loop.
MAX_EVENTS_PER_FLUSH = 1_000_000
#: ``run`` moves the clock at most this many times before deciding that the nodes never settle.
MAX_STEPS_PER_RUN = 1_000_000
#: How many turns ``settle`` lets the event loop take after each flush: enough for a reply to
#: reach the coroutine awaiting it through a few tasks and futures (each hop costs a turn).
LOOP_TURNS = 10
#: Ports are given out from here, one per node, all on 127.0.0.1.
FIRST_PORT = 4000
#: The ports of the connecting ends of connections are given out from here.
FIRST_CLIENT_PORT = 50001
#: Limits with request rates too high to matter (see ``MemoryNetwork.add_node``); the same as
#: ``txdht.testing.UNLIMITED``, which this module cannot import (it would load Twisted).
UNLIMITED = Limits(peer_rate=1e12, peer_burst=1e12, global_rate=1e12, global_burst=1e12)


class VirtualTimer:
    """A timer set on a ``VirtualClock``: ``when()`` it fires; ``cancel()`` it to skip it."""

    __slots__ = ("_callback", "_cancelled", "_when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self._when = when
        self._callback = callback
        self._cancelled = False

    def when(self) -> float:
        """When it fires."""
        return self._when

    def cancel(self) -> None:
        """Do not fire."""
        self._cancelled = True

    def cancelled(self) -> bool:
        """Whether it was cancelled."""
        return self._cancelled


class VirtualClock:
    """Time that moves only when told (``advance``): a ``txdht.aio.node.Clock`` for nodes."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, VirtualTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        """The time now, in seconds."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], object], /) -> VirtualTimer:
        """Call ``callback()`` once the clock reaches ``when``."""
        timer = VirtualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def timers(self) -> list[VirtualTimer]:
        """The timers still to fire (set, not cancelled), soonest first."""
        return [timer for _, _, timer in sorted(self._timers) if not timer.cancelled()]

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing every timer due by then in order (soonest first,
        then in the order they were set), each with the clock at its own time; timers set by
        those fire too if they fall due."""
        if seconds < 0:
            raise ValueError(f"time does not go back ({seconds} s)")
        end, timers = self._now + seconds, self._timers
        while timers and timers[0][0] <= end:
            when, _, timer = heapq.heappop(timers)
            if not timer.cancelled():
                self._now = max(self._now, when)
                timer._callback()
        self._now = end


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory connection: what is written reaches the protocol at the other end
    when the network next flushes; ``close()`` reaches both protocols' ``connection_lost``."""

    def __init__(
        self,
        network: MemoryNetwork,
        protocol: asyncio.Protocol | NetstringProtocol,
        owner: Node | None,
        host: Address,
        peer: Address,
    ) -> None:
        super().__init__({"peername": peer, "sockname": host})
        self.network = network
        self.protocol = protocol
        #: The node at this end (None for a raw connection): what ``silence`` matches.
        self.owner = owner
        #: The other end.
        self.other = self
        #: Set by ``close()``: nothing more is written.
        self.closing = False
        #: Set once the protocol has been told the connection is lost.
        self.lost = False

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        """Send ``data`` to the other end (dropped once closing)."""
        if data and not self.closing:
            self.network.events.append((self, bytes(data)))

    def close(self) -> None:
        """Close the connection, after what was written."""
        if not self.closing:
            self.closing = True
            self.network.events.append((self, None))

    abort = close

    def is_closing(self) -> bool:
        """Whether the connection is closing or closed."""
        return self.closing


class RawConnection(asyncio.Protocol):
    """A raw connection to a node: ``send`` any bytes, read what came back in ``received``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        #: Every byte the node sent.
        self.received = b""
        #: Whether the connection is closed.
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def send(self, data: bytes) -> None:
        """Write ``data`` to the node as it is (no framing added)."""
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Close the connection (after what was sent)."""
        assert self.transport is not None
        self.transport.close()

    def messages(self) -> list[Message]:
        """The netstring-framed messages received so far, decoded."""
        return [decode(p) for p in NetstringDecoder(len(self.received)).feed(self.received)]


class MemoryNetwork:
    """Real asyncio nodes, in-memory connections, one virtual clock; see the module docstring.

    Make it, and use it, inside a running event loop: its nodes live on that loop.

    :param clock: the nodes' time; a new ``VirtualClock`` (at 0) when None.
    :param seed: where the nodes' identities and random generators come from.
    :param max_events: how many deliveries ``flush`` and ``settle`` make before deciding that
        the network does not settle (``RuntimeError``).
    :param max_steps: how many times ``run`` moves the clock before deciding that what it runs
        never ends (``RuntimeError``).
    """

    def __init__(
        self,
        clock: VirtualClock | None = None,
        *,
        seed: int = 0,
        max_events: int = MAX_EVENTS_PER_FLUSH,
        max_steps: int = MAX_STEPS_PER_RUN,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.clock = clock or VirtualClock()
        self.max_events = max_events
        self.max_steps = max_steps
        self.nodes: list[Node] = []
        #: What is in flight, in order: (the writing end, the bytes or None for a close).
        self.events: deque[tuple[MemoryTransport, bytes | None]] = deque()
        self._seed = seed
        self._listeners: dict[Address, Node] = {}
        self._silenced: set[Node] = set()
        self._client_ports = itertools.count(FIRST_CLIENT_PORT)

    def add_node(self, **options: Any) -> Node:
        """A new node on the network (not joined yet); ``options`` go to ``Node``."""
        # Same seed, same ids, same network: a failing test fails the same way every run. The
        # ids are those txdht.testing gives for the same seed.
        label = f"txdht.testing:{self._seed}:{len(self.nodes)}".encode()
        options.setdefault("identity", Identity.from_private_bytes(hashlib.sha256(label).digest()))
        options.setdefault("rng", random.Random(self._seed + len(self.nodes)))
        # The clock stands still while the network flushes, so rate limits would never refill:
        # they are off unless a test passes its own ``limits``.
        options.setdefault("limits", UNLIMITED)
        node = Node(loop=self.loop, clock=self.clock, connect=self._connect, **options)
        node.engine.port = FIRST_PORT + len(self.nodes)
        self._listeners[("127.0.0.1", node.port)] = node
        self.nodes.append(node)
        return node

    async def create(self, count: int, **options: Any) -> list[Node]:
        """``count`` new nodes, each joined through the first one."""
        nodes = [self.add_node(**options) for _ in range(count)]
        for node in nodes[1:]:
            await self.run(node.join([("127.0.0.1", nodes[0].port)]))
        return nodes

    def silence(self, node: Node) -> None:
        """From now on ``node`` receives nothing and so answers nothing; what it sends is lost."""
        self._silenced.add(node)

    async def kill(self, node: Node) -> None:
        """Take ``node`` off the network: it stops, and connecting to it is then refused (as to
        every stopped node)."""
        await self.run(node.stop())

    def open_raw(self, node: Node, host: str = "127.0.0.1") -> RawConnection:
        """A raw connection to ``node`` from ``host``, for feeding it arbitrary bytes."""
        raw = RawConnection()
        self._link(raw, None, NetstringProtocol(node), host)
        return raw

    def flush(self) -> None:
        """Deliver every byte and every close in flight, until the network is quiet."""
        self._flush(self.max_events)

    def advance(self, seconds: float) -> None:
        """Flush, move the clock (firing timeouts and timers, in order), then flush."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    async def settle(self) -> None:
        """Flush, and let the event loop run what that woke (``LOOP_TURNS`` turns), until the
        nodes send nothing more; time stands still."""
        # Each pass that goes round again has events to deliver, so delivers one or more, or
        # raises: at most max_events + 1 passes.
        left = self.max_events
        while True:
            left -= self._flush(left)
            for _ in range(LOOP_TURNS):
                await asyncio.sleep(0)
            if not self.events:
                return

    async def run(
        self, awaitable: Awaitable[T], max_seconds: float = 3600.0, step: float = 0.5
    ) -> T:
        """Settle, then move the clock and settle again until ``awaitable`` is done; its result,
        or its exception raised.

        Time moves to the next timer due (or by ``step`` when none is due sooner), and the
        network settles at each, so what a timer sends is delivered (and its replies awaited)
        before the next timer fires, as on a real network. ``TimeoutError`` if ``awaitable`` is
        not done within ``max_seconds`` of virtual time (a coroutine is then cancelled; a future,
        a ``Lookup`` say, is left to its owner); ``RuntimeError`` if it is not done within
        ``max_steps`` moves of the clock.
        """
        future = asyncio.ensure_future(awaitable, loop=self.loop)
        clock = self.clock
        started = clock.time()
        await self.settle()
        for _ in range(self.max_steps):
            if future.done():
                return future.result()
            now = clock.time()
            if now - started >= max_seconds:
                if future is not awaitable:
                    future.cancel()
                    await self.settle()
                raise TimeoutError(f"not done within {max_seconds:g} s of virtual time")
            due = [timer.when() - now for timer in clock.timers()[:1]]
            self.advance(max(0.0, min([step, *due])))
            await self.settle()
        raise RuntimeError(f"not done within {self.max_steps} moves of the clock")

    async def stop(self) -> None:
        """Stop every node: their operations end and their connections close."""
        await self.run(asyncio.gather(*(node.stop() for node in self.nodes)))

    def _flush(self, limit: int) -> int:
        """Deliver what is in flight, up to ``limit`` events (RuntimeError if more remain); how
        many were delivered."""
        events = self.events
        delivered = 0
        while events:
            if delivered == limit:
                raise RuntimeError(f"the network did not settle within {self.max_events} events")
            self._deliver(*events.popleft())
            delivered += 1
        return delivered

    async def _connect(
        self, address: Address, factory: Callable[[], NetstringProtocol]
    ) -> NetstringProtocol:
        target = self._listeners.get(address)
        if target is None or target.streams.stopped:
            raise ConnectionRefusedError(f"nothing listens on {address[0]}:{address[1]}")
        client = factory()
        self._link(client, client.node, NetstringProtocol(target), "127.0.0.1")
        return client

    def _link(
        self,
        client: asyncio.Protocol | NetstringProtocol,
        client_node: Node | None,
        server: NetstringProtocol,
        host: str,
    ) -> None:
        client_address = (host, next(self._client_ports))
        server_address = ("127.0.0.1", server.node.port)
        a = MemoryTransport(self, client, client_node, client_address, server_address)
        b = MemoryTransport(self, server, server.node, server_address, client_address)
        a.other, b.other = b, a
        server.connection_made(b)
        client.connection_made(a)

    def _deliver(self, end: MemoryTransport, data: bytes | None) -> None:
        other = end.other
        if data is None:
            for side in (end, other):
                if not side.lost:
                    side.lost = side.closing = True
                    side.protocol.connection_lost(None)
            return
        silenced = end.owner in self._silenced or other.owner in self._silenced
        if not other.lost and not silenced:
            other.protocol.data_received(data)
