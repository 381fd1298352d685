"""The simulator does what the real node does: one scenario, run on both, gives the same results.

The same scenario (the same identities, the same random streams, a few dozen nodes) runs on the
simulator (``txdht.sim``) and on ``txdht.testing.MemoryNetwork`` (real Twisted nodes on
in-memory connections): nodes join one after another, items are put and read, some nodes go
silent (a crash: their requests time out), reads go on, one node replicates. Both drive the
same core, so every get must return the same value, every put must land on the same holders,
and, phase by phase, the nodes must send the same number of requests of every kind.

For that the simulator runs with no latency: it then delivers messages in the order they were
sent, as ``MemoryNetwork.flush`` does, and time moves only when a request times out, in both.
With latency the order of deliveries would differ from the in-memory network's, and so the
routing tables and the message counts, though not the results (``test_sim`` covers latency).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from txdht.core import operations as ops
from txdht.core.items import Identity, Item
from txdht.node import Node
from txdht.sim.network import Network, SimNode
from txdht.testing import UNLIMITED, MemoryNetwork

NODES = 24
K = 8
SEED = 7
PUBLISHERS = (3, 9, 15)
SILENCED = 3


def identity(index: int) -> Identity:
    """Node ``index``'s key pair, the same in both networks."""
    return Identity.from_private_bytes(hashlib.sha256(b"conformance %d" % index).digest())


def rng(index: int) -> random.Random:
    """Node ``index``'s random stream (its refresh targets), the same in both networks."""
    return random.Random(SEED * 1000 + index)


class Scenario:
    """The scenario's steps, run on one network through ``do`` (start an operation on node
    ``index``, wait for it, return it), ``silence`` (node ``index`` stops answering), ``sent``
    (the requests sent so far, by kind) and ``address`` (where node ``index`` listens)."""

    def __init__(
        self,
        do: Callable[[int, ops.Operation], ops.Operation],
        silence: Callable[[int], None],
        sent: Callable[[], Counter[str]],
        address: Callable[[int], tuple[str, int]],
    ) -> None:
        self.do, self.silence, self.sent, self.address = do, silence, sent, address
        #: What each phase found, and the requests sent during it, by kind.
        self.results: dict[str, Any] = {}
        self.messages: dict[str, Counter[str]] = {}

    def phase(self, name: str, step: Callable[[], Any]) -> None:
        """Run ``step``, keeping what it found and the requests it sent."""
        before = self.sent()
        self.results[name] = step()
        self.messages[name] = self.sent() - before

    def run(self, engines: list[Any]) -> None:
        """Run every phase on the nodes whose engines are ``engines``."""
        self.engines = engines
        self.phase("join", self.joins)
        self.phase("put", self.puts)
        self.phase("get", self.gets)
        self.phase("crash", self.crash)
        self.phase("get after the crash", self.gets)
        self.phase("replicate", self.replicate)
        self.phase("get after replication", self.gets)

    def joins(self) -> list[int]:
        return [self.do(i, ops.Join([self.address(0)])).result for i in range(1, NODES)]

    def puts(self) -> list[list[int]]:
        self.items: list[Item] = []
        holders = []
        for n, index in enumerate(PUBLISHERS):
            engine = self.engines[index]
            item = engine.next_version(f"name {n}", b"value %d" % n)
            holders.append(self.do(index, ops.Publish(item, 3600.0, remember=True)).result)
            self.items.append(item)
        return holders

    def gets(self) -> list[bytes | None]:
        found = []
        for reader in range(0, NODES, 5):
            if reader in self.silenced():
                continue
            for item in self.items:
                op = self.do(reader, ops.Get(item.key))
                found.append(None if op.error else op.result.value)
        return found

    def crash(self) -> list[int]:
        key = self.items[0].key
        holders = [i for i, e in enumerate(self.engines) if e.get(key, e.now) is not None]
        self.down = [i for i in holders if i not in PUBLISHERS][:SILENCED]
        for index in self.down:
            self.silence(index)
        return self.down

    def silenced(self) -> list[int]:
        return getattr(self, "down", [])

    def replicate(self) -> int:
        replicator = next(i for i in range(NODES) if i not in self.silenced())
        engine = self.engines[replicator]
        return int(self.do(replicator, ops.PublishAll(engine.replication_jobs(engine.now))).result)


