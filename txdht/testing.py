"""An in-memory network of real txdht nodes on one ``Clock``, for your own tests.

``MemoryNetwork`` runs real ``Node`` objects (the same protocol, lookups and storage as over
TCP) but connects them with in-memory transports and drives their time from a
``twisted.internet.task.Clock``, so a test of code that uses a DHT needs no sockets and no
waiting: ``flush()`` delivers every byte in flight, ``advance(seconds)`` moves time (timeouts,
expiry) and ``run(d)`` does both until a Deferred fires::

    from txdht.testing import MemoryNetwork

    def test_my_app() -> None:
        net = MemoryNetwork()
        nodes = net.create(10)
        key = net.run(nodes[0].put("greeting", b"hello"))
        assert net.run(nodes[7].get(key)) == b"hello"

``silence(node)`` makes a node stop answering (its requests time out), ``kill(node)`` takes it
off the network, and ``open_raw(node)`` gives a raw connection to feed a node arbitrary bytes.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from txdht.core.items import Identity
from txdht.core.limits import Limits
from txdht.core.messages import Message, decode
from txdht.node import DHTFactory, DHTProtocol, Node

__all__ = ["MemoryNetwork", "RawConnection"]

T = TypeVar("T")

#: ``flush`` delivers at most this many events before deciding the nodes talk in a loop.
MAX_EVENTS_PER_FLUSH = 1_000_000
#: ``run`` moves the clock at most this many times before deciding the nodes never settle.
MAX_STEPS_PER_RUN = 1_000_000
#: Ports are given out from here, one per node, all on 127.0.0.1.
FIRST_PORT = 4000
#: Limits with request rates too high to matter (see ``add_node``).
UNLIMITED = Limits(peer_rate=1e12, peer_burst=1e12, global_rate=1e12, global_burst=1e12)


@implementer(ITransport)
class _Pipe:
    """One end of an in-memory connection: what is written is delivered to the other end."""

    def __init__(
        self,
        network: MemoryNetwork,
        protocol: IProtocol,
        owner: object,
        host: IPv4Address,
        peer: IPv4Address,
    ) -> None:
        self.network = network
        self.protocol = protocol
        #: The node at this end (None for a raw connection): what ``silence`` matches.
        self.owner = owner
        self.host = host
        self.peer = peer
        self.other = self
        self.disconnecting = False
        self.disconnected = False

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.network.events.append((self, data))

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.network.events.append((self, None))

    abortConnection = loseConnection

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.host


class RawConnection(Protocol):
    """A raw connection to a node: ``send`` any bytes, read what came back in ``received``."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = True

    def send(self, data: bytes) -> None:
        """Write ``data`` to the node as it is (no framing added)."""
        assert self.transport is not None
        self.transport.write(data)

    def messages(self) -> list[Message]:
        """The netstring-framed messages received so far, decoded."""
        found, rest = [], self.received
        while rest:
            length, _, rest = rest.partition(b":")
            size = int(length)
            found.append(decode(rest[:size]))
            rest = rest[size + 1 :]
        return found


