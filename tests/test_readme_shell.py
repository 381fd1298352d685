"""The README's shell commands, run as written: the page cannot promise commands that fail.

The two install commands that open the page take minutes (a virtualenv and pip), so they are
checked word for word, not run. The ```sh blocks of "A small network on one machine" are run:
pasted, in order, into one bash process, as a reader pastes them into one terminal, so the
nodes' ``&`` jobs, the shell variable ``key`` and the job numbers of ``kill %1 %2`` all live in
that one shell. The first block's lines, one node each, are pasted one at a time, each once the
node before it answers: the strictest reading, in which a node that cannot run beside the one
before it (a second ``twistd -n`` in one directory meets the first one's ``twistd.pid``) fails
the test. Then the test waits, as the README tells the reader to, until the second node has
joined through the first, and pastes the other two blocks.

Two things differ from a reader's terminal, so that the test runs anywhere and any number of
times: each fixed port number the blocks show (4000, 4001, 8470, 8471) is replaced, everywhere
in them, by one free port picked for this run; and ``TXDHT_NODE`` names the first node's mapped
HTTP port, which the README's ``txdht`` commands reach by default as 8470. The shell runs in a
temporary directory that is also its HOME, so the nodes' data directories
(``~/.local/share/txdht/PORT``) are made there, and nothing is written to the repository or to
the real home. The commands are this environment's: the bin directory of the running Python
(where ``twist`` and ``txdht`` are) goes first on PATH, and this checkout first on PYTHONPATH.

Every wait is bounded, and every process the shell started is killed with its process group at
the end, pass or fail. The nodes are other processes, so the test runs the same on both
reactor passes of the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.test_processes import BIN, KILL_TIMEOUT, ROOT, START_TIMEOUT, environment, free_port

pytestmark = pytest.mark.e2e

README = (ROOT / "README.md").read_text(encoding="utf-8")
#: The first two commands of the page, as a reader on a fresh machine types them.
INSTALL_AND_RUN = (
    "python3 -m venv venv && . venv/bin/activate && pip install . && twistd -n dht --port tcp:4000"
)
INSTALL_AND_TEST = (
    "python3 -m venv venv && . venv/bin/activate && pip install '.[test]' && bash .ci/test"
)
#: The fixed ports the small network's blocks show; each is mapped to a free port.
FIXED_PORTS = (4000, 4001, 8470, 8471)
#: Bound on the second and third blocks: four `txdht` commands, and the nodes' clean stop.
RUN_TIMEOUT = 60.0


def sh_blocks(text: str) -> list[str]:
    """The ```sh blocks of ``text``, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", text, re.S | re.M)


def section(title: str) -> str:
    """The README's section under the ``## title`` heading, up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def map_ports(block: str, ports: dict[int, int]) -> str:
    """``block`` with each fixed port number replaced by its free port."""
    return re.sub(
        r"(?<!\d)(" + "|".join(map(str, ports)) + r")(?!\d)",
        lambda match: str(ports[int(match.group(1))]),
        block,
    )


def commands(block: str) -> list[str]:
    """The commands of ``block``, one a line (a line ending in a backslash joined to the next)."""
    return [line + "\n" for line in block.replace("\\\n", "").splitlines() if line.strip()]


def answering(port: int) -> Callable[[], bool]:
    """A check that the node whose HTTP API is on ``port`` answers."""
    return lambda: status(port) is not None


def status(port: int) -> dict[str, object] | None:
    """The /v1/status of the node whose HTTP API is on ``port``, or None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=5) as answer:
            return dict(json.loads(answer.read()))
    except OSError:
        return None


def live_members(group: int) -> list[int]:
    """The pids of the processes in process group ``group`` that have not exited (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # After "pid (comm) ": state, ppid, pgrp. comm may hold spaces and parentheses.
        state, _, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == group and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_until(done: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    """Poll ``done`` every 0.1 s for at most ``timeout`` seconds; fail with ``why()`` if never."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {why()}")
        time.sleep(0.1)


def readable(output: Path) -> str:
    """What the terminal showed, without the nodes' log records: to a file, twist logs JSON
    text sequences (each record a line that starts with the record separator, 0x1E)."""
    lines = output.read_text(errors="replace").split("\n")
    return "\n".join(line for line in lines if not line.startswith("\x1e"))


def shell_environment(home: Path, ports: dict[int, int]) -> dict[str, str]:
    """The reader's environment: this venv's commands, this checkout, ``home`` as HOME, and
    the mapped 8470 as the node `txdht` talks to by default."""
    env = environment()
    env.pop("XDG_DATA_HOME", None)  # the README's data dir is the default under ~
    env["HOME"] = str(home)
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env["TXDHT_NODE"] = f"http://127.0.0.1:{ports[8470]}"
    return env


@pytest.fixture
def ports() -> dict[int, int]:
    """A free port for each fixed port of the README's blocks."""
    return {port: free_port() for port in FIXED_PORTS}


@pytest.fixture
def shell(tmp_path: Path, ports: dict[int, int]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """One bash reading commands from a pipe, in its own process group; killed, group and all,
    at the end. Yields the process and the file its terminal output goes to."""
    output = tmp_path / "terminal.txt"
    with output.open("wb") as terminal:
        bash = subprocess.Popen(
            ["bash"],
            stdin=subprocess.PIPE,
            stdout=terminal,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=shell_environment(tmp_path, ports),
            start_new_session=True,
        )
    try:
        yield bash, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bash.pid, signal.SIGKILL)
        if bash.stdin is not None:
            with contextlib.suppress(OSError):  # bash is gone: what it was not sent is moot
                bash.stdin.close()
        bash.wait(timeout=KILL_TIMEOUT)
        wait_until(lambda: not live_members(bash.pid), KILL_TIMEOUT, lambda: "group still up")


def test_install_commands_open_the_readme() -> None:
    """The page opens with the install-and-run and install-and-test commands, word for word."""
    before_any_section = README[: README.index("\n## ")]
    assert sh_blocks(before_any_section) == [INSTALL_AND_RUN + "\n", INSTALL_AND_TEST + "\n"]


def test_small_network_runs_as_written(
    shell: tuple[subprocess.Popen[bytes], Path], ports: dict[int, int], tmp_path: Path
) -> None:
    """The small network's blocks start two nodes, put through one and get through the other,
    and stop both."""
    blocks = sh_blocks(section("A small network on one machine"))
    assert len(blocks) == 3, blocks  # start the nodes; put, get and look; stop them
    for port in FIXED_PORTS:
        assert any(str(port) in block for block in blocks), port
    start, use, stop = (map_ports(block, ports) for block in blocks)
    bash, output = shell
    assert bash.stdin is not None
    for command in commands(start):  # each starts a node: pasted once the one before is up
        http = re.search(r"--http tcp:(\d+)", command)
        assert http is not None, command
        bash.stdin.write(command.encode())
        bash.stdin.flush()
        wait_until(answering(int(http.group(1))), START_TIMEOUT, lambda: readable(output))

    def joined() -> bool:
        """Both nodes answer, and the second knows the first."""
        first, second = status(ports[8470]), status(ports[8471])
        return first is not None and second is not None and int(str(second["peers"])) >= 1

    wait_until(joined, START_TIMEOUT, lambda: readable(output))
    data = tmp_path / ".local" / "share" / "txdht"
    assert sorted(path.name for path in data.iterdir()) == sorted(
        str(ports[port]) for port in (4000, 4001)
    )
    bash.stdin.write(use.encode() + stop.encode())
    bash.stdin.flush()
    # The shell stays open, as a terminal does, until `kill %1 %2` has stopped both nodes.
    wait_until(lambda: live_members(bash.pid) == [bash.pid], RUN_TIMEOUT, lambda: readable(output))
    bash.stdin.close()
    assert bash.wait(timeout=KILL_TIMEOUT) == 0, readable(output)
    lines = readable(output).splitlines()
    assert "hello, world" in lines, lines  # put through the first node, read through the second
    assert any(re.fullmatch(r"peers:\s+1", line) for line in lines), lines  # `txdht status`
    assert any(line.split()[:2] == ["ID", "ADDRESS"] for line in lines), lines  # `txdht peers`
    assert not [line for line in lines if line.startswith("txdht:")], lines  # no errors
    assert not live_members(bash.pid)  # nothing the shell started is left running
