"""One node's DHT: every decision it makes, fed events and returning commands.

Theory of operation
-------------------
The engine is the whole node but its I/O. A driver (the Twisted node, the asyncio twin, the
simulator) feeds it events and carries out the commands it returns (``txdht.core.commands``):

- ``request_received``: a peer's request; returns the reply to send back (None: drop it, the
  peer is over its rate), after the rate verdict, the routing table update and the answer.
- ``reply_received`` and ``request_failed``: the outcome of one of our requests (the driver
  reports lost and refused connections; the engine times requests out itself).
- ``start`` and ``cancel``: an operation (``txdht.core.operations``: join, put, get...) the
  driver's caller asked for; it ends as a ``Done`` or ``Failed`` command.
- ``timer_fired``: the time has come for what ``next_timer`` said (request deadlines, the
  housekeeping schedule, join retries): a driver keeps one timer per node, nothing more.

Each of these returns the commands its event caused. Requests leave as ``Send`` commands (or,
through ``Streams``, as ``Write`` and ``Connect`` on connections). Everything is decided here,
once, for every driver: which contacts to ask, how long to wait, whom to ping before evicting,
what to copy to a newcomer, what a peer may store, when to give up and what error to raise.

Time is only ever passed in: each event carries ``now``, which the operations read as
``engine.now`` until the next event.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from txdht.core import listen
from txdht.core import messages as m
from txdht.core.arguments import (
    check_cas,
    check_count,
    check_name,
    check_seconds,
    check_timeout,
    check_ttl,
    check_value,
)
from txdht.core.commands import Command, Done, Failed, Log, Send
from txdht.core.errors import ErrorCode, OperationTimeout, ProtocolError, RemoteError
from txdht.core.ids import ID_BITS, Contact, id_to_hex
from txdht.core.interfaces import IStorage
from txdht.core.items import (
    CHALLENGE_BYTES,
    DEFAULT_TTL,
    MAX_TTL,
    MAX_VALUE_BYTES,
    Identity,
    Item,
    accept,
    mutable_key,
    proves,
)
from txdht.core.limits import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RPC_TIMEOUT,
    Abandoned,
    Limits,
    Pacer,
    RateLimiter,
    Verdict,
    peer_key,
)
from txdht.core.lookup import ALPHA, PATHS, DisjointLookup, IterativeLookup, LookupMachine
from txdht.core.metrics import Metrics
from txdht.core.operations import Handoff, Lookup, Operation, PingCheck, Request
from txdht.core.routing import K, RoutingTable
from txdht.core.storage import PublishedItem, StoredItem
from txdht.core.timing import RoundTrips

__all__ = ["MAX_PROOFS", "Engine", "Timer", "outcome"]

Address = tuple[str, int]
#: Contacts whose proof of their id is remembered (the most recent), so that a ping before an
#: eviction need not challenge them again: an Ed25519 signature and check each time.
MAX_PROOFS = 10_000


class Timer:
    """An action due at ``when``; ``cancel`` it to skip it."""

    __slots__ = ("action", "args", "cancelled", "op", "when")

    def __init__(
        self,
        when: float,
        action: Callable[..., None],
        args: tuple[Any, ...],
        op: Operation | None = None,
    ) -> None:
        self.when, self.action, self.args, self.op = when, action, args, op
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run the action; and let go of it: a cancelled timer stays in the heap until
        its time comes, and a request's timer holds the request, which holds the timer (a
        reference cycle per request, left for the cycle collector, if it kept them)."""
        self.cancelled = True
        self.action, self.args, self.op = _nothing, (), None


def _nothing() -> None:
    """A cancelled timer's action (never called)."""


def _who(request: m.Message, host: str, port: int) -> str:
    """Who sent ``request``, for a person to read: its id's first digits where it is a node
    (a client gives port 0), and its host with the port it listens on (a client: the
    connection's), so that peers sharing an address (loopback, a NAT) can be told apart."""
    if request.port:
        return f"{id_to_hex(request.sender)[:12]}@{host}:{request.port}"
    return f"{host}:{port}"


def outcome(error: BaseException) -> str:
    """How a failed request ended, as the metrics label it."""
    if isinstance(error, RemoteError):
        return "error"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "failed"


def _running(op: Operation) -> None:
    """Raise if ``op`` has ended: an operation that has ended sends, spawns and waits for
    nothing more (that would be a bug in it, and would leave work no one ends)."""
    if op.ended:
        raise RuntimeError(f"{type(op).__name__} has ended, and cannot act any more")


def _urandom_challenge(to: object, now: float) -> bytes:
    return os.urandom(CHALLENGE_BYTES)


#: Refusals that are the protocol working, not a peer misbehaving (a copy older than the one
#: held, sent again by a holder that missed an update; a compare-and-swap that lost): logged
#: at info, where malformed or forged requests are warnings. A soak of 16 nodes replicating
#: every 30 s logged 22,000 stale-copy warnings in 12 minutes.
ROUTINE_REFUSALS = frozenset(
    {ErrorCode.STALE_SEQUENCE, ErrorCode.CAS_MISMATCH, ErrorCode.NOT_LISTENING}
)


