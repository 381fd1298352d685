"""The yardstick for lookups: the same lookup state machine on perfect routing tables.

A perfect table is what a node would know in a network that never changes and whose nodes all
answer: in the range of each bucket (the nodes whose XOR distance from it has its top bit at
position i), ``k`` of the live nodes there, chosen at random (all of them when there are fewer),
and the ``k`` nodes closest to it. An ideal lookup runs ``IterativeLookup`` (the real one) with
every peer answering from its perfect table after one round-trip time, nothing lost. How many
queries it sends and how long it takes is the floor a real lookup on a real table is held to.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from txdht.core.ids import ID_BITS, Contact
from txdht.core.lookup import IterativeLookup
from txdht.sim.network import closest_ids

__all__ = ["IdealLookup", "PerfectTables", "ideal_lookup"]


class PerfectTables:
    """The perfect routing table of each node of ``ids`` (sorted), built when first asked."""

    def __init__(self, ids: list[int], k: int, seed: int) -> None:
        self.ids = ids
        self.k = k
        self.seed = seed
        self._tables: dict[int, list[int]] = {}

    def table(self, own: int) -> list[int]:
        """The ids in ``own``'s perfect table."""
        known = self._tables.get(own)
        if known is None:
            known = self._tables[own] = self._build(own)
        return known

    def _build(self, own: int) -> list[int]:
        ids, k = self.ids, self.k
        rng = random.Random(own ^ self.seed)
        found = set(closest_ids(ids, own, k + 1))
        bit = ID_BITS
        while bit and self._sharing(own, bit) > 1:  # others share our first 512 - bit bits
            bit -= 1
            start = ((own >> bit) ^ 1) << bit  # the bucket: the other half of our block
            low = bisect.bisect_left(ids, start)
            high = bisect.bisect_left(ids, start + (1 << bit))
            picked = range(low, high) if high - low <= k else rng.sample(range(low, high), k)
            found.update(ids[i] for i in picked)
        found.discard(own)
        return sorted(found)

    def _sharing(self, own: int, bit: int) -> int:
        """How many ids agree with ``own`` on all bits above ``bit`` (the block of size 2**bit)."""
        start = own >> bit << bit
        return bisect.bisect_left(self.ids, start + (1 << bit)) - bisect.bisect_left(
            self.ids, start
        )

    def answer(self, own: int, target: int, asker: int) -> list[int]:
        """What ``own`` answers to a FIND_NODE for ``target`` from ``asker``."""
        table = [i for i in self.table(own) if i != asker]
        return sorted(table, key=lambda i: i ^ target)[: self.k]


@dataclass(frozen=True)
class IdealLookup:
    """What an ideal lookup took."""

    queries: int
    hops: int
    latency: float
    closest: list[int]


def ideal_lookup(
    tables: PerfectTables,
    contact: Callable[[int], Contact],
    source: int,
    target: int,
    *,
    alpha: int,
    rtt: float,
) -> IdealLookup:
    """A FIND_NODE lookup for ``target`` from ``source``, every peer answering after ``rtt``."""
    seeds = [contact(i) for i in tables.answer(source, target, source)]
    machine = IterativeLookup(target, seeds, own_id=source, k=tables.k, alpha=alpha)
    depth = dict.fromkeys((c.id for c in seeds), 1)
    order = itertools.count()
    flight: list[tuple[float, int, Contact]] = []
    now = 0.0
    for peer in machine.next_queries():
        heapq.heappush(flight, (now + rtt, next(order), peer))
    while flight:  # each contact is asked at most once
        now, _, peer = heapq.heappop(flight)
        named = [contact(i) for i in tables.answer(peer.id, target, source)]
        for other in named:
            depth.setdefault(other.id, depth[peer.id] + 1)
        machine.nodes_received(peer, named)
        for asked in machine.next_queries():
            heapq.heappush(flight, (now + rtt, next(order), asked))
    closest = [c.id for c in machine.closest()]
    hops = depth[closest[0]] if closest else 0
    return IdealLookup(machine.queries, hops, now, closest)
