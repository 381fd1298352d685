"""What a program hands a node is checked at the call: wrong types and impossible numbers are
a TypeError or ValueError naming the argument, raised before anything starts, in the core and
through each driver (the Twisted node on a MemoryNetwork, and the asyncio twin)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted

from tests.test_aio import run_async
from txdht.aio import Node as AioNode
from txdht.core.arguments import (
    check_cas,
    check_count,
    check_name,
    check_seconds,
    check_seeds,
    check_timeout,
    check_ttl,
    check_value,
)
from txdht.core.engine import Engine
from txdht.core.items import MAX_SEQ, MAX_TTL, Identity
from txdht.core.storage import MemoryStorage
from txdht.node import Node
from txdht.testing import MemoryNetwork

IDENTITY = Identity.from_private_bytes(b"a" * 32)


def test_a_value_is_bytes_and_a_copy_of_a_mutable_buffer() -> None:
    """bytes as they are; a bytearray or memoryview copied (it could change under the
    signature); anything else a TypeError saying what a value is."""
    value = b"v"
    assert check_value(value) is value
    buffer = bytearray(b"mutable")
    copied = check_value(buffer)
    buffer[0] = ord("M")
    assert (type(copied), copied) == (bytes, b"mutable")
    assert check_value(memoryview(b"view")) == b"view"
    for wrong, kind in (("text", "str"), (None, "NoneType"), (5, "int")):
        with pytest.raises(TypeError, match=f"a value is bytes, not {kind}"):
            check_value(wrong)


def test_a_name_is_a_str() -> None:
    assert check_name("n") == "n"
    for wrong in (b"n", 5, None):
        with pytest.raises(TypeError, match=f"a name is a str, not {type(wrong).__name__}"):
            check_name(wrong)


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan, math.inf, MAX_TTL + 1, 1e300])
def test_a_ttl_out_of_range_is_a_value_error(ttl: float) -> None:
    with pytest.raises(ValueError, match=f"a ttl is above 0 and at most {MAX_TTL:g} seconds"):
        check_ttl(ttl)


def test_ttls_and_timeouts_are_numbers() -> None:
    assert check_ttl(1) == 1.0
    assert check_ttl(MAX_TTL) == MAX_TTL
    assert check_timeout(None) is None
    assert check_timeout(2) == 2.0
    for wrong in ("10", True, None):
        with pytest.raises(TypeError, match="a ttl is a number of seconds"):
            check_ttl(wrong)
    with pytest.raises(TypeError, match="a timeout is a number of seconds, not str"):
        check_timeout("5")
    for out_of_range in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="a timeout is above 0 seconds and finite"):
            check_timeout(out_of_range)
    with pytest.raises(ValueError, match="rpc_timeout is a finite number of seconds above 0"):
        check_seconds("rpc_timeout", math.nan)
    assert check_seconds("rpc_timeout", 5) == 5.0


def test_counts_and_cas() -> None:
    assert check_count("k", 20, 1, 64) == 20
    with pytest.raises(TypeError, match="k is a whole number, not float"):
        check_count("k", 2.5, 1, 64)
    with pytest.raises(TypeError, match="alpha is a whole number, not bool"):
        check_count("alpha", True)
    with pytest.raises(ValueError, match="k must be from 1 to 64, not 65"):
        check_count("k", 65, 1, 64)
    with pytest.raises(ValueError, match="alpha must be at least 1, not 0"):
        check_count("alpha", 0)
    assert check_cas(None) is None
    assert check_cas(0) == 0
    assert check_cas(MAX_SEQ) == MAX_SEQ
    for wrong in (-1, MAX_SEQ + 1):
        with pytest.raises(ValueError, match=r"cas \(the sequence number expected\) must be"):
            check_cas(wrong)
    for not_int in ("1", 1.5):
        with pytest.raises(TypeError, match="cas"):
            check_cas(not_int)


def test_seeds_are_host_port_pairs() -> None:
    assert check_seeds([("127.0.0.1", 4000), ["::1", 4001]]) == [
        ("127.0.0.1", 4000),
        ("::1", 4001),
    ]
    assert check_seeds(iter([])) == []
    for not_seeds in ("127.0.0.1:4000", b"x", 5):
        with pytest.raises(TypeError, match=r"seeds are a list of \(host, port\) pairs"):
            check_seeds(not_seeds)
    for bad_seed in (["127.0.0.1:4000"], [("127.0.0.1",)], [(4000, "127.0.0.1")]):
        with pytest.raises(TypeError, match=r"a seed is a \(host, port\) pair"):
            check_seeds(bad_seed)
    with pytest.raises(TypeError, match=r"the port of seed '127\.0\.0\.1' is a whole number"):
        check_seeds([("127.0.0.1", "4000")])
    for port in (0, 70000):
        with pytest.raises(ValueError, match="must be from 1 to 65535"):
            check_seeds([("127.0.0.1", port)])


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"k": 0}, ValueError, "k must be from 1 to 64"),
        ({"k": 2.5}, TypeError, "k is a whole number"),
        ({"alpha": math.nan}, TypeError, "alpha is a whole number"),
        ({"paths": 0}, ValueError, "paths"),
        ({"rpc_timeout": math.nan}, ValueError, "rpc_timeout is a finite number"),
        ({"rpc_timeout": math.inf}, ValueError, "rpc_timeout is a finite number"),
        ({"max_value": 0}, ValueError, "max_value must be at least 1"),
        ({"limits": {"max_items": 5}}, TypeError, "limits is a txdht.Limits, not dict"),
    ],
)
def test_the_engine_refuses_impossible_settings(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Engine(IDENTITY, MemoryStorage(), now=0.0, **options)


# -- through the Twisted node ------------------------------------------------------------------


def network() -> tuple[MemoryNetwork, list[Any]]:
    net = MemoryNetwork()
    return net, net.create(4, k=3)


MISTAKES: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("put", (b"name", b"v"), {}, TypeError, "a name is a str, not bytes"),
    ("put", ("name", "text"), {}, TypeError, "a value is bytes, not str"),
    ("put", ("name", b"v"), {"ttl": 0}, ValueError, "a ttl is above 0"),
    ("put", ("name", b"v"), {"ttl": math.nan}, ValueError, "a ttl is above 0"),
    ("put", ("name", b"v"), {"ttl": "10"}, TypeError, "a ttl is a number of seconds"),
    ("put", ("name", b"v"), {"cas": -1}, ValueError, "cas"),
    ("put", ("name", b"v"), {"cas": "1"}, TypeError, "cas"),
    ("put", ("name", b"v"), {"timeout": 0}, ValueError, "a timeout is above 0"),
    ("put", ("name", b"v"), {"timeout": math.nan}, ValueError, "a timeout is above 0"),
    ("put_blob", ("text",), {}, TypeError, "a value is bytes, not str"),
    ("put_blob", (None,), {}, TypeError, "a value is bytes, not NoneType"),
    ("put_blob", (b"v",), {"ttl": -1}, ValueError, "a ttl is above 0"),
    ("get", ("ab" * 64,), {"timeout": -1}, ValueError, "a timeout is above 0"),
    ("get", ("ab" * 64,), {"timeout": "5"}, TypeError, "a timeout is a number"),
    ("join", ("127.0.0.1:4000",), {}, TypeError, "seeds are a list of"),
    ("join", (["127.0.0.1:4000"],), {}, TypeError, "a seed is a"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "error", "message"), MISTAKES)
def test_the_twisted_nodes_mistakes_raise_at_the_call_and_leave_nothing_behind(
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
    fail_on_logged_errors: list[Any],
) -> None:
    """Each mistake raises at the call; no operation is left waiting (stop has nothing to
    cancel), nothing is stored, and the node goes on serving."""
    net, nodes = network()
    node = nodes[1]
    held = node.engine.storage.count()
    with pytest.raises(error, match=message):
        getattr(node, method)(*args, **kwargs)
    assert node._waiting == {}
    assert node.engine.storage.count() == held
    key = net.run(node.put_blob(b"still serving"))
    assert net.run(nodes[3].get(key)) == b"still serving"
    net.run(node.stop())
    assert fail_on_logged_errors == []


def test_a_bytearray_is_stored_as_the_bytes_it_held() -> None:
    """A bytearray value is copied: the put is stored on its peers, and reads back as bytes."""
    net, nodes = network()
    value = bytearray(b"in a buffer")
    key = net.run(nodes[1].put("buffered", value))
    value[:] = b"changed"
    got = net.run(nodes[3].get(key))
    assert (type(got), got) == (bytes, b"in a buffer")
    assert net.run(nodes[1].put_blob(memoryview(b"viewed"))) == net.run(
        nodes[2].put_blob(b"viewed")
    )


def test_a_stopped_node_refuses_new_operations() -> None:
    """After stop, put, get and join raise RuntimeError at once (they used to run on a node
    whose connections were closed)."""
    net, nodes = network()
    net.run(nodes[1].stop())
    calls: list[Callable[[], object]] = [
        lambda: nodes[1].put("n", b"v"),
        lambda: nodes[1].get("ab" * 64),
        lambda: nodes[1].join([("127.0.0.1", nodes[0].port)]),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="this node has stopped"):
            call()
    assert nodes[1]._waiting == {}


# -- through the asyncio twin ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "args", "kwargs", "error", "message"), MISTAKES)
def test_the_asyncio_twins_mistakes_raise_the_same(
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """The native twin raises the same errors for the same mistakes, with nothing left."""

    async def main() -> None:
        async with AioNode() as seed, AioNode() as node:
            await node.join([("127.0.0.1", seed.port)], timeout=5)
            with pytest.raises(error, match=message):
                await asyncio.wait_for(getattr(node, method)(*args, **kwargs), 5)
            assert node._waiting == {}
            key = await node.put_blob(b"still serving", timeout=5)
            assert await seed.get(key, timeout=5) == b"still serving"
        with pytest.raises(RuntimeError, match="this node has stopped"):
            await node.get(key)

    run_async(main)


@pytest_twisted.ensureDeferred
async def test_the_twisted_node_listens_once(reactor: Any) -> None:
    """A second listen() raises instead of opening a port stop() would leave open; so does
    one after stop()."""
    node = Node(reactor)
    await node.listen("tcp:0:interface=127.0.0.1")
    try:
        with pytest.raises(RuntimeError, match=f"listens on {node.port} already"):
            node.listen("tcp:0:interface=127.0.0.1")
    finally:
        await node.stop()
    with pytest.raises(RuntimeError, match="this node has stopped"):
        node.listen("tcp:0:interface=127.0.0.1")


def test_the_asyncio_twin_starts_once() -> None:
    """The twin's second start() raises, and one after stop() too."""

    async def main() -> None:
        node = AioNode()
        await node.start()
        try:
            with pytest.raises(RuntimeError, match=f"listens on {node.port} already"):
                await node.start()
        finally:
            await node.stop()
        with pytest.raises(RuntimeError, match="this node has stopped"):
            await node.start()

    run_async(main)


def test_the_drivers_refuse_an_impossible_max_message() -> None:
    """max_message, a driver's setting (its framing), is checked by both drivers."""
    net = MemoryNetwork()
    with pytest.raises(ValueError, match="max_message must be at least 1, not 0"):
        net.add_node(max_message=0)

    async def main() -> None:
        with pytest.raises(TypeError, match="max_message is a whole number, not float"):
            AioNode(max_message=1.5)  # type: ignore[arg-type]

    run_async(main)
