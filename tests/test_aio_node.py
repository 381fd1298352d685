"""The native asyncio twin's decisions, on ``txdht.aio.testing``'s in-memory network.

Joins, puts and gets, sequence numbers, timeouts, cancellation, the routing table's
ping-before-evict and handoff, bad input on the wire, housekeeping: each scenario runs on a
``MemoryNetwork`` (``on_network``) in virtual time, so a 5 s ``rpc_timeout`` costs no waiting
and every run is the same. What is about sockets and the driver's I/O runs on real loopback TCP
in tests/test_aio.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

import pytest

from tests.test_aio import (
    address,
    connection,
    idle,
    left_behind,
    link_to,
    logged,
    pending,
)
from tests.test_aio import silence as mute
from tests.test_aio import unsilence as unmute
from tests.test_aio_testing import on_network
from tests.test_bad_input import ERROR_CASES, PUBLISHER, message, netstring, store
from txdht.aio import Lookup, Node
from txdht.aio.testing import MemoryNetwork, RawConnection
from txdht.core import operations as ops
from txdht.core.commands import Command
from txdht.core.errors import (
    ErrorCode,
    JoinError,
    NotFoundError,
    OperationTimeout,
    ProtocolError,
    PutError,
    RemoteError,
)
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import Identity, Item, blob
from txdht.core.limits import Limits
from txdht.core.messages import Error, FindNode, Message, Ping, Pong, Store, Value, encode
from txdht.core.schedule import JOBS, Intervals
from txdht.core.storage import MemoryStorage, StoredItem
from txdht.core.timing import FIRST_SLOW

#: A key under which nothing is ever stored.
MISSING = hashlib.sha512(b"nothing is stored under this").hexdigest()


async def until(
    net: MemoryNetwork,
    predicate: Callable[[], bool],
    max_seconds: float = 60.0,
    step: float = 0.5,
) -> None:
    """Run the network (time moving by ``step``) until ``predicate()`` holds; TimeoutError if
    it does not within ``max_seconds`` of virtual time."""

    async def holds() -> None:
        while not predicate():
            await asyncio.sleep(0)

    await net.run(holds(), max_seconds, step)


class Target:
    """A 6-node network in which ``node`` (the target) holds a signed item at seq 2."""

    def __init__(self, net: MemoryNetwork, node: Node, other: Node, item: Item) -> None:
        self.net = net
        self.node = node
        self.other = other
        self.item = item

    @classmethod
    async def create(cls, net: MemoryNetwork) -> Target:
        """Build it on ``net``."""
        nodes = await net.create(5)
        node = net.add_node(max_value=1000)
        await net.run(node.join([address(nodes[0])]))
        item = PUBLISHER.sign("kept", b"precious", 2)
        node.engine.store(item, 3600.0, node.now())
        return cls(net, node, nodes[1], item)

    def send_raw(self, data: bytes) -> RawConnection:
        """Send ``data`` to the node on a new raw connection, and deliver what follows."""
        raw = self.net.open_raw(self.node)
        raw.send(data)
        self.net.flush()
        return raw

    async def still_serving(self) -> None:
        """The node answers a ping from another peer and still holds its item."""
        reply = await self.net.run(self.other.call(address(self.node), Ping))
        assert isinstance(reply, Pong)
        assert reply.sender == self.node.engine.id
        assert self.node.engine.get(self.item.key, self.node.now()) == self.item


def _far_pair(own: int, count: int) -> list[Identity]:
    """Identities in the half of the id space opposite ``own``, sorted by distance to ``own``."""
    found = []
    for i in range(10_000):
        identity = Identity.from_private_bytes(i.to_bytes(32, "big"))
        if (identity.node_id ^ own) >> 511:
            found.append(identity)
        if len(found) == count:
            break
    return sorted(found, key=lambda ident: ident.node_id ^ own)


def _closer_to(near: Node, far: Node) -> bytes:
    """A blob value whose key is closer to ``near`` than to ``far``."""
    return next(
        v
        for v in (str(i).encode() * 2 for i in range(1000))
        if blob(v).key ^ near.engine.id < blob(v).key ^ far.engine.id
    )


# -- the public API ------------------------------------------------------------------------------


def test_put_and_get_across_ten_nodes() -> None:
    """A signed item and a blob put on one node are read back, verified, from every other node."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(10)
        assert all(len(n.engine.routing) >= 5 for n in nodes)
        key = await net.run(nodes[3].put("greeting", b"hello"))
        assert len(key) == 128
        for node in nodes:
            assert await net.run(node.get(key)) == b"hello"
        blob_key = await net.run(nodes[1].put_blob(b"immutable"))
        assert blob_key == id_to_hex(blob(b"immutable").key)
        assert await net.run(nodes[9].get(blob_key)) == b"immutable"

    on_network(scenario)


