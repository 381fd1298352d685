"""Hostile nodes as real processes: honest `twistd -n dht` nodes keep every item readable.

The simulator measures lookups and puts against adversaries that speak the protocol correctly
but serve their own ends (docs/reliability.md, "Hostile nodes"). This confirms it with real
processes on loopback: twelve honest `twistd -n dht` nodes and six hostile ones
(``tests/hostile_node.py``), two of each kind:

- ``far``: made-up contacts nearer every target than any real node, at addresses that refuse
  connections; stores acknowledged and dropped; no value ever returned;
- ``collude``: only the hostile nodes nearest the target; stores acknowledged and dropped;
- ``stale``: the first version of each name kept and served, the later ones acknowledged and
  dropped.

Honest nodes write names twice and put blobs through the HTTP API, their lookups over one path
(the default) or over two disjoint ones (``--lookup-paths 2``). Every name read through another
honest node must give its second version, every blob its value; the hostile nodes must have
been asked (they log each hostile answer) and must have acknowledged stores they did not keep;
and no honest node may log an error. k is 8: an item's 8 closest then hold honest nodes
whatever the draw (six hostile at most), as the sim's 1,000-node runs have at 20% hostile with
k = 20. Every wait is bounded and every process is killed at the end, pass or fail; like the
other real-process tests it runs on the default reactor's pass only.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_chaos import REQUEST_TIMEOUT, get, put
from tests.test_processes import (
    KILL_TIMEOUT,
    START_TIMEOUT,
    NodeProcess,
    _once,
    environment,
    free_port,
    kill_all,
    start_joined,
)

__all__ = ["_once"]  # the fixture that keeps these to the default reactor's pass

pytestmark = pytest.mark.e2e

HONEST, KINDS, PER_KIND = 12, ("far", "collude", "stale"), 2
K = 8
NAMES, BLOBS = 12, 6
SEED = 20261207


class HostileProcess:
    """One ``python -m tests.hostile_node`` process: its port, log and kind."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = data_dir / "hostile.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, peers: list[NodeProcess], allies: list[int], seed: int) -> None:
        """Start it, joining through ``peers``, with the other hostile nodes' ports as allies."""
        args = [sys.executable, "-m", "tests.hostile_node", "--kind", self.kind]
        args += ["--port", str(self.port), "--k", str(K), "--seed", str(seed)]
        args += [f"--peer=127.0.0.1:{peer.port}" for peer in peers]
        args += [f"--ally={port}" for port in allies if port != self.port]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=environment(), cwd=self.log.parent
            )

    def text(self) -> str:
        """What the process has printed so far."""
        return self.log.read_text()

    def wait_joined(self) -> None:
        """Wait (bounded) until the node has joined the network through its peers."""
        deadline = time.monotonic() + START_TIMEOUT
        while "node joined" not in self.text():
            assert self.process is not None
            assert self.process.poll() is None, f"hostile node exited: {self.text()[-2000:]}"
            assert time.monotonic() < deadline, f"hostile node not joined: {self.text()[-2000:]}"
            time.sleep(0.1)

    def node_id(self) -> str:
        """The node's id, as it printed it on joining."""
        for line in self.text().splitlines():
            if line.startswith("hostile: id "):
                return line.split()[-1]
        raise AssertionError(f"no id in the log: {self.text()[-2000:]}")

    def answers(self) -> int:
        """How many requests it has answered the hostile way so far."""
        return self.text().count(" answered ")

    def kill(self) -> None:
        """SIGKILL, and wait (bounded) for the process to go."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=KILL_TIMEOUT)


@pytest.fixture(params=[1, 2], ids=["one path", "two disjoint paths"])
def network(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[list[NodeProcess], list[HostileProcess]]]:
    """The honest nodes, joined, with lookups over one path (the default) or two disjoint
    ones (``--lookup-paths 2``), then the hostile ones, joined through them; all killed at the
    end, pass or fail."""
    honest = [NodeProcess(tmp_path / f"honest{i}") for i in range(HONEST)]
    hostile = [
        HostileProcess(kind, tmp_path / f"{kind}{i}") for kind in KINDS for i in range(PER_KIND)
    ]
    try:
        start_joined(honest, k=K, options=["--lookup-paths", str(request.param)])
        allies = [h.port for h in hostile]
        for i, adversary in enumerate(hostile):
            adversary.start(peers=[honest[i], honest[-1 - i]], allies=allies, seed=SEED + i)
        for adversary in hostile:
            adversary.wait_joined()
        # Honest tables take the newcomers in (a hostile node joins with a lookup of its own
        # id, and each node it asks adds it): wait until each is in some honest table.
        deadline = time.monotonic() + START_TIMEOUT
        while {h.port for h in hostile} - known_ports(honest):
            assert time.monotonic() < deadline, "hostile nodes not in the honest tables"
            time.sleep(0.2)
        yield honest, hostile
    finally:
        kill_all(honest)
        for adversary in hostile:
            adversary.kill()


def known_ports(nodes: list[NodeProcess]) -> set[int]:
    """The ports of every contact in the routing tables of ``nodes``."""
    return {int(peer["port"]) for node in nodes for peer in node.api("/v1/peers")["peers"]}


def holders(answer: dict[str, object]) -> set[str]:
    """The ids of the nodes a store's answer says took the item."""
    ids = answer["holders"]
    assert isinstance(ids, list)
    return {str(i) for i in ids}


