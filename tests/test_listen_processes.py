"""Real processes: `txdht watch` on one `twistd -n dht` node prints what is put through another,
and two networks on one host, each told of the other's nodes, stay apart."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_processes import (
    BIN,
    NodeProcess,
    _once,
    environment,
    kill_all,
    start_joined,
    txdht,
)

__all__ = ["_once"]  # the fixture that keeps these to the default reactor's pass

WAIT = 30.0


def until(predicate: object, what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate()`` every 0.1 s for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Three joined node processes; killed at the end."""
    started = [NodeProcess(tmp_path / f"node{i}") for i in range(3)]
    try:
        start_joined(started, k=3)
        yield started
    finally:
        kill_all(started)


def test_watch_prints_what_another_node_puts(three: list[NodeProcess]) -> None:
    """`txdht watch KEY --json` on one node prints the current version, then the one put
    through another node, in order; the node lists the listen while it runs."""
    writer, watcher = three[1], three[2]
    first = txdht(writer, "put", "news", "one")
    assert first.returncode == 0, first.stderr
    key = first.stdout.decode().strip()
    watch = subprocess.Popen(
        [str(BIN / "txdht"), "--node", watcher.url, "watch", key, "--json", "--count", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    try:
        until(
            lambda: any(listen["holders"] for listen in watcher.api("/v1/listens")["listening"]),
            "the watcher's node listens",
        )
        held = [n.api("/v1/listens")["held"] for n in three]
        assert sum(len(h) for h in held) >= 1
        second = txdht(writer, "put", "news", "two")
        assert second.returncode == 0, second.stderr
        out, err = watch.communicate(timeout=WAIT)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=10)
    assert watch.returncode == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["key"], e["seq"], e["value"]) for e in events] == [
        (key, 1, "b25l"),
        (key, 2, "dHdv"),
    ]
    until(lambda: not watcher.api("/v1/listens")["listening"], "the listen ends with the watch")


def test_two_networks_on_one_host_stay_apart(tmp_path: Path) -> None:
    """Nodes of networks red and blue, each given the other's nodes as peers, never take one
    another into their tables; each network still works on its own."""
    red = [NodeProcess(tmp_path / f"red{i}") for i in range(2)]
    blue = [NodeProcess(tmp_path / f"blue{i}") for i in range(2)]
    everyone = red + blue
    try:
        red[0].start(options=["--network", "red"])
        blue[0].start(peers=[red[0]], options=["--network", "blue"])
        red[0].wait_ready()
        blue[0].wait_ready()
        red[1].start(peers=[red[0], blue[0]], options=["--network", "red"])
        blue[1].start(peers=[blue[0], red[0]], options=["--network", "blue"])
        red[1].wait_ready(peers=1)
        blue[1].wait_ready(peers=1)
        key = txdht(red[1], "put", "colour", "red").stdout.decode().strip()
        assert txdht(red[0], "get", key).stdout == b"red"
        assert txdht(blue[1], "get", key).returncode == 1  # not found: another network
        ids = {
            name: [n.status()["id"] for n in group]
            for name, group in (("red", red), ("blue", blue))
        }
        for name, group in (("red", red), ("blue", blue)):
            for node in group:
                peers = {peer["id"] for peer in node.api("/v1/peers")["peers"]}
                assert peers <= set(ids[name]), f"{name} node has a stranger: {peers}"
        assert "WRONG_NETWORK" in red[0].log_tail() or "of network" in red[0].log_tail()
    finally:
        kill_all(everyone)
