"""Listening to a key (txdht.core.listen) through real nodes on an in-memory network and a Clock:
the holder's registry and its caps, pushes and their resends, the listener's machine, and the
network name that keeps networks apart."""

from __future__ import annotations

import math
from typing import Any

import pytest

from txdht.core import listen as listening
from txdht.core.commands import Notify
from txdht.core.errors import ErrorCode, RemoteError
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import MAX_SEQ, Identity, Item, blob, mutable_key
from txdht.core.limits import Limits
from txdht.core.listen import Listen, Listeners, Notice
from txdht.core.messages import Expired, FindValue, Listening, Message, Ok, Update
from txdht.core.messages import Listen as ListenRequest
from txdht.node import Node
from txdht.testing import UNLIMITED, MemoryNetwork

PUBLISHER = Identity.from_private_bytes(b"p" * 32)


def key_of(name: str, identity: Identity = PUBLISHER) -> int:
    """The key of ``identity``'s item ``name``."""
    return mutable_key(identity.public_bytes, name)


def version(seq: int, value: bytes | None = None, name: str = "news") -> Item:
    """Version ``seq`` of the publisher's item ``name``."""
    return PUBLISHER.sign(name, value if value is not None else b"v%d" % seq, seq)


def contact(node: Node) -> Contact:
    """Where ``node`` is."""
    return Contact(node.engine.id, "127.0.0.1", node.port)


def network(count: int = 8, k: int = 3, **options: Any) -> tuple[MemoryNetwork, list[Node]]:
    """``count`` joined nodes with a small k (so that some nodes are not holders)."""
    net = MemoryNetwork()
    return net, net.create(count, k=k, **options)


def publish(net: MemoryNetwork, node: Node, item: Item, ttl: float = 3600.0) -> int:
    """Store ``item`` on the k closest nodes through ``node``; how many took it."""
    stored = net.run(node.publish(item, ttl))
    net.flush()
    return stored


def listening_elsewhere(
    ttl: float = 3600.0,
) -> tuple[MemoryNetwork, list[Node], int, Node, list[Notice], Any]:
    """A network holding version 1 of "news" (for ``ttl`` seconds), and a node that holds no
    copy listening to it (its listen not run yet): the network, its nodes, the key, the
    listener, the notices it got and its subscription."""
    net, nodes = network()
    key = key_of("news")
    publish(net, nodes[5], version(1), ttl)
    listener = next(n for n in nodes if n not in holders_of(nodes, key))
    got: list[Notice] = []
    return net, nodes, key, listener, got, listener.listen(id_to_hex(key), got.append)


def wait(net: MemoryNetwork, seconds: float) -> None:
    """Move the clock ``seconds`` on, one second at a time (timers then fire on time)."""
    for _ in range(int(seconds)):
        net.advance(1)


def holders_of(nodes: list[Node], key: int) -> list[Node]:
    """The nodes holding a listen on ``key``."""
    return [n for n in nodes if key in n.engine.listeners]


def test_a_listener_is_told_each_new_version_once_and_in_order() -> None:
    """Every version stored after the listen reaches the callback once, in order, though each
    of the k holders pushes it."""
    net, nodes = network()
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    assert len(sub.holders) == 3
    assert sub.active
    assert len(holders_of(nodes, key_of("news"))) == 3
    for seq in (1, 2, 3):
        publish(net, nodes[5], version(seq))
    assert [(n.seq, n.value) for n in got] == [(1, b"v1"), (2, b"v2"), (3, b"v3")]
    assert not any(n.expired for n in got)
    assert sub.op.delivered == 3
    assert sub.key == id_to_hex(key_of("news"))


def test_an_older_version_pushed_later_is_not_delivered() -> None:
    """A version older than the last delivered (a late replica's push) is acknowledged and
    never delivered; a push that does not verify is refused."""
    net, nodes = network()
    key = key_of("news")
    got: list[Notice] = []
    nodes[1].listen(id_to_hex(key), got.append)
    net.advance(1)
    publish(net, nodes[5], version(5))
    late = net.run(nodes[6].call(contact(nodes[1]), Update, key=key, item=version(3)))
    assert isinstance(late, Ok)
    with pytest.raises(RemoteError) as refused:
        net.run(nodes[6].call(contact(nodes[1]), Update, key=key, item=version(9, name="other")))
    assert refused.value.code == ErrorCode.BAD_SIGNATURE or refused.value.code > 0
    assert [n.seq for n in got] == [5]


