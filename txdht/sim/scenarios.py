"""The scenarios of the simulator: lookup, crash, silent, idle, adversary, churn, partition and
listen.

Each takes ``Settings`` and returns a ``Report``. Every one of them grows its network the way a
real one grows: nodes start one after another and join through a random node already in the
network (ping, lookup of their own id, refresh of every bucket: ``Node.join``), each with the
housekeeping timers of ``txdht.service`` (refresh, replicate, republish, expire). Items are
stored and read through ``publish_own`` and ``get``, as the API does. All choices (which node,
which target, which victims) come from the network's seeded RNG.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import IO, TypeVar

from txdht.core.ids import Contact
from txdht.core.items import DEFAULT_TTL, Item, blob, mutable_key
from txdht.core.limits import DEFAULT_RPC_TIMEOUT
from txdht.core.lookup import ALPHA
from txdht.core.lookup import PATHS as PATHS_DEFAULT
from txdht.core.routing import K
from txdht.sim.adversary import KINDS, calm, grind, turn
from txdht.sim.ideal import PerfectTables, ideal_lookup
from txdht.sim.network import Network, SimLookup, SimNode, _Pool
from txdht.sim.report import (
    Cell,
    Report,
    Table,
    Target,
    cpu_seconds,
    mean,
    peak_rss_mib,
    percentile,
)

__all__ = ["DEFAULTS", "SCENARIOS", "Settings", "run"]

R = TypeVar("R")
Job = Callable[[Callable[[R], None]], None]

#: Seconds between two nodes starting while a network grows.
SPACING = 0.1
#: Operations (stores, reads, measured lookups) a scenario keeps running at once.
CONCURRENCY = 50
#: Churn: seconds between two rounds of probes, and probes of each kind per round.
PROBE_INTERVAL = 300.0
PROBES = 10
#: Partition: seconds between two writes of every name, and reads of each name per check.
WRITE_INTERVAL = 300.0
READERS = 10


@dataclass
class Settings:
    """The parameters of a run (the command line's options)."""

    nodes: int = 1000
    seed: int = 1
    #: Items stored (lookup, crash, churn), or names written (partition).
    keys: int = 100
    #: Round-trip time and jitter added to each one-way trip, in milliseconds.
    latency: float = 50.0
    jitter: float = 0.0
    loss: float = 0.0
    k: int = K
    alpha: int = ALPHA
    #: Disjoint paths each lookup takes (1: plain Kademlia).
    paths: int = 1
    rpc_timeout: float = DEFAULT_RPC_TIMEOUT
    #: Lookups measured (lookup), of each kind.
    lookups: int = 200
    #: Churn: simulated hours, and the fraction of the nodes replaced per hour.
    hours: float = 48.0
    churn: float = 0.5
    #: Crash: the fractions of the network killed at once, each in a network of its own.
    kill: tuple[float, ...] = (0.5, 0.9)
    #: Silent: the fractions of the network that stop answering, each in a network of its own.
    silent: tuple[float, ...] = (0.1, 0.33)
    #: Adversary: the fractions of the network that are hostile, each in a network of its own.
    hostile: tuple[float, ...] = (0.1, 0.2, 0.3)
    #: Partition: minutes the network stays split.
    minutes: float = 30.0
    trace: IO[str] | None = None
    #: Where to say how a long run is getting on (the command line's stderr), if anywhere.
    progress: IO[str] | None = None

    def network(self) -> Network:
        """A new network with these settings."""
        return Network(
            seed=self.seed,
            k=self.k,
            alpha=self.alpha,
            latency=self.latency / 1000,
            jitter=self.jitter / 1000,
            loss=self.loss,
            rpc_timeout=self.rpc_timeout,
            trace=self.trace,
            paths=self.paths,
        )

    def say(self, net: Network, text: str) -> None:
        """Report progress: the wall-clock time, the simulated time, and ``text``."""
        if self.progress is not None:
            simulated = f"{net.clock.now / 3600:.2f} h simulated"
            self.progress.write(f"{time.strftime('%H:%M:%S')} [{simulated}] {text}\n")
            self.progress.flush()

    def describe(self, *names: str) -> dict[str, object]:
        """The common parameters, and the scenario's own ``names``."""
        common = ("nodes", "keys", "seed", "k", "alpha", "latency", "jitter", "loss")
        wanted = (*common, "rpc_timeout", *names)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in wanted}
        return {name: values[name] for name in wanted}


#: Each scenario's defaults, where they differ from ``Settings``' own (sized to run in a few
#: minutes on a laptop; the issue's sizes are given on the command line).
DEFAULTS: dict[str, dict[str, object]] = {
    "lookup": {"nodes": 1000, "keys": 100, "lookups": 200},
    "crash": {"nodes": 200, "keys": 1000},
    "silent": {"nodes": 1000, "keys": 100, "lookups": 200},
    "idle": {"nodes": 200, "keys": 2000, "hours": 2.0},
    "adversary": {"nodes": 300, "keys": 20, "lookups": 40},
    "churn": {"nodes": 100, "keys": 100, "hours": 12.0},
    "partition": {"nodes": 200, "keys": 20},
    "listen": {"nodes": 200, "keys": 5, "hours": 1.0},
}


# -- building blocks ------------------------------------------------------------------------


def grow(net: Network, count: int) -> list[SimNode]:
    """Start ``count`` nodes, one every ``SPACING`` s, each joining through a random member of
    the network; run until all have joined, then for one refresh interval more (a node whose
    join failed, say on a lost message, tries again then, as ``DHTService`` does)."""
    new: list[SimNode] = []
    joined: list[SimNode] = []

    def launch() -> None:
        node = net.add_node()
        new.append(node)
        net.start(node, net.seeds(), joined.append)

    for i in range(count):
        net.clock.later(i * SPACING, launch)
    limit = count * SPACING + 3600
    net.clock.run_until(lambda: len(joined) == count, limit, "growing the network")
    net.clock.run(net.clock.now + net.intervals.refresh)
    return new


def run_jobs(net: Network, jobs: Sequence[Job[R]], what: str, limit: float = 7200.0) -> list[R]:
    """Run ``jobs`` (each calls its argument with its result), ``CONCURRENCY`` at a time; the
    results in order. ``SimulationError`` if they are not all done within ``limit`` seconds."""
    results: dict[int, R] = {}
    waiting = iter(range(len(jobs)))

    def launch() -> None:
        index = next(waiting, None)
        if index is not None:
            jobs[index](partial(finished, index))

    def finished(index: int, result: R) -> None:
        results[index] = result
        net.clock.later(0.0, launch)  # from the clock: quick jobs never nest

    for _ in range(CONCURRENCY):
        launch()
    net.clock.run_until(lambda: len(results) == len(jobs), limit, what)
    return [results[i] for i in range(len(jobs))]


def items_for(net: Network, count: int) -> list[Item]:
    """``count`` distinct blobs."""
    return [blob(f"txdht.sim {net.seed} value {i}".encode()) for i in range(count)]


def store(net: Network, items: list[Item], publishers: list[SimNode] | None = None) -> list[int]:
    """Publish each item (``publish_own``) from a random node, or from ``publishers`` in turn;
    how many nodes took each (0: the put failed)."""

    def job(i: int, done: Callable[[int], None]) -> None:
        node = publishers[i % len(publishers)] if publishers else net.ready.choice(net.rng)
        node.publish_own(items[i], DEFAULT_TTL, done)

    return run_jobs(net, [partial(job, i) for i in range(len(items))], "storing")


