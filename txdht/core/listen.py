"""Listening to a key: being told, within a round trip, of every newer version stored under it.

Theory of operation
-------------------
Two sides, both driven by the engine like every operation.

**The holder** keeps a registry (``Listeners``) of the listens peers asked it for: a ``listen``
request names a key and a lease (seconds); the holder answers ``listening`` at once, with the
lease it grants (clamped to its ``min_lease`` and ``max_lease``) and the newest version it holds
(unless the listener already has it), and registers the listen, keyed by (key, listener id,
listener host). A ``listen`` with lease 0 cancels it; so does the lease running out, the
connection it came on closing, and a listener that never acknowledges. Whenever the engine
stores a version newer than the one it held (a ``store``, read repair, replication, a newcomer's
handoff: ``Engine.store`` calls ``changed``), every listener of that key is sent an ``update``
request; when the item expires here, an ``expired`` request. Each is a ``Push`` operation: the
request goes on the connection the listen came on (so a listener behind NAT, or one that does
not listen at all, port 0, is reached), is sent again (``PUSH_RETRIES`` times) while it is not
acknowledged, and a listener that never acknowledges, or answers ``NOT_LISTENING``, is dropped.
The registry is bounded: listens in all, per peer (its IP address, or its connection on
loopback, as the rate limiter counts), per key (``Limits``), each refused with its own code.

**The listener** is the ``Listen`` operation, which runs until it is cancelled. It looks the key
up (the k closest nodes, as a put finds them), sends each a ``listen``, and renews each lease
halfway through; it looks the key up again every ``refresh`` seconds (new nodes near the key
after churn get a listen, nodes no longer among the k closest get a cancel), and sooner when
half its holders are gone. When the connection a listen went on drops, it listens again at once
(a new connection; if that fails the holder is gone). A listen whose connection closes before
it is answered (ours replaced as overdue, or the holder's closed) is asked again after
``RELISTEN_DELAY`` seconds, up to ``RELISTEN_TRIES`` times, before the holder counts as gone: a
closed connection says nothing of the holder, and until the next lookup of the key nothing else
would ask it again. A holder that answers ``UNKNOWN_TYPE`` (a
node older than listening) is polled with ``find_value`` instead. This node's own copy is
watched too (``Engine.store`` tells local listens directly), so a listener among the k closest
hears of a version stored on itself. Every version from any source (an answer, a push, a poll,
its own store) is verified against the key, and goes to the application (a ``Notify`` command)
only when it is newer than the last one delivered: each sequence number once, in increasing
order, whichever holder told of it first. An ``expired`` notice is believed only after a
``find_value`` lookup of the key finds no version as new as the last delivered (one holder's
copy can expire before the others': it missed a republish), and is delivered once per version,
as that version's expiry (``Listen.expiry_told``: a notice's ``seq`` is an unsigned claim).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from txdht.core import messages as m
from txdht.core.commands import Notify
from txdht.core.errors import ErrorCode, ProtocolError, RemoteError
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import Item, to_base64
from txdht.core.limits import Limits, peer_key
from txdht.core.operations import Lookup, Operation, Request

if TYPE_CHECKING:
    from collections.abc import Iterator

    from txdht.core.engine import Engine, Timer

__all__ = [
    "LEASE",
    "LOOKUP_GAP",
    "POLL",
    "PUSH_RETRIES",
    "REFRESH",
    "RELISTEN_DELAY",
    "RELISTEN_TRIES",
    "RENEW",
    "Listen",
    "Listener",
    "Listeners",
    "Notice",
    "Push",
    "Unlisten",
    "answer",
    "changed",
    "expiring",
    "link_lost",
    "links_in_use",
]

Address = tuple[str, int]
#: The lease a listener asks for, in seconds (a holder may grant less or more: its bounds).
LEASE = 600.0
#: A listener renews a lease once this fraction of it has passed.
RENEW = 0.5
#: Seconds between a listener's lookups of its key (the k closest change with churn).
REFRESH = 600.0
#: Seconds between polls of a holder that does not know the ``listen`` request (an old node).
POLL = 60.0
#: Times a holder sends an update or expired notice again while it is not acknowledged (each
#: try waits the rpc timeout): four tries in all, then the listener is dropped.
PUSH_RETRIES = 3
#: A listener that has lost half its holders looks the key up again, but not sooner than this
#: many seconds after its last lookup.
LOOKUP_GAP = 30.0
#: A listen whose connection closed before it was answered is asked again this many seconds
#: later, up to ``RELISTEN_TRIES`` times in a row (a soak of real nodes, their connections
#: replaced under load, lost versions for want of it: docs/reliability.md).
RELISTEN_DELAY = 1.0
RELISTEN_TRIES = 3


@dataclass(frozen=True, slots=True)
class Notice:
    """What a listening application is told: ``item``, a newer version of the item under
    ``key``, or (``item`` None) that version ``seq`` expired and no newer one is stored."""

    key: int
    seq: int
    item: Item | None = None

    @property
    def expired(self) -> bool:
        """Whether the item expired."""
        return self.item is None

    @property
    def value(self) -> bytes | None:
        """The new version's value (None: expired)."""
        return None if self.item is None else self.item.value

    def to_json(self) -> dict[str, Any]:
        """``{"key", "seq", "value"}`` (base64) for a new version, ``{"key", "seq", "expired":
        true}`` for an expiry: what the HTTP API's event stream and ``txdht watch`` carry."""
        head: dict[str, Any] = {"key": id_to_hex(self.key), "seq": self.seq}
        if self.item is None:
            return {**head, "expired": True}
        return {**head, "value": to_base64(self.item.value)}