def test_the_current_version_is_delivered_when_listening_starts() -> None:
    """A listen on a key that already has a version delivers it at once, once, from the
    holders' answers."""
    net, nodes = network()
    publish(net, nodes[5], version(4))
    listener = next(n for n in nodes if n.engine.storage.get(key_of("news")) is None)
    got: list[Notice] = []
    listener.listen(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    assert [n.seq for n in got] == [4]


def test_a_holder_listening_to_its_own_copy_hears_of_a_store_on_itself() -> None:
    """A node among the k closest that listens is told of the version stored on itself."""
    net, nodes = network()
    key = key_of("news")
    publish(net, nodes[5], version(1))
    holder = next(n for n in nodes if n.engine.storage.get(key) is not None)
    got: list[Notice] = []
    holder.listen(id_to_hex(key), got.append)
    net.advance(1)
    publish(net, nodes[5], version(2))
    assert [n.seq for n in got] == [1, 2]


def test_cancelling_tells_the_holders_and_stops_the_callbacks() -> None:
    """After cancel() the holders hold no listen and no further version is delivered."""
    net, nodes = network()
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    sub.cancel()
    net.advance(1)
    assert holders_of(nodes, key_of("news")) == []
    assert not sub.active
    assert net.run(sub.done) is None
    publish(net, nodes[5], version(1))
    assert got == []


def test_an_expired_item_is_told_once_after_a_check() -> None:
    """When the item expires on its holders, the listener is told once (after a lookup finds no
    copy), and a version stored afterwards is delivered again."""
    net, nodes = network()
    got: list[Notice] = []
    nodes[1].listen(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    publish(net, nodes[5], version(1), ttl=120.0)
    net.advance(121)
    for node in nodes:
        node.expire()
    net.advance(5)
    assert [(n.seq, n.expired) for n in got] == [(1, False), (1, True)]
    assert got[1].value is None
    assert got[1].to_json() == {"key": id_to_hex(key_of("news")), "seq": 1, "expired": True}
    publish(net, nodes[5], version(1))  # the same version back: delivered again
    assert [(n.seq, n.expired) for n in got][-1] == (1, False)


def test_an_expiry_notice_from_one_holder_is_checked_against_the_others() -> None:
    """An expired notice is not believed while another node still holds the version, and a
    notice about an older version is ignored."""
    net, nodes = network()
    key = key_of("news")
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key), got.append)
    net.advance(1)
    publish(net, nodes[5], version(2))
    for seq in (1, 2):
        net.run(nodes[6].call(contact(nodes[1]), Expired, key=key, seq=seq))
    net.advance(5)
    assert [(n.seq, n.expired) for n in got] == [(2, False)]
    assert sub.op.checking is None


def test_a_notice_as_json() -> None:
    """A new version's notice carries the key, the sequence number and the value in base64."""
    notice = Notice(key_of("news"), 3, version(3, b"hi"))
    assert notice.to_json() == {"key": id_to_hex(key_of("news")), "seq": 3, "value": "aGk="}
    assert notice.value == b"hi"
    assert not notice.expired


def test_a_listen_asks_for_sensible_intervals() -> None:
    """A lease out of bounds, or a refresh or poll interval of 0, is the caller's error."""
    for bad in ({"lease": 0.0}, {"lease": 1e9}, {"refresh": 0.0}, {"poll": -1.0}):
        with pytest.raises(ValueError, match="a lease is above 0"):
            Listen(1, **bad)


# -- the holder's registry -------------------------------------------------------------------


def listen_to(net: MemoryNetwork, node: Node, to: Node, key: int, lease: float) -> Message:
    """Send one listen request from ``node`` to ``to``; its reply (or raise its error)."""
    return net.run(node.call(contact(to), ListenRequest, key=key, lease=lease))


def test_the_lease_granted_is_clamped_to_the_holders_bounds() -> None:
    """A holder grants at least its min_lease and at most its max_lease."""
    net = MemoryNetwork()
    limits = Limits(**{**vars(UNLIMITED), "min_lease": 60.0, "max_lease": 120.0})
    holder, asker = net.add_node(limits=limits), net.add_node()
    short = listen_to(net, asker, holder, 1, 5.0)
    assert isinstance(short, Listening)
    assert short.lease == 60.0
    assert short.item is None
    long = listen_to(net, asker, holder, 1, 5000.0)
    assert isinstance(long, Listening)
    assert long.lease == 120.0
    assert len(holder.engine.listeners) == 1  # a renewal, not a second listen


