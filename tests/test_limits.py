"""Limits on what peers may ask: rate limits, quotas, compare-and-swap, routing hygiene."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent

from txdht.core.engine import Engine
from txdht.core.errors import ErrorCode, ProtocolError, PutError, RemoteError
from txdht.core.framing import netstring
from txdht.core.ids import Contact
from txdht.core.items import Identity, blob
from txdht.core.limits import (
    PACE,
    Abandoned,
    Limits,
    Pacer,
    RateLimiter,
    TokenBucket,
    Verdict,
    is_loopback,
    limit_options,
    peer_key,
    subnet_of,
)
from txdht.core.messages import Error, Listening, Message, Ping, Pong, Store, decode, encode
from txdht.core.messages import Listen as ListenRequest
from txdht.core.routing import RoutingTable
from txdht.core.storage import MemoryStorage
from txdht.testing import UNLIMITED, MemoryNetwork, RawConnection

PUBLISHER = Identity.from_private_bytes(b"p" * 32)
OTHER = Identity.from_private_bytes(b"o" * 32)


def test_token_bucket_spends_and_refills() -> None:
    """A bucket gives its burst at once, then one token per 1/rate seconds, never above burst."""
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_refuses_then_drops_then_forgives() -> None:
    """Over its burst a peer is refused once, dropped during the cool-off, then served again."""
    limiter = RateLimiter(Limits(peer_rate=1.0, peer_burst=2.0, cool_off=5.0), now=0.0)
    verdicts = [limiter.check("peer", 0.0) for _ in range(4)]
    assert verdicts == [Verdict.SERVE, Verdict.SERVE, Verdict.REFUSE, Verdict.DROP]
    assert limiter.check("other", 0.0) == Verdict.SERVE
    assert limiter.check("peer", 4.9) == Verdict.DROP
    assert limiter.check("peer", 5.0) == Verdict.SERVE
    assert (limiter.refused, limiter.dropped) == (1, 2)


def test_global_cap_refuses_everyone() -> None:
    """When the node's overall bucket is empty, every peer is refused."""
    limiter = RateLimiter(Limits(global_rate=1.0, global_burst=2.0), now=0.0)
    assert [limiter.check(i, 0.0) for i in range(3)] == [
        Verdict.SERVE,
        Verdict.SERVE,
        Verdict.REFUSE,
    ]


def test_rate_limiter_memory_is_bounded() -> None:
    """It remembers at most tracked_peers buckets and cool-offs, forgetting the oldest."""
    limiter = RateLimiter(Limits(peer_burst=1.0, peer_rate=0.001, tracked_peers=3), now=0.0)
    for peer in range(10):
        limiter.check(peer, 0.0)
        limiter.check(peer, 0.0)
    assert len(limiter._peers) == 3
    assert len(limiter._cooling) == 3
    limiter.forget(1000.0)
    assert limiter._cooling == {}


def test_rate_limiter_forgets_the_peer_heard_from_least_lately() -> None:
    """The bucket forgotten when a new peer comes is that of the peer heard from least
    lately, not the first one seen: a peer heard from again keeps its (spent) bucket."""
    limiter = RateLimiter(Limits(peer_burst=1.0, peer_rate=0.001, tracked_peers=2), now=0.0)
    assert limiter.check("a", 0.0) == Verdict.SERVE  # a's one token spent
    assert limiter.check("b", 0.0) == Verdict.SERVE
    limiter._cooling.clear()  # (no cool-off in the way: only the buckets are looked at here)
    assert limiter.check("a", 0.0) == Verdict.REFUSE  # heard from again: now the latest
    limiter._cooling.clear()
    assert limiter.check("c", 0.0) == Verdict.SERVE  # b, heard from least lately, goes
    assert list(limiter._peers) == ["a", "c"]
    limiter._cooling.clear()
    assert limiter.check("a", 0.0) == Verdict.REFUSE  # a's bucket was kept, still spent
    assert limiter.check("b", 0.0) == Verdict.SERVE  # b's was forgotten: a full one


