"""A mixed network over loopback TCP: Twisted nodes, Twisted nodes through the asyncio adapter,
and native asyncio nodes, ten of each, on one asyncio loop (the --reactor=asyncio pass)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from txdht.aio import Node as AioNode
from txdht.asyncio_adapter import AsyncioNode
from txdht.core.errors import NotFoundError
from txdht.node import Node as TwistedNode

pytestmark = pytest.mark.e2e
EACH = 10


class Twisted:
    """A Twisted node driven from asyncio code by hand (Deferred.asFuture), as a Twisted app
    would run beside asyncio code."""

    def __init__(self, reactor: Any) -> None:
        self.node = TwistedNode(reactor)

    @property
    def port(self) -> int:
        return self.node.port

    async def _wait(self, d: Deferred[Any]) -> Any:
        return await d.asFuture(asyncio.get_running_loop())

    async def start(self) -> None:
        await self._wait(self.node.listen())

    async def join(self, seeds: list[tuple[str, int]]) -> int:
        return int(await self._wait(self.node.join(seeds)))

    async def put(self, name: str, value: bytes) -> str:
        return str(await self._wait(self.node.put(name, value)))

    async def put_blob(self, value: bytes) -> str:
        return str(await self._wait(self.node.put_blob(value)))

    async def get(self, key: str) -> bytes:
        return bytes(await self._wait(self.node.get(key)))

    async def stop(self) -> None:
        await self._wait(self.node.stop())


async def mixed(reactor: Any) -> None:
    """The scenario, on the reactor's asyncio loop."""
    kinds: dict[str, list[Any]] = {
        "twisted": [Twisted(reactor) for _ in range(EACH)],
        "adapter": [AsyncioNode() for _ in range(EACH)],
        "aio": [AioNode() for _ in range(EACH)],
    }
    everyone = [n for nodes in kinds.values() for n in nodes]
    try:
        for node in everyone:
            await node.start()
        # Interleave the kinds and join each node through the one before it, always a node of
        # another kind that is already in the network.
        order = [node for trio in zip(*kinds.values(), strict=True) for node in trio]
        for before, node in itertools.pairwise(order):
            await node.join([("127.0.0.1", before.port)])
        items: list[tuple[str, str, bytes]] = []
        for kind, nodes in kinds.items():
            for i, writer in enumerate(nodes[:4]):
                value = f"{kind} item {i}".encode()
                key = await (writer.put(f"{kind}-{i}", value) if i % 2 else writer.put_blob(value))
                items.append((kind, key, value))
        for written_by, key, value in items:
            for kind, nodes in kinds.items():
                if kind != written_by:
                    for reader in nodes[5:8]:
                        assert await reader.get(key) == value
        for kind in ("twisted", "adapter"):
            for node in kinds[kind]:
                await node.stop()
        survivors = kinds["aio"]
        for _, key, value in items:
            for reader in survivors[::3]:
                assert await reader.get(key) == value
        with pytest.raises(NotFoundError):
            await survivors[1].get("ab" * 64)
    finally:
        for node in everyone:
            await node.stop()


@pytest_twisted.ensureDeferred
async def test_thirty_node_mixed_network(request: pytest.FixtureRequest, reactor: Any) -> None:
    """Puts from every kind are read from every other kind; then with every Twisted node
    stopped, the asyncio nodes alone still serve every item."""
    if request.config.getoption("reactor") != "asyncio":
        pytest.skip("the three kinds share one asyncio loop only on the --reactor=asyncio pass")
    await Deferred.fromFuture(asyncio.ensure_future(mixed(reactor)))
