"""End to end over real loopback TCP: 30 nodes in one process, on pytest-twisted's reactor."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol

from txdht import Node
from txdht.core.errors import NotFoundError
from txdht.core.ids import id_from_hex, id_to_hex
from txdht.core.items import Identity
from txdht.core.limits import Limits
from txdht.core.messages import Ping, Pong

pytestmark = pytest.mark.e2e

NODES = 30
ITEMS = 50
READERS = 10


async def start_nodes(reactor: Any, count: int, **options: Any) -> list[Node]:
    """``count`` nodes listening on 127.0.0.1, each joined through the first."""
    nodes = [Node(reactor, rng=random.Random(i), **options) for i in range(count)]
    for node in nodes:
        await node.listen("tcp:0:interface=127.0.0.1")
    for node in nodes[1:]:
        await node.join([("127.0.0.1", nodes[0].port)])
    return nodes


async def stop_nodes(nodes: list[Node]) -> None:
    """Stop every node and wait until its connections and port are closed."""
    await gatherResults([n.stop() for n in nodes])


async def sleep(reactor: IReactorTime, seconds: float) -> None:
    """Let the reactor run for ``seconds``."""
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


@pytest_twisted.ensureDeferred
async def test_thirty_nodes_put_fifty_and_read_each_from_ten_others(reactor: Any) -> None:
    """50 items put from random nodes are each read back, verified, from 10 other nodes."""
    rng = random.Random(2026)
    nodes = await start_nodes(reactor, NODES)
    try:
        assert all(len(n.engine.routing) >= 20 for n in nodes)
        puts = []
        for i in range(ITEMS):
            writer = rng.choice(nodes)
            value = f"value {i} from {writer.port}".encode()
            if i % 2:
                key = await writer.put(f"item-{i}", value)
            else:
                key = await writer.put_blob(value)
            puts.append((writer, key, value))
        remote_reads = 0
        for writer, key, value in puts:
            others = [n for n in nodes if n is not writer]
            # Readers that do not hold the item first, so gets really cross the network.
            rng.shuffle(others)
            others.sort(key=lambda n: n.engine.get(id_from_hex(key), reactor.seconds()) is not None)
            for reader in others[:READERS]:
                remote_reads += reader.engine.get(id_from_hex(key), reactor.seconds()) is None
                assert await reader.get(key) == value
        assert remote_reads >= ITEMS * 5
    finally:
        await stop_nodes(nodes)


@pytest_twisted.ensureDeferred
async def test_lookups_complete_when_some_peers_stop_answering(reactor: Any) -> None:
    """With a third of the network gone silent, gets still complete through the others."""
    nodes = await start_nodes(reactor, 12, rpc_timeout=0.5)
    try:
        key = await nodes[0].put("still here", b"yes")
        holders = [n for n in nodes if n.engine.get(id_from_hex(key), reactor.seconds())]
        silent = [n for n in nodes[1:] if n not in holders[:6]][:4]
        for node in silent:
            # Stop reading: the kernel still accepts bytes, but no reply ever comes back.
            for link in node.streams.links:
                link.handle.transport.stopReading()
            node.factory.buildProtocol = _silent_protocol  # type: ignore[method-assign,assignment]
        readers = [n for n in nodes if n not in silent and n not in holders]
        for reader in readers or nodes[1:2]:
            assert await reader.get(key) == b"yes"
        with pytest.raises(NotFoundError):
            await nodes[0].get("ef" * 64)
    finally:
        await stop_nodes(nodes)


def _silent_protocol(addr: object) -> Protocol:
    """A protocol that accepts a connection and never says anything."""
    return Protocol()


@pytest_twisted.ensureDeferred
async def test_garbage_over_tcp_closes_only_that_connection(reactor: Any) -> None:
    """A raw TCP client sending garbage is disconnected; the node keeps serving others."""
    nodes = await start_nodes(reactor, 2)
    try:
        closed: Deferred[None] = Deferred()

        class Garbage(Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"this is not a netstring")

            def connectionLost(self, reason: object = None) -> None:
                closed.callback(None)

        factory = ClientFactory.forProtocol(Garbage)
        connector = reactor.connectTCP("127.0.0.1", nodes[0].port, factory)
        await closed
        connector.disconnect()
        reply = await nodes[1].call(("127.0.0.1", nodes[0].port), Ping)
        assert isinstance(reply, Pong)
    finally:
        await stop_nodes(nodes)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:  # pragma: no cover - only where the machine has no IPv6 loopback
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest_twisted.ensureDeferred
async def test_ipv6_loopback(reactor: Any) -> None:
    """Nodes listening on ::1 join and exchange items over IPv6."""
    nodes = [Node(reactor) for _ in range(3)]
    for node in nodes:
        await node.listen(r"tcp6:0:interface=\:\:1")
    try:
        for node in nodes[1:]:
            await node.join([("::1", nodes[0].port)])
        key = await nodes[1].put_blob(b"over ipv6")
        assert await nodes[2].get(key) == b"over ipv6"
    finally:
        await stop_nodes(nodes)


@pytest_twisted.ensureDeferred
async def test_stop_releases_the_port(reactor: Any) -> None:
    """After stop(), the port is free again and nothing is left on the reactor."""
    node = Node(reactor)
    port = await node.listen("tcp:0:interface=127.0.0.1")
    number = port.getHost().port  # type: ignore[attr-defined]
    await node.stop()
    again = Node(reactor)
    await again.listen(f"tcp:{number}:interface=127.0.0.1")
    assert again.port == number
    await again.stop()
    await sleep(reactor, 0)


class Collect(Protocol):
    """Keeps what arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.arrived: Deferred[None] = Deferred()
        self.expected = 0

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected and not self.arrived.called:
            self.arrived.callback(None)


