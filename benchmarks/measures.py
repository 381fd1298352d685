"""The measures, written once against a "shell" (see ``benchmarks.shells``) and run on any loop.

Each measure is a coroutine taking a shell and the parameters of one configuration, and
returning a flat dict of metrics (JSON-ready). Every load phase is bounded in count and in time
(``benchmarks.common.drive``), every wait has a deadline, and every socket is on 127.0.0.1.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

from benchmarks import KINDS
from benchmarks.common import drive, open_fds, rss_kib
from benchmarks.pingcost import core_ping

__all__ = ["memory", "network", "profile", "rpc", "serving", "warm"]

#: The checkout the benchmarks run from; a profile names its files relative to it.
ROOT = Path(__file__).resolve().parent.parent

#: A function in a profile: file name, line number, function name (``pstats``' key).
_Function = tuple[str, int, str]
#: Calls, primitive calls, own time, cumulative time (the callers' entries in ``pstats``).
_Timing = tuple[int, int, float, float]


async def rpc(shell: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Ping round trips between two endpoints on one loop, at one concurrency."""
    ping, close = await shell.rpc_pair()
    concurrency = int(params["concurrency"])
    try:

        async def op(index: int) -> bool:
            await ping()
            return True

        await drive(
            op,
            shell.gather,
            count=10**9,
            concurrency=concurrency,
            duration=float(params["warmup"]),
        )
        cpu = time.process_time()
        result = await drive(
            op,
            shell.gather,
            count=int(params["max_ops"]),
            concurrency=concurrency,
            duration=float(params["duration"]),
        )
        cpu = time.process_time() - cpu
    finally:
        await close()
    # Both ends run in this process: the CPU of a round trip is that of both its messages.
    per_ping = cpu / result["count"] * 1e6 if result["count"] else None
    metrics = {"concurrency": concurrency, **result, "cpu_us_per_ping": per_ping}
    alone = params.get("core_ping")
    if alone:  # the core's share of that, timed alone in this process (benchmarks.pingcost)
        metrics.update(core_ping(int(alone["pings"]), int(alone["batches"])))
    return metrics


async def serving(shell: Any, params: dict[str, Any]) -> dict[str, Any]:
    """find_node replies per second from one server, driven by a pipelining raw client process."""
    port, served, close = await shell.serving_server(int(params["contacts"]))
    before = served()
    command = [
        sys.executable,
        "-m",
        "benchmarks.rawclient",
        "--port",
        str(port),
        "--connections",
        str(params["connections"]),
        "--in-flight",
        str(params["in_flight"]),
        "--warmup",
        str(params["warmup"]),
        "--duration",
        str(params["duration"]),
    ]
    limit = time.monotonic() + float(params["warmup"]) + float(params["duration"]) + 30.0
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while client.poll() is None and time.monotonic() < limit:
            await shell.sleep(0.05)
        if client.poll() is None:
            client.kill()
            raise RuntimeError("the raw client did not finish in time")
        out, err = client.communicate(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)
        await close()
    if client.returncode != 0:
        raise RuntimeError(f"the raw client failed: {err.decode(errors='replace')[-500:]}")
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    report["server_replies"] = served() - before
    return report


async def warm(shell: Any, k: int) -> None:
    """Create one node and stop it, before the RSS per node is measured: what a contender's
    first node imports and caches once is not a cost of each node. (The adapter's first node
    imported 167 modules, Twisted's among them, which the epoll contender's worker had imported
    before measuring when it installed its reactor: about 100 KiB per node of the adapter's RSS
    at 50 nodes, until the 2026-12-06 late-night run.)"""
    node = await shell.new_node(k)
    await shell.stop_all([node])