def test_loopback_and_peer_keys() -> None:
    """Loopback peers count per connection, others per address; bad hosts are not loopback."""
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("192.0.2.1")
    assert not is_loopback("not an ip")
    assert peer_key("127.0.0.1", 5555) == ("127.0.0.1", 5555)
    assert peer_key("192.0.2.1", 5555) == "192.0.2.1"


def make_engine(**limits: int) -> Engine:
    """An engine with the given limits."""
    return Engine(OTHER, MemoryStorage(), now=0.0, limits=Limits(**limits))


def test_max_items_in_all() -> None:
    """Past max_items a new item is refused with STORAGE_FULL; refreshing a held one is not."""
    engine = make_engine(max_items=2)
    engine.store(blob(b"1"), 60.0, 0.0)
    engine.store(blob(b"2"), 60.0, 0.0)
    with pytest.raises(ProtocolError) as caught:
        engine.store(blob(b"3"), 60.0, 0.0)
    assert caught.value.code == ErrorCode.STORAGE_FULL
    engine.store(blob(b"2"), 60.0, 1.0)
    assert engine.storage.count() == 2


def test_max_items_per_publisher_and_recount_on_expiry() -> None:
    """One publisher may fill only its share; others still get in; expiry frees the share."""
    engine = make_engine(max_items_per_publisher=2)
    engine.store(PUBLISHER.sign("a", b"v", 1), 10.0, 0.0)
    engine.store(PUBLISHER.sign("b", b"v", 1), 60.0, 0.0)
    with pytest.raises(ProtocolError, match="items of this publisher") as caught:
        engine.store(PUBLISHER.sign("c", b"v", 1), 60.0, 0.0)
    assert caught.value.code == ErrorCode.STORAGE_FULL
    engine.store(PUBLISHER.sign("a", b"newer", 2), 10.0, 0.0)
    engine.store(OTHER.sign("c", b"v", 1), 60.0, 0.0)
    engine.store(blob(b"anonymous"), 60.0, 0.0)
    assert engine.expire(5.0) == 0
    assert engine.expire(10.0) == 1
    engine.store(PUBLISHER.sign("c", b"v", 1), 60.0, 11.0)


def test_per_publisher_counts_follow_expiry_and_replacement() -> None:
    """A record put in place of an expired one of the same key (before the expire pass drops
    it) takes no more of the quota; each expire pass takes what it drops off its publishers'
    counts, down to none."""
    engine = make_engine(max_items_per_publisher=2)
    engine.store(PUBLISHER.sign("a", b"v", 1), 10.0, 0.0)
    engine.store(PUBLISHER.sign("b", b"v", 1), 60.0, 0.0)
    engine.store(OTHER.sign("c", b"v", 1), 60.0, 0.0)
    engine.store(blob(b"anonymous"), 60.0, 0.0)
    # "a" has expired, and no expire pass has run: a new version takes its place.
    engine.store(PUBLISHER.sign("a", b"again", 1), 100.0, 20.0)
    with pytest.raises(ProtocolError, match="holds 2 items of this publisher"):
        engine.store(PUBLISHER.sign("d", b"v", 1), 60.0, 20.0)
    assert engine.expire(60.0) == 3  # "b", "c" and the blob; "a" stays, until 120
    assert engine.storage.count() == 1
    engine.store(PUBLISHER.sign("d", b"v", 1), 60.0, 61.0)
    with pytest.raises(ProtocolError, match="holds 2 items of this publisher"):
        engine.store(PUBLISHER.sign("e", b"v", 1), 60.0, 61.0)
    assert engine.expire(200.0) == 2
    for name in ("e", "f"):  # both counts are back to none
        engine.store(PUBLISHER.sign(name, b"v", 1), 60.0, 201.0)
    engine.store(OTHER.sign("g", b"v", 1), 60.0, 201.0)