@pytest.mark.parametrize(
    ("limit", "code"),
    [
        ("max_listens", ErrorCode.LISTENS_FULL),
        ("max_listens_per_peer", ErrorCode.PEER_LISTENS_FULL),
        ("max_listens_per_key", ErrorCode.KEY_LISTENS_FULL),
    ],
)
def test_each_cap_is_refused_with_its_own_code(limit: str, code: ErrorCode) -> None:
    """Over a cap, a new listen is refused with that cap's error code; renewals still pass."""
    net = MemoryNetwork()
    base = {
        **vars(UNLIMITED),
        "max_listens": 100,
        "max_listens_per_peer": 100,
        "max_listens_per_key": 100,
    }
    holder = net.add_node(limits=Limits(**{**base, limit: 2}))
    askers = [net.add_node() for _ in range(3)]
    if limit == "max_listens_per_key":  # three peers, one key
        plan = [(askers[0], 1), (askers[1], 1), (askers[2], 1)]
    else:  # one peer, three keys
        plan = [(askers[0], 1), (askers[0], 2), (askers[0], 3)]
    for asker, key in plan[:2]:
        listen_to(net, asker, holder, key, 60.0)
    asker, key = plan[2]
    with pytest.raises(RemoteError) as refused:
        listen_to(net, asker, holder, key, 60.0)
    assert refused.value.code == code
    listen_to(net, askers[0], holder, 1, 60.0)  # a renewal of a held listen is never refused
    assert len(holder.engine.listeners) == 2


def test_a_lease_that_ran_out_frees_its_place() -> None:
    """A listen whose lease ran out no longer counts against the cap, and is not pushed to."""
    net = MemoryNetwork()
    limits = Limits(**{**vars(UNLIMITED), "max_listens": 1, "min_lease": 1.0})
    holder, asker = net.add_node(limits=limits), net.add_node()
    listen_to(net, asker, holder, 1, 10.0)
    net.advance(11)
    assert holder.engine.listeners.of(1, net.clock.seconds()) == []
    listen_to(net, asker, holder, 1, 10.0)
    listen_to(net, asker, holder, 1, 10.0)
    net.advance(11)
    listen_to(net, asker, holder, 2, 10.0)  # the first ran out: purged to make room
    assert holder.engine.listeners.keys() == [2]


def test_a_lease_of_zero_cancels() -> None:
    """A listen with lease 0 drops the held listen (and is answered with lease 0)."""
    net = MemoryNetwork()
    holder, asker = net.add_node(), net.add_node()
    listen_to(net, asker, holder, 1, 60.0)
    reply = listen_to(net, asker, holder, 1, 0.0)
    assert isinstance(reply, Listening)
    assert reply.lease == 0
    assert len(holder.engine.listeners) == 0
    listen_to(net, asker, holder, 1, 0.0)  # nothing to cancel: the same answer


def test_a_listener_that_has_the_version_is_not_sent_it_again() -> None:
    """A listen naming the newest version it has gets no item back unless the holder's is
    newer."""
    net = MemoryNetwork()
    holder, asker = net.add_node(), net.add_node()
    holder.engine.store(version(2), 60.0, 0.0)
    has = net.run(asker.call(contact(holder), ListenRequest, key=key_of("news"), lease=60, seq=2))
    assert isinstance(has, Listening)
    assert has.item is None
    older = net.run(asker.call(contact(holder), ListenRequest, key=key_of("news"), lease=60, seq=1))
    assert isinstance(older, Listening)
    assert older.item == version(2)


def test_a_listen_held_on_a_closed_connection_goes() -> None:
    """The listens that came on a connection are dropped when it closes."""
    net = MemoryNetwork()
    holder, asker = net.add_node(), net.add_node()
    listen_to(net, asker, holder, 1, 60.0)
    (link,) = holder.streams.links
    link.handle.transport.loseConnection()
    net.flush()
    assert len(holder.engine.listeners) == 0


def test_an_update_to_a_node_not_listening_is_refused_and_the_listen_dropped() -> None:
    """A node not listening answers a push with NOT_LISTENING, and the holder drops it."""
    net = MemoryNetwork()
    holder, asker = net.add_node(), net.add_node()
    listen_to(net, asker, holder, key_of("news"), 60.0)  # a bare request: no Listen runs
    holder.engine.store(version(1), 60.0, net.clock.seconds())
    holder.run(holder.engine.settle())
    net.flush()
    assert len(holder.engine.listeners) == 0
    with pytest.raises(RemoteError) as refused:
        net.run(holder.call(contact(asker), Expired, key=key_of("news"), seq=1))
    assert refused.value.code == ErrorCode.NOT_LISTENING


def test_a_silent_listener_is_pushed_a_bounded_number_of_times_then_dropped() -> None:
    """An update not acknowledged is sent PUSH_RETRIES more times, then the listen is
    dropped."""
    net, nodes = network()
    nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    net.silence(nodes[1])
    holders = holders_of(nodes, key_of("news"))
    publish(net, nodes[5], version(1))
    for _ in range(12):
        net.advance(5)
    sent = sum(h.engine.metrics.rpcs[("sent", "update", "timeout")] for h in holders)
    assert sent == len(holders) * (1 + listening.PUSH_RETRIES)
    assert holders_of(nodes, key_of("news")) == []