class Engine:
    """The DHT of one node (see the module docstring).

    :param challenge: makes the identity handshake's challenges (random bytes by default; the
        simulator derives them, to stay reproducible).
    :param rng: draws refresh targets.
    """

    def __init__(
        self,
        identity: Identity,
        storage: IStorage,
        *,
        now: float,
        k: int = K,
        alpha: int = ALPHA,
        max_value: int = MAX_VALUE_BYTES,
        limits: Limits | None = None,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        rng: random.Random | None = None,
        challenge: Callable[[object, float], bytes] = _urandom_challenge,
        paths: int = PATHS,
        network: str = m.DEFAULT_NETWORK,
    ) -> None:
        # k at most what a nodes reply may carry; a lookup takes at least 1 path.
        k = check_count("k", k, 1, m.MAX_CONTACTS)
        alpha = check_count("alpha", alpha)
        rpc_timeout = check_seconds("rpc_timeout", rpc_timeout)
        paths = check_count("paths (disjoint paths a lookup takes)", paths)
        max_value = check_count("max_value", max_value)
        #: The network this node belongs to: it sends the name in every message, and refuses
        #: requests (and replies) of any other network.
        self.network = m.check_network(network)
        self.identity = identity
        self.id = identity.node_id
        self.storage = storage
        self.k = k
        self.alpha = alpha
        self.max_value = max_value
        self.rpc_timeout = rpc_timeout
        self.now = now
        #: The port this node listens on, sent in every message (0 until it listens).
        self.port = 0
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits is a txdht.Limits, not {type(limits).__name__}")
        self.limits = limits = limits or Limits()
        self.routing = RoutingTable(self.id, k, now, max_per_subnet=limits.max_per_subnet)
        self.rate_limiter = RateLimiter(limits, now)
        self.pacer = Pacer(limits)
        #: Measured round trips, which set each request's slow deadline.
        self.round_trips = RoundTrips(rpc_timeout)
        #: Disjoint paths each lookup takes (S/Kademlia; 1: a plain Kademlia lookup).
        self.paths = paths
        #: How many times a lookup sends a slow query to one of the k closest again.
        self.retries = 2
        #: Seconds a driver waits for a connection to open (never longer than a request).
        self.connect_timeout = min(DEFAULT_CONNECT_TIMEOUT, rpc_timeout)
        #: RPC counters and lookup latencies, served at ``/metrics``.
        self.metrics = Metrics()
        #: Called with (state machine, seconds) when a lookup ends (the dashboard's feed).
        self.lookup_observers: list[Callable[[LookupMachine, float], None]] = []
        #: Whether ``Log`` commands are made (the simulator turns them off).
        self.logging = True
        #: True once a join succeeded (``Join``: the driver's caller's, or the service's).
        self.joined = False
        #: How a request leaves: as a ``Send`` command, unless ``Streams`` takes it over.
        self.sender: Callable[[Request], None] = self._emit_send
        self._rng = rng or random.Random()
        self._challenge = challenge
        self._rids = itertools.count(1)
        self._requests: dict[int, Request] = {}
        self._abandoned = Abandoned()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._out: list[Command] = []
        #: Operations that ended, whose parents have yet to hear of it.
        self._queue: deque[Operation] = deque()
        self._running: set[Operation] = set()
        #: The address each contact proved its id from (the identity handshake), the most
        #: recent MAX_PROOFS of them.
        self._proofs: OrderedDict[int, Address] = OrderedDict()
        #: When a peer last stored each key here again (a STORE of the version held, or one
        #: marked ``replica``; or when a new version came, unless this node is the nearest
        #: holder: ``nearest``), the routing table's count of losses then, and whether it was
        #: such an arrival, for replication's rule; a time in the future marks a key handed
        #: off (``handed_off``).
        self._stored_at: dict[int, tuple[float, int, bool]] = {}
        #: The routing table's count of losses when replication last looked, and since when
        #: it has stood at that count (the network is calm while it stands still).
        self._losses_since: tuple[int, float] = (0, -math.inf)
        #: The listens this node holds for its peers, and its own running listens by key.
        self.listeners = listen.Listeners(limits)
        self.listening: dict[int, set[listen.Listen]] = {}
        #: When ``holders_within`` was last worked out, and what it was.
        self._holders: tuple[float, int | None] = (-math.inf, None)
        #: Set once ``stop`` is under way.
        self.stopping = False
        self._count_publishers()

    # -- events from the driver ----------------------------------------------------------------

    def request_received(
        self, request: m.Message, host: str, port: int, now: float, link: object = None
    ) -> tuple[m.Message | None, list[Command]]:
        """A peer at ``host`` (from its port ``port``, on connection ``link`` where there are
        connections) sent ``request``: the reply to send back on the same connection (None:
        send nothing), and the commands it caused."""
        self.now = now
        verdict = self.rate_limiter.check(peer_key(host, port), now)
        if verdict != Verdict.SERVE:
            self.metrics.rpc("received", request.TYPE, verdict)
            if verdict == Verdict.DROP:
                return None, self.settle()
            self.log(
                "warn",
                "{peer} is over its request rate, or the node over its own: ignored for a while",
                peer=_who(request, host, port),
                host=host,
            )
            text = "too many requests: ignored for a while"
            return self.error(request.rid, ErrorCode.RATE_LIMITED, text), self.settle()
        try:
            if request.network != self.network:  # never in the table, never served
                text = f"this node is of network {self.network!r}, not {request.network!r}"
                raise ProtocolError(ErrorCode.WRONG_NETWORK, text)
            sender = request.sender
            if request.port and sender != self.id and not self.routing.heard(sender, now):
                self._newcomer(Contact(sender, host, request.port))
            reply = listen.answer(self, request, host, port, link) or self._answer(request)
        except ProtocolError as e:
            reply = self.error(request.rid, e.code, e.message)
            self.log(
                "info" if e.code in ROUTINE_REFUSALS else "warn",
                "refused a {type} request from {peer}: {message}",
                type=request.TYPE,
                peer=_who(request, host, port),
                host=host,
                message=e.message,
            )
        except Exception as e:  # a bug, or the storage failing: this node's fault, not the peer's
            # The peer hears so (it may try another node), and the connection and the other
            # requests on it go on: an exception left to the driver would drop them all.
            text = "the node failed while handling this request"
            reply = self.error(request.rid, ErrorCode.INTERNAL, text)
            self.log(
                "error",
                "failed while handling a {type} request from {host}: {error!r}",
                type=request.TYPE,
                host=host,
                error=e,
                failure=e,
            )
        self.metrics.rpc("received", request.TYPE, "error" if isinstance(reply, m.Error) else "ok")
        return reply, self.settle()

    def reply_received(
        self, reply: m.Message, host: str, now: float, link: object = None
    ) -> list[Command]:
        """A reply came from ``host`` (on connection ``link``, where there are connections:
        it must be the one its request went out on)."""
        self.now = now
        request = self._requests.get(reply.rid)
        if request is None or (link is not None and request.link is not link):
            if not self._abandoned.claim(reply.rid):
                self.log(
                    "info",
                    "ignored a {type} reply from {host} to request {rid}, which nobody awaits",
                    type=reply.TYPE,
                    host=host,
                    rid=reply.rid,
                )
            return self.settle()
        self._close(request)
        contact = request.contact
        self.round_trips.measured(contact.id if contact else None, now - request.sent_at)
        if isinstance(reply, m.Error):
            self._failed(request, RemoteError(reply.code, reply.message))
        elif contact is not None and reply.sender != contact.id:
            error = ProtocolError(ErrorCode.UNEXPECTED, f"{contact} answered with another id")
            self._failed(request, error)
        elif reply.network != self.network:
            text = f"{request.peer} is of network {reply.network!r}, not {self.network!r}"
            self._failed(request, ProtocolError(ErrorCode.WRONG_NETWORK, text))
        else:
            self.metrics.rpc("sent", request.message.TYPE, "ok")
            if contact is not None:
                self.heard_from(contact)
            self._guard(request.op, request.op.replied, request, reply)
        return self.settle()

    def request_failed(self, rid: int, error: Exception, now: float) -> list[Command]:
        """Our request ``rid`` failed before a reply came: the connection was refused or lost,
        or the reply could not be read (``error`` says which)."""
        self.now = now
        request = self._requests.get(rid)
        if request is not None:
            self._close(request)
            self._failed(request, error)
        return self.settle()

    def timer_fired(self, now: float) -> list[Command]:
        """Run every timer due by ``now``."""
        self.now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                timer.cancelled = True
                if timer.op is None:
                    timer.action(*timer.args)
                else:
                    self._guard(timer.op, timer.action, *timer.args)
                self._drain()
        return self.settle()

    def next_timer(self) -> float | None:
        """When ``timer_fired`` should be called next (None: no timer is set)."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def start(self, op: Operation, now: float, timeout: float | None = None) -> list[Command]:
        """Start ``op`` for the driver; it ends with a ``Done`` or ``Failed`` command, and
        with ``OperationTimeout`` if it has not ended ``timeout`` seconds from now."""
        if timeout is not None:  # (no call for the usual None: this runs for every ping)
            timeout = check_timeout(timeout)
        if self.stopping:
            raise RuntimeError("this node has stopped: start a new one")
        self.now = now
        op.public = True
        self.begin(op, None)
        if timeout is not None and not op.ended:
            op.keep(self.call_at(now + timeout, self._expired, op, timeout, op=op))
        return self.settle()

    def cancel(self, op: Operation, now: float) -> list[Command]:
        """Stop ``op`` and everything it has in flight; no ``Done`` or ``Failed`` follows."""
        self.now = now
        self._cancel(op)
        return self.settle()

    def seen(self, contact: Contact, now: float) -> list[Command]:
        """We heard from ``contact`` (a request, or a reply to ours): update the table, which
        may ping the head of a full bucket and copy records to a newcomer. (An operation's
        step calls ``heard_from``: this hands over every command so far, which the step's
        caller would never see.)"""
        self.now = now
        self.heard_from(contact)
        return self.settle()

    def link_lost(self, link: object, now: float) -> list[Command]:
        """The connection ``link`` closed (``Streams`` reports it): the listens held on it go,
        and this node's listens whose holder it led to listen again."""
        self.now = now
        listen.link_lost(self, link)
        return self.settle()

    def stop(self, now: float) -> list[Command]:
        """Cancel every operation and timer."""
        self.now = now
        self.stopping = True
        for op in list(self._running):
            self._cancel(op)
        self._timers.clear()
        return self.settle()

    def settle(self) -> list[Command]:
        """Let the operations react to what ended, then hand over the commands so far."""
        self._drain()
        out, self._out = self._out, []
        return out

    # -- state, for the drivers and the operations ------------------------------------------

    def pending(self) -> list[Request]:
        """Our requests in flight."""
        return list(self._requests.values())

    def running(self) -> list[Operation]:
        """The operations running (those started by the driver, and their parts)."""
        return list(self._running)

    def request(self, rid: int) -> Request | None:
        """Our request ``rid``, while it is in flight."""
        return self._requests.get(rid)

    def message(self, cls: type[m.Message], rid: int | None = None, **fields: object) -> m.Message:
        """A message from this node; a request gets a fresh request id."""
        rid = next(self._rids) if rid is None else rid
        return cls(rid=rid, sender=self.id, port=self.port, network=self.network, **fields)

    def error(self, rid: int, code: ErrorCode, text: str) -> m.Message:
        """An error reply."""
        return self.message(m.Error, rid, code=int(code), message=text)

    def log(self, level: str, text: str, **fields: Any) -> None:
        """Add a ``Log`` command (unless logging is off)."""
        if self.logging:
            self._out.append(Log(level, text, fields))

    def emit(self, command: Command) -> None:
        """Add a command (``Streams`` adds its own this way)."""
        self._out.append(command)

    def challenge(self, to: object) -> bytes:
        """A fresh identity-handshake challenge for ``to``."""
        return self._challenge(to, self.now)

    def call_at(
        self, when: float, action: Callable[..., None], *args: Any, op: Operation | None = None
    ) -> Timer:
        """Run ``action(*args)`` at ``when`` (for ``op``: if it raises, ``op`` fails)."""
        if op is not None:
            _running(op)
        timer = Timer(when, action, args, op)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def lookup_finished(self, lookup: Lookup) -> None:
        """Record a finished lookup, and tell the observers."""
        self.metrics.lookup(lookup.latency)
        for observer in list(self.lookup_observers):
            observer(lookup.machine, lookup.latency)

    # -- operations and requests -------------------------------------------------------------

    def begin(self, op: Operation, parent: Operation | None) -> None:
        """Start ``op``, inside ``parent`` (None: at the top)."""
        if parent is not None:
            _running(parent)
        op.engine, op.parent = self, parent
        self.metrics.operations[type(op).__name__] += 1
        self._running.add(op)
        if parent is not None:
            parent.children.add(op)
        self._guard(op, op.begin)

    def end(self, op: Operation, result: Any, error: Exception | None) -> None:
        """``op`` ended with ``result`` or ``error``: abandon what it has in flight, then tell
        its parent (through the queue) or the driver."""
        if op.ended:
            return
        op.result, op.error = result, error
        self._stop(op)
        if op.parent is not None:
            self._queue.append(op)
        elif op.public:
            self._out.append(Done(op) if error is None else Failed(op))

    def send(
        self,
        op: Operation,
        to: Contact | Address,
        cls: type[m.Message],
        *,
        retry_of: Request | None = None,
        via: object = None,
        **fields: Any,
    ) -> Request:
        """Send a request for ``op``: it fails with ``TimeoutError`` after ``rpc_timeout``,
        and goes slow (``txdht.core.timing``) when its reply is overdue before that. With
        ``via``, it goes on that connection (``Streams``), not on the one to its address."""
        _running(op)
        request = Request(self.message(cls, **fields), to, op, self.now, retry_of)
        request.via = via
        self._requests[request.rid] = request
        op.requests[request.rid] = request
        pacer = self.pacer
        if not pacer.off:
            when = pacer.when(request.address, self.now)
            if when > self.now:  # held until its slot: its timer launches it
                request.timer = self.call_at(when, self._launch, request)
                return request
        self._launch(request)
        return request

    def _launch(self, request: Request) -> None:
        """Send ``request`` now: its deadlines count from here."""
        request.sent_at = now = self.now
        # One timer per request: at its slow deadline, which sets the full one (most requests
        # are answered before either, and each timer costs a heap entry until it is due).
        slow = self.round_trips.slow_after(request.contact.id if request.contact else None)
        if slow < self.rpc_timeout:
            request.timer = self.call_at(now + slow, self._slow, request)
        else:
            request.timer = self.call_at(now + self.rpc_timeout, self._timed_out, request)
        self.sender(request)

    def _emit_send(self, request: Request) -> None:
        self._out.append(Send(request))

    def _cancel(self, op: Operation) -> None:
        if not op.ended:
            self._stop(op)
            op.cancelled()

    def _stop(self, op: Operation) -> None:
        op.ended = True
        self._running.discard(op)
        if op.parent is not None:
            op.parent.children.discard(op)
        for request in list(op.requests.values()):
            self._close(request)
            self._abandoned.add(request.rid)
            self.metrics.rpc("sent", request.message.TYPE, "cancelled")
            if request.slow and request.contact is not None:
                # Overdue, and no longer waited for: it failed, as far as the table goes.
                self.routing.failed(request.contact.id)
        for child in list(op.children):
            self._cancel(child)
        for timer in op.timers:
            timer.cancel()

    def _close(self, request: Request) -> None:
        request.ended = True
        del self._requests[request.rid]
        del request.op.requests[request.rid]
        assert request.timer is not None
        request.timer.cancel()

    def _slow(self, request: Request) -> None:
        request.slow = True
        deadline = request.sent_at + self.rpc_timeout
        request.timer = self.call_at(deadline, self._timed_out, request)
        if request.contact is not None:
            self.routing.slow(request.contact.id)
        self._guard(request.op, request.op.request_slow, request)

    def _expired(self, op: Operation, timeout: float) -> None:
        answered, stored = op.progress()
        text = f"{type(op).__name__.lower()} did not finish within {timeout:g} s: "
        text += f"{answered} peers answered"
        if stored is not None:
            text += f", {stored} nodes stored the item"
        self.end(op, None, OperationTimeout(text, answered, stored))

    def _timed_out(self, request: Request) -> None:
        self._close(request)
        self._abandoned.add(request.rid)
        self._failed(request, TimeoutError(f"no reply within {self.rpc_timeout:g} s"))

    def _failed(self, request: Request, error: Exception) -> None:
        kind = request.message.TYPE
        self.metrics.rpc("sent", kind, outcome(error))
        if self.logging:
            text = "{type} {rid} to {peer} failed: {reason}"
            self.log(
                "debug", text, type=kind, rid=request.rid, peer=request.peer, reason=str(error)
            )
        self._guard(request.op, request.op.request_failed, request, error)

    def feed(self, op: Operation, method: Callable[..., None], *args: Any) -> None:
        """Call ``method`` of ``op`` with an event from outside its requests and children
        (a push to a listen); as for every event, an exception there fails ``op``."""
        self._guard(op, method, *args)

    def fail_soon(self, request: Request, error: Exception) -> None:
        """Fail ``request`` with ``error`` as the next timer (it cannot be sent: its connection
        has gone), not inside the step that sent it (unless its operation ends first)."""
        request.op.keep(self.call_at(self.now, self._fail_now, request, error))

    def _fail_now(self, request: Request, error: Exception) -> None:
        self._close(request)
        self._failed(request, error)

    def _guard(self, op: Operation, method: Callable[..., None], *args: Any) -> None:
        """Call one of ``op``'s event methods; an exception there (a bug) fails ``op``, as
        one in a Deferred's callback fails the Deferred, and the node goes on."""
        try:
            method(*args)
        except Exception as e:
            self.log(
                "error",
                "{operation} failed: {error!r}",
                operation=type(op).__name__,
                error=e,
                failure=e,
            )
            self.end(op, None, e)

    def _drain(self) -> None:
        """Tell each parent of its children that ended, unless it has ended itself since.

        The child lets go of its parent then (nothing asks an ended operation for it): a
        parent usually keeps its child (``Get``'s lookup), and the pair would otherwise be a
        reference cycle per operation, left for the cycle collector."""
        queue = self._queue
        while queue:
            child = queue.popleft()
            parent, child.parent = child.parent, None
            assert parent is not None
            if not parent.ended:
                self._guard(parent, parent.child_ended, child)

    # -- the routing table -----------------------------------------------------------------

    def heard_from(self, contact: Contact) -> None:
        """``seen``, inside a step: the commands (a ping of a bucket's head, a newcomer's
        records) go out with the step's."""
        if not self.routing.heard(contact.id, self.now):  # known: nothing more to decide
            self._newcomer(contact)

    def _newcomer(self, contact: Contact) -> None:
        """We heard from ``contact``, which the table does not hold (``heard`` said so): the
        table decides whether it comes in (perhaps pinging a bucket's head first), and one
        it took gets the records it is now among the k closest to."""
        ping = self.routing.seen(contact, self.now)
        if ping is not None:
            self.begin(PingCheck(ping), None)
        if contact.id in self.routing:  # it took it
            records = self._handoff(contact)
            if records:
                self.begin(Handoff(contact, records), None)

    def _handoff(self, newcomer: Contact) -> list[StoredItem]:
        """The records ``newcomer`` is now among the k closest to, when this node is the
        closest holder it knows (so that one node, not k, sends each)."""
        keys, now, own, bucket_for = [], self.now, self.id, self.routing.bucket_for
        newcomer_id = newcomer.id
        # Keys and expiry times only: this runs for every newcomer, and an item is read for
        # the few records handed off, not for every record held.
        for key, expires_at in self.storage.expiries():
            if expires_at <= now:
                continue
            mine = own ^ key
            # Whether a contact other than the newcomer is nearer the key than this node, from
            # the key's bucket first (no sort of the key's closest, for most records held).
            # Every contact of a bucket that covers the key but not this node's id shares more
            # of the key's leading bits than this node does, so is nearer the key. When the
            # bucket covers this node's id too, every contact outside it differs from the key
            # in a leading bit this node shares with the key, so is further than this node.
            entries = (bucket := bucket_for(key)).entries
            if bucket.covers(own):
                if any(i ^ key < mine for i in entries if i != newcomer_id):
                    continue
            elif len(entries) > (newcomer_id in entries):
                continue
            theirs = newcomer_id ^ key
            others = [c.id ^ key for c in self.routing.closest(key, exclude=newcomer_id)]
            if others and others[0] < mine:  # in a bucket beside the newcomer's, away from us
                continue
            closer = (mine < theirs) + sum(1 for d in others if d < theirs)
            if closer < self.k:
                keys.append(key)
        return self._held(keys)

    def _held(self, keys: list[int]) -> list[StoredItem]:
        """The records under ``keys``, which ``IStorage.expiries`` listed a moment ago (with
        nothing that changes the store run in between, so each is there: the filter is for
        the type)."""
        return [record for record in map(self.storage.get, keys) if record is not None]

    def peer_failed(self, contact: Contact, why: str | None = None) -> None:
        """A request to ``contact`` failed, or it answered in a way that counts as a failure
        (``why``, which is logged: a failed request was logged already): count it against it."""
        if why is not None:
            self.log("debug", "{peer} counts as failed: {reason}", peer=str(contact), reason=why)
        self.routing.failed(contact.id)

    def proven(self, contact: Contact, challenge: bytes, pong: m.Message) -> bool:
        """Whether ``pong`` proves that ``contact`` holds the key its id is the hash of (the
        identity handshake); if not, it is logged and dropped from the routing table."""
        if isinstance(pong, m.Pong) and pong.proof and proves(contact.id, challenge, pong.proof):
            self._proofs.pop(contact.id, None)
            self._proofs[contact.id] = contact.address
            if len(self._proofs) > MAX_PROOFS:
                self._proofs.popitem(last=False)
            return True
        self.log(
            "warn",
            "{peer} failed the identity handshake (its id is not the hash of a key it holds): "
            "dropped",
            peer=str(contact),
        )
        self.routing.remove(contact.id)
        return False

    def has_proved(self, contact: Contact) -> bool:
        """Whether ``contact`` proved its id (the identity handshake) from the address it has
        now: such a contact is not challenged again (a plain ping will do), as long as it stays
        there."""
        return self._proofs.get(contact.id) == contact.address

    def lookup_machine(self, target: int, find_value: bool = False) -> LookupMachine:
        """A new lookup machine for ``target``, seeded with the whole routing table: it starts
        from the k closest, and when those fail (after a mass crash every one of them may be
        dead) the next closest contacts we know step in, instead of the lookup ending with
        nothing. A one-path lookup takes the table's contacts nearest first as it needs them
        (``RoutingTable.nearest``): usually a bucket or two, not the whole table per lookup.

        Contacts whose last two requests failed are not asked, nor added when a peer names
        them: after a mass crash, each would cost a timeout in every lookup (replication runs
        one per item) until it leaves the table. When no contact looks alive (this node's own
        network was down), all are asked again. Contacts that went slow or failed since they
        last answered (questionable) are asked after the others. With ``paths`` above 1, the
        lookup goes over that many disjoint paths (``DisjointLookup``)."""
        self.routing.touch(target, self.now)
        dead, questionable = self.routing.suspects()
        options: dict[str, Any] = {
            "k": self.k,
            "alpha": self.alpha,
            "find_value": find_value,
            "dead": dead,
            "questionable": questionable,
            "retries": self.retries,
            "per_subnet": self.limits.lookup_per_subnet,
        }
        if self.paths > 1:
            return DisjointLookup(target, self.routing.contacts(), self.id, self.paths, **options)
        if find_value:
            options["alone_within"] = self.holders_within()
        return IterativeLookup(target, (), self.id, nearest=self.routing.nearest(target), **options)

    def holders_within(self) -> int | None:
        """Half the distance from a key within which its k closest nodes (its holders) are
        expected to lie: k / n of the id space, for the routing table's estimate n of the
        network's size (``RoutingTable.measured_size``), worked out at most once a second;
        None while the table holds too few live contacts to estimate it (fewer than k).

        A FIND_VALUE whose nearest candidate is that near the key asks it alone first
        (``IterativeLookup``): with about k / 2 nodes expected that near, the chance that k
        or more are nearer still (so that the candidate holds no copy) is a fraction of a
        percent, and where the table knows the whole neighbourhood of the key (a small
        network, or a key near this node) the candidate is the nearest holder itself."""
        at, within = self._holders
        if self.now - at >= 1.0:
            size = self.routing.measured_size()
            within = None if size is None else (self.k << (ID_BITS - 1)) // size
            self._holders = (self.now, within)
        return within

    def jitter(self, span: float) -> float:
        """A random time from 0 up to ``span`` seconds (to spread out timers)."""
        return self._rng.random() * span

    def refresh_targets(self, now: float, interval: float) -> list[int]:
        """A random id in each bucket no lookup has targeted for ``interval`` seconds."""
        return [b.random_id(self._rng) for b in self.routing.stale_buckets(now, interval)]

    def save_contacts(self) -> int:
        """Save the routing table's contacts to the store (to rejoin after a restart)."""
        contacts = self.routing.contacts()
        self.storage.set_contacts(contacts)
        return len(contacts)

    # -- requests we answer ----------------------------------------------------------------

    def _answer(self, request: m.Message) -> m.Message:
        rid = request.rid
        if isinstance(request, m.Ping):
            proof = None if request.challenge is None else self.identity.prove(request.challenge)
            return self.message(m.Pong, rid, proof=proof)
        if isinstance(request, m.Store):
            key = request.item.key
            held = self.get(key, self.now)
            # A put's lookup asks this node too, as for a find_node: the k closest live
            # contacts but the asker answer it, and with the asker (if it is a live contact)
            # say whether this node is the nearest holder (``nearest``), one pass over the
            # table where there were two.
            nodes = near = None
            if request.closest:
                nodes = near = self.routing.closest(key, exclude=request.sender, live=True)
                asker = self.routing.live(request.sender)
                if asker is not None and (not near or asker.id ^ key < near[0].id ^ key):
                    near = [asker]
            self.store(request.item, request.ttl, self.now, request.cas, near)
            if held == request.item or request.replica:  # a peer's replication: this round
                self._stored_at[key] = (self.now, self.routing.losses, False)  # is done
            if nodes is not None:
                return self.message(m.Ok, rid, nodes=tuple(nodes))
            return self.message(m.Ok, rid)
        if isinstance(request, m.FindValue):
            item = self.get(request.key, self.now)
            if item is not None:
                return self.message(m.Value, rid, item=item)
            return self._nodes(rid, request.key, request.sender)
        if isinstance(request, m.FindNode):
            return self._nodes(rid, request.target, request.sender)
        raise ProtocolError(ErrorCode.UNEXPECTED, f"a {request.TYPE!r} message is not a request")

    def _nodes(self, rid: int, target: int, asker: int) -> m.Message:
        """A ``nodes`` reply: our closest live contacts to ``target``, but the asker."""
        nodes = self.routing.closest(target, exclude=asker, live=True)
        return self.message(m.Nodes, rid, nodes=tuple(nodes))

    # -- items -----------------------------------------------------------------------------

    def store(
        self,
        item: Item,
        ttl: float,
        now: float,
        cas: int | None = None,
        near: list[Contact] | None = None,
    ) -> None:
        """Keep ``item`` for ``ttl`` seconds if it verifies and may replace what is stored;
        with ``cas``, only if the stored sequence number (0 for none) is ``cas``. A copy
        equal to the item held (replication and read repair resend the same signed item) is
        not verified again: the held one was, when it came, and its signature is the same
        bytes. ``near``: the key's closest live contacts, nearest first, if the caller has
        them (see ``nearest``)."""
        held = self.storage.get(item.key)
        stored = held if held is not None and held.expires_at > now else None
        new = stored is None or stored.item != item  # a version new here
        if new:
            item.verify(self.max_value)
        if cas is not None and (stored.item.seq if stored else 0) != cas:
            current = stored.item.seq if stored else 0
            raise ProtocolError(ErrorCode.CAS_MISMATCH, f"expected sequence {cas}, have {current}")
        accept(stored.item if stored else None, item)
        if held is None:  # a new record (one in place of an expired one takes no more room)
            self._check_quota(item)
            self._by_publisher[item.public_key or b""] += 1
        expires = now + min(ttl, MAX_TTL)
        if stored is not None and stored.item == item:
            expires = max(expires, stored.expires_at)
        self.storage.put(StoredItem(item, expires))
        if new:  # who replicates it
            if self.nearest(item.key, near):
                self._stored_at.pop(item.key, None)  # this node, at its next round
            else:  # the nearest holder, whose round stores it here again (see ``nearest``)
                self._stored_at[item.key] = (now, self.routing.losses, True)
        if stored is None or item.seq > stored.item.seq:
            listen.changed(self, item)  # a version newer than what was held: tell listeners

    def publishable(self, item: Item, ttl: object = DEFAULT_TTL, cas: object = None) -> float:
        """Raise ``ProtocolError`` if ``item`` does not verify, or is larger than this node
        accepts, and ``TypeError`` or ``ValueError`` for a ttl or cas no peer would take: the
        caller's mistakes, said before anything is sent. Returns the ttl as a float."""
        seconds = check_ttl(ttl)
        check_cas(cas)
        item.verify(self.max_value)
        return seconds

    def store_here(self, item: Item, ttl: float, cas: int | None) -> ProtocolError | None:
        """``store`` at the current time; the refusal, if any, instead of raising it."""
        try:
            self.store(item, ttl, self.now, cas)
        except ProtocolError as e:
            return e
        return None

    def _check_quota(self, item: Item) -> None:
        limits = self.limits
        if self.storage.count() >= limits.max_items:
            raise ProtocolError(ErrorCode.STORAGE_FULL, f"this node holds {limits.max_items} items")
        held = self._by_publisher[item.public_key or b""]
        if item.public_key is not None and held >= limits.max_items_per_publisher:
            text = f"this node holds {held} items of this publisher, the most it accepts"
            raise ProtocolError(ErrorCode.STORAGE_FULL, text)

    def expire(self, now: float) -> int:
        """Drop expired items and ended rate-limit cool-offs; return how many items. The
        listeners of what expired are told (commands for ``settle``)."""
        self.now = now
        self.rate_limiter.forget(now)
        for key in [k for k, (when, *_) in self._stored_at.items() if now - when > MAX_TTL]:
            del self._stored_at[key]  # whatever it stored has expired by now
        listen.expiring(self, now)  # before the items go: their listeners are told
        # The records about to go, by key and expiry time, then read one by one: their
        # publishers' counts go down by one each (a recount read every record held, each
        # expire interval that dropped one).
        storage, counts = self.storage, self._by_publisher
        dying = [key for key, expires_at in storage.expiries() if expires_at <= now]
        for record in self._held(dying):
            publisher = record.item.public_key or b""
            if counts[publisher] > 1:
                counts[publisher] -= 1
            else:
                del counts[publisher]
        stored_at = self._stored_at
        for key in dying:  # who replicates a key no longer held: nobody, from here
            stored_at.pop(key, None)
        return storage.expire(now)

    def _count_publishers(self) -> None:
        self._by_publisher = Counter(r.item.public_key or b"" for r in self.storage.records())

    def get(self, key: int, now: float) -> Item | None:
        """The item stored here under ``key``, if it has not expired."""
        stored = self.storage.get(key)
        return stored.item if stored is not None and stored.expires_at > now else None

    def newest(
        self, key: int, found: LookupMachine, now: float, ttl: float
    ) -> tuple[Item | None, list[Contact]]:
        """The newest of our copy and the versions a FIND_VALUE lookup found, with the peers
        that sent an older one, to store the newest on for ``ttl`` seconds (read repair). An
        older copy held here is replaced at once, for ``ttl`` seconds too."""
        local = self.get(key, now)
        best = max(filter(None, (found.value, local)), key=lambda item: item.seq, default=None)
        if local and best and best.seq > local.seq:
            self.store(best, ttl, now)
        return best, [peer for peer, item in found.found if best and item.seq < best.seq]

    def next_version(self, name: str, value: bytes, cas: int | None = None) -> Item:
        """``value`` signed under ``name`` with the sequence number after our last one (or
        after ``cas``, for a compare-and-swap put)."""
        name, value, cas = check_name(name), check_value(value), check_cas(cas)
        if cas is None:
            published = self.storage.published(mutable_key(self.identity.public_bytes, name))
            cas = published.item.seq if published else 0
        return self.identity.sign(name, value, cas + 1)

    def remember(self, item: Item, ttl: float) -> None:
        """Record ``item`` as published by us, to republish it before it expires."""
        self.storage.set_published(PublishedItem(item, ttl))

    def placement(self, key: int, answered: list[Contact]) -> tuple[bool, list[Contact]]:
        """Where an item under ``key`` goes, given the closest contacts a lookup found: whether
        this node keeps a copy (it is itself among the k closest), and the peers to store on."""
        mine = self.id ^ key
        if sum(1 for c in answered if c.id ^ key < mine) < self.k:
            return True, answered[: self.k - 1]
        return False, answered[: self.k]

    def replication_jobs(
        self, now: float, fresh: float = 0.0, arrivals: bool = False
    ) -> list[tuple[Item, float]]:
        """Every held item with the time it has left: what replication stores again; but not
        those a peer stored here again in the last ``fresh`` seconds (the Kademlia paper's
        rule: a node that got a STORE for a key assumes the other k - 1 closest got it too, so
        one node, not k, replicates each key in an interval). A store of the version already
        held, or one marked ``replica``, counts; so does the arrival of a new version (a put,
        a newcomer's handoff, a read repair), except at the holder nearest the key by its own
        table (``nearest``): that one replicates it at its next round, and the others then
        hear from it every interval. And the rule holds only while the network is calm: once
        a contact of this node has come to look dead (or was evicted) since the store, the
        peer's round may have stored on nodes now gone, so this node replicates the key at its
        next round as every holder did before the rule (after a mass crash, keys replicated
        just before it were otherwise left unrepaired for up to an interval: 687 of 10,000
        keys under 16 of their 20 closest live nodes after a 50% crash of 1,000 nodes). While
        no contact has looked dead for an interval, a holder outside the key's k closest
        leaves it to them (``outside``). With ``arrivals``, only the keys skipped for a new
        version's arrival (``nearest``) are looked at: those a replication round takes up
        again when one of its own lookups found a contact dead (``operations.Replicate``).

        The rule needs keys and expiry times only (``IStorage.expiries``): the records are read
        for the keys it keeps, about one in k of those held in a calm network, not all."""
        stored_at = self._stored_at
        due = [
            key
            for key, expires_at in self.storage.expiries()
            if expires_at > now
            and (not arrivals or stored_at.get(key, (0.0, 0, False))[2])
            and self.replication_due(key, now, fresh)
        ]
        return [(r.item, r.expires_at - now) for r in self._held(due)]

    def handed_off(self, key: int) -> None:
        """This node's replication of ``key`` found k nodes nearer the key than itself, and
        every one of them took the item: it is a holder outside the k closest (a lookup's
        view differs a little from node to node, so a put or a replication can leave a copy
        one place too far out). It keeps its copy, which still answers reads until it
        expires, but stops replicating the key while no contact has come to look dead, or
        until a new version is stored here: the k closest replicate it. Without this, every
        such copy cost a second lookup for its key every interval (1.03 lookups per item per
        interval in the idle 1,000-node network instead of 1)."""
        self._stored_at[key] = (self.now + MAX_TTL, self.routing.losses, False)

    def replication_due(self, key: int, now: float, fresh: float) -> bool:
        """Whether this node should replicate ``key`` now (``replication_jobs``' rule): no
        peer re-stored the version held here in the last ``fresh`` seconds, or a contact has
        come to look dead since it did; and, while the network is calm, this node is not
        outside the key's k closest (``outside``)."""
        losses = self.routing.losses
        when, seen, _ = self._stored_at.get(key, (-math.inf, losses, False))
        if now - when < fresh and seen == losses:
            return False
        if self._losses_since[0] != losses:
            self._losses_since = (losses, now)
        calm = now - self._losses_since[1] >= fresh
        return not (calm and self.outside(key))

    def nearest(self, key: int, near: list[Contact] | None = None) -> bool:
        """Whether the routing table knows no live contact nearer ``key`` than this node: of
        the k holders a put (or a hand-off, or a read repair) reaches at the same moment,
        this one replicates the version first, at its next round, and the others take the
        version's arrival as this interval's replication (the Kademlia paper counts every
        STORE so). Without it, every holder's first round was due, and two holders whose
        rounds ran together both replicated the key: 3% of keys twice in the first interval
        after the puts in the idle 1,000-node network. The others are not left waiting on a
        nearest holder that is gone: a contact that comes to look dead makes every key due
        again (``replication_due``), and otherwise they replicate an interval after the
        arrival, like any key no peer stored again."""
        first = self.routing.nearest_live(key) if near is None else near[0] if near else None
        return first is None or self.id ^ key < first.id ^ key

    def outside(self, key: int) -> bool:
        """Whether the routing table knows k live contacts nearer ``key`` than this node: it
        holds a copy from a put or a replication whose lookup saw it among the k closest (a
        lookup's view differs a little from node to node, and from round to round), but the
        k closest are others, and they replicate the key. Such a holder replicating it anyway
        was what was left of the steady duplicates: 0.3% of keys replicated twice an interval
        in the idle 1,000-node network, none with this rule. Replication asks
        this only while the network is calm (no contact has come to look dead for an
        interval): after a crash, the k contacts the table names may be gone unnoticed, and
        every holder replicates as before."""
        nearest = self.routing.closest(key, self.k, live=True)
        return len(nearest) >= self.k and nearest[-1].id ^ key < self.id ^ key

    def republish_jobs(self) -> list[tuple[Item, float]]:
        """Every item this node published, with its ttl: what republishing stores again."""
        return [(p.item, p.ttl) for p in self.storage.published_items()]
