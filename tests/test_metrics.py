"""A node's counters and lookup latency histogram, as ``/metrics`` serves them through
prometheus_client: parsed back with the library's own parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from txdht.core.metrics import LATENCY_BUCKETS, Metrics
from txdht.prometheus import NodeCollector, exposition, node_registry


def parsed(metrics: Metrics, gauges: list[tuple[str, str, float]] | None = None) -> list[Sample]:
    """Every sample of the node's families, as Prometheus would read them."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(metrics, lambda: gauges or []))
    text = exposition(registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_counters_are_labelled_by_direction_type_and_outcome() -> None:
    """Each RPC counter carries direction, type and outcome labels and its count."""
    metrics = Metrics()
    metrics.rpc("sent", "ping", "ok")
    metrics.rpc("sent", "ping", "ok")
    metrics.rpc("received", "store", "error")
    rpcs = {
        (s.labels["direction"], s.labels["type"], s.labels["outcome"]): s.value
        for s in parsed(metrics)
        if s.name == "txdht_rpcs_total"
    }
    assert rpcs == {("sent", "ping", "ok"): 2, ("received", "store", "error"): 1}


def test_operations_are_counted_by_kind() -> None:
    """The operations a node started are one counter labelled by kind."""
    metrics = Metrics()
    metrics.operations["Publish"] += 3
    metrics.operations["Lookup"] += 1
    counted = {
        s.labels["kind"]: s.value for s in parsed(metrics) if s.name == "txdht_operations_total"
    }
    assert counted == {"Publish": 3, "Lookup": 1}


def test_histogram_buckets_are_cumulative() -> None:
    """A latency counts in its own bucket and every larger one; sum and count add up."""
    metrics = Metrics()
    for seconds in (0.0005, 0.02, 0.02, 7.0, 60.0):
        metrics.lookup(seconds)
    samples = parsed(metrics)
    buckets = {
        s.labels["le"]: s.value for s in samples if s.name == "txdht_lookup_duration_seconds_bucket"
    }
    assert list(buckets) == [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert (buckets["0.001"], buckets["0.025"], buckets["5.0"]) == (1, 3, 3)
    assert (buckets["10.0"], buckets["+Inf"]) == (4, 5)
    values = {s.name: s.value for s in samples}
    assert values["txdht_lookup_duration_seconds_count"] == 5
    assert values["txdht_lookup_duration_seconds_sum"] == pytest.approx(67.0405)


def test_a_latency_on_a_bound_counts_in_that_bucket() -> None:
    """Prometheus buckets are upper bounds inclusive: 0.1 s counts in le="0.1"."""
    metrics = Metrics()
    metrics.lookup(0.1)
    buckets = {s.labels.get("le"): s.value for s in parsed(metrics)}
    assert (buckets["0.05"], buckets["0.1"]) == (0, 1)


def test_gauges_are_gauges_with_their_help() -> None:
    """Extra gauges are served as gauges, with their help text and value."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(Metrics(), lambda: [("txdht_peers", "Contacts.", 12)]))
    text = exposition(registry).decode()
    (peers,) = [f for f in text_string_to_metric_families(text) if f.name == "txdht_peers"]
    assert (peers.type, peers.documentation, peers.samples[0].value) == ("gauge", "Contacts.", 12)


def test_a_node_registry_has_the_process_metrics_and_its_own() -> None:
    """A node's registry has the default process, platform and gc collectors beside the
    node's, and each node has a registry of its own."""
    first = node_registry(Metrics(), lambda: [("txdht_peers", "Contacts.", 1)])
    second = node_registry(Metrics(), lambda: [("txdht_peers", "Contacts.", 2)])
    names = {f.name for f in text_string_to_metric_families(exposition(first).decode())}
    assert {
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_objects_collected",
        "txdht_rpcs",
        "txdht_lookup_duration_seconds",
        "txdht_peers",
    } <= names
    assert b"txdht_peers 2.0" in exposition(second)
