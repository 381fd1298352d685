"""The simulator's PNG plots: drawn from a report's JSON, written by the command line, and a
clear error for what cannot be plotted (or when matplotlib is missing)."""

from __future__ import annotations

import json
import runpy
import struct
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from txdht.sim import Settings, run
from txdht.sim.cli import main as sim_main
from txdht.sim.plot import MissingPlotter, comparison, figure, main, save

RUNS = {
    "lookup": Settings(nodes=30, keys=3, lookups=8),
    "crash": Settings(nodes=30, keys=12, k=6, kill=(0.5, 0.9)),
    "churn": Settings(nodes=20, keys=4, k=5, hours=2.0),
    "partition": Settings(nodes=20, keys=2, k=5, minutes=12.0),
    "silent": Settings(nodes=30, keys=4, k=6, lookups=8, silent=(0.1, 0.33)),
    "idle": Settings(nodes=15, keys=6, k=4, hours=1.0),
    "listen": Settings(nodes=20, keys=1, k=5, hours=0.5),
    "adversary": Settings(nodes=30, keys=2, lookups=4, k=5, hostile=(0.1, 0.2)),
}


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    """One small run of each scenario, as its JSON."""
    return {name: run(name, settings).to_json() for name, settings in RUNS.items()}


def column(report: dict[str, Any], name: str, table: int = 0, nth: int = 0) -> list[Any]:
    """The values of the ``nth`` column called ``name`` in a report table."""
    t = report["tables"][table]
    i = [n for n, c in enumerate(t["columns"]) if c == name][nth]
    return [row[i] for row in t["rows"]]


def heights(ax: Any) -> list[float]:
    """The heights of the bars of ``ax``, in drawing order."""
    return [patch.get_height() for patch in ax.patches]


def ydata(line: Any) -> list[float]:
    """The y values of a plotted line."""
    return [float(y) for y in line.get_ydata()]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG file's header (and the header is a PNG's)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_lookup_plot_shows_rpcs_and_latency_per_kind(reports: dict[str, Any]) -> None:
    """Bars of RPCs (p50, p90, max) and latency (p50, p90) for FIND_NODE, the ideal, FIND_VALUE."""
    report = reports["lookup"]
    rpcs, latency = figure(report).axes
    assert [t.get_text() for t in rpcs.get_xticklabels()] == column(report, "lookup")
    want = column(report, "p50") + column(report, "p90") + column(report, "max")
    assert heights(rpcs) == want
    assert heights(latency) == column(report, "ms p50") + column(report, "ms p90")
    assert "RTT 50 ms" in latency.get_title()


def test_the_crash_plot_shows_reads_and_replicas_against_the_goals(
    reports: dict[str, Any],
) -> None:
    """Readable % and replica quantiles per fraction killed, with the 85% and 80%-of-k lines."""
    report = reports["crash"]
    readable, replicas = figure(report).axes
    assert heights(readable) == column(report, "readable %")
    quantiles = ("replicas min", "p10", "p25", "p50")
    assert heights(replicas) == [v for q in quantiles for v in column(report, q)]
    assert [ydata(line) for line in readable.lines] == [[85.0, 85.0]]
    assert [ydata(line) for line in replicas.lines] == [[0.8 * 6, 0.8 * 6]]


def test_the_churn_plot_follows_the_hours(reports: dict[str, Any]) -> None:
    """Lookup and get success, and replica quantiles, one point per simulated hour."""
    report = reports["churn"]
    probes, replicas = figure(report).axes
    lookups, gets, goal = probes.lines
    assert [float(x) for x in cast(Any, lookups).get_xdata()] == [1, 2]
    assert ydata(lookups) == column(report, "ok %")
    assert ydata(gets) == column(report, "ok %", nth=1)
    assert ydata(goal) == [99.5, 99.5]
    lines = [ydata(line) for line in replicas.lines]
    want = [column(report, name) for name in ("replicas min", "p25", "p50")]
    assert lines == [*want, [0.7 * 5, 0.7 * 5]]


def test_the_partition_plot_stacks_what_gets_returned(reports: dict[str, Any]) -> None:
    """Each time after healing, the gets split into newest, older and none, stacked."""
    report = reports["partition"]
    (ax,) = figure(report).axes
    gets = column(report, "gets", table=1)
    n = len(gets)
    bars = heights(ax)
    totals = [bars[i] + bars[n + i] + bars[2 * n + i] for i in range(n)]
    assert totals == pytest.approx(gets)
    assert bars[2 * n :] == column(report, "none", table=1)
    acknowledged = sum(column(report, "acknowledged"))
    assert f"({acknowledged} writes acknowledged)" in ax.get_title()


def test_the_listen_plot_shows_the_delays_per_phase_against_2_rtt(
    reports: dict[str, Any],
) -> None:
    """One group of bars (p50, p99) per phase, and the goal line at 2 RTT."""
    report = reports["listen"]
    (ax,) = figure(report).axes
    assert heights(ax) == column(report, "p50 ms") + column(report, "p99 ms")
    assert [ydata(line) for line in ax.lines] == [[100.0, 100.0]]


