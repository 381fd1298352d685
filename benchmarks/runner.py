"""The ``python -m benchmarks`` command: plan, run every configuration in a subprocess, report.

Every configuration (a contender and a measure) runs ``--repeat`` times (3 by default; the
network measure 5 times, as its medians decide the targets against kademlia and OpenDHT), each
time in a fresh ``python -m benchmarks.worker`` process; the repetitions are interleaved (all
configurations once, then all again...) so that a noisy minute spoils one sample of many
configurations rather than every sample of one. The whole run is bounded by ``--budget``
seconds: each worker gets at most its own timeout and what is left of the budget, and
configurations that no longer fit are reported as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import CONTENDERS, FLOORS, MEASURES, MEASURES_OF, OTHERS, OURS

__all__ = ["SETTINGS", "main", "plan", "repeats", "schedule"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

#: The parameters of each measure, per mode. Counts and durations are what bound the run.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {
        "rpc": {"warmup": 0.2, "duration": 1.0, "max_ops": 200_000},
        # The core's share of a ping, timed alone (benchmarks.pingcost) in the rpc-c1 worker of
        # each of ours, after its pings: what the driver and the loop add is the rest.
        "core_ping": {"pings": 4000, "batches": 5},
        "serving": {
            "contacts": 200,
            "connections": 4,
            "in_flight": 32,
            "warmup": 0.3,
            "duration": 1.2,
        },
        # 500 operations of each kind per phase, but no phase runs longer than phase_timeout
        # seconds (--phase-seconds): a slow contender does fewer (the JSON has the counts).
        "network": {
            "nodes": 50,
            "k": 20,
            "ops": 500,
            "concurrency": 16,
            "value_size": 100,
            "phase_timeout": 10.0,
            "settle_s": 30.0,
        },
        "memory": {"nodes": 500, "k": 20, "join": "light", "settle_s": 20.0},
        "profile": {
            "nodes": 50,
            "k": 20,
            "ops": 100,
            "concurrency": 16,
            "value_size": 100,
            "phase_timeout": 4.0,
        },
        # The network measure's medians decide the targets against the other DHTs, and its
        # ratios moved by a third between repetitions on a shared machine: five, not three
        # (about 130 s more; one repetition of it takes about 65 s for the six contenders).
        "run": {"repeat": 3, "budget": 720.0, "repeat_of": {"network": 5}},
    },
    "quick": {
        "rpc": {"warmup": 0.1, "duration": 0.5, "max_ops": 100_000},
        "core_ping": {"pings": 1000, "batches": 3},
        "serving": {
            "contacts": 200,
            "connections": 4,
            "in_flight": 32,
            "warmup": 0.2,
            "duration": 0.5,
        },
        "network": {
            "nodes": 50,
            "k": 20,
            "ops": 60,
            "concurrency": 16,
            "value_size": 100,
            "phase_timeout": 3.0,
            "settle_s": 10.0,
        },
        "memory": {"nodes": 200, "k": 20, "join": "light", "settle_s": 8.0},
        "profile": {
            "nodes": 50,
            "k": 20,
            "ops": 40,
            "concurrency": 16,
            "value_size": 100,
            "phase_timeout": 2.0,
        },
        "run": {"repeat": 1, "budget": 150.0},
    },
    "tiny": {
        "rpc": {"warmup": 0.05, "duration": 0.2, "max_ops": 10_000},
        "core_ping": {"pings": 100, "batches": 1},
        "serving": {
            "contacts": 40,
            "connections": 2,
            "in_flight": 8,
            "warmup": 0.1,
            "duration": 0.3,
        },
        "network": {
            "nodes": 8,
            "k": 4,
            "ops": 6,
            "concurrency": 4,
            "value_size": 100,
            "phase_timeout": 5.0,
            "settle_s": 3.0,
        },
        "memory": {"nodes": 10, "k": 4, "join": "light", "settle_s": 3.0},
        "profile": {
            "nodes": 8,
            "k": 4,
            "ops": 6,
            "concurrency": 4,
            "value_size": 100,
            "phase_timeout": 5.0,
        },
        "run": {"repeat": 1, "budget": 80.0},
    },
}

#: Seconds one worker may take, at most, per measure (the budget may cut it shorter).
TIMEOUTS = {
    "rpc-c1": 60.0,
    "rpc-c32": 60.0,
    "serving": 60.0,
    "network": 240.0,
    "memory": 240.0,
    "profile": 240.0,
}

#: Modules a contender needs beyond txdht and Twisted.
NEEDS = {
    "uvloop": "uvloop",
    "floor-uvloop": "uvloop",
    "kademlia": "kademlia",
    "opendht": "opendht",
}
ALIASES = {
    "ours": OURS,
    "others": OTHERS,
    "floor": FLOORS,
    "floors": FLOORS,
    "rpc": ("rpc-c1", "rpc-c32"),
}


@dataclass
class Config:
    """One contender on one measure, with its parameters."""

    contender: str
    measure: str
    params: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.contender} {self.measure}"


def _params(
    mode: str, contender: str, measure: str, out: Path, stamp: str, phase_seconds: float | None
) -> dict[str, Any]:
    settings = SETTINGS[mode]
    if measure.startswith("rpc-c"):
        params = {**settings["rpc"], "concurrency": int(measure.removeprefix("rpc-c"))}
        if measure == "rpc-c1" and contender in OURS:
            params["core_ping"] = settings["core_ping"]
        return params
    params = dict(settings[measure])
    if phase_seconds is not None and "phase_timeout" in params:
        params["phase_timeout"] = phase_seconds
    if measure == "profile":
        params["profile_path"] = str(out / f"{stamp}-profile-{contender}.txt")
        params["contender"] = contender
    return params


def select(only: list[str]) -> tuple[set[str], set[str]]:
    """The contenders and measures named by ``--only`` (all of a kind when none is named)."""
    contenders: set[str] = set()
    measures: set[str] = set()
    for raw in only:
        for name in filter(None, (n.strip() for n in raw.split(","))):
            expanded = ALIASES.get(name, (name,))
            for item in expanded:
                if item in CONTENDERS:
                    contenders.add(item)
                elif item in MEASURES:
                    measures.add(item)
                else:
                    known = ", ".join((*CONTENDERS, *MEASURES, *ALIASES))
                    raise SystemExit(f"--only: unknown name {name!r} (known: {known})")
    return contenders or set(CONTENDERS), measures or set(MEASURES)


def plan(
    mode: str, only: list[str], out: Path, stamp: str, phase_seconds: float | None = None
) -> list[Config]:
    """The configurations to run, in a stable order (ours, the others, the floors);
    ``phase_seconds`` replaces the mode's bound on each put and get phase."""
    contenders, measures = select(only)
    return [
        Config(contender, measure, _params(mode, contender, measure, out, stamp, phase_seconds))
        for measure in MEASURES
        for contender in CONTENDERS
        if contender in contenders and measure in measures and measure in MEASURES_OF[contender]
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def availability(contenders: set[str]) -> dict[str, str | None]:
    """None for each contender that can run here, else why not (probed in a subprocess, so
    that a broken extension module cannot take this process down)."""
    reasons: dict[str, str | None] = {}
    probed: dict[str, str | None] = {}
    for contender in contenders:
        module = NEEDS.get(contender)
        if module is None:
            reasons[contender] = None
            continue
        if module not in probed:
            if importlib.util.find_spec(module) is None:
                probed[module] = f"unavailable: {module} is not installed (pip install '.[bench]')"
            else:
                probe = subprocess.run(
                    [sys.executable, "-c", f"import {module}"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=_env(),
                )
                last = (probe.stderr.strip().splitlines() or ["?"])[-1]
                probed[module] = None if probe.returncode == 0 else f"unavailable: {last}"
        reasons[contender] = probed[module]
    return reasons


def run_worker(config: Config, timeout: float) -> dict[str, Any]:
    """Run one repetition of ``config`` in a fresh process; its metrics, or why it failed."""
    spec = {"contender": config.contender, "measure": config.measure, "params": config.params}
    command = [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "error": f"timed out after {timeout:.0f} s",
            "wall_s": time.perf_counter() - started,
        }
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.strip().splitlines()[-3:]
        answer = {"ok": False, "error": f"exit {done.returncode}: {' | '.join(tail)}"[:500]}
    answer["wall_s"] = wall
    return dict(answer)


def _summary(measure: str, metrics: dict[str, Any]) -> str:
    def num(name: str, fmt: str = ",.0f") -> str:
        value = metrics.get(name)
        return "n/a" if value is None else format(value, fmt)

    if measure.startswith("rpc"):
        return f"{num('ops_per_s')} pings/s, p50 {num('p50_ms', '.3f')} ms"
    if measure == "serving":
        return f"{num('replies_per_s')} replies/s"
    if measure in ("network", "profile"):
        return (
            f"join {num('join_s', '.2f')} s, put {num('put_conc_ops_per_s')}/s, "
            f"get {num('get_conc_ops_per_s')}/s, success {num('get_success', '.0%')}"
        )
    return f"{num('rss_per_node_kib', ',.1f')} KiB/node"


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, Python, load."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load: list[float] | None = list(os.getloadavg())
    except OSError:
        load = None
    versions: dict[str, str | None] = {}
    from importlib import metadata

    for package in ("twisted", "uvloop", "kademlia", "opendht", "txdht"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "platform": sys.platform,
        "loadavg_start": load,
        "versions": versions,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks txdht's nodes side by side with kademlia, OpenDHT and "
        "bare-loop floors, on loopback only. See benchmarks/README.md.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs (under 2 minutes)")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny counts (a smoke test of the machinery)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAMES",
        help="comma-separated contenders and/or measures: "
        f"{', '.join(CONTENDERS)}, {', '.join(MEASURES)}, or ours, others, floor, rpc",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per configuration, every measure (default 3, the network measure 5)",
    )
    parser.add_argument(
        "--budget", type=float, help="seconds for the whole run (default 720, --quick 150)"
    )
    parser.add_argument(
        "--phase-seconds",
        type=float,
        metavar="S",
        help="at most S seconds for each put and get phase of the network measure (default "
        "10, --quick 3): a contender slower than 500 operations in S seconds does fewer, "
        "and the table says how many",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser.parse_args(argv)


def repeats(run_settings: dict[str, Any], repeat: int | None = None) -> dict[str, int]:
    """Runs per configuration of each measure: ``repeat`` (``--repeat``) for all of them, or
    else the mode's ``repeat`` with its ``repeat_of`` exceptions."""
    if repeat is not None:
        return dict.fromkeys(MEASURES, max(1, repeat))
    default = max(1, int(run_settings["repeat"]))
    exceptions = run_settings.get("repeat_of", {})
    return {measure: max(1, int(exceptions.get(measure, default))) for measure in MEASURES}


def schedule(configs: list[Config], runs: dict[str, int]) -> list[tuple[int, Config]]:
    """The runs, interleaved: every configuration's first, then every second... (each
    configuration ``runs[measure]`` times; a profile once: it is read, not compared)."""
    most = max((runs[config.measure] for config in configs), default=0)
    return [
        (rep, config)
        for rep in range(1, most + 1)
        for config in configs
        if rep <= runs[config.measure] and (rep == 1 or config.measure != "profile")
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from benchmarks import report

    mode = "tiny" if args.tiny else "quick" if args.quick else "default"
    run_settings = SETTINGS[mode]["run"]
    runs = repeats(run_settings, args.repeat)
    repeat = max(1, args.repeat or int(run_settings["repeat"]))
    budget = float(args.budget or run_settings["budget"])
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    configs = plan(mode, args.only, out, stamp, args.phase_seconds)
    console = Console(stderr=True)
    where = machine()  # before the run: its load average is the one at the start
    unavailable = availability({c.contender for c in configs})
    started = time.monotonic()
    deadline = started + budget
    jobs = schedule([c for c in configs if unavailable[c.contender] is None], runs)
    console.print(
        f"[bold]txdht benchmarks[/bold] ({mode}): {len(configs)} configurations, "
        f"{len(jobs)} runs, budget {budget:.0f} s; results in {out}"
    )
    for contender, reason in sorted(unavailable.items()):
        if reason:
            console.print(f"[yellow]{contender}: {reason}[/yellow]")
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=len(jobs))
        for rep, config in jobs:
            left = deadline - time.monotonic()
            of = runs[config.measure]
            progress.update(task, description=f"{config.name} (run {rep}/{of})")
            if left < 5:
                result: dict[str, Any] = {
                    "ok": False,
                    "error": "skipped: over the time budget",
                    "wall_s": 0.0,
                }
            else:
                result = run_worker(config, min(TIMEOUTS[config.measure], left))
            result["rep"] = rep
            config.runs.append(result)
            if result.get("ok"):
                line = _summary(config.measure, result["metrics"])
                progress.console.log(f"{config.name} #{rep}: {line} ({result['wall_s']:.1f} s)")
            else:
                progress.console.log(f"[red]{config.name} #{rep}: {result.get('error')}[/red]")
            progress.advance(task)
    wall = time.monotonic() - started
    document = report.build(
        mode=mode,
        stamp=stamp,
        started_at=started_at.isoformat(),
        wall_s=wall,
        repeat=repeat,
        repeat_of={m: n for m, n in runs.items() if n != repeat},
        budget=budget,
        settings=SETTINGS[mode],
        machine=where,
        configs=configs,
        unavailable=unavailable,
    )
    paths = report.write(document, out, stamp, plots=not args.no_plots)
    markdown = Path(paths["markdown"]).read_text(encoding="utf-8")
    print(markdown)
    console.print(f"wrote {', '.join(str(p) for p in paths.values() if p)}")
    console.print(f"total wall time {wall:.1f} s")
    return 0
