"""Counters and a latency histogram for a node.

No dependency and no I/O: the node counts here, and ``txdht.prometheus`` turns the counts into
the metric families ``GET /metrics`` serves (``txdht_rpcs_total``, and
``txdht_lookup_duration_seconds`` with these buckets), with the Prometheus client library, which
the core does not import.
"""

from __future__ import annotations

import bisect
from collections import Counter

__all__ = ["LATENCY_BUCKETS", "Metrics"]

#: Upper bounds (seconds) of the lookup latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """What a node counts: RPCs by direction, type and outcome; operations started, by kind;
    lookup latencies."""

    def __init__(self) -> None:
        self.rpcs: Counter[tuple[str, str, str]] = Counter()
        #: Operations started, by kind (``Publish``, ``Lookup``...), the node's own and those
        #: inside others: what its background work costs.
        self.operations: Counter[str] = Counter()
        self.lookup_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.lookup_count = 0
        self.lookup_sum = 0.0

    def rpc(self, direction: str, kind: str, outcome: str) -> None:
        """Count one RPC: ``direction`` is sent or received, ``outcome`` ok, error, timeout..."""
        self.rpcs[(direction, kind, outcome)] += 1

    def lookup(self, seconds: float) -> None:
        """Record the duration of one finished lookup."""
        self.lookup_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.lookup_count += 1
        self.lookup_sum += seconds
