"""The serving measure's load: pipelined raw find_node clients, in a process of their own.

``python -m benchmarks.rawclient --port P`` opens ``--connections`` connections to
127.0.0.1:P, keeps ``--in-flight`` find_node requests in flight on each (framed with
``txdht.core.framing.netstring``, encoded with ``txdht.core.messages.encode``; sender port 0, so
the server never adds the client to its table), sends one new request per reply, and counts the
replies that arrive in the ``--duration`` seconds after ``--warmup``. Replies are counted by
their framing alone (the client must not be the bottleneck); a sample of them is decoded with
``txdht.core.messages.decode`` to check that they are ``nodes`` replies and how many contacts
they carry. Prints one JSON object on stdout. Runs on uvloop when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

from txdht.core.framing import netstring
from txdht.core.messages import FindNode, Nodes, decode, encode

__all__ = ["main"]

#: Distinct requests, cycled (random targets, so replies differ).
REQUESTS = 512
#: Replies decoded per connection, to check their type and count their contacts.
SAMPLES = 8


class _Counter:
    def __init__(self) -> None:
        self.replies = 0
        self.counting = False
        self.counted = 0
        self.contacts: list[int] = []
        self.bad: list[str] = []


class RawClient(asyncio.Protocol):
    """One connection: keeps ``in_flight`` requests outstanding, counts netstrings back."""

    def __init__(self, requests: list[bytes], in_flight: int, counter: _Counter) -> None:
        self.requests = requests
        self.in_flight = in_flight
        self.counter = counter
        self.buffer = bytearray()
        self.next = random.randrange(len(requests))
        self.transport: asyncio.Transport | None = None
        self.samples = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _batch(self, n: int) -> bytes:
        out = []
        for _ in range(n):
            out.append(self.requests[self.next])
            self.next = (self.next + 1) % len(self.requests)
        return b"".join(out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._batch(self.in_flight))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        done = 0
        size = len(buffer)
        while True:
            colon = buffer.find(b":", pos, pos + 12)
            if colon < 0:
                break
            end = colon + 1 + int(buffer[pos:colon])
            if end >= size:
                break
            if self.samples < SAMPLES and self.counter.counting:
                self.samples += 1
                self._check(bytes(buffer[colon + 1 : end]))
            pos = end + 1
            done += 1
        if pos:
            del buffer[:pos]
        if done:
            counter = self.counter
            counter.replies += done
            if counter.counting:
                counter.counted += done
            assert self.transport is not None
            self.transport.write(self._batch(done))

    def _check(self, payload: bytes) -> None:
        try:
            message = decode(payload)
        except Exception as e:
            self.counter.bad.append(f"undecodable reply: {e}")
            return
        if isinstance(message, Nodes):
            self.counter.contacts.append(len(message.nodes))
        else:
            self.counter.bad.append(f"a {message.TYPE} reply")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(11)
    requests = [
        netstring(
            encode(
                FindNode(
                    rid=i + 1, sender=rng.getrandbits(512), port=0, target=rng.getrandbits(512)
                )
            )
        )
        for i in range(REQUESTS)
    ]
    loop = asyncio.get_running_loop()
    counter = _Counter()
    clients = []
    for _ in range(args.connections):
        transport, client = await loop.create_connection(
            lambda: RawClient(requests, args.in_flight, counter), "127.0.0.1", args.port
        )
        clients.append((transport, client))
    await asyncio.sleep(args.warmup)
    counter.counting = True
    started = time.perf_counter()
    await asyncio.sleep(args.duration)
    counter.counting = False
    elapsed = time.perf_counter() - started
    for transport, _ in clients:
        transport.close()
    await asyncio.wait([client.lost for _, client in clients], timeout=5)
    contacts = counter.contacts
    return {
        "replies_per_s": counter.counted / elapsed,
        "replies": counter.counted,
        "seconds": elapsed,
        "connections": args.connections,
        "in_flight": args.in_flight,
        "contacts_per_reply": min(contacts) if contacts else None,
        "sampled": len(contacts),
        "bad_replies": counter.bad[:5],
        "client_loop": type(loop).__module__.split(".")[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
