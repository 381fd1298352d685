"""The node's multi-step operations, each a machine fed events by the ``Engine``.

Theory of operation
-------------------
An operation (join, put, get, a lookup, a refresh...) is an object with a few event methods:
``begin`` when it starts, ``replied`` or ``request_failed`` for each request it sent, and
``child_ended`` for each operation it started inside itself (a put starts a lookup; a refresh
starts one lookup per idle bucket). It acts only through its engine: ``send`` a request,
``spawn`` a child, ``later`` a timer, then ``finish`` with a result or ``fail`` with an error.
It never touches a socket, a clock or a Deferred; the drivers do that with the commands the
engine returns.

When an operation ends, the engine abandons what it still has in flight (its requests, its
children, its timers), so a finished lookup's last queries, or a cancelled put, leave nothing
behind. A child's end reaches its parent through the engine's queue, never as a nested call, so
a replication of ten thousand items that each end at once never grows the stack.

Every request ends exactly once: with a reply (``replied``) or a failure (``request_failed``:
an error reply, a timeout, a lost or refused connection, a reply from the wrong id), unless
its operation ended first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from txdht.core.arguments import check_seeds
from txdht.core.errors import (
    ErrorCode,
    JoinError,
    NotFoundError,
    ProtocolError,
    PutError,
    RemoteError,
)
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import DEFAULT_TTL, Item
from txdht.core.limits import HOUSEKEEPING_CONCURRENCY
from txdht.core.lookup import IterativeLookup
from txdht.core.messages import FindNode, FindValue, Message, Nodes, Ok, Ping, Store, Value

if TYPE_CHECKING:
    from txdht.core.engine import Engine, Timer
    from txdht.core.storage import StoredItem
    from txdht.core.streams import Link

__all__ = [
    "CATCH_UP_ASKS",
    "JOIN_REFRESH",
    "Call",
    "CatchUp",
    "Get",
    "Handoff",
    "Join",
    "Lookup",
    "Operation",
    "PingCheck",
    "Publish",
    "PublishAll",
    "Refresh",
    "Repair",
    "Replicate",
    "Request",
]

Address = tuple[str, int]
#: The refresh interval a join ends with: every bucket no lookup touched yet is refreshed,
#: which fills the buckets further away from our own id.
JOIN_REFRESH = 0.001
#: How many of the peers that refused a held copy as stale (replicated, republished or handed
#: off) a holder asks for the newer version (``CatchUp``): one honest answer is enough, and a
#: refuser that lies costs one request.
CATCH_UP_ASKS = 3


class Request:
    """One request of ours in flight: the message, to whom, for which operation."""

    __slots__ = (
        "address",
        "contact",
        "ended",
        "link",
        "message",
        "op",
        "retry_of",
        "sent_at",
        "slow",
        "timer",
        "via",
    )

    def __init__(
        self,
        message: Message,
        to: Contact | Address,
        op: Operation,
        now: float,
        retry_of: Request | None = None,
    ) -> None:
        self.message = message
        #: The contact it was sent to (its reply must come from that id), or None for a bare
        #: address (a seed, before we know its id).
        self.contact = to if isinstance(to, Contact) else None
        self.address: Address = to.address if isinstance(to, Contact) else to
        self.op = op
        self.sent_at = now
        #: The request this one repeats, for a retry (``Streams`` may open a fresh connection).
        self.retry_of = retry_of
        #: Its next deadline: the slow one (it is overdue then), then the full one (it fails).
        self.timer: Timer | None = None
        #: Whether it has gone slow.
        self.slow = False
        #: The connection it was written on (set by ``Streams``; None in the simulator).
        self.link: Link | None = None
        #: The connection it must go on, if any (a push to a listener: ``Streams``).
        self.via: Any = None
        self.ended = False

    @property
    def rid(self) -> int:
        """The request id its reply echoes."""
        return self.message.rid

    @property
    def peer(self) -> str:
        """Whom it went to, for a person to read."""
        return str(self.contact) if self.contact else f"{self.address[0]}:{self.address[1]}"


class Operation:
    """One multi-step operation; see the module docstring.

    ``result`` or ``error`` holds the outcome once ``ended``. An operation the driver started
    (``Engine.start``) is reported back to it as ``Done`` or ``Failed``.
    """

    engine: Engine

    def __init__(self) -> None:
        self.parent: Operation | None = None
        self.public = False
        self.requests: dict[int, Request] = {}
        self.children: set[Operation] = set()
        self.timers: list[Timer] = []
        self.ended = False
        self.result: Any = None
        self.error: Exception | None = None

    # -- events, from the engine ---------------------------------------------------------------

    def begin(self) -> None:
        """Start: send the first requests, or spawn the first children."""
        raise NotImplementedError  # pragma: no cover (every operation defines it)

    def replied(self, request: Request, reply: Message) -> None:
        """``request`` was answered with ``reply`` (never an error reply)."""

    def request_failed(self, request: Request, error: Exception) -> None:
        """``request`` failed: ``error`` says how (``RemoteError``, ``TimeoutError``...)."""

    def request_slow(self, request: Request) -> None:
        """``request`` is overdue (``txdht.core.timing``): its reply may still come, until the
        full deadline, or it fails then."""

    def child_ended(self, child: Operation) -> None:
        """``child`` ended; its ``result`` or ``error`` says how."""

    def cancelled(self) -> None:
        """It was stopped (``Engine.cancel``, or its parent ended) with all it had in flight."""

    def progress(self) -> tuple[int, int | None]:
        """How far it got: peers that answered its lookups, and nodes that stored its item
        (None when it stores nothing); what an ``OperationTimeout`` reports."""
        return sum(child.progress()[0] for child in self.children), None

    # -- actions, through the engine -----------------------------------------------------------

    def send(
        self,
        to: Contact | Address,
        cls: type[Message],
        *,
        retry_of: Request | None = None,
        **fields: Any,
    ) -> Request:
        """Send a request for this operation (``retry_of``: it repeats that one)."""
        return self.engine.send(self, to, cls, retry_of=retry_of, **fields)

    def spawn(self, child: Operation) -> Operation:
        """Start ``child`` inside this operation; ``child_ended`` follows."""
        self.engine.begin(child, self)
        return child

    def later(self, delay: float, action: Callable[..., None], *args: Any) -> None:
        """Run ``action(*args)`` in ``delay`` seconds, unless this operation has ended."""
        self.keep(self.engine.call_at(self.engine.now + delay, action, *args, op=self))

    def keep(self, timer: Timer) -> None:
        """Hold ``timer``, to cancel it if this operation ends first. Those that fired or were
        cancelled are let go: an operation that runs for the node's life (``Service``, a
        listen) arms one timer after another, and kept every one (4,000 an hour in 50
        simulated nodes, each holding its bound method and arguments)."""
        timers = self.timers = [t for t in self.timers if not t.cancelled]
        timers.append(timer)

    def finish(self, result: Any = None) -> None:
        """End with ``result``."""
        self.engine.end(self, result, None)

    def fail(self, error: Exception) -> None:
        """End with ``error``."""
        self.engine.end(self, None, error)


class Call(Operation):
    """One request, ending with its reply (or failing as the request did)."""

    def __init__(self, to: Contact | Address, cls: type[Message], **fields: Any) -> None:
        super().__init__()
        self.to, self.cls, self.fields = to, cls, fields

    def begin(self) -> None:
        self.send(self.to, self.cls, **self.fields)

    def replied(self, request: Request, reply: Message) -> None:
        self.finish(reply)

    def request_failed(self, request: Request, error: Exception) -> None:
        self.fail(error)


class Lookup(Operation):
    """An iterative lookup: drives ``IterativeLookup`` with alpha requests in flight, sending a
    new one whenever one answers, fails or goes slow (and a retry of a slow one to the k
    closest); ends with the finished machine.

    With ``store`` (a put's item and ttl), the query to a contact within the distance where
    the key's k closest nodes are expected (``Engine.holders_within``, doubled) is the store
    itself, marked ``closest``: its ``ok`` names the receiver's closest contacts, as a
    ``nodes`` reply would, and the put need not store there again (``took``). A put is then
    about k requests instead of 2k. Farther contacts, and every contact while the routing
    table is too small to estimate that distance, get a ``find_node``: they are unlikely to be
    among the k closest, and a store there would be a wasted copy; so does a contact that
    comes k-th or further among the candidates known, this node counted. The retry of a store
    that went slow is a ``find_node`` (the node may be gone, and a value is bigger than a
    query; the put stores there after the lookup if it has to). A contact that refuses the
    store (``refusals``: a newer version held, a full node) is asked a ``find_node`` next, so
    the lookup learns what it knows all the same; a node that predates ``closest`` answers
    with a plain ``ok``, which names nobody.

    The store queries ask for contacts (``closest``) until one ``ok`` names k contacts and
    none new to the lookup; those sent after it do not. By then the lookup is among the key's
    likely holders, which know the key's neighbourhood best, and the first of them have named
    it: in the 50-node benchmark network the twenty answers of a put named 400 contacts, 2.4
    of them new, and writing, reading and sorting them was a fifth of a put's instructions.
    Its ``find_node`` queries, and store queries already out, still bring contacts, and the
    lookup goes on from them as ever (docs/performance.md has the measures, and the
    simulator's). Only a full answer counts, k distinct contacts other than the answering
    node and this one: one of fewer comes from a node that knows fewer (a small network,
    where asking costs little) or holds back, and a hostile node naming only the asker, or
    itself, even k times over, would otherwise switch the asking off for the rest of the put
    (the simulator's ``hush`` adversaries do that; docs/reliability.md, "hostile nodes")."""

    def __init__(
        self, target: int, find_value: bool = False, store: tuple[Item, float] | None = None
    ) -> None:
        super().__init__()
        self.target = target
        self.find_value = find_value
        self.store = store
        self.started = self.ended_at = 0.0
        #: The requests still out to each contact (a query, and perhaps its retry).
        self._out: dict[int, int] = {}
        #: With ``store``: how near the key a contact gets the store as its query (None: none
        #: does); the contacts that took the item, and those that refused it, with the error.
        self._store_within: int | None = None
        self.took: set[int] = set()
        self.refusals: dict[int, Exception] = {}
        #: Whether store queries still ask for the receiver's contacts (``closest``).
        self.asking = True

    def begin(self) -> None:
        self.started = self.engine.now
        if self.store is not None and self.engine.paths == 1:
            within = self.engine.holders_within()
            self._store_within = None if within is None else 2 * within
        self.machine = self.engine.lookup_machine(self.target, self.find_value)
        self._step()

    @property
    def latency(self) -> float:
        """Seconds from start to end (once ended)."""
        return self.ended_at - self.started

    def hops(self) -> int:
        """How deep the lookup went (``IterativeLookup.hops``)."""
        return self.machine.hops()

    def progress(self) -> tuple[int, int | None]:
        return self.machine.answered, None

    def _step(self) -> None:
        machine = self.machine
        if machine.done:
            self.ended_at = self.engine.now
            self.engine.lookup_finished(self)
            self.finish(machine)
            return
        for contact in machine.next_queries():
            self._query(contact)

    def _query(self, contact: Contact, retry_of: Request | None = None) -> None:
        self._out[contact.id] = self._out.get(contact.id, 0) + 1
        store = self.store
        if self.find_value:
            self.send(contact, FindValue, retry_of=retry_of, key=self.target)
        elif store is not None and retry_of is None and self._stores_at(contact):
            item, ttl = store
            self.send(contact, Store, item=item, ttl=ttl, closest=self.asking)
        else:
            self.send(contact, FindNode, retry_of=retry_of, target=self.target)

    def _stores_at(self, contact: Contact) -> bool:
        """Whether the query to ``contact`` is the put's store: it lies within the distance
        where the key's k closest are expected, has not refused the item, and is not k-th
        or further, this node counted, among the candidates the lookup knows."""
        within, target = self._store_within, self.target
        if within is None or contact.id in self.refusals:
            return False
        distance = contact.id ^ target
        if distance > within:
            return False
        machine = self.machine
        assert isinstance(machine, IterativeLookup)  # (a disjoint lookup does not store)
        return distance < self.engine.id ^ target or machine.among(contact.id, self.engine.k - 1)

    def replied(self, request: Request, reply: Message) -> None:
        contact = request.contact
        assert contact is not None
        self._out[contact.id] -= 1
        if isinstance(reply, Nodes):
            self.machine.nodes_received(contact, reply.nodes)
        elif isinstance(reply, Ok) and isinstance(request.message, Store):
            self.took.add(contact.id)
            added = self.machine.nodes_received(contact, reply.nodes)
            if not added and self._full(contact, reply.nodes):
                self.asking = False  # k contacts, none new: the others would name none either
        elif isinstance(reply, Value) and self.find_value:
            if not self.machine.value_received(contact, reply.item):
                self.engine.peer_failed(contact, "it sent a value that does not verify")
        else:
            self.machine.query_failed(contact)
            self.engine.peer_failed(contact, f"it answered with a {reply.TYPE} reply")
        self._step()

    def _full(self, peer: Contact, contacts: tuple[Contact, ...]) -> bool:
        """Whether ``contacts``, ``peer``'s answer, name k distinct contacts other than
        ``peer`` and this node (an honest answer names neither, and no contact twice)."""
        k = self.engine.k
        if len(contacts) < k:
            return False
        ids = {c.id for c in contacts}
        ids.discard(peer.id)
        ids.discard(self.engine.id)
        return len(ids) >= k

    def request_failed(self, request: Request, error: Exception) -> None:
        contact = request.contact
        assert contact is not None
        self._out[contact.id] -= 1
        if isinstance(error, RemoteError) and isinstance(request.message, Store):
            # It answered, and did not take the item: ask it what a find_node would (unless
            # the store's retry, a find_node, is still out).
            self.refusals[contact.id] = error
            if not self._out[contact.id]:
                self._query(contact)
        else:
            self.engine.peer_failed(contact)
            if not self._out[contact.id]:  # a retry still out may yet answer
                self.machine.query_failed(contact)
        self._step()

    def request_slow(self, request: Request) -> None:
        assert request.contact is not None
        if self.machine.query_slow(request.contact):
            self._query(request.contact, retry_of=request)
        self._step()


class _Gather(Operation):
    """An operation that waits for several requests; ``all_ended`` runs after the last."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    def send_all(self, to: list[Contact], cls: type[Message], **fields: Any) -> None:
        """Send the same request to each of ``to``; with none, ``all_ended`` runs at once."""
        self.waiting = len(to)
        for contact in to:
            self.send(contact, cls, **fields)
        if not to:
            self.all_ended()

    def replied(self, request: Request, reply: Message) -> None:
        self.answered(request, reply)
        self._one_ended()

    def request_failed(self, request: Request, error: Exception) -> None:
        self.refused(request, error)
        self._one_ended()

    def _one_ended(self) -> None:
        self.waiting -= 1
        if not self.waiting:
            self.all_ended()

    def answered(self, request: Request, reply: Message) -> None:
        """One request was answered."""

    def refused(self, request: Request, error: Exception) -> None:
        """One request failed."""

    def all_ended(self) -> None:
        """Every request has ended."""
        raise NotImplementedError  # pragma: no cover (every gathering operation defines it)


class Publish(_Gather):
    """Store ``item`` on the k closest nodes: a FIND_NODE lookup for its key (whose queries
    to the nodes likely to be among the closest are the stores themselves: ``Lookup``), then
    a store on each of the closest not stored on yet (and here, when this node is among
    them); ends with the ids of the nodes that took it, this node's first, or fails with
    ``PutError`` when none did. With ``remember``, an item of ours, kept to be republished
    once stored."""

    def __init__(
        self,
        item: Item,
        ttl: float,
        cas: int | None = None,
        remember: bool = False,
        replica: bool = False,
        catch_up: bool = False,
    ) -> None:
        super().__init__()
        self.item, self.ttl, self.cas, self.remember = item, ttl, cas, remember
        #: A replication round's: its stores say so (``Store.replica``).
        self.replica = replica
        #: A held copy stored again (replication, republishing; not a caller's put, whose
        #: stale refusals are the caller's to hear): refusers holding a newer version are
        #: asked for it (``CatchUp``).
        self.catch_up = catch_up
        self.holders: list[int] = []
        self.reasons: list[str] = []
        self.codes: set[int] = set()
        #: The peers its lookup heard from, once it ended; the stores' targets, and those
        #: that took the item.
        self.looked_up: int | None = None
        self.targets: list[Contact] = []
        self.took: set[int] = set()
        #: Whether this node is among the k closest its lookup found (and keeps a copy).
        self.kept = False
        #: The nodes its lookup stored on that turned out not to be among the k closest (a
        #: copy more than the put needed; they hold it until it expires).
        self.extra = 0
        #: With ``catch_up``: the holders that refused it as stale (they hold a newer version,
        #: or say so), for ``CatchUp``.
        self.newer: list[Contact] = []

    def begin(self) -> None:
        try:
            self.engine.publishable(self.item)
        except ProtocolError as e:
            self.fail(e)
            return
        # A put's lookup stores as it goes (``Lookup``); a compare-and-swap, which any node
        # not holding the key's current version refuses, and a replication round, whose
        # ``replica`` stores tell their receivers the round is done, store once it has ended.
        merged = self.cas is None and not self.replica
        self.spawn(Lookup(self.item.key, store=(self.item, self.ttl) if merged else None))

    def progress(self) -> tuple[int, int | None]:
        if self.looked_up is not None:
            return self.looked_up, len(self.holders) + len(self.took)
        # The lookup is still out: the nodes it has stored on so far.
        lookups = [child for child in self.children if isinstance(child, Lookup)]
        return super().progress()[0], sum(len(lookup.took) for lookup in lookups)

    def child_ended(self, child: Operation) -> None:
        engine, item = self.engine, self.item
        self.looked_up = child.result.answered
        keep, targets = engine.placement(item.key, child.result.closest())
        self.kept = keep
        if keep:
            error = engine.store_here(item, self.ttl, self.cas)
            if error is None:
                self.holders.append(engine.id)
            else:
                self.reasons.append(f"this node: {error}")
                self.codes.add(int(error.code))
        self.targets = targets
        # Those the lookup stored on already, or that refused it then, are not asked again.
        assert isinstance(child, Lookup)
        took, refused, rest = child.took, child.refusals, []
        for contact in targets:
            if contact.id in took:
                self.took.add(contact.id)
            elif contact.id in refused:
                self._refusal(str(contact), refused[contact.id])
            else:
                rest.append(contact)
        self.extra = len(took) - len(self.took)
        self.send_all(rest, Store, item=item, ttl=self.ttl, cas=self.cas, replica=self.replica)

    def answered(self, request: Request, reply: Message) -> None:
        assert request.contact is not None
        self.took.add(request.contact.id)

    def refused(self, request: Request, error: Exception) -> None:
        self._refusal(request.peer, error)
        if self.catch_up and request.contact is not None and _stale(error):
            self.newer.append(request.contact)

    def _refusal(self, peer: str, error: Exception) -> None:
        self.reasons.append(f"{peer}: {error}")
        if isinstance(error, RemoteError):
            self.codes.add(error.code)
        self.engine.log(
            "info",
            "{peer} did not store {key}: {reason}",
            peer=peer,
            key=id_to_hex(self.item.key)[:12],
            reason=str(error),
        )

    def all_ended(self) -> None:
        if self.newer:  # this node replicated an old version: fetch the new one from them
            self.engine.begin(CatchUp(self.item, self.newer), None)
        self.holders += [c.id for c in self.targets if c.id in self.took]  # in placement order
        if not self.holders:
            first = f"; first refusal: {self.reasons[0]}" if self.reasons else ""
            text = f"no node stored the item ({len(self.targets)} were asked){first}"
            self.fail(PutError(text, frozenset(self.codes)))
            return
        if self.remember:
            self.engine.remember(self.item, self.ttl)
        engine = self.engine
        if self.replica and not self.kept and len(self.took) >= engine.k:
            engine.handed_off(self.item.key)  # k nearer nodes hold it: they replicate it
        self.finish(self.holders)


class Get(Operation):
    """The newest valid item under ``key``: a blob held here at once (it cannot change), else
    a FIND_VALUE lookup whose newest version wins over our own copy. Fails with
    ``NotFoundError``. Peers that sent an older version are given the newest afterwards, by a
    ``Repair`` the reader does not wait for."""

    def __init__(self, key: int) -> None:
        super().__init__()
        self.key = key
        self.lookup: Lookup | None = None

    def begin(self) -> None:
        local = self.engine.get(self.key, self.engine.now)
        if local is not None and not local.mutable:
            self.finish(local)
            return
        self.lookup = Lookup(self.key, find_value=True)
        self.spawn(self.lookup)

    def child_ended(self, child: Operation) -> None:
        engine, machine = self.engine, child.result
        for peer, error in machine.bad_values:
            engine.log(
                "warn", "{peer} sent an invalid value: {error}", peer=str(peer), error=str(error)
            )
        best, stale = engine.newest(self.key, machine, engine.now, DEFAULT_TTL)
        if best is None:
            self.fail(NotFoundError(f"no value found under {id_to_hex(self.key)[:16]}..."))
            return
        if stale:
            engine.log(
                "info",
                "{count} peers sent an older version of {key} than seq {seq}; repairing them",
                count=len(stale),
                key=id_to_hex(self.key)[:12],
                seq=best.seq,
            )
            engine.begin(Repair(best, stale), None)
        self.finish(best)


class Repair(_Gather):
    """Store ``item``, the newest version a get found, on the peers that sent an older one;
    ends with how many took it."""

    def __init__(self, item: Item, stale: list[Contact]) -> None:
        super().__init__()
        self.item, self.stale = item, stale
        self.took = 0

    def begin(self) -> None:
        self.send_all(self.stale, Store, item=self.item, ttl=DEFAULT_TTL)

    def answered(self, request: Request, reply: Message) -> None:
        self.took += 1

    def all_ended(self) -> None:
        self.finish(self.took)


def _stale(error: Exception) -> bool:
    """Whether a store was refused for holding an older version than the peer's."""
    return isinstance(error, RemoteError) and error.code == ErrorCode.STALE_SEQUENCE


class CatchUp(_Gather):
    """Fetch the newer version of ``item`` from ``holders`` that refused this node's copy of
    it as stale (``STALE_SEQUENCE``: a store of replication, of republishing or of a handoff to
    a newcomer), and keep it in place of ours, for the time ours had left; ends with whether it
    did.

    A holder that missed an update (it was away, or not among the k closest the put's lookup
    found) would otherwise replicate the old version every interval, refused each time by
    every holder of the new one, and hand the old one to any reader that asked it alone,
    until it expired. The first ``CATCH_UP_ASKS`` of them are asked with a FIND_VALUE; an
    answer that does not verify against the key, or is not newer than ours, changes nothing,
    so a refuser that lies costs one request and leaves our copy as it was."""

    def __init__(self, item: Item, holders: list[Contact]) -> None:
        super().__init__()
        self.item, self.holders = item, holders[:CATCH_UP_ASKS]
        self.newest = item
        self.source: Contact | None = None

    def begin(self) -> None:
        self.send_all(self.holders, FindValue, key=self.item.key)

    def answered(self, request: Request, reply: Message) -> None:
        if not isinstance(reply, Value):
            return  # it holds no copy now (it expired there, or it never had one)
        assert request.contact is not None
        try:
            reply.item.verify_for(self.item.key)
        except ProtocolError as e:
            self.engine.log(
                "warn", "{peer} sent an invalid value: {error}", peer=request.peer, error=str(e)
            )
            return
        if reply.item.seq > self.newest.seq:
            self.newest, self.source = reply.item, request.contact

    def all_ended(self) -> None:
        engine, key, newest = self.engine, self.item.key, self.newest
        held = engine.storage.get(key)
        if (
            self.source is None  # nothing newer came
            or held is None
            or held.expires_at <= engine.now  # our copy is gone: nothing to replace
            or held.item.seq >= newest.seq  # a newer one came meanwhile (a put, a read repair)
        ):
            self.finish(False)
            return
        fields = {"key": id_to_hex(key)[:12], "new": newest.seq, "peer": str(self.source)}
        error = engine.store_here(newest, held.expires_at - engine.now, None)
        if error is None:
            engine.log("info", "caught up on {key}: seq {new} from {peer}", **fields)
        else:
            text = "did not take seq {new} of {key} from {peer}: {reason}"
            engine.log("warn", text, reason=str(error), **fields)
        self.finish(error is None)


class PingCheck(_Gather):
    """Ping-before-evict: ping the head of a full bucket; it stays if it answers (with a proof
    of its id, when challenged), is dropped if it proves something else, and counts a failure
    (evicted, when a newcomer waits) if it does not answer. A contact that already proved its
    id from its present address is not challenged again: a plain ping, answered from its id,
    will do."""

    def __init__(self, contact: Contact) -> None:
        super().__init__()
        self.contact = contact
        self.challenge: bytes | None = None

    def begin(self) -> None:
        if self.engine.has_proved(self.contact):
            self.send_all([self.contact], Ping)
        else:
            self.challenge = self.engine.challenge(self.contact)
            self.send_all([self.contact], Ping, challenge=self.challenge)

    def answered(self, request: Request, reply: Message) -> None:
        if self.challenge is not None:
            self.engine.proven(self.contact, self.challenge, reply)

    def refused(self, request: Request, error: Exception) -> None:
        self.engine.log(
            "info", "ping to {peer} failed: {error}", peer=request.peer, error=str(error)
        )
        self.engine.peer_failed(self.contact)

    def all_ended(self) -> None:
        self.finish()


class Handoff(_Gather):
    """Copy ``records`` to a contact new to the table that is now among their k closest,
    ``HOUSEKEEPING_CONCURRENCY`` at a time: a node of a small network can hand a newcomer
    thousands at once, and every other request to it would wait behind them (``Pacer``)."""

    def __init__(self, contact: Contact, records: list[StoredItem]) -> None:
        super().__init__()
        self.contact, self.records = contact, records
        self.copied = 0

    def begin(self) -> None:
        self.queue = self.records[::-1]
        self._fill()

    def _fill(self) -> None:
        now = self.engine.now
        while self.queue and self.waiting < HOUSEKEEPING_CONCURRENCY:
            record = self.queue.pop()
            if record.expires_at > now:  # (one may expire while it waits its turn)
                self.waiting += 1
                self.send(self.contact, Store, item=record.item, ttl=record.expires_at - now)
        if not self.waiting:
            self.all_ended()

    def _one_ended(self) -> None:
        self.waiting -= 1
        self._fill()

    def answered(self, request: Request, reply: Message) -> None:
        self.copied += 1

    def refused(self, request: Request, error: Exception) -> None:
        self.engine.log(
            "info",
            "could not copy an item to the new contact {peer}: {reason}",
            peer=request.peer,
            reason=str(error),
        )
        if _stale(error):  # it came back with a newer version than ours: take it
            assert isinstance(request.message, Store)
            self.engine.begin(CatchUp(request.message.item, [self.contact]), None)

    def all_ended(self) -> None:
        self.finish(self.copied)


class _Children(Operation):
    """An operation that runs children, at most ``limit`` at once, and counts the successes;
    it ends with that count once the last child has ended."""

    def __init__(self, limit: int = 0) -> None:
        super().__init__()
        self.limit = limit
        self.queue: list[Operation] = []
        self.running = self.succeeded = 0

    def run_all(self, children: list[Operation]) -> None:
        """Start ``children`` (as many as the limit allows; the rest as others end)."""
        self.queue = children[::-1]
        self._fill()

    def wanted(self, child: Operation) -> bool:
        """Whether ``child``, its turn come, is still to run (it is dropped if not)."""
        return True

    def more(self) -> list[Operation]:
        """Children to run after all the others have ended (none: it ends then)."""
        return []

    def _fill(self) -> None:
        while True:
            while self.queue and (not self.limit or self.running < self.limit):
                child = self.queue.pop()
                if self.wanted(child):
                    self.running += 1
                    self.spawn(child)
            if self.queue or self.running:
                return
            self.queue = self.more()[::-1]
            if not self.queue:
                self.finish(self.succeeded)
                return

    def child_ended(self, child: Operation) -> None:
        self.running -= 1
        self.succeeded += child.error is None
        self._fill()


class Refresh(_Children):
    """Look up a random id in every bucket no lookup has targeted for ``interval`` seconds;
    ends with how many buckets that was."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval

    def begin(self) -> None:
        targets = self.engine.refresh_targets(self.engine.now, self.interval)
        self.run_all([Lookup(target) for target in targets])


class PublishAll(_Children):
    """Publish each of ``jobs`` (item, ttl), ``HOUSEKEEPING_CONCURRENCY`` at a time (so a large
    store cannot flood the network in one go); ends with how many were stored somewhere. They
    are copies held here, stored again: a refusal as stale starts a ``CatchUp``."""

    def __init__(self, jobs: list[tuple[Item, float]]) -> None:
        super().__init__(HOUSEKEEPING_CONCURRENCY)
        self.jobs = jobs

    def begin(self) -> None:
        self.run_all([Publish(item, ttl, catch_up=True) for item, ttl in self.jobs])


class Replicate(PublishAll):
    """Replication's round: publish each of ``jobs`` as ``PublishAll`` does, but check again,
    as each one's turn comes, that its key is still due (``Engine.replication_due``): a
    round of a few hundred items runs for tens of seconds, and a peer's replication of a key
    that reaches this node meanwhile makes its own unnecessary (the Kademlia paper's rule, at
    the moment it can still save a lookup). Its stores carry ``replica``, so that a node
    among the k closest that did not hold the key yet (a lookup's view differs a little from
    node to node) takes them as this interval's replication too, instead of replicating the
    key again itself. At its end it takes up the keys it skipped for a new version's
    arrival, once a contact has come to look dead meanwhile (``more``). Ends with how many
    were stored somewhere; a key skipped counts as neither."""

    def __init__(self, jobs: list[tuple[Item, float]], fresh: float) -> None:
        super().__init__(jobs)
        self.fresh = fresh
        #: Keys found no longer due when their turn came.
        self.skipped = 0

    def begin(self) -> None:
        #: The routing table's count of losses when the round last looked at every key.
        self.losses = self.engine.routing.losses
        #: The keys this round has taken up.
        self.taken = {item.key for item, _ in self.jobs}
        self.run_all(self._publishes(self.jobs))

    def _publishes(self, jobs: list[tuple[Item, float]]) -> list[Operation]:
        return [Publish(item, ttl, replica=True, catch_up=True) for item, ttl in jobs]

    def wanted(self, child: Operation) -> bool:
        assert isinstance(child, Publish)
        engine = self.engine
        due = engine.replication_due(child.item.key, engine.now, self.fresh)
        self.skipped += not due
        return due

    def more(self) -> list[Operation]:
        """Once every key taken up has had its turn: if a contact has come to look dead since
        the round looked at every key (its own lookups find the dead of a crash: this is how
        a node learns of it), the keys it skipped for a new version's arrival that are now
        due, and again until no more are. A node skips those only while the nearest holder
        may yet replicate them, and a contact lost is the sign that it may be gone. Without
        this, after a 50% crash of 200 nodes right after the puts, 44 of 1,000 keys (those
        whose nearest holder had died) were on fewer than 16 of their 20 closest live nodes
        an interval later, as few as 7: each surviving holder's round began before it had
        seen a loss, and its own lookups found the dead only once it was under way. Keys a
        peer's replication stored here are left to the next round, as before (the peer did
        replicate them); in an idle network no contact is lost, and nothing changes."""
        engine = self.engine
        losses = engine.routing.losses
        if losses == self.losses:
            return []
        self.losses = losses
        jobs = engine.replication_jobs(engine.now, self.fresh, arrivals=True)
        jobs = [(item, ttl) for item, ttl in jobs if item.key not in self.taken]
        self.taken.update(item.key for item, _ in jobs)
        return self._publishes(jobs)


class Join(Operation):
    """Join the network through ``seeds``: ping each with an identity challenge, add those that
    prove their id, look up our own id (the contacts near us learn of us), then refresh every
    bucket; ends with the number of contacts known, or fails with ``JoinError``."""

    def __init__(self, seeds: Iterable[Address]) -> None:
        super().__init__()
        self.seeds = check_seeds(seeds)

    def begin(self) -> None:
        self.challenges: dict[int, bytes] = {}
        self.left = len(self.seeds)
        for address in self.seeds:
            challenge = self.engine.challenge(address)
            self.challenges[self.send(address, Ping, challenge=challenge).rid] = challenge
        if not self.seeds:
            self._pinged()

    def replied(self, request: Request, reply: Message) -> None:
        contact = Contact(reply.sender, *request.address)
        if self.engine.proven(contact, self.challenges[request.rid], reply):
            self.engine.heard_from(contact)
        self._one_ended()

    def request_failed(self, request: Request, error: Exception) -> None:
        self.engine.log(
            "warn",
            "seed {host}:{port} did not answer: {reason}",
            host=request.address[0],
            port=request.address[1],
            reason=str(error),
        )
        self._one_ended()

    def _one_ended(self) -> None:
        self.left -= 1
        if not self.left:
            self._pinged()

    def _pinged(self) -> None:
        if not len(self.engine.routing):
            count = len(self.seeds)
            self.fail(JoinError(f"none of the {count} seed nodes answered and proved its id"))
            return
        self.step = "lookup"
        self.spawn(Lookup(self.engine.id))

    def child_ended(self, child: Operation) -> None:
        if self.step == "lookup":
            self.step = "refresh"
            self.spawn(Refresh(JOIN_REFRESH))
        else:
            self.engine.joined = True
            self.finish(len(self.engine.routing))