def test_quota_counts_survive_a_restart() -> None:
    """A new engine on a store that already holds items counts them against the quotas."""
    storage = MemoryStorage()
    first = Engine(OTHER, storage, now=0.0, limits=Limits(max_items_per_publisher=1))
    first.store(PUBLISHER.sign("a", b"v", 1), 60.0, 0.0)
    again = Engine(OTHER, storage, now=0.0, limits=Limits(max_items_per_publisher=1))
    with pytest.raises(ProtocolError):
        again.store(PUBLISHER.sign("b", b"v", 1), 60.0, 0.0)


@pytest.mark.parametrize(
    ("stored_seq", "cas", "accepted"),
    [(None, 0, True), (None, 1, False), (1, 1, True), (1, 0, False), (2, 1, False)],
)
def test_compare_and_swap(stored_seq: int | None, cas: int, accepted: bool) -> None:
    """A store with cas succeeds only when the stored sequence (0 for none) equals cas."""
    engine = make_engine()
    if stored_seq is not None:
        engine.store(PUBLISHER.sign("n", b"old", stored_seq), 60.0, 0.0)
    new = PUBLISHER.sign("n", b"new", 5)
    if accepted:
        engine.store(new, 60.0, 0.0, cas=cas)
        assert engine.get(new.key, 0.0) == new
    else:
        with pytest.raises(ProtocolError, match=f"expected sequence {cas}") as caught:
            engine.store(new, 60.0, 0.0, cas=cas)
        assert caught.value.code == ErrorCode.CAS_MISMATCH


def test_cas_travels_on_the_wire() -> None:
    """A store's cas field round-trips, and is absent when not set."""
    item = PUBLISHER.sign("n", b"v", 1)
    with_cas = Store(rid=1, sender=2, port=3, item=item, ttl=60.0, cas=0)
    assert decode(encode(with_cas)) == with_cas
    assert b'"cas"' not in encode(Store(rid=1, sender=2, port=3, item=item, ttl=60.0))


def test_one_live_contact_per_address() -> None:
    """A second id at a live contact's address is refused; a stale contact's is taken over."""
    table = RoutingTable(0, k=20)
    table.seen(Contact(1, "192.0.2.1", 4000), 0.0)
    table.seen(Contact(2, "192.0.2.1", 4000), 0.0)
    assert [c.id for c in table.contacts()] == [1]
    for _ in range(3):
        table.failed(1)
    table.seen(Contact(2, "192.0.2.1", 4000), 0.0)
    assert [c.id for c in table.contacts()] == [2]


def test_few_contacts_per_subnet_in_a_bucket() -> None:
    """At most max_per_subnet contacts of one /24 share a bucket; loopback is exempt."""
    table = RoutingTable(0, k=20, max_per_subnet=2)
    for i in range(1, 5):
        table.seen(Contact(1 << 500 | i, f"198.51.100.{i}", 4000), 0.0)
        table.seen(Contact(1 << 501 | i, "127.0.0.1", 4000 + i), 0.0)
        table.seen(Contact(1 << 502 | i, f"2001:db8::{i}", 4000), 0.0)
    hosts = [c.host for c in table.contacts()]
    assert sum(h.startswith("198.51.100.") for h in hosts) == 2
    assert sum(h.startswith("2001:db8") for h in hosts) == 2
    assert hosts.count("127.0.0.1") == 4


def test_flooding_peer_is_refused_then_ignored_and_others_are_served() -> None:
    """A raw connection over its burst gets RATE_LIMITED once, then silence; others are served."""
    net = MemoryNetwork()
    limits = Limits(peer_rate=1.0, peer_burst=5.0, cool_off=30.0)
    node = net.add_node(limits=limits)
    other = net.add_node()
    flood = net.open_raw(node)
    ping = netstring(encode(Ping(rid=7, sender=1, port=0)))
    with capturedLogs() as events:
        flood.send(ping * 20)
        net.flush()
    replies = flood.messages()
    assert [type(r) for r in replies] == [Pong] * 5 + [Error]
    assert isinstance(replies[-1], Error)
    assert replies[-1].code == ErrorCode.RATE_LIMITED
    assert any("over its request rate" in formatEvent(e) for e in events)
    assert isinstance(net.run(other.call(("127.0.0.1", node.port), Ping)), Pong)
    rates = {k: v for k, v in node.metrics.rpcs.items() if k[0] == "received"}
    assert rates[("received", "ping", "refuse")] == 1
    assert rates[("received", "ping", "drop")] == 14
    net.clock.advance(31)
    node.expire()
    flood.send(ping)
    net.flush()
    assert isinstance(flood.messages()[-1], Pong)