def put_blob(node: NodeProcess, value: bytes) -> dict[str, object]:
    """POST /v1/blobs: the node stores an immutable blob; its answer."""
    request = urllib.request.Request(f"{node.url}/v1/blobs", data=value, method="POST")
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
        assert answer.status == 201
        return dict(json.loads(answer.read()))


def test_honest_nodes_read_the_newest_version_of_every_item_among_hostile_nodes(
    network: tuple[list[NodeProcess], list[HostileProcess]],
) -> None:
    """With a third of the processes hostile, every name written twice reads back as its second
    version, and every blob as its value, through honest nodes other than the writer."""
    honest, hostile = network
    hostile_ids = {node.node_id(): node.kind for node in hostile}
    rng = random.Random(SEED)
    keys: dict[str, tuple[str, bytes, int]] = {}  # name: key, second value, writer
    dropped = 0  # stores a hostile node acknowledged (and kept nothing, or an old version)
    for i in range(NAMES):
        writer = i % HONEST
        name = f"hostile-{i}"
        first = put(honest[writer], name, f"{name} first {rng.random()}".encode())
        second_value = f"{name} second {rng.random()}".encode()
        second = put(honest[writer], name, second_value)
        assert first["key"] == second["key"]
        dropped += len(hostile_ids.keys() & holders(second))
        keys[name] = (str(second["key"]), second_value, writer)
    blobs: dict[str, tuple[bytes, int]] = {}
    for i in range(BLOBS):
        writer = rng.randrange(HONEST)
        value = f"blob {i} {rng.random()}".encode() * (1 + i)
        answer = put_blob(honest[writer], value)
        dropped += len(hostile_ids.keys() & holders(answer))
        blobs[str(answer["key"])] = (value, writer)

    wrong = []
    for name, (key, value, writer) in keys.items():
        reader = honest[(writer + 1 + rng.randrange(HONEST - 1)) % HONEST]
        got = get(reader, key)
        if got != value:
            wrong.append((name, got))
    for key, (value, writer) in blobs.items():
        reader = honest[(writer + 1 + rng.randrange(HONEST - 1)) % HONEST]
        if get(reader, key) != value:
            wrong.append((key, None))
    assert not wrong, f"{len(wrong)} of {NAMES + BLOBS} items read wrong: {wrong[:3]}"

    # The attack was made: each hostile node answered requests its way, and stores went to
    # hostile nodes that acknowledged them.
    assert all(node.answers() > 0 for node in hostile), {n.kind: n.answers() for n in hostile}
    assert dropped > 0
    # The honest nodes kept serving, with nothing logged as an error.
    for node in honest:
        assert node.process is not None
        assert node.process.poll() is None, node.log_tail()
        log = node.log.read_text()
        assert "Traceback" not in log, node.log_tail()
        assert "Unhandled" not in log, node.log_tail()
