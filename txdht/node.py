"""The Twisted shell: netstring connections, RPCs as Deferreds, lookups, and the ``Node`` API.

This module only moves bytes and time. ``DHTProtocol`` frames messages with
``NetstringReceiver`` and serves both directions of a TCP connection: requests from the peer go to
the core ``Engine`` and its reply goes back; replies to our own requests fire the Deferred waiting
for them, matched by request id. ``Node`` keeps one connection per peer (ours or theirs, whichever
came first), turns requests into cancellable Deferreds with a timeout on the injected clock, and
drives the core's lookup state machine from ``Lookup``, a Deferred.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import NetstringReceiver
from twisted.python.failure import Failure

from txdht.core.engine import Engine, Seen
from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import Contact, id_from_hex, id_to_hex
from txdht.core.items import (
    CHALLENGE_BYTES,
    DEFAULT_TTL,
    MAX_VALUE_BYTES,
    Identity,
    Item,
    blob,
    proves,
)
from txdht.core.lookup import ALPHA, IterativeLookup
from txdht.core.messages import (
    REPLY_TYPES,
    Error,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Value,
    decode,
    encode,
)
from txdht.core.routing import K
from txdht.core.storage import MemoryStorage
from txdht.errors import JoinError, NotFoundError, PutError, RemoteError
from txdht.interfaces import IStorage
from txdht.intervals import REFRESH_INTERVAL
from txdht.limits import Abandoned, Limits, Verdict, is_loopback, peer_key
from txdht.metrics import Metrics

__all__ = ["DEFAULT_MAX_MESSAGE", "DHTFactory", "DHTProtocol", "Lookup", "Node"]

#: The longest netstring accepted by default: a 64 KiB value in base64 plus its envelope fits
#: many times over, and a peer cannot make us buffer more than this for one message.
DEFAULT_MAX_MESSAGE = 1024 * 1024
#: Seconds to wait for a connection and a reply before a request counts as failed.
DEFAULT_RPC_TIMEOUT = 5.0
#: Items replicated or republished at once by housekeeping, so a large store cannot flood
#: the network or the node's own connection table in one go.
HOUSEKEEPING_CONCURRENCY = 8

Address = tuple[str, int]
_D = TypeVar("_D", bound="Deferred[Any]")


async def _settled(waits: list[Deferred[Any]]) -> list[tuple[bool, Any]]:
    """Wait for every Deferred in ``waits``, a failure being a result like any other; but when
    the wait is cancelled (the operation awaiting it was), raise ``CancelledError`` instead of
    going on with the cancelled requests as if they had failed by themselves."""
    results: list[tuple[bool, Any]] = await DeferredList(waits, consumeErrors=True)
    if any(not ok and result.check(defer.CancelledError) for ok, result in results):
        raise defer.CancelledError()
    return results


Connector = Callable[[Address, "DHTFactory"], "Deferred[DHTProtocol]"]


class DHTProtocol(NetstringReceiver):
    """One connection to a peer: requests both ways, replies matched by request id."""

    log = Logger()

    def __init__(self, node: Node) -> None:
        self.node = node
        self.MAX_LENGTH = node.max_message
        self.host = ""
        #: The peer's listening address, once it is known.
        self.address: Address | None = None
        self.pending: dict[int, Deferred[Message]] = {}
        self.abandoned = Abandoned()
        self.closed: Deferred[None] = Deferred()
        self.peer_port = 0
        #: Malformed messages received on this connection.
        self.bad_messages = 0
        self._framing_reported = False

    def connectionMade(self) -> None:
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        self.host, self.peer_port = peer.host, peer.port
        # Requests and replies are small and wait on each other: do not let Nagle hold them.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.node.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)  # type: ignore[no-untyped-call]
        if self.brokenPeer and not self._framing_reported:
            self._framing_reported = True
            self.log.warn(
                "closing connection from {host}: framing lost (a malformed netstring, or one "
                "longer than {limit} bytes)",
                host=self.host,
                limit=self.MAX_LENGTH,
            )

    def stringReceived(self, string: bytes) -> None:
        try:
            message = decode(string)
        except ProtocolError as e:
            self.log.warn("bad message from {host}: {error}", host=self.host, error=str(e))
            waiting = self.pending.pop(e.request_id or 0, None) if e.in_reply else None
            if waiting is not None:
                waiting.errback(e)
            elif not e.in_reply:
                self.send(self.node.engine.error(e.request_id or 0, e.code, e.message))
            self.bad_messages += 1
            if self.bad_messages >= self.node.engine.limits.max_bad_messages:
                self.log.warn(
                    "closing connection from {host}: {count} malformed messages",
                    host=self.host,
                    count=self.bad_messages,
                )
                self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if isinstance(message, REPLY_TYPES):
            self._reply_received(message)
        else:
            self.node.request_received(self, message)

    def _reply_received(self, reply: Message) -> None:
        waiting = self.pending.pop(reply.rid, None)
        if waiting is None and self.abandoned.claim(reply.rid):
            return  # the late reply to a request we cancelled or timed out
        if waiting is None:
            self.log.info(
                "ignored a {type} reply from {host} to request {rid}, which nobody awaits",
                type=reply.TYPE,
                host=self.host,
                rid=reply.rid,
            )
            return
        waiting.callback(reply)

    def send(self, message: Message) -> None:
        """Send one message."""
        self.sendString(encode(message))  # type: ignore[no-untyped-call]

    def request(self, message: Message) -> Deferred[Message]:
        """Send a request; the Deferred fires with the reply (cancel it to stop waiting)."""

        def forget(d: Deferred[Message]) -> None:
            self.pending.pop(message.rid, None)
            self.abandoned.add(message.rid)

        d: Deferred[Message] = Deferred(forget)
        self.pending[message.rid] = d
        self.send(message)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(reason)
        self.node.connection_lost(self)
        self.closed.callback(None)


def _outcome(result: object) -> str:
    """The metrics label for how an RPC ended."""
    if not isinstance(result, Failure):
        return "ok"
    if result.check(RemoteError):
        return "error"
    if result.check(defer.TimeoutError):
        return "timeout"
    if result.check(defer.CancelledError):
        return "cancelled"
    return "failed"


class DHTFactory(Factory):
    """Builds a ``DHTProtocol`` for every connection of one node, incoming or outgoing."""

    #: One factory serves every connection; do not log each outgoing one.
    noisy = False

    def __init__(self, node: Node) -> None:
        self.node = node

    def buildProtocol(self, addr: object) -> DHTProtocol:
        return DHTProtocol(self.node)


class Lookup(Deferred[IterativeLookup]):
    """A running iterative lookup: fires with the finished state machine; ``cancel()`` stops it.

    It keeps ``alpha`` requests in flight, sending a new one whenever one answers or fails,
    and reports every answer and failure to the node's routing table.
    """

    def __init__(self, node: Node, machine: IterativeLookup) -> None:
        super().__init__(lambda _: self._stop())
        self.machine = machine
        self._node = node
        self._queries: dict[int, Deferred[Message]] = {}
        self._stopped = False
        self._started = node.reactor.seconds()
        self._step()

    def _stop(self) -> None:
        self._stopped = True
        for query in list(self._queries.values()):
            query.cancel()

    def _step(self) -> None:
        if self.machine.done:
            self._stop()
            elapsed = self._node.reactor.seconds() - self._started
            self._node.metrics.lookup(elapsed)
            for observer in list(self._node.lookup_observers):
                observer(self.machine, elapsed)
            self.callback(self.machine)
            return
        for contact in self.machine.next_queries():
            if self.machine.find_value:
                query = self._node.call(contact, FindValue, key=self.machine.target)
            else:
                query = self._node.call(contact, FindNode, target=self.machine.target)
            self._queries[contact.id] = query
            query.addBoth(self._answered, contact)

    def _answered(self, result: Message | Failure, contact: Contact) -> None:
        del self._queries[contact.id]
        if self._stopped:
            return
        if isinstance(result, Nodes):
            self.machine.nodes_received(contact, result.nodes)
        elif isinstance(result, Value) and self.machine.find_value:
            if not self.machine.value_received(contact, result.item):
                self._node.peer_failed(contact, result)
        else:
            self.machine.query_failed(contact)
            self._node.peer_failed(contact, result)
        self._step()


class Node:
    """A DHT node with a Deferred API.

    :param reactor: provides ``IReactorTime`` and ``IReactorTCP``; the global reactor when None.
    :param identity: the node's Ed25519 key pair (its id is derived from it); new when None.
    :param storage: where held items live; in memory when None.
    :param connect: how to open a connection to an address (tests pass an in-memory one).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any = None,
        *,
        identity: Identity | None = None,
        storage: IStorage | None = None,
        k: int = K,
        alpha: int = ALPHA,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_value: int = MAX_VALUE_BYTES,
        connect: Connector | None = None,
        rng: random.Random | None = None,
        limits: Limits | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor: IReactorTime = reactor
        self.engine = Engine(
            identity or Identity.generate(),
            storage if storage is not None else MemoryStorage(),
            now=self.reactor.seconds(),
            k=k,
            alpha=alpha,
            max_value=max_value,
            limits=limits,
        )
        self.rpc_timeout = rpc_timeout
        self.max_message = max_message
        self.factory = DHTFactory(self)
        self._connect = connect or self._connect_tcp
        self._rng = rng or random.Random()
        self._connections: dict[Address, DHTProtocol] = {}
        self._connecting: dict[Address, list[Deferred[DHTProtocol]]] = {}
        self._protocols: set[DHTProtocol] = set()
        self._running: set[Deferred[Any]] = set()
        self._port: IListeningPort | None = None
        self._stopped = False
        #: RPC counters and lookup latencies, served at ``/metrics``.
        self.metrics = Metrics()
        #: Called with (state machine, seconds) when a lookup finishes (the dashboard's feed).
        self.lookup_observers: list[Callable[[IterativeLookup, float], None]] = []

    @property
    def id(self) -> str:
        """The node's id, in hex."""
        return id_to_hex(self.engine.id)

    @property
    def port(self) -> int:
        """The TCP port the node listens on (0 until ``listen`` has fired)."""
        return self.engine.port

    def listen(self, endpoint: str = "tcp:0:interface=127.0.0.1") -> Deferred[IListeningPort]:
        """Listen on a server endpoint string; the port is then sent in every message."""

        def listening(port: IListeningPort) -> IListeningPort:
            self._port = port
            self.engine.port = port.getHost().port  # type: ignore[attr-defined]
            return port

        server: IStreamServerEndpoint = serverFromString(self.reactor, endpoint)
        return server.listen(self.factory).addCallback(listening)

    # -- the public API --------------------------------------------------------------------

    def join(self, seeds: Iterable[Address]) -> Deferred[int]:
        """Join the network through ``seeds``; fires with the number of contacts then known."""
        return self._track(Deferred.fromCoroutine(self._join(list(seeds))))

    def put(
        self, name: str, value: bytes, ttl: float = DEFAULT_TTL, cas: int | None = None
    ) -> Deferred[str]:
        """Sign ``value`` under ``name`` with this node's key, store it; fires with the key.

        With ``cas``, only nodes holding sequence number ``cas`` (0: none) store it.
        """
        item = self.engine.next_version(name, value, cas)
        return self.publish_own(item, ttl, cas).addCallback(lambda _: id_to_hex(item.key))

    def put_blob(self, value: bytes, ttl: float = DEFAULT_TTL) -> Deferred[str]:
        """Store an immutable blob; fires with its key, the sha512 of the value."""
        item = blob(value)
        return self.publish_own(item, ttl).addCallback(lambda _: id_to_hex(item.key))

    def sign(self, name: str, value: bytes) -> Item:
        """The next version of ``name``: ``value`` signed with the next sequence number."""
        return self.engine.next_version(name, value)

    def publish_own(
        self, item: Item, ttl: float = DEFAULT_TTL, cas: int | None = None
    ) -> Deferred[int]:
        """Publish an item of ours: store it on the k closest nodes and, once stored,
        remember it for republishing; fires with how many accepted it."""
        return self.publish_own_holders(item, ttl, cas).addCallback(len)

    def publish_own_holders(
        self, item: Item, ttl: float = DEFAULT_TTL, cas: int | None = None
    ) -> Deferred[list[int]]:
        """``publish_own``, firing with the ids of the nodes that accepted the item (this
        node's own id first, when it keeps a copy): what the dashboard's put form shows."""

        def remember(holders: list[int]) -> list[int]:
            self.engine.remember(item, ttl)
            return holders

        return self._publish_holders(item, ttl, cas).addCallback(remember)

    def publish(
        self, item: Item, ttl: float = DEFAULT_TTL, cas: int | None = None
    ) -> Deferred[int]:
        """Store ``item`` on the k closest nodes; fires with how many accepted it."""
        return self._publish_holders(item, ttl, cas).addCallback(len)

    def _publish_holders(self, item: Item, ttl: float, cas: int | None) -> Deferred[list[int]]:
        item.verify(self.engine.max_value)
        return self._track(Deferred.fromCoroutine(self._publish(item, ttl, cas)))

    def get(self, key: str) -> Deferred[bytes]:
        """The value under ``key`` (hex), verified; fails with ``NotFoundError`` if none.

        A blob held here is returned at once (it cannot change). For a mutable item the lookup
        asks the k closest nodes, the highest sequence number wins (over our own copy too), and
        peers that sent an older version are given the newest before this fires (read repair).
        """
        return self._track(Deferred.fromCoroutine(self._get(id_from_hex(key))))

    def lookup(self, target: int, find_value: bool = False) -> Lookup:
        """Start an iterative lookup for ``target`` (an int id)."""
        machine = self.engine.lookup(target, self.reactor.seconds(), find_value)
        return self._track(Lookup(self, machine))

    # -- housekeeping (run by txdht.service on timers) ---------------------------------------

    def refresh(self, interval: float = REFRESH_INTERVAL) -> Deferred[int]:
        """Look up a random id in every bucket idle for ``interval`` s; fires with how many."""
        return self._track(Deferred.fromCoroutine(self._refresh(interval)))

    def replicate(self) -> Deferred[int]:
        """Store every held item again on the k closest nodes, keeping its expiry time.

        Fires with the number of items replicated. Nodes that joined, or that lost their copy,
        get one; a held item survives its publisher going away until it expires.
        """
        jobs = self.engine.replication_jobs(self.reactor.seconds())
        return self._track(Deferred.fromCoroutine(self._publish_all(jobs)))

    def republish(self) -> Deferred[int]:
        """Publish again, with a fresh ttl, every item this node published; fires with how many."""
        jobs = self.engine.republish_jobs()
        return self._track(Deferred.fromCoroutine(self._publish_all(jobs)))

    def expire(self) -> int:
        """Drop expired items (and ended rate-limit cool-offs); return how many items."""
        now = self.reactor.seconds()
        self.engine.rate_limiter.forget(now)
        return self.engine.expire(now)

    def save_contacts(self) -> int:
        """Save the routing table's contacts to the store (to rejoin after a restart)."""
        contacts = self.engine.routing.contacts()
        self.engine.storage.set_contacts(contacts)
        return len(contacts)

    def stop(self) -> Deferred[None]:
        """Cancel what is running, close every connection and stop listening."""
        self._stopped = True
        for running in list(self._running):
            running.cancel()
        waits: list[Deferred[Any]] = []
        for protocol in list(self._protocols):
            waits.append(protocol.closed)
            protocol.transport.loseConnection()  # type: ignore[union-attr]
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- requests to peers -----------------------------------------------------------------

    def call(self, to: Contact | Address, cls: type[Message], **fields: Any) -> Deferred[Message]:
        """Send a request to a contact or address; fires with the reply.

        Error replies, timeouts, lost connections, and replies from another id than the
        contact's fail the Deferred.
        """
        address = to.address if isinstance(to, Contact) else to
        request = self.engine.message(cls, **fields)
        d = self._connection(address).addCallback(lambda proto: proto.request(request))
        d.addTimeout(self.rpc_timeout, self.reactor)

        def check(reply: Message) -> Message:
            if isinstance(reply, Error):
                raise RemoteError(reply.code, reply.message)
            if isinstance(to, Contact) and reply.sender != to.id:
                raise ProtocolError(ErrorCode.UNEXPECTED, f"{to} answered with another id")
            if isinstance(to, Contact):
                self._seen(to)
            return reply

        def count(result: Message | Failure) -> Message | Failure:
            self.metrics.rpc("sent", cls.TYPE, _outcome(result))
            return result

        return d.addCallback(check).addBoth(count)

    def peer_failed(self, contact: Contact, why: Message | Failure) -> None:
        """A request to ``contact`` failed; count it in the routing table."""
        reason = why.getErrorMessage() if isinstance(why, Failure) else f"a {why.TYPE} reply"
        self.log.debug("request to {peer} failed: {reason}", peer=str(contact), reason=reason)
        self.engine.failed(contact)

    def _seen(self, contact: Contact) -> None:
        self._act(contact, self.engine.seen(contact, self.reactor.seconds()))

    def _act(self, contact: Contact, seen: Seen) -> None:
        """Do what hearing from ``contact`` asked: ping-before-evict, copies for a newcomer."""
        if seen.ping is not None:
            self._ping_before_evict(seen.ping)
        now = self.reactor.seconds()
        for record in seen.handoff:
            d = self._track(
                self.call(contact, Store, item=record.item, ttl=record.expires_at - now)
            )
            d.addErrback(self._handoff_failed, contact)

    def _handoff_failed(self, failure: Failure, contact: Contact) -> None:
        self.log.info(
            "could not copy an item to the new contact {peer}: {reason}",
            peer=str(contact),
            reason=failure.getErrorMessage(),
        )

    def _ping_before_evict(self, contact: Contact) -> None:
        challenge = os.urandom(CHALLENGE_BYTES)
        d = self._track(self.call(contact, Ping, challenge=challenge))
        d.addCallbacks(
            lambda pong: self._proven(contact, challenge, pong),
            lambda f: self.peer_failed(contact, f),
        )

    def _proven(self, contact: Contact, challenge: bytes, pong: Message) -> bool:
        """Whether ``pong`` proves that ``contact`` holds the key its id is the hash of (the
        identity handshake); if not, it is logged and dropped from the routing table."""
        if isinstance(pong, Pong) and pong.proof and proves(contact.id, challenge, pong.proof):
            return True
        self.log.warn(
            "{peer} failed the identity handshake (its id is not the hash of a key it holds): "
            "dropped",
            peer=str(contact),
        )
        self.engine.routing.remove(contact.id)
        return False

    def _connection(self, address: Address) -> Deferred[DHTProtocol]:
        existing = self._connections.get(address)
        if existing is not None:
            return defer.succeed(existing)
        # One connection attempt per address, however many requests wait for it; each waiter
        # gets its own Deferred, so cancelling one request never cancels the others.
        waiters = self._connecting.get(address)
        first = waiters is None
        if waiters is None:
            waiters = self._connecting[address] = []
        waiter: Deferred[DHTProtocol] = Deferred(waiters.remove)
        waiters.append(waiter)
        if first:
            self._connect(address, self.factory).addBoth(self._connected, address)
        return waiter

    def _connected(self, result: DHTProtocol | Failure, address: Address) -> None:
        waiters = self._connecting.pop(address)
        if isinstance(result, DHTProtocol):
            result.address = address
            self._connections.setdefault(address, result)
        for waiter in waiters:
            if isinstance(result, DHTProtocol):
                waiter.callback(result)
            else:
                waiter.errback(result)

    def _connect_tcp(self, address: Address, factory: DHTFactory) -> Deferred[DHTProtocol]:
        host, port = address
        reactor: IReactorTCP = self.reactor  # type: ignore[assignment]
        kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = kind(reactor, host, port, timeout=max(1, int(self.rpc_timeout)))
        return endpoint.connect(factory)  # type: ignore[return-value]

    # -- events from connections -----------------------------------------------------------

    def connection_made(self, protocol: DHTProtocol) -> None:
        """A connection (either direction) is up; refused if stopped or too many from its IP."""
        self._protocols.add(protocol)
        limit = self.engine.limits.max_connections_per_ip
        same = sum(1 for p in self._protocols if p.host == protocol.host)
        crowded = same > limit and not is_loopback(protocol.host)
        if crowded:
            self.log.warn(
                "closing connection from {host}: over {limit} connections from it",
                host=protocol.host,
                limit=limit,
            )
        if self._stopped or crowded:
            protocol.transport.loseConnection()  # type: ignore[union-attr]

    def connection_lost(self, protocol: DHTProtocol) -> None:
        """A connection is gone; forget it."""
        self._protocols.discard(protocol)
        if protocol.address is not None and self._connections.get(protocol.address) is protocol:
            del self._connections[protocol.address]

    def request_received(self, protocol: DHTProtocol, request: Message) -> None:
        """A peer's request came in on ``protocol``: answer it (or refuse it, if it is over
        its rate)."""
        now = self.reactor.seconds()
        verdict = self.engine.rate_limiter.check(peer_key(protocol.host, protocol.peer_port), now)
        if verdict != Verdict.SERVE:
            self.metrics.rpc("received", request.TYPE, verdict)
            if verdict == Verdict.REFUSE:
                self.log.warn(
                    "{host} is over its request rate: ignored for a while", host=protocol.host
                )
                text = "too many requests: ignored for a while"
                protocol.send(self.engine.error(request.rid, ErrorCode.RATE_LIMITED, text))
            return
        handled = self.engine.handle(request, protocol.host, now)
        if request.port and protocol.address is None:
            protocol.address = (protocol.host, request.port)
            self._connections.setdefault(protocol.address, protocol)
        reply = handled.reply
        if isinstance(reply, Error):
            self.log.warn(
                "refused a {type} request from {host}: {message}",
                type=request.TYPE,
                host=protocol.host,
                message=reply.message,
            )
        protocol.send(reply)
        self.metrics.rpc("received", request.TYPE, "error" if isinstance(reply, Error) else "ok")
        if request.port:
            self._act(Contact(request.sender, protocol.host, request.port), handled.seen)

    # -- the operations, as coroutines -----------------------------------------------------

    def _track(self, d: _D) -> _D:
        self._running.add(d)
        d.addBoth(self._untrack, d)
        return d

    def _untrack(self, result: object, d: Deferred[Any]) -> object:
        self._running.discard(d)
        return result

    async def _join(self, seeds: list[Address]) -> int:
        challenges = [os.urandom(CHALLENGE_BYTES) for _ in seeds]
        pings = [self.call(a, Ping, challenge=c) for a, c in zip(seeds, challenges, strict=True)]
        results = await _settled(pings)
        now = self.reactor.seconds()
        for address, challenge, (ok, reply) in zip(seeds, challenges, results, strict=True):
            if ok:
                contact = Contact(reply.sender, address[0], address[1])
                if self._proven(contact, challenge, reply):
                    self._act(contact, self.engine.seen(contact, now))
            else:
                self.log.warn(
                    "seed {host}:{port} did not answer: {reason}",
                    host=address[0],
                    port=address[1],
                    reason=cast(Failure, reply).getErrorMessage(),
                )
        if not len(self.engine.routing):
            raise JoinError(f"none of the {len(seeds)} seed nodes answered and proved its id")
        await self.lookup(self.engine.id)
        # Fill the buckets further away: look up a random id in each one no lookup touched.
        await self._refresh(0.001)
        return len(self.engine.routing)

    async def _refresh(self, interval: float) -> int:
        targets = self.engine.refresh_targets(self.reactor.seconds(), interval, self._rng)
        await _settled([self.lookup(target) for target in targets])
        return len(targets)

    async def _publish_all(self, jobs: list[tuple[Item, float]]) -> int:
        limit = DeferredSemaphore(HOUSEKEEPING_CONCURRENCY)
        results = await _settled([limit.run(self.publish, item, ttl) for item, ttl in jobs])
        return sum(1 for ok, _ in results if ok)

    async def _publish(self, item: Item, ttl: float, cas: int | None = None) -> list[int]:
        machine = await self.lookup(item.key)
        keep, targets = self.engine.placement(item.key, machine.closest())
        holders: list[int] = []
        reasons, codes = [], set()
        if keep:
            try:
                self.engine.store(item, ttl, self.reactor.seconds(), cas)
                holders.append(self.engine.id)
            except ProtocolError as e:
                reasons.append(f"this node: {e}")
                codes.add(int(e.code))
        calls = [self.call(c, Store, item=item, ttl=ttl, cas=cas) for c in targets]
        for contact, (ok, result) in zip(targets, await _settled(calls), strict=True):
            if ok:
                holders.append(contact.id)
            else:
                failure = cast(Failure, result)
                reason = failure.getErrorMessage()
                reasons.append(f"{contact}: {reason}")
                if failure.check(RemoteError):
                    codes.add(failure.value.code)  # type: ignore[union-attr]
                key = id_to_hex(item.key)[:12]
                self.log.info(
                    "{peer} did not store {key}: {reason}",
                    peer=str(contact),
                    key=key,
                    reason=reason,
                )
        if not holders:
            first = f"; first refusal: {reasons[0]}" if reasons else ""
            message = f"no node stored the item ({len(targets)} were asked){first}"
            raise PutError(message, frozenset(codes))
        return holders

    async def _get(self, key: int) -> bytes:
        local = self.engine.get(key, self.reactor.seconds())
        if local is not None and not local.mutable:
            return local.value  # a blob never changes: our copy is the value
        machine = await self.lookup(key, find_value=True)
        for peer, error in machine.bad_values:
            self.log.warn("{peer} sent an invalid value: {error}", peer=str(peer), error=str(error))
        best, stale = self.engine.newest(key, machine, self.reactor.seconds(), DEFAULT_TTL)
        if best is None:
            raise NotFoundError(f"no value found under {id_to_hex(key)[:16]}...")
        if stale:
            self.log.info(
                "{count} peers sent an older version of {key} than seq {seq}; repairing them",
                count=len(stale),
                key=id_to_hex(key)[:12],
                seq=best.seq,
            )
            repairs = [self.call(peer, Store, item=best, ttl=DEFAULT_TTL) for peer in stale]
            await _settled(repairs)
        return best.value
