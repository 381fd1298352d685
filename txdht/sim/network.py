"""The simulated network: a virtual clock, an in-memory message bus, and nodes on the real core.

Each ``SimNode`` is a driver of a real ``Engine`` (routing table, lookups, items, the node's
operations and its housekeeping schedule, ``MemoryStorage``), as the Twisted node and the
asyncio twin are: it carries out the engine's commands and feeds back what happened. A ``Send``
puts a request on the bus; a request arriving goes through ``Engine.request_received`` and its
reply back onto the bus; a reply arriving goes to ``Engine.reply_received``; the engine's next
deadline is an event on the clock. Every decision (whom to ask, how long to wait, what to
store, when to join again) is the engine's, so what the simulator measures is what the real
node does. Only connections are left out: the bus carries ``Message`` objects (no JSON, no
TCP), peer to peer.

A message takes ``latency / 2`` seconds each way plus a uniform jitter drawn from the seeded
RNG, and is lost with probability ``loss``. A request that is lost, whose reply is lost or too
late, or whose receiver is dead or on the other side of a partition gets no answer: the
requester's engine times it out, as in the real node. Events sit in one heap ordered by time,
then by the order they were scheduled, so a run is a pure function of its parameters and seed:
the optional trace (one line per event) is byte-identical between two runs.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from typing import IO, Any

from txdht.core import operations as ops
from txdht.core.commands import Command, Done, Failed, Joined, Log, Notify, Ready, Send
from txdht.core.engine import Engine
from txdht.core.errors import ErrorCode
from txdht.core.framing import netstring
from txdht.core.ids import Contact
from txdht.core.items import Identity, Item
from txdht.core.limits import DEFAULT_RPC_TIMEOUT, Limits
from txdht.core.listen import Listen, Notice
from txdht.core.lookup import ALPHA
from txdht.core.messages import DEFAULT_NETWORK, Error, Message, encode
from txdht.core.routing import K
from txdht.core.schedule import JOBS, Intervals, Service
from txdht.core.storage import MemoryStorage

__all__ = [
    "PORT",
    "Clock",
    "Network",
    "SimLookup",
    "SimNode",
    "SimulationError",
]

#: Every simulated node listens on this port, on a host of its own (10.x.y.z).
PORT = 4000

Address = tuple[str, int]
#: An adversary's answer to a request: (node, request, sender's host) -> the reply to send
#: (None: none) and the commands of its engine to carry out.
Hostile = Callable[["SimNode", Message, str], tuple[Message | None, list[Command]]]
#: A simulated lookup: the core's own lookup operation (its machine, latency and hops).
SimLookup = ops.Lookup


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
        if node.index in self._where:
            return  # already in: a pool holds each node once
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
        paths: int = 1,
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
        #: Disjoint paths each node's lookups take.
        self.paths = paths
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
        #: Bytes on the wire of each kind of message, requests and replies, while counted
        #: (None: not counted; encoding every message costs time, so only when asked).
        self.wire_bytes: dict[str, int] | None = None
        #: Nodes running each housekeeping job now.
        self.running = dict.fromkeys(JOBS, 0)
        self.counts = dict.fromkeys(
            ("handled", "refused", "unanswered", "replies", "lost", "unreachable"), 0
        )

    # -- nodes ---------------------------------------------------------------------------------

    def identity(self, index: int) -> Identity:
        """The key pair of node ``index``: a real Ed25519 key from seeded bytes."""
        raw = hashlib.sha256(f"txdht.sim {self.seed} node {index}".encode()).digest()
        return Identity.from_private_bytes(raw)

    def add_node(
        self,
        identity: Identity | None = None,
        rng: random.Random | None = None,
        name: str = DEFAULT_NETWORK,
        host: str | None = None,
    ) -> SimNode:
        """A new node (not started: call ``start``, or ``up``), with the seeded identity of
        its index unless given one; ``rng`` draws its refresh targets (the network's own
        random stream when None); ``name`` is the network it belongs to (``--network``: one
        bus can carry several networks, which must stay apart); ``host`` its address (by
        default one of its own on loopback, so that no per-network rule counts it)."""
        index = len(self.nodes)
        node = SimNode(self, index, identity or self.identity(index), rng or self.rng, name, host)
        self.nodes.append(node)
        self.by_host[node.host] = node
        self.by_id[node.engine.id] = node
        return node

    def start(
        self, node: SimNode, seeds: list[Address], joined: Callable[[SimNode], None] | None = None
    ) -> None:
        """Start ``node``'s service: housekeeping timers, then join through ``seeds``."""
        self.up(node)
        self.note(f"start {node} seeds={len(seeds)}")
        node.start_service(seeds, joined)

    def up(self, node: SimNode) -> None:
        """``node`` is alive: it answers, and its operations run (its service is not started:
        that is ``start``)."""
        node.alive = True
        self.live.add(node)
        bisect.insort(self.live_ids, node.engine.id)

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
        for job in node.busy():
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

    def send(self, node: SimNode, request: ops.Request) -> None:
        """Put ``node``'s request on the bus."""
        if not node.alive:
            return  # a stopped process sends nothing
        kind = request.message.TYPE
        self.sent[kind] = self.sent.get(kind, 0) + 1
        if self.wire_bytes is not None:
            self._count_bytes(request.message)
        if self.trace is not None:
            target = self.by_host.get(request.address[0], request.address[0])
            self.note(f"send {node}>{target} {kind} {request.rid}")
        if self._dropped():
            self.counts["lost"] += 1  # no answer: the sender's engine times it out
        else:
            self.clock.at(self.clock.now + self._one_way(), self._deliver, node, request)

    def _deliver(self, sender: SimNode, request: ops.Request) -> None:
        target = self.by_host.get(request.address[0])
        if target is None or not target.alive or self._apart(sender, target):
            # no such host (a contact an adversary made up), a stopped process, or a partition
            self.counts["unreachable"] += 1
            return
        if target.hostile is not None:  # an adversary's answer (txdht.sim.adversary)
            reply, commands = target.hostile(target, request.message, sender.host)
        else:
            reply, commands = target.engine.request_received(
                request.message, sender.host, PORT, self.clock.now
            )
        if reply is None:
            self.counts["unanswered"] += 1
        elif isinstance(reply, Error) and reply.code == ErrorCode.RATE_LIMITED:
            self.counts["refused"] += 1
        else:
            self.counts["handled"] += 1
        if reply is not None:
            if self.wire_bytes is not None:
                self._count_bytes(reply)
            if self._dropped():
                self.counts["lost"] += 1
            else:
                self.clock.at(self.clock.now + self._one_way(), self._reply, sender, target, reply)
        target.run(commands)

    def _count_bytes(self, message: Message) -> None:
        """Add ``message``'s size on the wire (a netstring of its JSON) to ``wire_bytes``."""
        assert self.wire_bytes is not None
        kind = message.TYPE
        self.wire_bytes[kind] = self.wire_bytes.get(kind, 0) + len(netstring(encode(message)))

    def _apart(self, a: SimNode, b: SimNode) -> bool:
        sides = self.sides
        return sides is not None and sides.get(a.index, 0) != sides.get(b.index, 0)

    def _reply(self, node: SimNode, sender: SimNode, reply: Message) -> None:
        if not node.alive:
            return
        self.counts["replies"] += 1
        if self.trace is not None:
            self.note(f"reply {sender}>{node} {reply.TYPE} {reply.rid}")
        node.run(node.engine.reply_received(reply, sender.host, self.clock.now))

    def counters(self) -> dict[str, int]:
        """Messages sent by type, what became of them, and requests that timed out."""
        timeouts = sum(
            count
            for node in self.nodes
            for (direction, _, how), count in node.engine.metrics.rpcs.items()
            if direction == "sent" and how == "timeout"
        )
        return {**self.sent, **self.counts, "timeouts": timeouts}

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


