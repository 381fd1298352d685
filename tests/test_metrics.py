"""The Prometheus text rendering of a node's counters and lookup latency histogram."""

from __future__ import annotations

from txdht.core.metrics import LATENCY_BUCKETS, Metrics


def test_counters_are_labelled_and_sorted() -> None:
    """Each RPC counter line carries direction, type and outcome labels and its count."""
    metrics = Metrics()
    metrics.rpc("sent", "ping", "ok")
    metrics.rpc("sent", "ping", "ok")
    metrics.rpc("received", "store", "error")
    text = metrics.render([])
    lines = text.splitlines()
    assert 'txdht_rpcs_total{direction="received",type="store",outcome="error"} 1' in lines
    assert 'txdht_rpcs_total{direction="sent",type="ping",outcome="ok"} 2' in lines
    assert lines.index("# TYPE txdht_rpcs_total counter") == 1


def test_histogram_buckets_are_cumulative() -> None:
    """A latency counts in its own bucket and every larger one; sum and count add up."""
    metrics = Metrics()
    for seconds in (0.0005, 0.02, 0.02, 7.0, 60.0):
        metrics.lookup(seconds)
    lines = metrics.render([]).splitlines()
    buckets = {
        line.split('"')[1]: int(line.split()[-1])
        for line in lines
        if line.startswith("txdht_lookup_duration_seconds_bucket")
    }
    assert list(buckets) == [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert buckets["0.001"] == 1
    assert buckets["0.025"] == 3
    assert buckets["5.0"] == 3
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert "txdht_lookup_duration_seconds_count 5" in lines
    assert "txdht_lookup_duration_seconds_sum 67.040500" in lines


def test_a_latency_on_a_bound_counts_in_that_bucket() -> None:
    """Prometheus buckets are upper bounds inclusive: 0.1 s counts in le="0.1"."""
    metrics = Metrics()
    metrics.lookup(0.1)
    assert 'txdht_lookup_duration_seconds_bucket{le="0.1"} 1' in metrics.render([]).splitlines()


def test_gauges_are_rendered_with_help_and_type() -> None:
    """Extra gauges get HELP and TYPE lines and their value."""
    text = Metrics().render([("txdht_peers", "Contacts.", 12)])
    assert text.endswith("# HELP txdht_peers Contacts.\n# TYPE txdht_peers gauge\ntxdht_peers 12\n")
