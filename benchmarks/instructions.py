"""Instructions per get (or put): the CPU cost of the core and the Twisted driver, counted,
not timed.

``python -m benchmarks.instructions`` runs the same get workload twice under valgrind's
callgrind (Debian's ``valgrind`` package), once with no gets and once with ``--gets`` of them,
and prints the difference divided by the number of gets: the machine instructions one get
costs. The workload is a 50-node ``txdht.testing.MemoryNetwork`` (real nodes, in-memory
connections, one clock: the core and the Twisted driver, no sockets, no reactor), 100 blobs of
1,000 bytes put from random nodes, then gets of them in turn, each from a node that does not
hold it (a get is a ``find_value`` request to its nearest contact, alone, and its reply, as in
the network measure).
``--op put`` counts puts instead, on the same network: each a new blob of 1,000 bytes from a
random node (a lookup whose queries to the likely holders are the stores themselves, then a
``store`` to each of the k closest not stored on yet). ``--op ping`` counts pings, each from
one node to another over the connection they already have (``node.call(address, Ping)``, as
the benchmarks' RPC measure): one request and its reply, both ends, and nothing else.

Why count: on a shared machine the timed measures move by a third from one run to the next
(docs/performance.md), so a change of a few percent cannot be seen in them without many runs.
An instruction count is the same in every run of the same code (``PYTHONHASHSEED`` is fixed,
the workload is seeded, and the cycle collector is off while the gets are counted), whatever
else the machine is doing, so two versions of the code can be compared in one pair of runs.
A change can move the count by about 1% through where objects land in memory alone, so it
resolves changes of a few percent, not less. It is not a time: a cache miss costs more than an
add. Confirm a gain it shows with the timed measures.

``python -m benchmarks.instructions --run N`` is the workload alone (N gets), what valgrind is
given; it checks every value it gets back (and every key a put returns).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["OPS", "count", "instructions_per_get", "main", "workload"]

ROOT = Path(__file__).resolve().parent.parent
#: The network and its data: as the network measure's (50 nodes, 1,000-byte values).
NODES, ITEMS, VALUE_SIZE = 50, 100, 1000
#: What callgrind prints of the instructions it counted.
_COLLECTED = re.compile(r"Collected : (\d+)")
#: The operations the workload can count.
OPS = ("get", "put", "ping")


def workload(
    gets: int, nodes: int = NODES, items: int = ITEMS, seed: int = 3, op: str = "get"
) -> int:
    """Build the network, put ``items`` blobs, get each once to warm up, then do ``gets``
    more gets (with ``op="put"``: that many puts of new blobs instead; ``op="ping"``: pings
    from one node to another), checking every value (every key, every pong's sender); returns
    how many requests the measured operations sent."""
    from txdht.core.ids import id_from_hex, id_to_hex
    from txdht.core.items import blob
    from txdht.core.messages import Ping
    from txdht.testing import MemoryNetwork

    if op not in OPS:
        raise ValueError(f"op is one of {OPS}, not {op!r}")

    net = MemoryNetwork(seed=seed)
    members = net.create(nodes)
    rng = random.Random(seed)
    values = [rng.randbytes(VALUE_SIZE) for _ in range(items)]
    keys = [net.run(members[rng.randrange(nodes)].put_blob(value)) for value in values]
    net.flush()
    readers = []
    for key in keys:
        others = [n for n in members if n.engine.storage.get(id_from_hex(key)) is None]
        readers.append(rng.choice(others or members))

    def get(n: int) -> None:
        i = n % items
        if net.run(readers[i].get(keys[i])) != values[i]:
            raise AssertionError(f"get {n} returned another value")

    new_values = [rng.randbytes(VALUE_SIZE) for _ in range(gets if op == "put" else 0)]
    writers = [rng.randrange(nodes) for _ in new_values]

    def put(n: int) -> None:
        value = new_values[n]
        if net.run(members[writers[n]].put_blob(value)) != id_to_hex(blob(value).key):
            raise AssertionError(f"put {n} returned another key")

    pinger, pinged = members[0], members[1]
    pinged_at = ("127.0.0.1", pinged.port)

    def ping(n: int) -> None:
        if net.run(pinger.call(pinged_at, Ping)).sender != pinged.engine.id:
            raise AssertionError(f"ping {n} answered by another node")

    def sent() -> int:
        return sum(
            count
            for member in members
            for (direction, _, _), count in member.metrics.rpcs.items()
            if direction == "sent"
        )

    for n in range(items):
        get(n)
    # No cycle collection while the gets are counted: when a collection comes depends on every
    # allocation made so far, and a full one (of every object of the 50 nodes) falling inside
    # one run and not the other would move the count per get by more than most changes do.
    # A get leaves no reference cycles (tests/test_cycles.py), so nothing piles up meanwhile.
    if op == "ping":
        ping(0)  # the connection, and the round trip's first measure, before the count
    measured = {"get": get, "put": put, "ping": ping}[op]
    gc.collect()
    gc.disable()
    try:
        before = sent()
        for n in range(gets):
            measured(n)
        net.flush()  # a put's last stores, sent as it returned, are answered here
        return sent() - before
    finally:
        gc.enable()


def count(gets: int, valgrind: str = "valgrind", op: str = "get") -> int:
    """The instructions callgrind counts in a run of the workload with ``gets`` gets (or
    puts: ``op``)."""
    command = [
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={os.devnull}",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--run",
        str(gets),
        "--op",
        op,
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind failed ({done.returncode}): {done.stderr[-1000:]}")
    return int(found.group(1))


def instructions_per_get(gets: int, valgrind: str = "valgrind", op: str = "get") -> float:
    """Instructions per get (or put: ``op``): a run with ``gets`` of them less one with none,
    over ``gets``."""
    return (count(gets, valgrind, op) - count(0, valgrind, op)) / gets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description=(
            "Machine instructions per get (or put) on a 50-node in-memory network (the core "
            "and the Twisted driver), counted by valgrind's callgrind: the same in every run "
            "of the same code, however busy the machine. See docs/performance.md."
        ),
    )
    parser.add_argument(
        "--gets",
        type=int,
        default=300,
        help="operations measured (default 300; about 2 minutes for gets, 10 for puts)",
    )
    parser.add_argument(
        "--op",
        choices=OPS,
        default="get",
        help=(
            "what to count: gets (default), puts of new 1,000-byte blobs, or pings from one "
            "node to another"
        ),
    )
    parser.add_argument(
        "--run", type=int, metavar="N", help="run the workload alone, with N of them (no valgrind)"
    )
    args = parser.parse_args(argv)
    if args.run is not None:
        requests = workload(args.run, op=args.op)
        print(f"{args.run} {args.op}s, {requests} requests")
        return 0
    if args.gets < 1:
        parser.error("--gets is at least 1")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    per_op = instructions_per_get(args.gets, valgrind, args.op)
    print(f"{per_op:,.0f} instructions per {args.op} ({args.gets} {args.op}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
