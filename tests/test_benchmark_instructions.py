"""Tests for ``benchmarks.instructions``: the get workload, and the arithmetic and error
handling around valgrind (a stand-in script plays valgrind: CI has none installed)."""

from __future__ import annotations

import dataclasses
import gc
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import instructions
from txdht.testing import MemoryNetwork

ROOT = Path(__file__).resolve().parent.parent


def fake_valgrind(tmp_path: Path, body: str) -> str:
    """An executable standing in for valgrind: ``body`` is Python, with ``gets`` set to the
    number after ``--run`` in its arguments."""
    script = tmp_path / "valgrind"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "gets = int(sys.argv[sys.argv.index('--run') + 1])\n" + body
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_the_workload_gets_every_value_back_from_its_first_request() -> None:
    """Each get goes to peers (no reader holds what it gets) and is answered by its first
    find_value request; a wrong value would raise. Five of the six gets (items 0, 1, 2, 0, 1)
    ask the reader's nearest contact alone, a holder; the reader of item 3 knows 20 of the
    29 other nodes, and its nearest is too far from the key to be taken for a holder, so that
    get asks alpha = 3 at once: 5 + 3 requests."""
    assert instructions.workload(6, nodes=30, items=4) == 8
    assert instructions.workload(0, nodes=30, items=4) == 0
    assert gc.isenabled()  # off only while the gets are counted


def test_the_put_workload_stores_new_blobs_under_their_keys() -> None:
    """``op="put"``: each measured put is of a new blob (a wrong key would raise), a lookup's
    find_node requests and a store to each of the k closest: here all 29 other nodes are
    within k = 20 of most keys, so more than 20 requests a put, and fewer than 2 k + 1."""
    puts = 4
    requests = instructions.workload(puts, nodes=30, items=4, op="put")
    assert 20 * puts < requests <= 41 * puts
    assert instructions.workload(0, nodes=30, items=4, op="put") == 0
    assert gc.isenabled()


def test_the_ping_workload_sends_one_request_a_ping() -> None:
    """``op="ping"``: one node pings another over their connection, each ping one request
    (its pong's sender checked), and nothing else goes out meanwhile."""
    assert instructions.workload(5, nodes=30, items=4, op="ping") == 5
    assert instructions.workload(0, nodes=30, items=4, op="ping") == 0
    assert gc.isenabled()


def test_a_pong_from_another_node_fails_the_ping_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workload checks who answered: a pong carrying another id is an error, not a ping."""
    from txdht.node import Node

    real_call = Node.call

    def call(self: Node, to: Any, cls: Any, **fields: Any) -> Any:
        d = real_call(self, to, cls, **fields)
        return d.addCallback(lambda pong: dataclasses.replace(pong, sender=pong.sender ^ 1))

    monkeypatch.setattr(Node, "call", call)
    with pytest.raises(AssertionError, match="answered by another node"):
        instructions.workload(1, nodes=30, items=4, op="ping")


def test_the_workload_counts_only_gets_puts_and_pings() -> None:
    with pytest.raises(ValueError, match="op is one of"):
        instructions.workload(1, nodes=30, items=4, op="find_node")


def test_the_cycle_collector_is_off_while_the_gets_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When a collection comes depends on every allocation so far: none may fall inside the
    gets counted (the count would jump with it), and the collector is on again after."""
    states: list[bool] = []
    real_run = MemoryNetwork.run

    def run(self: MemoryNetwork, d: Any, *args: Any, **kwargs: Any) -> Any:
        states.append(gc.isenabled())
        return real_run(self, d, *args, **kwargs)

    monkeypatch.setattr(MemoryNetwork, "run", run)
    instructions.workload(3, nodes=30, items=4)
    # 29 joins, 4 puts and 4 warm-up gets with the collector on, then the 3 gets counted off.
    assert states == [True] * (29 + 4 + 4) + [False] * 3
    assert gc.isenabled()


def test_instructions_per_get_is_the_difference_over_the_gets(tmp_path: Path) -> None:
    """A run with gets, less a run with none, over the number of gets."""
    valgrind = fake_valgrind(
        tmp_path, "print(f'==1== Collected : {1000 + 7 * gets}', file=sys.stderr)\n"
    )
    assert instructions.count(5, valgrind) == 1035
    assert instructions.instructions_per_get(300, valgrind) == 7.0


@pytest.mark.parametrize(
    "body",
    [
        "sys.exit(3)\n",  # valgrind (or the workload under it) failed
        "print('no count here', file=sys.stderr)\n",  # it printed no count
    ],
)
def test_a_failed_valgrind_run_is_an_error_that_says_so(tmp_path: Path, body: str) -> None:
    with pytest.raises(RuntimeError, match="valgrind failed"):
        instructions.count(1, fake_valgrind(tmp_path, body))


def test_run_is_the_workload_alone() -> None:
    """``--run N`` is what valgrind is given: the workload, from a checkout's root."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--run", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2 gets, 2 requests"  # each answered by its first, alone


def test_count_passes_the_operation_to_the_run(tmp_path: Path) -> None:
    """The run valgrind is given counts what was asked for: ``--op put`` reaches it."""
    valgrind = fake_valgrind(
        tmp_path,
        "op = sys.argv[sys.argv.index('--op') + 1]\n"
        "per = {'get': 7, 'put': 40}[op]\n"
        "print(f'==1== Collected : {1000 + per * gets}', file=sys.stderr)\n",
    )
    assert instructions.instructions_per_get(10, valgrind) == 7.0
    assert instructions.instructions_per_get(10, valgrind, "put") == 40.0


def test_main_prints_instructions_per_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    valgrind = fake_valgrind(
        tmp_path, "print(f'==1== Collected : {5000 + 1234567 * gets}', file=sys.stderr)\n"
    )
    monkeypatch.setattr(shutil, "which", lambda name: valgrind)
    assert instructions.main(["--gets", "10"]) == 0
    assert capsys.readouterr().out == "1,234,567 instructions per get (10 gets)\n"
    assert instructions.main(["--gets", "10", "--op", "put"]) == 0
    assert capsys.readouterr().out == "1,234,567 instructions per put (10 puts)\n"
    assert instructions.main(["--gets", "10", "--op", "ping"]) == 0
    assert capsys.readouterr().out == "1,234,567 instructions per ping (10 pings)\n"


def test_main_without_valgrind_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert instructions.main([]) == 2
    assert "apt-get install valgrind" in capsys.readouterr().err


def test_main_refuses_no_gets() -> None:
    with pytest.raises(SystemExit) as exit_info:
        instructions.main(["--gets", "0"])
    assert exit_info.value.code == 2
