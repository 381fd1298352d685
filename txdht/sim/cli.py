"""``python -m txdht.sim SCENARIO [options]``: run one scenario, print its report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from txdht.core.messages import MAX_CONTACTS
from txdht.sim.plot import MissingPlotter, save
from txdht.sim.scenarios import DEFAULTS, SCENARIOS, Settings, run

__all__ = ["main", "parser"]


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {text!r}") from None
    if not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError("each fraction must be above 0 and below 1")
    return values


def _hostile(text: str) -> tuple[float, ...]:
    return () if text == "none" else _fractions(text)


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("a probability from 0 up to (not including) 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _above_zero(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _k(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_CONTACTS:
        raise argparse.ArgumentTypeError(f"k is from 1 to {MAX_CONTACTS}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line."""
    defaults = "; ".join(
        f"{name}: " + ", ".join(f"--{k} {v}" for k, v in values.items())
        for name, values in DEFAULTS.items()
    )
    p = argparse.ArgumentParser(
        prog="python -m txdht.sim",
        description="Run many txdht nodes (the real core) on a simulated network with a "
        "virtual clock, and report how lookups and stored values fare.",
        epilog=f"Defaults per scenario: {defaults}.",
    )
    p.add_argument("scenario", choices=sorted(SCENARIOS), help="what to simulate")
    p.add_argument("--nodes", type=_positive, help="nodes in the network")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (1)")
    p.add_argument("--keys", type=_positive, help="items stored (partition: names written)")
    p.add_argument("--latency", type=_non_negative, default=50.0, help="round-trip time, ms (50)")
    p.add_argument("--jitter", type=_non_negative, default=0.0, help="up to this many ms more")
    p.add_argument("--loss", type=_probability, default=0.0, help="chance a message is lost (0)")
    p.add_argument("--k", type=_k, default=20, help="bucket size and replicas (20)")
    p.add_argument("--alpha", type=_positive, default=3, help="lookup parallelism (3)")
    p.add_argument("--rpc-timeout", type=_above_zero, default=5.0, help="seconds to a timeout (5)")
    p.add_argument("--lookups", type=_positive, help="lookup: lookups measured of each kind")
    p.add_argument("--hours", type=_above_zero, help="churn, idle: simulated hours")
    p.add_argument("--churn", type=_non_negative, help="churn: fraction replaced per hour")
    p.add_argument("--kill", type=_fractions, help="crash: fractions killed, e.g. 0.5,0.9")
    p.add_argument(
        "--silent", type=_fractions, help="silent: fractions that stop answering, e.g. 0.1,0.33"
    )
    p.add_argument(
        "--hostile",
        type=_hostile,
        help="adversary: fractions that are hostile, e.g. 0.2 (none: the eclipse runs only)",
    )
    p.add_argument(
        "--paths", type=_positive, help="disjoint paths each lookup takes (1: plain Kademlia)"
    )
    p.add_argument("--minutes", type=_above_zero, help="partition: minutes split")
    p.add_argument("--json", action="store_true", help="print the report as JSON, not a table")
    p.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=Path("sim-results"),
        help="write the report as DIR/SCENARIO-NODES.json and its plot as .png "
        "(default: sim-results; the plot needs matplotlib, the bench extra)",
    )
    p.add_argument("--trace", metavar="FILE", help="write every event to FILE")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--quiet", action="store_true", help="say nothing on stderr while the run goes on"
    )
    return p


def settings(args: argparse.Namespace) -> Settings:
    """The settings the options ask for, the scenario's defaults filling the gaps."""
    values = dict(DEFAULTS[args.scenario])
    for f in fields(Settings):
        given = getattr(args, f.name, None)
        if given is not None and f.name != "trace":
            values[f.name] = given
    return Settings(**values)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario; 0, or 1 with ``--check`` when a target was missed."""
    p = parser()
    args = p.parse_args(argv)
    chosen = settings(args)
    try:  # before the run, which may take hours, not after
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {args.out}: {e.strerror or e}")
    chosen.progress = None if args.quiet else sys.stderr
    if args.trace:
        with open(args.trace, "w", encoding="utf-8") as trace:
            chosen.trace = trace
            report = run(args.scenario, chosen)
    else:
        report = run(args.scenario, chosen)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report.render())
    _write(report.to_json(), args.out / f"{args.scenario}-{chosen.nodes}")
    return 1 if args.check and not report.met else 0


def _write(data: dict[str, object], stem: Path) -> None:
    """Write the report's JSON and PNG files (saying so on stderr); a plot that cannot be drawn
    is reported, and the run, whose JSON is saved, still counts."""
    json_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    try:
        save(data, png_path)
    except MissingPlotter as e:
        print(f"wrote {json_path}; no plot: {e}", file=sys.stderr)
    else:
        print(f"wrote {json_path} and {png_path}", file=sys.stderr)