def test_get_unknown_key_fails_with_not_found() -> None:
    """Getting a key nobody holds fails with NotFoundError after the lookup ends."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(6)
        with pytest.raises(NotFoundError):
            await net.run(nodes[2].get(MISSING))

    on_network(scenario)


def test_join_without_answering_seed_fails(caplog: pytest.LogCaptureFixture) -> None:
    """Joining through seeds where nobody listens fails with JoinError, and the log says why."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        node = net.add_node()
        seeds = [("127.0.0.1", 1), ("127.0.0.1", 2)]
        with pytest.raises(JoinError, match="none of the 2 seed"):
            await net.run(node.join(seeds))

    on_network(scenario)
    assert logged(caplog, "did not answer") == 2


def test_join_tolerates_one_dead_seed() -> None:
    """One answering seed is enough to join."""

    async def scenario(net: MemoryNetwork) -> None:
        first = net.add_node()
        node = net.add_node()
        assert await net.run(node.join([("127.0.0.1", 9), address(first)])) == 1

    on_network(scenario)


def test_put_again_bumps_the_sequence_and_replaces() -> None:
    """A second put under the same name has a higher sequence and replaces the first value."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(10)
        key = await net.run(nodes[0].put("name", b"first"))
        assert await net.run(nodes[0].put("name", b"second")) == key
        published = nodes[0].engine.storage.published(int(key, 16))
        assert published is not None
        assert published.item.seq == 2
        assert await net.run(nodes[9].get(key)) == b"second"

    on_network(scenario)


def test_put_stores_on_the_k_closest() -> None:
    """A put stores the item on exactly the k nodes closest to its key."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(10, k=3)
        key = await net.run(nodes[0].put("n", b"v"))
        holders = {n.id for n in nodes if n.engine.storage.get(int(key, 16))}
        closest = sorted(nodes, key=lambda n: n.engine.id ^ int(key, 16))[:3]
        assert holders == {n.id for n in closest}

    on_network(scenario)


def test_compare_and_swap_put() -> None:
    """A put with cas stores only where the held sequence is cas; a stale cas fails the put."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(3, k=3)
        key = await net.run(nodes[0].put("counter", b"1"))
        assert await net.run(nodes[0].put("counter", b"2", cas=1)) == key
        assert await net.run(nodes[2].get(key)) == b"2"
        with pytest.raises(PutError, match="no node stored") as caught:
            await net.run(nodes[0].put("counter", b"3", cas=1))
        assert "this node" in str(caught.value)
        published = nodes[0].engine.storage.published(int(key, 16))
        assert published is not None
        assert published.item.value == b"2"
        assert [await net.run(node.get(key)) for node in nodes] == [b"2"] * 3

    on_network(scenario)


def test_publish_counts_the_nodes_that_stored() -> None:
    """publish() returns how many nodes accepted the item."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(10, k=3)
        assert await net.run(nodes[2].publish(blob(b"counted"))) == 3

    on_network(scenario)


def test_publish_refuses_an_invalid_item_at_once() -> None:
    """Publishing an item that does not verify raises VALUE_TOO_LARGE before any request."""

    async def scenario(net: MemoryNetwork) -> None:
        node = net.add_node(max_value=4)
        with pytest.raises(ProtocolError) as caught:
            await net.run(node.put_blob(b"too large"))
        assert caught.value.code == ErrorCode.VALUE_TOO_LARGE
        assert list(node.engine.storage.published_items()) == []

    on_network(scenario)


