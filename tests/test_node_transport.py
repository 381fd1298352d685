"""The Twisted shell on Twisted's own test doubles: ``MemoryReactorClock`` and ``StringTransport``.

No sockets and no real time: the node listens and connects on a ``MemoryReactorClock``, each
connection is a ``StringTransport`` whose written bytes the test reads and whose received bytes
it feeds, and timeouts happen when the test advances the clock. This is the shell's byte-level
behaviour: netstrings in and out, one connection reused for many requests, request timeouts,
cancellation, lost and refused connections, and the answer to every kind of bad input.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from txdht.core import operations as ops
from txdht.core.commands import Close, Connect, Write
from txdht.core.engine import Engine
from txdht.core.errors import ErrorCode
from txdht.core.framing import NetstringDecoder, netstring
from txdht.core.items import Identity, proves
from txdht.core.limits import DEFAULT_CONNECT_TIMEOUT, Limits
from txdht.core.messages import Error, Message, Ping, Pong, decode, encode
from txdht.core.storage import MemoryStorage
from txdht.core.streams import Streams
from txdht.node import DHTProtocol, Node, eager_writer

PEER = ("127.0.0.1", 4001)
TIMEOUT = 5.0


@pytest.fixture
def reactor() -> MemoryReactorClock:
    """A reactor that records listens and connects and whose clock the test moves."""
    return MemoryReactorClock()


@pytest.fixture
def node(reactor: MemoryReactorClock) -> Node:
    """A node listening on port 4000 of the memory reactor."""
    node = Node(reactor, rpc_timeout=TIMEOUT)
    node.listen("tcp:4000:interface=127.0.0.1")
    assert node.port == 4000
    return node


def connect(protocol: Any, peer: tuple[str, int]) -> StringTransport:
    """Attach ``protocol`` to a new StringTransport from ``peer``; return the transport."""
    transport = StringTransport(peerAddress=IPv4Address("TCP", *peer))
    protocol.makeConnection(transport)
    return transport


def accept(
    node: Node, peer: tuple[str, int] = ("127.0.0.1", 50000)
) -> tuple[DHTProtocol, StringTransport]:
    """An incoming connection from ``peer`` to the node's listening factory."""
    protocol = node.factory.buildProtocol(IPv4Address("TCP", *peer))
    return protocol, connect(protocol, peer)


def complete_connect(reactor: MemoryReactorClock, index: int = 0) -> tuple[Any, StringTransport]:
    """Make the ``index``-th outgoing connection attempt succeed: the protocol the connection
    delivers bytes to (the endpoint's wrapper around the node's) and its transport."""
    host, port, factory, _, _ = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    return protocol, connect(protocol, (host, port))


def written(transport: StringTransport) -> list[Message]:
    """The messages written to ``transport`` since the last look (the buffer is cleared)."""
    decoder = NetstringDecoder(1 << 20)
    payloads = decoder.feed(transport.value())
    transport.clear()
    assert decoder.error is None
    return [decode(payload) for payload in payloads]


def test_listens_where_told_and_answers_a_ping_on_the_same_connection(
    reactor: MemoryReactorClock, node: Node
) -> None:
    """The node listens on the endpoint given; a challenge ping in gets a pong out that proves
    the node's id, and the sender joins the routing table."""
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
        (4000, "127.0.0.1")
    ]
    peer = Identity.generate()
    challenge = os.urandom(32)
    protocol, transport = accept(node)
    ping = Ping(rid=7, sender=peer.node_id, port=4001, challenge=challenge)
    protocol.dataReceived(netstring(encode(ping)))
    (pong,) = written(transport)
    assert isinstance(pong, Pong)
    assert (pong.rid, pong.sender, pong.port) == (7, node.engine.id, 4000)
    assert pong.proof is not None
    assert proves(node.engine.id, challenge, pong.proof)
    assert peer.node_id in node.engine.routing
    assert not transport.disconnecting


def test_requests_to_one_address_share_one_connection(
    reactor: MemoryReactorClock, node: Node
) -> None:
    """The first request to an address connects (within the connect timeout, shorter than a
    request's); replies fire the right Deferreds by request id, in any order; later requests
    reuse the connection."""
    first, second = node.call(PEER, Ping), node.call(PEER, Ping)
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [PEER]
    assert reactor.tcpClients[0][3] == DEFAULT_CONNECT_TIMEOUT < node.rpc_timeout
    protocol, transport = complete_connect(reactor)
    requests = written(transport)
    assert [type(r) for r in requests] == [Ping, Ping]
    results: list[Message] = []
    first.addCallback(results.append)
    second.addCallback(results.append)
    peer = Identity.generate().node_id
    for request in reversed(requests):  # answered out of order
        reply = Pong(rid=request.rid, sender=peer, port=PEER[1])
        protocol.dataReceived(netstring(encode(reply)))
    assert [r.rid for r in results] == [requests[1].rid, requests[0].rid]
    third = node.call(PEER, Ping)
    assert len(reactor.tcpClients) == 1
    assert [type(r) for r in written(transport)] == [Ping]
    third.cancel()
    third.addErrback(lambda f: f.trap(defer.CancelledError))


