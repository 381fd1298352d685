"""The Twisted driver: netstring connections, time from the reactor, and the ``Node`` API.

Every decision is the core's (``txdht.core.engine.Engine`` behind ``txdht.core.streams.
Streams``). This module moves bytes and time: ``DHTProtocol`` frames messages with the
core's ``NetstringDecoder`` and hands each payload to the core; ``Node`` carries out the commands
the core returns (write, connect, close, log, fire the Deferred of a finished operation), keeps one
``callLater`` at the core's next deadline, and turns the core's operations into Deferreds
that cancel them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from txdht.core import listen as listening
from txdht.core import operations as ops
from txdht.core.arguments import check_count, check_value
from txdht.core.commands import Close, Command, Connect, Done, Failed, Log, Notify, Ready, Write
from txdht.core.engine import Engine
from txdht.core.framing import NetstringDecoder, netstring
from txdht.core.ids import Contact, id_from_hex, id_to_hex
from txdht.core.interfaces import IStorage
from txdht.core.items import DEFAULT_TTL, MAX_VALUE_BYTES, Identity, Item, blob
from txdht.core.limits import DEFAULT_MAX_MESSAGE, DEFAULT_RPC_TIMEOUT, Limits
from txdht.core.lookup import ALPHA, PATHS, LookupMachine
from txdht.core.messages import DEFAULT_NETWORK, Message, encode
from txdht.core.routing import K
from txdht.core.schedule import REFRESH_INTERVAL, Intervals, Service
from txdht.core.storage import MemoryStorage
from txdht.core.streams import Link, Streams

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "DHTFactory",
    "DHTProtocol",
    "Lookup",
    "Node",
    "Subscription",
    "eager_writer",
]

Address = tuple[str, int]
T = TypeVar("T")
Connector = Callable[[Address, "DHTFactory"], "Deferred[DHTProtocol]"]


class DHTProtocol(Protocol):
    """One connection to a peer, either direction: netstrings in and out.

    Framing is the core's ``NetstringDecoder`` (it accepts and refuses exactly what Twisted's
    ``NetstringReceiver`` does, and reads whole netstrings in place). Writes go straight to the
    transport, which sends what was written in one reactor iteration together.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.decoder = NetstringDecoder(node.max_message)
        self.link: Link | None = None
        #: Fires once the connection is closed.
        self.closed: Deferred[None] = Deferred()
        #: Writes to the transport (``eager_writer``), once connected.
        self.write: Callable[[bytes], None]

    def connectionMade(self) -> None:
        self.write = eager_writer(self.transport)
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        # Requests and replies are small and wait on each other: do not let Nagle hold them.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.node.opened(self, peer.host, peer.port)

    def dataReceived(self, data: bytes) -> None:
        node, link, decoder = self.node, self.link, self.decoder
        assert link is not None
        transport: Any = self.transport
        node.hold()  # the replies to every message in ``data`` leave together
        try:
            for payload in decoder.feed(data):
                node.run(node.streams.received(link, payload, node.reactor.seconds()))
            if decoder.error is not None and not transport.disconnecting:
                limit = decoder.max_length
                why = f"a malformed netstring, or one longer than {limit} bytes: {decoder.error}"
                node.run(node.streams.framing_lost(link, why))
        finally:
            node.flush()

    def send(self, message: Message) -> None:
        """Write one message (held with the node's other writes: ``Node.write``)."""
        self.node.write(self, netstring(encode(message)))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        assert self.link is not None  # connectionMade came first
        node = self.node
        error = reason.value if isinstance(reason.value, Exception) else ConnectionDone()
        node.run(node.streams.lost(self.link, error, node.reactor.seconds()))
        self.closed.callback(None)


def eager_writer(transport: Any) -> Callable[[bytes], None]:
    """``transport.write``, but trying the socket at once when nothing is queued on it.

    A Twisted TCP transport queues every write and sends it on the next reactor iteration: two
    ``epoll_ctl`` calls and a pass through the loop per write, a large share of the cost of a
    DHT's small requests and replies (docs/performance.md). asyncio's transports try the socket
    first; this does the same, through the transport's own ``writeSomeData``. What the socket
    does not take, and everything while something is queued, goes to ``transport.write``, in
    order. Write once per batch of messages (``Node.hold``), not once per message: a send per
    message would cost more under load than the queue saves. A transport that is not a
    Twisted TCP connection (TLS, an in-memory one) gets plain ``write``."""
    write: Callable[[bytes], None] = transport.write
    send_now = getattr(transport, "writeSomeData", None)
    if send_now is None or not all(hasattr(transport, name) for name in _QUEUE_STATE):
        return write

    def eager(data: bytes) -> None:
        t = transport
        if t.connected and not (t.dataBuffer or t._tempDataBuffer or t.disconnecting):
            sent = send_now(data)
            if type(sent) is int:  # else the connection is lost: write() finds out and closes
                if sent == len(data):
                    return
                data = data[sent:]
        write(data)

    return eager


