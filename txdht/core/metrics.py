"""Counters and a latency histogram for a node, rendered in the Prometheus text format.

No dependency and no I/O: the node counts, ``render`` writes the exposition text that
``GET /metrics`` serves. Names follow Prometheus conventions (``_total`` counters, ``_seconds``
histograms with cumulative ``le`` buckets).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable

__all__ = ["LATENCY_BUCKETS", "Metrics"]

#: Upper bounds (seconds) of the lookup latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """What a node counts: RPCs by direction, type and outcome; lookup latencies."""

    def __init__(self) -> None:
        self.rpcs: Counter[tuple[str, str, str]] = Counter()
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

    def render(self, gauges: Iterable[tuple[str, str, float]]) -> str:
        """The Prometheus text exposition, with the extra ``(name, help, value)`` gauges."""
        lines = [
            "# HELP txdht_rpcs_total RPCs by direction, message type and outcome.",
            "# TYPE txdht_rpcs_total counter",
        ]
        for (direction, kind, outcome), count in sorted(self.rpcs.items()):
            labels = f'direction="{direction}",type="{kind}",outcome="{outcome}"'
            lines.append(f"txdht_rpcs_total{{{labels}}} {count}")
        lines += [
            "# HELP txdht_lookup_duration_seconds Time from start to end of iterative lookups.",
            "# TYPE txdht_lookup_duration_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), self.lookup_buckets, strict=True):
            cumulative += count
            lines.append(f'txdht_lookup_duration_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f"txdht_lookup_duration_seconds_sum {self.lookup_sum:.6f}")
        lines.append(f"txdht_lookup_duration_seconds_count {self.lookup_count}")
        for name, text, value in gauges:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