@pytest.mark.parametrize("ending", ["timeout", "cancelled"])
def test_a_request_that_times_out_or_is_cancelled_is_forgotten(
    reactor: MemoryReactorClock, node: Node, ending: str
) -> None:
    """A request fails with TimeoutError when the clock reaches the rpc timeout, not before,
    or with CancelledError when cancelled; either way nothing is left pending nor on the
    clock, and the reply that comes later is dropped without a word."""
    d = node.call(PEER, Ping)
    protocol, transport = complete_connect(reactor)
    (request,) = written(transport)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    if ending == "timeout":
        reactor.advance(TIMEOUT - 0.01)
        assert not failures
        reactor.advance(0.01)
    else:
        d.cancel()
    (failure,) = failures
    assert failure.check(defer.TimeoutError if ending == "timeout" else defer.CancelledError)
    assert node.engine.pending() == []
    assert not [call for call in reactor.getDelayedCalls() if call.active()]
    late = Pong(rid=request.rid, sender=Identity.generate().node_id, port=PEER[1])
    protocol.dataReceived(netstring(encode(late)))
    assert transport.value() == b""
    assert not transport.disconnecting
    assert node.metrics.rpcs[("sent", "ping", ending)] == 1


def test_a_lost_connection_fails_its_requests_and_the_next_one_reconnects(
    reactor: MemoryReactorClock, node: Node
) -> None:
    """Requests waiting on a connection that closes fail at once; the next request to the
    address opens a new connection."""
    d = node.call(PEER, Ping)
    protocol, _ = complete_connect(reactor)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    protocol.connectionLost(Failure(ConnectionDone()))
    (failure,) = failures
    assert failure.check(ConnectionDone)
    again = node.call(PEER, Ping)
    assert len(reactor.tcpClients) == 2
    again.cancel()
    again.addErrback(lambda f: f.trap(defer.CancelledError))


def test_a_refused_connection_fails_the_request(reactor: MemoryReactorClock, node: Node) -> None:
    """A connection attempt that fails fails every request that waited for it."""
    d = node.call(PEER, Ping)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    (failure,) = failures
    assert failure.check(ConnectionRefusedError)
    assert node.metrics.rpcs[("sent", "ping", "failed")] == 1


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", ErrorCode.MALFORMED),
        (b'{"v": 1, "type": "ping", "rid": "seven"}', ErrorCode.BAD_FIELD),
        (b'{"v": 1, "type": "gossip", "rid": 3}', ErrorCode.UNKNOWN_TYPE),
        (b'{"v": 99, "type": "ping", "rid": 3}', ErrorCode.BAD_VERSION),
        (b"[1, 2, 3]", ErrorCode.MALFORMED),
    ],
)
def test_a_bad_message_gets_an_error_reply_and_the_connection_keeps_serving(
    node: Node, payload: bytes, code: ErrorCode
) -> None:
    """A well-framed but bad message is answered with an error naming what is wrong; a ping
    on the same connection is answered afterwards."""
    protocol, transport = accept(node)
    protocol.dataReceived(netstring(payload))
    (error,) = written(transport)
    assert isinstance(error, Error)
    assert error.code == code
    assert error.message
    ping = Ping(rid=8, sender=Identity.generate().node_id, port=4001)
    protocol.dataReceived(netstring(encode(ping)))
    (pong,) = written(transport)
    assert (type(pong), pong.rid) == (Pong, 8)
    assert not transport.disconnecting


@pytest.mark.parametrize(
    "data",
    [b"abc:xyz,", b"5:hello;", b"%d:" % ((1 << 20) + 1), b"99999999999999999999:"],
    ids=["not a length", "no comma", "over the limit", "absurd length"],
)
def test_broken_framing_closes_the_connection_without_a_reply(node: Node, data: bytes) -> None:
    """When the framing cannot be trusted (a malformed or over-long netstring) the connection
    is closed and nothing is sent on it; the node goes on serving other connections."""
    protocol, transport = accept(node)
    protocol.dataReceived(data)
    assert transport.disconnecting
    assert transport.value() == b""
    other, other_transport = accept(node, ("127.0.0.1", 50001))
    ping = Ping(rid=9, sender=Identity.generate().node_id, port=4002)
    other.dataReceived(netstring(encode(ping)))
    (pong,) = written(other_transport)
    assert (type(pong), pong.rid) == (Pong, 9)


