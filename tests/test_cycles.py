"""Puts and gets leave no reference cycles behind: what a node allocates for an operation (its
requests, their timers, its lookup and the lookup's machine, the Deferred or future) is freed
by reference counting as the operation ends, not left to the cycle collector. A node serving
thousands of operations a second would otherwise pile up garbage between collections, and pay
for the collections that find it."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.test_aio import in_thread
from txdht.aio.testing import MemoryNetwork as AioMemoryNetwork
from txdht.core.engine import Timer
from txdht.testing import MemoryNetwork

NODES = 12
OPERATIONS = 12


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cycle collector off for the test (and back as it was after)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def cyclic_garbage() -> Counter[str]:
    """The objects in reference cycles that nothing else refers to, by type, collected."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()  # saved, not freed: free them now


def test_twisted_puts_and_gets_leave_no_cycles(no_collector: None) -> None:
    net = MemoryNetwork()
    nodes = net.create(NODES)
    keys = [net.run(nodes[i].put_blob(b"first %d" % i)) for i in range(OPERATIONS)]
    gc.collect()  # what building the network left
    for i, key in enumerate(keys):
        assert net.run(nodes[(i + 5) % NODES].get(key)) == b"first %d" % i
        net.run(nodes[i].put_blob(b"second %d" % i))
    assert cyclic_garbage() == Counter()


def test_asyncio_puts_and_gets_leave_no_cycles(no_collector: None) -> None:
    async def scenario() -> Counter[str]:
        net = AioMemoryNetwork()
        nodes = await net.create(NODES)
        keys = [await net.run(nodes[i].put_blob(b"first %d" % i)) for i in range(OPERATIONS)]
        gc.collect()
        for i, key in enumerate(keys):
            assert await net.run(nodes[(i + 5) % NODES].get(key)) == b"first %d" % i
            await net.run(nodes[i].put_blob(b"second %d" % i))
        garbage = cyclic_garbage()
        await net.stop()
        return garbage

    # In a thread of its own, as in tests/test_aio.py: under asyncioreactor a loop runs here.
    assert in_thread(lambda: asyncio.run(scenario())) == Counter()


def test_a_cancelled_timer_lets_go_of_its_action() -> None:
    """A cancelled timer waits in the heap until its time: it holds nothing meanwhile."""
    held = object()
    timer = Timer(5.0, print, (held,), None)
    timer.cancel()
    assert timer.cancelled
    assert timer.args == ()
    assert timer.op is None
    assert timer.action is not print