class MemoryNetwork:
    """Real nodes, in-memory connections, one clock; see the module docstring."""

    def __init__(
        self, clock: Clock | None = None, *, seed: int = 0, max_events: int = MAX_EVENTS_PER_FLUSH
    ) -> None:
        self.clock = clock or Clock()
        self.max_events = max_events
        self.nodes: list[Node] = []
        self.events: deque[tuple[_Pipe, bytes | None]] = deque()
        self._seed = seed
        self._listeners: dict[tuple[str, int], Node] = {}
        self._silenced: set[int] = set()
        self._next_client_port = 50000

    def add_node(self, **options: Any) -> Node:
        """A new node on the network (not joined yet); ``options`` go to ``Node``."""
        # Same seed, same ids, same network: a failing test fails the same way every run.
        label = f"txdht.testing:{self._seed}:{len(self.nodes)}".encode()
        options.setdefault("identity", Identity.from_private_bytes(hashlib.sha256(label).digest()))
        options.setdefault("rng", random.Random(self._seed + len(self.nodes)))
        # The clock stands still while the network flushes, so rate limits would never refill:
        # they are off unless a test passes its own ``limits``.
        options.setdefault("limits", UNLIMITED)
        node = Node(self.clock, connect=self._connect, **options)
        node.engine.port = FIRST_PORT + len(self.nodes)
        self._listeners[("127.0.0.1", node.port)] = node
        self.nodes.append(node)
        return node

    def create(self, count: int, **options: Any) -> list[Node]:
        """``count`` new nodes, each joined through the first one."""
        nodes = [self.add_node(**options) for _ in range(count)]
        for node in nodes[1:]:
            self.run(node.join([("127.0.0.1", nodes[0].port)]))
        return nodes

    def silence(self, node: Node) -> None:
        """From now on ``node`` receives nothing and so answers nothing."""
        self._silenced.add(id(node))

    def kill(self, node: Node) -> None:
        """Take ``node`` off the network: it stops, and connecting to it is refused."""
        del self._listeners[("127.0.0.1", node.port)]
        node.stop()
        self.flush()

    def open_raw(self, node: Node, host: str = "127.0.0.1") -> RawConnection:
        """A raw connection to ``node`` from ``host``, for feeding it arbitrary bytes."""
        raw = RawConnection()
        self._link(raw, node.factory.buildProtocol(None), host=host)
        return raw

    def flush(self) -> None:
        """Deliver every byte and every close in flight, until the network is quiet."""
        for _ in range(self.max_events):
            if not self.events:
                return
            pipe, data = self.events.popleft()
            self._deliver(pipe, data)
        raise RuntimeError(f"the network did not settle within {self.max_events} events")

    def advance(self, seconds: float) -> None:
        """Move the clock (firing timeouts and timers), then flush."""
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def run(self, d: Deferred[T], max_seconds: float = 3600.0, step: float = 0.5) -> T:
        """Flush and advance time until ``d`` fires; its result, or its failure raised.

        Time moves to the next timer due (or by ``step`` when none is due sooner), and the
        network is flushed at each, so messages a timer sends are delivered before the next
        timer fires, as they would be on a real network."""
        results: list[T | Failure] = []
        d.addBoth(results.append)
        self.flush()
        started = self.clock.seconds()
        for _ in range(MAX_STEPS_PER_RUN):
            if results:
                break
            now = self.clock.seconds()
            if now - started >= max_seconds:
                raise TimeoutError(f"the Deferred did not fire within {max_seconds} s of clock")
            due = [call.getTime() for call in self.clock.getDelayedCalls() if call.active()]
            self.advance(min([step, *(when - now for when in due)]))
        else:
            raise RuntimeError(f"the Deferred did not fire within {MAX_STEPS_PER_RUN} steps")
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def _connect(self, address: tuple[str, int], factory: DHTFactory) -> Deferred[DHTProtocol]:
        target = self._listeners.get(address)
        if target is None:
            return defer.fail(ConnectionRefusedError(f"nothing listens on {address}"))
        client = factory.buildProtocol(None)
        self._link(client, target.factory.buildProtocol(None), client_node=factory.node)
        return defer.succeed(client)

    def _link(
        self,
        client: Protocol,
        server: DHTProtocol,
        client_node: Node | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._next_client_port += 1
        client_address = IPv4Address("TCP", host, self._next_client_port)
        server_address = IPv4Address("TCP", "127.0.0.1", server.node.port)
        a = _Pipe(self, client, client_node, client_address, server_address)
        b = _Pipe(self, server, server.node, server_address, client_address)
        a.other, b.other = b, a
        server.makeConnection(b)  # type: ignore[no-untyped-call]
        client.makeConnection(a)

    def _deliver(self, pipe: _Pipe, data: bytes | None) -> None:
        other = pipe.other
        if data is None:
            for end in (pipe, other):
                if not end.disconnected:
                    end.disconnected = end.disconnecting = True
                    end.protocol.connectionLost(Failure(ConnectionDone()))
            return
        silenced = any(id(end.owner) in self._silenced for end in (pipe, other))
        if not other.disconnected and not silenced:
            other.protocol.dataReceived(data)
