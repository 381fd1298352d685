"""The iterative Kademlia lookup, as a state machine with no I/O.

Theory of operation
-------------------
A lookup walks the clock face towards ``target``. It keeps every contact it has heard of in one
of six states: not yet asked, in flight, retried, slow, answered, failed. The *shortlist* is the
k closest contacts that have neither failed nor gone slow. The shell asks ``next_queries()``
what to send; the machine hands out shortlist contacts that were not asked yet, nearest first,
while fewer than alpha requests are in flight, and marks them in flight. The shell then feeds
back exactly one event per query: ``nodes_received`` (the peer answered with contacts, which
join the candidates), ``value_received`` (FIND_VALUE only), or ``query_failed`` (timeout,
refused connection, error reply, garbage), and before any of those perhaps ``query_slow``. After
each event the shell calls ``next_queries()`` again. Of the contacts not asked yet, questionable
ones (slow or failed lately, as the routing table says) go after the others.

There are no lock-step rounds: a new request leaves as soon as any one answers or fails, so one
slow peer never holds the others up. A failed contact drops out of the shortlist, which lets the
next closest one in. A query whose reply is overdue (``query_slow``: its slow deadline, from
measured round trips, see ``txdht.core.timing``) frees its slot too; if its contact is among the
k closest it is sent again (``retries`` times at most) and the lookup waits for it, else, and
after its last retry, it leaves the shortlist like a failed one, but its reply is still taken if
it comes while the lookup runs.

The lookup is finished when every contact of the shortlist (the k closest that have neither
failed nor gone slow) has answered: nothing closer is left to ask. A query still in flight to a
contact that has since dropped out of the shortlist does not hold a FIND_NODE up (the shell
cancels it), so one lost message far from the target costs nothing; a FIND_VALUE that has found
nothing yet waits for it, since any answer may be the value. A FIND_VALUE for a blob ends at the
first value that verifies against the key: a blob never changes. A FIND_VALUE for a mutable item
goes on until the shortlist has answered, like a FIND_NODE, because an older version can linger
on nodes that are no longer among the k closest (after a partition, or a publisher's write that
reached only some of them); the result is the valid version with the highest sequence number,
and ``found`` names the peers that sent an older one (``Engine.newest`` turns that into a read
repair). A value that does not verify counts as a failure of the peer that sent it, and the
lookup goes on. ``closest()`` is the result of a FIND_NODE lookup: the k closest contacts that
answered, which is where a put stores its item.

A lookup takes at most ``per_subnet`` contacts of one /24 (IPv4) or /48 (IPv6) from peers'
replies (``Limits.lookup_per_subnet``, 2 by default; loopback exempt): an attacker who grinds
ids next to a key and runs them on one network can put two of them in each lookup, not the
whole shortlist (libtorrent's ``restrict_search_ips`` is the same idea, per address). The seeds,
from our own routing table, are under its own per-bucket rule instead.

A FIND_VALUE may be told ``alone_within``, a distance: if its nearest candidate is nearer the
target than that, its first query goes alone, and the lookup opens to alpha queries at once at
the first event about it (an answer with or without the value, a failure, a slow deadline).
``Engine.holders_within`` gives half the distance within which the network's k closest nodes
to a key are expected (from the routing table's estimate of the network's size): a candidate
that near is almost surely a holder, and the two queries sent beside it would bring back two
more copies of a blob and nothing else. Where the table does not reach that near, or for a
FIND_NODE, all alpha go at once.

Contacts given as ``dead`` (``Engine.lookup`` passes those whose last two requests failed) start
out failed: they are never asked, even when a peer's reply names them. After a mass crash every
lookup would otherwise spend a timeout on each dead node near its target.

Seeds may come as ``nearest``, the routing table's contacts nearest the target first, in runs (a
bucket each, ``RoutingTable.nearest``): the lookup takes runs until k of the seeds taken are still
candidates, and takes more whenever one of them fails or goes slow. Every seed not taken is
further than k candidates, so the shortlist is the one the whole table would give, for the
cost of a bucket or two instead of a pass over the table per lookup."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from enum import Enum
from typing import Any

from txdht.core.errors import ProtocolError
from txdht.core.ids import Contact
from txdht.core.items import Item
from txdht.core.limits import subnet_of
from txdht.core.routing import K

__all__ = ["ALPHA", "PATHS", "DisjointLookup", "IterativeLookup", "LookupMachine"]

#: Requests a lookup keeps in flight at once: the paper's alpha.
ALPHA = 3
#: Disjoint paths a lookup takes by default (S/Kademlia's d; 1: a plain Kademlia lookup). The
#: adversary scenario's measurements chose it (docs/reliability.md, hostile nodes).
PATHS = 1


class _State(Enum):
    NEW = "new"
    IN_FLIGHT = "in flight"
    #: Its query went slow and a retry is on its way: it holds no slot, yet the lookup waits
    #: for it (it is among the k closest).
    RETRY = "retry"
    #: Its query went slow: it holds no slot and is out of the shortlist, but its reply is
    #: still taken if it comes.
    SLOW = "slow"
    ANSWERED = "answered"
    FAILED = "failed"


#: The states in which a contact may still answer.
_WAITING = (_State.IN_FLIGHT, _State.RETRY, _State.SLOW)


class IterativeLookup:
    """One lookup for ``target``: FIND_NODE, or FIND_VALUE when ``find_value`` is set."""

    def __init__(
        self,
        target: int,
        seeds: Iterable[Contact],
        own_id: int,
        k: int = K,
        alpha: int = ALPHA,
        find_value: bool = False,
        dead: Iterable[Contact] = (),
        questionable: Iterable[int] = (),
        retries: int = 2,
        claimed: set[int] | None = None,
        per_subnet: int = 0,
        nearest: Iterator[list[Contact]] | None = None,
        alone_within: int | None = None,
    ) -> None:
        self.target = target
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.find_value = find_value
        #: Every valid item received (FIND_VALUE), with the peer that sent it, in order.
        self.found: list[tuple[Contact, Item]] = []
        #: Peers that sent a value that failed verification, with the reason.
        self.bad_values: list[tuple[Contact, ProtocolError]] = []
        #: How many queries the lookup sent (retries included).
        self.queries = 0
        #: How many times a slow query to one of the k closest is sent again.
        self.retries = retries
        #: Ids of contacts that went slow or failed lately: asked after the others.
        self.questionable = questionable if isinstance(questionable, set) else set(questionable)
        self._retried: dict[int, int] = {}
        #: Ids asked by any path of a disjoint lookup (shared by its paths; None: one path):
        #: a contact another path asked is not this path's to ask.
        self._claimed = claimed
        self._mine: set[int] = set()
        #: What happened, in order: ("sent" | "answered" | "failed" | "slow" | "retried",
        #: contact) (for display).
        self.trace: list[tuple[str, Contact]] = []
        #: How far each contact is from us along the lookup: 1 for the seeds, and one more
        #: than the peer that first named it for the others (the hops a lookup takes).
        self.depth: dict[int, int] = {}
        #: The depth of the peer the last valid value came from (0: no value yet).
        self.value_depth = 0
        #: Contacts of one /24 (or /48) the lookup takes from peers' replies (0: any number;
        #: loopback exempt), and how many of each it took: ids ground next to the target on one
        #: network cannot fill the shortlist. Seeds, from our own table, are not counted.
        self.per_subnet = per_subnet
        self._subnets: dict[str, int] = {}
        #: Contacts a reply named that the subnet rule kept out.
        self.refused = 0
        self._contacts: dict[int, Contact] = {}
        self._state: dict[int, _State] = {}
        #: How many contacts are in flight, and how many in flight or retried.
        self._flying = self._pending = 0
        #: The valid item with the highest sequence number so far (the first of equals).
        self._best: Item | None = None
        #: The ids of the contacts to ask, nearest the target first, kept sorted as they come.
        self._order: list[int] = []
        for contact in dead:  # known dead: never asked, even when a peer names them
            self._contacts[contact.id], self._state[contact.id] = contact, _State.FAILED
        self._add(seeds, 1)
        #: More seeds, nearest first, taken as the lookup needs them (``_top_up``), and the
        #: ids taken from them so far.
        self._nearest = nearest
        self._taken: list[int] = []
        self._short = nearest is not None
        #: A FIND_VALUE whose nearest candidate is nearer the target than this distance asks
        #: it alone first (``_start_alone``); None: decided (or not asked for).
        self._alone_within = alone_within
        #: Whether one query at a time is sent: until the first event about the first query.
        self._alone = False

    @property
    def value(self) -> Item | None:
        """The valid item with the highest sequence number received (the first of equals)."""
        return self._best

    @property
    def done(self) -> bool:
        """Whether the lookup is over: a blob was found, or the shortlist has all answered."""
        best = self._best
        if best is not None and not best.mutable:
            return True
        if self.find_value and best is None and self._pending:
            return False
        state, answered = self._state, _State.ANSWERED
        if self._short or self._claimed is not None:
            return all(state[i] is answered for i in itertools.islice(self._candidates(), self.k))
        # The same test as above, over the candidates in one loop (no generators: this runs
        # after every reply, over up to k contacts).
        left, failed, slow = self.k, _State.FAILED, _State.SLOW
        for i in self._order:
            now = state[i]
            if now is answered:
                left -= 1
                if not left:
                    return True
            elif now is not failed and now is not slow:
                return False
        return True

    def next_queries(self) -> list[Contact]:
        """The contacts to query now; each is in flight until an event about it is fed back.

        Of the shortlist's contacts not asked yet, those not questionable go first."""
        if self.done:
            return []
        if self._alone_within is not None:
            self._start_alone(self._alone_within)
        room = (1 if self._alone else self.alpha) - self._flying
        if room <= 0:
            return []
        state, contacts, fresh = self._state, self._contacts, _State.NEW
        if self.questionable:
            new = [contacts[i] for i in self._shortlist_ids() if state[i] is fresh]
            new.sort(key=lambda c: c.id in self.questionable)  # stable: nearest first within
            chosen = new[:room]
        else:  # the first ``room`` not asked yet, nearest first: no need to look further
            chosen = self._first_new(room)
        if self._claimed is not None:
            ids = [c.id for c in chosen]
            self._claimed.update(ids)
            self._mine.update(ids)
        for contact in chosen:
            self._move(contact.id, _State.IN_FLIGHT)
            self.trace.append(("sent", contact))
        self.queries += len(chosen)
        return chosen

    def _first_new(self, room: int) -> list[Contact]:
        """Up to ``room`` contacts not asked yet among the k nearest candidates (those of
        ``_candidates``), nearest first: ``next_queries``' choice, in one loop over the
        candidates rather than a generator (this runs after every reply)."""
        if self._short:
            self._top_up()
        state, contacts, chosen, left = self._state, self._contacts, [], self.k
        fresh, failed, slow = _State.NEW, _State.FAILED, _State.SLOW
        claimed, mine = self._claimed, self._mine
        for i in self._order:
            now = state[i]
            if now is failed or now is slow or (claimed and i in claimed and i not in mine):
                continue  # not a candidate (another path's, with ``claimed``)
            if now is fresh:
                chosen.append(contacts[i])
                if len(chosen) == room:
                    break
            left -= 1
            if not left:
                break
        return chosen

    def _start_alone(self, within: int) -> None:
        """Decide, before the first query, whether it goes alone: the nearest candidate is
        nearer the target than ``within`` (the engine's estimate of where the k closest nodes
        of the network lie, halved), so it is very likely a holder of the value, and asking
        two more nodes at once would only bring two more copies of it. Any event about that
        query (an answer with or without the value, a failure, a slow deadline) opens the
        lookup to alpha queries at once, as usual."""
        self._alone_within = None
        first = next(self._candidates(), None)
        self._alone = first is not None and first ^ self.target < within

    def nodes_received(self, peer: Contact, contacts: Iterable[Contact]) -> int:
        """``peer`` answered with the contacts it knows closest to the target; returns how
        many of them are new to the lookup (0 for an answer it does not take)."""
        if not self._answer(peer):
            return 0
        return self._add(contacts, self.depth.get(peer.id, 1) + 1)

    def value_received(self, peer: Contact, item: Item) -> bool:
        """``peer`` answered with an item; returns whether it verifies against the key.

        A valid blob ends the lookup; a valid mutable item is kept, and the newest one wins.
        """
        if not self._answer(peer):
            return False
        try:
            item.verify_for(self.target)
        except ProtocolError as e:
            self._move(peer.id, _State.FAILED)
            self.trace[-1] = ("failed", peer)  # it answered, but with a forgery
            self.bad_values.append((peer, e))
            return False
        self.found.append((peer, item))
        if self._best is None or item.seq > self._best.seq:
            self._best = item
        self.value_depth = self.depth.get(peer.id, 1)
        return True

    def query_failed(self, peer: Contact) -> None:
        """The query to ``peer`` failed: timeout, lost connection, error reply or garbage
        (and its retry, if it had one)."""
        if self._state.get(peer.id) in _WAITING:
            self._move(peer.id, _State.FAILED)
            self.trace.append(("failed", peer))

    def query_slow(self, peer: Contact) -> bool:
        """The query to ``peer`` is overdue: it frees its slot for the next candidate. Returns
        whether to send it once more (a retry): the first time it goes slow, if it is among
        the k closest (the lookup then waits for it); otherwise it leaves the shortlist, and
        its reply is still taken if it comes."""
        state = self._state.get(peer.id)
        waiting = state is _State.IN_FLIGHT or state is _State.RETRY
        again = waiting and self._retried.get(peer.id, 0) < self.retries
        if again and peer.id in self._shortlist_ids():
            self._retried[peer.id] = self._retried.get(peer.id, 0) + 1
            self._move(peer.id, _State.RETRY)
            self.queries += 1
            self.trace.append(("retried", peer))
            return True
        if waiting:
            self._move(peer.id, _State.SLOW)
            self.trace.append(("slow", peer))
        return False

    def among(self, ident: int, count: int) -> bool:
        """Whether ``ident`` is among the ``count`` nearest candidates of the shortlist."""
        return ident in itertools.islice(self._candidates(), count)

    @property
    def answered(self) -> int:
        """How many contacts have answered so far."""
        return sum(1 for state in self._state.values() if state is _State.ANSWERED)

    def closest(self) -> list[Contact]:
        """The k closest contacts that answered, nearest first."""
        answered = (self._contacts[i] for i in self._order if self._state[i] is _State.ANSWERED)
        return list(itertools.islice(answered, self.k))

    def hops(self) -> int:
        """How deep the lookup went: the depth of the value's source, or of the closest
        contact that answered (0 when none did)."""
        if self.value_depth:
            return self.value_depth
        closest = self.closest()
        return self.depth.get(closest[0].id, 1) if closest else 0

    def _answer(self, peer: Contact) -> bool:
        if self._state.get(peer.id) not in _WAITING:
            return False
        self._move(peer.id, _State.ANSWERED)
        self.trace.append(("answered", peer))
        return True

    def _move(self, ident: int, new: _State) -> None:
        """Put a known contact in state ``new``, keeping the counts of those in flight."""
        old = self._state[ident]
        self._state[ident] = new
        if new is not _State.IN_FLIGHT:  # any event about a query ends a lone start
            self._alone = False
        flying = (new is _State.IN_FLIGHT) - (old is _State.IN_FLIGHT)
        self._flying += flying
        self._pending += flying + (new is _State.RETRY) - (old is _State.RETRY)
        if new is _State.FAILED or new is _State.SLOW:
            self._short = self._nearest is not None  # a seed may have dropped out

    def _top_up(self) -> None:
        """Take seeds from ``nearest`` until k of those taken are still candidates (or none
        are left). Every seed not taken yet is further than those, so the shortlist (the k
        closest candidates) is the same as if the whole table had been taken at the start."""
        self._short = False
        nearest, state, out = self._nearest, self._state, (_State.FAILED, _State.SLOW)
        assert nearest is not None
        alive = sum(1 for i in self._taken if state[i] not in out)
        contacts, own = self._contacts, self.own_id
        fresh: list[int] = []  # nearest first
        while alive < self.k:
            run = next(nearest, None)
            if run is None:
                self._nearest = None
                break
            ids = [c.id for c in run]
            if own not in ids and contacts.keys().isdisjoint(ids):
                # All new to the lookup (the usual case): all candidates, taken in C.
                new = dict(zip(ids, run, strict=True))
                alive += len(ids)
            else:
                new = {
                    i: c for i, c in zip(ids, run, strict=True) if i not in contacts and i != own
                }
                ids = [i for i in ids if i != own]
                alive += len(new) + sum(1 for i in ids if i not in new and state[i] not in out)
            contacts.update(new)
            state.update(dict.fromkeys(new, _State.NEW))
            fresh += new
            self._taken += ids
        order, target = self._order, self.target
        if fresh and order and order[-1] ^ target > fresh[0] ^ target:
            order += fresh
            order.sort(key=target.__xor__)  # two sorted runs: one merge
        else:
            order += fresh

    def _add(self, contacts: Iterable[Contact], depth: int) -> int:
        """Take the contacts not known yet as candidates; returns how many were taken."""
        per_subnet, subnets = self.per_subnet if depth > 1 else 0, self._subnets
        known = len(self._order)
        for contact in contacts:
            self.depth.setdefault(contact.id, depth)
            if contact.id != self.own_id and contact.id not in self._contacts:
                if per_subnet:
                    subnet = subnet_of(contact.host)
                    if subnet is not None:
                        if subnets.get(subnet, 0) >= per_subnet:
                            self.refused += 1
                            continue
                        subnets[subnet] = subnets.get(subnet, 0) + 1
                self._contacts[contact.id] = contact
                self._state[contact.id] = _State.NEW
                self._order.append(contact.id)
        added = len(self._order) - known
        if added:  # most replies late in a lookup name no one new
            self._order.sort(key=self.target.__xor__)  # nearly sorted already: one pass
        return added

    def _shortlist_ids(self) -> list[int]:
        """The ids of the k closest contacts that have neither failed nor gone slow (nor
        been asked by another path of a disjoint lookup)."""
        return list(itertools.islice(self._candidates(), self.k))

    def _candidates(self) -> Iterator[int]:
        """The ids of the shortlist's candidates, nearest first (seeds taken as needed).
        ``_first_new`` applies the same rule in a loop of its own (going through this
        generator cost 2.3% more instructions a put): a change to one belongs in both."""
        if self._short:
            self._top_up()
        out, claimed, mine, state = (
            (_State.FAILED, _State.SLOW),
            self._claimed,
            self._mine,
            self._state,
        )
        if claimed is None:
            return (i for i in self._order if state[i] not in out)
        return (i for i in self._order if state[i] not in out and (i not in claimed or i in mine))


