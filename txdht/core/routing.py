"""The routing table: k-buckets over the id space, kept by the rules of the Kademlia paper.

Theory of operation
-------------------
The table starts as one bucket covering the whole id space. A bucket holds at most k contacts in
least-recently-seen order (the head is the contact we heard from longest ago). Every time we
hear from a node (it sent us a request, or answered one of ours) the shell calls ``seen``:

1. A known contact moves to the tail; its failure count is cleared.
2. A new contact joins the tail of its bucket if there is room.
3. A full bucket is split in two when it covers our own id, or (the paper's relaxed rule, which
   keeps a well-populated subtree of at least k contacts around us even when the tree is
   unbalanced) when the new contact is among the k closest to us that we know. Splitting repeats
   until the contact fits or the rule says stop.
4. Otherwise a contact that has failed ``max_failures`` times in a row is replaced at once;
   failing that the newcomer waits in the bucket's replacement cache, and, if the head of the
   bucket has not been heard from for ``ping_after`` seconds (15 minutes, as BEP 5), ``seen``
   returns it: the shell pings it (a head heard from lately is live: nobody is pinged). If it
   answers (``seen`` again) it moves to the tail and stays: live contacts are never evicted,
   which is what makes Kademlia resist flooding. If it fails (``failed``), it is evicted and the
   most recently seen replacement takes its place.

Every failed request counts against a contact (``failed``); with a replacement waiting, a contact
is dropped after ``max_failures`` failures in a row. With no replacement it stays, marked stale,
because losing every contact during our own network outage would be worse.

Two hygiene rules come before all of this for a new contact: a live contact at an address (host
and port) keeps it against a second id claiming the same address, and at most
``max_per_subnet`` contacts of one /24 (IPv4) or /48 (IPv6) share a bucket (loopback exempt, so
that local test networks work). One host or one network cannot fill a bucket with ids it chose.

Each bucket remembers when a lookup last targeted its range; ``stale_buckets`` names those idle
for longer than the refresh interval so the node can look up a random id in them.
"""

from __future__ import annotations

import bisect
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from txdht.core.ids import ID_BITS, Contact
from txdht.core.limits import subnet_of

__all__ = ["MAX_FAILURES", "PING_AFTER", "K", "KBucket", "RoutingTable"]

#: Contacts per bucket, and replicas per item: the paper's k.
K = 20
#: Failed requests in a row after which a contact counts as stale and may be replaced.
MAX_FAILURES = 3
#: Failed requests in a row after which a contact looks dead: replies do not name it
#: (``live``), lookups do not ask it (one lost message should not hide a node; two in a row
#: rarely are).
DEAD_AFTER = 2
#: Seconds: a full bucket's oldest contact heard from more recently than this is not pinged
#: when a newcomer wants its place (BEP 5's fifteen minutes): it is live, and the newcomer
#: waits in the replacement cache.
PING_AFTER = 900.0


@dataclass
class _Entry:
    contact: Contact
    last_seen: float
    failures: int = 0
    #: It went slow (or failed) since it last answered: asked after the others.
    questionable: bool = False


