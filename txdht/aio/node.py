"""The native asyncio twin: the same core and wire protocol as the Twisted node, on asyncio alone.

``NetstringProtocol`` frames messages with the core's ``NetstringDecoder`` and serves both
directions of a connection; ``Node`` keeps one connection per peer, runs RPCs as coroutines with
a timeout on the loop's clock, and drives the core's lookup state machine from ``Lookup``, an
``asyncio.Future`` (as in the seed talk). Nothing here imports Twisted: a mixed network of
Twisted and asyncio nodes works because both speak docs/protocol.md through the same core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any, TypeVar

from txdht.core.engine import Engine, Seen
from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.framing import NetstringDecoder, netstring
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
from txdht.intervals import REFRESH_INTERVAL, Intervals
from txdht.limits import Abandoned, Limits, Verdict, is_loopback, peer_key
from txdht.metrics import Metrics

__all__ = ["DEFAULT_MAX_MESSAGE", "DEFAULT_RPC_TIMEOUT", "Lookup", "NetstringProtocol", "Node"]

log = logging.getLogger("txdht.aio")

#: The longest netstring accepted by default (the same as the Twisted node's).
DEFAULT_MAX_MESSAGE = 1024 * 1024
#: Seconds to wait for a connection and a reply before a request counts as failed.
DEFAULT_RPC_TIMEOUT = 5.0
#: Items replicated or republished at once by housekeeping.
HOUSEKEEPING_CONCURRENCY = 8

Address = tuple[str, int]
T = TypeVar("T")


class NetstringProtocol(asyncio.Protocol):
    """One connection to a peer: requests both ways, replies matched by request id."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.decoder = NetstringDecoder(node.max_message)
        self.transport: asyncio.Transport | None = None
        self.host = ""
        #: The peer's listening address, once it is known.
        self.address: Address | None = None
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.abandoned = Abandoned()
        self.closed: asyncio.Future[None] = node.loop.create_future()
        self.peer_port = 0
        self._outbox: list[bytes] | None = None
        #: Malformed messages received on this connection.
        self.bad_messages = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.host, self.peer_port = str(peer[0]), int(peer[1])
        self.node.connection_made(self)

    def data_received(self, data: bytes) -> None:
        # Replies to everything that arrived together leave together: one send(), not one
        # per message (a pipelining peer sends many requests per segment).
        self._outbox = []
        try:
            for payload in self.decoder.feed(data):
                self._message_received(payload)
        finally:
            self._flush()
        if self.decoder.error is not None and self.transport is not None:
            if not self.transport.is_closing():
                log.warning(
                    "closing connection from %s: framing lost (%s; the limit is %d bytes)",
                    self.host,
                    self.decoder.error,
                    self.decoder.max_length,
                )
            self.transport.close()

    def _message_received(self, payload: bytes) -> None:
        try:
            message = decode(payload)
        except ProtocolError as e:
            log.warning("bad message from %s: %s", self.host, e)
            waiting = self.pending.pop(e.request_id or 0, None) if e.in_reply else None
            # A waiter cancelled an instant ago is still listed until its callback runs.
            if waiting is not None and not waiting.done():
                waiting.set_exception(e)
            elif not e.in_reply:
                self.send(self.node.engine.error(e.request_id or 0, e.code, e.message))
            self.bad_messages += 1
            if self.bad_messages >= self.node.engine.limits.max_bad_messages:
                log.warning(
                    "closing connection from %s: %d malformed messages",
                    self.host,
                    self.bad_messages,
                )
                assert self.transport is not None
                self._flush()
                self.transport.close()
            return
        if isinstance(message, REPLY_TYPES):
            waiting = self.pending.pop(message.rid, None)
            late = waiting.cancelled() if waiting else self.abandoned.claim(message.rid)
            if late:
                return  # the late reply to a request we cancelled or timed out
            if waiting is None or waiting.done():
                log.info(
                    "ignored a %s reply from %s to request %d, which nobody awaits",
                    message.TYPE,
                    self.host,
                    message.rid,
                )
            else:
                waiting.set_result(message)
        else:
            self.node.request_received(self, message)

    def send(self, message: Message) -> None:
        """Send one message (batched with the others answering the same incoming data)."""
        assert self.transport is not None
        data = netstring(encode(message))
        if self._outbox is None:
            self.transport.write(data)
        else:
            self._outbox.append(data)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, None
        if outbox and self.transport is not None:
            self.transport.write(b"".join(outbox))

    def request(self, message: Message) -> asyncio.Future[Message]:
        """Send a request; the future resolves to the reply (cancel it to stop waiting)."""
        waiting: asyncio.Future[Message] = self.node.loop.create_future()
        self.pending[message.rid] = waiting
        waiting.add_done_callback(lambda _: self._done(message.rid, waiting))
        self.send(message)
        return waiting

    def _done(self, rid: int, waiting: asyncio.Future[Message]) -> None:
        self.pending.pop(rid, None)
        if waiting.cancelled():  # cancelled, or timed out (asyncio.timeout cancels)
            self.abandoned.add(rid)

    def connection_lost(self, exc: Exception | None) -> None:
        pending, self.pending = self.pending, {}
        for waiting in pending.values():
            if not waiting.done():
                waiting.set_exception(ConnectionResetError(f"connection to {self.host} lost"))
        self.node.connection_lost(self)
        self.closed.set_result(None)


