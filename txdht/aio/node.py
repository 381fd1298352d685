"""The native asyncio driver: the same core and wire protocol as the Twisted node, asyncio alone.

Every decision is the core's (``txdht.core.engine.Engine`` behind ``txdht.core.streams.
Streams``). ``NetstringProtocol`` frames messages with the core's ``NetstringDecoder`` and hands
each payload to the core; ``Node`` carries out the commands the core returns, keeps one loop
timer at the core's next deadline, and turns the core's operations into futures that cancel
them (``Lookup`` is one, as in the seed talk). Nothing here imports Twisted: a mixed network of
Twisted and asyncio nodes works because both drive one core.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol, TypeVar, cast

from txdht.core import listen as listening
from txdht.core import operations as ops
from txdht.core.arguments import check_count, check_value
from txdht.core.commands import (
    Close,
    Command,
    Connect,
    Done,
    Failed,
    Log,
    Notify,
    Ready,
    Write,
)
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
    "DEFAULT_RPC_TIMEOUT",
    "Lookup",
    "NetstringProtocol",
    "Node",
    "Subscription",
]

log = logging.getLogger("txdht.aio")

Address = tuple[str, int]
T = TypeVar("T")
Connector = Callable[[Address, Callable[[], "NetstringProtocol"]], Awaitable["NetstringProtocol"]]


class TimerHandle(Protocol):
    """A timer set on a ``Clock``. (Not necessarily an ``asyncio.TimerHandle``: uvloop's
    ``call_at`` returns a plain ``Handle``, with no ``when()``, for a time already come.)"""

    def cancel(self) -> None:
        """Do not fire."""


class Clock(Protocol):
    """Where a node's time comes from: an asyncio loop is one."""

    def time(self) -> float:
        """The time now, in seconds."""

    def call_at(self, when: float, callback: Callable[[], object], /) -> TimerHandle:
        """Call ``callback()`` at ``when``."""


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}


#: Bytes read from a socket at a time, into a buffer of this thread's (``read_buffer``).
READ_SIZE = 64 * 1024
_buffers = threading.local()


def read_buffer() -> memoryview:
    """This thread's buffer for socket reads, shared by every connection of every node on the
    thread's loop: a selector loop (asyncio's on Linux and macOS, uvloop) reads one socket at a
    time, and each read is copied out at once.

    asyncio's own reads take a fresh 256 KiB bytes object per ``recv``: in the benchmark's
    network that kept the kernel busy for 260 µs per get (six messages), against 100 µs with
    this buffer (docs/performance.md)."""
    buffer: memoryview | None = getattr(_buffers, "view", None)
    if buffer is None:
        buffer = _buffers.view = memoryview(bytearray(READ_SIZE))
    return buffer


