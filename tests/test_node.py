"""The Twisted node on an in-memory network and a Clock: the Deferred API and its failure modes."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from txdht import JoinError, NotFoundError, PutError, RemoteError, testing
from txdht.core.errors import ErrorCode, OperationTimeout, ProtocolError
from txdht.core.framing import netstring
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import Identity, blob
from txdht.core.messages import FindNode, Message, Ping, Pong, Store, Value, encode
from txdht.core.storage import MemoryStorage
from txdht.core.timing import FIRST_SLOW
from txdht.node import Lookup, Node
from txdht.testing import MemoryNetwork


def test_join_fills_the_routing_tables() -> None:
    """After joining through one seed, every node of a 30-node network knows many others."""
    net = MemoryNetwork()
    nodes = net.create(30)
    sizes = [len(n.engine.routing) for n in nodes]
    assert min(sizes) >= 20
    assert all(n.engine.id not in n.engine.routing for n in nodes)


def test_a_restarted_node_copies_its_records_to_its_seed_at_once() -> None:
    """A node restarted with its data joins through a seed and copies it the records the seed
    is among the k closest to: every copy is answered, none waits for the 5 s timeout."""
    net = MemoryNetwork()
    seed, *_ = net.create(4)
    identity, storage = Identity.generate(), MemoryStorage()
    first = net.add_node(identity=identity, storage=storage)
    net.run(first.join([("127.0.0.1", seed.port)]))
    keys = [net.run(seed.put_blob(b"blob %d" % n)) for n in range(10)]
    net.run(first.stop())
    for key in keys:  # the seed forgets them: the restarted node's copies are all it gets
        seed.engine.storage.delete(int(key, 16))
    again = net.add_node(identity=identity, storage=storage)
    with capturedLogs() as events:
        net.run(again.join([("127.0.0.1", seed.port)]))
        net.advance(0.1)
    assert not [e for e in events if "no reply" in str(e.get("log_format"))]
    copied = [key for key in keys if seed.engine.storage.get(int(key, 16)) is not None]
    assert copied
    assert not again.engine.pending()


def test_put_and_get_from_every_node() -> None:
    """A signed item put on one node is read back, verified, from every other node."""
    net = MemoryNetwork()
    nodes = net.create(25)
    key = net.run(nodes[3].put("greeting", b"hello"))
    assert len(key) == 128
    for node in nodes:
        assert net.run(node.get(key)) == b"hello"


def test_put_stores_on_k_closest() -> None:
    """A put stores the item on exactly the k nodes closest to its key."""
    net = MemoryNetwork()
    nodes = net.create(30, k=5)
    key = net.run(nodes[0].put("n", b"v"))
    holders = {n.id for n in nodes if n.engine.storage.get(int(key, 16))}
    closest = sorted(nodes, key=lambda n: n.engine.id ^ int(key, 16))[:5]
    assert holders == {n.id for n in closest}


def test_publish_counts_the_nodes_that_stored() -> None:
    """publish() fires with how many nodes accepted the item."""
    net = MemoryNetwork()
    nodes = net.create(30, k=5)
    assert net.run(nodes[2].publish(blob(b"counted"))) == 5


def test_put_again_bumps_the_sequence_and_replaces() -> None:
    """A second put under the same name has a higher sequence and replaces the first value."""
    net = MemoryNetwork()
    nodes = net.create(10)
    key = net.run(nodes[0].put("name", b"first"))
    assert net.run(nodes[0].put("name", b"second")) == key
    published = nodes[0].engine.storage.published(int(key, 16))
    assert published is not None
    assert published.item.seq == 2
    assert net.run(nodes[9].get(key)) == b"second"


def test_blob_key_is_sha512_of_value() -> None:
    """put_blob fires with the blob's content key, and any node reads it back."""
    net = MemoryNetwork()
    nodes = net.create(8)
    key = net.run(nodes[1].put_blob(b"immutable"))
    assert key == id_to_hex(blob(b"immutable").key)
    assert net.run(nodes[7].get(key)) == b"immutable"