def test_rate_limit_error_reaches_the_caller() -> None:
    """A node's request refused for its rate fails with RemoteError RATE_LIMITED."""
    net = MemoryNetwork()
    node = net.add_node(limits=Limits(peer_burst=1.0, peer_rate=0.001))
    caller = net.add_node()
    net.run(caller.call(("127.0.0.1", node.port), Ping))
    with pytest.raises(RemoteError) as caught:
        net.run(caller.call(("127.0.0.1", node.port), Ping))
    assert caught.value.code == ErrorCode.RATE_LIMITED


def test_too_many_connections_from_one_address_are_closed() -> None:
    """Connections from one non-loopback address beyond the limit are closed at once."""
    net = MemoryNetwork()
    node = net.add_node(limits=Limits(max_connections_per_ip=2))
    with capturedLogs() as events:
        raws = [net.open_raw(node, host="203.0.113.9") for _ in range(4)]
        net.flush()
    assert [r.lost for r in raws] == [False, False, True, True]
    assert any("over 2 connections" in formatEvent(e) for e in events)
    local = [net.open_raw(node) for _ in range(4)]
    net.flush()
    assert not any(r.lost for r in local)


def test_put_with_cas_through_the_network() -> None:
    """A put with cas succeeds only over the expected version, and says why when refused."""
    net = MemoryNetwork()
    nodes = net.create(6, k=3)
    writer = nodes[2]
    key = net.run(writer.put("counter", b"1", cas=0))
    assert net.run(nodes[4].get(key)) == b"1"
    with pytest.raises(PutError, match="expected sequence 0") as caught:
        net.run(writer.put("counter", b"lost update", cas=0))
    assert caught.value.codes == {ErrorCode.CAS_MISMATCH}
    assert net.run(writer.put("counter", b"2", cas=1)) == key
    assert net.run(nodes[5].get(key)) == b"2"
    published = writer.engine.storage.published(int(key, 16))
    assert published is not None
    assert published.item.value == b"2"


def test_put_refused_as_stale_everywhere_reports_the_codes() -> None:
    """When every holder has a newer version, the put fails with STALE_SEQUENCE among its codes."""
    net = MemoryNetwork()
    nodes = net.create(5, k=3)
    key = net.run(nodes[1].put("n", b"v1"))
    net.run(nodes[1].put("n", b"v2"))
    nodes[1].engine.storage.set_published(
        type(nodes[1].engine.storage.published(int(key, 16)))(  # type: ignore[misc]
            nodes[1].engine.identity.sign("n", b"v0", 0), 60.0
        )
    )
    with pytest.raises(PutError) as caught:
        net.run(nodes[1].put("n", b"older"))
    assert caught.value.codes == {ErrorCode.STALE_SEQUENCE}
    assert "first refusal" in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peer_rate": 0.0}, r"peer_rate \(--peer-rate\) must be above 0, got 0.0"),
        ({"peer_burst": -1.0}, r"peer_burst \(--peer-burst\) must be above 0"),
        ({"tracked_peers": 0}, r"tracked_peers \(--tracked-peers\) must be above 0"),
        ({"max_bad_messages": 0}, r"max_bad_messages \(--max-bad-messages\) must be above 0"),
        ({"max_per_subnet": -1}, r"max_per_subnet \(--max-per-subnet\) must be 0 or more"),
        (
            {"lookup_per_subnet": -1},
            r"lookup_per_subnet \(--lookup-per-subnet\) must be 0 or more",
        ),
    ],
)
def test_a_limit_that_makes_no_sense_is_refused(changes: dict[str, float], message: str) -> None:
    """Zero or negative limits (max_per_subnet may be 0: no limit) are refused, by name."""
    with pytest.raises(ValueError, match=message):
        Limits(**changes)  # type: ignore[arg-type]
    assert Limits(max_per_subnet=0).max_per_subnet == 0
    assert Limits(lookup_per_subnet=0).lookup_per_subnet == 0


