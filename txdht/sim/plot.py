"""PNG plots of simulator reports: ``python -m txdht.sim.plot REPORT.json...``.

A plot is drawn from a report's JSON (``Report.to_json``), not from the live run, so a saved run
can be plotted again, or a report from another machine plotted here. Each scenario has its
figure: lookups (RPCs and latency per kind of lookup, against the ideal), crash (keys readable
and replicas left per fraction killed), churn (probe success and replicas hour by hour) and
partition (what gets return after healing). Target lines are the issue's goals.

matplotlib is the ``bench`` extra's: it is imported when a plot is drawn, and ``MissingPlotter``
says how to install it when it is absent. Figures are made without pyplot, so no GUI backend and
no global figure state are involved.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MissingPlotter", "figure", "main", "save"]

Report = Mapping[str, Any]


class MissingPlotter(Exception):
    """matplotlib is not installed."""

    def __str__(self) -> str:
        return "plots need matplotlib: pip install 'txdht[bench]' (or matplotlib)"


class _Table:
    """A report table, its columns by name (``name#2``: the second column of that name)."""

    def __init__(self, table: Mapping[str, Any]) -> None:
        self.title: str = table["title"]
        self.rows: list[list[Any]] = table["rows"]
        self.index: dict[str, int] = {}
        for i, name in enumerate(table["columns"]):
            self.index[name if name not in self.index else f"{name}#2"] = i

    def column(self, name: str) -> list[Any]:
        """Every row's value in the column ``name``."""
        i = self.index[name]
        return [row[i] for row in self.rows]


def _new_figure(panels: int) -> tuple[Figure, list[Axes]]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingPlotter() from None
    fig = Figure(figsize=(6.0 * panels, 4.5), layout="constrained")
    return fig, [fig.add_subplot(1, panels, n + 1) for n in range(panels)]


def _bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per series in each group."""
    width = 0.8 / len(series)
    for n, (label, values) in enumerate(series.items()):
        ax.bar([g + n * width for g in range(len(groups))], values, width, label=label)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], list(groups))


def _goal(ax: Axes, value: float, label: str) -> None:
    ax.axhline(value, color="red", linestyle="--", linewidth=1, label=label)


def _lookup(report: Report) -> Figure:
    table = _Table(report["tables"][0])
    fig, (rpcs, latency) = _new_figure(2)
    kinds = table.column("lookup")
    _bars(rpcs, kinds, {q: table.column(q) for q in ("p50", "p90", "max")})
    rpcs.set_ylabel("RPCs per lookup")
    rpcs.set_title("RPCs per lookup")
    rpcs.legend()
    _bars(latency, kinds, {"p50": table.column("ms p50"), "p90": table.column("ms p90")})
    latency.set_ylabel("ms")
    latency.set_title(f"latency (RTT {report['parameters']['latency']:g} ms)")
    latency.legend()
    return fig


def _crash(report: Report) -> Figure:
    table = _Table(report["tables"][0])
    fig, (readable, replicas) = _new_figure(2)
    killed = table.column("killed")
    readable.bar(killed, table.column("readable %"))
    _goal(readable, 85.0, "goal after 90% killed")
    readable.set_ylim(0, 105)
    readable.set_xlabel("nodes killed")
    readable.set_ylabel("keys readable right after the crash, %")
    readable.set_title("reads after the crash")
    readable.legend(loc="lower left")
    quantiles = ("replicas min", "p10", "p25", "p50")
    _bars(replicas, killed, {q: table.column(q) for q in quantiles})
    _goal(replicas, 0.8 * report["parameters"]["k"], "goal: 80% of k")
    replicas.set_xlabel("nodes killed")
    replicas.set_ylabel("replicas on the k closest live nodes")
    replicas.set_title("one replication interval later")
    replicas.legend(loc="lower left")
    return fig


def _churn(report: Report) -> Figure:
    table = _Table(report["tables"][0])
    fig, (probes, replicas) = _new_figure(2)
    hours = list(range(1, len(table.rows) + 1))
    probes.plot(hours, table.column("ok %"), marker=".", label="lookups finding the closest")
    probes.plot(hours, table.column("ok %#2"), marker=".", label="gets returning the value")
    _goal(probes, 99.5, "lookup goal")
    probes.set_ylim(top=100.5)
    probes.set_xlabel("hour")
    probes.set_ylabel("%")
    probes.set_title("probes, hour by hour")
    probes.legend(loc="lower left")
    for name in ("replicas min", "p25", "p50"):
        replicas.plot(hours, table.column(name), marker=".", label=name)
    _goal(replicas, 0.7 * report["parameters"]["k"], "goal: lower quartile 70% of k")
    replicas.set_ylim(bottom=0)
    replicas.set_xlabel("hour")
    replicas.set_ylabel("live replicas on the k closest live nodes")
    replicas.set_title("replicas, hour by hour")
    replicas.legend(loc="lower left")
    return fig


def _partition(report: Report) -> Figure:
    writes, checks = (_Table(t) for t in report["tables"])
    fig, (ax,) = _new_figure(1)
    after = checks.column("after healing")
    gets = checks.column("gets")
    newest = [g * p / 100 for g, p in zip(gets, checks.column("newest %"), strict=True)]
    older, none = checks.column("older"), checks.column("none")
    ax.bar(after, newest, label="newest version")
    ax.bar(after, older, bottom=newest, label="an older version")
    ax.bar(after, none, bottom=[n + o for n, o in zip(newest, older, strict=True)], label="none")
    acknowledged = sum(writes.column("acknowledged"))
    ax.set_xlabel("time after healing")
    ax.set_ylabel("gets")
    ax.set_title(f"reads after healing ({acknowledged} writes acknowledged)")
    ax.legend(loc="lower left")
    return fig


def _silent(report: Report) -> Figure:
    table, spread = (_Table(t) for t in report["tables"])
    fig, (latency, took) = _new_figure(2)
    quantiles = [float(name[1:]) for name in list(spread.index)[1:]]
    for row in spread.rows:
        latency.plot(quantiles, row[1:], marker=".", label=f"{row[0]} silent")
    _goal(latency, 3000.0, "goal: p99 under 3 s")
    latency.set_yscale("log")
    latency.set_xlabel("quantile of gets, %")
    latency.set_ylabel("ms")
    latency.set_title("get latency, distribution")
    latency.legend(loc="upper left")
    silent = table.column("silent")
    _bars(took, silent, {q: table.column(q) for q in ("took min", "p10", "p50")})
    _goal(took, report["parameters"]["k"] - 2, "goal: at least k - 2")
    took.set_xlabel("nodes silent")
    took.set_ylabel("answering nodes that took a put")
    took.set_title("puts")
    took.legend(loc="lower left")
    return fig


def _idle(report: Report) -> Figure:
    traffic = _Table(report["tables"][0])
    fig, (messages, size) = _new_figure(2)
    kinds = traffic.column("kind")
    messages.bar(kinds, traffic.column("messages"))
    messages.set_ylabel("messages per node per hour")
    messages.set_title("background messages, by kind")
    size.bar(kinds, [b / 1024 for b in traffic.column("bytes")])
    size.set_ylabel("KiB per node per hour")
    size.set_title("background bytes (with replies), by kind")
    return fig


def _listen(report: Report) -> Figure:
    table = _Table(report["tables"][0])
    fig, (ax,) = _new_figure(1)
    phases = table.column("phase")

    def number(value: Any) -> float:
        return float(value) if isinstance(value, int | float) else 0.0

    _bars(
        ax, phases, {name: [number(v) for v in table.column(name)] for name in ("p50 ms", "p99 ms")}
    )
    _goal(ax, 2 * report["parameters"]["latency"], "goal: p99 within 2 RTT")
    ax.set_ylabel("ms from the put's acknowledgement to the listener")
    ax.set_title("new versions reaching their listeners")
    ax.legend(loc="upper left")
    return fig


def _kinds(table: _Table, newest: Axes, cost: Axes) -> None:
    """Gets of the newest version and their cost by kind of adversary and paths, at the
    hostile fraction nearest 20%."""
    shown = min(table.column("hostile"), key=lambda f: abs(float(f.rstrip("%")) - 20.0))
    rows = [row for row in table.rows if row[table.index["hostile"]] == shown]
    kinds = list(dict.fromkeys(row[table.index["kind"]] for row in rows))
    for kind in kinds:
        mine = [row for row in rows if row[table.index["kind"]] == kind]
        paths = [row[table.index["paths"]] for row in mine]
        newest.plot(paths, [r[table.index["newest %"]] for r in mine], marker=".", label=kind)
        cost.plot(paths, [r[table.index["RPCs per get"]] for r in mine], marker=".", label=kind)
    _goal(newest, 99.0, "goal: 99% (colluding)")
    for ax in (newest, cost):
        ax.set_xticks(sorted(set(table.column("paths"))))
    newest.set_xlabel("disjoint paths")
    newest.set_ylabel("gets of the newest version, %")
    newest.set_title(f"{shown} hostile: gets by honest nodes")
    newest.legend(loc="lower right")
    cost.set_xlabel("disjoint paths")
    cost.set_ylabel("RPCs per get")
    cost.set_title(f"{shown} hostile: cost")
    cost.legend(loc="upper left")


def _adversary(report: Report) -> Figure:
    table, eclipse = (_Table(t) for t in report["tables"])
    if not table.rows:  # --hostile none: the eclipse only
        fig, (hidden,) = _new_figure(1)
    else:
        fig, (newest, cost, hidden) = _new_figure(3)
        _kinds(table, newest, cost)
    column = eclipse.index
    for cap in dict.fromkeys(eclipse.column("subnet cap")):  # no limit dashed, the cap solid
        for paths in dict.fromkeys(eclipse.column("paths")):
            mine = [
                r
                for r in eclipse.rows
                if (r[column["subnet cap"]], r[column["paths"]]) == (cap, paths)
            ]
            hidden.plot(
                [r[column["ground ids"]] for r in mine],
                [r[column["newest %"]] for r in mine],
                marker=".",
                linestyle="--" if cap == "none" else "-",
                label=f"{paths} paths, subnet cap {cap}",
            )
    hidden.set_xlabel("ids ground next to the key, on one /24")
    hidden.set_ylabel("gets of the newest version, %")
    hidden.set_title("eclipse of one key")
    hidden.legend(loc="lower left")
    return fig


_FIGURES: dict[str, Callable[[Report], Figure]] = {
    "lookup": _lookup,
    "crash": _crash,
    "silent": _silent,
    "idle": _idle,
    "adversary": _adversary,
    "churn": _churn,
    "partition": _partition,
    "listen": _listen,
}


def comparison(before: Report, after: Report) -> Figure:
    """Two reports of one scenario, before and after a change, on one figure: for ``silent``,
    the distribution of get latency per fraction silent; for ``lookup``, the latency quantiles
    of each kind of lookup; for ``idle``, the background messages by kind. Other scenarios
    cannot be compared this way (``ValueError``)."""
    scenario = before["scenario"]
    if scenario != after["scenario"] or scenario not in ("silent", "lookup", "idle"):
        raise ValueError(f"cannot compare a {scenario} report with a {after['scenario']} one")
    fig, (ax,) = _new_figure(1)
    if scenario == "idle":
        tables = [_Table(before["tables"][0]), _Table(after["tables"][0])]
        kinds = sorted(set(tables[0].column("kind")) | set(tables[1].column("kind")))
        series = {}
        for label, table in zip(("before", "after"), tables, strict=True):
            counts = dict(zip(table.column("kind"), table.column("messages"), strict=True))
            series[label] = [counts.get(kind, 0.0) for kind in kinds]
        _bars(ax, kinds, series)
        ax.set_yscale("log")
        ax.set_ylabel("messages per node per hour")
        ax.set_title("background messages, before and after")
        ax.legend()
        return fig
    for label, report, style in (("before", before, "--"), ("after", after, "-")):
        if scenario == "silent":
            spread = _Table(report["tables"][1])
            quantiles = [float(name[1:]) for name in list(spread.index)[1:]]
            for row in spread.rows:
                ax.plot(quantiles, row[1:], style, marker=".", label=f"{row[0]} silent, {label}")
            ax.set_xlabel("quantile of gets, %")
            ax.set_title("get latency with silent nodes, before and after")
        else:
            table = _Table(report["tables"][0])
            names = ("ms p50", "ms p90", "ms p95", "ms p99")
            for row in table.rows:
                if row[0].endswith("ideal"):
                    continue
                values = [row[table.index[n]] for n in names]
                ax.plot([50, 90, 95, 99], values, style, marker=".", label=f"{row[0]}, {label}")
            ax.set_xlabel("quantile of lookups, %")
            ax.set_title(
                f"lookup latency at {before['parameters']['loss']:g} loss, before and after"
            )
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def figure(report: Report) -> Figure:
    """The figure of ``report`` (a ``Report.to_json`` mapping), titled with its parameters."""
    fig = _FIGURES[report["scenario"]](report)
    params = report["parameters"]
    fig.suptitle(
        f"{report['scenario']}: {params['nodes']:,} nodes, k={params['k']}, "
        f"RTT {params['latency']:g} ms, loss {params['loss']:g}, seed {params['seed']}"
    )
    return fig


def save(report: Report, path: Path) -> None:
    """Draw ``report`` and write it to ``path`` as a PNG."""
    figure(report).savefig(path, format="png", dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    """Plot each report next to its JSON file (``crash-1000.json`` → ``crash-1000.png``)."""
    p = argparse.ArgumentParser(
        prog="python -m txdht.sim.plot",
        description="Draw the PNG plot of saved simulator reports (python -m txdht.sim ... "
        "--out DIR writes them; so does --json > FILE).",
    )
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT.json")
    p.add_argument(
        "--compare",
        metavar="OUT.png",
        type=Path,
        help="draw the two reports given (before, then after a change) on one plot, OUT.png",
    )
    args = p.parse_args(argv)
    if args.compare is not None:
        if len(args.reports) != 2:
            p.error("--compare takes two reports: before, then after")
        try:
            before, after = (json.loads(r.read_text(encoding="utf-8")) for r in args.reports)
            comparison(before, after).savefig(args.compare, format="png", dpi=100)
        except MissingPlotter as e:
            p.exit(1, f"{p.prog}: {e}\n")
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            p.exit(1, f"{p.prog}: cannot compare {args.reports[0]} and {args.reports[1]}: {e}\n")
        print(f"wrote {args.compare}")
        return 0
    for path in args.reports:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(report, dict) or report.get("scenario") not in _FIGURES:
                raise ValueError("not a txdht.sim report (no known scenario)")
            save(report, path.with_suffix(".png"))
        except MissingPlotter as e:
            p.exit(1, f"{p.prog}: {e}\n")
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            p.exit(1, f"{p.prog}: cannot plot {path}: {e}\n")
        print(f"wrote {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