def test_get_unknown_key_fails_with_not_found() -> None:
    """Getting a key nobody holds fails with NotFoundError after the lookup ends."""
    net = MemoryNetwork()
    nodes = net.create(8)
    with pytest.raises(NotFoundError):
        net.run(nodes[2].get("ab" * 64))


def test_get_malformed_key_is_the_callers_error() -> None:
    """A key that is not 128 hex characters raises ValueError at once."""
    node = MemoryNetwork().add_node()
    with pytest.raises(ValueError, match="hex"):
        node.get("not a key")


def test_single_node_stores_locally() -> None:
    """A node alone in its network keeps its own items and reads them back."""
    net = MemoryNetwork()
    node = net.add_node()
    key = net.run(node.put("solo", b"alone"))
    assert net.run(node.get(key)) == b"alone"


def test_join_without_answering_seed_fails() -> None:
    """Joining through seeds that all refuse fails with JoinError, and the log says why."""
    net = MemoryNetwork()
    node = net.add_node()
    with capturedLogs() as events, pytest.raises(JoinError, match="none of the 2 seed"):
        net.run(node.join([("127.0.0.1", 1), ("127.0.0.1", 2)]))
    assert any("did not answer" in e["log_format"] for e in events)


def test_join_tolerates_one_dead_seed() -> None:
    """One answering seed is enough to join."""
    net = MemoryNetwork()
    first = net.add_node()
    node = net.add_node()
    assert net.run(node.join([("127.0.0.1", 9), ("127.0.0.1", first.port)])) == 1


def test_lookup_completes_through_others_when_peers_stop_answering() -> None:
    """With a third of the nodes silent, lookups time out on them and still complete."""
    net = MemoryNetwork()
    nodes = net.create(30)
    key = net.run(nodes[0].put("survives", b"yes"))
    holders = [n for n in nodes if n.engine.storage.get(int(key, 16))]
    for node in nodes[1:]:
        if node not in holders[:10] and node.port % 3 == 0:
            net.silence(node)
    reader = next(n for n in nodes if n not in holders and n.port % 3)
    assert net.run(reader.get(key)) == b"yes"
    machine = net.run(reader.lookup(nodes[5].engine.id))
    silent = {n.engine.id for n in nodes if n.port % 3 == 0 and n not in holders[:10]}
    assert not silent & {c.id for c in machine.closest()}


def test_lookup_with_every_peer_silent_ends_empty() -> None:
    """When no peer answers, the lookup ends with no contacts once every query and its retry
    have gone slow: it waits for no timeout."""
    net = MemoryNetwork()
    nodes = net.create(5)
    for node in nodes[1:]:
        net.silence(node)
    started = net.clock.seconds()
    machine = net.run(nodes[0].lookup(12345), step=0.1)
    assert machine.closest() == []
    assert 2 * FIRST_SLOW <= net.clock.seconds() - started < nodes[0].rpc_timeout


def test_failed_requests_count_against_contacts() -> None:
    """Timeouts are reported to the routing table as failures."""
    net = MemoryNetwork()
    nodes = net.create(4)
    net.silence(nodes[3])
    net.run(nodes[0].lookup(nodes[3].engine.id))
    entry = nodes[0].engine.routing.entry(nodes[3].engine.id)
    assert entry is not None
    assert entry.failures >= 1


def test_call_times_out_on_the_clock() -> None:
    """A request to a silent peer fails with TimeoutError after rpc_timeout seconds."""
    net = MemoryNetwork()
    a, b = net.create(2)
    net.silence(b)
    outcome: list[object] = []
    a.call(("127.0.0.1", b.port), Ping).addBoth(outcome.append)
    net.advance(a.rpc_timeout - 0.1)
    assert outcome == []
    net.advance(0.2)
    assert isinstance(outcome[0], Failure)
    assert outcome[0].check(defer.TimeoutError)


