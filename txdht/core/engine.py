"""One node's DHT logic, shared by both shells: answer requests, keep the table, decide stores.

The engine owns the routing table and the store. A shell hands it each decoded request with the
host it came from and the time, and sends back the reply the engine returns; it tells the engine
when a peer answered (``seen``) or failed (``failed``) one of our requests; it starts lookups
with ``lookup``. Whenever the routing table wants a contact pinged before evicting it, the engine
returns that contact and the shell pings it, reporting the outcome like any other request.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass

from txdht.core import messages as m
from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import Contact
from txdht.core.items import MAX_TTL, MAX_VALUE_BYTES, Identity, Item, accept, mutable_key
from txdht.core.lookup import ALPHA, IterativeLookup
from txdht.core.routing import K, RoutingTable
from txdht.core.storage import PublishedItem, StoredItem
from txdht.interfaces import IStorage
from txdht.limits import Limits, RateLimiter

__all__ = ["Engine", "Handled", "Seen"]


@dataclass(frozen=True)
class Seen:
    """What hearing from a contact asks of the shell: a contact to ping (ping-before-evict),
    and, for a contact new to the table, the records to copy to it (``handoff``)."""

    ping: Contact | None = None
    handoff: tuple[StoredItem, ...] = ()


@dataclass(frozen=True)
class Handled:
    """The outcome of one request: the reply to send, and what hearing from the sender asks."""

    reply: m.Message
    seen: Seen


class Engine:
    """The DHT logic of one node (see the module docstring)."""

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
    ) -> None:
        if not 1 <= k <= m.MAX_CONTACTS:
            raise ValueError(f"k must be from 1 to {m.MAX_CONTACTS} (what a nodes reply may carry)")
        if alpha < 1:
            raise ValueError("alpha must be at least 1")
        self.identity = identity
        self.id = identity.node_id
        self.storage = storage
        self.k = k
        self.alpha = alpha
        self.max_value = max_value
        #: The port this node listens on, sent in every message (0 until it listens).
        self.port = 0
        self.limits = limits = limits or Limits()
        self.routing = RoutingTable(self.id, k, now, max_per_subnet=limits.max_per_subnet)
        self.rate_limiter = RateLimiter(limits, now)
        self._count_publishers()
        self._rids = itertools.count(1)

    def message(self, cls: type[m.Message], rid: int | None = None, **fields: object) -> m.Message:
        """A message from this node; a request gets a fresh request id."""
        rid = next(self._rids) if rid is None else rid
        return cls(rid=rid, sender=self.id, port=self.port, **fields)

    def handle(self, request: m.Message, host: str, now: float) -> Handled:
        """Answer ``request``, which came from ``host``; peers' mistakes become error replies."""
        seen = Seen()
        if request.port and request.sender != self.id:
            seen = self.seen(Contact(request.sender, host, request.port), now)
        try:
            reply = self._answer(request, now)
        except ProtocolError as e:
            reply = self.error(request.rid, e.code, e.message)
        return Handled(reply, seen)

    def seen(self, contact: Contact, now: float) -> Seen:
        """We heard from ``contact`` (a request, or a reply to ours): update the table.

        A contact new to the table gets a copy of the records it is now among the k closest
        to, when this node is the closest holder it knows (so that one node, not k, sends it).
        """
        known = contact.id in self.routing
        ping = self.routing.seen(contact, now)
        if known or contact.id not in self.routing:
            return Seen(ping)
        return Seen(ping, tuple(self._handoff(contact, now)))

    def _handoff(self, newcomer: Contact, now: float) -> list[StoredItem]:
        records = []
        for record in self.storage.records():
            if record.expires_at <= now:
                continue
            key = record.key
            mine, theirs = self.id ^ key, newcomer.id ^ key
            others = [c.id ^ key for c in self.routing.closest(key, exclude=newcomer.id)]
            if others and others[0] < mine:
                continue
            closer = (mine < theirs) + sum(1 for d in others if d < theirs)
            if closer < self.k:
                records.append(record)
        return records

    def error(self, rid: int, code: ErrorCode, text: str) -> m.Message:
        """An error reply."""
        return self.message(m.Error, rid, code=int(code), message=text)

    def _answer(self, request: m.Message, now: float) -> m.Message:
        rid = request.rid
        if isinstance(request, m.Ping):
            proof = None if request.challenge is None else self.identity.prove(request.challenge)
            return self.message(m.Pong, rid, proof=proof)
        if isinstance(request, m.Store):
            self.store(request.item, request.ttl, now, request.cas)
            return self.message(m.Ok, rid)
        if isinstance(request, m.FindValue):
            item = self.get(request.key, now)
            if item is not None:
                return self.message(m.Value, rid, item=item)
            return self._nodes(rid, request.key, request.sender)
        if isinstance(request, m.FindNode):
            return self._nodes(rid, request.target, request.sender)
        raise ProtocolError(ErrorCode.UNEXPECTED, f"a {request.TYPE!r} message is not a request")

    def _nodes(self, rid: int, target: int, asker: int) -> m.Message:
        nodes = self.routing.closest(target, exclude=asker, live=True)
        return self.message(m.Nodes, rid, nodes=tuple(nodes))

    def store(self, item: Item, ttl: float, now: float, cas: int | None = None) -> None:
        """Keep ``item`` for ``ttl`` seconds if it verifies and may replace what is stored;
        with ``cas``, only if the stored sequence number (0 for none) is ``cas``."""
        item.verify(self.max_value)
        stored = self.storage.get(item.key)
        if stored is not None and stored.expires_at <= now:
            stored = None
        if cas is not None and (stored.item.seq if stored else 0) != cas:
            current = stored.item.seq if stored else 0
            raise ProtocolError(ErrorCode.CAS_MISMATCH, f"expected sequence {cas}, have {current}")
        accept(stored.item if stored else None, item)
        if stored is None:
            self._check_quota(item)
            self._by_publisher[item.public_key or b""] += 1
        expires = now + min(ttl, MAX_TTL)
        if stored is not None and stored.item == item:
            expires = max(expires, stored.expires_at)
        self.storage.put(StoredItem(item, expires))

    def _check_quota(self, item: Item) -> None:
        limits = self.limits
        if self.storage.count() >= limits.max_items:
            raise ProtocolError(ErrorCode.STORAGE_FULL, f"this node holds {limits.max_items} items")
        held = self._by_publisher[item.public_key or b""]
        if item.public_key is not None and held >= limits.max_items_per_publisher:
            text = f"this node holds {held} items of this publisher, the most it accepts"
            raise ProtocolError(ErrorCode.STORAGE_FULL, text)

    def expire(self, now: float) -> int:
        """Drop expired items; return how many."""
        dropped = self.storage.expire(now)
        if dropped:
            self._count_publishers()
        return dropped

    def _count_publishers(self) -> None:
        self._by_publisher = Counter(r.item.public_key or b"" for r in self.storage.records())

    def get(self, key: int, now: float) -> Item | None:
        """The item stored here under ``key``, if it has not expired."""
        stored = self.storage.get(key)
        return stored.item if stored is not None and stored.expires_at > now else None

    def newest(
        self, key: int, found: IterativeLookup, now: float, ttl: float
    ) -> tuple[Item | None, list[Contact]]:
        """The newest of our copy and the versions a FIND_VALUE lookup found, with the peers
        that sent an older one, for the shell to store the newest on for ``ttl`` seconds (read
        repair). An older copy held here is replaced at once, for ``ttl`` seconds too."""
        local = self.get(key, now)
        best = max(filter(None, (found.value, local)), key=lambda item: item.seq, default=None)
        if local and best and best.seq > local.seq:
            self.store(best, ttl, now)
        return best, [peer for peer, item in found.found if best and item.seq < best.seq]

    def failed(self, contact: Contact) -> None:
        """A request to ``contact`` failed or timed out."""
        self.routing.failed(contact.id)

    def refresh_targets(self, now: float, interval: float, rng: random.Random) -> list[int]:
        """A random id in each bucket no lookup has targeted for ``interval`` seconds."""
        return [b.random_id(rng) for b in self.routing.stale_buckets(now, interval)]

    def next_version(self, name: str, value: bytes, cas: int | None = None) -> Item:
        """``value`` signed under ``name`` with the sequence number after our last one (or
        after ``cas``, for a compare-and-swap put)."""
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

    def replication_jobs(self, now: float) -> list[tuple[Item, float]]:
        """Every held item with the time it has left: what replication stores again."""
        return [(r.item, r.expires_at - now) for r in self.storage.records() if r.expires_at > now]

    def republish_jobs(self) -> list[tuple[Item, float]]:
        """Every item this node published, with its ttl: what republishing stores again."""
        return [(p.item, p.ttl) for p in self.storage.published_items()]

    def lookup(self, target: int, now: float, find_value: bool = False) -> IterativeLookup:
        """A new lookup for ``target``, seeded with the whole routing table: it starts from the
        k closest, and when those fail (after a mass crash every one of them may be dead) the
        next closest contacts we know step in, instead of the lookup ending with nothing.

        Contacts whose last two requests failed are not asked, nor added when a peer names
        them: after a mass crash, each would cost a timeout in every lookup (replication runs
        one per item) until it leaves the table. When no contact looks alive (this node's own
        network was down), all are asked again."""
        self.routing.touch(target, now)
        seeds, live = self.routing.contacts(), {c.id for c in self.routing.contacts(live=True)}
        dead = [c for c in seeds if c.id not in live] if live else []
        return IterativeLookup(target, seeds, self.id, self.k, self.alpha, find_value, dead)