class KBucket:
    """The contacts whose ids fall in ``[low, high)``, least recently seen first."""

    def __init__(self, low: int, high: int, last_lookup: float) -> None:
        self.low = low
        self.high = high
        #: The bits in which the bucket's ids differ: (low ^ t) | mask is its furthest
        #: distance from t.
        self.mask = high - low - 1
        #: When a lookup last targeted this range (for refresh).
        self.last_lookup = last_lookup
        #: A plain dict, not an ``OrderedDict``, though its order is the rule: a dict keeps
        #: the order of insertion too (seen moves a contact to the end by taking it out and
        #: putting it back), and iterates in C over its own array where an ``OrderedDict``
        #: looks every key up again, hashing a 512-bit id each time: a store's answer
        #: iterates the key's buckets, and that hashing was a fifth of its cost.
        self.entries: dict[int, _Entry] = {}
        #: Newcomers that found the bucket full, most recently seen last.
        self.replacements: OrderedDict[int, _Entry] = OrderedDict()
        #: The id of the head contact being pinged before a possible eviction.
        self.pinging: int | None = None

    def covers(self, ident: int) -> bool:
        """Whether ``ident`` falls in this bucket's range."""
        return self.low <= ident < self.high

    def contacts(self, live: bool = False) -> list[Contact]:
        """The bucket's contacts; ``live``: not those whose last two requests failed."""
        return [e.contact for e in self.entries.values() if not (live and e.failures >= DEAD_AFTER)]

    def random_id(self, rng: random.Random) -> int:
        """A random id in this bucket's range: the target of a refresh lookup."""
        return self.low + rng.randrange(self.high - self.low)

    def split(self) -> tuple[KBucket, KBucket]:
        """Two buckets covering the two halves of this one, sharing out its contacts."""
        middle, lookup = (self.low + self.high) // 2, self.last_lookup
        halves = (KBucket(self.low, middle, lookup), KBucket(middle, self.high, lookup))
        for half in halves:
            half.entries.update((i, e) for i, e in self.entries.items() if half.covers(i))
            half.replacements.update((i, e) for i, e in self.replacements.items() if half.covers(i))
            if self.pinging is not None and half.covers(self.pinging):
                half.pinging = self.pinging
        return halves


def _pairs(
    bucket: KBucket, target: int, exclude: int | None, live: bool
) -> list[tuple[int, Contact]]:
    """``(distance to target, contact)`` for the contacts of ``bucket`` but ``exclude`` (and,
    with ``live``, but those that look dead)."""
    entries = bucket.entries.items()
    if live:
        return [
            (i ^ target, e.contact) for i, e in entries if e.failures < DEAD_AFTER and i != exclude
        ]
    return [(i ^ target, e.contact) for i, e in entries if i != exclude]