def test_put_fails_when_no_node_accepts(caplog: pytest.LogCaptureFixture) -> None:
    """When every target refuses the item (and the publisher is not among them), put fails."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        a = net.add_node(k=1)
        b = net.add_node(k=1, max_value=1)
        await net.run(a.join([address(b)]))
        with pytest.raises(PutError, match="no node stored"):
            await net.run(a.put_blob(_closer_to(b, a)))

    on_network(scenario)
    assert logged(caplog, "did not store")


def test_put_whose_store_is_never_answered_fails_without_codes() -> None:
    """A store that times out (not refused) fails the put with no refusal codes."""

    async def scenario(net: MemoryNetwork) -> None:
        a = net.add_node(k=1)
        b = net.add_node(k=1)
        await net.run(a.join([address(b)]))
        real = b.engine.request_received

        def no_stores(
            request: Message, host: str, port: int, now: float, link: object = None
        ) -> tuple[Message | None, list[Command]]:
            if isinstance(request, Store):
                return None, []
            return real(request, host, port, now, link)

        vars(b.engine)["request_received"] = no_stores
        with pytest.raises(PutError, match="no node stored") as caught:
            await net.run(a.put_blob(_closer_to(b, a)))
        assert caught.value.codes == frozenset()

    on_network(scenario)


def test_reply_from_another_id_fails_the_call() -> None:
    """A contact answering with another id than expected fails the call with ProtocolError."""

    async def scenario(net: MemoryNetwork) -> None:
        a, b = await net.create(2)
        impostor = Contact(b.engine.id ^ 1, "127.0.0.1", b.port)
        with pytest.raises(ProtocolError, match="another id"):
            await net.run(a.call(impostor, Ping))

    on_network(scenario)


def test_error_reply_fails_the_call_with_remote_error() -> None:
    """A peer's error reply becomes RemoteError with its code and message."""

    async def scenario(net: MemoryNetwork) -> None:
        a, b = await net.create(2)
        stale = Identity.from_private_bytes(b"s" * 32)
        await net.run(a.call(address(b), Store, item=stale.sign("n", b"v", 5), ttl=60.0))
        with pytest.raises(RemoteError) as caught:
            await net.run(a.call(address(b), Store, item=stale.sign("n", b"v", 4), ttl=60.0))
        assert caught.value.code == ErrorCode.STALE_SEQUENCE
        assert "older" in caught.value.message

    on_network(scenario)


# -- timeouts ------------------------------------------------------------------------------------


def test_call_to_a_silent_peer_times_out() -> None:
    """A request to a peer that never answers fails with TimeoutError after rpc_timeout."""

    async def scenario(net: MemoryNetwork) -> None:
        peer = net.add_node()
        net.silence(peer)
        node = net.add_node()
        started = node.now()
        with pytest.raises(TimeoutError, match=f"no reply within {node.rpc_timeout:g} s"):
            await net.run(node.call(address(peer), Ping))
        assert node.now() - started >= node.rpc_timeout
        assert idle(node)

    on_network(scenario)


def test_lookup_completes_through_others_when_a_third_are_silent() -> None:
    """With a third of the nodes silent, lookups give up waiting on them (their queries go
    slow) and complete through the others, well before the rpc timeout."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(12, k=4)
        key = await net.run(nodes[0].put("survives", b"yes"))
        holders = [n for n in nodes if n.engine.storage.get(int(key, 16))]
        silent = [n for n in nodes[1:] if n not in holders][::3]
        assert len(silent) >= 3
        for node in silent:
            net.silence(node)
        reader = next(n for n in nodes if n not in holders and n not in silent)
        assert await net.run(reader.get(key)) == b"yes"
        started = reader.now()
        machine = await net.run(reader.lookup(silent[0].engine.id))
        assert reader.now() - started < reader.rpc_timeout
        assert machine.closest()
        assert not {n.engine.id for n in silent} & {c.id for c in machine.closest()}

    on_network(scenario)


def test_lookup_does_not_wait_for_a_silent_peer_left_outside_the_closest() -> None:
    """Once the k closest have answered, a query still out to a farther, silent peer is
    cancelled: the lookup ends at once, not after the peer's timeout."""

    async def scenario(net: MemoryNetwork) -> None:
        asker = net.add_node(k=2, alpha=2, rpc_timeout=5.0)
        near, far, target = net.add_node(), net.add_node(), net.add_node()
        goal = target.engine.id
        if near.engine.id ^ goal > far.engine.id ^ goal:
            near, far = far, near
        await net.run(near.join([("127.0.0.1", target.port)]))
        net.silence(far)
        for node in (near, far):
            contact = Contact(node.engine.id, "127.0.0.1", node.port)
            asker.run(asker.engine.seen(contact, asker.now()))
        started = asker.now()
        machine = await net.run(asker.lookup(goal))
        assert asker.now() - started < 1.0
        assert [c.id for c in machine.closest()] == [goal, near.engine.id]
        assert ("sent", Contact(far.engine.id, "127.0.0.1", far.port)) in machine.trace

    on_network(scenario)