async def _build(shell: Any, count: int, k: int, light: bool) -> tuple[list[Any], float, bool]:
    """``count`` nodes joined one after another through the first; returns the nodes, the
    seconds the joins (and the shell's settling, for OpenDHT) took, and whether it settled."""
    nodes = [await shell.new_node(k)]
    seed = ("127.0.0.1", shell.port(nodes[0]))
    started = time.perf_counter()
    for _ in range(count - 1):
        node = await shell.new_node(k)
        nodes.append(node)
        await (shell.light_join(node, seed) if light else shell.join(node, seed))
    settled = await shell.settle(nodes)
    return nodes, time.perf_counter() - started, settled


async def network(shell: Any, params: dict[str, Any]) -> dict[str, Any]:
    """A loopback network in one process: join, then put and get, sequential and concurrent.

    Gets are issued from nodes that do not hold the key (a get that could only be served
    locally is counted in ``get_local``), and every get is checked: it succeeds when it
    returns exactly the value put.
    """
    count, k = int(params["nodes"]), int(params["k"])
    rng = random.Random(int(params.get("seed", 0)))
    await warm(shell, k)
    rss_before = rss_kib()
    nodes, join_s, settled = await _build(shell, count, k, light=False)
    rss_after = rss_kib()
    result: dict[str, Any] = {
        "nodes": count,
        "k": shell.replicas(k),
        "join_s": join_s,
        "join_settled": settled,
        "rss_per_node_kib": (rss_after - rss_before) / count,
        "open_fds": open_fds(),
        "concurrency": int(params["concurrency"]),
    }
    profiler = cProfile.Profile() if params.get("profile_path") else None
    tally = {"gets_ok": 0, "gets": 0, "local": 0}
    try:
        for phase, concurrency in (("seq", 1), ("conc", int(params["concurrency"]))):
            result.update(
                await _phase(shell, nodes, params, phase, concurrency, rng, tally, profiler)
            )
    finally:
        await shell.stop_all(nodes)
    result["get_success"] = tally["gets_ok"] / tally["gets"] if tally["gets"] else 0.0
    result["get_local"] = tally["local"]
    result["msgs_per_put"] = _mean(result["msgs_per_put_seq"], result["msgs_per_put_conc"])
    result["msgs_per_get"] = _mean(result["msgs_per_get_seq"], result["msgs_per_get_conc"])
    for op in ("put", "get"):
        result[f"pings_per_{op}"] = _mean(
            result[f"pings_per_{op}_seq"], result[f"pings_per_{op}_conc"]
        )
        for kind in KINDS:
            result[f"{kind}_per_{op}"] = _mean(
                result[f"{kind}_per_{op}_seq"], result[f"{kind}_per_{op}_conc"]
            )
    for op in ("put", "get"):
        messages = [result[f"msgs_{op}_{phase}"] for phase in ("seq", "conc")]
        cpu = sum(result[f"cpu_{op}_{phase}_s"] for phase in ("seq", "conc"))
        known = None not in messages and sum(messages) > 0
        result[f"cpu_us_per_msg_{op}"] = cpu / sum(messages) * 1e6 if known else None
    if profiler is not None:
        result["time_split"] = _write_profile(
            profiler,
            str(params["profile_path"]),
            params,
            result,
            str(params.get("contender", "twisted-epoll")),
        )
    return result