def test_a_push_for_a_listen_cancelled_meanwhile_stops() -> None:
    """A push whose listen was cancelled while it waited is not sent again."""
    net, nodes = network()
    nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    net.silence(nodes[1])
    holders = holders_of(nodes, key_of("news"))
    publish(net, nodes[5], version(1))
    for holder in holders:
        for entry in list(holder.engine.listeners.entries()):
            holder.engine.listeners.drop(entry)
    net.advance(60)
    sent = sum(h.engine.metrics.rpcs[("sent", "update", "timeout")] for h in holders)
    assert sent == len(holders)


# -- the listener's machine ------------------------------------------------------------------


def test_a_listener_renews_its_leases() -> None:
    """Halfway through a lease the listener asks again, so the listen outlives it."""
    net, nodes = network()
    sub = nodes[1].subscribe(id_to_hex(key_of("news")), lambda _: None, lease=60.0)
    net.advance(200)
    assert len(holders_of(nodes, key_of("news"))) == 3
    assert len(sub.holders) == 3


def test_a_dropped_connection_is_listened_on_again() -> None:
    """When the connection a listen went on closes, the listener listens again at once."""
    net, nodes = network()
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    for link in list(nodes[1].streams.links):
        link.handle.transport.loseConnection()
    net.flush()
    assert len(holders_of(nodes, key_of("news"))) == 3
    assert len(sub.holders) == 3
    publish(net, nodes[5], version(1))
    assert [n.seq for n in got] == [1]


def test_a_holder_that_dies_is_replaced_at_the_next_lookup() -> None:
    """After a holder goes, the listener's next lookup finds the new closest and listens
    there."""
    net, nodes = network(10)
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    dead = next(n for n in nodes if contact(n) in sub.holders)
    net.kill(dead)
    net.advance(5)
    assert contact(dead) not in sub.holders
    assert len(sub.holders) == 2
    net.advance(listening.REFRESH)
    assert len(sub.holders) == 3
    publish(net, nodes[5], version(1))
    assert [n.seq for n in got] == [1]


def test_a_newcomer_closer_to_the_key_gets_a_listen_at_refresh() -> None:
    """Nodes that join near the key are listened to after the next lookup, and those no
    longer among the k closest are told to stop."""
    net, nodes = network(6)
    sub = nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    before = {c.id for c in sub.holders}
    for _ in range(20):
        node = net.add_node(k=3)
        net.run(node.join([("127.0.0.1", nodes[0].port)]))
    net.advance(listening.REFRESH + 1)
    after = {c.id for c in sub.holders}
    assert after != before
    assert len(after) == 3
    everyone = net.nodes
    assert {n.engine.id for n in holders_of(everyone, key_of("news"))} == after


def answer_listens(node: Node, code: ErrorCode | None, item: Item | None = None) -> None:
    """Make ``node`` answer listen requests with error ``code`` (UNKNOWN_TYPE: as a node older
    than listening does), or (None) with a plain ok, or with a listening reply carrying
    ``item``."""
    real = node.engine.request_received

    def answer(request: Message, host: str, port: int, now: float, link: object = None) -> Any:
        if isinstance(request, ListenRequest):
            if item is not None:
                return node.engine.message(Listening, request.rid, lease=60.0, item=item), []
            if code is None:
                return node.engine.message(Ok, request.rid), []
            return node.engine.error(request.rid, code, "no"), []
        return real(request, host, port, now, link)

    node.engine.request_received = answer  # type: ignore[method-assign]


def old_node(node: Node) -> None:
    """Make ``node`` answer listen requests as a node older than listening does."""
    answer_listens(node, ErrorCode.UNKNOWN_TYPE)


def test_old_nodes_are_polled() -> None:
    """Holders that answer UNKNOWN_TYPE are polled with find_value every poll interval."""
    net, nodes = network()
    for node in nodes:
        old_node(node)
    got: list[Notice] = []
    sub = nodes[1].subscribe(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    assert sub.holders == []
    assert len(sub.op.polled()) == 3
    publish(net, nodes[5], version(1))
    net.advance(listening.POLL + 1)
    assert [n.seq for n in got] == [1]
    net.advance(listening.REFRESH)  # a lookup again: still polled, not asked again
    assert len(sub.op.polled()) == 3


def test_a_polled_node_that_fails_is_dropped() -> None:
    """A polled node that does not answer is left until a lookup brings it back."""
    net, nodes = network()
    for node in nodes:
        old_node(node)
    sub = nodes[1].subscribe(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    for node in nodes:
        if contact(node) in sub.op.polled():
            net.kill(node)
    net.advance(listening.POLL + 30)
    assert all(c.port != 0 for c in sub.op.polled())
    assert len(sub.op.holders) <= 3


def test_a_refused_listen_drops_that_holder() -> None:
    """A holder that refuses the listen (a cap) is not counted as listening."""
    net = MemoryNetwork()
    limits = Limits(**{**vars(UNLIMITED), "max_listens": 1})
    nodes = [net.add_node(k=3, limits=limits) for _ in range(5)]
    for node in nodes[1:]:
        net.run(node.join([("127.0.0.1", nodes[0].port)]))
    for node in nodes:  # each holds one listen already: full
        node.engine.listeners.register(9, 9, "10.0.0.9", 1, None, "10.0.0.9", 600.0, 0.0)
    sub = nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    assert sub.holders == []


def test_a_holder_answering_a_listen_with_another_reply_is_dropped() -> None:
    """A holder answering listen with something else than listening is not listened to."""
    net, nodes = network()
    for node in nodes:
        answer_listens(node, None)
    sub = nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    assert sub.holders == []


def test_a_listening_reply_with_an_item_that_does_not_verify_is_not_delivered() -> None:
    """An item under another key in a listening reply is refused, and the holder counted as
    failing."""
    net, nodes = network()
    for node in nodes:
        answer_listens(node, None, item=version(1, name="other"))
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key_of("news")), got.append)
    net.advance(1)
    assert got == []
    assert len(sub.holders) == 3


