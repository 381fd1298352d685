"""Where a ping's time goes: the core's share of a round trip, measured without any I/O.

The RPC measure times a ping between two nodes on one loop: the loop, the sockets, the driver
(the Twisted node or the asyncio twin), the core and its codec, at both ends. The floor times
the same round trip with a bare netstring echo. What is left between the two is the DHT's own
work per ping, and the ping target (p50 at most 1.5x the floor) allows half the floor for it.

This module measures, in the same process, the two parts of that work that no driver can
remove:

- ``core``: the whole round trip as the core does it, with no driver and no loop. Two engines,
  each behind its ``Streams``, joined by one in-memory link: node A starts a ``Call`` of
  ``Ping`` (as ``node.call`` does), its request is encoded and framed as a driver would, node B
  decodes it, serves it (rate limit, routing table, answer) and its reply comes back to A the
  same way, ending the call (request table, timer, round-trip time, routing table); both
  engines are then asked for their next timer, as a driver does after every event.
- ``codec``: of that, the wire alone: encoding, framing, deframing and decoding the ping and
  the pong (``txdht.core.messages`` on the standard library's ``json``, which the design rule
  keeps the core to).

What the measure's CPU per ping holds beyond the floor's and beyond ``core`` is the driver's:
the Deferred or future, batching writes, arming the loop's timer.

``python -m benchmarks.pingcost`` prints the two figures for this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

__all__ = ["core_ping", "main"]

#: Pings timed per batch, and batches (the figures are the medians of the batches).
PINGS, BATCHES = 4000, 5


def core_ping(pings: int = PINGS, batches: int = BATCHES) -> dict[str, float]:
    """Microseconds of CPU a ping round trip costs the core alone (``core_us_per_ping``), and the
    codec alone (``codec_us_per_ping``): medians of ``batches`` batches of ``pings``, after a
    warm-up of as many. Every round trip is checked: the call ends with the pinged node's id."""
    from benchmarks.common import unlimited
    from txdht.core import operations as ops
    from txdht.core.commands import Done, Write
    from txdht.core.engine import Engine
    from txdht.core.framing import NetstringDecoder, netstring
    from txdht.core.items import Identity
    from txdht.core.messages import Ping, Pong, decode, encode
    from txdht.core.storage import MemoryStorage
    from txdht.core.streams import Streams

    if pings < 1 or batches < 1:
        raise ValueError("at least one batch of one ping")

    def streams(port: int) -> Streams:
        engine = Engine(Identity.generate(), MemoryStorage(), now=0.0, limits=unlimited())
        engine.port = port
        return Streams(engine)

    a, b = streams(4001), streams(4002)
    address = ("127.0.0.1", 4002)
    to_b, _ = a.opened("to b", "127.0.0.1", 4002, 0.0)
    from_a, _ = b.opened("from a", "127.0.0.1", 50000, 0.0)
    a.connected(to_b, address, 0.0)
    at_a, at_b = NetstringDecoder(1 << 20), NetstringDecoder(1 << 20)
    clock = [1.0]

    def written(commands: list[Any]) -> bytes:
        (write,) = [c for c in commands if type(c) is Write]
        return netstring(encode(write.message))

    def round_trip() -> None:
        now = clock[0] = clock[0] + 1e-4
        call = ops.Call(address, Ping)
        (payload,) = at_b.feed(written(a.engine.start(call, now)))
        (payload,) = at_a.feed(written(b.received(from_a, payload, now)))
        ended = a.received(to_b, payload, now)
        a.engine.next_timer()
        b.engine.next_timer()
        if Done(call) not in ended or call.result.sender != b.engine.id:
            raise AssertionError(f"the ping did not end with B's pong: {ended}")

    ping = a.engine.message(Ping)
    pong = b.engine.message(Pong, ping.rid)

    for message, decoder in ((ping, at_b), (pong, at_a)):
        (payload,) = decoder.feed(netstring(encode(message)))
        if decode(payload) != message:
            raise AssertionError(f"{message.TYPE} did not survive the codec")

    def codec() -> None:
        (payload,) = at_b.feed(netstring(encode(ping)))
        decode(payload)
        (payload,) = at_a.feed(netstring(encode(pong)))
        decode(payload)

    def per_ping(step: Any) -> float:
        for _ in range(pings):  # warm-up: caches, the routing table's first contact
            step()
        times = []
        for _ in range(batches):
            started = time.process_time()  # CPU time, as the RPC measure's per ping
            for _ in range(pings):
                step()
            times.append((time.process_time() - started) / pings * 1e6)
        return statistics.median(times)

    return {"core_us_per_ping": per_ping(round_trip), "codec_us_per_ping": per_ping(codec)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pings", type=int, default=PINGS, help="pings per batch")
    parser.add_argument("--batches", type=int, default=BATCHES, help="batches (medians)")
    args = parser.parse_args(argv)
    print(json.dumps(core_ping(args.pings, args.batches)))


if __name__ == "__main__":
    main()
