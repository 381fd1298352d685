"""``python -m benchmarks.listen``: a tiny run gives every figure, from the real core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.listen import main


def test_a_tiny_run_measures_memory_and_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Memory per listen and CPU per update are measured, and every notice is delivered."""
    out = tmp_path / "listen.json"
    argv = ["--listens", "300", "--nodes", "25", "--listeners", "6", "--versions", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert 100 < result["memory"]["bytes per listen (one key)"] < 5000
    assert result["cpu"]["notices delivered"] == 6 * 2
    assert result["cpu"]["pushes sent"] == 300
    assert result["cpu"]["holder CPU us per push started"] > 0
