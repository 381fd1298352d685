"""``python -m benchmarks.listen``: what listening costs a holder.

Two measures, both of the real core (no sockets: the figures are the core's own cost):

- memory per listen: a holder's engine answers ``listens`` listen requests (each from its own
  peer and its own address, as the wire brings them); the Python heap it grows by (tracemalloc),
  divided by the listens;
- CPU per update delivered: a simulated network (``txdht.sim``) in which ``listeners`` nodes
  listen to one name and its writer stores ``versions`` new versions; the process CPU time of
  that phase (the puts' lookups and stores, the holders' pushes and their acknowledgements, the
  listeners' checks and deliveries, and the simulator's bus) divided by the notices delivered
  to the listeners; and, on one holder alone, the CPU of storing one version while it holds
  ``listens`` listens, divided by them (the pushes it starts: the holder's share).

Prints one JSON object (and writes it to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from txdht.core.engine import Engine
from txdht.core.items import Identity
from txdht.core.limits import Limits
from txdht.core.listen import Notice
from txdht.core.messages import Listen
from txdht.core.storage import MemoryStorage
from txdht.sim.network import Network

__all__ = ["cpu_per_update", "main", "memory_per_listen"]

PUBLISHER = Identity.from_private_bytes(hashlib.sha256(b"benchmarks.listen").digest())


def _holder(listens: int) -> Engine:
    limits = Limits(
        peer_rate=1e12,
        peer_burst=1e12,
        global_rate=1e12,
        global_burst=1e12,
        max_listens=listens,
        max_listens_per_key=listens,
    )
    raw = hashlib.sha256(b"benchmarks.listen holder").digest()
    engine = Engine(Identity.from_private_bytes(raw), MemoryStorage(), now=0.0, limits=limits)
    engine.port = 4000
    return engine


def _listen_to(engine: Engine, listens: int, key: int) -> None:
    """``listens`` listen requests, from as many peers at as many addresses."""
    for i in range(listens):
        request = Listen(rid=1, sender=i + 1, port=4000, key=key, lease=600.0)
        host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        engine.request_received(request, host, 4000, 1.0)


def memory_per_listen(listens: int) -> dict[str, Any]:
    """Bytes of heap per listen a holder holds (on one key, and on a key each)."""
    result: dict[str, Any] = {"listens": listens}
    for label, keys in (("one key", 1), ("a key each", listens)):
        engine = _holder(listens)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for i in range(keys):
            _listen_to_one(engine, i, listens // keys, keys)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        assert len(engine.listeners) == listens, len(engine.listeners)
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        result[f"bytes per listen ({label})"] = round(grown / listens)
    return result


def _listen_to_one(engine: Engine, index: int, count: int, keys: int) -> None:
    key = index + 1 if keys > 1 else 1
    for j in range(count):
        n = index * count + j
        request = Listen(rid=1, sender=n + 1, port=4000, key=key, lease=600.0)
        host = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        engine.request_received(request, host, 4000, 1.0)


def cpu_per_update(nodes: int, listeners: int, versions: int, listens: int) -> dict[str, Any]:
    """CPU seconds per update delivered, end to end in a simulated network, and the holder's
    share (storing one version while holding ``listens`` listens)."""
    net = Network(seed=1, k=20, latency=0.05)
    from txdht.sim.scenarios import grow

    grow(net, nodes)
    writer = net.nodes[0]
    name = "benchmarked"
    key = writer.engine.next_version(name, b"").key
    told: list[Notice] = []
    for node in net.nodes[1 : 1 + listeners]:
        node.listen(key, told.append)
    net.clock.run(net.clock.now + 30)
    started, cpu = net.clock.now, time.process_time()

    def write(i: int) -> None:
        item = writer.engine.next_version(name, b"version %d" % i)
        writer.publish_own(item, 3600.0, lambda _: None)

    for i in range(versions):
        net.clock.at(started + 10 * i, write, i)
    net.clock.run(started + 10 * versions + 30)
    spent = time.process_time() - cpu
    holder = _holder(listens)
    item = PUBLISHER.sign(name, b"one", 1)
    _listen_to(holder, listens, item.key)
    cpu = time.process_time()
    holder.store(item, 3600.0, 2.0)
    commands = holder.settle()
    pushed = time.process_time() - cpu
    return {
        "nodes": nodes,
        "listeners": listeners,
        "versions": versions,
        "notices delivered": len(told),
        "CPU ms per update delivered (end to end, simulated network)": round(
            spent / max(1, len(told)) * 1000, 3
        ),
        "holder listens": listens,
        "pushes sent": len(commands),
        "holder CPU us per push started": round(pushed / max(1, len(commands)) * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both measures and print them as JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.listen", description=__doc__)
    p.add_argument("--listens", type=int, default=10_000, help="listens a holder holds (10000)")
    p.add_argument("--nodes", type=int, default=100, help="nodes of the simulated network (100)")
    p.add_argument("--listeners", type=int, default=50, help="nodes listening (50)")
    p.add_argument("--versions", type=int, default=20, help="versions written (20)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    result = {
        "memory": memory_per_listen(args.listens),
        "cpu": cpu_per_update(args.nodes, args.listeners, args.versions, args.listens),
    }
    text = json.dumps(result, indent=2)
    sys.stdout.write(text + "\n")
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