def read(net: Network, keys: list[int]) -> list[Item | None]:
    """Get each key (``get``) through a random ready node."""

    def job(key: int, done: Callable[[Item | None], None]) -> None:
        net.ready.choice(net.rng).get(key, lambda item, _: done(item))

    return run_jobs(net, [partial(job, key) for key in keys], "reading")


def live_holders(net: Network) -> dict[int, int]:
    """How many live nodes hold each key (unexpired)."""
    now = net.clock.now
    held: dict[int, int] = {}
    for node in net.live:
        for record in node.engine.storage.records():
            if record.expires_at > now:
                held[record.key] = held.get(record.key, 0) + 1
    return held


def replicas(net: Network, key: int) -> int:
    """How many of the k live nodes closest to ``key`` hold it."""
    now = net.clock.now
    closest = net.closest_live(key, net.k)
    return sum(1 for i in closest if net.by_id[i].engine.get(key, now) is not None)


def run(name: str, settings: Settings) -> Report:
    """Run scenario ``name``; the report, with wall time and peak memory filled in."""
    started, cpu = time.perf_counter(), cpu_seconds()
    report = SCENARIOS[name](settings)
    report.wall_seconds = time.perf_counter() - started
    report.cpu_seconds = cpu_seconds() - cpu
    report.peak_rss_mib = peak_rss_mib()
    return report