def test_call_to_nobody_fails_with_connection_refused() -> None:
    """A request to an address where nothing listens fails with ConnectionRefusedError."""
    net = MemoryNetwork()
    node = net.add_node()
    with pytest.raises(ConnectionRefusedError):
        net.run(node.call(("127.0.0.1", 1), Ping))


def test_error_reply_fails_the_call_with_remote_error() -> None:
    """A peer's error reply becomes RemoteError with its code and message."""
    net = MemoryNetwork()
    a, b = net.create(2)
    stale = Identity.from_private_bytes(b"s" * 32)
    net.run(a.call(("127.0.0.1", b.port), Store, item=stale.sign("n", b"v", 5), ttl=60.0))
    with pytest.raises(RemoteError) as caught:
        net.run(a.call(("127.0.0.1", b.port), Store, item=stale.sign("n", b"v", 4), ttl=60.0))
    assert caught.value.code == ErrorCode.STALE_SEQUENCE
    assert "older" in caught.value.message


def test_reply_from_another_id_fails_the_call() -> None:
    """A contact answering with another id than expected fails the call."""
    net = MemoryNetwork()
    a, b = net.create(2)
    impostor = Contact(b.engine.id ^ 1, "127.0.0.1", b.port)
    with pytest.raises(ProtocolError, match="another id"):
        net.run(a.call(impostor, Ping))


def test_many_requests_share_one_connection() -> None:
    """Concurrent requests to one peer share one connection, and each gets its own reply."""
    net = MemoryNetwork()
    a, b = net.create(2)
    calls = [a.call(("127.0.0.1", b.port), Ping) for _ in range(5)]
    replies = [net.run(d) for d in calls]
    assert all(isinstance(r, Pong) for r in replies)
    assert len({r.rid for r in replies}) == 5
    assert len(a.streams.links) == 1


def test_cancelling_one_waiter_keeps_the_others() -> None:
    """Cancelling one request waiting for a connection leaves the others running."""
    net = MemoryNetwork()
    a, b = net.create(2)
    a.stop()
    net.flush()
    node = net.add_node()
    pending: list[Deferred[object]] = []

    def connect(address: tuple[str, int], factory: object) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        pending.append(d)
        return d

    node._connect = connect  # type: ignore[assignment]
    first = node.call(("127.0.0.1", b.port), Ping)
    second = node.call(("127.0.0.1", b.port), Ping)
    assert len(pending) == 1
    first.cancel()
    pending[0].errback(ConnectionRefusedError())
    with pytest.raises(CancelledError):
        net.run(first)
    with pytest.raises(ConnectionRefusedError):
        net.run(second)


def test_incoming_connection_is_reused_for_requests_back() -> None:
    """A node answering a peer reuses the peer's connection to send it requests."""
    net = MemoryNetwork()
    a, b = net.create(2)
    assert b.streams.link_to(("127.0.0.1", a.port)) is not None
    net.run(b.call(("127.0.0.1", a.port), Ping))
    assert len(b.streams.links) == 1


def test_lost_connection_fails_pending_requests_and_reconnects() -> None:
    """A connection closed under a pending request fails it; the next request reconnects."""
    net = MemoryNetwork()
    a, b = net.create(2)
    net.silence(b)
    d = a.call(("127.0.0.1", b.port), Ping)
    net.flush()
    for link in list(a.streams.links):
        link.handle.transport.loseConnection()
    net.flush()
    assert d.called
    with pytest.raises(Exception, match="closed cleanly"):
        net.run(d)
    net._silenced.clear()
    assert isinstance(net.run(a.call(("127.0.0.1", b.port), Ping)), Pong)