async def _phase(
    shell: Any,
    nodes: list[Any],
    params: dict[str, Any],
    phase: str,
    concurrency: int,
    rng: random.Random,
    tally: dict[str, int],
    profiler: cProfile.Profile | None,
) -> dict[str, Any]:
    """``ops`` puts from random nodes, then ``ops`` gets of the stored values in turn, each from
    a random node that does not hold it; at ``concurrency``, each kind for at most
    ``phase_timeout`` seconds. Returns the phase's metrics, suffixed by ``phase``."""
    ops, count = int(params["ops"]), len(nodes)
    values = [rng.randbytes(int(params["value_size"])) for _ in range(ops)]
    writers = [rng.randrange(count) for _ in range(ops)]
    keys: list[str | None] = [None] * ops
    timeout = float(params["phase_timeout"])

    async def put_op(i: int) -> Any:
        key, finished = await shell.put(nodes[writers[i]], values[i])
        keys[i] = key
        return True if finished is None else (True, finished)

    await shell.quiesce(nodes)
    kinds = shell.sent_by_kind(nodes)
    sent, cpu, wall = shell.sent_total(nodes), time.process_time(), time.monotonic()
    if profiler is not None:
        profiler.enable()
    put = await drive(put_op, shell.gather, count=ops, concurrency=concurrency, duration=timeout)
    if profiler is not None:
        profiler.disable()
    await shell.quiesce(nodes)
    put_cpu, put_sent = time.process_time() - cpu, shell.sent_total(nodes)
    put_wall = time.monotonic() - wall
    put_msgs = _per_op(put_sent, sent, put["count"])
    put_kinds = _kinds_per_op(shell.sent_by_kind(nodes), kinds, put["count"])
    kinds = shell.sent_by_kind(nodes)

    stored = [i for i in range(ops) if keys[i] is not None]
    readers = []
    for i in stored:
        others = [j for j, node in enumerate(nodes) if not shell.holds(node, keys[i])]
        if others:
            readers.append(rng.choice(others))
        else:
            tally["local"] += 1
            readers.append(rng.randrange(count))

    async def get_op(n: int) -> Any:
        # ``ops`` gets, whatever number of puts finished: the stored values in turn.
        i = stored[n % len(stored)]
        value, finished = await shell.get(nodes[readers[n % len(stored)]], keys[i])
        success = value == values[i]
        return success if finished is None else (success, finished)

    sent, cpu, wall = shell.sent_total(nodes), time.process_time(), time.monotonic()
    if profiler is not None:
        profiler.enable()
    gets = ops if stored else 0
    get = await drive(get_op, shell.gather, count=gets, concurrency=concurrency, duration=timeout)
    if profiler is not None:
        profiler.disable()
    await shell.quiesce(nodes)
    get_cpu, get_sent = time.process_time() - cpu, shell.sent_total(nodes)
    get_wall = time.monotonic() - wall
    get_msgs = _per_op(get_sent, sent, get["count"])
    get_kinds = _kinds_per_op(shell.sent_by_kind(nodes), kinds, get["count"])
    tally["gets_ok"] += get["ok"]
    tally["gets"] += get["count"]
    result: dict[str, Any] = {}
    for name, measured, wanted in (("put", put, ops), ("get", get, ops)):
        result[f"{name}_{phase}_ops_per_s"] = measured["ops_per_s"]
        result[f"{name}_{phase}_p50_ms"] = measured["p50_ms"]
        result[f"{name}_{phase}_p99_ms"] = measured["p99_ms"]
        result[f"{name}_{phase}_count"] = measured["count"]
        result[f"{name}_{phase}_failed"] = measured["failed"]
        # Operations not started before the phase's time ran out (a slow contender's).
        result[f"{name}_{phase}_not_started"] = wanted - measured["count"]
    result[f"msgs_per_put_{phase}"] = put_msgs
    result[f"msgs_per_get_{phase}"] = get_msgs
    # What the messages are (ours only): requests of each kind per operation; the pings
    # (ping-before-evict, mostly) are background work that each operation sets off.
    for op, per_kind in (("put", put_kinds), ("get", get_kinds)):
        for kind in KINDS:
            result[f"{kind}_per_{op}_{phase}"] = None if per_kind is None else per_kind[kind]
        result[f"pings_per_{op}_{phase}"] = result[f"ping_per_{op}_{phase}"]
    # CPU per message: the process's CPU time (every node, and OpenDHT's threads) over the
    # requests sent, each with its reply: both ends of every message run in this process.
    result[f"cpu_put_{phase}_s"], result[f"cpu_get_{phase}_s"] = put_cpu, get_cpu
    # Cores busy: CPU seconds per second of the phase (1 at most for a single-threaded
    # process; OpenDHT's threads can keep every core of the machine busy).
    result[f"cores_put_{phase}"] = put_cpu / put_wall if put_wall > 0 else None
    result[f"cores_get_{phase}"] = get_cpu / get_wall if get_wall > 0 else None
    result[f"msgs_put_{phase}"] = None if put_msgs is None else put_msgs * put["count"]
    result[f"msgs_get_{phase}"] = None if get_msgs is None else get_msgs * get["count"]
    return result


