"""``txdht.aio.testing``: the in-memory network of asyncio nodes on a virtual clock, itself.

As in tests/test_aio.py, every event loop runs in a thread of its own (``in_thread``):
pytest-twisted's reactor owns the main thread. ``on_network`` runs a scenario on a new network
and checks that, once every node has stopped, nothing is left: no byte in flight, no timer on
the clock, no task on the loop.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import txdht.aio.testing
from tests.test_aio import in_thread, pending
from tests.test_bad_input import message, netstring
from txdht.aio.testing import (
    FIRST_PORT,
    UNLIMITED,
    MemoryNetwork,
    MemoryTransport,
    RawConnection,
    VirtualClock,
)
from txdht.core.errors import ErrorCode
from txdht.core.messages import Error, Ping, Pong

_T = TypeVar("_T")


def on_network(scenario: Callable[[MemoryNetwork], Coroutine[Any, Any, _T]], **options: Any) -> _T:
    """``scenario(net)``'s result, on a new ``MemoryNetwork(**options)`` in ``asyncio.run`` in a
    thread of its own; every node is stopped after it, and nothing may be left running."""

    async def main() -> _T:
        net = MemoryNetwork(**options)
        try:
            result = await scenario(net)
        finally:
            await net.stop()
        assert not net.events, "bytes still in flight"
        assert net.clock.timers() == [], "timers left on the clock"
        assert asyncio.all_tasks() == {asyncio.current_task()}, "tasks left on the loop"
        return result

    return in_thread(lambda: asyncio.run(main()))


def address(node: Any) -> tuple[str, int]:
    """Where ``node`` listens."""
    return ("127.0.0.1", int(node.port))


def docstring_example() -> str:
    """The code example of the module docstring, dedented."""
    doc = txdht.aio.testing.__doc__
    assert doc is not None
    block = doc.split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_the_docstring_example_runs() -> None:
    """The module docstring's example (ten nodes, a put, a get from another node) passes."""
    example = docstring_example()
    assert "def test_my_app" in example
    namespace: dict[str, Any] = {}
    exec(compile(example, "txdht.aio.testing example", "exec"), namespace)
    in_thread(namespace["test_my_app"])


def test_the_module_exports() -> None:
    """txdht.aio.testing offers the network, its clock and timers, transports and raw
    connections."""
    assert txdht.aio.testing.__all__ == [
        "MemoryNetwork",
        "MemoryTransport",
        "RawConnection",
        "VirtualClock",
        "VirtualTimer",
    ]


def test_a_network_needs_a_running_loop() -> None:
    """Making a MemoryNetwork outside a running event loop fails at once."""
    with pytest.raises(RuntimeError, match="no running event loop"):
        in_thread(MemoryNetwork)