def test_the_silent_plot_shows_the_latency_distribution_and_the_puts(
    reports: dict[str, Any],
) -> None:
    """One latency curve per fraction silent (its quantiles), with the 3 s goal; bars of the
    nodes that took each put against k - 2."""
    report = reports["silent"]
    latency, took = figure(report).axes
    curves = [line for line in latency.get_lines() if str(line.get_label()).endswith("silent")]
    assert [ydata(line) for line in curves] == [row[1:] for row in report["tables"][1]["rows"]]
    assert 3000.0 in [ydata(line)[0] for line in latency.get_lines()]
    assert heights(took) == column(report, "took min") + column(report, "p10") + column(
        report, "p50"
    )


def test_the_idle_plot_shows_messages_and_bytes_by_kind(reports: dict[str, Any]) -> None:
    """Bars of messages per node per hour, and of KiB, one per kind of message."""
    report = reports["idle"]
    messages, size = figure(report).axes
    assert heights(messages) == column(report, "messages")
    assert heights(size) == pytest.approx([b / 1024 for b in column(report, "bytes")])


def test_the_adversary_plot_shows_each_kind_by_paths_and_the_eclipse(
    reports: dict[str, Any],
) -> None:
    """At 20% hostile, one line per kind of adversary: gets of the newest version and RPCs per
    get against the number of paths; and one eclipse line per number of paths."""
    report = reports["adversary"]
    newest, cost, hidden = figure(report).axes
    table = report["tables"][0]
    twenty = [row for row in table["rows"] if row[0] == "20%"]
    kinds = list(dict.fromkeys(row[1] for row in twenty))
    lines = [line for line in newest.get_lines() if line.get_label() in kinds]
    assert [ydata(line) for line in lines] == [
        [row[3] for row in twenty if row[1] == kind] for kind in kinds
    ]
    assert [ydata(line) for line in cost.get_lines()] == [
        [row[5] for row in twenty if row[1] == kind] for kind in kinds
    ]
    eclipse = report["tables"][1]["rows"]
    assert [str(line.get_label()) for line in hidden.get_lines()] == [
        f"{paths} paths, subnet cap {cap}" for cap in ("none", 2) for paths in (1, 2, 3, 4)
    ]
    assert [line.get_linestyle() for line in hidden.get_lines()] == ["--"] * 4 + ["-"] * 4
    assert ydata(hidden.get_lines()[0]) == [row[4] for row in eclipse if row[2:4] == ["none", 1]]
    assert ydata(hidden.get_lines()[4]) == [row[4] for row in eclipse if row[2:4] == [2, 1]]


def test_an_eclipse_only_run_plots_the_eclipse_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``--hostile none`` runs only the eclipse: its plot is the eclipse panel alone."""
    argv = ["adversary", "--nodes", "20", "--k", "5", "--lookups", "2", "--hostile", "none"]
    assert sim_main([*argv, "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tables"][0]["rows"] == []
    assert len(report["tables"][1]["rows"]) == 5 * 2 * 4  # ground ids x subnet caps x paths
    assert report["targets"] == []
    (hidden,) = figure(report).axes  # no kinds were run: no panels for them
    assert len(hidden.get_lines()) == 8
    assert hidden.get_title() == "eclipse of one key"


def test_two_reports_are_compared_before_and_after(reports: dict[str, Any], tmp_path: Path) -> None:
    """--compare draws a silent or lookup report before (dashed) and after (solid) a change on
    one plot; other pairs are refused with a clear error."""
    for name in ("silent", "lookup"):
        (ax,) = comparison(reports[name], reports[name]).axes
        styles = {line.get_linestyle() for line in ax.get_lines()}
        assert styles == {"--", "-"}
        assert "before and after" in ax.get_title()
    (ax,) = comparison(reports["idle"], reports["idle"]).axes
    kinds, messages = column(reports["idle"], "kind"), column(reports["idle"], "messages")
    counts = dict(zip(kinds, messages, strict=True))
    assert heights(ax) == [counts[kind] for kind in sorted(counts)] * 2
    legend = ax.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["before", "after"]
    with pytest.raises(ValueError, match="cannot compare a crash report"):
        comparison(reports["crash"], reports["crash"])
    paths = []
    for name in ("lookup", "crash"):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(reports[name]))
        paths.append(str(path))
    out = tmp_path / "compared.png"
    assert main(["--compare", str(out), paths[0], paths[0]]) == 0
    assert png_size(out) == (600, 450)
    with pytest.raises(SystemExit):
        main(["--compare", str(out), paths[0], paths[1]])
    with pytest.raises(SystemExit):
        main(["--compare", str(out), paths[0]])


def test_every_figure_is_titled_with_its_parameters(reports: dict[str, Any]) -> None:
    """The title names the scenario, the size and the network's parameters."""
    for name, report in reports.items():
        title = figure(report).get_suptitle()
        nodes = RUNS[name].nodes
        assert title.startswith(f"{name}: {nodes} nodes, k={RUNS[name].k}, RTT 50 ms, loss 0")