def test_lookup_with_every_peer_silent_ends_empty() -> None:
    """When no peer answers, the lookup ends with no contacts once every query and its retry
    have gone slow (no timeout waited for), and the silent peers count a failure each."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(5)
        for node in nodes[1:]:
            net.silence(node)
        started = nodes[0].now()
        machine = await net.run(nodes[0].lookup(12345))
        assert machine.closest() == []
        assert 2 * FIRST_SLOW <= nodes[0].now() - started < nodes[0].rpc_timeout
        entry = nodes[0].engine.routing.entry(nodes[4].engine.id)
        assert entry is not None
        assert entry.failures >= 1

    on_network(scenario)


# -- cancellation --------------------------------------------------------------------------------


def test_get_and_put_can_be_cancelled() -> None:
    """Cancelling a task awaiting get or put raises CancelledError and leaves nothing pending."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(6)
        for node in nodes[1:]:
            net.silence(node)
        get = asyncio.create_task(nodes[0].get(MISSING))
        put = asyncio.create_task(nodes[0].put("n", b"v"))
        await until(net, lambda: pending(nodes[0]) >= 6)
        get.cancel()
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await net.run(get)
        with pytest.raises(asyncio.CancelledError):
            await net.run(put)
        await until(net, lambda: idle(nodes[0]))

    on_network(scenario)


def test_every_operation_takes_a_deadline() -> None:
    """join, put, put_blob and get past their ``timeout`` raise OperationTimeout (a
    TimeoutError), saying how far they got, and leave nothing behind."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(6)
        fresh = net.add_node()
        for node in nodes[1:]:
            net.silence(node)
        started = nodes[0].now()
        attempts = [
            nodes[0].get(MISSING, timeout=0.05),
            nodes[0].put("n", b"v", timeout=0.05),
            nodes[0].put_blob(b"v", timeout=0.05),
            fresh.join([("127.0.0.1", nodes[1].port)], timeout=0.05),
        ]
        for attempt in attempts:
            with pytest.raises(OperationTimeout, match=r"did not finish within 0\.05 s"):
                await net.run(attempt)
        assert nodes[0].now() - started < 1.0
        assert idle(nodes[0])
        assert idle(fresh)

    on_network(scenario)


def test_lookup_can_be_cancelled() -> None:
    """Cancelling a Lookup cancels its queries and fails it with CancelledError."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(6)
        for node in nodes[1:]:
            net.silence(node)
        lookup = nodes[0].lookup(99)
        assert isinstance(lookup, Lookup)
        assert lookup.machine.target == 99
        await until(net, lambda: pending(nodes[0]) == 3)
        queries = list(lookup.op.requests.values())
        assert {q.op for q in queries} == {lookup.op}
        assert lookup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await net.run(lookup)
        await until(net, lambda: pending(nodes[0]) == 0 and not lookup.op.requests)
        assert lookup.op.ended
        assert all(query.ended for query in queries)
        assert idle(nodes[0])

    on_network(scenario)


