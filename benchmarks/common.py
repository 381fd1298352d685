"""Helpers shared by the worker's measures: timing, percentiles, RSS, the load driver.

Nothing here imports Twisted or an event loop: the driver is a coroutine that awaits whatever
an operation returns, so the same code runs inside ``Deferred.fromCoroutine`` (where an
operation returns a Deferred) and inside an asyncio task (where it returns a coroutine).
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = [
    "Gather",
    "drive",
    "open_fds",
    "percentile",
    "quiet_logging",
    "raise_fd_limit",
    "rss_kib",
    "summarize",
    "unlimited",
]

#: Runs coroutines concurrently and returns an awaitable for all of them: ``asyncio.gather``
#: on asyncio, ``gatherResults`` of ``Deferred.fromCoroutine`` on Twisted.
Gather = Callable[[list[Any]], Awaitable[Any]]
#: One operation: given its index, an awaitable for its outcome; the outcome is ``True``/``False``
#: (success), or ``(success, finished_at)`` when the operation timed its own end (OpenDHT's
#: callbacks run on its own thread and record ``time.perf_counter()`` there).
Operation = Callable[[int], Awaitable[Any]]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(latencies: list[float], elapsed: float, ok: int, failed: int) -> dict[str, Any]:
    """Throughput and latency percentiles (milliseconds) of one load phase."""
    p50 = percentile(latencies, 50)
    p99 = percentile(latencies, 99)
    done = ok + failed
    return {
        "count": done,
        "ok": ok,
        "failed": failed,
        "seconds": round(elapsed, 4),
        "ops_per_s": done / elapsed if elapsed > 0 else None,
        "p50_ms": None if p50 is None else p50 * 1000.0,
        "p99_ms": None if p99 is None else p99 * 1000.0,
    }


async def drive(
    op: Operation,
    gather: Gather,
    *,
    count: int,
    concurrency: int,
    duration: float,
    on_error: Callable[[int, BaseException], None] | None = None,
) -> dict[str, Any]:
    """Run ``op(0)``, ``op(1)``... with ``concurrency`` in flight until ``count`` were started or
    ``duration`` seconds passed (whichever comes first); bounded in count and in time.

    Returns ``summarize`` of the completed operations (an exception counts as a failure).
    """
    latencies: list[float] = []
    tally = {"next": 0, "ok": 0, "failed": 0}
    started = time.perf_counter()
    stop_at = started + duration

    async def worker() -> None:
        while tally["next"] < count and time.perf_counter() < stop_at:
            index = tally["next"]
            tally["next"] = index + 1
            t0 = time.perf_counter()
            try:
                outcome = await op(index)
            except Exception as e:
                tally["failed"] += 1
                if on_error is not None:
                    on_error(index, e)
                continue
            if isinstance(outcome, tuple):
                success, finished = outcome
            else:
                success, finished = outcome, time.perf_counter()
            latencies.append(finished - t0)
            tally["ok" if success else "failed"] += 1

    await gather([worker() for _ in range(max(1, concurrency))])
    elapsed = time.perf_counter() - started
    return summarize(latencies, elapsed, tally["ok"], tally["failed"])


def rss_kib() -> int:
    """This process's resident set size in KiB (after a full garbage collection)."""
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards ``wanted`` (and the hard one where allowed);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return wanted


def quiet_logging() -> None:
    """Keep the libraries' warnings (kademlia's, txdht.aio's) off the worker's stderr."""
    logging.basicConfig(level=logging.ERROR)
    for name in ("kademlia", "rpcudp", "txdht", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def unlimited() -> Any:
    """Limits with the request rates off: the benchmark's peers all live on one host and send
    far more than the defaults allow one peer (or the node in all); kademlia has no limits and
    OpenDHT's are turned off too, so every contender runs unthrottled."""
    from txdht.core.limits import Limits

    huge = 1e12
    return Limits(peer_rate=huge, peer_burst=huge, global_rate=huge, global_burst=huge)
