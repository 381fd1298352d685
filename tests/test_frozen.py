"""Frozen peers with real processes: reads finish within their deadline while a third of the
`twistd -n dht` nodes on loopback are stopped with SIGSTOP (issue 15, "never wait on a silent
peer").

A frozen process keeps its sockets: the kernel still completes TCP handshakes on its listening
port and buffers what is written to it, but nothing answers. That is the worst kind of silent
peer: no reset, no refused connection, only requests that never get a reply. Items are put
through the HTTP API (mutable names and blobs), a third of the nodes are frozen, and every item
is read through the live ones with ``?timeout=READ_TIMEOUT``: each read must return the right
value, no read may answer 504, and each must answer within ``READ_TIMEOUT`` plus ``SLACK`` (the
HTTP exchange and a loaded machine, around the node's own deadline). A put made while they are
frozen must succeed within the same bound, on k live nodes, and be read. Then the frozen nodes
are thawed with SIGCONT and, as a separate check, every item is read again through them.

k is one more than half the processes: freezing a third of them then leaves at least
``K - FROZEN`` live replicas of every item (3 of 7 in the small configuration, 11 of 32 in the
large one), so every read must succeed; and most items have frozen holders, which the reads
must get past.

The small configuration (12 processes, 24 items) runs in CI; ``TXDHT_FROZEN_LARGE=1`` runs 63
processes, 21 of them frozen, and 90 items. Every wait is bounded, and every process is thawed
and killed at the end, pass or fail. Like the other real-process tests it runs on the default
reactor's pass only.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_processes import START_TIMEOUT, NodeProcess, _once, kill_all, start_joined

__all__ = ["_once"]  # the fixture that keeps these to the default reactor's pass

pytestmark = pytest.mark.e2e

LARGE = os.environ.get("TXDHT_FROZEN_LARGE") == "1"
PROCESSES, NAMES, BLOBS = (63, 60, 30) if LARGE else (12, 16, 8)
FROZEN = PROCESSES // 3
K = PROCESSES // 2 + 1
SEED = 20240615
#: The deadline every read (and the put made during the freeze) is given: ``?timeout=``.
READ_TIMEOUT = 5.0
#: What a read may take beyond its deadline: the HTTP exchange on a loaded two-core machine.
SLACK = 1.0
#: The client gives up this late, so that a read over its bound is measured, not cut short.
CLIENT_TIMEOUT = READ_TIMEOUT + 25.0
#: Seconds a put before the freeze, a status request or a read after the thaw may take.
REQUEST_TIMEOUT = 30.0
#: Seconds a node may take to answer its API after it is started; 63 processes starting at once
#: on two cores need far longer than one.
READY_TIMEOUT = 240.0 if LARGE else START_TIMEOUT
#: Seconds a process may take to show as stopped after SIGSTOP, or running after SIGCONT.
SIGNAL_TIMEOUT = 10.0


@pytest.fixture
def network(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """``PROCESSES`` joined nodes; every one is thawed and killed at the end, pass or fail."""
    started = [NodeProcess(tmp_path / f"node{i}") for i in range(PROCESSES)]
    try:
        start_joined(started, k=K, timeout=READY_TIMEOUT)
        # The first node joins through those that contacted it (and saves them) within seconds.
        deadline = time.monotonic() + START_TIMEOUT
        while "joined the network" not in started[0].log.read_text():
            assert time.monotonic() < deadline, started[0].log_tail()
            time.sleep(0.1)
        yield started
    finally:
        for node in started:  # a stopped process dies of SIGKILL too, but leave none stopped
            node.send_signal(signal.SIGCONT)
        kill_all(started)


@dataclass
class Answer:
    """One HTTP request's outcome: status (0: no HTTP answer), body, wall-clock seconds."""

    status: int
    body: bytes
    seconds: float


def timed(node: NodeProcess, path: str, method: str = "GET", body: bytes | None = None) -> Answer:
    """One request to ``node``'s API, timed from before the connection to the last byte."""
    request = urllib.request.Request(node.url + path, data=body, method=method)
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as answer:
            status, content = answer.status, answer.read()
    except urllib.error.HTTPError as e:
        status, content = e.code, e.read()
    except OSError as e:  # no HTTP answer at all: refused, reset, or the client's timeout
        status, content = 0, repr(e).encode()
    return Answer(status, content, time.monotonic() - start)


def store(node: NodeProcess, path: str, method: str, value: bytes) -> dict[str, object]:
    """A put through ``node`` (before the freeze): its 201 answer."""
    request = urllib.request.Request(node.url + path, data=value, method=method)
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
        assert answer.status == 201
        return dict(json.loads(answer.read()))