class RoutingTable:
    """The k-buckets of one node; see the module docstring for the rules."""

    def __init__(
        self,
        own_id: int,
        k: int = K,
        now: float = 0.0,
        max_failures: int = MAX_FAILURES,
        max_per_subnet: int = 0,
        ping_after: float = PING_AFTER,
    ) -> None:
        self.own_id = own_id
        self.k = k
        self.max_failures = max_failures
        #: Contacts of one /24 (IPv4) or /48 (IPv6) per bucket; 0 for no limit.
        self.max_per_subnet = max_per_subnet
        #: A full bucket's head heard from within this many seconds is not pinged (rule 4).
        self.ping_after = ping_after
        self.buckets = [KBucket(0, 1 << ID_BITS, now)]
        #: Each bucket's ``low``, in the same order: ``bucket_for`` bisects it in C (a key
        #: function would be a Python call per step, on every message).
        self._lows = [0]
        #: How many times a contact has come to look dead (its second failure in a row) or
        #: been evicted: replication trusts another node's round only while this stays put.
        self.losses = 0
        #: The id last admitted at each address (host, port): where to look for the live
        #: contact an address rule protects, instead of a scan of the whole table per newcomer
        #: (the scan was the core's top cost in the simulator's profile). Checked against the
        #: table when read: an id since dropped no longer counts.
        self._at: dict[tuple[str, int], int] = {}
        #: The entries marked questionable (slow or failed since they last answered), so that
        #: a lookup need not scan the whole table for them. Checked against the table when
        #: read: an entry since dropped, or heard from again, no longer counts.
        self._questionable: dict[int, _Entry] = {}

    def bucket_for(self, ident: int) -> KBucket:
        """The bucket whose range holds ``ident``."""
        return self.buckets[bisect.bisect_right(self._lows, ident) - 1]

    def __len__(self) -> int:
        return sum(len(b.entries) for b in self.buckets)

    def __contains__(self, ident: int) -> bool:
        return ident in self.bucket_for(ident).entries

    def contacts(self, live: bool = False) -> list[Contact]:
        """Every contact in the table, bucket by bucket; ``live``: not those whose last two
        requests failed (one lost message should not hide a node; two in a row rarely are)."""
        return [c for b in self.buckets for c in b.contacts(live)]

    def live(self, ident: int) -> Contact | None:
        """The contact ``ident``, if it is in the table and does not look dead (see
        ``contacts``)."""
        entry = self.entry(ident)
        return None if entry is None or entry.failures >= DEAD_AFTER else entry.contact

    def entry(self, ident: int) -> _Entry | None:
        """What the table knows of a contact: address, last seen, failures."""
        return self.bucket_for(ident).entries.get(ident)

    def closest(
        self, target: int, count: int | None = None, exclude: int | None = None, live: bool = False
    ) -> list[Contact]:
        """The ``count`` (default k) contacts closest to ``target``, nearest first; ``live``
        leaves out contacts that look dead (see ``contacts``): replies should not send peers to
        them, or after a mass crash half of every reply is dead and lookups never reach the
        live nodes near a key.

        Buckets cover aligned blocks of ids, and XOR with the target maps each onto an aligned
        block of distances, so every contact of a bucket nearer the target is closer than every
        contact of one further away: whole buckets are taken, nearest first, until there are
        enough, and only those are sorted (not the whole table, on every request served)."""
        count = self.k if count is None else count
        # (distance, contact) pairs, each distance computed once in a comprehension (not by
        # a key function called per contact), sorted as tuples: the ids are distinct, so the
        # distances are, and two contacts are never compared. Not a dict by distance: a
        # 512-bit int's hash is a pass over its 18 digits, computed again at every lookup.
        # The target's own bucket is the nearest (its block holds distance 0): taken first,
        # and the others sorted only when it does not hold enough.
        found = _pairs(self.bucket_for(target), target, exclude, live)
        if len(found) < count and len(self.buckets) > 1:
            for bucket in self._buckets_nearest(target)[1:]:
                found += _pairs(bucket, target, exclude, live)
                if len(found) >= count:
                    break
        found.sort()
        return [pair[1] for pair in found[:count]]

    def nearest_live(self, target: int) -> Contact | None:
        """The live contact nearest ``target`` (``closest(target, 1, live=True)``), if any.

        Asked by every new item a node takes (``Engine.nearest``): the target's own bucket
        holds the nearest contacts when it holds any (see ``closest``), so its nearest id is
        found by ``min`` in C, with no pairs built and sorted; only when that one looks dead,
        or the bucket is empty, does it take the long way."""
        entries = self.bucket_for(target).entries
        if entries:
            entry = entries[min(entries, key=target.__xor__)]
            if entry.failures < DEAD_AFTER:
                return entry.contact
        found = self.closest(target, 1, live=True)
        return found[0] if found else None

    def nearest(self, target: int) -> Iterator[list[Contact]]:
        """Every contact, nearest ``target`` first, a bucket at a time, each sorted as it is
        taken (see ``closest``): a lookup takes a bucket or two, not the whole table."""
        distance = target.__xor__  # the XOR distance, computed in C
        for bucket in self._buckets_nearest(target):
            entries = bucket.entries
            yield [entries[ident].contact for ident in sorted(entries, key=distance)]

    def _buckets_nearest(self, target: int) -> list[KBucket]:
        # A bucket's furthest distance from the target: distinct for disjoint aligned blocks,
        # so the (distance, position) pairs sort with no key function called per bucket.
        buckets = self.buckets
        if len(buckets) == 1:
            return buckets
        far = sorted([((b.low ^ target) | b.mask, n) for n, b in enumerate(buckets)])
        return [buckets[pair[1]] for pair in far]

    def seen(self, contact: Contact, now: float) -> Contact | None:
        """We heard from ``contact``; return a contact the shell must ping, if any (rule 4)."""
        if contact.id == self.own_id or self.heard(contact.id, now):
            return None
        bucket = self.bucket_for(contact.id)
        if not self._admissible(bucket, contact):
            return None
        while len(bucket.entries) >= self.k and self._may_split(bucket, contact.id):
            bucket = self._split(bucket, contact.id)
        if len(bucket.entries) < self.k:
            bucket.replacements.pop(contact.id, None)
            bucket.entries[contact.id] = _Entry(contact, now)
            return None
        stale = [e for e in bucket.entries.values() if e.failures >= self.max_failures]
        if stale:
            del bucket.entries[stale[0].contact.id]
            bucket.entries[contact.id] = _Entry(contact, now)
            return None
        bucket.replacements[contact.id] = _Entry(contact, now)
        bucket.replacements.move_to_end(contact.id)
        while len(bucket.replacements) > self.k:
            bucket.replacements.popitem(last=False)
        head = next(iter(bucket.entries.values()))
        if bucket.pinging is not None or now - head.last_seen < self.ping_after:
            return None
        bucket.pinging = head.contact.id
        return head.contact

    def heard(self, ident: int, now: float) -> bool:
        """We heard from ``ident``: if the table holds it, it is the most recently seen of its
        bucket, with no failures, and no longer questionable or pinged (and True is returned);
        if not (False), ``seen`` decides whether it comes in. Asked first for the sender of
        every message, so that a known one (nearly all) costs no ``Contact`` built for it."""
        bucket = self.bucket_for(ident)
        entries = bucket.entries
        entry = entries.pop(ident, None)
        if entry is None:
            return False
        entry.last_seen, entry.failures, entry.questionable = now, 0, False
        entries[ident] = entry  # the most recently seen, last
        if bucket.pinging == ident:
            bucket.pinging = None
        return True

    def failed(self, ident: int) -> None:
        """A request to ``ident`` failed or timed out: count it, and evict if the rules say so."""
        bucket = self.bucket_for(ident)
        entry = bucket.entries.get(ident)
        if entry is None:
            bucket.replacements.pop(ident, None)
            return
        entry.failures += 1
        self._mark(entry)
        evict = bucket.pinging == ident or entry.failures >= self.max_failures
        if entry.failures == DEAD_AFTER or (evict and bucket.replacements):
            self.losses += 1
        if evict and bucket.replacements:
            del bucket.entries[ident]
            _, newcomer = bucket.replacements.popitem()
            bucket.entries[newcomer.contact.id] = newcomer
        if bucket.pinging == ident:
            bucket.pinging = None

    def slow(self, ident: int) -> None:
        """A request to ``ident`` is overdue: it is questionable (asked after the others by
        lookups) until it answers again. Being slow is not failing: nothing is evicted."""
        entry = self.bucket_for(ident).entries.get(ident)
        if entry is not None:
            self._mark(entry)

    def _mark(self, entry: _Entry) -> None:
        entry.questionable = True
        self._questionable[entry.contact.id] = entry

    def suspects(self) -> tuple[list[Contact], set[int]]:
        """What a lookup must know of the table besides its contacts: those that look dead
        (their last two requests failed), unless all do, and the ids of the questionable ones
        (slow or failed since they last answered), from the questionable entries alone."""
        dead, questionable, marked = [], set(), self._questionable
        for ident, entry in list(marked.items()):
            if not entry.questionable or self.bucket_for(ident).entries.get(ident) is not entry:
                del marked[ident]  # heard from again, or dropped: no longer questionable
                continue
            questionable.add(ident)
            if entry.failures >= DEAD_AFTER:
                dead.append(entry.contact)
        return (dead if not dead or len(dead) < len(self) else []), questionable

    def remove(self, ident: int) -> None:
        """Forget a contact outright (it misbehaved), promoting a replacement if one waits."""
        bucket = self.bucket_for(ident)
        if bucket.pinging == ident:
            bucket.pinging = None
        if bucket.entries.pop(ident, None) is not None and bucket.replacements:
            _, newcomer = bucket.replacements.popitem()
            bucket.entries[newcomer.contact.id] = newcomer

    def touch(self, target: int, now: float) -> None:
        """A lookup for ``target`` ran: its bucket does not need a refresh for a while."""
        self.bucket_for(target).last_lookup = now

    def stale_buckets(self, now: float, interval: float) -> list[KBucket]:
        """Buckets no lookup has targeted for ``interval`` seconds."""
        return [b for b in self.buckets if now - b.last_lookup >= interval]

    def answering(self) -> int:
        """How many contacts answered the last request they were sent (or have been sent
        none since we last heard from them)."""
        return sum(1 for b in self.buckets for e in b.entries.values() if not e.failures)

    def estimated_size(self) -> int:
        """How many nodes the network has, this one included: ``measured_size``, or with
        fewer live contacts than that needs (a network that small: a join finds our k
        closest), the contacts we know and ourselves."""
        measured = self.measured_size()
        return len(self) + 1 if measured is None else measured

    def measured_size(self) -> int | None:
        """How many nodes the network has, this one included, estimated from the distance
        of the m-th closest live contact to our own id (m = max(k, 2)); None when the table
        holds fewer than m live contacts.

        Ids are uniform, so the XOR distances from our id to the other n - 1 nodes are n - 1
        uniform draws from [0, 2**512); the m-th smallest, d, is then about m / (n - 1) of the
        space, and (m - 1) * 2**512 / d is an unbiased estimate of n - 1 (the m - 1, not m,
        corrects for 1/d: E[1/d] = (n - 1) / ((m - 1) * 2**512)). In a Poisson picture the
        m-th distance is all there is to know of the density (the nearer ones add nothing),
        which is why the nearer distances are not averaged in: the nearest can be arbitrarily
        small and would throw the estimate out. Relative error about 1 / sqrt(m - 2): 24% for
        k = 20.
        """
        count = max(self.k, 2)
        near = self.closest(self.own_id, count, live=True)
        if len(near) < count:
            return None
        distance = near[-1].id ^ self.own_id
        return 1 + round((count - 1) * (1 << ID_BITS) / distance)

    def _admissible(self, bucket: KBucket, contact: Contact) -> bool:
        """Hygiene: one live contact per address, and few per subnet in a bucket, so that one
        host or one network cannot fill a bucket with ids of its choosing."""
        address = contact.host, contact.port
        ident = self._at.get(address)
        other = None if ident is None else self.bucket_for(ident).entries.get(ident)
        if other is not None and other.contact.address == address:
            if other.failures < self.max_failures:
                return False
            self.remove(other.contact.id)
        subnet = subnet_of(contact.host)
        if subnet is not None and self.max_per_subnet:
            same = sum(1 for e in bucket.entries.values() if subnet_of(e.contact.host) == subnet)
            if same >= self.max_per_subnet:
                return False
        self._at[address] = contact.id
        return True

    def _may_split(self, bucket: KBucket, newcomer: int) -> bool:
        own = self.own_id
        if bucket.covers(own):
            return True
        # Fewer than k contacts are closer to us than the newcomer (ids, so distances, differ).
        # The buckets nearer us than this one (their furthest distances from us are smaller:
        # see ``_buckets_nearest``) hold contacts all closer than any of this one's: if they
        # hold k, the newcomer is not among the k closest, and nothing needs sorting (a full
        # far bucket hears from its replacements all the time).
        far = (bucket.low ^ own) | bucket.mask
        nearer = sum(len(b.entries) for b in self.buckets if (b.low ^ own) | b.mask < far)
        if nearer >= self.k:
            return False
        near = self.closest(own)
        return len(near) < self.k or newcomer ^ own < near[-1].id ^ own

    def _split(self, bucket: KBucket, newcomer: int) -> KBucket:
        index = self.buckets.index(bucket)
        halves = bucket.split()
        self.buckets[index : index + 1] = halves
        self._lows[index : index + 1] = [half.low for half in halves]
        return halves[0] if halves[0].covers(newcomer) else halves[1]