@pytest_twisted.ensureDeferred
async def test_eager_writes_reach_the_peer_whole_and_in_order(reactor: Any) -> None:
    """``eager_writer`` on real TCP: a write to an idle connection goes to the socket at once
    (nothing is left queued); one larger than the socket takes is sent in part and the rest
    queued, and writes behind it wait their turn: the peer gets every byte, in order."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.internet.protocol import Factory

    from txdht.node import eager_writer

    server = Collect()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: server)
    )
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    client: Any = await endpoint.connect(Factory.forProtocol(Protocol))
    transport = client.transport
    try:
        write = eager_writer(transport)
        write(b"first")
        assert not transport._tempDataBuffer
        assert not transport.dataBuffer
        big = random.Random(1).randbytes(16 * 1024 * 1024)
        write(big)
        assert transport._tempDataBuffer or transport.dataBuffer  # a part waits
        write(b"last")
        server.expected = len(b"first") + len(big) + len(b"last")
        await server.arrived
        assert bytes(server.data) == b"first" + big + b"last"
    finally:
        transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_node_sent_to_its_own_address_closes_both_ends(reactor: Any) -> None:
    """Over real TCP, a request to the node's own address (as when a peer names it under
    another id) fails at once, and no connection to itself stays open."""
    (node,) = await start_nodes(reactor, 1)
    try:
        with pytest.raises(ConnectionDone):
            await node.call(("127.0.0.1", node.port), Ping)
        for _ in range(50):  # both ends closed within half a second
            if not node.streams.links:
                break
            await sleep(reactor, 0.01)
        assert not node.streams.links
        assert node.streams.link_to(("127.0.0.1", node.port)) is None
    finally:
        await stop_nodes([node])


@pytest_twisted.ensureDeferred
async def test_a_node_holds_no_more_than_max_connections(reactor: Any) -> None:
    """Over real TCP, a node with max_connections 3 that talks to six peers in turn closes the
    quietest as it goes, and every request is answered."""
    peers = await start_nodes(reactor, 6)
    hub = Node(reactor, limits=Limits(max_connections=3))
    await hub.listen("tcp:0:interface=127.0.0.1")
    try:
        for peer in peers:
            reply = await hub.call(("127.0.0.1", peer.port), Ping)
            assert isinstance(reply, Pong)
            assert reply.sender == peer.engine.id
            await sleep(reactor, 0.01)
        for _ in range(50):  # the closed ones are gone within half a second
            if len(hub.streams.links) <= 3:
                break
            await sleep(reactor, 0.01)
        assert 2 <= len(hub.streams.links) <= 3
        # The last peer asked is among those kept; the first is not.
        assert hub.streams.link_to(("127.0.0.1", peers[-1].port)) is not None
        assert hub.streams.link_to(("127.0.0.1", peers[0].port)) is None
    finally:
        await stop_nodes([hub, *peers])


@pytest_twisted.ensureDeferred
async def test_a_holder_of_an_old_version_catches_up_when_it_replicates(reactor: Any) -> None:
    """Over real TCP: one node of five missed version 2 of a name (it holds version 1); its
    replication is refused as stale by the others, and it takes version 2 from them."""
    nodes = await start_nodes(reactor, 5)
    try:
        owner = Identity.from_private_bytes(bytes(32))
        old, new = owner.sign("name", b"old", 1), owner.sign("name", b"new", 2)
        behind, *others = nodes
        now = reactor.seconds()
        behind.engine.store(old, 600.0, now)
        for node in others:
            node.engine.store(new, 3600.0, now)
        assert await behind.replicate() == 1  # it stored version 1 nowhere but here
        for _ in range(100):  # the catch-up runs after the round, in the background
            record = behind.engine.storage.get(old.key)
            if record is not None and record.item == new:
                break
            await sleep(reactor, 0.01)
        assert record is not None
        assert record.item == new
        assert record.expires_at == pytest.approx(now + 600.0)
        assert await nodes[1].get(id_to_hex(old.key)) == b"new"
    finally:
        await stop_nodes(nodes)