def state(node: NodeProcess) -> str:
    """The process's state letter from /proc (T: stopped by a signal)."""
    assert node.process is not None
    stat = Path(f"/proc/{node.process.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def wait_state(nodes: Sequence[NodeProcess], stopped: bool) -> None:
    """Wait (bounded) until every one of ``nodes`` is stopped, or none is."""
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while any((state(node) == "T") != stopped for node in nodes):
        assert time.monotonic() < deadline, [state(node) for node in nodes]
        time.sleep(0.05)


def percentile(seconds: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``seconds`` (not empty)."""
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(what: str, seconds: Sequence[float], deadline: float = READ_TIMEOUT) -> str:
    """Count, p50, p99 and max of some latencies, in one line."""
    if not seconds:
        return f"{what}: none"
    p50, p99 = percentile(seconds, 0.5), percentile(seconds, 0.99)
    return (
        f"{what}: {len(seconds)}, p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(seconds):.3f} s"
        f" (deadline {deadline:g} s)"
    )


def test_reads_through_live_nodes_answer_in_time_while_a_third_are_frozen(
    network: list[NodeProcess],
) -> None:
    """With a third of the processes frozen by SIGSTOP, every item is read through the live
    nodes within its deadline (no 504), a put succeeds and is read; after SIGCONT every item is
    read again through the thawed nodes."""
    rng = random.Random(SEED)
    ident = {id(node): str(node.status()["id"]) for node in network}
    values: dict[str, bytes] = {}
    holders: dict[str, set[str]] = {}
    puts = [
        (f"/v1/names/frozen-{i}", "PUT", f"value {i} {rng.random()}".encode()) for i in range(NAMES)
    ]
    puts += [("/v1/blobs", "POST", rng.randbytes(100 + 37 * i)) for i in range(BLOBS)]
    for path, method, value in puts:
        answer = store(rng.choice(network), path, method, value)
        assert answer["stored_on"] == K, f"{path} was stored on {answer['stored_on']} nodes"
        key = str(answer["key"])
        values[key] = value
        holders[key] = set(answer["holders"])  # type: ignore[call-overload]

    frozen = rng.sample(network, FROZEN)
    live = [node for node in network if node not in frozen]
    frozen_ids = {ident[id(node)] for node in frozen}
    exposed = sum(1 for key in values if holders[key] & frozen_ids)
    assert exposed, "no item has a frozen holder: the freeze would test nothing"
    for node in frozen:
        node.send_signal(signal.SIGSTOP)
    wait_state(frozen, stopped=True)

    def read(key: str, reader: NodeProcess) -> None:
        """Read ``key`` through ``reader`` with the deadline, and keep the outcome."""
        reads.append((key, reader, timed(reader, f"/v1/keys/{key}?timeout={READ_TIMEOUT:g}")))

    def check(what: str) -> str:
        """Fail, saying why and how long reads took, unless every read so far answered the
        right value in time; the latencies' summary."""
        latencies = summary(what, [got.seconds for _, _, got in reads])
        failed = [
            (key, reader, got)
            for key, reader, got in reads
            if got.status != 200 or got.body != values[key] or got.seconds > READ_TIMEOUT + SLACK
        ]
        if failed:
            key, reader, got = failed[0]
            timeouts = sum(1 for _, _, bad in failed if bad.status == 504)
            first = f"{key[:16]} through {reader.url}: {got.status} in {got.seconds:.3f} s"
            pytest.fail(
                f"{len(failed)} of {len(reads)} reads failed ({timeouts} answered 504; each must"
                f" bring the value within {READ_TIMEOUT:g} s + {SLACK:g} s slack); {latencies};"
                f" first: {first}, {got.body[:300]!r}\nits reader's log:\n{reader.log_tail()}"
            )
        return latencies

    reads: list[tuple[str, NodeProcess, Answer]] = []
    for key in values:
        read(key, rng.choice(live))
    assert all(state(node) == "T" for node in frozen)  # every read above ran during the freeze
    during = check(
        f"reads through {len(live)} live nodes, {FROZEN} of {PROCESSES} frozen, {exposed} of"
        f" {len(values)} items with a frozen holder"
    )
    print(f"\n{during}")

    writer = rng.choice(live)
    late_value = b"put while a third are frozen"
    late = timed(writer, f"/v1/names/late?timeout={READ_TIMEOUT:g}", "PUT", late_value)
    late_put = (
        f"put while frozen: {late.status} in {late.seconds:.3f} s, {late.body[:300]!r}; {during}"
        f"\nits writer's log:\n{writer.log_tail()}"
    )
    assert late.status == 201, late_put
    assert late.seconds <= READ_TIMEOUT + SLACK, late_put
    stored = json.loads(late.body)
    assert stored["stored_on"] == K, late_put
    assert not set(stored["holders"]) & frozen_ids, late_put
    values[str(stored["key"])] = late_value
    read(str(stored["key"]), rng.choice([node for node in live if node is not writer]))
    assert all(state(node) == "T" for node in frozen)
    during = check(f"reads during the freeze, the late put's included ({FROZEN} frozen)")
    print(f"put while frozen: {late.seconds:.3f} s, stored on {stored['stored_on']}\n{during}")

    for node in frozen:
        node.send_signal(signal.SIGCONT)
    wait_state(frozen, stopped=False)
    for node in frozen:
        node.wait_ready(timeout=REQUEST_TIMEOUT)
    again = []
    for i, key in enumerate(values):
        thawed = frozen[i % len(frozen)]
        again.append((key, thawed, timed(thawed, f"/v1/keys/{key}?timeout={REQUEST_TIMEOUT:g}")))
    after = summary(
        "reads through the thawed nodes", [got.seconds for _, _, got in again], REQUEST_TIMEOUT
    )
    print(after)
    unread = [(key, node, got) for key, node, got in again if got.body != values[key]]
    if unread:
        key, node, got = unread[0]
        pytest.fail(
            f"{len(unread)} of {len(values)} items unread after the thaw; {after}; first:"
            f" {key[:16]} through {node.url}: {got.status} in {got.seconds:.3f} s,"
            f" {got.body[:300]!r}\nits log:\n{node.log_tail()}"
        )
