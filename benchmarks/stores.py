"""``python -m benchmarks.stores``: what a ``store`` costs the node that handles it.

A holder's engine (the real core, no sockets) is sent ``store`` requests as the wire brings
them (bytes decoded, then handled), three kinds in the same run so that their ratios hold on a
busy machine:

- ``new``: a mutable item it has not seen (decoded, verified, stored);
- ``newer``: the next version of an item it holds (verified, replaces the old one);
- ``copy``: the very item it holds, as replication and read repair resend it (the expiry is
  renewed; since issue 17 the Ed25519 check is not repeated for it).

Prints a table and one JSON object (also written to ``--out`` when given): microseconds of
process CPU per store of each kind (best of ``--rounds``), and ``copy`` over ``new``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from txdht.core.engine import Engine
from txdht.core.items import Identity
from txdht.core.limits import Limits
from txdht.core.messages import Ok, Store, decode, encode
from txdht.core.storage import MemoryStorage

__all__ = ["main", "measure"]

#: No rate limit or quota: the figure is the handling, not the limits' refusals.
UNLIMITED = Limits(
    peer_rate=1e12,
    peer_burst=1e12,
    global_rate=1e12,
    global_burst=1e12,
    max_items=10**9,
    max_items_per_publisher=10**9,
)
OWNER = Identity.from_private_bytes(hashlib.sha256(b"benchmarks.stores").digest())
HOLDER = Identity.from_private_bytes(hashlib.sha256(b"benchmarks.stores holder").digest())


def _holder() -> Engine:
    return Engine(HOLDER, MemoryStorage(), now=0.0, limits=UNLIMITED)


def _cpu_per_call(calls: int, rounds: int, call: Callable[[int], None]) -> float:
    """Microseconds of process CPU per ``call(n)``, the best of ``rounds`` rounds."""
    best = float("inf")
    n = 0
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            n += 1
            call(n)
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


def measure(calls: int = 2000, rounds: int = 5, size: int = 200) -> dict[str, Any]:
    """Microseconds per store handled, of each kind, with values of ``size`` bytes."""
    value = b"x" * size
    clock = [0.0]

    def handle(engine: Engine, wire: bytes) -> None:
        clock[0] += 0.01  # time moves on, as it does for a live node
        reply, _ = engine.request_received(decode(wire), "127.0.0.1", 9, clock[0])
        if not isinstance(reply, Ok):
            raise AssertionError(f"the store was refused: {reply}")

    def wire(engine: Engine, name: str, seq: int) -> bytes:
        item = OWNER.sign(name, value, seq)
        return encode(engine.message(Store, 5, item=item, ttl=3600.0))

    new = _holder()
    fresh = [wire(new, f"item {n}", 1) for n in range(calls * rounds + 1)]
    newer = _holder()
    versions = [wire(newer, "item", n) for n in range(1, calls * rounds + 2)]
    copy = _holder()
    held = wire(copy, "item", 1)
    handle(copy, held)
    figures = {
        "new": _cpu_per_call(calls, rounds, lambda n: handle(new, fresh[n])),
        "newer": _cpu_per_call(calls, rounds, lambda n: handle(newer, versions[n])),
        "copy": _cpu_per_call(calls, rounds, lambda n: handle(copy, held)),
    }
    return {
        "us_per_store": {kind: round(us, 1) for kind, us in figures.items()},
        "copy_over_new": round(figures["copy"] / figures["new"], 3),
        "calls": calls,
        "rounds": rounds,
        "value_bytes": size,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stores", description=__doc__)
    p.add_argument("--calls", type=int, default=2000, help="stores per round, of each kind")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    p.add_argument("--size", type=int, default=200, help="value size, bytes")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    result = measure(args.calls, args.rounds, args.size)
    print("kind    us per store")
    for kind, us in result["us_per_store"].items():
        print(f"{kind:<7} {us:>12.1f}")
    print(f"copy / new: {result['copy_over_new']:.3f}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - the module's command line
    sys.exit(main())
