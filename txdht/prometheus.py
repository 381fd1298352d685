"""``GET /metrics`` through the Prometheus project's own client library, ``prometheus_client``.

Each node's API gets a registry of its own (not the library's global one, so that several
nodes in one process, as in tests, do not collide), holding the library's default collectors,
which every Prometheus target is expected to have (``process_*``: CPU seconds, resident
memory, open file descriptors, start time; ``python_info``; ``python_gc_*``), and
``NodeCollector``, which turns the node's own counts (``txdht.core.metrics.Metrics``, which
stays free of any dependency, as the core must) into Prometheus metric families at each
scrape, under the names the dashboard and existing dashboards read:

- ``txdht_rpcs_total{direction, type, outcome}``: RPCs sent and received;
- ``txdht_lookup_duration_seconds``: the histogram of lookup durations;
- the gauges the API gives it (items held, peers, uptime...).

The exposition is written by the library's ``generate_latest`` (text format 0.0.4), on the
reactor's thread: collecting is a few dictionary walks and a read of ``/proc``. The library's
own Twisted resource (``prometheus_client.twisted.MetricsResource``) is not used: it imports
the global reactor when it is imported, and serves each scrape through WSGI on the reactor's
thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from txdht.core.metrics import LATENCY_BUCKETS, Metrics

__all__ = ["CONTENT_TYPE", "Gauges", "NodeCollector", "exposition", "node_registry"]

#: What ``/metrics`` answers with: the Prometheus text format, version 0.0.4, which is what
#: ``generate_latest`` writes (the library's own name for it is recent: spelt out here).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The node's gauges at scrape time: (name, help text, value) each.
Gauges = Callable[[], Iterable[tuple[str, str, float]]]


class NodeCollector:
    """The node's counters, histogram and ``gauges``, as metric families, at each scrape."""

    def __init__(self, metrics: Metrics, gauges: Gauges) -> None:
        self.metrics = metrics
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        """The metric families, read from the node now."""
        metrics = self.metrics
        rpcs = CounterMetricFamily(
            "txdht_rpcs",
            "RPCs by direction, message type and outcome.",
            labels=("direction", "type", "outcome"),
        )
        for labels, count in sorted(metrics.rpcs.items()):
            rpcs.add_metric(labels, count)
        yield rpcs
        operations = CounterMetricFamily(
            "txdht_operations",
            "Operations started, by kind (the node's own, and those inside them).",
            labels=("kind",),
        )
        for kind, count in sorted(metrics.operations.items()):
            operations.add_metric((kind,), count)
        yield operations
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), metrics.lookup_buckets, strict=True):
            cumulative += count
            buckets.append((str(bound), float(cumulative)))
        yield HistogramMetricFamily(
            "txdht_lookup_duration_seconds",
            "Time from start to end of iterative lookups.",
            buckets=buckets,
            sum_value=metrics.lookup_sum,
        )
        for name, text, value in self.gauges():
            yield GaugeMetricFamily(name, text, value=value)


def node_registry(metrics: Metrics, gauges: Gauges) -> CollectorRegistry:
    """A registry of one node's own: the default process, platform and garbage collector
    collectors, and the node's (checked at once for names that clash)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(NodeCollector(metrics, gauges))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format (``CONTENT_TYPE``)."""
    return generate_latest(registry)
