"""The simulated network: a virtual clock, an in-memory message bus, and nodes on the real core.

Each ``SimNode`` owns a real ``Engine`` (routing table, lookups, items, ``MemoryStorage``) and
drives it exactly as the Twisted shell (``txdht.node.Node``) and the asyncio twin do: requests
go out through ``call`` and come back as replies or failures; every request a node receives goes
through ``Engine.handle``; answers feed ``engine.seen`` and the ``Seen`` it returns
(ping-before-evict, handoff to a newcomer) is acted on; failures go to ``engine.failed``;
lookups drive ``IterativeLookup`` with alpha requests in flight; ``publish``, ``get``, ``join``,
``refresh``, ``replicate``, ``republish`` and ``expire`` follow the shell's code step by step, and
the housekeeping timers those of ``txdht.service.DHTService``. Continuations take the place of
Deferreds, and the bus the place of TCP.

The bus passes ``Message`` objects (no JSON). A message takes ``latency / 2`` seconds each way
plus a uniform jitter drawn from the seeded RNG, and is lost with probability ``loss``. A request
that is lost, whose reply is lost or too late, or whose receiver is dead or on the other side of
a partition fails after ``rpc_timeout``, as in the real node. Events sit in one heap ordered by
time, then by the order they were scheduled, so a run is a pure function of its parameters and
seed: the optional trace (one line per event) is byte-identical between two runs.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from functools import partial
from typing import IO, Any

from txdht.core.engine import Engine, Seen
from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import Contact
from txdht.core.items import DEFAULT_TTL, Identity, Item, proves
from txdht.core.lookup import ALPHA, IterativeLookup
from txdht.core.messages import (
    Error,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Store,
    Value,
)
from txdht.core.routing import K
from txdht.core.storage import MemoryStorage
from txdht.intervals import Intervals
from txdht.limits import Limits, Verdict, peer_key
from txdht.node import DEFAULT_RPC_TIMEOUT, HOUSEKEEPING_CONCURRENCY

__all__ = [
    "PORT",
    "Clock",
    "Network",
    "Result",
    "SimLookup",
    "SimNode",
    "SimulationError",
]

#: Every simulated node listens on this port, on a host of its own (10.x.y.z).
PORT = 4000
#: The refresh interval a node uses right after joining (as ``Node.join`` does).
JOIN_REFRESH = 0.001

Address = tuple[str, int]
#: What a request came to: the reply, or (a string) why it failed.
Result = Message | str


class SimulationError(Exception):
    """The simulation went past one of its bounds (events, or virtual time)."""


class Clock:
    """Virtual time, and a heap of timed events run in order of time, then of scheduling."""

    def __init__(self, max_events: int) -> None:
        self.now = 0.0
        #: Events run so far.
        self.events = 0
        self.max_events = max_events
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` at time ``when``."""
        heapq.heappush(self._queue, (when, next(self._order), action, args))

    def later(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` ``delay`` seconds from now."""
        self.at(self.now + delay, action, *args)

    def run(self, until: float, done: Callable[[], bool] | None = None) -> bool:
        """Run events up to time ``until``, or until ``done()`` holds; return whether it does.

        When not stopped by ``done``, the time is ``until`` afterwards.
        """
        queue = self._queue
        while True:
            if done is not None and done():
                return True
            if not queue or queue[0][0] > until:
                break
            when, _, action, args = heapq.heappop(queue)
            self.now = when
            self.events += 1
            if self.events > self.max_events:
                raise SimulationError(f"more than {self.max_events} events")
            action(*args)
        self.now = max(self.now, until)
        return False

    def run_until(self, done: Callable[[], bool], limit: float, what: str) -> None:
        """Run until ``done()`` holds; ``SimulationError`` if it does not by ``limit`` seconds."""
        if not self.run(self.now + limit, done):
            raise SimulationError(f"{what} did not finish within {limit:g} simulated seconds")


class _Pool:
    """Nodes in a list, for a uniform random choice, with removal in constant time."""

    def __init__(self) -> None:
        self.items: list[SimNode] = []
        self._where: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SimNode]:
        return iter(list(self.items))

    def add(self, node: SimNode) -> None:
        self._where[node.index] = len(self.items)
        self.items.append(node)

    def discard(self, node: SimNode) -> None:
        where = self._where.pop(node.index, None)
        if where is None:
            return
        last = self.items.pop()
        if last is not node:
            self.items[where] = last
            self._where[last.index] = where

    def choice(self, rng: random.Random) -> SimNode:
        return self.items[rng.randrange(len(self.items))]


class _Call:
    """One request in flight: who sent it, to whom, and what to do with the outcome."""

    __slots__ = ("cancelled", "done", "host", "node", "request", "sent_at", "to")

    def __init__(
        self, node: SimNode, to: Contact | Address, request: Message, done: Callable[[Result], None]
    ) -> None:
        self.node = node
        self.to = to
        self.host = to.host if isinstance(to, Contact) else to[0]
        self.request = request
        self.done = done
        self.cancelled = False
        self.sent_at = 0.0


class _Gather:
    """Count outcomes of ``total`` requests; call ``then(succeeded)`` after the last one."""

    def __init__(self, total: int, then: Callable[[int], None]) -> None:
        self.left = total
        self.succeeded = 0
        self.then = then
        if not total:
            then(0)

    def one(self, ok: bool) -> None:
        self.succeeded += ok
        self.left -= 1
        if not self.left:
            self.then(self.succeeded)


def _ignore(result: Result) -> None:
    """The outcome of a request nobody waits for (a handoff copy)."""


def _succeeded(gather: _Gather, result: Result) -> None:
    """One more request of ``gather`` ended: it succeeded unless it failed."""
    gather.one(not isinstance(result, str))


class Network:
    """The bus, the clock and every node; see the module docstring."""

    def __init__(
        self,
        *,
        seed: int = 0,
        k: int = K,
        alpha: int = ALPHA,
        latency: float = 0.05,
        jitter: float = 0.0,
        loss: float = 0.0,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        intervals: Intervals | None = None,
        limits: Limits | None = None,
        trace: IO[str] | None = None,
        max_events: int = 2_000_000_000,
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss is a probability from 0 up to (not including) 1")
        if latency < 0 or jitter < 0 or rpc_timeout <= 0:
            raise ValueError("latency and jitter must be at least 0, rpc_timeout above 0")
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = Clock(max_events)
        self.k = k
        self.alpha = alpha
        #: One-way delay: half the round-trip time.
        self.delay = latency / 2
        self.jitter = jitter
        self.loss = loss
        self.rpc_timeout = rpc_timeout
        self.intervals = intervals or Intervals()
        self.limits = limits or Limits()
        self.trace = trace
        #: Every node ever started, by index.
        self.nodes: list[SimNode] = []
        self.by_host: dict[str, SimNode] = {}
        self.by_id: dict[int, SimNode] = {}
        #: Nodes alive; alive and done joining (or trying to); alive and in the network (they
        #: started it, or joined it): what an operator would give a new node as ``--peer``.
        self.live = _Pool()
        self.ready = _Pool()
        self.members = _Pool()
        #: Ids of the live nodes, sorted: the ground truth for "the k closest".
        self.live_ids: list[int] = []
        #: Node index -> side, while the network is split; None when whole.
        self.sides: dict[int, int] | None = None
        #: Message counts: requests sent by type, and what became of them.
        self.sent: dict[str, int] = {}
        #: Nodes running each housekeeping job now.
        self.running = dict.fromkeys(("refresh", "replicate", "republish", "expire"), 0)
        self.counts = dict.fromkeys(
            ("handled", "refused", "unanswered", "replies", "lost", "unreachable", "timeouts"), 0
        )

    # -- nodes ---------------------------------------------------------------------------------

    def identity(self, index: int) -> Identity:
        """The key pair of node ``index``: a real Ed25519 key from seeded bytes."""
        raw = hashlib.sha256(f"txdht.sim {self.seed} node {index}".encode()).digest()
        return Identity.from_private_bytes(raw)

    def add_node(self) -> SimNode:
        """A new node (not started: call ``start``)."""
        index = len(self.nodes)
        node = SimNode(self, index, self.identity(index))
        self.nodes.append(node)
        self.by_host[node.host] = node
        self.by_id[node.engine.id] = node
        return node

    def start(
        self, node: SimNode, seeds: list[Address], joined: Callable[[SimNode], None] | None = None
    ) -> None:
        """Start ``node``'s service: housekeeping timers, then join through ``seeds``."""
        node.alive = True
        self.live.add(node)
        bisect.insort(self.live_ids, node.engine.id)
        self.note(f"start {node} seeds={len(seeds)}")
        node.start_service(seeds, joined)

    def became_ready(self, node: SimNode, joined: bool) -> None:
        """``node`` has joined (or tried to, and failed if not ``joined``)."""
        self.ready.add(node)
        if joined:
            self.members.add(node)
        self.note(f"ready {node} contacts={len(node.engine.routing)}")

    def seeds(self) -> list[Address]:
        """The address of a random member of the network, to join through (none if empty)."""
        return [self.members.choice(self.rng).address] if len(self.members) else []

    def kill(self, node: SimNode) -> None:
        """``node`` stops at once: no goodbye, no more replies, timers or callbacks."""
        node.alive = False
        for job in node.busy:
            self.running[job] -= 1
        self.live.discard(node)
        self.ready.discard(node)
        self.members.discard(node)
        del self.live_ids[bisect.bisect_left(self.live_ids, node.engine.id)]
        self.note(f"kill {node}")

    def split(self, sides: dict[int, int]) -> None:
        """Partition the network: messages between nodes on different sides are lost."""
        self.sides = dict(sides)
        self.note(f"split {len(set(sides.values()))} sides")

    def heal(self) -> None:
        """End the partition."""
        self.sides = None
        self.note("heal")

    def note(self, text: str) -> None:
        """Write one line to the trace, stamped with the virtual time."""
        if self.trace is not None:
            self.trace.write(f"{self.clock.now:.6f} {text}\n")

    # -- the bus -------------------------------------------------------------------------------

    def _one_way(self) -> float:
        if self.jitter:
            return self.delay + self.rng.random() * self.jitter
        return self.delay

    def _dropped(self) -> bool:
        return bool(self.loss) and self.rng.random() < self.loss

    def send(self, call: _Call) -> None:
        """Put ``call``'s request on the bus."""
        if not call.node.alive:
            return  # a stopped process sends nothing
        kind = call.request.TYPE
        self.sent[kind] = self.sent.get(kind, 0) + 1
        now = call.sent_at = self.clock.now
        if self.trace is not None:
            self.note(f"send {call.node}>{self.by_host[call.host]} {kind} {call.request.rid}")
        if self._dropped():
            self.counts["lost"] += 1
            self.clock.at(now + self.rpc_timeout, self._expired, call)
        else:
            self.clock.at(now + self._one_way(), self._deliver, call)

    def _deliver(self, call: _Call) -> None:
        target = self.by_host[call.host]
        if not target.alive or self._apart(call.node, target):
            self.counts["unreachable"] += 1
            self.clock.at(call.sent_at + self.rpc_timeout, self._expired, call)
            return
        request = call.request
        reply, seen = target.answer(request, call.node.host)
        if reply is None:
            self.clock.at(call.sent_at + self.rpc_timeout, self._expired, call)
        elif self._dropped():
            self.counts["lost"] += 1
            self.clock.at(call.sent_at + self.rpc_timeout, self._expired, call)
        else:
            arrival = self.clock.now + self._one_way()
            deadline = call.sent_at + self.rpc_timeout
            if arrival < deadline:
                self.clock.at(arrival, self._reply, call, reply)
            else:
                self.clock.at(deadline, self._expired, call)
        if seen is not None:
            target.act_on_request(request, call.node.host, seen)

    def _apart(self, a: SimNode, b: SimNode) -> bool:
        sides = self.sides
        return sides is not None and sides.get(a.index, 0) != sides.get(b.index, 0)

    def _reply(self, call: _Call, reply: Message) -> None:
        if call.cancelled or not call.node.alive:
            return
        self.counts["replies"] += 1
        if self.trace is not None:
            self.note(f"reply {self.by_host[call.host]}>{call.node} {reply.TYPE} {reply.rid}")
        call.node.replied(call, reply)

    def _expired(self, call: _Call) -> None:
        if call.cancelled or not call.node.alive:
            return
        self.counts["timeouts"] += 1
        if self.trace is not None:
            target = self.by_host[call.host]
            self.note(f"timeout {call.node}>{target} {call.request.TYPE} {call.request.rid}")
        call.done("timeout")

    # -- ground truth --------------------------------------------------------------------------

    def closest_live(self, target: int, count: int) -> list[int]:
        """The ids of the ``count`` live nodes closest to ``target``, nearest first."""
        return closest_ids(self.live_ids, target, count)


def closest_ids(ids: list[int], target: int, count: int) -> list[int]:
    """The ``count`` ids of the sorted list ``ids`` closest to ``target`` by XOR, nearest first.

    The ids sharing the longest prefix with ``target`` form one run of the sorted list, and every
    id in the smallest aligned block around ``target`` that holds ``count`` of them is closer than
    any id outside it; so only that block is sorted.
    """
    low, high = 0, 512
    while low < high:  # the smallest block size 2**shift holding at least count ids
        shift = (low + high) // 2
        start = (target >> shift) << shift
        held = bisect.bisect_left(ids, start + (1 << shift)) - bisect.bisect_left(ids, start)
        if held >= count:
            high = shift
        else:
            low = shift + 1
    start = (target >> low) << low
    block = ids[bisect.bisect_left(ids, start) : bisect.bisect_left(ids, start + (1 << low))]
    return sorted(block, key=lambda i: i ^ target)[:count]


class SimLookup:
    """A running lookup on a simulated node: ``txdht.node.Lookup`` with continuations.

    It also records what the measurements need: when it started and ended, and each contact's
    depth (1 for the seeds, one more than the peer that named it otherwise).
    """

    def __init__(
        self, node: SimNode, machine: IterativeLookup, done: Callable[[SimLookup], None]
    ) -> None:
        self.node = node
        self.machine = machine
        self.started = node.network.clock.now
        self.ended: float | None = None
        #: Depth of each contact heard of, and of the contact a value came from (0: none).
        self.depth: dict[int, int] = {}
        self.value_depth = 0
        self._done = done
        self._queries: dict[int, _Call] = {}

    def begin(self, seeds: list[Contact]) -> SimLookup:
        """Send the first queries (``seeds`` are the contacts the machine started from)."""
        for contact in seeds:
            self.depth[contact.id] = 1
        self._step()
        return self

    @property
    def latency(self) -> float:
        """Seconds from start to end (the lookup must have ended)."""
        assert self.ended is not None
        return self.ended - self.started

    def hops(self) -> int:
        """How deep the lookup went: the depth of the value's source, or of the closest answer."""
        if self.value_depth:
            return self.value_depth
        closest = self.machine.closest()
        return self.depth.get(closest[0].id, 1) if closest else 0

    def _step(self) -> None:
        machine = self.machine
        if machine.done:  # stop: the replies still on their way are ignored (cancelled)
            for query in self._queries.values():
                query.cancelled = True
            self._queries.clear()
            self.ended = self.node.network.clock.now
            self._done(self)
            return
        for contact in machine.next_queries():
            answered = partial(self._answered, contact)
            if machine.find_value:
                query = self.node.call(contact, FindValue, answered, key=machine.target)
            else:
                query = self.node.call(contact, FindNode, answered, target=machine.target)
            self._queries[contact.id] = query

    def _answered(self, contact: Contact, result: Result) -> None:
        del self._queries[contact.id]
        machine = self.machine
        if isinstance(result, Nodes):
            deeper = self.depth.get(contact.id, 1) + 1
            for named in result.nodes:
                self.depth.setdefault(named.id, deeper)
            machine.nodes_received(contact, result.nodes)
        elif isinstance(result, Value) and machine.find_value:
            if machine.value_received(contact, result.item):
                self.value_depth = self.depth.get(contact.id, 1)
            else:
                self.node.peer_failed(contact)
        else:
            machine.query_failed(contact)
            self.node.peer_failed(contact)
        self._step()


class SimNode:
    """One simulated node: the real ``Engine``, driven as ``txdht.node.Node`` drives it."""

    def __init__(self, network: Network, index: int, identity: Identity) -> None:
        self.network = network
        self.index = index
        self.host = f"127.{index >> 16}.{index >> 8 & 255}.{index & 255}"
        self.address: Address = (self.host, PORT)
        self.engine = Engine(
            identity,
            MemoryStorage(),
            now=network.clock.now,
            k=network.k,
            alpha=network.alpha,
            limits=network.limits,
        )
        self.engine.port = PORT
        self.contact = Contact(self.engine.id, self.host, PORT)
        self.alive = False
        #: Whether the service has joined (or tried to): housekeeping runs only then.
        self.ready = False
        self.seeds: list[Address] = []
        #: Housekeeping jobs running now.
        self.busy: set[str] = set()
        self._joined: Callable[[SimNode], None] | None = None

    def __str__(self) -> str:
        return f"n{self.index}"

    @property
    def now(self) -> float:
        """The virtual time."""
        return self.network.clock.now

    # -- requests out and in (Node.call, Node.request_received) ---------------------------------

    def call(
        self,
        to: Contact | Address,
        cls: type[Message],
        done: Callable[[Result], None],
        **fields: Any,
    ) -> _Call:
        """Send a request; ``done`` gets the reply, or why it failed (never both, never twice)."""
        call = _Call(self, to, self.engine.message(cls, **fields), done)
        self.network.send(call)
        return call

    def replied(self, call: _Call, reply: Message) -> None:
        """The reply to ``call`` arrived: check it as ``Node.call`` does, then hand it on."""
        to = call.to
        if isinstance(reply, Error):
            call.done(f"error {reply.code}: {reply.message}")
        elif isinstance(to, Contact) and reply.sender != to.id:
            call.done(f"{to} answered with another id")
        else:
            if isinstance(to, Contact):
                self._act(to, self.engine.seen(to, self.now))
            call.done(reply)

    def answer(self, request: Message, host: str) -> tuple[Message | None, Seen | None]:
        """A peer's request arrived: the reply (None: dropped) and what hearing from it asks.

        As ``Node.request_received``: the rate limiter's verdict first, then ``Engine.handle``.
        """
        counts = self.network.counts
        now = self.now
        verdict = self.engine.rate_limiter.check(peer_key(host, PORT), now)
        if verdict == Verdict.DROP:
            counts["unanswered"] += 1
            return None, None
        if verdict == Verdict.REFUSE:
            counts["refused"] += 1
            text = "too many requests: ignored for a while"
            return self.engine.error(request.rid, ErrorCode.RATE_LIMITED, text), None
        counts["handled"] += 1
        handled = self.engine.handle(request, host, now)
        return handled.reply, handled.seen

    def act_on_request(self, request: Message, host: str, seen: Seen) -> None:
        """After replying: do what hearing from the requester asked."""
        if request.port and (seen.ping is not None or seen.handoff):
            self._act(Contact(request.sender, host, request.port), seen)

    def peer_failed(self, contact: Contact) -> None:
        """A request to ``contact`` failed; count it in the routing table."""
        self.engine.failed(contact)

    def _act(self, contact: Contact, seen: Seen) -> None:
        """Ping-before-evict, and copies for a newcomer (``Node._act``)."""
        if seen.ping is not None:
            pinged, challenge = seen.ping, self._challenge(seen.ping)
            self.call(pinged, Ping, partial(self._pinged, pinged, challenge), challenge=challenge)
        now = self.now
        for record in seen.handoff:
            self.call(contact, Store, _ignore, item=record.item, ttl=record.expires_at - now)

    def _pinged(self, contact: Contact, challenge: bytes, result: Result) -> None:
        if isinstance(result, str):
            self.peer_failed(contact)
        else:
            self.proven(contact, challenge, result)

    def _challenge(self, to: Contact | Address) -> bytes:
        """A handshake challenge. A real node draws it from ``os.urandom``; here it is derived
        from who asks whom and when, so that runs stay reproducible without using the RNG."""
        return hashlib.sha256(repr((self.engine.id, to, self.now)).encode()).digest()

    def proven(self, contact: Contact, challenge: bytes, reply: Message) -> bool:
        """The identity handshake (``Node._proven``): whether ``reply`` proves that ``contact``
        holds the key of its id; if not, it is dropped from the routing table."""
        if isinstance(reply, Pong) and reply.proof and proves(contact.id, challenge, reply.proof):
            return True
        self.engine.routing.remove(contact.id)
        return False

    # -- operations (Node.lookup, _publish, _get, _join, _refresh, _publish_all) ----------------

    def lookup(
        self, target: int, done: Callable[[SimLookup], None], find_value: bool = False
    ) -> SimLookup:
        """Start an iterative lookup; ``done`` gets it when it has finished."""
        seeds = self.engine.routing.contacts()  # what Engine.lookup seeds it with
        machine = self.engine.lookup(target, self.now, find_value)
        return SimLookup(self, machine, done).begin(seeds)

    def publish(
        self, item: Item, ttl: float, done: Callable[[int], None], cas: int | None = None
    ) -> None:
        """Store ``item`` on the k closest nodes; ``done`` gets how many took it (0: failed)."""
        item.verify(self.engine.max_value)
        self.lookup(item.key, lambda found: self._place(item, ttl, cas, found, done))

    def publish_own(
        self, item: Item, ttl: float, done: Callable[[int], None], cas: int | None = None
    ) -> None:
        """Publish an item of ours; once stored, remember it, to republish it."""

        def remember(stored: int) -> None:
            if stored:
                self.engine.remember(item, ttl)
            done(stored)

        self.publish(item, ttl, remember, cas)

    def _place(
        self,
        item: Item,
        ttl: float,
        cas: int | None,
        found: SimLookup,
        done: Callable[[int], None],
    ) -> None:
        keep, targets = self.engine.placement(item.key, found.machine.closest())
        stored = 0
        if keep:
            try:
                self.engine.store(item, ttl, self.now, cas)
                stored = 1
            except ProtocolError:
                pass  # refused here (a newer version, a quota): the peers may still take it
        gather = _Gather(len(targets), lambda took: done(stored + took))
        for contact in targets:
            took = partial(_succeeded, gather)
            self.call(contact, Store, took, item=item, ttl=ttl, cas=cas)

    def get(self, key: int, done: Callable[[Item | None, SimLookup | None], None]) -> None:
        """The item under ``key``, as ``Node.get`` finds it: a blob held here at once, else a
        FIND_VALUE lookup, the newest version winning, with read repair of older holders."""
        local = self.engine.get(key, self.now)
        if local is not None and not local.mutable:
            done(local, None)
            return
        self.lookup(key, partial(self._got, key, done), find_value=True)

    def _got(
        self,
        key: int,
        done: Callable[[Item | None, SimLookup | None], None],
        found: SimLookup,
    ) -> None:
        best, stale = self.engine.newest(key, found.machine, self.now, DEFAULT_TTL)
        gather = _Gather(len(stale), lambda _: done(best, found))
        for peer in stale:
            self.call(peer, Store, partial(_succeeded, gather), item=best, ttl=DEFAULT_TTL)

    def join(self, seeds: list[Address], done: Callable[[int | None], None]) -> None:
        """Join through ``seeds``; ``done`` gets the contacts then known, or None (JoinError)."""
        results: list[Result] = ["not answered"] * len(seeds)
        challenges = [self._challenge(address) for address in seeds]

        def pinged(where: int, result: Result) -> None:
            results[where] = result
            gather.one(True)

        gather = _Gather(
            len(seeds), lambda _: self._seeds_answered(seeds, challenges, results, done)
        )
        for where, address in enumerate(seeds):
            self.call(address, Ping, partial(pinged, where), challenge=challenges[where])

    def _seeds_answered(
        self,
        seeds: list[Address],
        challenges: list[bytes],
        results: list[Result],
        done: Callable[[int | None], None],
    ) -> None:
        now = self.now
        for address, challenge, reply in zip(seeds, challenges, results, strict=True):
            if not isinstance(reply, str):
                contact = Contact(reply.sender, address[0], address[1])
                if self.proven(contact, challenge, reply):
                    self._act(contact, self.engine.seen(contact, now))
        if not len(self.engine.routing):
            done(None)
            return
        self.lookup(
            self.engine.id,
            lambda _: self.refresh(JOIN_REFRESH, lambda _: done(len(self.engine.routing))),
        )

    def refresh(self, interval: float, done: Callable[[int], None]) -> None:
        """Look up a random id in every bucket idle for ``interval`` seconds."""
        targets = self.engine.refresh_targets(self.now, interval, self.network.rng)
        gather = _Gather(len(targets), lambda _: done(len(targets)))
        for target in targets:
            self.lookup(target, lambda _: gather.one(True))

    def replicate(self, done: Callable[[int], None]) -> None:
        """Store every held item again on the k closest nodes, keeping its expiry time."""
        self._publish_all(self.engine.replication_jobs(self.now), done)

    def republish(self, done: Callable[[int], None]) -> None:
        """Publish again, with a fresh ttl, every item this node published."""
        self._publish_all(self.engine.republish_jobs(), done)

    def expire(self) -> int:
        """Drop expired items (and ended rate-limit cool-offs)."""
        self.engine.rate_limiter.forget(self.now)
        return self.engine.expire(self.now)

    def _publish_all(self, jobs: list[tuple[Item, float]], done: Callable[[int], None]) -> None:
        waiting = iter(jobs)
        gather = _Gather(len(jobs), done)

        def next_job(stored: int | None = None) -> None:
            if stored is not None:
                gather.one(stored > 0)
            job = next(waiting, None)
            if job is not None:  # from the clock: a long run of quick publishes never nests
                self.network.clock.later(0.0, self.publish, job[0], job[1], next_job)

        for _ in range(HOUSEKEEPING_CONCURRENCY):
            next_job()

    # -- the service (txdht.service.DHTService) ------------------------------------------------

    def start_service(self, seeds: list[Address], joined: Callable[[SimNode], None] | None) -> None:
        """Start the housekeeping timers, then join (or start a new network without seeds).

        The timers fire first at start, while the node is not ready (so they do nothing, as in
        ``DHTService``), then every interval; a job still running when its timer fires again
        is not started twice. A failed join is retried after 1 s, 2 s, 4 s... (at most the
        refresh interval) while the table is empty, as ``DHTService`` does; its first node's
        join through its first callers is not modelled (its table fills from their requests).
        """
        self.seeds = list(seeds)
        self._joined = joined
        self._retry_delay = 1.0
        intervals = self.network.intervals
        for job, every in (
            ("refresh", intervals.refresh),
            ("replicate", intervals.replicate),
            ("republish", intervals.republish),
            ("expire", intervals.expire),
        ):
            self.network.clock.later(every, self._tick, job, every)
        if not self.seeds:
            self._ready(True)
        else:
            self.join(self.seeds, self._join_done)

    def _join_done(self, contacts: int | None) -> None:
        if not self.ready:
            self._ready(contacts is not None)
        elif contacts is not None:
            self.network.members.add(self)
        if contacts is None:
            self.network.clock.later(self._retry_delay, self._retry_join)
            self._retry_delay = min(2 * self._retry_delay, self.network.intervals.refresh)

    def _retry_join(self) -> None:
        if self.alive and not len(self.engine.routing):
            self.join(self.seeds, self._join_done)

    def _ready(self, joined: bool) -> None:
        self.ready = True
        self.network.became_ready(self, joined)
        if self._joined is not None:
            self._joined(self)

    def running(self, job: str) -> bool:
        """Whether housekeeping job ``job`` is running."""
        return job in self.busy

    def _tick(self, job: str, every: float) -> None:
        if not self.alive:
            return
        self.network.clock.later(every, self._tick, job, every)
        if not self.ready or job in self.busy:
            return
        self.busy.add(job)
        self.network.running[job] += 1
        if job == "refresh":
            if not len(self.engine.routing) and self.seeds:
                self.join(self.seeds, partial(self._job_done, job))
            else:
                self.refresh(self.network.intervals.stale_bucket, partial(self._job_done, job))
        elif job == "replicate":
            self.replicate(partial(self._job_done, job))
        elif job == "republish":
            self.republish(partial(self._job_done, job))
        else:
            self.expire()
            self._job_done(job, None)

    def _job_done(self, job: str, result: object) -> None:
        self.busy.discard(job)
        self.network.running[job] -= 1