class CountingTransport(StringTransport):
    """A StringTransport that keeps each write apart."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", *peer))  # type: ignore[no-untyped-call]
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)  # type: ignore[no-untyped-call]


def test_the_replies_to_one_segment_leave_in_one_write(node: Node) -> None:
    """Requests that arrive together are answered together: one write to the transport for
    the replies to every request in a segment, in order; a lone request gets its own."""
    protocol: Any = node.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = CountingTransport(("127.0.0.1", 50000))
    protocol.makeConnection(transport)
    peer = Identity.generate().node_id
    pings = [Ping(rid=rid, sender=peer, port=0) for rid in (1, 2, 3)]
    protocol.dataReceived(b"".join(netstring(encode(ping)) for ping in pings))
    assert len(transport.writes) == 1
    assert [reply.rid for reply in written(transport)] == [1, 2, 3]
    protocol.dataReceived(netstring(encode(Ping(rid=4, sender=peer, port=0))))
    assert len(transport.writes) == 2
    protocol.send(Ping(rid=5, sender=peer, port=0))  # outside any event: at once
    assert len(transport.writes) == 3
    assert written(transport)[-1].rid == 5


def test_a_plain_transport_gets_plain_writes() -> None:
    """``eager_writer`` of a transport that is not a Twisted TCP connection is its write."""
    transport = StringTransport()
    assert eager_writer(transport) == transport.write


class LostTransport:
    """The parts of a Twisted TCP transport that ``eager_writer`` reads, on a connection the
    kernel has reset: ``writeSomeData`` returns the error, as Twisted's does."""

    connected, disconnecting, dataBuffer = 1, False, b""

    def __init__(self) -> None:
        self._tempDataBuffer: list[bytes] = []

    def writeSomeData(self, data: bytes) -> object:
        return ConnectionDone()

    def write(self, data: bytes) -> None:
        self._tempDataBuffer.append(data)


def test_a_write_on_a_lost_connection_goes_to_the_transport() -> None:
    """When the socket refuses a write (the connection is lost), the data goes through
    ``write``, which finds the loss out and closes the connection as Twisted does."""
    transport = LostTransport()
    eager_writer(transport)(b"lost")
    assert transport._tempDataBuffer == [b"lost"]


def test_a_connection_that_lost_the_race_to_the_peers_own_is_closed() -> None:
    """We connect to a peer while the peer connects to us and names its address first: our
    request goes on the peer's connection (the first for that address), and ours, which
    neither side would ever use, is closed rather than left open for good."""
    engine = Engine(Identity.from_private_bytes(b"r" * 32), MemoryStorage(), now=0.0)
    engine.port = 4000
    streams = Streams(engine)
    peer_id, peer = 12345, ("127.0.0.1", 4001)
    engine.start(ops.Call(peer, Ping), 0.0)
    assert streams.connecting == [peer]
    theirs, _ = streams.opened("theirs", "127.0.0.1", 50000, 0.1)
    request = encode(Ping(rid=1, sender=peer_id, port=4001))
    commands = streams.received(theirs, request, 0.1)
    assert streams.link_to(peer) is theirs
    ours, _ = streams.opened("ours", "127.0.0.1", 4001, 0.2)
    commands = streams.connected(ours, peer, 0.2)
    writes = [c for c in commands if isinstance(c, Write)]
    assert [(w.link, w.message.TYPE) for w in writes] == [(theirs, "ping")]
    assert [c.link for c in commands if isinstance(c, Close)] == [ours]
    assert streams.link_to(peer) is theirs
    assert not theirs.closing


def test_a_closed_connection_takes_no_more_requests() -> None:
    """Once the core closes a connection that stood for an address (here, past
    max_bad_messages), a request to that address opens a new one instead of being written
    to the closing one."""
    engine = Engine(
        Identity.from_private_bytes(b"s" * 32),
        MemoryStorage(),
        now=0.0,
        limits=Limits(max_bad_messages=1),
    )
    engine.port = 4000
    streams = Streams(engine)
    link, _ = streams.opened("theirs", "127.0.0.1", 50000, 0.0)
    streams.received(link, encode(Ping(rid=1, sender=777, port=4001)), 0.0)
    assert streams.link_to(("127.0.0.1", 4001)) is link
    commands = streams.received(link, b"not json", 0.1)
    assert any(isinstance(c, Close) and c.link is link for c in commands)
    assert streams.link_to(("127.0.0.1", 4001)) is None
    commands = engine.start(ops.Call(("127.0.0.1", 4001), Ping), 0.2)
    assert [c.address for c in commands if isinstance(c, Connect)] == [("127.0.0.1", 4001)]


def test_a_connection_made_once_the_node_has_stopped_stands_for_nothing() -> None:
    """Our connection attempt completes after stop: the connection, closed at once, is not
    taken for its address, and is not closed twice."""
    engine = Engine(Identity.from_private_bytes(b"t" * 32), MemoryStorage(), now=0.0)
    streams = Streams(engine)
    peer = ("127.0.0.1", 4001)
    engine.start(ops.Call(peer, Ping), 0.0)
    streams.stop(0.1)
    late, commands = streams.opened("late", "127.0.0.1", 4001, 0.2)
    assert [c.link for c in commands if isinstance(c, Close)] == [late]
    commands = streams.connected(late, peer, 0.2)
    assert not [c for c in commands if isinstance(c, Close | Write)]
    assert streams.link_to(peer) is None