def test_a_callback_that_raises_is_logged_and_the_listen_goes_on(
    fail_on_logged_errors: list[Any],
) -> None:
    """An exception in the application's callback is logged and does not stop the listen."""
    net, nodes = network()
    got: list[int] = []

    def callback(notice: Notice) -> None:
        got.append(notice.seq)
        if notice.seq == 1:
            raise RuntimeError("the app's bug")

    nodes[1].listen(id_to_hex(key_of("news")), callback)
    net.advance(1)
    publish(net, nodes[5], version(1))
    publish(net, nodes[5], version(2))
    assert got == [1, 2]
    (logged,) = fail_on_logged_errors
    assert "callback failed" in logged["log_format"]
    fail_on_logged_errors.clear()


def test_a_callback_that_cancels_hears_nothing_more() -> None:
    """Notices queued in the same batch after the callback cancelled are not delivered."""
    net, nodes = network()
    got: list[Notice] = []

    def once(notice: Notice) -> None:
        got.append(notice)
        sub.cancel()

    sub = nodes[1].listen(id_to_hex(key_of("news")), once)
    net.advance(1)
    first = Notice(key_of("news"), 1, version(1))
    nodes[1].run([Notify(sub.op, first), Notify(sub.op, Notice(key_of("news"), 2, version(2)))])
    assert got == [first]


def test_stopping_the_node_ends_its_listens_quietly() -> None:
    """A stopping node does not send cancels (its connections close), and its subscriptions
    end."""
    net, nodes = network()
    sub = nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    net.kill(nodes[1])
    assert not sub.active
    assert holders_of(nodes, key_of("news")) == []


def test_registry_bookkeeping() -> None:
    """The registry forgets what it drops, and holds() says whether an entry is held."""
    registry = Listeners(Limits())
    granted = registry.register(1, 9, "10.0.0.1", 4000, None, "10.0.0.1", 10.0, 0.0)
    assert granted == Limits().min_lease
    (entry,) = registry.entries()
    assert entry.target == Contact(9, "10.0.0.1", 4000)
    assert registry.holds(entry)
    assert registry.drop(entry)
    assert not registry.drop(entry)
    assert not registry.cancel(1, 9, "10.0.0.1")
    registry.register(1, 9, "10.0.0.1", 0, "link", "10.0.0.1", 60.0, 0.0)
    (entry,) = registry.entries()
    assert entry.target == ("10.0.0.1", 0)
    assert registry.link_lost("link") == 1
    assert len(registry) == 0


def test_pushes_of_an_unknown_kind_are_none_of_listens_business() -> None:
    """``answer`` leaves requests other than the listen ones to the engine."""
    net = MemoryNetwork()
    node = net.add_node()
    request = node.engine.message(FindValue, key=1)
    assert listening.answer(node.engine, request, "127.0.0.1", 1, None) is None
    update = node.engine.message(Update, key=blob(b"x").key, item=blob(b"x"))
    with pytest.raises(Exception, match="does not listen"):
        listening.answer(node.engine, update, "127.0.0.1", 1, None)


def test_registry_counts_per_key_and_per_peer() -> None:
    """Dropping one of a peer's listens on a key keeps its others, and their counts."""
    registry = Listeners(Limits())
    registry.register(1, 9, "10.0.0.1", 4000, None, "10.0.0.1", 60.0, 0.0)
    registry.register(1, 8, "10.0.0.1", 4001, None, "10.0.0.1", 60.0, 0.0)
    first = next(iter(registry.entries()))
    assert registry.drop(first)
    assert 1 in registry
    assert len(registry) == 1
    assert registry.purge(1000.0) == 1
    assert 1 not in registry


