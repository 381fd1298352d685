"""The asyncio twin's listen: ``async for notice in node.listen(key)`` on txdht.aio.testing's
in-memory network, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.test_aio import address
from tests.test_aio_testing import on_network
from tests.test_listen import key_of, version
from txdht.aio import Node
from txdht.aio.testing import MemoryNetwork
from txdht.core.errors import ErrorCode, JoinError, RemoteError
from txdht.core.ids import id_to_hex
from txdht.core.listen import Notice
from txdht.core.messages import Ping


async def network(net: MemoryNetwork, count: int = 8) -> list[Node]:
    """``count`` joined nodes with k = 3."""
    return await net.create(count, k=3)


def test_async_for_gives_each_version_once_in_order_until_cancelled() -> None:
    """Each new version arrives once and in order; after cancel() the iteration ends and the
    holders let the listen go."""

    async def scenario(net: MemoryNetwork) -> list[tuple[int, bytes | None]]:
        nodes = await network(net)
        got: list[Notice] = []
        subscription = nodes[1].listen(id_to_hex(key_of("news")))
        assert subscription.key == id_to_hex(key_of("news"))

        async def read() -> None:
            async with subscription:
                async for notice in subscription:
                    got.append(notice)
                    if notice.seq == 3:
                        break

        reader = asyncio.ensure_future(read())
        await net.run(asyncio.sleep(0), max_seconds=1)
        net.advance(1)
        await net.settle()
        assert len(subscription.holders) == 3
        for seq in (1, 2, 3):
            await net.run(nodes[5].publish(version(seq)))
        await net.run(reader)
        await net.settle()
        assert not any(key_of("news") in n.engine.listeners for n in nodes)
        assert [n async for n in subscription] == []  # it ended
        return [(n.seq, n.value) for n in got]

    assert on_network(scenario) == [(1, b"v1"), (2, b"v2"), (3, b"v3")]


def test_a_failed_listen_raises_from_the_iteration() -> None:
    """A listen that fails (a bug in its step) raises its error to the reader."""

    async def scenario(net: MemoryNetwork) -> str:
        nodes = await network(net)
        subscription = nodes[1].listen(id_to_hex(key_of("news")))
        net.advance(1)
        await net.settle()

        def broken(item: Any) -> None:
            raise RuntimeError("a bug")

        subscription.op.pushed = broken  # type: ignore[method-assign]
        await net.run(nodes[5].publish(version(1)))
        with pytest.raises(RuntimeError, match="a bug") as raised:
            await subscription.__anext__()
        return str(raised.value)

    assert on_network(scenario) == "a bug"


def test_notices_wait_until_read_and_expiry_is_told() -> None:
    """Notices queue while nobody reads; an expiry arrives as a notice too."""

    async def scenario(net: MemoryNetwork) -> list[tuple[int, bool]]:
        nodes = await network(net)
        subscription = nodes[1].listen(id_to_hex(key_of("news")))
        net.advance(1)
        await net.settle()
        await net.run(nodes[5].publish(version(1), ttl=60.0))
        net.advance(61)
        for node in nodes:
            node.expire()
        await net.settle()
        net.advance(5)
        await net.settle()
        subscription.cancel()
        return [(n.seq, n.expired) async for n in subscription]

    assert on_network(scenario) == [(1, False), (1, True)]


def test_networks_stay_apart() -> None:
    """A node of another network cannot join through ours, and its requests are refused with
    WRONG_NETWORK."""

    async def scenario(net: MemoryNetwork) -> int:
        ours = net.add_node(network="ours")
        theirs = net.add_node(network="theirs")
        with pytest.raises(JoinError):
            await net.run(theirs.join([address(ours)]))
        with pytest.raises(RemoteError) as refused:
            await net.run(theirs.call(address(ours), Ping))
        assert len(ours.engine.routing) == 0
        return refused.value.code

    assert on_network(scenario) == ErrorCode.WRONG_NETWORK