def cancel_a_ping(node: Node, peer: Node) -> int:
    """Start a ping from ``node`` to ``peer`` on their connection (with nothing else in flight)
    and cancel its future at once; its request id. The core hears of the cancellation on the
    loop's next turn: until then, the request is still listed."""
    waiting = node.start_op(ops.Call(address(peer), Ping))
    (request,) = node.engine.pending()
    assert request.link is link_to(node, peer)
    waiting.cancel()
    return request.rid


def test_reply_to_a_request_cancelled_an_instant_ago_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply, whole or broken, to a request cancelled before the core has heard of it is
    ignored: the whole one quietly, the broken one as a bad message; a second reply to an
    answered request is logged as unsolicited."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        a, b = await net.create(2)
        mute(a)  # only the replies written here reach b
        protocol = connection(b, a)
        rid = cancel_a_ping(b, a)
        protocol.data_received(netstring(encode(a.engine.message(Pong, rid))))
        assert logged(caplog, "which nobody awaits") == 0
        await until(net, lambda: idle(b))
        rid = cancel_a_ping(b, a)
        protocol.data_received(message(type="pong", rid=rid, port="bad"))
        assert logged(caplog, "bad message") == 1
        await until(net, lambda: idle(b))
        answered = b.start_op(ops.Call(address(a), Ping))
        (request,) = b.engine.pending()
        pong = netstring(encode(a.engine.message(Pong, request.rid)))
        protocol.data_received(pong + pong)
        assert isinstance(await net.run(answered), Pong)
        assert logged(caplog, "which nobody awaits") == 1
        assert idle(b)
        unmute(a)
        assert isinstance(await net.run(b.call(address(a), Ping)), Pong)
        assert len(b.streams.links) == 1

    on_network(scenario)


def test_late_replies_to_abandoned_requests_are_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cancelled request's late reply is dropped without a log line (once: a second reply
    to it is unsolicited, and logged)."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        a, b = await net.create(2)
        protocol = connection(b, a)
        rid = cancel_a_ping(b, a)
        await asyncio.sleep(0)  # the core hears of the cancellation: it gives the request up
        assert idle(b)
        assert net.events  # while the ping is still on its way
        # The peer's real pong comes late: it is dropped without a word.
        await net.settle()
        assert isinstance(await net.run(b.call(address(a), Ping)), Pong)
        assert pending(b) == 0
        assert logged(caplog, "which nobody awaits") == 0
        protocol.data_received(netstring(encode(a.engine.message(Pong, rid))))
        assert logged(caplog, "which nobody awaits") == 1

    on_network(scenario)


# -- the shell's side of the routing table -------------------------------------------------------


def test_ping_before_evict_keeps_a_live_contact() -> None:
    """A full bucket pings its oldest contact; if it answers, the newcomer only waits."""

    async def scenario(net: MemoryNetwork) -> None:
        home = net.add_node(k=1)
        home.engine.routing.ping_after = 0.0  # its oldest contact is pinged however fresh
        old, new = [net.add_node(k=1, identity=i) for i in _far_pair(home.engine.id, 2)]
        await net.run(old.call(address(home), Ping))
        await net.run(new.call(address(home), Ping))
        bucket = home.engine.routing.bucket_for(old.engine.id)
        await until(net, lambda: bucket.pinging is None)
        assert old.engine.id in home.engine.routing
        assert new.engine.id not in home.engine.routing

    on_network(scenario)