#: What ``eager_writer`` reads of a Twisted TCP transport to know that nothing is queued.
_QUEUE_STATE = ("connected", "dataBuffer", "_tempDataBuffer", "disconnecting")


class DHTFactory(Factory):
    """Builds a ``DHTProtocol`` for every connection of one node, incoming or outgoing."""

    #: One factory serves every connection; do not log each outgoing one.
    noisy = False

    def __init__(self, node: Node) -> None:
        self.node = node

    def buildProtocol(self, addr: object) -> DHTProtocol:
        return DHTProtocol(self.node)


class Lookup(Deferred[LookupMachine]):
    """A running iterative lookup: fires with the finished state machine (``machine``, also
    readable while it runs); ``cancel()`` stops it and its queries."""

    def __init__(self, node: Node, op: ops.Lookup) -> None:
        super().__init__(lambda _: node.cancel(op))
        self.op = op

    @property
    def machine(self) -> LookupMachine:
        """The lookup's state machine."""
        return self.op.machine


class Subscription:
    """A running listen (``Node.listen(key, callback)``): ``callback`` is called with a
    ``Notice`` for each newer version of the item, and for its expiry, until ``cancel()``.

    ``done`` fires with None once the listen has stopped (cancelled, or the node stopped), and
    fails if the listen failed."""

    def __init__(
        self, node: Node, op: listening.Listen, callback: Callable[[listening.Notice], object]
    ):
        self.node, self.op, self.callback = node, op, callback
        self.done: Deferred[None] = Deferred(lambda _: node.cancel(op))
        self.done.addErrback(lambda failure: failure.trap(CancelledError) and None)

    @property
    def key(self) -> str:
        """The key listened to, in hex."""
        return id_to_hex(self.op.key)

    @property
    def holders(self) -> list[Contact]:
        """The nodes that hold a listen of it now."""
        return self.op.listening_to()

    @property
    def active(self) -> bool:
        """Whether it still runs."""
        return not self.op.ended

    def cancel(self) -> None:
        """Stop listening (the holders are told); no more calls of the callback."""
        self.done.cancel()


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
        paths: int = PATHS,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_value: int = MAX_VALUE_BYTES,
        connect: Connector | None = None,
        rng: random.Random | None = None,
        limits: Limits | None = None,
        network: str = DEFAULT_NETWORK,
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
            paths=paths,
            max_value=max_value,
            limits=limits,
            rpc_timeout=rpc_timeout,
            rng=rng,
            network=network,
        )
        self.streams = Streams(self.engine)
        self.rpc_timeout = rpc_timeout
        self.max_message = check_count("max_message", max_message)
        self.factory = DHTFactory(self)
        #: RPC counters and lookup latencies, served at ``/metrics``.
        self.metrics = self.engine.metrics
        #: Called with (state machine, seconds) when a lookup finishes (the dashboard's feed).
        self.lookup_observers = self.engine.lookup_observers
        #: Called with True/False once the service has tried to join (and succeeded or not).
        self.ready_observers: list[Callable[[bool], None]] = []
        self._connect = connect or self._connect_tcp
        self._waiting: dict[ops.Operation, Deferred[Any]] = {}
        #: The running listens of this node's callers.
        self.subscriptions: dict[ops.Operation, Subscription] = {}
        self._timer: IDelayedCall | None = None
        self._port: IListeningPort | None = None
        #: Writes held in the current batch, by connection (None: no batch is open).
        self._held: dict[DHTProtocol, list[bytes]] | None = None

    @property
    def id(self) -> str:
        """The node's id, in hex."""
        return id_to_hex(self.engine.id)

    @property
    def port(self) -> int:
        """The TCP port the node listens on (0 until ``listen`` has fired)."""
        return self.engine.port

    @overload
    def listen(self, endpoint: str = ...) -> Deferred[IListeningPort]: ...

    @overload
    def listen(
        self, endpoint: str, callback: Callable[[listening.Notice], object]
    ) -> Subscription: ...

    def listen(
        self,
        endpoint: str = "tcp:0:interface=127.0.0.1",
        callback: Callable[[listening.Notice], object] | None = None,
    ) -> Deferred[IListeningPort] | Subscription:
        """Listen on a server endpoint string; the port is then sent in every message.

        With a ``callback``, listen to a key instead: ``listen(key, callback)`` (``key`` in
        hex) calls ``callback`` with a ``Notice`` (``key``, ``seq``, ``value``, ``expired``)
        for each newer version of the item under ``key``, in order and each once, and when it
        expires; it returns a ``Subscription`` to cancel it."""
        if callback is not None:
            return self.subscribe(endpoint, callback)
        self.streams.before_listen(self._port is not None, "listen()")

        def listening(port: IListeningPort) -> IListeningPort:
            self._port = port
            self.engine.port = port.getHost().port  # type: ignore[attr-defined]
            return port

        server: IStreamServerEndpoint = serverFromString(self.reactor, endpoint)
        return server.listen(self.factory).addCallback(listening)

    # -- the public API ------------------------------------------------------------------------

    def join(self, seeds: Iterable[Address], timeout: float | None = None) -> Deferred[int]:
        """Join the network through ``seeds``; fires with the number of contacts then known.

        Every operation takes a ``timeout`` (seconds): past it, the operation stops and fails
        with ``OperationTimeout``, saying how far it got, and leaves nothing behind."""
        return self.start(ops.Join(seeds), timeout=timeout)

    def put(
        self,
        name: str,
        value: bytes,
        ttl: float = DEFAULT_TTL,
        cas: int | None = None,
        timeout: float | None = None,
    ) -> Deferred[str]:
        """Sign ``value`` under ``name`` with this node's key, store it; fires with the key.

        With ``cas``, only nodes holding sequence number ``cas`` (0: none) store it.
        """
        item = self.engine.next_version(name, value, cas)
        d = self.publish_own(item, ttl, cas, timeout)
        return d.addCallback(lambda _: id_to_hex(item.key))

    def put_blob(
        self, value: bytes, ttl: float = DEFAULT_TTL, timeout: float | None = None
    ) -> Deferred[str]:
        """Store an immutable blob; fires with its key, the sha512 of the value."""
        item = blob(check_value(value))
        d = self.publish_own(item, ttl, timeout=timeout)
        return d.addCallback(lambda _: id_to_hex(item.key))

    def sign(self, name: str, value: bytes) -> Item:
        """The next version of ``name``: ``value`` signed with the next sequence number."""
        return self.engine.next_version(name, value)

    def publish_own(
        self,
        item: Item,
        ttl: float = DEFAULT_TTL,
        cas: int | None = None,
        timeout: float | None = None,
    ) -> Deferred[int]:
        """Publish an item of ours: store it on the k closest nodes and, once stored,
        remember it for republishing; fires with how many accepted it."""
        return self.publish_own_holders(item, ttl, cas, timeout).addCallback(len)

    def publish_own_holders(
        self,
        item: Item,
        ttl: float = DEFAULT_TTL,
        cas: int | None = None,
        timeout: float | None = None,
    ) -> Deferred[list[int]]:
        """``publish_own``, firing with the ids of the nodes that accepted the item (this
        node's own id first, when it keeps a copy): what the dashboard's put form shows.
        An item that does not verify raises ``ProtocolError`` at once, a bad ttl or cas
        ``TypeError`` or ``ValueError``."""
        ttl = self.engine.publishable(item, ttl, cas)
        return self.start(ops.Publish(item, ttl, cas, remember=True), timeout=timeout)

    def publish(
        self, item: Item, ttl: float = DEFAULT_TTL, cas: int | None = None
    ) -> Deferred[int]:
        """Store ``item`` on the k closest nodes; fires with how many accepted it."""
        ttl = self.engine.publishable(item, ttl, cas)
        return self.start(ops.Publish(item, ttl, cas)).addCallback(len)

    def get(self, key: str, timeout: float | None = None) -> Deferred[bytes]:
        """The value under ``key`` (hex), verified; fails with ``NotFoundError`` if none.

        A blob held here is returned at once (it cannot change). For a mutable item the lookup
        asks the k closest nodes, the highest sequence number wins (over our own copy too), and
        peers that sent an older version are given the newest before this fires (read repair).
        """
        d: Deferred[Item] = self.start(ops.Get(id_from_hex(key)), timeout=timeout)
        return d.addCallback(lambda item: item.value)

    def lookup(self, target: int, find_value: bool = False) -> Lookup:
        """Start an iterative lookup for ``target`` (an int id)."""
        op = ops.Lookup(target, find_value)
        lookup = Lookup(self, op)
        self.start(op, lookup)
        return lookup

    def subscribe(
        self,
        key: str,
        callback: Callable[[listening.Notice], object],
        lease: float = listening.LEASE,
    ) -> Subscription:
        """``listen(key, callback)``, asking each holder for ``lease`` seconds at a time."""
        op = listening.Listen(id_from_hex(key), lease=lease)
        subscription = self.subscriptions[op] = Subscription(self, op, callback)
        self.start(op, subscription.done)
        return subscription

    def call(self, to: Contact | Address, cls: type[Message], **fields: Any) -> Deferred[Message]:
        """Send a request to a contact or address; fires with the reply.

        Error replies (``RemoteError``), timeouts, lost connections, and replies from another
        id than the contact's fail the Deferred.
        """
        return self.start(ops.Call(to, cls, **fields))

    # -- housekeeping (run on timers by ``serve``; callable by hand) ---------------------------

    def serve(self, seeds: list[Address], intervals: Intervals | None = None) -> Service:
        """Run the node's life (``txdht.core.schedule.Service``): join through ``seeds`` (or
        the saved contacts) with retries, then housekeeping on timers, until ``stop``."""
        service = Service(seeds, intervals)
        self.run(self.engine.start(service, self.reactor.seconds()))
        return service

    def refresh(self, interval: float = REFRESH_INTERVAL) -> Deferred[int]:
        """Look up a random id in every bucket idle for ``interval`` s; fires with how many."""
        return self.start(ops.Refresh(interval))

    def replicate(self) -> Deferred[int]:
        """Store every held item again on the k closest nodes, keeping its expiry time.

        Fires with the number of items replicated. Nodes that joined, or that lost their copy,
        get one; a held item survives its publisher going away until it expires.
        """
        return self.start(ops.PublishAll(self.engine.replication_jobs(self.reactor.seconds())))

    def republish(self) -> Deferred[int]:
        """Publish again, with a fresh ttl, every item this node published; fires with how many."""
        return self.start(ops.PublishAll(self.engine.republish_jobs()))

    def expire(self) -> int:
        """Drop expired items (and ended rate-limit cool-offs); return how many items."""
        dropped = self.engine.expire(self.reactor.seconds())
        self.run(self.engine.settle())  # the listeners of what expired are told
        return dropped

    def save_contacts(self) -> int:
        """Save the routing table's contacts to the store (to rejoin after a restart)."""
        return self.engine.save_contacts()

    def stop(self) -> Deferred[None]:
        """Cancel what is running, close every connection and stop listening."""
        waits: list[Deferred[Any]] = [link.handle.closed for link in self.streams.links]
        for d in list(self._waiting.values()):
            d.cancel()
        self.run(self.streams.stop(self.reactor.seconds()))
        if self._port is not None:
            waits.append(defer.maybeDeferred(self._port.stopListening))
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- the driver ----------------------------------------------------------------------------

    def start(
        self, op: ops.Operation, d: Deferred[Any] | None = None, timeout: float | None = None
    ) -> Deferred[Any]:
        """Start a core operation; the Deferred fires with its result (cancel it to stop it;
        past ``timeout`` seconds it fails with ``OperationTimeout``)."""
        if d is None:
            d = Deferred(lambda _: self.cancel(op))
        # A bad timeout, or a stopped node, raises here, before the operation is waited for.
        commands = self.engine.start(op, self.reactor.seconds(), timeout)
        self._waiting[op] = d
        self.run(commands)
        return d

    def cancel(self, op: ops.Operation) -> None:
        """Stop a running core operation."""
        self._waiting.pop(op, None)
        self.subscriptions.pop(op, None)
        self.run(self.engine.cancel(op, self.reactor.seconds()))

    def opened(self, protocol: DHTProtocol, host: str, port: int) -> Link:
        """A connection is up: the core's link for it."""
        link, commands = self.streams.opened(protocol, host, port, self.reactor.seconds())
        protocol.link = link
        self.run(commands)
        return link

    def write(self, protocol: DHTProtocol, data: bytes) -> None:
        """Write ``data`` on ``protocol``'s connection: now, or, while the node handles an
        event (``run``, ``DHTProtocol.dataReceived``), with the event's other writes to it."""
        held = self._held
        if held is None:
            protocol.write(data)
        elif protocol in held:
            held[protocol].append(data)
        else:
            held[protocol] = [data]

    def hold(self) -> bool:
        """Hold writes until ``flush``; whether this call opened the batch (a nested call
        joins the open one, and should leave the flush to the caller that opened it)."""
        if self._held is not None:
            return False
        self._held = {}
        return True

    def flush(self) -> None:
        """Send each connection's held writes as one write: a request's reply, the replies to
        a segment's requests, a put's stores to one peer."""
        held, self._held = self._held or {}, None
        for protocol, chunks in held.items():
            protocol.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def run(self, commands: list[Command]) -> None:
        """Carry out the core's commands (their writes held, then flushed together), then set
        the timer for its next deadline."""
        opened = self.hold()
        try:
            self._carry_out(commands)
        finally:
            if opened:
                self.flush()
        self._arm()

    def _carry_out(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case Write(link, message):
                    link.handle.send(message)
                case Connect(address):
                    d = self._connect(address, self.factory)
                    d.addCallbacks(
                        self._connected,
                        self._connect_failed,
                        callbackArgs=(address,),
                        errbackArgs=(address,),
                    )
                case Close(link):
                    chunks = self._held.pop(link.handle, None) if self._held else None
                    if chunks:  # what was written before the close goes first
                        link.handle.write(b"".join(chunks))
                    link.handle.transport.loseConnection()
                case Done(op) | Failed(op):
                    self._ended(op)
                case Notify(op, notice):
                    self._notify(op, notice)
                case Log(level, text, fields):
                    self._log(level, text, fields)
                case Ready(joined):
                    for observer in list(self.ready_observers):
                        observer(joined)

    def _log(self, level: str, text: str, fields: dict[str, Any]) -> None:
        error = fields.get("failure")
        if isinstance(error, BaseException):
            failure = Failure(error, type(error), error.__traceback__)
            rest = {name: value for name, value in fields.items() if name != "failure"}
            self.log.failure(text, failure, LogLevel.levelWithName(level), **rest)
        else:
            self.log.emit(LogLevel.levelWithName(level), text, **fields)

    def _notify(self, op: ops.Operation, notice: listening.Notice) -> None:
        subscription = self.subscriptions.get(op)
        if subscription is None:  # its callback cancelled it earlier in this batch
            return
        try:
            subscription.callback(notice)
        except Exception:
            self.log.failure("a listen's callback failed (the listen goes on)")

    def _ended(self, op: ops.Operation) -> None:
        self.subscriptions.pop(op, None)
        d = self._waiting.pop(op)  # a cancelled operation ends with no Done or Failed
        if op.error is None:
            d.callback(op.result)
        elif type(op.error) is TimeoutError:  # a request's: Twisted's own, as Twisted expects
            d.errback(defer.TimeoutError(str(op.error)))
        else:
            d.errback(op.error)

    def _arm(self) -> None:
        when = self.engine.next_timer()
        timer = self._timer
        if when is None:
            if timer is not None and timer.active():
                timer.cancel()
            return
        delay = max(0.0, when - self.reactor.seconds())
        if timer is None or not timer.active():
            self._timer = self.reactor.callLater(delay, self._fire)
        elif timer.getTime() > when:
            timer.reset(delay)

    def _fire(self) -> None:
        self.run(self.engine.timer_fired(self.reactor.seconds()))

    def _connected(self, protocol: DHTProtocol, address: Address) -> None:
        assert protocol.link is not None
        self.run(self.streams.connected(protocol.link, address, self.reactor.seconds()))

    def _connect_failed(self, failure: Failure, address: Address) -> None:
        now = self.reactor.seconds()
        self.run(self.streams.connect_failed(address, failure.value, now))  # type: ignore[arg-type]

    def _connect_tcp(self, address: Address, factory: DHTFactory) -> Deferred[DHTProtocol]:
        host, port = address
        reactor: IReactorTCP = self.reactor  # type: ignore[assignment]
        kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = kind(reactor, host, port, timeout=self.engine.connect_timeout)
        return endpoint.connect(factory)  # type: ignore[return-value]