def test_lookup_can_be_cancelled() -> None:
    """Cancelling a Lookup cancels its queries and fails it with CancelledError."""
    net = MemoryNetwork()
    nodes = net.create(6)
    for node in nodes[1:]:
        net.silence(node)
    lookup = nodes[0].lookup(99)
    assert isinstance(lookup, Lookup)
    net.flush()
    lookup.cancel()
    with pytest.raises(CancelledError):
        net.run(lookup)
    assert not nodes[0].engine.pending()
    assert net.clock.getDelayedCalls() == []


def test_get_and_put_can_be_cancelled() -> None:
    """Cancelling a get or a put in flight fails it with CancelledError and leaves no timers."""
    net = MemoryNetwork()
    nodes = net.create(6)
    for node in nodes[1:]:
        net.silence(node)
    get = nodes[0].get("cd" * 64)
    put = nodes[0].put("n", b"v")
    net.flush()
    get.cancel()
    put.cancel()
    with pytest.raises(CancelledError):
        net.run(get)
    with pytest.raises(CancelledError):
        net.run(put)
    assert net.clock.getDelayedCalls() == []


def test_every_operation_takes_a_deadline() -> None:
    """join, put, put_blob and get past their ``timeout`` fail with OperationTimeout (a
    TimeoutError), saying how far they got, and leave nothing behind."""
    net = MemoryNetwork()
    nodes = net.create(6)
    fresh = net.add_node()
    for node in nodes[1:]:
        net.silence(node)
    started = net.clock.seconds()
    attempts: list[Deferred[Any]] = [
        nodes[0].get("cd" * 64, timeout=0.05),
        nodes[0].put("n", b"v", timeout=0.05),
        nodes[0].put_blob(b"v", timeout=0.05),
        fresh.join([("127.0.0.1", nodes[1].port)], timeout=0.05),
    ]
    for d in attempts:
        with pytest.raises(OperationTimeout, match=r"did not finish within 0\.05 s"):
            net.run(d)
    assert net.clock.seconds() - started < 1.0
    for node in (fresh, nodes[0]):
        assert not node.engine.running()
        assert not node.engine.pending()


def test_join_refresh_and_a_put_storing_can_be_cancelled() -> None:
    """Cancelling a join (its seed pings in flight), a refresh (its lookups in flight) or a
    put whose stores are in flight fails it with CancelledError at once: the waits on many
    requests do not take the cancelled requests for failures and go on."""
    net = MemoryNetwork()
    nodes = net.create(6)
    seed, fresh = nodes[1], net.add_node()
    net.silence(seed)
    join = fresh.join([("127.0.0.1", seed.port)])
    refresh = nodes[0].refresh(0.0)
    net.flush()
    for node in nodes[2:]:
        net.silence(node)
    put = nodes[0].put("n", b"v")
    net.flush()
    operations: list[Deferred[Any]] = [join, refresh, put]
    for d in operations:
        d.cancel()
        with pytest.raises(CancelledError):
            net.run(d, max_seconds=0.0)
    for node in (fresh, nodes[0]):
        assert not node.engine.running()
        assert not node.engine.pending()
    assert net.clock.getDelayedCalls() == []


def test_forged_value_is_skipped_and_reported() -> None:
    """A peer answering find_value with a forged item is counted as failed; the lookup goes on."""
    net = MemoryNetwork()
    nodes = net.create(10)
    key = net.run(nodes[0].put("real", b"real value"))
    liar = nodes[9]
    published = nodes[0].engine.storage.published(int(key, 16))
    assert published is not None
    real = published.item
    forged = type(real)(b"forged", real.public_key, real.name, real.seq + 1, real.signature)
    for node in nodes:
        if node is not liar:
            node.engine.storage.delete(int(key, 16))
    liar.engine.storage.delete(int(key, 16))
    original = liar.engine.get

    def lying_get(k: int, now: float) -> object:
        return forged if k == int(key, 16) else original(k, now)

    liar.engine.get = lying_get  # type: ignore[assignment,method-assign]
    with capturedLogs() as events, pytest.raises(NotFoundError):
        net.run(nodes[1].get(key))
    assert any("invalid value" in e["log_format"] for e in events)
    assert nodes[1].engine.routing.entry(liar.engine.id).failures >= 1  # type: ignore[union-attr]


