"""txdht benchmarks and fuzz targets (see benchmarks/README.md).

``python -m benchmarks`` runs the side-by-side benchmarks: txdht's nodes, two other DHTs and
bare-loop floors, every configuration three times (the network measure five) in a fresh
subprocess (``benchmarks.worker``), with JSON, Markdown and PNG results under
``benchmarks/results/``. ``python -m benchmarks.fuzz``
runs the atheris fuzz targets.
"""

from __future__ import annotations

__all__ = [
    "CONTENDERS",
    "FLOORS",
    "FLOOR_OF",
    "KINDS",
    "MEASURES",
    "MEASURES_OF",
    "OTHERS",
    "OURS",
]

#: Our four contenders: the Twisted node on epoll, the same node through the asyncio adapter
#: on asyncioreactor, and the native asyncio twin on the default loop and on uvloop.
OURS = ("twisted-epoll", "twisted-asyncio", "asyncio", "uvloop")
#: The requests the network measure counts by kind, for ours (pings: ping-before-evict).
KINDS = ("find_node", "find_value", "store", "ping")
#: Other DHTs, measured on the same network workload.
OTHERS = ("kademlia", "opendht")
#: Bare netstring echo servers, one per loop: the limit each of ours is measured against.
FLOORS = ("floor-epoll", "floor-asyncioreactor", "floor-asyncio", "floor-uvloop")
CONTENDERS = OURS + OTHERS + FLOORS
#: The floor on the same loop as each of ours.
FLOOR_OF = dict(zip(OURS, FLOORS, strict=True))
MEASURES = ("rpc-c1", "rpc-c32", "serving", "network", "memory", "profile")
#: What each contender is measured on.
MEASURES_OF: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(OURS, ("rpc-c1", "rpc-c32", "serving", "network", "memory", "profile")),
    **dict.fromkeys(OTHERS, ("network", "memory")),
    **dict.fromkeys(FLOORS, ("rpc-c1", "rpc-c32", "serving")),
}
