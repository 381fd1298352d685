"""``python -m benchmarks.stores``: a tiny run measures every kind of store, from the real core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.stores import main


def test_a_tiny_run_measures_each_kind_of_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """New items, newer versions and copies of the held item are each handled (an ``ok``
    every time, or the run fails) and timed; the JSON is printed and written."""
    out = tmp_path / "stores.json"
    assert main(["--calls", "20", "--rounds", "2", "--size", "50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table, _, rest = printed.partition("{")
    assert table.splitlines()[:4] == [
        "kind    us per store",
        *(line for line in table.splitlines()[1:4] if line.split()[0] in {"new", "newer", "copy"}),
    ]
    result = json.loads("{" + rest)
    assert json.loads(out.read_text()) == result
    assert set(result["us_per_store"]) == {"new", "newer", "copy"}
    assert all(us > 0 for us in result["us_per_store"].values())
    assert result["copy_over_new"] == pytest.approx(
        result["us_per_store"]["copy"] / result["us_per_store"]["new"], abs=0.01
    )
    assert (result["calls"], result["rounds"], result["value_bytes"]) == (20, 2, 50)