class DisjointLookup:
    """A lookup over ``paths`` disjoint paths (S/Kademlia): each path is an
    ``IterativeLookup`` with its own shortlist and alpha requests in flight, started from its
    share of the seeds (dealt out nearest first, in turn), and no contact is asked by two
    paths. Hostile nodes that answer with each other can steer the paths they are asked on,
    not the others. It answers as one lookup: ``closest()`` is the k closest that answered on
    any path, ``value`` the newest valid version found on any, and it is ``done`` when every
    path is (or a blob was found)."""

    def __init__(
        self, target: int, seeds: Iterable[Contact], own_id: int, paths: int, **options: Any
    ) -> None:
        if paths < 2:
            raise ValueError("a disjoint lookup has at least 2 paths")
        self.target, self.own_id = target, own_id
        self.k: int = options.get("k", K)
        self.find_value: bool = options.get("find_value", False)
        ordered = sorted(seeds, key=lambda c: c.id ^ target)
        claimed: set[int] = set()
        self.paths = [
            IterativeLookup(target, ordered[n::paths], own_id, claimed=claimed, **options)
            for n in range(paths)
        ]
        #: Which path asked each contact: its replies go there.
        self._path: dict[int, IterativeLookup] = {}

    @property
    def value(self) -> Item | None:
        """The newest valid version any path found."""
        return max(
            (item for path in self.paths for _, item in path.found),
            key=lambda item: item.seq,
            default=None,
        )

    @property
    def found(self) -> list[tuple[Contact, Item]]:
        """Every valid item any path received, with its sender."""
        return [pair for path in self.paths for pair in path.found]

    @property
    def bad_values(self) -> list[tuple[Contact, ProtocolError]]:
        """Peers that sent a value that does not verify, on any path."""
        return [pair for path in self.paths for pair in path.bad_values]

    @property
    def done(self) -> bool:
        """Every path has ended, or one found a blob."""
        value = self.value
        if value is not None and not value.mutable:
            return True
        return all(path.done for path in self.paths)

    @property
    def queries(self) -> int:
        """Queries sent on all paths, retries included."""
        return sum(path.queries for path in self.paths)

    @property
    def answered(self) -> int:
        """Contacts that answered, on all paths."""
        return sum(path.answered for path in self.paths)

    @property
    def trace(self) -> list[tuple[str, Contact]]:
        """What happened on each path, path after path."""
        return [event for path in self.paths for event in path.trace]

    def next_queries(self) -> list[Contact]:
        """The contacts to query now, on every path."""
        if self.done:
            return []
        chosen = []
        for path in self.paths:
            for contact in path.next_queries():
                self._path[contact.id] = path
                chosen.append(contact)
        return chosen

    def nodes_received(self, peer: Contact, contacts: Iterable[Contact]) -> int:
        """``peer`` answered with contacts: they go to the path that asked it; returns how
        many are new to that path."""
        path = self._path.get(peer.id)
        return 0 if path is None else path.nodes_received(peer, contacts)

    def value_received(self, peer: Contact, item: Item) -> bool:
        """``peer`` answered with an item, on the path that asked it."""
        path = self._path.get(peer.id)
        return path is not None and path.value_received(peer, item)

    def query_failed(self, peer: Contact) -> None:
        """The query to ``peer`` failed, on the path that asked it."""
        path = self._path.get(peer.id)
        if path is not None:
            path.query_failed(peer)

    def query_slow(self, peer: Contact) -> bool:
        """The query to ``peer`` is overdue, on the path that asked it; whether to retry."""
        path = self._path.get(peer.id)
        return path is not None and path.query_slow(peer)

    def closest(self) -> list[Contact]:
        """The k closest contacts that answered, on any path, nearest first."""
        answered = {c.id: c for path in self.paths for c in path.closest()}
        return sorted(answered.values(), key=lambda c: c.id ^ self.target)[: self.k]

    def hops(self) -> int:
        """How deep the deepest path went."""
        return max(path.hops() for path in self.paths)

    @property
    def value_depth(self) -> int:
        """The depth of the last valid value's sender, on any path (0: none)."""
        return max(path.value_depth for path in self.paths)


#: What a lookup operation drives: one path, or several disjoint ones.
LookupMachine = IterativeLookup | DisjointLookup