class SimNode:
    """One simulated node: a driver of the real ``Engine``, as ``txdht.node.Node`` is."""

    def __init__(
        self,
        network: Network,
        index: int,
        identity: Identity,
        rng: random.Random,
        name: str = DEFAULT_NETWORK,
        host: str | None = None,
    ) -> None:
        self.network = network
        self.index = index
        self.host = host or f"127.{index >> 16}.{index >> 8 & 255}.{index & 255}"
        self.address: Address = (self.host, PORT)
        self.engine = Engine(
            identity,
            MemoryStorage(),
            now=network.clock.now,
            k=network.k,
            alpha=network.alpha,
            limits=network.limits,
            paths=network.paths,
            rpc_timeout=network.rpc_timeout,
            rng=rng,
            challenge=self._challenge,
            network=name,
        )
        self.engine.port = PORT
        self.engine.logging = network.trace is not None  # the log lines go to the trace
        self.contact = Contact(self.engine.id, self.host, PORT)
        self.alive = False
        #: How it answers requests when it is an adversary (None: as the core does).
        self.hostile: Hostile | None = None
        self.service: Service | None = None
        self._waiting: dict[ops.Operation, Callable[[ops.Operation], None]] = {}
        self._notified: dict[ops.Operation, Callable[[Notice], None]] = {}
        self._joined: Callable[[SimNode], None] | None = None
        self._fires: set[float] = set()

    def __str__(self) -> str:
        return f"n{self.index}"

    @property
    def now(self) -> float:
        """The virtual time."""
        return self.network.clock.now

    @property
    def ready(self) -> bool:
        """Whether the service has tried to join (housekeeping runs only then)."""
        return self.service is not None and self.service.ready

    def running(self, job: str) -> bool:
        """Whether housekeeping job ``job`` is running."""
        return job in self.busy()

    def busy(self) -> list[str]:
        """The housekeeping jobs running now."""
        return list(self.service.busy) if self.service is not None else []

    def _challenge(self, to: object, now: float) -> bytes:
        """A handshake challenge. A real node draws it from ``os.urandom``; here it is derived
        from who asks whom and when, so that runs stay reproducible without using the RNG."""
        return hashlib.sha256(repr((self.engine.id, to, now)).encode()).digest()

    # -- the driver ----------------------------------------------------------------------------

    def start_op(self, op: ops.Operation, done: Callable[[Any], None]) -> None:
        """Start a core operation; ``done(op)`` once it ends."""
        self._waiting[op] = done
        self.run(self.engine.start(op, self.now))

    def run(self, commands: list[Command]) -> None:
        """Carry out the engine's commands, then set its timer on the clock."""
        for command in commands:
            match command:
                case Send(request):
                    self.network.send(self, request)
                case Done(op) | Failed(op):
                    self._waiting.pop(op)(op)
                case Ready(joined):
                    # The first node (no seeds) is the network: others join through it.
                    assert self.service is not None
                    self.network.became_ready(self, joined or not self.service.seeds)
                    if self._joined is not None:
                        self._joined(self)
                case Joined():
                    self.network.members.add(self)
                case Notify(op, notice):
                    self._notified[op](notice)
                case _:
                    assert isinstance(command, Log)  # no connections here: no Write or Close
                    self.network.note(f"{self} {command.level} {command.format()}")
        self._arm()

    def _arm(self) -> None:
        when = self.engine.next_timer()
        fires = self._fires
        if when is None or when in fires or (fires and min(fires) <= when):
            return  # none, or an event already comes first (and arms the next)
        fires.add(when)
        self.network.clock.at(when, self._fire, when)

    def _fire(self, when: float) -> None:
        self._fires.discard(when)
        if self.alive:
            self.run(self.engine.timer_fired(self.now))

    def _job(self, job: str, running: bool) -> None:
        self.network.running[job] += 1 if running else -1

    # -- operations (as ``Node.lookup``, ``publish``, ``get``, ``join``) ---------------------------

    def lookup(
        self, target: int, done: Callable[[ops.Lookup], None], find_value: bool = False
    ) -> None:
        """Start an iterative lookup; ``done`` gets it when it has finished."""
        self.start_op(ops.Lookup(target, find_value), done)

    def publish(
        self, item: Item, ttl: float, done: Callable[[int], None], cas: int | None = None
    ) -> None:
        """Store ``item`` on the k closest nodes; ``done`` gets how many took it (0: failed)."""
        self.start_op(ops.Publish(item, ttl, cas), lambda op: done(_stored(op)))

    def publish_own(
        self, item: Item, ttl: float, done: Callable[[int], None], cas: int | None = None
    ) -> None:
        """Publish an item of ours; once stored, remember it, to republish it."""
        self.start_op(ops.Publish(item, ttl, cas, remember=True), lambda op: done(_stored(op)))

    def get(self, key: int, done: Callable[[Item | None, SimLookup | None], None]) -> None:
        """The item under ``key``, as ``Node.get`` finds it (None: not found), and the lookup
        that found it (None for a blob held here)."""

        def got(op: ops.Get) -> None:
            done(op.result if op.error is None else None, op.lookup)

        self.start_op(ops.Get(key), got)

    def call(
        self,
        to: Contact | Address,
        cls: type[Message],
        done: Callable[[Message | Exception], None],
        **fields: Any,
    ) -> None:
        """Send one request; ``done`` gets the reply, or the error it failed with."""
        self.start_op(ops.Call(to, cls, **fields), lambda op: done(op.error or op.result))

    def listen(self, key: int, notified: Callable[[Notice], None]) -> Listen:
        """Listen to ``key`` (as ``Node.listen``): ``notified`` gets each ``Notice``; the
        listen runs until the node dies (or ``Engine.cancel``)."""
        op = Listen(key)
        self._notified[op] = notified
        self._waiting[op] = lambda _: None  # a listen ends only by failing (a bug)
        self.run(self.engine.start(op, self.now))
        return op

    def join(self, seeds: list[Address], done: Callable[[int | None], None]) -> None:
        """Join through ``seeds``; ``done`` gets the contacts then known, or None (JoinError)."""
        self.start_op(ops.Join(seeds), lambda op: done(op.result if op.error is None else None))

    def start_service(self, seeds: list[Address], joined: Callable[[SimNode], None] | None) -> None:
        """Run the node's life (``txdht.core.schedule.Service``, as ``DHTService`` does): join
        through ``seeds`` with retries, and housekeeping on its intervals."""
        self._joined = joined
        self.service = Service(seeds, self.network.intervals)
        self.service.job_observers.append(self._job)
        self.run(self.engine.start(self.service, self.now))


def _stored(op: ops.Operation) -> int:
    """How many nodes took a published item (0 when the put failed)."""
    return 0 if op.error is not None else len(op.result)