def test_ping_before_evict_replaces_a_dead_contact(caplog: pytest.LogCaptureFixture) -> None:
    """If the oldest contact of a full bucket misses the ping, the newcomer replaces it."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        home = net.add_node(k=1)
        home.engine.routing.ping_after = 0.0  # its oldest contact is pinged however fresh
        old, new = [net.add_node(k=1, identity=i) for i in _far_pair(home.engine.id, 2)]
        await net.run(old.call(address(home), Ping))
        net.silence(old)
        await net.run(new.call(address(home), Ping))
        await until(net, lambda: new.engine.id in home.engine.routing)
        assert old.engine.id not in home.engine.routing

    on_network(scenario)
    assert logged(caplog, "ping to ") == 1


def test_handoff_copies_held_items_to_a_newcomer() -> None:
    """A holder copies the items a newcomer is now among the k closest to."""

    async def scenario(net: MemoryNetwork) -> None:
        holder = net.add_node(k=2)
        item = blob(b"held" * 10)
        holder.engine.store(item, 600.0, holder.now())
        newcomer = net.add_node(k=2)
        await net.run(newcomer.join([address(holder)]))
        await until(net, lambda: newcomer.engine.storage.count() == 1)
        assert newcomer.engine.get(item.key, newcomer.now()) == item

    on_network(scenario)


def test_handoff_that_fails_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A copy a newcomer refuses is logged and changes nothing else."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        holder = net.add_node(k=2)
        holder.engine.store(blob(b"held" * 10), 600.0, holder.now())
        newcomer = net.add_node(k=2, max_value=4)
        await net.run(newcomer.join([address(holder)]))
        await until(net, lambda: logged(caplog, "could not copy an item to the new contact") == 1)
        assert newcomer.engine.storage.count() == 0
        assert newcomer.engine.id in holder.engine.routing
        entry = holder.engine.routing.entry(newcomer.engine.id)
        assert entry is not None
        assert entry.failures == 0

    on_network(scenario)


def test_forged_value_is_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A peer answering find_value with a forged item is counted as failed; the lookup goes on."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(10)
        key = await net.run(nodes[0].put("real", b"real value"))
        liar = nodes[9]
        published = nodes[0].engine.storage.published(int(key, 16))
        assert published is not None
        real = published.item
        forged = type(real)(b"forged", real.public_key, real.name, real.seq + 1, real.signature)
        for node in nodes:
            node.engine.storage.delete(int(key, 16))
        original = liar.engine.get

        def lying_get(k: int, now: float) -> Item | None:
            return forged if k == int(key, 16) else original(k, now)

        vars(liar.engine)["get"] = lying_get
        with pytest.raises(NotFoundError):
            await net.run(nodes[1].get(key))
        entry = nodes[1].engine.routing.entry(liar.engine.id)
        assert entry is not None
        assert entry.failures >= 1

    on_network(scenario)
    assert logged(caplog, "sent an invalid value") == 1


def test_unexpected_reply_type_counts_as_a_failed_query() -> None:
    """A peer answering find_node with a value is treated as a failed query."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(3)
        odd = nodes[2]
        real = odd.engine.request_received

        def answer_with_a_value(
            request: Message, host: str, port: int, now: float, link: object = None
        ) -> tuple[Message | None, list[Command]]:
            reply, commands = real(request, host, port, now, link)
            if isinstance(request, FindNode):
                item = blob(b"not asked for")
                reply = odd.engine.message(Value, request.rid, item=item)
            return reply, commands

        vars(odd.engine)["request_received"] = answer_with_a_value
        machine = await net.run(nodes[0].lookup(odd.engine.id))
        assert odd.engine.id not in {c.id for c in machine.closest()}
        entry = nodes[0].engine.routing.entry(odd.engine.id)
        assert entry is not None
        assert entry.failures >= 1

    on_network(scenario)


# -- bad input on the wire -----------------------------------------------------------------------