def test_a_listen_that_fails_ends_its_subscription_with_the_error(
    fail_on_logged_errors: list[Any],
) -> None:
    """A bug in a listen's step fails it: its subscription's ``done`` fails, and later pushes
    and closed connections leave it alone."""
    net, nodes = network()
    key = key_of("news")
    sub = nodes[1].listen(id_to_hex(key), lambda _: None)
    net.advance(1)

    def broken(item: Item) -> None:
        raise RuntimeError("a bug")

    sub.op.pushed = broken  # type: ignore[method-assign]
    publish(net, nodes[5], version(1))
    assert not sub.active
    with pytest.raises(RuntimeError, match="a bug"):
        net.run(sub.done)
    fail_on_logged_errors.clear()
    for link in list(nodes[1].streams.links):
        link.handle.transport.loseConnection()
    net.flush()
    with pytest.raises(RemoteError) as refused:
        net.run(nodes[6].call(contact(nodes[1]), Update, key=key, item=version(2)))
    assert refused.value.code == ErrorCode.NOT_LISTENING


def test_two_listens_on_one_key_and_a_cancel_before_any_answer() -> None:
    """Two listens of one node on one key both deliver; cancelling one at once (before any
    holder answered) leaves the other."""
    net, nodes = network()
    key = id_to_hex(key_of("news"))
    first: list[Notice] = []
    second: list[Notice] = []
    quick = nodes[1].listen(key, first.append)
    nodes[1].listen(key, first.append)
    nodes[1].listen(key, second.append)
    quick.cancel()  # its lookup had not even been answered
    net.advance(1)
    publish(net, nodes[5], version(1))
    assert [n.seq for n in first] == [1]
    assert [n.seq for n in second] == [1]


