"""A flood over real loopback TCP: one client at ten times the rate limit, for two seconds."""

from __future__ import annotations

import random
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ClientCreator, Protocol

from txdht.core.framing import NetstringDecoder, netstring
from txdht.core.limits import Limits
from txdht.core.messages import Error, Ping, Pong, decode, encode
from txdht.node import Node

pytestmark = pytest.mark.e2e

RATE, BURST = 50.0, 100.0
SECONDS, TICK = 2.0, 0.05


def rss_kib() -> int:
    """This process's resident memory, in KiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


class Flooder(Protocol):
    """Counts the replies to the pings it floods."""

    def __init__(self) -> None:
        self.decoder = NetstringDecoder(1 << 20)
        self.pongs = 0
        self.refusals = 0
        self.sent = 0

    def dataReceived(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            reply = decode(payload)
            self.pongs += isinstance(reply, Pong)
            self.refusals += isinstance(reply, Error)

    def burst(self, count: int) -> None:
        """Send ``count`` pings at once."""
        assert self.transport is not None
        for _ in range(count):
            self.sent += 1
            self.transport.write(netstring(encode(Ping(rid=self.sent, sender=1, port=0))))


async def sleep(reactor: Any, seconds: float) -> None:
    """Let the reactor run."""
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


@pytest_twisted.ensureDeferred
async def test_flood_is_throttled_and_others_are_served(reactor: Any) -> None:
    """The flooder gets at most its burst plus its rate, memory stays flat, and lookups of
    other peers through the flooded node keep succeeding."""
    limits = Limits(peer_rate=RATE, peer_burst=BURST, cool_off=1.0)
    target = Node(reactor, limits=limits, rng=random.Random(1))
    await target.listen()
    others = [Node(reactor, rng=random.Random(i)) for i in range(2, 8)]
    for node in others:
        await node.listen()
        await node.join([("127.0.0.1", target.port)])
    flooder = await ClientCreator(reactor, Flooder).connectTCP("127.0.0.1", target.port)
    try:
        before = rss_kib()
        per_tick = int(RATE * 10 * TICK)
        ok_gets = 0
        for tick in range(int(SECONDS / TICK)):
            flooder.burst(per_tick)
            if tick % 8 == 0:
                writer, reader = others[tick % 6], others[(tick + 3) % 6]
                key = await writer.put_blob(b"during the flood %d" % tick)
                assert await reader.get(key) == b"during the flood %d" % tick
                ok_gets += 1
            await sleep(reactor, TICK)
        await sleep(reactor, 0.2)
        growth = rss_kib() - before
        print(
            f"flood: sent {flooder.sent}, pongs {flooder.pongs}, refusals {flooder.refusals}, "
            f"RSS growth {growth} KiB, gets during the flood {ok_gets}"
        )
        assert flooder.sent == int(SECONDS / TICK) * per_tick
        # Served: the burst, plus the rate after each cool-off, never near what was sent.
        assert flooder.pongs <= BURST + RATE * (SECONDS + 1)
        assert flooder.pongs < flooder.sent / 3
        assert flooder.refusals >= 1
        assert ok_gets == 5
        assert growth < 20 * 1024
        dropped = sum(v for (d, _, o), v in target.metrics.rpcs.items() if o == "drop")
        assert dropped > flooder.sent / 2
    finally:
        flooder.transport.loseConnection()
        await gatherResults([n.stop() for n in [target, *others]])