def _kinds_per_op(
    after: dict[str, int] | None, before: dict[str, int] | None, ops: int
) -> dict[str, float] | None:
    """Requests of each of ``KINDS`` sent per operation between two counts (None: unknown)."""
    if after is None or before is None or not ops:
        return None
    return {kind: (after.get(kind, 0) - before.get(kind, 0)) / ops for kind in KINDS}


def _per_op(after: int | None, before: int | None, ops: int) -> float | None:
    if after is None or before is None or not ops:
        return None
    return (after - before) / ops


def _mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return (a + b) / 2


#: Where the time goes: the profile's own time, by what the function belongs to. The first
#: rule that matches a function's file (as ``profile_name`` names it) or name decides.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("codec", ("txdht/core/messages.py", "txdht/core/framing.py", "json/", "binascii")),
    ("sockets", ("_socket.socket", "select.epoll", "selectors.py")),
    ("crypto", ("ed25519", "cryptography/", "_hashlib", "openssl")),
    ("core", ("txdht/core/",)),
    ("driver", ("txdht/node.py", "txdht/aio/", "txdht/asyncio_adapter.py")),
    ("loop", ("twisted/", "asyncio/", "uvloop", "contextvars", "zope/")),
    ("benchmark", ("benchmarks/",)),
)


def time_split(stats: pstats.Stats) -> dict[str, float]:
    """The share of the profile's own time (tottime) in each of ``CATEGORIES`` (and other)."""
    totals = dict.fromkeys([name for name, _ in CATEGORIES] + ["other"], 0.0)
    raw: Any = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in raw.items():
        where = f"{filename}:{function}"
        name = next((n for n, marks in CATEGORIES if any(m in where for m in marks)), "other")
        totals[name] += own
    total = sum(totals.values()) or 1.0
    return {name: own / total for name, own in totals.items()}