def fail_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every lookup fails (as one with a bug would)."""
    from txdht.core import operations as ops

    def broken(self: ops.Lookup, request: Any, reply: Any) -> None:
        raise RuntimeError("a lookup bug")

    monkeypatch.setattr(ops.Lookup, "replied", broken)


def test_a_failed_lookup_leaves_the_listen_running(
    monkeypatch: pytest.MonkeyPatch, fail_on_logged_errors: list[Any]
) -> None:
    """A lookup that fails (its own bug) is logged; the listen keeps its holders and its
    expiry check does not tell of an expiry it could not check against other nodes' copies...
    unless no copy is found at all."""
    net, nodes, key, listener, got, sub = listening_elsewhere()
    net.advance(1)
    assert [(n.seq, n.expired) for n in got] == [(1, False)]
    fail_lookups(monkeypatch)
    net.advance(listening.REFRESH + 1)
    assert len(sub.holders) == 3
    net.run(nodes[6].call(contact(listener), Expired, key=key, seq=1))
    net.advance(5)
    assert [(n.seq, n.expired) for n in got] == [(1, False), (1, True)]
    fail_on_logged_errors.clear()


def test_an_expiry_check_overtaken_by_a_newer_version_tells_nothing() -> None:
    """An expiry notice about a version older than one delivered meanwhile is dropped."""
    net, nodes = network()
    key = key_of("news")
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key), got.append)
    net.advance(1)
    engine = nodes[1].engine
    engine.feed(sub.op, sub.op.pushed, version(1))
    engine.feed(sub.op, sub.op.expiry_told, 1)
    assert sub.op.checking is not None
    engine.feed(sub.op, sub.op.pushed, version(3))
    nodes[1].run(engine.settle())
    net.advance(5)
    assert [(n.seq, n.expired) for n in got] == [(1, False), (3, False)]
    assert sub.op.checking is None


def forge_expired(net: MemoryNetwork, liar: Node, listener: Node, key: int, seq: int) -> None:
    """``liar`` tells ``listener`` that version ``seq`` of ``key`` expired."""
    reply = net.run(liar.call(contact(listener), Expired, key=key, seq=seq))
    assert isinstance(reply, Ok)
    net.advance(5)  # the check's lookup


def test_a_made_up_expiry_of_a_version_still_held_is_dropped_and_holds_nothing_back() -> None:
    """A peer claims the newest possible version expired while the holders keep version 1:
    the check finds version 1, the application hears nothing, and version 2 is delivered
    later (the claim once set the listen's last version to 2**63 - 1, silencing it)."""
    net, nodes, key, listener, got, _sub = listening_elsewhere()
    net.advance(1)
    liar = next(n for n in nodes if n is not listener)
    forge_expired(net, liar, listener, key, MAX_SEQ)
    assert [(n.seq, n.expired) for n in got] == [(1, False)]
    publish(net, nodes[5], version(2))
    net.advance(1)
    assert [(n.seq, n.expired) for n in got] == [(1, False), (2, False)]


def test_a_claimed_expiry_of_a_newer_version_is_told_as_the_last_delivered() -> None:
    """When the check finds nothing at all, the expiry told is of the last version delivered,
    not of the number claimed; a later version is delivered all the same."""
    net, nodes, key, listener, got, _sub = listening_elsewhere(ttl=60.0)
    net.advance(1)
    for node in holders_of(nodes, key):  # gone everywhere, and no holder told of it
        node.engine.storage.expire(math.inf)
    forge_expired(net, nodes[6] if listener is not nodes[6] else nodes[7], listener, key, MAX_SEQ)
    assert [(n.seq, n.expired) for n in got] == [(1, False), (1, True)]
    publish(net, nodes[5], version(2))
    net.advance(1)
    assert [(n.seq, n.expired) for n in got] == [(1, False), (1, True), (2, False)]


def test_an_expiry_before_any_version_tells_nothing() -> None:
    """Nothing delivered yet: an expired notice has no version to be about, and no check runs."""
    net, nodes = network()
    key = key_of("news")
    got: list[Notice] = []
    sub = nodes[1].listen(id_to_hex(key), got.append)
    net.advance(1)
    forge_expired(net, nodes[6], nodes[1], key, 1)
    assert got == []
    assert sub.op.checking is None


def test_polled_holders_are_replaced_by_newcomers_and_come_back() -> None:
    """Old nodes no longer among the k closest stop being polled (with no cancel: they had no
    listen); an old node that failed a poll is polled again when a lookup finds it."""
    net, nodes = network()
    for node in nodes:
        old_node(node)
    sub = nodes[1].subscribe(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    polled = [n for n in nodes if contact(n) in sub.op.polled()]
    net.silence(polled[0])
    wait(net, listening.POLL + 10)
    assert contact(polled[0]) not in sub.op.polled()
    net._silenced.clear()
    net.advance(listening.REFRESH)
    assert contact(polled[0]) in sub.op.polled()
    for _ in range(20):
        node = net.add_node(k=3)
        net.run(node.join([("127.0.0.1", nodes[0].port)]))
    net.advance(listening.REFRESH)
    assert sub.op.polled() == []
    assert len(sub.holders) == 3


def test_a_long_lease_is_renewed_after_a_lookup() -> None:
    """With a lease longer than twice the refresh interval the lookup comes first, and the
    renewal later, each on its own time."""
    net, nodes = network()
    sub = nodes[1].subscribe(id_to_hex(key_of("news")), lambda _: None, lease=2000.0)
    net.advance(listening.REFRESH + 1)
    assert len(sub.holders) == 3
    net.advance(1000)
    received = sum(n.engine.metrics.rpcs[("received", "listen", "ok")] for n in nodes)
    assert received >= 6


def test_cancels_that_fail_are_let_go() -> None:
    """Cancels sent to holders that no longer answer fail quietly."""
    net, nodes = network()
    sub = nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    for node in nodes:
        if contact(node) in sub.holders:
            net.silence(node)
    sub.cancel()
    net.advance(30)
    assert nodes[1].engine.metrics.rpcs[("sent", "listen", "timeout")] == 3
    assert not nodes[1].engine.running()


def test_a_holder_that_stops_answering_while_being_replaced_is_let_go() -> None:
    """A holder dropped at a lookup that then does not answer its cancel is let go."""
    net, nodes = network(6)
    sub = nodes[1].subscribe(id_to_hex(key_of("news")), lambda _: None, lease=2000.0)
    net.advance(1)
    old = [n for n in nodes if contact(n) in sub.holders]
    for _ in range(20):
        node = net.add_node(k=3)
        net.run(node.join([("127.0.0.1", nodes[0].port)]))
    net.advance(listening.REFRESH - 5)
    for node in old:
        net.silence(node)
    wait(net, 40)
    assert not {contact(n) for n in old} & set(sub.holders)
    assert nodes[1].engine.metrics.rpcs[("sent", "listen", "timeout")] >= 1


def test_a_push_whose_connection_closes_is_not_resent_elsewhere() -> None:
    """An update waiting for its acknowledgement when its connection closes is not sent on
    another connection: the listen it served is gone with the connection."""
    net, nodes = network()
    nodes[1].listen(id_to_hex(key_of("news")), lambda _: None)
    net.advance(1)
    holders = holders_of(nodes, key_of("news"))
    net.silence(nodes[1])
    publish(net, nodes[5], version(1))
    for holder in holders:
        for link in list(holder.streams.links):
            if link.address == ("127.0.0.1", nodes[1].port):
                link.handle.transport.loseConnection()
    wait(net, 30)
    for holder in holders:  # failed with the connection, and its retry at once: not sent
        rpcs = holder.engine.metrics.rpcs
        assert {k: v for k, v in rpcs.items() if k[1] == "update"} == {
            ("sent", "update", "failed"): 2
        }
        assert len(holder.engine.listeners) == 0


# -- the network name ------------------------------------------------------------------------


def test_nodes_of_two_networks_told_of_each_other_stay_apart() -> None:
    """A node refuses requests of another network with WRONG_NETWORK and never adds such a
    node to its table: joining through another network's node fails, and lookups stay
    within each network."""
    net = MemoryNetwork()
    red = [net.add_node(network="red") for _ in range(4)]
    blue = [net.add_node(network="blue") for _ in range(4)]
    for group in (red, blue):
        for node in group[1:]:
            net.run(node.join([("127.0.0.1", group[0].port)]))
    from txdht.core.errors import JoinError

    stranger = net.add_node(network="blue")
    with pytest.raises(JoinError):
        net.run(stranger.join([("127.0.0.1", red[0].port)]))
    net.run(stranger.join([("127.0.0.1", red[0].port), ("127.0.0.1", blue[0].port)]))
    blue.append(stranger)
    with pytest.raises(RemoteError) as refused:
        net.run(blue[1].call(contact(red[0]), FindValue, key=1))
    assert refused.value.code == ErrorCode.WRONG_NETWORK
    for node in red:
        net.run(node.lookup(node.engine.id ^ 1))
    red_ids = {n.engine.id for n in red}
    blue_ids = {n.engine.id for n in blue}
    for node in red:
        assert {c.id for c in node.engine.routing.contacts()} <= red_ids
    for node in blue:
        assert {c.id for c in node.engine.routing.contacts()} <= blue_ids
    assert stranger.engine.metrics.rpcs[("sent", "ping", "error")] >= 1
    assert red[0].engine.metrics.rpcs[("received", "ping", "error")] >= 1


def test_a_reply_of_another_network_fails_the_request() -> None:
    """A reply carrying another network's name (a node that ignores names) fails the request
    with WRONG_NETWORK, and its sender is not added."""
    from dataclasses import replace

    net = MemoryNetwork()
    red, careless = net.add_node(network="red"), net.add_node()
    real = careless.engine.request_received

    def ignoring(request: Message, host: str, port: int, now: float, link: object = None) -> Any:
        return real(replace(request, network="txdht"), host, port, now, link)

    careless.engine.request_received = ignoring  # type: ignore[method-assign]
    from txdht.core.errors import ProtocolError
    from txdht.core.messages import Ping

    with pytest.raises(ProtocolError) as refused:
        net.run(red.call(contact(careless), Ping))
    assert refused.value.code == ErrorCode.WRONG_NETWORK
    assert careless.engine.id not in red.engine.routing


def test_a_network_name_is_checked() -> None:
    """A node's network name is validated when it is made."""
    with pytest.raises(ValueError, match="a network name"):
        MemoryNetwork().add_node(network="Not A Name")


def drop_the_first_listen(net: MemoryNetwork, listener: Node) -> Node:
    """Deliver the network's events until ``listener`` writes a ``listen`` request, and close
    that connection instead of delivering it (as when a connection is replaced under load);
    the node the listen was for."""
    for _ in range(10_000):
        pipe, data = net.events.popleft()
        if data is not None and pipe.owner is listener and b'"type":"listen"' in data:
            holder = pipe.other.owner
            assert isinstance(holder, Node)
            net.events.appendleft((pipe, None))  # the close goes instead of the listen
            net.flush()
            return holder
        net._deliver(pipe, data)
    raise AssertionError("no listen was sent")


def test_a_listen_whose_connection_closes_unanswered_is_asked_again() -> None:
    """A listen lost with its connection is asked again a moment later, on a new one: the
    holder is listened to, and pushes the next version (it used to count as gone until the
    next lookup of the key, ten minutes on)."""
    net, nodes, _key, listener, got, sub = listening_elsewhere()
    dropped = drop_the_first_listen(net, listener)
    holder = sub.op.holders[dropped.engine.id]
    assert (holder.state, holder.relistens) == ("waiting", 1)
    net.advance(listening.RELISTEN_DELAY + 0.1)
    assert dropped.engine.id in {c.id for c in sub.op.listening_to()}
    assert holder.relistens == 0
    assert len(dropped.engine.listeners) >= 1
    publish(net, nodes[5], version(2))
    net.advance(1)
    assert [(n.seq, n.expired) for n in got] == [(1, False), (2, False)]
    sub.cancel()


def test_a_holder_that_cannot_be_reached_is_gone_after_the_relistens() -> None:
    """A holder whose connection keeps failing is asked RELISTEN_TRIES times more, a moment
    apart, then counts as gone."""
    net, _nodes, _key, listener, _got, sub = listening_elsewhere()
    dropped = drop_the_first_listen(net, listener)
    net.kill(dropped)  # connecting to it is refused from now on
    for tries in range(2, listening.RELISTEN_TRIES + 1):
        net.advance(listening.RELISTEN_DELAY + 0.1)
        assert sub.op.holders[dropped.engine.id].relistens == tries
    net.advance(listening.RELISTEN_DELAY + 0.1)
    assert dropped.engine.id not in sub.op.holders
    sub.cancel()