# -- the holder's side -----------------------------------------------------------------------


class Listener:
    """One listen this node holds for a peer: the key, who, where to push, until when."""

    __slots__ = ("expires_at", "host", "ident", "key", "link", "peer", "port")

    def __init__(
        self,
        key: int,
        ident: int,
        host: str,
        port: int,
        link: object,
        peer: object,
        expires_at: float,
    ) -> None:
        self.key, self.ident, self.host, self.port = key, ident, host, port
        #: The connection the listen came on (pushes go there); None in the simulator.
        self.link = link
        #: Whom it counts against (``peer_key``: the IP address, or the connection on loopback).
        self.peer = peer
        self.expires_at = expires_at

    @property
    def target(self) -> Contact | Address:
        """Where a push goes: the listener as a contact when it listens (its reply must come
        from its id), else its bare address (port 0: only its connection reaches it)."""
        return Contact(self.ident, self.host, self.port) if self.port else (self.host, 0)


class Listeners:
    """The listens this node holds for its peers, bounded by ``limits`` (module docstring)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_key: dict[int, dict[tuple[int, str], Listener]] = {}
        self._by_link: dict[object, set[Listener]] = {}
        self._per_peer: Counter[object] = Counter()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def keys(self) -> list[int]:
        """The keys listened to."""
        return list(self._by_key)

    def entries(self) -> Iterator[Listener]:
        """Every listen held (expired leases included, until purged)."""
        for listeners in self._by_key.values():
            yield from listeners.values()

    def of(self, key: int, now: float) -> list[Listener]:
        """The listens on ``key`` whose lease has not run out (those that have are dropped)."""
        listeners = self._by_key.get(key)
        if not listeners:
            return []
        live = []
        for entry in list(listeners.values()):
            if entry.expires_at > now:
                live.append(entry)
            else:
                self.drop(entry)
        return live

    def holds(self, entry: Listener) -> bool:
        """Whether ``entry`` is still held."""
        return self._by_key.get(entry.key, {}).get((entry.ident, entry.host)) is entry

    def register(
        self,
        key: int,
        ident: int,
        host: str,
        port: int,
        link: object,
        peer: object,
        lease: float,
        now: float,
    ) -> float:
        """Hold (or renew) the listen of ``ident`` at ``host`` on ``key``; the lease granted.
        ``ProtocolError`` (LISTENS_FULL, PEER_LISTENS_FULL, KEY_LISTENS_FULL) if it is new and
        over a limit."""
        limits = self.limits
        granted = min(max(lease, limits.min_lease), limits.max_lease, m.MAX_LEASE)
        entry = self._by_key.get(key, {}).get((ident, host))
        if entry is None:
            self._admit(key, peer, now)
            entry = Listener(key, ident, host, port, link, peer, now + granted)
            self._by_key.setdefault(key, {})[(ident, host)] = entry
            self._per_peer[peer] += 1
            self._count += 1
        else:  # a renewal: perhaps from a new connection (the old one dropped)
            self._unlink(entry)
            self._per_peer[entry.peer] -= 1
            self._per_peer[peer] += 1
            entry.port, entry.link, entry.peer = port, link, peer
            entry.expires_at = now + granted
        if link is not None:
            self._by_link.setdefault(link, set()).add(entry)
        return granted

    def _admit(self, key: int, peer: object, now: float) -> None:
        problem = self._full(key, peer)
        if problem is not None:
            self.purge(now)  # leases that ran out do not count
            problem = self._full(key, peer)
        if problem is not None:
            raise ProtocolError(*problem)

    def _full(self, key: int, peer: object) -> tuple[ErrorCode, str] | None:
        limits = self.limits
        if self._count >= limits.max_listens:
            return ErrorCode.LISTENS_FULL, f"this node holds {limits.max_listens} listens"
        if self._per_peer[peer] >= limits.max_listens_per_peer:
            held = limits.max_listens_per_peer
            return ErrorCode.PEER_LISTENS_FULL, f"this node holds {held} listens of yours"
        if len(self._by_key.get(key, ())) >= limits.max_listens_per_key:
            held = limits.max_listens_per_key
            return ErrorCode.KEY_LISTENS_FULL, f"this node holds {held} listens on this key"
        return None

    def drop(self, entry: Listener) -> bool:
        """Stop holding ``entry``; whether it was held."""
        if not self.holds(entry):
            return False
        listeners = self._by_key[entry.key]
        del listeners[(entry.ident, entry.host)]
        if not listeners:
            del self._by_key[entry.key]
        self._unlink(entry)
        self._per_peer[entry.peer] -= 1
        if not self._per_peer[entry.peer]:
            del self._per_peer[entry.peer]
        self._count -= 1
        return True

    def _unlink(self, entry: Listener) -> None:
        on_link = self._by_link.get(entry.link)
        if on_link is not None:
            on_link.discard(entry)
            if not on_link:
                del self._by_link[entry.link]

    def cancel(self, key: int, ident: int, host: str) -> bool:
        """Drop the listen of ``ident`` at ``host`` on ``key`` (a lease of 0); whether there
        was one."""
        entry = self._by_key.get(key, {}).get((ident, host))
        return entry is not None and self.drop(entry)

    def link_lost(self, link: object) -> int:
        """The connection ``link`` closed: drop the listens that came on it; how many."""
        entries = list(self._by_link.get(link, ()))
        for entry in entries:
            self.drop(entry)
        return len(entries)

    def purge(self, now: float) -> int:
        """Drop every listen whose lease has run out; how many."""
        expired = [entry for entry in self.entries() if entry.expires_at <= now]
        for entry in expired:
            self.drop(entry)
        return len(expired)


def answer(
    engine: Engine, request: m.Message, host: str, port: int, link: object
) -> m.Message | None:
    """The reply to a listen request (``listen``, ``update``, ``expired``) from ``host``, on
    the connection from its port ``port`` (``link``); None for other requests."""
    if isinstance(request, m.Listen):
        return _listen(engine, request, host, port, link)
    if isinstance(request, m.Update | m.Expired):
        return _pushed(engine, request)
    return None


def _listen(engine: Engine, request: m.Listen, host: str, port: int, link: object) -> m.Message:
    key, registry = request.key, engine.listeners
    if not request.lease:
        registry.cancel(key, request.sender, host)
        return engine.message(m.Listening, request.rid, lease=0.0)
    peer = peer_key(host, port)
    now = engine.now
    granted = registry.register(
        key, request.sender, host, request.port, link, peer, request.lease, now
    )
    item = engine.get(key, now)
    if item is not None and request.seq is not None and item.seq <= request.seq:
        item = None  # the listener has it
    return engine.message(m.Listening, request.rid, lease=granted, item=item)


def _pushed(engine: Engine, request: m.Update | m.Expired) -> m.Message:
    listens = _local(engine, request.key)
    if not listens:
        text = f"this node does not listen to {id_to_hex(request.key)[:16]}..."
        raise ProtocolError(ErrorCode.NOT_LISTENING, text)
    if isinstance(request, m.Update):
        request.item.verify_for(request.key, engine.max_value)
        for op in listens:
            engine.feed(op, op.pushed, request.item)
    else:
        for op in listens:
            engine.feed(op, op.expiry_told, request.seq)
    return engine.message(m.Ok, request.rid)


def _local(engine: Engine, key: int) -> list[Listen]:
    """The running listens of this node on ``key``."""
    listens = engine.listening.get(key)
    return [op for op in listens if not op.ended] if listens else []


def changed(engine: Engine, item: Item) -> None:
    """``item`` was stored here, newer than what was held: tell every listener of its key."""
    key = item.key
    for entry in engine.listeners.of(key, engine.now):
        engine.begin(Push(entry, m.Update, key=key, item=item), None)
    for op in _local(engine, key):
        engine.feed(op, op.pushed, item)


def expiring(engine: Engine, now: float) -> int:
    """Tell the listeners of each key whose item has expired here (before it is dropped), and
    drop listens whose lease ran out; how many keys expired."""
    engine.listeners.purge(now)
    keys = set(engine.listeners.keys()) | {k for k in engine.listening if _local(engine, k)}
    count = 0
    for key in keys:
        stored = engine.storage.get(key)
        if stored is None or stored.expires_at > now:
            continue
        count += 1
        seq = stored.item.seq
        for entry in engine.listeners.of(key, now):
            engine.begin(Push(entry, m.Expired, key=key, seq=seq), None)
        for op in _local(engine, key):
            engine.feed(op, op.expiry_told, seq)
    return count


def links_in_use(engine: Engine) -> set[object]:
    """The connections listens depend on, either way: those listens are held on here (a
    holder's pushes go on them), and those this node's listens went on to their holders (the
    holders push on them). ``Streams`` keeps them when it lets idle connections go."""
    links: set[object] = {entry.link for entry in engine.listeners.entries()}
    for listens in engine.listening.values():
        for op in listens:
            links.update(holder.link for holder in op.holders.values())
    return links


def link_lost(engine: Engine, link: object) -> None:
    """The connection ``link`` closed: drop the listens held on it, and let this node's listens
    whose holder it led to listen again."""
    engine.listeners.link_lost(link)
    for listens in list(engine.listening.values()):
        for op in list(listens):
            if not op.ended:
                engine.feed(op, op.link_lost, link)


class Push(Operation):
    """Send one ``update`` or ``expired`` request to the listener of ``entry``, on the
    connection its listen came on; again, up to ``PUSH_RETRIES`` times, while it is not
    acknowledged. A listener that never acknowledges, or answers ``NOT_LISTENING``, is dropped.
    Ends with whether it was acknowledged."""

    def __init__(self, entry: Listener, cls: type[m.Message], **fields: Any) -> None:
        super().__init__()
        self.entry, self.cls, self.fields = entry, cls, fields
        self.tries = 0

    def begin(self) -> None:
        self._send()

    def _send(self) -> None:
        self.tries += 1
        self.send(self.entry.target, self.cls, via=self.entry.link, **self.fields)

    def replied(self, request: Request, reply: m.Message) -> None:
        self.finish(True)

    def request_failed(self, request: Request, error: Exception) -> None:
        registry = self.engine.listeners
        if not registry.holds(self.entry):  # cancelled, or its connection closed, meanwhile
            self.finish(False)
        elif isinstance(error, RemoteError) and error.code == ErrorCode.NOT_LISTENING:
            registry.drop(self.entry)
            self.finish(False)
        elif self.tries <= PUSH_RETRIES:
            self._send()
        else:
            self.engine.log(
                "info",
                "dropped the listen of {peer}: {tries} {type} requests not acknowledged",
                peer=request.peer,
                tries=self.tries,
                type=self.cls.TYPE,
            )
            registry.drop(self.entry)
            self.finish(False)


# -- the listener's side ---------------------------------------------------------------------


class _Holder:
    """A node a listen watches: asked (a listen is out), listening, or polled (it is older
    than listening)."""

    __slots__ = ("contact", "due", "link", "relistens", "state")

    def __init__(self, contact: Contact) -> None:
        self.contact = contact
        self.state = "asking"
        #: Listens asked again in a row after their connection closed (``RELISTEN_TRIES``).
        self.relistens = 0
        #: The connection its listen went on (``Streams``; None in the simulator).
        self.link: object = None
        #: When to renew its lease, or to poll it next.
        self.due = math.inf


class Listen(Operation):
    """Listen to ``key`` until cancelled (module docstring): each newer version, and each
    expiry, becomes a ``Notify`` command carrying a ``Notice``.

    :param lease: the lease asked of each holder, in seconds.
    :param refresh: seconds between lookups of the key.
    :param poll: seconds between polls of a holder older than listening.
    """

    def __init__(
        self, key: int, lease: float = LEASE, refresh: float = REFRESH, poll: float = POLL
    ) -> None:
        super().__init__()
        if not 0 < lease <= m.MAX_LEASE or refresh <= 0 or poll <= 0:
            raise ValueError(
                f"a lease is above 0 and at most {m.MAX_LEASE:g} s, a refresh and a poll "
                f"interval above 0 s, not {lease!r}, {refresh!r}, {poll!r}"
            )
        self.key, self.lease, self.refresh, self.poll = key, lease, refresh, poll
        #: The last version delivered (-1: none yet), and whether it was an expiry.
        self.seq = -1
        self.expired = False
        #: Notices delivered so far.
        self.delivered = 0
        #: The nodes watched, by id; ids of nodes that answered UNKNOWN_TYPE (polled for good).
        self.holders: dict[int, _Holder] = {}
        self.old: set[int] = set()
        #: The lookup running (to find the holders), and the one checking an expiry notice.
        self.looking: Operation | None = None
        self.checking: Operation | None = None
        #: The version an expiry check is about.
        self.checked = -1
        self.refresh_at = 0.0
        self.looked_at = -math.inf
        self._timer: Timer | None = None

    # -- its life --

    def begin(self) -> None:
        engine = self.engine
        engine.listening.setdefault(self.key, set()).add(self)
        local = engine.get(self.key, engine.now)
        if local is not None:
            self.pushed(local)
        self._look()

    def cancelled(self) -> None:
        engine = self.engine
        listens = engine.listening[self.key]
        listens.discard(self)
        if not listens:
            del engine.listening[self.key]
        told = [h.contact for h in self.holders.values() if h.state != "polling"]
        if told and not engine.stopping:  # a stopping node's connections close: enough
            engine.begin(Unlisten(self.key, told), None)

    def listening_to(self) -> list[Contact]:
        """The nodes whose listen is granted."""
        return [h.contact for h in self.holders.values() if h.state == "listening"]

    def polled(self) -> list[Contact]:
        """The nodes polled instead (older than listening)."""
        return [h.contact for h in self.holders.values() if h.state == "polling"]

    def _look(self) -> None:
        now = self.engine.now
        self.looked_at = now
        self.refresh_at = now + self.refresh
        self.looking = self.spawn(Lookup(self.key))

    def child_ended(self, child: Operation) -> None:
        if child is self.looking:
            self.looking = None
            if child.error is None:
                self._found(child.result.closest()[: self.engine.k])
        else:
            self._checked(child)
        self._arm()

    def _found(self, closest: list[Contact]) -> None:
        """The lookup found ``closest``: listen to each (a renewal for those listened to
        already), and cancel the listens of nodes no longer among them."""
        wanted = {contact.id for contact in closest}
        for ident, holder in list(self.holders.items()):
            if ident not in wanted:
                del self.holders[ident]
                if holder.state != "polling":  # granted, or asked (perhaps granted by now)
                    self.send(holder.contact, m.Listen, key=self.key, lease=0.0)
        for contact in closest:
            known = self.holders.get(contact.id)
            if known is None or known.state == "listening":
                self._subscribe(contact)

    def _subscribe(self, contact: Contact) -> None:
        holder = self.holders.get(contact.id)
        if holder is None:
            holder = self.holders[contact.id] = _Holder(contact)
        if contact.id in self.old:
            holder.state, holder.due = "polling", self.engine.now
            return
        holder.state, holder.due = "asking", math.inf
        seq = None if self.seq < 0 or self.expired else self.seq
        self.send(contact, m.Listen, key=self.key, lease=self.lease, seq=seq)

    def _arm(self) -> None:
        """Keep one timer, at the soonest of the next lookup, renewal and poll."""
        due = min([self.refresh_at, *(h.due for h in self.holders.values())])
        timer = self._timer
        if timer is not None and not timer.cancelled:
            if timer.when <= due:
                return
            timer.cancel()
        self._timer = self.engine.call_at(due, self._tick, op=self)
        self.keep(self._timer)

    def _tick(self) -> None:
        now = self.engine.now
        if self.refresh_at <= now and self.looking is None:
            self._look()
        for holder in list(self.holders.values()):
            if holder.due > now:
                continue
            if holder.state == "polling":
                holder.due = now + self.poll
                self.send(holder.contact, m.FindValue, key=self.key)
            else:
                self._subscribe(holder.contact)  # renew the lease
        self._arm()

    # -- what its requests brought --

    def replied(self, request: Request, reply: m.Message) -> None:
        contact = request.contact
        assert contact is not None
        message = request.message
        holder = self.holders.get(contact.id)
        if isinstance(message, m.Listen):
            if not message.lease or holder is None or holder.state != "asking":
                return  # a cancel's answer, or the holder left meanwhile
            if isinstance(reply, m.Listening) and reply.lease > 0:
                holder.state, holder.link, holder.relistens = "listening", request.link, 0
                holder.due = self.engine.now + reply.lease * RENEW
                if reply.item is not None:
                    self._received(reply.item, contact)
            else:
                self.engine.peer_failed(contact, f"it answered a listen with a {reply.TYPE}")
                self._gone(contact.id)
        elif isinstance(reply, m.Value):
            self._received(reply.item, contact)
        self._arm()

    def request_failed(self, request: Request, error: Exception) -> None:
        contact = request.contact
        assert contact is not None
        message = request.message
        holder = self.holders.get(contact.id)
        if holder is None or (isinstance(message, m.Listen) and not message.lease):
            return
        if isinstance(message, m.FindValue):
            self._gone(contact.id)  # a polled node that fails: the next lookup may bring it back
        else:  # a listen (none is sent again to a holder while one is out: it is "asking")
            if isinstance(error, RemoteError) and error.code == ErrorCode.UNKNOWN_TYPE:
                self.old.add(contact.id)  # an older node: poll it (now, for the current value)
                holder.state, holder.due = "polling", self.engine.now
            elif (
                not isinstance(error, RemoteError | TimeoutError)
                and holder.relistens < RELISTEN_TRIES
            ):  # its connection closed (or could not open): ask again soon, on a new one
                holder.relistens += 1
                holder.state, holder.due = "waiting", self.engine.now + RELISTEN_DELAY
            else:
                self.engine.log(
                    "info",
                    "{peer} did not take a listen on {key}: {error}",
                    peer=str(contact),
                    key=id_to_hex(self.key)[:12],
                    error=str(error),
                )
                self._gone(contact.id)
        self._arm()

    def link_lost(self, link: object) -> None:
        """The connection ``link`` closed: listen again to the holders it led to."""
        for holder in list(self.holders.values()):
            if holder.state == "listening" and holder.link is link:
                self._subscribe(holder.contact)
        self._arm()

    def _gone(self, ident: int) -> None:
        """A holder is gone: with half of them gone, look the key up again soon."""
        self.holders.pop(ident, None)
        if len(self.holders) < self.engine.k / 2:
            self.refresh_at = min(self.refresh_at, self.looked_at + LOOKUP_GAP)

    def _received(self, item: Item, peer: Contact) -> None:
        """A peer sent ``item`` (answering a listen or a poll): deliver it if it verifies."""
        try:
            item.verify_for(self.key, self.engine.max_value)
        except ProtocolError as e:
            self.engine.peer_failed(peer, f"it sent an item that does not verify: {e}")
            return
        self.pushed(item)

    # -- what it delivers --

    def pushed(self, item: Item) -> None:
        """A version ``item`` (verified) is stored somewhere: deliver it if it is newer than
        the last delivered (or brings back the version that expired)."""
        if item.seq > self.seq or (self.expired and item.seq == self.seq):
            self.seq, self.expired = item.seq, False
            self._deliver(Notice(self.key, item.seq, item))

    def expiry_told(self, seq: int) -> None:
        """A holder says version ``seq`` expired: check that no node holds the last version
        delivered (or a newer one) before telling the application that it expired.

        Nothing signs an expiry, so ``seq`` is only a claim: one about a version older than the
        last delivered is dropped, and one about a newer version (an honest holder's whose
        push was lost, or any number a hostile one makes up) is taken as one about the last
        delivered, the only version this listen knows to exist. So a made-up notice can at
        worst tell of an expiry the check confirms, and never holds back a later version
        (it once could: ``seq`` 2**63 - 1 silenced the listen for good). With nothing
        delivered yet there is nothing to tell."""
        if self.seq < 0 or seq < self.seq or self.expired:
            return
        if self.checking is None:
            self.checked = self.seq
            self.checking = self.spawn(Lookup(self.key, find_value=True))

    def _checked(self, check: Operation) -> None:
        self.checking = None
        if self.seq != self.checked:
            return  # a newer version was delivered meanwhile: the claim is moot
        engine = self.engine
        found = [engine.get(self.key, engine.now)]
        if check.error is None:
            found.append(check.result.value)
        best = max((item for item in found if item is not None), key=lambda i: i.seq, default=None)
        if best is not None and best.seq >= self.seq:
            self.pushed(best)  # it is still out there (perhaps newer)
        else:
            self.expired = True
            self._deliver(Notice(self.key, self.seq))

    def _deliver(self, notice: Notice) -> None:
        self.delivered += 1
        self.engine.emit(Notify(self, notice))


class Unlisten(Operation):
    """Cancel the listens on ``key`` held by ``holders`` (a lease of 0); ends with how many
    answered."""

    def __init__(self, key: int, holders: list[Contact]) -> None:
        super().__init__()
        self.key, self.holders = key, holders
        self.left = len(holders)
        self.answered = 0

    def begin(self) -> None:
        for contact in self.holders:
            self.send(contact, m.Listen, key=self.key, lease=0.0)

    def replied(self, request: Request, reply: m.Message) -> None:
        self.answered += 1
        self._one_ended()

    def request_failed(self, request: Request, error: Exception) -> None:
        self._one_ended()

    def _one_ended(self) -> None:
        self.left -= 1
        if not self.left:
            self.finish(self.answered)