def test_nodes_get_ports_from_4000_and_rate_limits_off() -> None:
    """Nodes listen on 127.0.0.1 from port 4000 on, with no rate limit unless given one."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(3)
        assert [n.port for n in nodes] == [FIRST_PORT, FIRST_PORT + 1, FIRST_PORT + 2]
        assert all(n.engine.limits is UNLIMITED for n in nodes)
        assert all(n.clock is net.clock and n.loop is net.loop for n in nodes)
        assert net.nodes == nodes
        assert all(len(n.engine.routing) == 2 for n in nodes)

    on_network(scenario)


def outcome(seed: int) -> tuple[list[str], list[int], float, int]:
    """The ids, the ports holding a put's item, the clock and the requests sent, on a network
    of eight nodes made from ``seed`` (one of them silent)."""

    async def scenario(net: MemoryNetwork) -> tuple[list[str], list[int], float, int]:
        nodes = await net.create(8, k=3)
        net.silence(nodes[5])
        key = await net.run(nodes[2].put("name", b"value"))
        assert await net.run(nodes[6].get(key)) == b"value"
        holders = [n.port for n in nodes if n.engine.storage.get(int(key, 16))]
        sent = sum(n for (way, _, _), n in nodes[2].metrics.rpcs.items() if way == "sent")
        return [n.id for n in nodes], holders, net.clock.time(), sent

    return on_network(scenario, seed=seed)


def test_the_same_seed_gives_the_same_ids_and_results() -> None:
    """Two networks from one seed have the same ids, store on the same nodes and take the same
    virtual time; another seed gives other ids; the ids are those txdht.testing gives."""
    from txdht.testing import MemoryNetwork as TwistedNetwork

    first, again, other = outcome(0), outcome(0), outcome(1)
    assert first == again
    assert set(first[0]).isdisjoint(other[0])
    twisted = TwistedNetwork(seed=0)
    assert [twisted.add_node().id for _ in range(8)] == first[0]


def test_flush_delivers_up_to_max_events_then_raises() -> None:
    """flush() delivers max_events events, and raises RuntimeError when more are in flight."""

    async def scenario(net: MemoryNetwork) -> None:
        node = net.add_node()
        net.silence(node)
        raw = net.open_raw(node)
        for _ in range(3):
            raw.send(b"x")
        net.flush()
        assert not net.events
        for _ in range(4):
            raw.send(b"x")
        with pytest.raises(RuntimeError, match="did not settle within 3 events"):
            net.flush()
        assert len(net.events) == 1
        net.events.clear()

    on_network(scenario, max_events=3)


def test_run_raises_when_nodes_talk_without_end() -> None:
    """run() gives up with RuntimeError when bytes never stop flowing while time stands still."""

    async def scenario(net: MemoryNetwork) -> None:
        node = net.add_node()
        net.silence(node)
        raw = net.open_raw(node)

        async def chatter() -> None:
            while True:
                raw.send(b"x")
                await asyncio.sleep(0)

        task = asyncio.create_task(chatter())
        with pytest.raises(RuntimeError, match="did not settle within 50 events"):
            await net.run(asyncio.sleep(0))
        assert net.clock.time() == 0.0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        net.events.clear()

    on_network(scenario, max_events=50)


def test_run_times_out_in_virtual_time() -> None:
    """A coroutine not done within max_seconds of virtual time raises TimeoutError and is
    cancelled, without real waiting; a future is left to its owner."""

    async def scenario(net: MemoryNetwork) -> None:
        never = net.loop.create_future()
        cancelled: list[bool] = []

        async def waits() -> None:
            try:
                await never
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        started = time.monotonic()
        with pytest.raises(TimeoutError, match="not done within 600 s of virtual time"):
            await net.run(waits(), max_seconds=600.0)
        assert net.clock.time() == 600.0
        assert cancelled == [True]
        assert never.cancelled()  # by the cancelled coroutine awaiting it
        kept = net.loop.create_future()
        with pytest.raises(TimeoutError, match="within 2 s"):
            await net.run(kept, max_seconds=2.0, step=1.0)
        assert net.clock.time() == 602.0
        assert not kept.done()
        kept.cancel()
        assert time.monotonic() - started < 5.0

    on_network(scenario)


def test_run_moves_the_clock_to_the_next_timer_due() -> None:
    """run() moves time to the next timer due rather than a whole step past it, and settles the
    network between timers: a reply a timer's request draws comes before the next timer."""

    async def scenario(net: MemoryNetwork) -> None:
        a, b = await net.create(2)
        seen: list[tuple[float, int]] = []
        done = net.loop.create_future()
        calls: list[asyncio.Task[Any]] = []

        def ping() -> None:
            calls.append(asyncio.create_task(a.call(address(b), Ping)))

        def check() -> None:
            seen.append((net.clock.time(), sum(c.done() for c in calls)))
            done.set_result(None)

        net.clock.call_at(0.25, ping)
        net.clock.call_at(0.5, check)
        await net.run(done, step=10.0)
        assert seen == [(0.5, 1)]
        assert net.clock.time() == 0.5

    on_network(scenario)