def _write_profile(
    profiler: cProfile.Profile,
    path: str,
    params: dict[str, Any],
    result: dict[str, Any],
    contender: str = "twisted-epoll",
) -> dict[str, float]:
    """Write the profile's listings to ``path``; return where the time went (``time_split``)."""
    labels = {"seq": "sequential", "conc": f"at concurrency {params['concurrency']}"}
    done = ", ".join(
        f"{result[f'{op}_{phase}_count']} {op}s {label}"
        for op in ("put", "get")
        for phase, label in labels.items()
    )
    out = io.StringIO()
    out.write(
        f"cProfile of the put and get phases ({done}) on a {params['nodes']}-node "
        f"{contender} network in one process.\n\n"
    )
    stats = relative_stats(profiler, out)
    split = time_split(stats)
    out.write("== where the time goes (share of own time) ==\n")
    out.writelines(f"{name:10s} {share:6.1%}\n" for name, share in split.items())
    out.write("\n== top 15 by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(15)
    out.write("\n== top 15 by own time (tottime) ==\n")
    stats.sort_stats("tottime").print_stats(15)
    out.write("\n== top 15 functions of txdht by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(r"txdht[/\\]", 15)
    out.write("\n== top 25 functions of txdht by own time ==\n")
    stats.sort_stats("tottime").print_stats(r"txdht[/\\]", 25)
    with open(path, "w", encoding="utf-8") as f:
        f.write(out.getvalue())
    return split


def relative_stats(profiler: cProfile.Profile, stream: io.StringIO) -> pstats.Stats:
    """The profiler's statistics, printing to ``stream``, with every file named as
    ``profile_name`` names it: a profile then shows no directory of the machine it ran on."""
    profiler.create_stats()
    return _GivenStats(rename_functions(profiler.stats, profile_name), stream)


class _GivenStats(pstats.Stats):
    """``pstats.Stats`` of statistics given as a dict. ``Stats`` itself reads them from a
    profiler, which it asks to take them afresh (losing any renaming), or from a file, which it
    then names, with its absolute path, at the top of every listing."""

    def __init__(
        self,
        stats: dict[_Function, tuple[int, int, float, float, dict[_Function, _Timing]]],
        stream: io.StringIO,
    ) -> None:
        self._given = stats
        super().__init__(stream=stream)

    def load_stats(self, arg: object) -> None:
        """Take the statistics given to the constructor (``Stats.init`` calls this)."""
        self.stats = self._given


def rename_functions(
    stats: Mapping[_Function, tuple[int, int, float, float, Mapping[_Function, _Timing]]],
    rename: Callable[[str], str],
) -> dict[_Function, tuple[int, int, float, float, dict[_Function, _Timing]]]:
    """``stats`` (a profile's raw dict) with each function's file renamed, in the entries and
    in their callers; functions that come to share a name are added together, as
    ``pstats.Stats.strip_dirs`` adds them."""

    def key(function: _Function) -> _Function:
        return rename(function[0]), function[1], function[2]

    def add(a: _Timing, b: _Timing) -> _Timing:
        return a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]

    zero: _Timing = (0, 0, 0.0, 0.0)
    renamed: dict[_Function, tuple[_Timing, dict[_Function, _Timing]]] = {}
    for function, (calls, primitive, own, cumulative, callers) in stats.items():
        timing, merged = renamed.get(key(function), (zero, {}))
        for caller, by_caller in callers.items():
            merged[key(caller)] = add(merged.get(key(caller), zero), by_caller)
        renamed[key(function)] = add(timing, (calls, primitive, own, cumulative)), merged
    return {function: (*timing, merged) for function, (timing, merged) in renamed.items()}


def profile_name(filename: str, root: PurePath = ROOT) -> str:
    """How a profile names ``filename``, without the directories of the machine it ran on.

    An installed package's file from ``site-packages/`` on (a virtualenv inside the checkout
    included), this checkout's own files relative to ``root``, the standard library's from
    ``pythonX.Y/`` on, any other file by its name alone. Names that are not paths (``~`` for
    built-in functions, ``<frozen ...>``, ``<string>``) are kept as they are.
    """
    path = PurePath(filename)
    if not path.is_absolute():
        return filename
    parts = path.parts
    for index in reversed(range(len(parts) - 1)):
        if parts[index] in ("site-packages", "dist-packages"):
            return "/".join(parts[index:])
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    for index in reversed(range(1, len(parts) - 1)):
        if parts[index - 1] == "lib" and re.fullmatch(r"python\d+\.\d+", parts[index]):
            return "/".join(parts[index:])
    return path.name


async def profile(shell: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The network workload under cProfile; the statistics go to ``params['profile_path']``."""
    result = await network(shell, params)
    return {"profile_path": params["profile_path"], **result}


async def memory(shell: Any, params: dict[str, Any]) -> dict[str, Any]:
    """RSS per idle node: the process's RSS before and after creating and joining N nodes."""
    count, k = int(params["nodes"]), int(params["k"])
    light = params.get("join", "light") == "light"
    await warm(shell, k)
    before = rss_kib()
    nodes, join_s, settled = await _build(shell, count, k, light=light)
    after = rss_kib()
    fds = open_fds()
    await shell.stop_all(nodes)
    return {
        "nodes": count,
        "join": "light" if light else "full",
        "join_s": join_s,
        "join_settled": settled,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_per_node_kib": (after - before) / count,
        "open_fds": fds,
    }