@pytest.mark.parametrize(("data", "code", "rid"), ERROR_CASES)
def test_bad_messages_get_an_error_reply(
    data: bytes, code: ErrorCode, rid: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-framed bad message gets an error reply with its code; the connection stays usable."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        target = await Target.create(net)
        raw = target.send_raw(data)
        (error,) = raw.messages()
        assert isinstance(error, Error)
        assert (error.code, error.rid, error.sender) == (code, rid, target.node.engine.id)
        assert error.message
        raw.send(message(rid=8))
        net.flush()
        pong = raw.messages()[1]
        assert isinstance(pong, Pong)
        assert pong.rid == 8
        assert not raw.lost
        raw.close()
        await target.still_serving()

    on_network(scenario)
    assert logged(caplog, "bad message") + logged(caplog, "refused") == 1


def test_unsolicited_reply_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A well-formed reply to a request nobody sent draws no answer, only a log line."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        target = await Target.create(net)
        raw = target.send_raw(message(type="pong", rid=99) + message(rid=8))
        assert [(r.TYPE, r.rid) for r in raw.messages()] == [("pong", 8)]
        raw.close()
        await target.still_serving()

    on_network(scenario)
    assert logged(caplog, "which nobody awaits") == 1


def test_broken_reply_fails_the_waiting_request(caplog: pytest.LogCaptureFixture) -> None:
    """A malformed reply fails the request it answers, instead of drawing an error reply."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        target = await Target.create(net)
        node, peer = target.node, target.other
        mute(peer)
        call = asyncio.create_task(node.call(address(peer), Ping))
        await until(net, lambda: pending(node) == 1 and node.engine.pending()[0].link is not None)
        (request,) = node.engine.pending()
        assert request.link is link_to(node, peer)
        request.link.handle.data_received(message(type="pong", rid=request.rid, port="bad"))
        with pytest.raises(ProtocolError):
            await net.run(call)
        assert idle(node)
        unmute(peer)
        await target.still_serving()

    on_network(scenario)
    assert logged(caplog, "bad message") == 1


def test_broken_unsolicited_reply_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A malformed reply to no request of ours is logged and draws no error reply."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        target = await Target.create(net)
        raw = target.send_raw(message(type="pong", rid=4242, port="bad") + message(rid=8))
        assert [(r.TYPE, r.rid) for r in raw.messages()] == [("pong", 8)]
        raw.close()
        await target.still_serving()

    on_network(scenario)
    assert logged(caplog, "bad message") == 1


def test_garbage_then_valid_request_on_one_connection() -> None:
    """Bad messages on one connection are each answered, then a good one is served."""

    async def scenario(net: MemoryNetwork) -> None:
        target = await Target.create(net)
        raw = target.send_raw(b"".join(netstring(b"junk %d" % i) for i in range(9)) + message())
        assert [type(r) for r in raw.messages()] == [Error] * 9 + [Pong]
        assert not raw.lost
        raw.close()
        await target.still_serving()

    on_network(scenario)


def test_store_of_a_valid_item_over_a_raw_connection_is_kept() -> None:
    """A valid store from a peer that does not listen is acknowledged and kept."""

    async def scenario(net: MemoryNetwork) -> None:
        target = await Target.create(net)
        item = PUBLISHER.sign("fresh", b"new value", 1)
        raw = target.send_raw(store(item.to_json()))
        assert [r.TYPE for r in raw.messages()] == ["ok"]
        raw.close()
        assert target.node.engine.get(item.key, target.node.now()) == item

    on_network(scenario)


def test_a_peer_sending_too_much_garbage_is_disconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After max_bad_messages malformed messages, the connection is closed and logged."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        target = await Target.create(net)
        raw = target.send_raw(b"".join(netstring(b"junk %d" % i) for i in range(12)))
        assert [type(r) for r in raw.messages()] == [Error] * 10
        assert raw.lost
        await target.still_serving()

    on_network(scenario)
    assert logged(caplog, "closing connection from 127.0.0.1: 10 malformed messages") == 1


def test_a_peer_over_its_rate_is_refused_then_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A peer over its request rate gets one RATE_LIMITED error, then no answer at all."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        limits = Limits(peer_rate=0.001, peer_burst=2.0, cool_off=60.0)
        node = net.add_node(limits=limits)
        raw = net.open_raw(node)
        raw.send(b"".join(message(rid=rid) for rid in (1, 2, 3, 4)))
        net.flush()
        replies = raw.messages()
        assert [(r.TYPE, r.rid) for r in replies] == [("pong", 1), ("pong", 2), ("error", 3)]
        assert isinstance(replies[2], Error)
        assert replies[2].code == ErrorCode.RATE_LIMITED
        assert node.engine.rate_limiter.dropped == 1
        assert node.metrics.rpcs[("received", "ping", "refuse")] == 1
        assert node.metrics.rpcs[("received", "ping", "drop")] == 1
        raw.close()
        other = net.add_node()
        assert isinstance(await net.run(other.call(address(node), Ping)), Pong)

    on_network(scenario)
    assert logged(caplog, "is over its request rate") == 1


def test_too_many_connections_from_one_address_are_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connections from one (non-loopback) address beyond the limit are closed at once."""
    caplog.set_level(logging.INFO, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        node = net.add_node(limits=Limits(max_connections_per_ip=2))
        local = [net.open_raw(node) for _ in range(3)]
        assert len(node.streams.links) == 3
        assert not logged(caplog, "connections from it")
        remote = [net.open_raw(node, host="192.0.2.7") for _ in range(3)]
        remote.append(net.open_raw(node, host="192.0.2.8"))
        net.flush()
        assert [raw.lost for raw in remote] == [False, False, True, False]
        for raw in remote:
            raw.close()  # the one already closed stays closed
        net.flush()
        assert len(node.streams.links) == 3
        for raw in local:
            raw.close()

    on_network(scenario)
    assert logged(caplog, "closing connection from 192.0.2.7: over 2 connections from it") == 1


# -- housekeeping --------------------------------------------------------------------------------


class FailingOnce(MemoryStorage):
    """An in-memory store whose first ``expire`` fails, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        #: When ``expire`` was called.
        self.expire_calls: list[float] = []

    def expire(self, now: float) -> int:
        self.expire_calls.append(now)
        if len(self.expire_calls) == 1:
            raise RuntimeError("the disk is on fire")
        return super().expire(now)


#: Every housekeeping job every 50 ms, and every bucket stale at once.
EVERY_50_MS = Intervals(
    refresh=0.05, replicate=0.05, republish=0.05, expire=0.05, save=0.05, stale_bucket=0.0
)


def test_housekeeping_runs_every_job(caplog: pytest.LogCaptureFixture) -> None:
    """serve() runs every housekeeping job on its interval (contacts saved, expired items
    dropped, items stored again); a failing job is logged, not fatal; stop() ends it all."""
    caplog.set_level(logging.DEBUG, logger="txdht.aio")

    async def scenario(net: MemoryNetwork) -> None:
        flaky = FailingOnce()
        nodes = [net.add_node(k=3, storage=flaky), net.add_node(k=3), net.add_node(k=3)]
        for node in nodes[1:]:
            await net.run(node.join([address(nodes[0])]))
        short = blob(b"short-lived")
        nodes[0].engine.store(short, 0.2, nodes[0].now())
        await net.run(nodes[0].put("mine", b"kept"))
        seeds = [address(nodes[1]), address(nodes[0]), address(nodes[0])]
        services = [n.serve([seed], EVERY_50_MS) for n, seed in zip(nodes, seeds, strict=True)]

        def every_job_ran() -> bool:
            return all(logged(caplog, f"{job} done: ") >= 3 for job in JOBS)

        for condition in (
            lambda: all(s.joined for s in services),
            lambda: all(n.engine.storage.contacts() for n in nodes),
            lambda: not any(n.engine.storage.get(short.key) for n in nodes),
            lambda: len(flaky.expire_calls) >= 3,
            every_job_ran,
        ):
            await until(net, condition, step=0.01)
        net.advance(0.2)
        await net.settle()
        assert all(n.engine.storage.count() == 1 for n in nodes)
        await net.run(nodes[0].stop())
        assert services[0].ended
        assert left_behind(nodes[0]) == []

    on_network(scenario)
    failures = [r for r in caplog.records if "housekeeping job" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [
        "housekeeping job expire failed: RuntimeError('the disk is on fire')"
    ]
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None


def test_replicate_and_republish_return_counts() -> None:
    """replicate() and republish() return how many items were stored again; failures don't count."""

    async def scenario(net: MemoryNetwork) -> None:
        nodes = await net.create(3, k=4)
        node = net.add_node(k=4, max_value=20)
        await net.run(node.join([address(nodes[0])]))
        await net.run(node.put("mine", b"value"))
        assert await net.run(node.replicate()) == 1
        assert await net.run(node.republish()) == 1
        too_large = blob(b"x" * 100)
        node.engine.storage.put(StoredItem(too_large, node.now() + 60.0))
        assert await net.run(node.replicate()) == 1
        assert node.expire() == 0
        assert node.save_contacts() == 3
        assert await net.run(node.refresh(0.0)) >= 1

    on_network(scenario)
