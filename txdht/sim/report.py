"""What a scenario reports: tables, targets met or missed, counters; as text or JSON."""

from __future__ import annotations

import math
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Report", "Table", "Target", "cpu_seconds", "mean", "peak_rss_mib", "percentile"]

Cell = str | int | float


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0 for none): ``fraction`` 0.5 is the median."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def mean(values: Sequence[float]) -> float:
    """The mean of ``values`` (0 for none)."""
    return sum(values) / len(values) if values else 0.0


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """The CPU time this process has used so far (user and system), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cell(value: Cell) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return value


def _rounded(value: Cell) -> Cell:
    return round(value, 4) if isinstance(value, float) else value


@dataclass
class Table:
    """A titled table of rows."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)

    def render(self) -> list[str]:
        """The table as aligned text lines."""
        cells = [self.columns, *([_cell(v) for v in row] for row in self.rows)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title]
        for n, row in enumerate(cells):
            padded = [row[0].ljust(widths[0])]
            padded += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  " + "  ".join(padded))
            if not n:
                lines.append("  " + "  ".join("-" * w for w in widths))
        return lines


@dataclass
class Target:
    """A goal from the issue, what was measured, and whether it was met."""

    name: str
    goal: str
    measured: str
    met: bool


@dataclass
class Report:
    """Everything one scenario run found."""

    scenario: str
    parameters: dict[str, object]
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    simulated_seconds: float = 0.0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0

    @property
    def met(self) -> bool:
        """Whether every target was met."""
        return all(t.met for t in self.targets)

    def to_json(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {
            "scenario": self.scenario,
            "parameters": self.parameters,
            "tables": [
                {
                    "title": t.title,
                    "columns": t.columns,
                    "rows": [[_rounded(v) for v in row] for row in t.rows],
                }
                for t in self.tables
            ],
            "targets": [
                {"name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met}
                for t in self.targets
            ],
            "notes": self.notes,
            "counters": self.counters,
            "simulated_seconds": round(self.simulated_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "peak_rss_mib": round(self.peak_rss_mib, 1),
        }

    def render(self) -> str:
        """The report as text."""
        params = ", ".join(f"{k}={v}" for k, v in self.parameters.items())
        lines = [f"scenario {self.scenario}: {params}", ""]
        for table in self.tables:
            lines += [*table.render(), ""]
        if self.targets:
            lines.append("targets")
            for t in self.targets:
                verdict = "met" if t.met else "MISSED"
                lines.append(f"  {verdict:6}  {t.name}: {t.measured} (goal: {t.goal})")
            lines.append("")
        lines += [f"note: {note}" for note in self.notes]
        counts = ", ".join(f"{k} {v:,}" for k, v in self.counters.items())
        lines.append(f"messages: {counts}")
        lines.append(
            f"simulated {self.simulated_seconds / 3600:.2f} h in {self.wall_seconds:.1f} s wall "
            f"({self.cpu_seconds:.1f} s CPU), peak RSS {self.peak_rss_mib:,.0f} MiB"
        )
        return "\n".join(lines) + "\n"