def _counters(nets: list[Network]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for net in nets:
        for kind, count in net.counters().items():
            totals[kind] = totals.get(kind, 0) + count
    totals["events"] = sum(net.clock.events for net in nets)
    return totals


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 100.0


# -- lookup ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """What one lookup took, and whether it found what it should."""

    queries: int
    hops: int
    latency: float
    success: bool
    #: The fraction of the true k closest among the k it returned (FIND_NODE).
    precision: float = 1.0


def _truth(net: Network, target: int, source: int) -> list[int]:
    """The k live nodes closest to ``target``, the lookup's own node left out."""
    return [i for i in net.closest_live(target, net.k + 1) if i != source][: net.k]


def _find_node(net: Network, node: SimNode, target: int, done: Callable[[Measured], None]) -> None:
    truth = _truth(net, target, node.engine.id)

    def finished(found: SimLookup) -> None:
        got = [c.id for c in found.machine.closest()]
        hits = len(set(got) & set(truth))
        done(
            Measured(
                found.machine.queries,
                found.hops(),
                found.latency,
                truth[0] in got,
                hits / len(truth),
            )
        )

    node.lookup(target, finished)


def _find_value(node: SimNode, key: int, done: Callable[[Measured], None]) -> None:
    def finished(found: SimLookup) -> None:
        ok = found.machine.value is not None
        done(Measured(found.machine.queries, found.hops(), found.latency, ok))

    node.lookup(key, finished, find_value=True)


def _lookup_row(label: str, runs: list[Measured], rtt: float) -> list[Cell]:
    queries = [m.queries for m in runs]
    hops = [m.hops for m in runs]
    seconds = [m.latency for m in runs]
    ms = [t * 1000 for t in seconds]
    return [
        label,
        len(runs),
        _percent(sum(m.success for m in runs), len(runs)),
        100 * mean([m.precision for m in runs]),
        mean(queries),
        percentile(queries, 0.5),
        percentile(queries, 0.9),
        max(queries),
        percentile(hops, 0.5),
        percentile(hops, 0.9),
        percentile(ms, 0.5),
        percentile(ms, 0.9),
        percentile(seconds, 0.5) / rtt if rtt else 0.0,
        percentile(queries, 0.95),
        percentile(queries, 0.99),
        percentile(ms, 0.95),
        percentile(ms, 0.99),
        percentile(seconds, 0.99) / rtt if rtt else 0.0,
    ]


def lookup(s: Settings) -> Report:
    """FIND_NODE and FIND_VALUE lookups in a grown network, against ideal lookups."""
    net = s.network()
    grow(net, s.nodes)
    s.say(net, f"lookup: {s.nodes} nodes joined")
    items = items_for(net, s.keys)
    store(net, items)
    s.say(net, f"lookup: {s.keys} items stored; measuring {s.lookups} lookups of each kind")
    held = live_holders(net)
    outside = sum(held.get(i.key, 0) - replicas(net, i.key) for i in items)
    rng = net.rng
    pairs = [(net.ready.choice(rng), rng.getrandbits(512)) for _ in range(s.lookups)]
    found = run_jobs(net, [partial(_find_node, net, n, t) for n, t in pairs], "FIND_NODE lookups")
    reads = [(net.ready.choice(rng), rng.choice(items).key) for _ in range(s.lookups)]
    values = run_jobs(net, [partial(_find_value, n, key) for n, key in reads], "FIND_VALUE lookups")
    rtt = s.latency / 1000
    tables = PerfectTables(list(net.live_ids), s.k, s.seed)

    def contact(ident: int) -> Contact:
        return net.by_id[ident].contact

    ideal_runs = []
    for node, target in pairs:
        truth = _truth(net, target, node.engine.id)
        best = ideal_lookup(tables, contact, node.engine.id, target, alpha=s.alpha, rtt=rtt)
        hits = len(set(best.closest) & set(truth))
        ideal_runs.append(
            Measured(
                best.queries, best.hops, best.latency, truth[0] in best.closest, hits / len(truth)
            )
        )
    columns = ["lookup", "count", "ok %", "k-closest %", "RPCs mean", "p50", "p90", "max"]
    columns += ["hops p50", "p90", "ms p50", "ms p90", "p50 / RTT"]
    columns += ["RPCs p95", "RPCs p99", "ms p95", "ms p99", "p99 / RTT"]
    table = Table(f"lookups in a network of {s.nodes} nodes", columns)
    table.rows = [
        _lookup_row("FIND_NODE", found, rtt),
        _lookup_row("FIND_NODE ideal", ideal_runs, rtt),
        _lookup_row("FIND_VALUE", values, rtt),
    ]
    report = Report("lookup", s.describe("lookups"), [table])
    ratio = mean([m.queries for m in found]) / mean([m.queries for m in ideal_runs])
    report.targets.append(
        Target("FIND_NODE RPCs against the ideal", "at most 1.1x", f"{ratio:.3f}x", ratio <= 1.1)
    )
    if rtt:
        # The latency targets read the rows' RTT columns rather than compute them again.
        found_row, _, value_row = table.rows
        at_p50, at_p99 = columns.index("p50 / RTT"), columns.index("p99 / RTT")
        floor = math.ceil(s.k / s.alpha)
        median = float(found_row[at_p50])
        report.targets.append(
            Target(
                "FIND_NODE median latency",
                f"at most {floor + 3} RTT (the floor is k/alpha = {floor} RTT)",
                f"{median:.1f} RTT",
                median <= floor + 3,
            )
        )
        p50, p99 = float(value_row[at_p50]), float(value_row[at_p99])
        report.targets.append(
            Target(
                "FIND_VALUE latency",
                "p50 at most 3 RTT, p99 at most 8 RTT",
                f"p50 {p50:.1f} RTT, p99 {p99:.1f} RTT",
                p50 <= 3 and p99 <= 8,
            )
        )
    missing = sum(not m.success for m in values)
    report.targets.append(
        Target(
            "FIND_VALUE finds every stored value",
            "all",
            f"{len(values) - missing} of {len(values)}",
            not missing,
        )
    )
    report.notes.append(
        "hops: depth of the closest contact found (FIND_NODE) or of the peer that returned the "
        "value (FIND_VALUE); the seeds from the node's own table are depth 1"
    )
    report.notes.append(
        f"puts: {len(items)} items stored, {outside} copies on nodes outside their key's "
        f"{s.k} closest live nodes ({outside / len(items):.2f} a put: a put's lookup stores on "
        "the likely holders as it asks them)"
    )
    report.counters = _counters([net])
    report.simulated_seconds = net.clock.now
    return report


# -- crash ----------------------------------------------------------------------------------


def _crash_once(s: Settings, fraction: float, report: Report, table: Table) -> Network:
    """One crash: grow, store, kill ``fraction``, read every key, replicate for an interval."""
    net = s.network()  # the same seed: the same network, grown and filled the same way
    grow(net, s.nodes)
    s.say(net, f"crash {fraction:.0%}: {s.nodes} nodes joined")
    items = items_for(net, s.keys)
    stored = store(net, items)
    keys = [item.key for item, n in zip(items, stored, strict=True) if n]
    s.say(net, f"crash {fraction:.0%}: {len(keys)} of {s.keys} items stored")
    for node in net.rng.sample(net.live.items, round(fraction * s.nodes)):
        net.kill(node)
    killed_at = net.clock.now
    got = read(net, keys)
    readable = sum(1 for item in got if item is not None)
    s.say(net, f"crash {fraction:.0%}: killed; {readable} readable; replicating for an interval")
    net.clock.run(killed_at + net.intervals.replicate)
    # the nodes whose replication started before the interval was over finish it, within one
    # more interval; what is still running then is counted as it stands (and said)
    running = net.running
    limit = net.clock.now + net.intervals.replicate
    if not net.clock.run(limit, lambda: not running["replicate"]):
        report.notes.append(
            f"{fraction:.0%} crash: {running['replicate']} nodes were still replicating two "
            "replication intervals after the crash; replicas were counted then"
        )
    held = live_holders(net)
    counts = [replicas(net, key) for key in keys if key in held]
    s.say(net, f"crash {fraction:.0%}: replicated; {len(counts)} keys held")
    closest = min(s.k, len(net.live))
    floor = math.ceil(0.8 * closest)
    below = sum(1 for c in counts if c < floor)
    table.rows.append(
        [
            f"{fraction:.0%}",
            len(net.live),
            len(keys),
            readable,
            _percent(readable, len(keys)),
            len(keys) - len(counts),
            (net.clock.now - killed_at) / 60,
            min(counts, default=0),
            percentile(counts, 0.1),
            percentile(counts, 0.25),
            percentile(counts, 0.5),
            below,
        ]
    )
    goal = 1.0 if fraction <= 0.5 else 0.85
    report.targets += [
        Target(
            f"keys readable right after a {fraction:.0%} crash",
            "all" if goal == 1.0 else f"at least {goal:.0%}",
            f"{readable} of {len(keys)} ({_percent(readable, len(keys)):.2f}%)",
            readable >= goal * len(keys),
        ),
        Target(
            f"{fraction:.0%} crash, one replication interval later: surviving keys on at least "
            f"{floor} of their {closest} closest live nodes",
            "every key",
            f"{len(counts) - below} of {len(counts)} (min {min(counts, default=0)})",
            not below,
        ),
    ]
    return net


def crash(s: Settings) -> Report:
    """Kill a fraction of the network at once; read every key; replicate for one interval."""
    columns = ["killed", "alive", "keys", "readable", "readable %", "lost", "after (min)"]
    columns += ["replicas min", "p10", "p25", "p50", "< 80%"]
    table = Table(
        f"{s.nodes} nodes, {s.keys} keys at k={s.k}: reads right after the crash; replicas on "
        f"the {s.k} closest live nodes (all, when fewer are alive) one replication interval later",
        columns,
    )
    report = Report("crash", s.describe("kill"), [table])
    nets = [_crash_once(s, fraction, report, table) for fraction in s.kill]
    report.notes.append(
        "each fraction runs in a network of its own, grown and filled identically (same seed); "
        "a dead node never answers: requests to it time out after rpc_timeout; lost: stored "
        "keys no live node holds any more"
    )
    report.counters = _counters(nets)
    report.simulated_seconds = sum(net.clock.now for net in nets)
    return report


# -- silent ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Timed:
    """One operation of the silent scenario: whether it did its job, and how long it took."""

    ok: bool
    seconds: float
    #: Requests its lookup sent (gets), or live nodes that took the item (puts).
    count: int


def _timed_get(net: Network, node: SimNode, key: int, done: Callable[[_Timed], None]) -> None:
    started = net.clock.now

    def got(item: Item | None, found: SimLookup | None) -> None:
        queries = found.machine.queries if found is not None else 0
        done(_Timed(item is not None, net.clock.now - started, queries))

    node.get(key, got)


def _timed_put(net: Network, node: SimNode, item: Item, done: Callable[[_Timed], None]) -> None:
    started = net.clock.now

    def stored(took: int) -> None:
        done(_Timed(took > 0, net.clock.now - started, took))

    node.publish_own(item, DEFAULT_TTL, stored)


#: The quantiles of get latency the silent scenario reports (a distribution, for the plot).
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


def _silent_once(
    s: Settings, fraction: float, report: Report, table: Table, spread: Table
) -> Network:
    """One run: grow, store signed items, silence ``fraction``, then get and put through the
    nodes still answering."""
    net = s.network()
    grow(net, s.nodes)
    publishers = [net.ready.choice(net.rng) for _ in range(4)]
    items = [
        node.engine.next_version(f"silent {i}", b"value %d" % i)
        for i, node in enumerate(publishers[i % 4] for i in range(s.keys))
    ]
    store(net, items, [publishers[i % 4] for i in range(s.keys)])
    s.say(net, f"silent {fraction:.0%}: {s.nodes} nodes joined, {s.keys} items stored")
    protected = {node.index for node in publishers}
    victims = [n for n in net.live.items if n.index not in protected]
    for node in net.rng.sample(victims, round(fraction * s.nodes)):
        net.kill(node)  # on the bus a dead node and a silent one are alike: no answer, ever
    rng = net.rng
    reads = [(net.ready.choice(rng), rng.choice(items).key) for _ in range(s.lookups)]
    gets = run_jobs(net, [partial(_timed_get, net, n, k) for n, k in reads], "gets")
    writers = [(net.ready.choice(rng), i) for i in range(min(s.keys, s.lookups))]
    fresh = [node.engine.next_version(f"after {i}", b"new value %d" % i) for node, i in writers]
    puts = run_jobs(
        net,
        [
            partial(_timed_put, net, node, item)
            for (node, _), item in zip(writers, fresh, strict=True)
        ],
        "puts",
    )
    s.say(net, f"silent {fraction:.0%}: measured {len(gets)} gets and {len(puts)} puts")
    rtt = s.latency / 1000
    seconds = [g.seconds for g in gets]
    took = [p.count for p in puts]
    table.rows.append(
        [
            f"{fraction:.0%}",
            len(net.live),
            len(gets),
            _percent(sum(g.ok for g in gets), len(gets)),
            percentile(seconds, 0.5) * 1000,
            percentile(seconds, 0.95) * 1000,
            percentile(seconds, 0.99) * 1000,
            percentile(seconds, 0.99) / rtt if rtt else 0.0,
            mean([g.count for g in gets]),
            len(puts),
            min(took),
            percentile([float(t) for t in took], 0.1),
            percentile([float(t) for t in took], 0.5),
            percentile([p.seconds for p in puts], 0.99) * 1000,
        ]
    )
    spread.rows.append([f"{fraction:.0%}", *(percentile(seconds, q) * 1000 for q in QUANTILES)])
    failed = sum(not g.ok for g in gets)
    report.targets += [
        Target(
            f"{fraction:.0%} silent: gets through answering nodes that return the value",
            "all",
            f"{len(gets) - failed} of {len(gets)}",
            not failed,
        ),
        Target(
            f"{fraction:.0%} silent: get latency p99",
            "under 3 s",
            f"{percentile(seconds, 0.99):.2f} s",
            percentile(seconds, 0.99) < 3.0,
        ),
        Target(
            f"{fraction:.0%} silent: live nodes that took each put",
            f"at least k - 2 = {s.k - 2}",
            f"min {min(took)}",
            min(took) >= s.k - 2,
        ),
    ]
    return net


def silent(s: Settings) -> Report:
    """A fraction of the nodes stop answering (frozen hosts, whose connections stay open): gets
    of signed items and new puts through the nodes still answering."""
    columns = ["silent", "answering", "gets", "ok %", "ms p50", "ms p95", "ms p99", "p99 / RTT"]
    columns += ["RPCs mean", "puts", "took min", "p10", "p50", "put ms p99"]
    table = Table(
        f"{s.nodes} nodes, {s.keys} signed items at k={s.k}: gets and puts once a fraction of "
        "the nodes has stopped answering",
        columns,
    )
    spread = Table(
        "get latency (ms) at each quantile", ["silent", *(f"q{q * 100:g}" for q in QUANTILES)]
    )
    report = Report("silent", s.describe("silent", "lookups"), [table, spread])
    nets = [_silent_once(s, fraction, report, table, spread) for fraction in s.silent]
    report.notes.append(
        "each fraction runs in a network of its own, grown and filled identically (same seed); "
        "a silent node never answers (on the bus it is a dead one): requests to it time out "
        "after rpc_timeout; took: the nodes that accepted a put, all of them answering"
    )
    report.counters = _counters(nets)
    report.simulated_seconds = sum(net.clock.now for net in nets)
    return report


# -- idle -----------------------------------------------------------------------------------


def _background(net: Network, sent: dict[str, int], seconds: float) -> list[list[Cell]]:
    """Rows of messages and bytes per node per hour, by kind, sent since ``sent``."""
    hours = seconds / 3600
    nodes = len(net.live)
    wire = net.wire_bytes or {}
    rows: list[list[Cell]] = []
    for kind in sorted(set(net.sent) | set(wire)):
        count = net.sent.get(kind, 0) - sent.get(kind, 0)
        rows.append([kind, count / nodes / hours, wire.get(kind, 0) / nodes / hours])
    rows.append(
        [
            "all",
            sum(float(r[1]) for r in rows),
            sum(float(r[2]) for r in rows),
        ]
    )
    return rows


def idle(s: Settings) -> Report:
    """A grown network holding items, left alone: what keeping itself costs, per node and per
    item (replication, refresh, ping-before-evict, expiry), messages and bytes by kind.

    One round of replication is counted per ``intervals.replicate`` of the window."""
    net = s.network()
    grow(net, s.nodes)
    items = items_for(net, s.keys)
    store(net, items)
    s.say(net, f"idle: {s.nodes} nodes joined, {s.keys} items stored; idle for {s.hours:g} h")
    sent = dict(net.sent)
    publishes = _publishes(net)
    net.wire_bytes = {}  # requests and replies, from now on
    start = net.clock.now
    seconds = s.hours * 3600
    interval = net.intervals.replicate
    rounds = seconds / interval
    # Each interval of the window on its own: the first follows the puts, the next are steady.
    marks = [(0.0, publishes, net.sent.get("store", 0))]
    for n in range(1, math.ceil(rounds) + 1):
        net.clock.run(start + min(n * interval, seconds))
        marks.append((min(n * interval, seconds), _publishes(net), net.sent.get("store", 0)))
    traffic = Table(
        f"{s.nodes} nodes holding {s.keys} items at k={s.k}, left alone for {s.hours:g} h: "
        "messages and bytes per node per hour (requests; bytes count their replies too)",
        ["kind", "messages", "bytes"],
    )
    traffic.rows = _background(net, sent, seconds)
    per_item = Table(
        f"replication per item per interval ({interval / 3600:g} h), network-wide: each "
        "interval of the window, then all of it",
        ["interval", "publishes (lookups)", "stores"],
    )
    for (since, before, stored), (until, after, stored_after) in itertools.pairwise(marks):
        share = s.keys * (until - since) / interval  # item-intervals in this stretch
        label = f"{since / 3600:g}-{until / 3600:g} h"
        per_item.rows.append([label, (after - before) / share, (stored_after - stored) / share])
    (_, first, stored_first), (_, last, stored_last) = marks[0], marks[-1]
    per_item.rows.append(
        ["all", (last - first) / s.keys / rounds, (stored_last - stored_first) / s.keys / rounds]
    )
    report = Report("idle", s.describe("hours"), [traffic, per_item])
    report.notes.append(
        "what the nodes send of themselves: the refresh, replicate, republish, expire and save "
        f"jobs of txdht.core.schedule.Service, and what they set off (ping-before-evict, "
        f"handoff); {rounds:g} replication rounds in the window"
    )
    report.counters = _counters([net])
    report.simulated_seconds = net.clock.now
    return report


def _publishes(net: Network) -> int:
    """Publish operations the live nodes have started (each a lookup and its stores)."""
    return sum(node.engine.metrics.operations["Publish"] for node in net.live)


# -- adversary ------------------------------------------------------------------------------

#: Disjoint paths tried against each kind of adversary.
PATHS = (1, 2, 3, 4)
#: Ground ids tried next to one key, in the eclipse runs.
ECLIPSE = (5, 10, 15, 20, 25)
#: The /24 the eclipse's ground ids run on (one network, as a rented block would be).
ATTACKER_NET = "203.0.113"


@dataclass
class _Attempt:
    """What honest nodes managed against one kind of adversary, with one number of paths."""

    newest: int = 0
    gets: int = 0
    readable: int = 0
    puts: int = 0
    queries: list[int] = field(default_factory=list)
    #: Copies of the blobs on the key's k closest live nodes, and on other nodes, just after
    #: their puts.
    replicas: int = 0
    stray: int = 0


def _honest_round(
    s: Settings, net: Network, honest: list[SimNode], label: str, attempt: _Attempt
) -> None:
    """Honest nodes write names twice (the second version must win) and blobs, then other
    honest nodes read them all back."""
    rng = net.rng
    writers = [rng.choice(honest) for _ in range(s.keys)]
    names = [w.engine.next_version(f"{label} {i}", b"first") for i, w in enumerate(writers)]
    store(net, names, writers)
    newer = [w.engine.next_version(f"{label} {i}", b"second") for i, w in enumerate(writers)]
    store(net, newer, writers)
    blobs = [blob(f"{label} blob {i}".encode()) for i in range(s.keys)]
    store(net, blobs, writers)
    held = live_holders(net)
    for b in blobs:
        near = replicas(net, b.key)
        attempt.replicas += near
        attempt.stray += held.get(b.key, 0) - near

    def get(key: int, done: Callable[[tuple[Item | None, int]], None]) -> None:
        def got(item: Item | None, found: SimLookup | None) -> None:
            done((item, found.machine.queries if found is not None else 0))

        rng.choice(honest).get(key, got)

    reads = [rng.choice(newer) for _ in range(s.lookups)]
    for item, (got, queries) in zip(
        reads, run_jobs(net, [partial(get, i.key) for i in reads], "gets"), strict=True
    ):
        attempt.gets += 1
        attempt.newest += got is not None and got.seq == item.seq
        attempt.queries.append(queries)
    for item, (got, _) in zip(
        blobs, run_jobs(net, [partial(get, b.key) for b in blobs], "reads"), strict=True
    ):
        attempt.puts += 1
        attempt.readable += got == item


def _adversary_once(s: Settings, fraction: float, report: Report, table: Table) -> Network:
    net = s.network()
    grow(net, s.nodes)
    rng = net.rng
    hostile = rng.sample(net.live.items, round(fraction * s.nodes))
    honest = [n for n in net.live.items if n not in hostile]
    s.say(net, f"adversary {fraction:.0%}: {s.nodes} nodes joined, {len(hostile)} hostile")
    for kind in (*KINDS, "mixed"):
        turn(hostile, kind, net, rng)
        for paths in PATHS:
            for node in honest:
                node.engine.paths = paths
            attempt = _Attempt()
            _honest_round(s, net, honest, f"{fraction} {kind} {paths}", attempt)
            table.rows.append(
                [
                    f"{fraction:.0%}",
                    kind,
                    paths,
                    _percent(attempt.newest, attempt.gets),
                    _percent(attempt.readable, attempt.puts),
                    mean([float(q) for q in attempt.queries]),
                    attempt.replicas / attempt.puts,
                    attempt.stray / attempt.puts,
                ]
            )
        s.say(net, f"adversary {fraction:.0%}: {kind} measured")
    calm(hostile)
    return net


def _eclipse(s: Settings, table: Table) -> Network:
    """Adversaries with ids ground next to one key, colluding: how many hide it."""
    net = s.network()
    grow(net, s.nodes)
    rng = net.rng
    honest = list(net.live.items)
    publisher = honest[0]
    name = "eclipsed"
    key = publisher.engine.next_version(name, b"x").key
    beat = net.closest_live(key, 1)[0] ^ key  # nearer than every honest node
    ground: list[SimNode] = []
    tried = 0
    for count in ECLIPSE:
        identities, tries = grind(key, beat, count - len(ground), rng, limit=50_000_000)
        tried += tries
        for identity in identities:  # the attacker's hosts: one network
            node = net.add_node(identity, host=f"{ATTACKER_NET}.{len(ground) + 1}")
            net.start(node, net.seeds())
            ground.append(node)
        net.clock.run(net.clock.now + 120.0)  # they join (honestly, so far)
        turn(ground, "collude", net, rng)
        for cap in (0, net.limits.lookup_per_subnet):  # none, then the default
            limits = replace(net.limits, lookup_per_subnet=cap)
            for paths in PATHS:
                for node in honest:
                    node.engine.paths, node.engine.limits = paths, limits
                item = publisher.engine.next_version(name, b"value %d" % count)
                store(net, [item], [publisher])
                readers = [rng.choice(honest[1:]) for _ in range(s.lookups)]
                got = read_through(net, readers, item.key)
                ok = sum(1 for g in got if g is not None and g.seq == item.seq)
                table.rows.append(
                    [len(ground), tried, cap or "none", paths, _percent(ok, len(got))]
                )
        calm(ground)
    return net


def read_through(net: Network, readers: list[SimNode], key: int) -> list[Item | None]:
    """Get ``key`` through each of ``readers``."""

    def job(reader: SimNode, done: Callable[[Item | None], None]) -> None:
        reader.get(key, lambda item, _: done(item))

    return run_jobs(net, [partial(job, r) for r in readers], "reads")


def adversary(s: Settings) -> Report:
    """Hostile nodes that speak the protocol but serve their own ends (txdht.sim.adversary),
    and lookups over 1 to 4 disjoint paths: what honest nodes still read."""
    columns = [
        "hostile",
        "kind",
        "paths",
        "newest %",
        "readable %",
        "RPCs per get",
        "replicas a put",
        "stray copies a put",
    ]
    table = Table(
        f"{s.nodes} nodes at k={s.k}: gets by honest nodes of the newest version of names "
        "honest nodes wrote twice, and of blobs they put, with a fraction hostile",
        columns,
    )
    eclipse = Table(
        "eclipse: adversaries with ids ground nearer one key than any honest node, on one /24, "
        "colluding; gets of that key by honest nodes, whose lookups take at most 'subnet cap' "
        "contacts of one /24 from replies (--lookup-per-subnet; none: no limit)",
        ["ground ids", "keys tried", "subnet cap", "paths", "newest %"],
    )
    report = Report("adversary", s.describe("hostile", "lookups"), [table, eclipse])
    nets = [_adversary_once(s, fraction, report, table) for fraction in s.hostile]
    nets.append(_eclipse(s, eclipse))
    colluding = {row[2]: row for row in table.rows if row[0] == "20%" and row[1] == "collude"}
    for paths, row in colluding.items():  # the target reads the default number of paths
        if paths != PATHS_DEFAULT:
            continue
        others = ", ".join(
            f"{float(r[3]):.1f}% with {d} ({float(r[5]):.1f} RPCs per get)"
            for d, r in colluding.items()
            if d != paths
        )
        report.targets.append(
            Target(
                f"20% colluding: gets of the newest version by honest nodes, {paths} path(s) "
                "(the default)",
                "at least 99%",
                f"{float(row[3]):.1f}% ({float(row[5]):.1f} RPCs per get; {others})",
                float(row[3]) >= 99.0,
            )
        )
    report.notes.append(
        "each fraction runs in a network of its own, grown honestly; then the chosen nodes turn "
        "hostile, kind after kind (mixed: each picks a kind), and for each number of paths "
        f"honest nodes write {s.keys} names twice and put {s.keys} blobs, and {s.lookups} gets "
        "of the names and one of each blob follow, through other honest nodes; 'replicas a "
        f"put' counts the copies of a blob on its key's {s.k} closest live nodes just after "
        "the put, 'stray copies a put' those on other nodes"
    )
    report.counters = _counters(nets)
    report.simulated_seconds = sum(net.clock.now for net in nets)
    return report


# -- churn ----------------------------------------------------------------------------------


@dataclass
class _Hour:
    """What one hour of churn saw."""

    alive: int = 0
    replaced: int = 0
    lookups: int = 0
    lookups_ok: int = 0
    gets: int = 0
    gets_ok: int = 0
    replicas: list[int] = field(default_factory=list)


class _Churn:
    """The churn scenario's moving parts: replacements, probes, and what they found."""

    def __init__(self, s: Settings, net: Network, publishers: list[SimNode], keys: list[int]):
        self.s = s
        self.net = net
        self.keys = keys
        self.churnable = _Pool()
        protected = {p.index for p in publishers}
        for node in net.live:
            if node.index not in protected:
                self.churnable.add(node)
        self.start = net.clock.now
        self.end = self.start + s.hours * 3600
        self.hours = [_Hour() for _ in range(math.ceil(s.hours))]
        self.probes = 0

    def number(self) -> int:
        """The index of the hour now is in."""
        return min(int((self.net.clock.now - self.start) // 3600), len(self.hours) - 1)

    def hour(self) -> _Hour:
        """The hour now is in."""
        return self.hours[self.number()]

    def begin(self) -> None:
        """Schedule the replacements, probes and hourly snapshots."""
        clock, rng = self.net.clock, self.net.rng
        rate = self.s.churn * self.s.nodes / 3600
        if rate > 0:
            clock.later(rng.expovariate(rate), self.replace, rate)
        for step in range(1, int(self.s.hours * 3600 / PROBE_INTERVAL) + 1):
            clock.at(self.start + step * PROBE_INTERVAL - 1, self.probe)
        for hour in range(len(self.hours)):
            clock.at(min(self.start + (hour + 1) * 3600, self.end) - 0.5, self.snapshot)

    def replace(self, rate: float) -> None:
        """A random node leaves without a goodbye; a new one joins through a random node."""
        net = self.net
        victim = self.churnable.choice(net.rng)
        net.kill(victim)
        self.churnable.discard(victim)
        newcomer = net.add_node()
        net.start(newcomer, net.seeds())
        self.churnable.add(newcomer)
        self.hour().replaced += 1
        following = net.clock.now + net.rng.expovariate(rate)
        if following < self.end:
            net.clock.at(following, self.replace, rate)

    def probe(self) -> None:
        """Lookups of random ids and gets of random keys, from random nodes."""
        net, hour = self.net, self.hour()
        for _ in range(PROBES):
            self.probes += 2
            node = net.ready.choice(net.rng)
            target = net.rng.getrandbits(512)
            truth = _truth(net, target, node.engine.id)[:3]
            node.lookup(target, partial(self.looked_up, hour, truth))
            reader = net.ready.choice(net.rng)
            reader.get(net.rng.choice(self.keys), partial(self.got, hour))

    def looked_up(self, hour: _Hour, truth: list[int], found: SimLookup) -> None:
        """A probe lookup ended: it succeeded if it found the closest node still alive."""
        live = [i for i in truth if self.net.by_id[i].alive]
        hour.lookups += 1
        hour.lookups_ok += not live or live[0] in {c.id for c in found.machine.closest()}

    def got(self, hour: _Hour, item: Item | None, found: SimLookup | None) -> None:
        """A probe get ended."""
        hour.gets += 1
        hour.gets_ok += item is not None

    def snapshot(self) -> None:
        """Count each key's replicas on its k closest live nodes."""
        hour = self.hour()
        hour.alive = len(self.net.live)
        hour.replicas = [replicas(self.net, key) for key in self.keys]
        self.s.say(
            self.net,
            f"churn: hour {self.number() + 1} of {len(self.hours)}: {hour.replaced} replaced, "
            f"lookups {hour.lookups_ok}/{hour.lookups}, gets {hour.gets_ok}/{hour.gets}",
        )


def churn(s: Settings) -> Report:
    """Replace a fraction of the nodes every hour, with the housekeeping of the real node."""
    net = s.network()
    grow(net, s.nodes)
    publishers = net.nodes[: max(1, s.nodes // 20)]
    items = items_for(net, s.keys)
    stored = store(net, items, publishers)
    keys = [item.key for item, n in zip(items, stored, strict=True) if n]
    s.say(net, f"churn: {s.nodes} nodes joined, {len(keys)} of {s.keys} items stored")
    churning = _Churn(s, net, publishers, keys)
    sent, started = dict(net.sent), net.clock.now
    net.wire_bytes = {}  # requests and replies, from now on
    churning.begin()
    net.clock.run(churning.end + 2 * s.rpc_timeout * s.k)  # the last probes end (or die)
    traffic = Table(
        "messages and bytes per node per hour while churning, by kind (joins, housekeeping "
        "and the probes; requests, and bytes count their replies too)",
        ["kind", "messages", "bytes"],
    )
    traffic.rows = _background(net, sent, net.clock.now - started)
    columns = ["hour", "alive", "replaced", "lookups", "ok %", "gets", "ok %"]
    columns += ["replicas min", "p25", "p50"]
    table = Table(
        f"{s.nodes} nodes ({len(publishers)} publishers stay up), {s.churn:.0%} replaced per "
        f"hour, {len(keys)} keys at k={s.k}",
        columns,
    )
    for number, hour in enumerate(churning.hours):
        table.rows.append(
            [
                f"{number}-{number + 1}",
                hour.alive,
                hour.replaced,
                hour.lookups,
                _percent(hour.lookups_ok, hour.lookups),
                hour.gets,
                _percent(hour.gets_ok, hour.gets),
                min(hour.replicas, default=0),
                percentile(hour.replicas, 0.25),
                percentile(hour.replicas, 0.5),
            ]
        )
    hours = churning.hours
    looked, found = sum(h.lookups for h in hours), sum(h.lookups_ok for h in hours)
    gets, got = sum(h.gets for h in hours), sum(h.gets_ok for h in hours)
    samples = [count for h in hours for count in h.replicas]
    quartile = percentile(samples, 0.25)
    floor = math.ceil(0.7 * s.k)
    report = Report("churn", s.describe("hours", "churn"), [table, traffic])
    report.targets += [
        Target(
            "lookup success (finds the closest live node)",
            "at least 99.5%",
            f"{found} of {looked} ({_percent(found, looked):.2f}%)",
            _percent(found, looked) >= 99.5,
        ),
        Target(
            "value availability (a get of a stored key returns it)",
            "at least 99.9%",
            f"{got} of {gets} ({_percent(got, gets):.2f}%)",
            _percent(got, gets) >= 99.9,
        ),
        Target(
            f"live replicas on a key's {s.k} closest live nodes (hourly), lower quartile",
            f"at least {floor}",
            f"{quartile:g} (min {min(samples, default=0)}, median {percentile(samples, 0.5):g})",
            quartile >= floor,
        ),
    ]
    replaced = sum(h.replaced for h in hours)
    report.notes += [
        f"{replaced} nodes replaced (killed without a goodbye; a new one joined through a random "
        f"node); every {PROBE_INTERVAL:g} s, {PROBES} FIND_NODE lookups of random ids and "
        f"{PROBES} gets of random keys, each from a random node; {churning.probes - looked - gets}"
        " probes ended with their own node",
        "the publishers (the oldest nodes) stay up and republish every 12 h, as the owner of "
        "data keeps a node up; replicas are counted at the end of each hour",
    ]
    report.counters = _counters([net])
    report.simulated_seconds = net.clock.now
    return report


# -- partition ------------------------------------------------------------------------------


class _Writer:
    """The publisher of the partition scenario, and the newest version of each name it got
    acknowledged (stored by at least one node)."""

    def __init__(self, net: Network, node: SimNode, names: list[str]) -> None:
        self.net = net
        self.node = node
        self.keys = {name: mutable_key(node.engine.identity.public_bytes, name) for name in names}
        self.acked = dict.fromkeys(names, 0)
        #: The sequence number last written of each name.
        self.seqs: dict[str, int] = {}
        self.written = 0
        self.acknowledged = 0

    def write(
        self, name: str, done: Callable[[int], None] | None = None, ttl: float = DEFAULT_TTL
    ) -> None:
        """Publish the next version of ``name``: kept (and republished) by the writer, or, with
        a ``ttl`` shorter than the default, stored for ``ttl`` seconds and left to expire."""
        value = f"{name} at {self.net.clock.now:.0f}".encode()
        item = self.node.engine.next_version(name, value, self.seqs.get(name))
        self.seqs[name] = item.seq
        stored = partial(self._stored, name, item.seq, done)
        if ttl < DEFAULT_TTL:  # not remembered, so numbered here
            self.node.publish(item, ttl, stored)
        else:
            self.node.publish_own(item, DEFAULT_TTL, stored)

    def _stored(self, name: str, seq: int, done: Callable[[int], None] | None, count: int) -> None:
        self.written += 1
        if count:
            self.acknowledged += 1
            self.acked[name] = max(self.acked[name], seq)
        if done is not None:
            done(count)

    def read(self, name: str, reader: SimNode, done: Callable[[int], None]) -> None:
        """Get ``name`` through ``reader``: the sequence number found (-1: none)."""
        reader.get(self.keys[name], lambda item, _: done(item.seq if item is not None else -1))


def partition(s: Settings) -> Report:
    """Split the network in two while a publisher writes on one side; heal; read everywhere."""
    net = s.network()
    grow(net, s.nodes)
    names = [f"name-{i}" for i in range(s.keys)]
    writer = _Writer(net, net.ready.choice(net.rng), names)
    run_jobs(net, [partial(writer.write, name) for name in names], "writing")
    before = (writer.written, writer.acknowledged)
    sides = {node.index: net.rng.randrange(2) for node in net.live}
    sides[writer.node.index] = 0
    net.split(sides)
    split_at = net.clock.now
    heal_at = split_at + s.minutes * 60
    for step in range(1, int(s.minutes * 60 / WRITE_INTERVAL) + 1):
        for name in names:
            net.clock.at(split_at + step * WRITE_INTERVAL - 1, writer.write, name)
    s.say(net, f"partition: {s.nodes} nodes joined, {before[1]} writes acknowledged; split")
    net.clock.run(heal_at)
    net.heal()
    s.say(net, f"partition: healed after {writer.written - before[0]} writes during the split")
    interval = net.intervals.replicate
    columns = [
        "after healing",
        "gets",
        "newest %",
        "older",
        "none",
        "older copies held",
        "stores refused",
        "catch-ups",
    ]
    checks = Table(f"{s.nodes} nodes split in two for {s.minutes:g} min; {s.keys} names", columns)
    newest = total = 0
    refused = caught = 0
    for check in range(3):
        net.clock.run(heal_at + check * interval)
        # Before the gets (whose read repair mends what they find): the copies of an older
        # version than the last acknowledged one, and the stores refused and catch-ups run
        # since the last check (what replicating those copies costs, and what ends it).
        older_copies = _older_copies(net, writer)
        refused, was_refused = _count(net, ("sent", "store", "error")), refused
        caught, was_caught = _operations(net, "CatchUp"), caught
        readers = [(name, net.ready.choice(net.rng)) for name in names for _ in range(READERS)]
        seqs = run_jobs(net, [partial(writer.read, n, r) for n, r in readers], "reading")
        newest = sum(
            seq == writer.acked[name] for (name, _), seq in zip(readers, seqs, strict=True)
        )
        total = len(seqs)
        none = seqs.count(-1)
        s.say(
            net, f"partition: {check * interval / 60:g} min after healing, {newest}/{total} newest"
        )
        checks.rows.append(
            [
                f"{check * interval / 60:g} min",
                total,
                _percent(newest, total),
                total - newest - none,
                none,
                older_copies,
                refused - was_refused,
                caught - was_caught,
            ]
        )
    lost = 0
    for name, key in writer.keys.items():
        seqs = [r.item.seq for node in net.live if (r := node.engine.storage.get(key)) is not None]
        lost += max(seqs, default=0) < writer.acked[name]
    writes = Table("writes", ["phase", "written", "acknowledged"])
    writes.rows = [
        ["before the split", *before],
        ["during the split", writer.written - before[0], writer.acknowledged - before[1]],
    ]
    report = Report("partition", s.describe("minutes"), [writes, checks])
    report.targets += [
        Target(
            "gets return the newest acknowledged version two replication intervals after healing",
            "every get",
            f"{newest} of {total}",
            newest == total,
        ),
        Target("acknowledged writes lost", "none", f"{lost} names", not lost),
    ]
    report.notes.append(
        f"the publisher is on side 0 with {sum(1 for v in sides.values() if not v)} nodes "
        f"(side 1: {sum(1 for v in sides.values() if v)}); it writes a new version of every name "
        f"every {WRITE_INTERVAL:g} s during the split; {READERS} gets per name, each through a "
        "random node, at each check. Older copies held: live nodes holding a version older than "
        "the last acknowledged one, counted before the check's gets; stores refused and "
        "catch-ups: since the check before (a holder whose replica is refused as stale fetches "
        "the newer version, operations.CatchUp)"
    )
    report.counters = _counters([net])
    report.simulated_seconds = net.clock.now
    return report


def _older_copies(net: Network, writer: _Writer) -> int:
    """Copies held by live nodes of a version older than the last one acknowledged."""
    return sum(
        1
        for name, key in writer.keys.items()
        for node in net.live
        if (record := node.engine.storage.get(key)) is not None
        and record.item.seq < writer.acked[name]
    )


def _count(net: Network, rpc: tuple[str, str, str]) -> int:
    """RPCs of one kind (direction, type, outcome) counted by every node, live or not."""
    return sum(node.engine.metrics.rpcs[rpc] for node in net.nodes)


def _operations(net: Network, kind: str) -> int:
    """Operations of one kind every node has started, live or not."""
    return sum(node.engine.metrics.operations[kind] for node in net.nodes)


# -- listen ---------------------------------------------------------------------------------

#: Listen: listeners per name (at most half the other nodes: the rest are replaced).
LISTENERS = 20
#: Listen: the name written three times in the still network and then left to expire, and how
#: long its versions are stored (at most half the run).
EXPIRING = "expiring"
EXPIRING_TTL = 1800.0


class _Heard:
    """What the listeners of the listen scenario were told, and when each version was
    acknowledged to its writer."""

    def __init__(self, net: Network, writer: _Writer) -> None:
        self.net = net
        self.writer = writer
        #: (name, seq) -> when the store was acknowledged (the put's outcome reached the writer).
        self.acked_at: dict[tuple[str, int], float] = {}
        #: (name, seq) -> when its put started (versions are numbered 1, 2... in write order).
        self.put_at: dict[tuple[str, int], float] = {}
        #: (listener index, name) -> [(seq, when, expired)], in the order the listener was told.
        self.told: dict[tuple[int, str], list[tuple[int, float, bool]]] = {}

    def write(self, name: str, ttl: float = DEFAULT_TTL) -> None:
        """Write the next version of ``name`` (stored for ``ttl`` seconds), noting when it
        starts and is acknowledged."""
        seq = 1 + sum(1 for n, _ in self.put_at if n == name)
        self.put_at[(name, seq)] = self.net.clock.now
        self.writer.write(name, partial(self._acked, name), ttl)

    def _acked(self, name: str, count: int) -> None:
        if count:
            self.acked_at.setdefault((name, self.writer.acked[name]), self.net.clock.now)

    def listen(self, node: SimNode, name: str) -> None:
        """``node`` listens to ``name``."""
        told = self.told.setdefault((node.index, name), [])
        node.listen(
            self.writer.keys[name],
            lambda notice: told.append((notice.seq, self.net.clock.now, notice.expired)),
        )

    def delays(
        self, since: float = 0.0, until: float = math.inf, start: bool = False
    ) -> list[float]:
        """For every version acknowledged after ``since`` (up to ``until``) and every listener
        of its name, the seconds from the acknowledgement (``start``: from the put's start) to
        the listener being told (0 when told first; infinite when never told)."""
        delays = []
        for (_, name), told in self.told.items():
            when: dict[int, float] = {}
            for seq, at, expired in told:
                if not expired:
                    when.setdefault(seq, at)  # the first time it was told
            for (acked_name, seq), acked in self.acked_at.items():
                if acked_name == name and since < acked <= until:
                    origin = self.put_at[(name, seq)] if start else acked
                    delays.append(max(0.0, when.get(seq, math.inf) - origin))
        return delays

    def misses(self) -> tuple[int, int, int, int]:
        """Over every listener and name: versions acknowledged, versions never told, versions
        told twice or more, and listeners told out of order."""
        expected = missing = twice = disorder = 0
        for (_, name), told in self.told.items():
            seqs = [seq for seq, _, expired in told if not expired]
            acked = {seq for (n, seq) in self.acked_at if n == name}
            expected += len(acked)
            missing += len(acked - set(seqs))
            twice += len(seqs) - len(set(seqs))
            disorder += seqs != sorted(seqs)
        return expected, missing, twice, disorder

    def expiries(self, name: str, expired_at: float) -> tuple[int, int, str]:
        """The listeners of ``name``, how many were last told that its newest acknowledged
        version expired, and how long after ``expired_at`` they were told (p50; "" if none)."""
        newest = max(seq for (n, seq) in self.acked_at if n == name)
        listeners = told_expired = 0
        delays = []
        for (_, listened), told in self.told.items():
            if listened != name:
                continue
            listeners += 1
            if told and told[-1][0] == newest and told[-1][2]:
                told_expired += 1
                delays.append(told[-1][1] - expired_at)
        late = f", {percentile(delays, 0.5):.0f} s (p50) after it expired" if delays else ""
        return listeners, told_expired, late


def listen(s: Settings) -> Report:
    """Listeners on the names a writer updates: how soon each new version reaches them, in a
    still network and then while nodes are replaced (``--churn`` per hour for ``--hours``)."""
    net = s.network()
    grow(net, s.nodes)
    names = [f"name-{i}" for i in range(s.keys)]
    writer = _Writer(net, net.ready.choice(net.rng), [*names, EXPIRING])
    heard = _Heard(net, writer)
    others = [node for node in net.ready if node is not writer.node]
    listeners: set[SimNode] = set()
    for name in [*names, EXPIRING]:
        for node in net.rng.sample(others, min(LISTENERS, len(others) // 2)):  # others churn
            heard.listen(node, name)
            listeners.add(node)
    net.clock.run(net.clock.now + 30)  # the listens are placed
    rtt = s.latency / 1000
    still = net.clock.now
    # Three versions of each name, a minute apart, in a still network; the expiring name's are
    # stored for a short time and never written again: its listeners must be told it expired.
    ttl = min(EXPIRING_TTL, s.hours * 3600 / 2)
    for round_ in range(3):
        for name in names:
            net.clock.at(still + 60 * round_ + 1, heard.write, name)
        net.clock.at(still + 60 * round_ + 1, heard.write, EXPIRING, ttl)
    net.clock.run(still + 240)
    expired_at = heard.put_at[(EXPIRING, 3)] + ttl  # its last holder dropped it by then
    quiet = heard.delays()
    s.say(net, f"listen: {len(quiet)} deliveries measured in the still network")
    churning = _Churn(s, net, [writer.node, *listeners], [writer.keys[n] for n in names])
    churning.begin()
    steps = int(s.hours * 3600 / WRITE_INTERVAL)
    for step in range(1, steps + 1):
        for name in names:
            net.clock.at(churning.start + step * WRITE_INTERVAL - 2, heard.write, name)
    net.clock.run(churning.end + 2 * s.rpc_timeout * s.k)
    during = heard.delays(churning.start)
    expected, missing, twice, disorder = heard.misses()
    expiring_listeners, told_expired, late = heard.expiries(EXPIRING, expired_at)
    table = Table(
        f"{s.nodes} nodes, {s.keys} names with {LISTENERS} listeners each, RTT {s.latency:g} ms",
        [
            *("phase", "versions", "deliveries", "p50 ms", "p99 ms", "max ms", "never told"),
            *("from put p50 ms", "p99 ms"),
        ],
    )
    for label, delays, versions, since, until in (
        ("still", quiet, 3 * (len(names) + 1), 0.0, churning.start),
        (
            f"{s.churn:.0%}/h churn, {s.hours:g} h",
            during,
            len(heard.acked_at) - 3 * (len(names) + 1),
            churning.start,
            math.inf,
        ),
    ):
        whole = heard.delays(since, until, start=True)
        told = [d for d in delays if d < math.inf]
        table.rows.append(
            [
                label,
                versions,
                len(delays),
                round(percentile(told, 0.5) * 1000, 1),
                round(percentile(delays, 0.99) * 1000, 1) if told else "-",
                round(max(told, default=0) * 1000, 1),
                len(delays) - len(told),
                round(percentile([d for d in whole if d < math.inf], 0.5) * 1000, 1),
                round(percentile([d for d in whole if d < math.inf], 0.99) * 1000, 1),
            ]
        )
    p99 = percentile(quiet, 0.99)
    report = Report("listen", s.describe("hours", "churn"), [table])
    report.targets += [
        Target(
            "a new version reaches every listener within 2 RTT of the store's acknowledgement "
            "(still network, p99)",
            f"at most {2 * rtt * 1000:g} ms",
            f"{p99 * 1000:.1f} ms" if p99 < math.inf else "not all told",
            p99 <= 2 * rtt,
        ),
        Target(
            "while churning, every listener is told every acknowledged version exactly once, "
            "in order",
            "none missed, none twice, none out of order",
            f"{missing} missed, {twice} twice, {disorder} out of order, of {expected}",
            not (missing or twice or disorder),
        ),
        Target(
            f"every listener of a name left to expire (stored for {ttl:g} s) is told it expired",
            f"{expiring_listeners} of {expiring_listeners}",
            f"{told_expired} of {expiring_listeners}{late}",
            told_expired == expiring_listeners,
        ),
    ]
    replaced = sum(h.replaced for h in churning.hours)
    report.notes += [
        f"the writer and the {len(listeners)} listening nodes stay up; {replaced} other nodes "
        f"were replaced; each name gets a new version every {WRITE_INTERVAL:g} s "
        "while churning; a delivery before the writer heard its put acknowledged counts as 0",
    ]
    report.counters = _counters([net])
    report.simulated_seconds = net.clock.now
    return report


SCENARIOS: dict[str, Callable[[Settings], Report]] = {
    "lookup": lookup,
    "crash": crash,
    "silent": silent,
    "idle": idle,
    "adversary": adversary,
    "churn": churn,
    "partition": partition,
    "listen": listen,
}