def test_run_gives_up_after_max_steps() -> None:
    """run() raises RuntimeError when the clock has moved max_steps times without an end."""

    async def scenario(net: MemoryNetwork) -> None:
        timers = []

        def again() -> None:  # a nanosecond on, again and again: time barely moves
            timers.append(net.clock.call_at(net.clock.time() + 1e-9, again))

        again()
        with pytest.raises(RuntimeError, match="not done within 10 moves of the clock"):
            await net.run(net.loop.create_future())
        assert len(timers) == 11
        timers[-1].cancel()

    on_network(scenario, max_steps=10)


def test_run_returns_the_result_or_raises_the_error() -> None:
    """run() returns what the awaitable returns, and raises what it raises."""

    async def scenario(net: MemoryNetwork) -> None:
        async def answer() -> int:
            return 42

        async def fail() -> None:
            raise ValueError("the caller's mistake")

        assert await net.run(answer()) == 42
        with pytest.raises(ValueError, match="mistake"):
            await net.run(fail())
        assert net.clock.time() == 0.0

    on_network(scenario)


def test_silence_makes_requests_time_out_in_virtual_time_only() -> None:
    """A request to a silenced node times out after rpc_timeout (5 s) of virtual time, in far
    less real time; a silenced node's own requests go unanswered too."""

    async def scenario(net: MemoryNetwork) -> None:
        quiet, node = await net.create(2)
        assert node.rpc_timeout == 5.0
        net.silence(quiet)
        started, real = node.now(), time.monotonic()
        with pytest.raises(TimeoutError, match="no reply within 5 s"):
            await net.run(node.call(address(quiet), Ping))
        assert node.now() - started == 5.0
        assert time.monotonic() - real < 1.0
        with pytest.raises(TimeoutError):
            await net.run(quiet.call(address(node), Ping))

    on_network(scenario)


def test_kill_refuses_connections() -> None:
    """A killed node has stopped, and connecting to it (or to a port nobody has) is refused."""

    async def scenario(net: MemoryNetwork) -> None:
        victim, other, third = await net.create(3)
        await net.kill(victim)
        assert victim.streams.stopped
        assert victim.streams.links == set()
        assert other.streams.link_to(address(victim)) is None
        with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{victim.port}"):
            await net.run(other.call(address(victim), Ping))
        with pytest.raises(ConnectionRefusedError):
            await net.run(other.call(("127.0.0.1", 9), Ping))
        assert isinstance(await net.run(other.call(address(third), Ping)), Pong)
        await net.kill(victim)  # again: harmless

    on_network(scenario)


def test_open_raw_gets_an_error_reply_to_garbage() -> None:
    """A raw connection's garbage draws an error reply, then its ping a pong; the node sees
    the raw connection's host."""

    async def scenario(net: MemoryNetwork) -> None:
        node = net.add_node()
        raw = net.open_raw(node, host="192.0.2.1")
        (link,) = node.streams.links
        assert link.host == "192.0.2.1"
        raw.send(netstring(b"garbage"))
        net.flush()
        (error,) = raw.messages()
        assert isinstance(error, Error)
        assert error.code == ErrorCode.MALFORMED
        raw.send(message(rid=8))
        net.flush()
        assert [(m.TYPE, m.rid) for m in raw.messages()] == [("error", 0), ("pong", 8)]
        assert node.streams.links == {link}
        raw.close()
        net.flush()
        assert raw.lost
        assert node.streams.links == set()

    on_network(scenario)