def _overlaps(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` keeps reads outstanding on several sockets at once (a proactor)."""
    proactor = getattr(asyncio, "ProactorEventLoop", None)  # only on Windows
    return proactor is not None and isinstance(loop, proactor)


class NetstringProtocol(asyncio.BufferedProtocol):
    """One connection to a peer, either direction: netstrings in and out.

    Bytes are read into a buffer shared by the thread's connections (``read_buffer``), and
    copied out before anything else runs."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.decoder = NetstringDecoder(node.max_message)
        self.transport: asyncio.Transport | None = None
        self.link: Link | None = None
        self.closed: asyncio.Future[None] = node.loop.create_future()
        self._outbox: list[bytes] | None = None
        # A proactor loop (Windows) has reads outstanding on many sockets at once: there, each
        # connection reads into a buffer of its own.
        self._buffer = memoryview(bytearray(READ_SIZE)) if _overlaps(node.loop) else read_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes].tobytes())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.node.opened(self, str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        # Replies to everything that arrived together leave together: one write, not one per
        # message (a pipelining peer sends many requests per segment).
        node, link = self.node, self.link
        assert link is not None
        self._outbox = []
        try:
            for payload in self.decoder.feed(data):
                node.run(node.streams.received(link, payload, node.now()))
            if self.decoder.error is not None and not self._closing():
                why = f"{self.decoder.error}; the limit is {self.decoder.max_length} bytes"
                node.run(node.streams.framing_lost(link, why))
        finally:
            self._flush()

    def send(self, message: Message) -> None:
        """Write one message (with the others answering the same incoming data)."""
        data = netstring(encode(message))
        if self._outbox is not None:
            self._outbox.append(data)
        else:
            assert self.transport is not None  # connection_made came first
            self.transport.write(data)

    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        """Close the connection, after what is waiting to be written."""
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, None
        if outbox and self.transport is not None:
            self.transport.write(b"".join(outbox))

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.link is not None  # connection_made came first
        node = self.node
        error = exc or ConnectionResetError(f"connection to {self.link.host} lost")
        node.run(node.streams.lost(self.link, error, node.now()))
        self.closed.set_result(None)


class Lookup(asyncio.Future[LookupMachine]):
    """A running iterative lookup: resolves to the finished state machine (``machine``, also
    readable while it runs); ``cancel()`` stops it and its queries."""

    def __init__(self, node: Node, op: ops.Lookup) -> None:
        super().__init__(loop=node.loop)
        self.op = op

    @property
    def machine(self) -> LookupMachine:
        """The lookup's state machine."""
        return self.op.machine


class Subscription:
    """A running listen (``Node.listen(key)``): iterate over it (``async for notice in ...``)
    for a ``Notice`` per newer version of the item, and for its expiry; ``cancel()`` (or
    leaving ``async with``) stops it, and the iteration then ends. Notices wait here until
    they are read."""

    def __init__(self, node: Node, op: listening.Listen) -> None:
        self.node, self.op = node, op
        self.done: asyncio.Future[None] = node.loop.create_future()
        self._notices: deque[listening.Notice] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.done.add_done_callback(lambda _: self._wake())

    @property
    def key(self) -> str:
        """The key listened to, in hex."""
        return id_to_hex(self.op.key)

    @property
    def holders(self) -> list[Contact]:
        """The nodes that hold a listen of it now."""
        return self.op.listening_to()

    def cancel(self) -> None:
        """Stop listening (the holders are told); the iteration ends after what was queued."""
        self.done.cancel()

    def notified(self, notice: listening.Notice) -> None:
        """The core told of ``notice`` (the driver calls this)."""
        self._notices.append(notice)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> listening.Notice:
        while not self._notices:
            if self.done.done():
                if not self.done.cancelled() and self.done.exception() is not None:
                    raise self.done.exception()  # type: ignore[misc]
                raise StopAsyncIteration
            self._waiter = self.node.loop.create_future()
            await self._waiter
        return self._notices.popleft()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()


class Node:
    """A DHT node with an async API (the same method names as the asyncio adapter's).

    :param identity: the node's Ed25519 key pair (its id is derived from it); new when None.
    :param storage: where held items live; in memory when None.
    :param loop: the event loop; the running loop when None.
    :param clock: where time comes from: ``time()`` and ``call_at(when, callback)`` (a handle
        with ``when()`` and ``cancel()``); the loop when None (``txdht.aio.testing`` passes a
        virtual clock).
    :param connect: how to open a connection to an address, given the protocol factory (tests
        pass an in-memory one); TCP on the loop when None.
    """

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        storage: IStorage | None = None,
        k: int = K,
        alpha: int = ALPHA,
        paths: int = PATHS,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_value: int = MAX_VALUE_BYTES,
        rng: random.Random | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        limits: Limits | None = None,
        clock: Clock | None = None,
        connect: Connector | None = None,
        network: str = DEFAULT_NETWORK,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.clock = clock or cast(Clock, self.loop)
        self.engine = Engine(
            identity or Identity.generate(),
            storage if storage is not None else MemoryStorage(),
            now=self.now(),
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
        self.metrics = self.engine.metrics
        self._server: asyncio.Server | None = None
        self._waiting: dict[ops.Operation, asyncio.Future[Any]] = {}
        #: The running listens of this node's callers.
        self.subscriptions: dict[ops.Operation, Subscription] = {}
        self._connects: set[asyncio.Task[None]] = set()
        self._timer: TimerHandle | None = None
        #: When ``_timer`` fires (kept here: not every loop's handle says).
        self._timer_at = 0.0
        self._open = connect or self._connect_tcp

    def now(self) -> float:
        """The time, from the clock (the loop's, unless another was given)."""
        return self.clock.time()

    @property
    def id(self) -> str:
        """The node's id, in hex."""
        return id_to_hex(self.engine.id)

    @property
    def port(self) -> int:
        """The TCP port the node listens on (0 until started)."""
        return self.engine.port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: any free port); the port is then sent in every message.
        A node listens once: ``RuntimeError`` if it has started (or stopped) already."""
        self.streams.before_listen(self._server is not None, "start()")
        self._server = await self.loop.create_server(lambda: NetstringProtocol(self), host, port)
        self.engine.port = int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Cancel what is running, close every connection and stop listening."""
        closing = [link.handle.closed for link in self.streams.links]
        for future in list(self._waiting.values()):
            future.cancel()
        for task in list(self._connects):
            task.cancel()
        self.run(self.streams.stop(self.now()))
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*closing, *self._connects, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- the public API ------------------------------------------------------------------------

    async def join(self, seeds: Iterable[Address], timeout: float | None = None) -> int:
        """Join the network through ``seeds``; return the number of contacts then known.

        Every operation takes a ``timeout`` (seconds): past it, the operation stops and raises
        ``OperationTimeout`` (a ``TimeoutError``), saying how far it got, and leaves nothing
        behind."""
        count: int = await self.start_op(ops.Join(seeds), timeout=timeout)
        return count

    async def put(
        self,
        name: str,
        value: bytes,
        ttl: float = DEFAULT_TTL,
        cas: int | None = None,
        timeout: float | None = None,
    ) -> str:
        """Sign ``value`` under ``name`` with this node's key and store it; return the key.

        With ``cas``, only nodes holding sequence number ``cas`` (0: none) store it.
        """
        item = self.engine.next_version(name, value, cas)
        await self.publish_own(item, ttl, cas, timeout)
        return id_to_hex(item.key)

    async def put_blob(
        self, value: bytes, ttl: float = DEFAULT_TTL, timeout: float | None = None
    ) -> str:
        """Store an immutable blob; return its key, the sha512 of the value."""
        item = blob(check_value(value))
        await self.publish_own(item, ttl, timeout=timeout)
        return id_to_hex(item.key)

    async def publish_own(
        self,
        item: Item,
        ttl: float = DEFAULT_TTL,
        cas: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Publish an item of ours: store it on the k closest nodes and, once stored, remember
        it for republishing; return how many accepted it (an item that does not verify raises
        ``ProtocolError`` at once, a bad ttl or cas ``TypeError`` or ``ValueError``)."""
        ttl = self.engine.publishable(item, ttl, cas)
        op = ops.Publish(item, ttl, cas, remember=True)
        return len(await self.start_op(op, timeout=timeout))

    async def publish(self, item: Item, ttl: float = DEFAULT_TTL, cas: int | None = None) -> int:
        """Store ``item`` on the k closest nodes; return how many accepted it."""
        ttl = self.engine.publishable(item, ttl, cas)
        return len(await self.start_op(ops.Publish(item, ttl, cas)))

    async def get(self, key: str, timeout: float | None = None) -> bytes:
        """The value under ``key`` (hex), verified; ``NotFoundError`` if no node has one.

        A blob held here is returned at once (it cannot change). For a mutable item the lookup
        asks the k closest nodes, the highest sequence number wins (over our own copy too), and
        peers that sent an older version are given the newest before this returns (read repair).
        """
        item: Item = await self.start_op(ops.Get(id_from_hex(key)), timeout=timeout)
        return item.value

    def lookup(self, target: int, find_value: bool = False) -> Lookup:
        """Start an iterative lookup for ``target`` (an int id)."""
        op = ops.Lookup(target, find_value)
        lookup = Lookup(self, op)
        self.start_op(op, lookup)
        return lookup

    def listen(self, key: str, lease: float = listening.LEASE) -> Subscription:
        """Listen to the item under ``key`` (hex): ``async for notice in node.listen(key)``
        gives a ``Notice`` (``key``, ``seq``, ``value``, ``expired``) for each newer version,
        in order and each once, and when it expires, until the subscription is cancelled.
        Each holder is asked for ``lease`` seconds at a time."""
        op = listening.Listen(id_from_hex(key), lease=lease)
        subscription = self.subscriptions[op] = Subscription(self, op)
        subscription.done.add_done_callback(lambda _: self.subscriptions.pop(op, None))
        self.start_op(op, subscription.done)
        return subscription

    async def call(self, to: Contact | Address, cls: type[Message], **fields: Any) -> Message:
        """Send a request to a contact or address and return the reply.

        Error replies raise ``RemoteError``; no answer within ``rpc_timeout`` raises
        ``TimeoutError``; a reply from another id than the contact's raises ``ProtocolError``.
        """
        reply: Message = await self.start_op(ops.Call(to, cls, **fields))
        return reply

    # -- housekeeping --------------------------------------------------------------------------

    def serve(self, seeds: list[Address], intervals: Intervals | None = None) -> Service:
        """Run the node's life (``txdht.core.schedule.Service``): join through ``seeds`` (or
        the saved contacts) with retries, then housekeeping on timers, until ``stop``."""
        service = Service(seeds, intervals)
        self.run(self.engine.start(service, self.now()))
        return service

    async def refresh(self, interval: float = REFRESH_INTERVAL) -> int:
        """Look up a random id in every bucket idle for ``interval`` s; return how many."""
        count: int = await self.start_op(ops.Refresh(interval))
        return count

    async def replicate(self) -> int:
        """Store every held item again on the k closest nodes, keeping its expiry time."""
        count: int = await self.start_op(ops.PublishAll(self.engine.replication_jobs(self.now())))
        return count

    async def republish(self) -> int:
        """Publish again, with a fresh ttl, every item this node published."""
        count: int = await self.start_op(ops.PublishAll(self.engine.republish_jobs()))
        return count

    def expire(self) -> int:
        """Drop expired items (and ended rate-limit cool-offs); return how many items."""
        dropped = self.engine.expire(self.now())
        self.run(self.engine.settle())  # the listeners of what expired are told
        return dropped

    def save_contacts(self) -> int:
        """Save the routing table's contacts to the store (to rejoin after a restart)."""
        return self.engine.save_contacts()

    # -- the driver ----------------------------------------------------------------------------

    def start_op(self, op: ops.Operation, future: Any = None, timeout: float | None = None) -> Any:
        """Start a core operation; the future resolves to its result (cancel it to stop it;
        past ``timeout`` seconds it raises ``OperationTimeout``)."""
        # A bad timeout, or a stopped node, raises here, before the operation is waited for.
        commands = self.engine.start(op, self.now(), timeout)
        if future is None:
            future = self.loop.create_future()
        self._waiting[op] = future
        future.add_done_callback(lambda f: self._settled(op, f))
        self.run(commands)
        return future

    def _settled(self, op: ops.Operation, future: asyncio.Future[Any]) -> None:
        if future.cancelled() and self._waiting.pop(op, None) is not None:
            self.run(self.engine.cancel(op, self.now()))

    def opened(self, protocol: NetstringProtocol, host: str, port: int) -> None:
        """A connection is up: give it the core's link."""
        link, commands = self.streams.opened(protocol, host, port, self.now())
        protocol.link = link
        self.run(commands)

    def run(self, commands: list[Command]) -> None:
        """Carry out the core's commands, then set the timer for its next deadline."""
        for command in commands:
            match command:
                case Write(link, message):
                    link.handle.send(message)
                case Connect(address):
                    task = self.loop.create_task(self._connect(address))
                    self._connects.add(task)
                    task.add_done_callback(self._connects.discard)
                case Close(link):
                    link.handle.close()
                case Done(op) | Failed(op):
                    future = self._waiting.pop(op, None)
                    if future is not None and not future.done():
                        if op.error is None:
                            future.set_result(op.result)
                        else:
                            future.set_exception(op.error)
                case Notify(op, notice):
                    # (a cancelled listen is stopped in the core, and forgotten here, by its
                    # future's callbacks, one after the other: no Notify comes between)
                    self.subscriptions[op].notified(notice)
                case Log(level, text, fields):
                    error = fields.get("failure")
                    log.log(
                        _LEVELS.get(level, logging.ERROR), text.format(**fields), exc_info=error
                    )
                case Ready():
                    pass
        self._arm()

    def _arm(self) -> None:
        when = self.engine.next_timer()
        timer = self._timer
        if timer is not None and (when is None or when < self._timer_at):
            timer.cancel()
            timer = self._timer = None
        if when is not None and timer is None:
            self._timer, self._timer_at = self.clock.call_at(when, self._fire), when

    def _fire(self) -> None:
        self._timer = None
        self.run(self.engine.timer_fired(self.now()))

    async def _connect(self, address: Address) -> None:
        try:
            protocol = await self._open(address, lambda: NetstringProtocol(self))
        except (OSError, TimeoutError) as e:
            self.run(self.streams.connect_failed(address, e, self.now()))
            return
        assert protocol.link is not None
        self.run(self.streams.connected(protocol.link, address, self.now()))

    async def _connect_tcp(
        self, address: Address, factory: Callable[[], NetstringProtocol]
    ) -> NetstringProtocol:
        async with asyncio.timeout(self.engine.connect_timeout):
            _, protocol = await self.loop.create_connection(factory, address[0], address[1])
        return protocol


def run(coroutine: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """Run ``coroutine`` on a new event loop: the default one, or uvloop's."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)