class Lookup(asyncio.Future[IterativeLookup]):
    """A running iterative lookup: resolves to the finished state machine; ``cancel()`` stops it."""

    def __init__(self, node: Node, machine: IterativeLookup) -> None:
        super().__init__(loop=node.loop)
        self.machine = machine
        self._node = node
        self._queries: dict[int, asyncio.Task[Message]] = {}
        self._started = node.now()
        self._step()

    def cancel(self, msg: Any = None) -> bool:
        for query in list(self._queries.values()):
            query.cancel()
        return super().cancel(msg)

    def _step(self) -> None:
        if self.machine.done:
            for query in list(self._queries.values()):
                query.cancel()
            self._node.metrics.lookup(self._node.now() - self._started)
            self.set_result(self.machine)
            return
        target = self.machine.target
        for contact in self.machine.next_queries():
            if self.machine.find_value:
                call = self._node.call(contact, FindValue, key=target)
            else:
                call = self._node.call(contact, FindNode, target=target)
            query = self._node.loop.create_task(call)
            self._queries[contact.id] = query
            query.add_done_callback(partial(self._answered, contact))

    def _answered(self, contact: Contact, query: asyncio.Task[Message]) -> None:
        del self._queries[contact.id]
        if self.done():
            return
        failure = query.exception()
        result: Message | BaseException = failure if failure is not None else query.result()
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
    """A DHT node with an async API (the same method names as the asyncio adapter's).

    :param identity: the node's Ed25519 key pair (its id is derived from it); new when None.
    :param storage: where held items live; in memory when None.
    :param loop: the event loop; the running loop when None.
    """

    def __init__(
        self,
        *,
        identity: Identity | None = None,
        storage: IStorage | None = None,
        k: int = K,
        alpha: int = ALPHA,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_value: int = MAX_VALUE_BYTES,
        rng: random.Random | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.engine = Engine(
            identity or Identity.generate(),
            storage if storage is not None else MemoryStorage(),
            now=self.now(),
            k=k,
            alpha=alpha,
            max_value=max_value,
            limits=limits,
        )
        self.rpc_timeout = rpc_timeout
        self.max_message = max_message
        self.metrics = Metrics()
        self._rng = rng or random.Random()
        self._server: asyncio.Server | None = None
        self._connections: dict[Address, NetstringProtocol] = {}
        self._connecting: dict[Address, asyncio.Future[NetstringProtocol]] = {}
        self._protocols: set[NetstringProtocol] = set()
        self._background: set[asyncio.Future[Any]] = set()
        self._stopped = False

    def now(self) -> float:
        """The loop's clock."""
        return self.loop.time()

    @property
    def id(self) -> str:
        """The node's id, in hex."""
        return id_to_hex(self.engine.id)

    @property
    def port(self) -> int:
        """The TCP port the node listens on (0 until started)."""
        return self.engine.port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: any free port); the port is then sent in every message."""
        self._server = await self.loop.create_server(lambda: NetstringProtocol(self), host, port)
        self.engine.port = int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Cancel what is running, close every connection and stop listening."""
        self._stopped = True
        for running in list(self._background):
            running.cancel()
        if self._server is not None:
            self._server.close()
        closing = []
        for protocol in list(self._protocols):
            closing.append(protocol.closed)
            if protocol.transport is not None:
                protocol.transport.close()
        await asyncio.gather(*closing, *self._background, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- the public API ----------------------------------------------------------------------

    async def join(self, seeds: Iterable[Address]) -> int:
        """Join the network through ``seeds``; return the number of contacts then known."""
        seeds = list(seeds)
        challenges = [os.urandom(CHALLENGE_BYTES) for _ in seeds]
        results = await asyncio.gather(
            *(self.call(a, Ping, challenge=c) for a, c in zip(seeds, challenges, strict=True)),
            return_exceptions=True,
        )
        for address, challenge, reply in zip(seeds, challenges, results, strict=True):
            if isinstance(reply, Message):
                contact = Contact(reply.sender, address[0], address[1])
                if self._proven(contact, challenge, reply):
                    self._act(contact, self.engine.seen(contact, self.now()))
            else:
                log.warning("seed %s:%d did not answer: %s", address[0], address[1], reply)
        if not len(self.engine.routing):
            raise JoinError(f"none of the {len(seeds)} seed nodes answered and proved its id")
        await self.lookup(self.engine.id)
        await self.refresh(0.001)
        return len(self.engine.routing)

    async def put(
        self, name: str, value: bytes, ttl: float = DEFAULT_TTL, cas: int | None = None
    ) -> str:
        """Sign ``value`` under ``name`` with this node's key and store it; return the key.

        With ``cas``, only nodes holding sequence number ``cas`` (0: none) store it.
        """
        item = self.engine.next_version(name, value, cas)
        await self.publish_own(item, ttl, cas)
        return id_to_hex(item.key)

    async def put_blob(self, value: bytes, ttl: float = DEFAULT_TTL) -> str:
        """Store an immutable blob; return its key, the sha512 of the value."""
        item = blob(value)
        await self.publish_own(item, ttl)
        return id_to_hex(item.key)

    async def publish_own(
        self, item: Item, ttl: float = DEFAULT_TTL, cas: int | None = None
    ) -> int:
        """Publish an item of ours: store it on the k closest nodes and, once stored, remember
        it for republishing; return how many accepted it."""
        stored = await self.publish(item, ttl, cas)
        self.engine.remember(item, ttl)
        return stored

    async def publish(self, item: Item, ttl: float = DEFAULT_TTL, cas: int | None = None) -> int:
        """Store ``item`` on the k closest nodes; return how many accepted it."""
        item.verify(self.engine.max_value)
        machine = await self.lookup(item.key)
        keep, targets = self.engine.placement(item.key, machine.closest())
        stored, reasons, codes = 0, [], set()
        if keep:
            try:
                self.engine.store(item, ttl, self.now(), cas)
                stored += 1
            except ProtocolError as e:
                reasons.append(f"this node: {e}")
                codes.add(int(e.code))
        results = await asyncio.gather(
            *(self.call(c, Store, item=item, ttl=ttl, cas=cas) for c in targets),
            return_exceptions=True,
        )
        for contact, result in zip(targets, results, strict=True):
            if isinstance(result, Message):
                stored += 1
            else:
                reasons.append(f"{contact}: {result}")
                if isinstance(result, RemoteError):
                    codes.add(result.code)
                log.info("%s did not store %s: %s", contact, id_to_hex(item.key)[:12], result)
        if not stored:
            first = f"; first refusal: {reasons[0]}" if reasons else ""
            message = f"no node stored the item ({len(targets)} were asked){first}"
            raise PutError(message, frozenset(codes))
        return stored

    async def get(self, key: str) -> bytes:
        """The value under ``key`` (hex), verified; ``NotFoundError`` if no node has one.

        A blob held here is returned at once (it cannot change). For a mutable item the lookup
        asks the k closest nodes, the highest sequence number wins (over our own copy too), and
        peers that sent an older version are given the newest before this returns (read repair).
        """
        target = id_from_hex(key)
        local = self.engine.get(target, self.now())
        if local is not None and not local.mutable:
            return local.value  # a blob never changes: our copy is the value
        machine = await self.lookup(target, find_value=True)
        for peer, error in machine.bad_values:
            log.warning("%s sent an invalid value: %s", peer, error)
        best, stale = self.engine.newest(target, machine, self.now(), DEFAULT_TTL)
        if best is None:
            raise NotFoundError(f"no value found under {key[:16]}...")
        if stale:
            log.info(
                "%d peers sent an older version of %s than seq %d; repairing them",
                len(stale),
                key[:12],
                best.seq,
            )
            repairs = [self.call(peer, Store, item=best, ttl=DEFAULT_TTL) for peer in stale]
            await asyncio.gather(*repairs, return_exceptions=True)
        return best.value

    def lookup(self, target: int, find_value: bool = False) -> Lookup:
        """Start an iterative lookup for ``target`` (an int id)."""
        return self._track(Lookup(self, self.engine.lookup(target, self.now(), find_value)))

    # -- housekeeping ------------------------------------------------------------------------

    async def refresh(self, interval: float = REFRESH_INTERVAL) -> int:
        """Look up a random id in every bucket idle for ``interval`` s; return how many."""
        targets = self.engine.refresh_targets(self.now(), interval, self._rng)
        await asyncio.gather(*(self.lookup(t) for t in targets), return_exceptions=True)
        return len(targets)

    async def replicate(self) -> int:
        """Store every held item again on the k closest nodes, keeping its expiry time."""
        return await self._publish_all(self.engine.replication_jobs(self.now()))

    async def republish(self) -> int:
        """Publish again, with a fresh ttl, every item this node published."""
        return await self._publish_all(self.engine.republish_jobs())

    def expire(self) -> int:
        """Drop expired items (and ended rate-limit cool-offs); return how many items."""
        self.engine.rate_limiter.forget(self.now())
        return self.engine.expire(self.now())

    def save_contacts(self) -> int:
        """Save the routing table's contacts to the store (to rejoin after a restart)."""
        contacts = self.engine.routing.contacts()
        self.engine.storage.set_contacts(contacts)
        return len(contacts)

    def start_housekeeping(self, intervals: Intervals | None = None) -> None:
        """Run the housekeeping jobs on the loop until ``stop()``; a failing job is logged."""
        intervals = intervals or Intervals()
        jobs: list[tuple[str, float, Callable[[], Any]]] = [
            ("refresh", intervals.refresh, lambda: self.refresh(intervals.stale_bucket)),
            ("replicate", intervals.replicate, self.replicate),
            ("republish", intervals.republish, self.republish),
            ("expire", intervals.expire, self.expire),
            ("save", intervals.save, self.save_contacts),
        ]
        for name, every, job in jobs:
            self._track(self.loop.create_task(self._every(name, every, job)))

    async def _every(self, name: str, every: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                result = job()
                if asyncio.iscoroutine(result):
                    result = await result
                log.debug("%s done: %s", name, result)
            except Exception:
                log.exception("housekeeping job %s failed", name)

    async def _publish_all(self, jobs: list[tuple[Item, float]]) -> int:
        limit = asyncio.Semaphore(HOUSEKEEPING_CONCURRENCY)

        async def one(item: Item, ttl: float) -> int:
            async with limit:
                return await self.publish(item, ttl)

        results = await asyncio.gather(*(one(i, t) for i, t in jobs), return_exceptions=True)
        return sum(1 for r in results if isinstance(r, int))

    # -- requests to peers -------------------------------------------------------------------

    async def call(self, to: Contact | Address, cls: type[Message], **fields: Any) -> Message:
        """Send a request to a contact or address and return the reply.

        Error replies raise ``RemoteError``; no answer within ``rpc_timeout`` raises
        ``TimeoutError`` (from ``asyncio.timeout``, which unlike ``wait_for`` starts no task
        per request: a third of a ping's cost); a reply from another id than the contact's
        raises ``ProtocolError``.
        """
        address = to.address if isinstance(to, Contact) else to
        request = self.engine.message(cls, **fields)
        outcome = "failed"
        try:
            async with asyncio.timeout(self.rpc_timeout):
                reply = await self._exchange(address, request)
            if isinstance(reply, Error):
                outcome = "error"
                raise RemoteError(reply.code, reply.message)
            if isinstance(to, Contact):
                if reply.sender != to.id:
                    raise ProtocolError(ErrorCode.UNEXPECTED, f"{to} answered with another id")
                self._act(to, self.engine.seen(to, self.now()))
            outcome = "ok"
            return reply
        except TimeoutError:
            outcome = "timeout"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.metrics.rpc("sent", cls.TYPE, outcome)

    async def _exchange(self, address: Address, request: Message) -> Message:
        protocol = await self._connection(address)
        return await protocol.request(request)

    def peer_failed(self, contact: Contact, why: object) -> None:
        """A request to ``contact`` failed; count it in the routing table."""
        log.debug("request to %s failed: %r", contact, why)
        self.engine.failed(contact)

    def _act(self, contact: Contact, seen: Seen) -> None:
        """Do what hearing from ``contact`` asked: ping-before-evict, copies for a newcomer."""
        if seen.ping is not None:
            self._track(self.loop.create_task(self._ping_before_evict(seen.ping)))
        now = self.now()
        for record in seen.handoff:
            ttl = record.expires_at - now
            self._background_call(contact, Store, item=record.item, ttl=ttl)

    def _background_call(self, contact: Contact, cls: type[Message], **fields: Any) -> None:
        task = self._track(self.loop.create_task(self.call(contact, cls, **fields)))
        task.add_done_callback(partial(self._background_done, contact, cls.TYPE))

    def _background_done(self, contact: Contact, kind: str, task: asyncio.Task[Message]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.info("%s to %s failed: %s", kind, contact, task.exception())

    async def _ping_before_evict(self, contact: Contact) -> None:
        challenge = os.urandom(CHALLENGE_BYTES)
        try:
            pong = await self.call(contact, Ping, challenge=challenge)
        except Exception as e:  # any failure to answer counts against it, as for every request
            log.info("ping to %s failed: %s", contact, e)
            self.peer_failed(contact, e)
            return
        self._proven(contact, challenge, pong)

    def _proven(self, contact: Contact, challenge: bytes, pong: Message) -> bool:
        """Whether ``pong`` proves that ``contact`` holds the key its id is the hash of (the
        identity handshake); if not, it is logged and dropped from the routing table."""
        if isinstance(pong, Pong) and pong.proof and proves(contact.id, challenge, pong.proof):
            return True
        log.warning(
            "%s failed the identity handshake (its id is not the hash of a key it holds): dropped",
            contact,
        )
        self.engine.routing.remove(contact.id)
        return False

    async def _connection(self, address: Address) -> NetstringProtocol:
        existing = self._connections.get(address)
        if existing is not None:
            return existing
        # One attempt per address, however many requests wait for it; shield() keeps a
        # cancelled waiter from cancelling the attempt the others wait for.
        attempt = self._connecting.get(address)
        if attempt is None:
            attempt = self._connecting[address] = self.loop.create_task(self._connect(address))
        return await asyncio.shield(attempt)

    async def _connect(self, address: Address) -> NetstringProtocol:
        try:
            _, protocol = await self.loop.create_connection(
                lambda: NetstringProtocol(self), address[0], address[1]
            )
        finally:
            del self._connecting[address]
        protocol.address = address
        self._connections.setdefault(address, protocol)
        return protocol

    def _track(self, future: T) -> T:
        assert isinstance(future, asyncio.Future)
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        return future

    # -- events from connections -------------------------------------------------------------

    def connection_made(self, protocol: NetstringProtocol) -> None:
        """A connection (either direction) is up; refused if stopped or too many from its IP."""
        self._protocols.add(protocol)
        limit = self.engine.limits.max_connections_per_ip
        same = sum(1 for p in self._protocols if p.host == protocol.host)
        crowded = same > limit and not is_loopback(protocol.host)
        if crowded:
            log.warning(
                "closing connection from %s: over %d connections from it", protocol.host, limit
            )
        if (self._stopped or crowded) and protocol.transport is not None:
            protocol.transport.close()

    def connection_lost(self, protocol: NetstringProtocol) -> None:
        """A connection is gone; forget it."""
        self._protocols.discard(protocol)
        if protocol.address is not None and self._connections.get(protocol.address) is protocol:
            del self._connections[protocol.address]

    def request_received(self, protocol: NetstringProtocol, request: Message) -> None:
        """A peer's request came in on ``protocol``: answer it (or refuse it, if it is over
        its rate)."""
        verdict = self.engine.rate_limiter.check(
            peer_key(protocol.host, protocol.peer_port), self.now()
        )
        if verdict != Verdict.SERVE:
            self.metrics.rpc("received", request.TYPE, verdict)
            if verdict == Verdict.REFUSE:
                log.warning("%s is over its request rate: ignored a while", protocol.host)
                text = "too many requests: ignored for a while"
                protocol.send(self.engine.error(request.rid, ErrorCode.RATE_LIMITED, text))
            return
        handled = self.engine.handle(request, protocol.host, self.now())
        if request.port and protocol.address is None:
            protocol.address = (protocol.host, request.port)
            self._connections.setdefault(protocol.address, protocol)
        reply = handled.reply
        if isinstance(reply, Error):
            log.warning(
                "refused a %s request from %s: %s", request.TYPE, protocol.host, reply.message
            )
        protocol.send(reply)
        self.metrics.rpc("received", request.TYPE, "error" if isinstance(reply, Error) else "ok")
        if request.port:
            self._act(Contact(request.sender, protocol.host, request.port), handled.seen)


def run(coroutine: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """Run ``coroutine`` on a new event loop: the default one, or uvloop's."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)