def test_the_clock_fires_timers_in_order() -> None:
    """advance() fires the timers due, soonest first and in the order set, each at its own time,
    with those set meanwhile if due; cancelled ones never fire."""
    clock = VirtualClock(10.0)
    fired: list[tuple[str, float]] = []

    def record(name: str) -> Callable[[], None]:
        return lambda: fired.append((name, clock.time()))

    due = clock.call_at(13.0, record("c"))
    clock.call_at(11.0, record("a"))
    clock.call_at(11.0, record("a2"))
    clock.call_at(12.0, lambda: clock.call_at(12.5, record("set by b")))
    skipped = clock.call_at(11.5, record("cancelled"))
    skipped.cancel()
    assert skipped.cancelled()
    late = clock.call_at(14.0, record("late"))
    assert [t.when() for t in clock.timers()] == [11.0, 11.0, 12.0, 13.0, 14.0]
    clock.advance(2.5)
    assert fired == [("a", 11.0), ("a2", 11.0), ("set by b", 12.5)]
    assert clock.time() == 12.5
    assert clock.timers() == [due, late]
    clock.advance(0.5)
    assert fired[-1] == ("c", 13.0)
    assert not late.cancelled()
    clock.call_at(1.0, record("past"))  # already due: fires at the next advance
    clock.advance(0)
    assert fired[-1] == ("past", 13.0)
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1.0)


def test_advance_fires_the_nodes_timers() -> None:
    """advance() moves the nodes' time: a request times out once rpc_timeout has passed."""

    async def scenario(net: MemoryNetwork) -> None:
        quiet, node = await net.create(2)
        net.silence(quiet)
        call = asyncio.create_task(node.call(address(quiet), Ping))
        await net.settle()
        assert pending(node) == 1
        net.advance(4.5)
        assert pending(node) == 1
        net.advance(0.5)
        assert pending(node) == 0
        assert net.clock.time() == 5.0
        with pytest.raises(TimeoutError):
            await call

    on_network(scenario)


def test_stop_leaves_no_task_timer_or_connection() -> None:
    """stop() ends every node's work: no connection, no timer on the clock, no task left."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(5)
        for node in nodes[1:]:
            net.silence(node)
        lookup = nodes[0].lookup(99)
        get = asyncio.create_task(nodes[1].get("ab" * 64))
        await net.settle()
        assert net.clock.timers()
        await net.stop()
        assert lookup.cancelled()
        assert get.cancelled()
        assert all(n.streams.links == set() for n in nodes)
        assert net.clock.timers() == []
        assert not net.events
        assert asyncio.all_tasks() == {asyncio.current_task()}

    on_network(scenario)


def test_transports_close_once_and_drop_late_bytes() -> None:
    """A transport names both ends, drops writes once closing and bytes to a closed end, and
    closes once (abort too); both protocols hear of the close."""

    async def scenario(net: MemoryNetwork) -> None:
        node = net.add_node()
        raw = net.open_raw(node)
        transport = raw.transport
        assert isinstance(transport, MemoryTransport)
        assert transport.get_extra_info("peername") == address(node)
        host, port = transport.get_extra_info("sockname")
        assert host == "127.0.0.1"
        assert port >= 50000
        transport.write(b"")
        assert not net.events
        raw.send(message(rid=1))
        raw.close()  # the pong the ping draws comes after the close: it is dropped
        transport.abort()
        assert transport.is_closing()
        raw.send(message(rid=2))
        assert len(net.events) == 2
        net.flush()
        assert raw.lost
        assert raw.received == b""
        assert node.streams.links == set()
        both = net.open_raw(node)
        (link,) = node.streams.links
        link.handle.close()
        both.close()
        net.flush()
        assert both.lost
        assert node.streams.links == set()

    on_network(scenario)


def test_raw_connection_stands_alone() -> None:
    """A RawConnection reads netstrings however they arrive, and knows when it is lost."""
    raw, ping = RawConnection(), message(rid=3)
    raw.data_received(ping[:1])
    assert raw.messages() == []
    raw.data_received(ping[1:])
    assert [m.rid for m in raw.messages()] == [3]
    raw.connection_lost(None)
    assert raw.lost