def test_save_writes_a_png(reports: dict[str, Any], tmp_path: Path) -> None:
    """A two-panel plot is a 1200x450 PNG; the one-panel partition plot is half as wide."""
    save(reports["crash"], tmp_path / "crash.png")
    save(reports["partition"], tmp_path / "partition.png")
    assert png_size(tmp_path / "crash.png") == (1200, 450)
    assert png_size(tmp_path / "partition.png") == (600, 450)


def test_main_plots_each_report_next_to_its_json(
    reports: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m txdht.sim.plot a.json b.json` writes a.png and b.png."""
    paths = []
    for name in ("lookup", "churn"):
        path = tmp_path / f"{name}-run.json"
        path.write_text(json.dumps(reports[name]))
        paths.append(path)
    assert main([str(p) for p in paths]) == 0
    assert png_size(tmp_path / "lookup-run.png") == (1200, 450)
    assert png_size(tmp_path / "churn-run.png") == (1200, 450)
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path / 'lookup-run.png'}",
        f"wrote {tmp_path / 'churn-run.png'}",
    ]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file"),
        ("{not json", "Expecting property name"),
        ("[1, 2]", "not a txdht.sim report"),
        ('{"scenario": "flood"}', "not a txdht.sim report"),
        ('{"scenario": "crash"}', "'tables'"),
        ('{"scenario": "crash", "tables": []}', "list index out of range"),
        ('{"scenario": "crash", "tables": [{"title": "t", "columns": 3, "rows": []}]}', "int"),
    ],
)
def test_what_is_not_a_report_is_a_clear_error(
    content: str | None, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file, bad JSON, or a report of no known scenario or shape: exit 1, saying
    which file and why, and no PNG."""
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        main([str(path)])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m txdht.sim.plot: cannot plot {path}: ")
    assert reason in err
    assert not (tmp_path / "report.png").exists()


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import matplotlib.figure`` fail, as where the bench extra is not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)


@pytest.mark.usefixtures("no_matplotlib")
def test_without_matplotlib_plotting_says_what_to_install(
    reports: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No matplotlib: ``MissingPlotter`` names the extra, and the command exits 1 with it."""
    with pytest.raises(MissingPlotter, match=r"pip install 'txdht\[bench\]'"):
        figure(reports["lookup"])
    path = tmp_path / "lookup.json"
    path.write_text(json.dumps(reports["lookup"]))
    with pytest.raises(SystemExit) as stopped:
        main([str(path)])
    assert stopped.value.code == 1
    assert "plots need matplotlib" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["--compare", str(tmp_path / "out.png"), str(path), str(path)])
    assert stopped.value.code == 1
    assert "plots need matplotlib" in capsys.readouterr().err


def test_the_simulator_writes_json_and_png_to_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m txdht.sim ... --out DIR` prints the table and writes DIR/SCENARIO-NODES.json
    (the report printed with --json) and its plot."""
    out = tmp_path / "runs" / "one"
    argv = ["partition", "--nodes", "20", "--keys", "2", "--k", "5", "--minutes", "12"]
    assert sim_main([*argv, "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("scenario partition: nodes=20")
    saved = json.loads((out / "partition-20.json").read_text())
    assert png_size(out / "partition-20.png") == (600, 450)
    assert captured.err == f"wrote {out / 'partition-20.json'} and {out / 'partition-20.png'}\n"
    assert sim_main([*argv, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for report in (saved, printed):
        del report["wall_seconds"], report["cpu_seconds"], report["peak_rss_mib"]
    assert printed == saved


@pytest.mark.usefixtures("no_matplotlib")
def test_the_simulator_saves_the_json_when_it_cannot_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without matplotlib the run still counts: its JSON is written and stderr says why there
    is no plot."""
    argv = ["churn", "--nodes", "10", "--keys", "2", "--k", "4", "--hours", "1", "--churn", "0"]
    assert sim_main([*argv, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "churn-10.json").read_text())["scenario"] == "churn"
    assert not (tmp_path / "churn-10.png").exists()
    assert "; no plot: plots need matplotlib" in capsys.readouterr().err


def test_an_unusable_out_directory_stops_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out naming a file is a usage error at once, not after hours of simulation."""
    taken = tmp_path / "file"
    taken.write_text("")
    with pytest.raises(SystemExit) as stopped:
        sim_main(["lookup", "--nodes", "100000", "--out", str(taken)])
    assert stopped.value.code == 2
    assert f"error: --out {taken}: File exists" in capsys.readouterr().err


def test_python_m_runs_the_plotter(
    reports: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m txdht.sim.plot` runs main with the command line and exits with its status."""
    path = tmp_path / "crash.json"
    path.write_text(json.dumps(reports["crash"]))
    monkeypatch.setattr(sys, "argv", ["python -m txdht.sim.plot", str(path)])
    monkeypatch.delitem(sys.modules, "txdht.sim.plot")
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module("txdht.sim.plot", run_name="__main__")
    assert stopped.value.code == 0
    assert (tmp_path / "crash.png").exists()
    assert capsys.readouterr().out == f"wrote {tmp_path / 'crash.png'}\n"