def test_abandoned_requests_are_remembered_up_to_a_bound() -> None:
    """A connection remembers the newest abandoned request ids, each claimable once; past the
    bound the oldest is forgotten (its late reply is then logged like an unsolicited one)."""
    abandoned = Abandoned(size=2)
    for rid in (1, 2, 3):
        abandoned.add(rid)
    assert not abandoned.claim(1)  # forgotten: the bound is 2
    assert abandoned.claim(2)
    assert not abandoned.claim(2)  # one reply per request
    assert abandoned.claim(3)
    assert not abandoned.claim(4)  # never abandoned


@pytest.mark.parametrize(
    ("host", "subnet"),
    [
        ("198.51.100.7", "198.51.100.0/24"),
        ("2001:db8:1:2::5", "2001:db8:1::/48"),
        ("127.0.0.1", None),  # loopback: local test networks are exempt
        ("::1", None),
        ("node.example", None),  # not an address: not counted
    ],
)
def test_subnet_of_names_the_network_a_rule_counts(host: str, subnet: str | None) -> None:
    """The /24 or /48 a per-network rule counts a host against; None where none applies."""
    assert subnet_of(host) == subnet


def framed(message: Message) -> bytes:
    """``message`` as it goes on the wire."""
    return netstring(encode(message))


def test_past_max_connections_the_quiet_longest_are_closed_but_not_busy_ones() -> None:
    """Past max_connections, opening one more closes those quiet longest (last heard from, or
    opened, longest ago) down to 90% of the limit, but never one a request of ours is in
    flight on, one a listen is held on, or the new one; it is logged."""
    net = MemoryNetwork()
    hub = net.add_node(limits=replace(UNLIMITED, max_connections=5))
    silent = net.add_node()
    net.silence(silent)
    waiting = hub.call(("127.0.0.1", silent.port), Ping)  # in flight until its timeout
    listen = net.open_raw(hub)
    listen.send(framed(ListenRequest(rid=1, sender=77, port=0, key=5, lease=60.0)))
    raws: list[RawConnection] = []
    with capturedLogs() as events:
        for i in range(6):
            net.advance(0.1)
            if i == 3:  # the first one speaks: it is no longer the quietest
                raws[0].send(framed(Ping(rid=1, sender=88, port=0)))
                net.advance(0.01)
            raws.append(net.open_raw(hub))
            net.flush()
            if i == 3:  # six open (> 5): the two quiet longest closed, down to four
                assert [raw.lost for raw in raws] == [False, True, True, False]
        # Six again: the first (heard from before the fourth opened) and the fourth go.
        assert [raw.lost for raw in raws] == [True, True, True, True, False, False]
        assert not listen.lost
        assert not waiting.called
    trims = [formatEvent(e) for e in events if "over max_connections" in formatEvent(e)]
    assert trims == [
        "6 connections open, over max_connections (5): closed the 2 quiet longest",
        "6 connections open, over max_connections (5): closed the 2 quiet longest",
    ]
    assert isinstance(listen.messages()[0], Listening)
    with pytest.raises(defer.TimeoutError):
        net.run(waiting)


def test_when_too_few_connections_are_quiet_more_stay_open() -> None:
    """Every connection busy but one: that one is closed, and the rest stay over the limit."""
    net = MemoryNetwork()
    hub = net.add_node(limits=replace(UNLIMITED, max_connections=2))
    silent = [net.add_node() for _ in range(3)]
    for node in silent:
        net.silence(node)
    quiet = net.open_raw(hub)
    net.flush()
    waiting = [hub.call(("127.0.0.1", node.port), Ping) for node in silent]
    net.flush()
    assert quiet.lost
    assert len([link for link in hub.streams.links if not link.closing]) == 3
    for d in waiting:
        with pytest.raises(defer.TimeoutError):
            net.run(d)