def sent_by(engines: list[Any]) -> Counter[str]:
    """The requests the engines have sent so far, by kind (whatever became of them)."""
    counts: Counter[str] = Counter()
    for engine in engines:
        for (direction, kind, _), count in engine.metrics.rpcs.items():
            if direction == "sent":
                counts[kind] += count
    return counts


def on_the_simulator() -> Scenario:
    """The scenario on the simulator, without latency."""
    net = Network(seed=SEED, k=K, latency=0.0, limits=UNLIMITED)
    nodes: list[SimNode] = [net.add_node(identity(i), rng(i)) for i in range(NODES)]
    for node in nodes:
        net.up(node)
    engines = [node.engine for node in nodes]

    def do(index: int, op: ops.Operation) -> ops.Operation:
        ended: list[ops.Operation] = []
        nodes[index].start_op(op, ended.append)
        net.clock.run_until(lambda: bool(ended), 600.0, type(op).__name__)
        return op

    scenario = Scenario(
        do, lambda i: net.kill(nodes[i]), lambda: sent_by(engines), lambda i: nodes[i].address
    )
    scenario.run(engines)
    return scenario


def on_memory_network() -> Scenario:
    """The scenario on real Twisted nodes, connected in memory."""
    net = MemoryNetwork(seed=SEED)
    nodes: list[Node] = [net.add_node(identity=identity(i), rng=rng(i), k=K) for i in range(NODES)]
    engines = [node.engine for node in nodes]

    def do(index: int, op: ops.Operation) -> ops.Operation:
        d: Deferred[Any] = nodes[index].start(op)
        d.addErrback(lambda _: None)  # the operation's own error is what is compared
        net.run(d)
        return op

    scenario = Scenario(
        do,
        lambda i: net.silence(nodes[i]),
        lambda: sent_by(engines),
        lambda i: ("127.0.0.1", nodes[i].port),
    )
    scenario.run(engines)
    return scenario


def test_the_simulator_and_the_real_node_give_the_same_results() -> None:
    """Every join knows the same number of contacts, every put lands on the same holders,
    every get returns the same value (all of them, even after the crash), and replication
    stores as many items, on the simulator and on real nodes."""
    simulated, real = on_the_simulator(), on_memory_network()
    assert simulated.results == real.results
    assert real.results["crash"]
    assert [len(holders) for holders in real.results["put"]] == [K] * len(PUBLISHERS)
    gets = [real.results[p] for p in ("get", "get after the crash", "get after replication")]
    for found in gets:
        assert found == [b"value %d" % n for _ in range(len(found) // 3) for n in range(3)]
    assert real.results["replicate"] > 0


#: Pings that may differ, per phase, once nodes are silent. Over connections (the real
#: node), a lookup's retry to a silent peer closes the connection that brought nothing and
#: opens another, which fails at once the other requests on the old one (a ping-before-evict
#: among them), where the simulator, which has no connections, lets them time out; the
#: routing tables, and so the pings of ping-before-evict, then differ a little.
PING_TOLERANCE = 4


def test_the_simulator_and_the_real_node_send_the_same_requests() -> None:
    """Phase by phase, the nodes send the same number of requests of every kind on the
    simulator as on real nodes (the crash makes some of them time out, in both); once nodes
    are silent, pings may differ by PING_TOLERANCE (see there why)."""
    simulated, real = on_the_simulator(), on_memory_network()
    assert list(simulated.messages) == list(real.messages)
    silent = False
    for phase, counts in real.messages.items():
        silent = silent or phase == "crash"
        other = simulated.messages[phase]
        if not silent:
            assert other == counts, phase
            continue
        assert abs(other["ping"] - counts["ping"]) <= PING_TOLERANCE, phase
        assert {k: v for k, v in other.items() if k != "ping"} == {
            k: v for k, v in counts.items() if k != "ping"
        }, phase
    assert real.messages["join"]["find_node"] > 0
    assert real.messages["get after the crash"]["find_value"] > 0