def test_unexpected_reply_type_counts_as_a_failed_query() -> None:
    """A peer answering find_node with a value is treated as a failed query."""
    net = MemoryNetwork()
    nodes = net.create(3)
    odd = nodes[2]
    real = odd.engine.request_received

    def answer(request: Message, host: str, port: int, now: float, link: object = None) -> Any:
        reply, commands = real(request, host, port, now, link)
        if isinstance(request, FindNode):
            reply = odd.engine.message(Value, request.rid, item=blob(b"not asked for"))
        return reply, commands

    odd.engine.request_received = answer  # type: ignore[method-assign]
    machine = net.run(nodes[0].lookup(odd.engine.id))
    assert odd.engine.id not in {c.id for c in machine.closest()}


def test_put_fails_when_no_node_accepts() -> None:
    """When every target refuses the item (and the publisher is not among them), put fails."""
    net = MemoryNetwork()
    a = net.add_node(k=1)
    b = net.add_node(k=1, max_value=1)
    net.run(a.join([("127.0.0.1", b.port)]))
    value = next(
        v
        for v in (str(i).encode() * 2 for i in range(1000))
        if blob(v).key ^ b.engine.id < blob(v).key ^ a.engine.id
    )
    with capturedLogs() as events, pytest.raises(PutError, match="no node stored"):
        net.run(a.put_blob(value))
    assert any("did not store" in e["log_format"] for e in events)


def test_put_whose_store_is_never_answered_fails_without_codes() -> None:
    """A store that times out (not refused) fails the put with no refusal codes."""
    net = MemoryNetwork()
    a = net.add_node(k=1)
    b = net.add_node(k=1)
    net.run(a.join([("127.0.0.1", b.port)]))
    value = next(
        v
        for v in (str(i).encode() * 2 for i in range(1000))
        if blob(v).key ^ b.engine.id < blob(v).key ^ a.engine.id
    )
    real = b.engine.request_received

    def no_stores(request: Message, host: str, port: int, now: float, link: object = None) -> Any:
        reply, commands = real(request, host, port, now, link)
        return (None if isinstance(request, Store) else reply), commands

    b.engine.request_received = no_stores  # type: ignore[method-assign]
    with pytest.raises(PutError, match="no node stored") as caught:
        net.run(a.put_blob(value))
    assert caught.value.codes == frozenset()


def test_publish_refuses_an_invalid_item_at_once() -> None:
    """Publishing an item that does not verify is the caller's error, raised at once."""
    node = MemoryNetwork().add_node(max_value=4)
    with pytest.raises(ProtocolError) as caught:
        node.put_blob(b"too large")
    assert caught.value.code == ErrorCode.VALUE_TOO_LARGE


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


def test_ping_before_evict_keeps_a_live_contact() -> None:
    """A full bucket pings its oldest contact (quiet for ping_after); if it answers, the
    newcomer only waits."""
    net = MemoryNetwork()
    home = net.add_node(k=1)
    home.engine.routing.ping_after = 0.0
    old, new = (net.add_node(k=1, identity=i) for i in _far_pair(home.engine.id, 2))
    net.run(old.call(("127.0.0.1", home.port), Ping))
    net.run(new.call(("127.0.0.1", home.port), Ping))
    net.flush()
    assert old.engine.id in home.engine.routing
    assert new.engine.id not in home.engine.routing
    assert home.engine.routing.bucket_for(old.engine.id).pinging is None