def test_max_connections_is_an_option_and_above_0() -> None:
    """max_connections is a limit like the others: --max-connections, refused at 0."""
    assert ("--max-connections", int, 512) in [option[:3] for option in limit_options()]
    with pytest.raises(ValueError, match="max_connections"):
        Limits(max_connections=0)


def test_a_listens_connections_to_its_holders_are_kept() -> None:
    """The connections a node's own listen went on to the key's holders are not closed for
    being quiet: the holders push new versions on them."""
    net = MemoryNetwork()
    nodes = net.create(4, k=2)
    hub = net.add_node(limits=replace(UNLIMITED, max_connections=4))
    net.run(hub.join([("127.0.0.1", nodes[0].port)]))
    subscription = hub.listen("ab" * 64, lambda notice: None)
    net.advance(1)
    holders = subscription.op.listening_to()
    assert len(holders) >= 2
    links = [hub.streams.link_to(holder.address) for holder in holders]
    raws = []
    for _ in range(6):
        net.advance(0.1)
        raws.append(net.open_raw(hub))
        net.flush()
    assert all(link is not None and not link.closing for link in links)
    assert sorted(h.id for h in subscription.op.listening_to()) == sorted(h.id for h in holders)
    assert any(raw.lost for raw in raws)
    subscription.cancel()


def test_connections_being_closed_do_not_count_towards_max_connections() -> None:
    """Connections the node is closing (here, over the per-address limit) are still open
    until they go, but are not counted: a new one then closes nothing quiet."""
    net = MemoryNetwork()
    limits = replace(UNLIMITED, max_connections=4, max_connections_per_ip=1)
    hub = net.add_node(limits=limits)
    first = net.open_raw(hub)
    remote = [net.open_raw(hub, host="203.0.113.9") for _ in range(3)]  # two over its limit
    newest = net.open_raw(hub)  # five held, but two are closing: three open, none closed
    assert len(hub.streams.links) == 5
    net.flush()
    assert [raw.lost for raw in (first, *remote, newest)] == [False, False, True, True, False]


def test_the_pacer_sends_a_burst_at_once_then_one_a_slot() -> None:
    """Within ``PACE`` of the burst requests go at once, then one every 1 / (PACE x rate)
    seconds; each address has its own schedule, and time passing refills it."""
    pacer = Pacer(Limits(peer_rate=10.0, peer_burst=5.0))  # paced at 8/s, a burst of 4
    times = [pacer.when("a", 0.0) for _ in range(7)]
    assert times[:4] == [0.0] * 4
    assert times[4:] == pytest.approx([0.125, 0.25, 0.375])
    assert pacer.when("b", 0.0) == 0.0  # another peer: its own burst
    assert pacer.when("a", 10.0) == 10.0  # long after: the burst is back
    assert [pacer.when("c", 0.0) for _ in range(4)] == [0.0] * 4


def test_the_pacer_stays_under_what_a_peer_with_the_same_limits_accepts() -> None:
    """Requests sent at the times the pacer gives are all served by a rate limiter with the
    same limits: none refused, none dropped, over a long run of them."""
    limits = Limits(peer_rate=50.0, peer_burst=100.0)
    pacer, limiter = Pacer(limits), RateLimiter(limits, 0.0)
    sent = sorted(pacer.when("peer", n * 0.001) for n in range(2000))
    assert [limiter.check("us", t) for t in sent] == [Verdict.SERVE] * 2000
    assert sent[-1] > (2000 - 100 * PACE) / (50 * PACE) - 1  # paced, not all at once


def test_the_pacer_is_off_for_rates_that_no_peer_would_refuse() -> None:
    assert Pacer(UNLIMITED).off
    assert not Pacer(Limits()).off


def test_the_pacer_forgets_the_least_recent_peers_past_tracked_peers() -> None:
    pacer = Pacer(Limits(tracked_peers=2))
    for peer in ("a", "b", "c"):
        pacer.when(peer, 0.0)
    assert list(pacer._due) == ["b", "c"]