def test_ping_before_evict_replaces_a_dead_contact() -> None:
    """If the oldest contact of a full bucket misses the ping, the newcomer replaces it."""
    net = MemoryNetwork()
    home = net.add_node(k=1)
    home.engine.routing.ping_after = 0.0
    old, new = (net.add_node(k=1, identity=i) for i in _far_pair(home.engine.id, 2))
    net.run(old.call(("127.0.0.1", home.port), Ping))
    net.silence(old)
    net.run(new.call(("127.0.0.1", home.port), Ping))
    net.advance(home.rpc_timeout + 1)
    assert old.engine.id not in home.engine.routing
    assert new.engine.id in home.engine.routing


def test_stop_closes_connections_and_cancels_work() -> None:
    """stop() cancels running operations, closes every connection and refuses new ones."""
    net = MemoryNetwork()
    nodes = net.create(5)
    net.silence(nodes[4])
    running = nodes[0].lookup(nodes[4].engine.id)
    net.flush()
    stopped = nodes[0].stop()
    net.flush()
    assert stopped.called
    assert running.called
    assert nodes[0].streams.links == set()
    assert nodes[0].streams.link_to(("127.0.0.1", nodes[1].port)) is None
    late = net.open_raw(nodes[0])
    net.flush()
    assert late.lost
    with pytest.raises(CancelledError):
        net.run(running)


def test_kill_takes_a_node_off_the_network() -> None:
    """A killed node refuses connections; the others still serve its neighbours' items."""
    net = MemoryNetwork()
    nodes = net.create(12)
    key = net.run(nodes[0].put("n", b"v"))
    net.kill(nodes[0])
    with pytest.raises(ConnectionRefusedError):
        net.run(nodes[1].call(("127.0.0.1", nodes[0].port), Ping))
    assert net.run(nodes[5].get(key)) == b"v"


def test_run_gives_up_after_max_seconds() -> None:
    """MemoryNetwork.run raises TimeoutError for a Deferred that never fires."""
    net = MemoryNetwork()
    with pytest.raises(TimeoutError, match="did not fire"):
        net.run(Deferred(), max_seconds=1.0)


def test_run_gives_up_after_a_bounded_number_of_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """MemoryNetwork.run moves the clock a bounded number of times, whatever max_seconds."""
    monkeypatch.setattr(testing, "MAX_STEPS_PER_RUN", 4)
    net = MemoryNetwork()
    with pytest.raises(RuntimeError, match="within 4 steps"):
        net.run(Deferred(), max_seconds=1e9)
    assert net.clock.seconds() == 2.0


def test_run_stops_at_every_timer_so_messages_go_out_between_them() -> None:
    """MemoryNetwork.run moves the clock to each timer in turn, not in fixed steps, flushing
    at each: what one timer sends is delivered before the next timer fires."""
    net = MemoryNetwork()
    seen: list[float] = []
    for when in (0.1, 0.2):
        net.clock.callLater(when, lambda: seen.append(net.clock.seconds()))
    d: Deferred[None] = Deferred()
    net.clock.callLater(0.3, d.callback, None)
    net.run(d, step=10.0)
    assert seen == pytest.approx([0.1, 0.2])
    assert net.clock.seconds() == pytest.approx(0.3)


PING = netstring(encode(Ping(rid=1, sender=1, port=0)))


def test_flush_is_bounded() -> None:
    """A network that never goes quiet makes flush raise instead of looping forever."""
    net = MemoryNetwork(max_events=1000)
    a, b = net.create(2)
    raw = net.open_raw(a)
    original = raw.dataReceived

    def echo(data: bytes) -> None:
        original(data)
        raw.send(PING)

    raw.dataReceived = echo  # type: ignore[method-assign]
    raw.send(PING)
    with pytest.raises(RuntimeError, match="did not settle"):
        net.flush()
    del b


def test_node_defaults_to_the_global_reactor() -> None:
    """Without a reactor argument, Node takes the global one lazily, at construction."""
    from twisted.internet import reactor

    node = Node()
    assert node.reactor is reactor
    assert node.port == 0
    assert len(node.id) == 128


def test_handoff_that_fails_is_only_logged() -> None:
    """A copy a newcomer refuses is logged and changes nothing else."""
    net = MemoryNetwork()
    holder = net.add_node(k=2)
    item = blob(b"held" * 10)
    holder.engine.store(item, 600.0, 0.0)
    newcomer = net.add_node(k=2, max_value=4)
    with capturedLogs() as events:
        net.run(newcomer.join([("127.0.0.1", holder.port)]))
        net.flush()
    assert any("could not copy an item" in e["log_format"] for e in events)
    assert newcomer.engine.storage.count() == 0


def test_lookup_observers_see_each_finished_lookup() -> None:
    """Observers get the finished state machine and its duration."""
    net = MemoryNetwork()
    nodes = net.create(5)
    seen: list[tuple[int, float]] = []
    nodes[0].lookup_observers.append(
        lambda machine, seconds: seen.append((machine.target, seconds))
    )
    net.run(nodes[0].lookup(123))
    assert seen == [(123, 0.0)]


def test_a_retry_goes_on_a_fresh_connection_when_the_old_one_heard_nothing() -> None:
    """A lookup's retry to a peer whose connection has brought nothing since the first try is
    sent on a new connection (the old one is closed: it may be dead without knowing it)."""
    net = MemoryNetwork()
    a, b = net.create(2)
    connects: list[tuple[str, int]] = []
    connect = a._connect

    def counted(address: tuple[str, int], factory: Any) -> Deferred[Any]:
        connects.append(address)
        return connect(address, factory)

    a._connect = counted
    net.silence(b)
    with capturedLogs() as events:
        machine = net.run(a.lookup(b.engine.id), step=0.1)
    assert machine.closest() == []
    assert connects == [("127.0.0.1", b.port)] * 2  # one per retry
    reconnects = [e for e in events if "reconnecting" in e["log_format"]]
    assert len(reconnects) == 2


def test_housekeeping_can_be_run_by_hand() -> None:
    """replicate, republish, expire and save_contacts, called by hand, do what the service's
    jobs do: copies on the k closest, this node's items again, expired items dropped, the
    table's contacts saved; a Lookup shows its machine while it runs."""
    net = MemoryNetwork()
    nodes = net.create(8, k=3)
    owner = nodes[2]
    key = net.run(owner.put("by hand", b"v", ttl=100.0))
    assert net.run(owner.replicate()) >= 1
    assert net.run(owner.republish()) == 1
    assert owner.save_contacts() == len(owner.engine.routing) > 0
    assert [c.id for c in owner.engine.storage.contacts()] == [
        c.id for c in owner.engine.routing.contacts()
    ]
    net.advance(101.0)
    dropped = sum(node.expire() for node in nodes)
    assert dropped >= 3
    assert all(n.engine.get(int(key, 16), net.clock.seconds()) is None for n in nodes)
    lookup = owner.lookup(5)
    assert lookup.machine.target == 5
    net.run(lookup)


def test_nodes_looking_up_over_disjoint_paths_put_and_get() -> None:
    """With paths=3 every lookup goes over three disjoint paths: a put still lands on the k
    closest, every node reads it back, and a lookup asks about three times as many peers."""
    net = MemoryNetwork()
    nodes = net.create(30, k=5, paths=3)
    assert all(n.engine.paths == 3 for n in nodes)
    key = net.run(nodes[0].put("n", b"over three paths"))
    holders = {n.id for n in nodes if n.engine.storage.get(int(key, 16))}
    closest = sorted(nodes, key=lambda n: n.engine.id ^ int(key, 16))[:5]
    assert holders == {n.id for n in closest}
    for node in nodes:
        assert net.run(node.get(key)) == b"over three paths"
    found: list[Any] = []
    nodes[7].lookup_observers.append(lambda machine, _: found.append(machine))
    net.run(nodes[7].lookup(int(key, 16)))
    (machine,) = found
    assert len(machine.paths) == 3
    assert machine.queries >= 3 * 5
