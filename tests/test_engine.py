"""The core engine: how one node answers each request, with no I/O and time passed in."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from txdht.core.commands import Command, Send
from txdht.core.engine import Engine
from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import Contact
from txdht.core.items import MAX_TTL, Identity, Item, blob
from txdht.core.limits import Limits
from txdht.core.lookup import DisjointLookup, IterativeLookup
from txdht.core.messages import (
    Error,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ok,
    Ping,
    Pong,
    Store,
    Value,
)
from txdht.core.operations import Handoff
from txdht.core.storage import MemoryStorage, StoredItem

ALICE = Identity.from_private_bytes(b"a" * 32)
PUBLISHER = Identity.from_private_bytes(b"p" * 32)


def make_engine(k: int = 20, max_value: int = 1000) -> Engine:
    """An engine for ALICE with an empty memory store at time 0."""
    engine = Engine(ALICE, MemoryStorage(), now=0.0, k=k, max_value=max_value)
    engine.port = 4000
    return engine


def handle(engine: Engine, message: Message, host: str, now: float) -> Message:
    """The reply ``engine`` sends to ``message`` from ``host``."""
    reply, _ = engine.request_received(message, host, 9999, now)
    assert reply is not None
    return reply


def sent(commands: list[Command]) -> list[tuple[str, int | None]]:
    """The requests ``commands`` send: (message type, the contact's id) each."""
    found = []
    for command in commands:
        assert isinstance(command, Send)
        contact = command.request.contact
        found.append((command.request.message.TYPE, contact.id if contact else None))
    return found


def lookup(engine: Engine, target: int, now: float, find_value: bool = False) -> IterativeLookup:
    """A lookup machine from ``engine`` at time ``now``."""
    engine.now = now
    machine = engine.lookup_machine(target, find_value)
    assert isinstance(machine, IterativeLookup)  # one path: a plain Kademlia lookup
    return machine


def request(cls: type[Message], sender: int = 7, port: int | None = None, **fields: Any) -> Message:
    """A request from a peer with id ``sender`` (listening on a port derived from it)."""
    return cls(
        rid=42, sender=sender, port=1024 + sender % 60000 if port is None else port, **fields
    )


def test_ping_gets_pong_and_adds_the_sender() -> None:
    """A ping is answered with a pong echoing the request id, and the sender is now a contact."""
    engine = make_engine()
    reply = handle(engine, request(Ping), "127.0.0.9", 1.0)
    assert isinstance(reply, Pong)
    assert (reply.rid, reply.sender, reply.port) == (42, ALICE.node_id, 4000)
    assert engine.routing.contacts() == [Contact(7, "127.0.0.9", 1031)]


def test_sender_without_port_is_not_added() -> None:
    """A peer that does not listen (port 0) is answered but never enters the routing table."""
    engine = make_engine()
    assert isinstance(handle(engine, request(Ping, port=0), "127.0.0.9", 1.0), Pong)
    assert len(engine.routing) == 0


def test_message_claiming_our_own_id_is_not_added() -> None:
    """A message that claims our own id does not put us in our own table."""
    engine = make_engine()
    handle(engine, request(Ping, sender=ALICE.node_id), "127.0.0.9", 1.0)
    assert len(engine.routing) == 0


def test_store_then_find_value() -> None:
    """A stored item is kept and returned by find_value, with a fresh reply per request."""
    engine = make_engine()
    item = PUBLISHER.sign("name", b"value", 1)
    assert isinstance(handle(engine, request(Store, item=item, ttl=60.0), "127.0.0.1", 0.0), Ok)
    reply = handle(engine, request(FindValue, key=item.key), "127.0.0.1", 10.0)
    assert isinstance(reply, Value)
    assert reply.item == item


def test_find_value_of_missing_key_answers_closest_nodes_without_the_asker() -> None:
    """Without the item, find_value answers the closest contacts, never the asker itself."""
    engine = make_engine()
    for ident in (1, 2, 3):
        handle(engine, request(Ping, sender=ident, port=4000 + ident), "127.0.0.1", 0.0)
    reply = handle(engine, request(FindValue, sender=2, key=0), "127.0.0.1", 0.0)
    assert isinstance(reply, Nodes)
    assert [c.id for c in reply.nodes] == [1, 3]


def test_lookups_skip_contacts_that_look_dead_even_when_peers_name_them() -> None:
    """After two failures in a row a contact is left out of our lookups: it is not asked, and
    a peer's reply naming it does not bring it back (after a mass crash each would cost a
    timeout in every lookup)."""
    engine = make_engine(k=4)
    contacts = [Contact(ident, "127.0.0.1", 4000 + ident) for ident in (1, 2, 3, 4)]
    for contact in contacts:
        engine.seen(contact, 0.0)
    for _ in range(2):
        engine.peer_failed(contacts[1], "lost")
    machine = lookup(engine, 0, 0.0)
    first = machine.next_queries()
    assert [c.id for c in first] == [1, 3, 4]
    machine.nodes_received(first[0], [contacts[1], Contact(5, "127.0.0.1", 4005)])
    assert [c.id for c in machine.next_queries()] == [5]
    assert 2 not in {c.id for c in machine.closest()}


def test_when_every_contact_looks_dead_lookups_ask_them_all() -> None:
    """If every contact failed twice (our own network was down), a lookup asks them all again
    rather than ending with nothing."""
    engine = make_engine(k=3)
    contacts = [Contact(ident, "127.0.0.1", 4000 + ident) for ident in (1, 2, 3)]
    for contact in contacts:
        engine.seen(contact, 0.0)
        engine.peer_failed(contact, "lost")
        engine.peer_failed(contact, "lost")
    assert [c.id for c in lookup(engine, 0, 0.0).next_queries()] == [1, 2, 3]


def test_find_node_answers_k_closest() -> None:
    """find_node answers at most k contacts, nearest to the target first."""
    engine = make_engine(k=2)
    for ident in (8, 9, 12, 1):
        handle(engine, request(Ping, sender=ident), "127.0.0.1", 0.0)
    reply = handle(engine, request(FindNode, sender=99, target=8), "127.0.0.1", 0.0)
    assert isinstance(reply, Nodes)
    assert [c.id for c in reply.nodes] == [8, 9]


def test_replies_leave_out_contacts_whose_last_two_requests_failed() -> None:
    """A contact that failed our last two requests is not handed to askers, nor asked by our
    own lookups, until it answers again (one failure may be a lost message)."""
    engine = make_engine(k=3)
    for ident in (1, 2, 3):
        engine.seen(Contact(ident, "127.0.0.1", 4000 + ident), 0.0)
    engine.peer_failed(Contact(2, "127.0.0.1", 4002), "lost")
    reply = handle(engine, request(FindNode, sender=99, target=0), "127.0.0.1", 0.0)
    assert isinstance(reply, Nodes)
    assert [c.id for c in reply.nodes] == [1, 2, 3]
    engine.peer_failed(Contact(2, "127.0.0.1", 4002), "lost")
    reply = handle(engine, request(FindNode, sender=99, target=0), "127.0.0.1", 0.0)
    assert isinstance(reply, Nodes)
    assert [c.id for c in reply.nodes] == [1, 3]
    assert [c.id for c in lookup(engine, 0, 0.0).next_queries()] == [1, 3, 99]  # not 2
    engine.seen(Contact(2, "127.0.0.1", 4002), 1.0)
    reply = handle(engine, request(FindNode, sender=99, target=0), "127.0.0.1", 1.0)
    assert isinstance(reply, Nodes)
    assert [c.id for c in reply.nodes] == [1, 2, 3]


def _found(key: int, *items: Item) -> IterativeLookup:
    """A finished FIND_VALUE lookup for ``key`` in which the peer with id ``n`` sent
    ``items[n - 1]`` (at most alpha of them)."""
    peers = [Contact(n, "127.0.0.1", 5000 + n) for n in range(1, len(items) + 1)]
    lookup = IterativeLookup(key, peers, own_id=ALICE.node_id, find_value=True)
    for peer in lookup.next_queries():
        assert lookup.value_received(peer, items[peer.id - 1])
    assert lookup.done
    return lookup


def test_newest_picks_the_highest_sequence_and_names_the_stale_peers() -> None:
    """After a mutable get, the newest version wins and the peers with older ones are named."""
    engine = make_engine()
    v1, v2, v3 = (PUBLISHER.sign("name", b"v%d" % s, s) for s in (1, 2, 3))
    lookup = _found(v1.key, v2, v3, v1)
    best, stale = engine.newest(v1.key, lookup, 0.0, 60.0)
    assert best == v3
    assert [c.id for c in stale] == [1, 3]
    assert engine.get(v1.key, 0.0) is None  # nothing held here: nothing to repair here


def test_newest_replaces_an_older_copy_held_here() -> None:
    """Our own stale copy is replaced by the newest version found, for the ttl given."""
    engine = make_engine()
    old, new = PUBLISHER.sign("name", b"old", 1), PUBLISHER.sign("name", b"new", 2)
    engine.store(old, 3600.0, 0.0)
    best, stale = engine.newest(old.key, _found(old.key, new), 10.0, 60.0)
    assert (best, stale) == (new, [])
    assert engine.get(old.key, 10.0) == new
    assert engine.get(old.key, 70.0) is None


def test_newest_keeps_our_copy_when_it_is_the_newest() -> None:
    """When we hold a newer version than the network, ours wins and the peers are stale."""
    engine = make_engine()
    old, new = PUBLISHER.sign("name", b"old", 1), PUBLISHER.sign("name", b"new", 2)
    engine.store(new, 3600.0, 0.0)
    best, stale = engine.newest(old.key, _found(old.key, old), 10.0, 60.0)
    assert best == new
    assert [c.id for c in stale] == [1]
    assert engine.get(old.key, 100.0) == new  # our expiry is untouched


def test_newest_of_nothing_is_none() -> None:
    """No copy here and nothing found: no value and nobody to repair."""
    engine = make_engine()
    assert engine.newest(5, _found(5), 0.0, 60.0) == (None, [])


def test_item_expires() -> None:
    """An item is gone at its expiry time: find_value then answers nodes."""
    engine = make_engine()
    item = blob(b"short lived")
    handle(engine, request(Store, item=item, ttl=60.0), "127.0.0.1", 100.0)
    assert engine.get(item.key, 159.9) == item
    assert engine.get(item.key, 160.0) is None
    assert isinstance(handle(engine, request(FindValue, key=item.key), "127.0.0.1", 160.0), Nodes)


def test_ttl_is_capped() -> None:
    """A store asking for longer than MAX_TTL is kept for MAX_TTL at most."""
    engine = make_engine()
    item = blob(b"x")
    engine.store(item, MAX_TTL * 10, 0.0)
    record = engine.storage.get(item.key)
    assert record is not None
    assert record.expires_at == MAX_TTL


def test_refresh_never_shortens_life() -> None:
    """Storing the same item again extends its expiry, and a shorter ttl never shortens it."""
    engine = make_engine()
    item = blob(b"x")
    engine.store(item, 100.0, 0.0)
    engine.store(item, 10.0, 50.0)
    assert engine.storage.get(item.key).expires_at == 100.0  # type: ignore[union-attr]
    engine.store(item, 100.0, 50.0)
    assert engine.storage.get(item.key).expires_at == 150.0  # type: ignore[union-attr]


def test_newer_sequence_replaces_older() -> None:
    """A higher sequence number replaces the stored item."""
    engine = make_engine()
    engine.store(PUBLISHER.sign("n", b"one", 1), 60.0, 0.0)
    engine.store(PUBLISHER.sign("n", b"two", 2), 60.0, 0.0)
    assert engine.get(PUBLISHER.sign("n", b"", 1).key, 1.0) == PUBLISHER.sign("n", b"two", 2)


@pytest.mark.parametrize(
    ("item_seq", "value", "code"),
    [
        (1, b"older", ErrorCode.STALE_SEQUENCE),
        (2, b"same seq, other value", ErrorCode.STALE_SEQUENCE),
    ],
)
def test_stale_store_is_refused_and_keeps_the_stored_item(
    item_seq: int, value: bytes, code: ErrorCode
) -> None:
    """A stale store gets an error reply with its code, and the stored item is unchanged."""
    engine = make_engine()
    current = PUBLISHER.sign("n", b"current", 2)
    engine.store(current, 60.0, 0.0)
    stale = PUBLISHER.sign("n", value, item_seq)
    reply = handle(engine, request(Store, item=stale, ttl=60.0), "127.0.0.1", 1.0)
    assert isinstance(reply, Error)
    assert (reply.code, reply.rid) == (code, 42)
    assert engine.get(current.key, 1.0) == current


def test_expired_item_does_not_block_an_older_sequence() -> None:
    """Once an item has expired, any valid version may be stored again."""
    engine = make_engine()
    engine.store(PUBLISHER.sign("n", b"new", 5), 10.0, 0.0)
    engine.store(PUBLISHER.sign("n", b"old", 1), 10.0, 20.0)
    assert engine.get(PUBLISHER.sign("n", b"", 1).key, 21.0) == PUBLISHER.sign("n", b"old", 1)


def test_bad_signature_is_refused() -> None:
    """An item whose signature does not verify is refused with BAD_SIGNATURE and not stored."""
    engine = make_engine()
    good = PUBLISHER.sign("n", b"v", 1)
    forged = type(good)(good.value + b"!", good.public_key, good.name, good.seq, good.signature)
    reply = handle(engine, request(Store, item=forged, ttl=60.0), "127.0.0.1", 0.0)
    assert isinstance(reply, Error)
    assert reply.code == ErrorCode.BAD_SIGNATURE
    assert engine.storage.count() == 0


def test_value_too_large_is_refused() -> None:
    """An item larger than the node's max_value is refused with VALUE_TOO_LARGE."""
    engine = make_engine(max_value=10)
    with pytest.raises(ProtocolError) as caught:
        engine.store(blob(b"x" * 11), 60.0, 0.0)
    assert caught.value.code == ErrorCode.VALUE_TOO_LARGE


def test_reply_sent_as_request_is_refused() -> None:
    """A reply type arriving where a request is due gets an UNEXPECTED error reply."""
    engine = make_engine()
    reply = handle(engine, request(Pong), "127.0.0.1", 0.0)
    assert isinstance(reply, Error)
    assert reply.code == ErrorCode.UNEXPECTED


def test_full_bucket_pings_its_head_with_a_challenge() -> None:
    """When a newcomer finds its bucket full (and may not split it), the engine pings the
    bucket's head (not heard from within ``ping_after``) with an identity challenge, and the
    newcomer waits."""
    engine = make_engine(k=1)
    engine.routing.ping_after = 0.0
    top = 1 << 511
    head = ALICE.node_id ^ top  # the closest id in the half of the clock face opposite ours
    newcomer = ALICE.node_id ^ top ^ 1  # same half, farther from us
    handle(engine, request(Ping, sender=head), "127.0.0.1", 0.0)
    reply, commands = engine.request_received(request(Ping, sender=newcomer), "127.0.0.1", 1, 0.0)
    assert isinstance(reply, Pong)
    assert sent(commands) == [("ping", head)]
    (command,) = commands
    assert isinstance(command, Send)
    assert isinstance(command.request.message, Ping)
    assert command.request.message.challenge is not None
    assert newcomer not in engine.routing


def test_seen_and_failed_reach_the_routing_table() -> None:
    """seen() adds a contact (asking nothing more of the driver), peer_failed() counts
    against it."""
    engine = make_engine()
    contact = Contact(5, "127.0.0.1", 4005)
    assert engine.seen(contact, 0.0) == []
    engine.peer_failed(contact, "lost")
    entry = engine.routing.entry(5)
    assert entry is not None
    assert entry.failures == 1


def test_lookup_is_seeded_from_the_table_and_touches_the_bucket() -> None:
    """lookup() starts from the k closest known contacts and marks the bucket as looked up."""
    engine = make_engine()
    engine.seen(Contact(5, "127.0.0.1", 4005), 0.0)
    machine = lookup(engine, 5, 100.0, find_value=True)
    assert machine.find_value
    assert [c.id for c in machine.next_queries()] == [5]
    assert engine.routing.bucket_for(5).last_lookup == 100.0


def test_when_the_closest_contacts_all_fail_the_next_ones_are_asked() -> None:
    """A lookup starts from the k closest contacts, and goes on to the rest of the table as
    they fail (after a mass crash all k may be dead), instead of ending with nothing."""
    engine = make_engine(k=2)
    engine.seen(Contact(1, "127.0.0.1", 4001), 0.0)
    engine.seen(Contact(2, "127.0.0.1", 4002), 0.0)
    far = ALICE.node_id ^ 1  # next to our own id: in a bucket of its own, far from target 0
    engine.seen(Contact(far, "127.0.0.1", 4003), 0.0)
    assert len(engine.routing) == 3
    machine = lookup(engine, 0, 0.0)
    assert [c.id for c in machine.next_queries()] == [1, 2]
    for dead in (1, 2):
        machine.query_failed(Contact(dead, "127.0.0.1", 4000 + dead))
    assert [c.id for c in machine.next_queries()] == [far]
    machine.nodes_received(Contact(far, "127.0.0.1", 4003), [])
    assert machine.done
    assert [c.id for c in machine.closest()] == [far]


def test_message_fills_in_sender_and_fresh_request_ids() -> None:
    """message() stamps our id and port, and gives each request a new request id."""
    engine = make_engine()
    first, second = engine.message(Ping), engine.message(Ping)
    assert first.rid != second.rid
    assert (first.sender, first.port) == (ALICE.node_id, 4000)
    assert engine.message(Pong, 9).rid == 9


@pytest.mark.parametrize(("k", "alpha"), [(0, 3), (65, 3), (20, 0)])
def test_bad_parameters_are_refused(k: int, alpha: int) -> None:
    """k outside 1..64 (what a nodes reply may carry) or alpha below 1 raises ValueError."""
    with pytest.raises(ValueError, match=r"(k|alpha) must be"):
        Engine(ALICE, MemoryStorage(), now=0.0, k=k, alpha=alpha)


def test_handoff_goes_to_a_newcomer_among_the_k_closest_when_we_are_closest() -> None:
    """A new contact gets the records it is now among the k closest to, if we hold them best."""
    engine = make_engine(k=2)
    item = blob(b"held")
    engine.store(item, 60.0, 0.0)
    key = item.key
    newcomer = Contact(key ^ 1, "127.0.0.1", 4100)
    commands = engine.seen(newcomer, 1.0)
    assert sent(commands) == [("store", newcomer.id)]
    (command,) = commands
    assert isinstance(command, Send)
    assert isinstance(command.request.message, Store)
    assert (command.request.message.item, command.request.message.ttl) == (item, 59.0)
    # Seen again, it is not new: nothing to hand off.
    assert engine.seen(newcomer, 2.0) == []


def handed_off(engine: Engine, newcomer: Contact) -> list[Item]:
    """The records ``engine``'s running handoffs copy to ``newcomer`` (a few at a time: the
    commands hold the first)."""
    return [
        record.item
        for op in engine.running()
        if isinstance(op, Handoff) and op.contact == newcomer
        for record in op.records
    ]


class _CountingStorage(MemoryStorage):
    """A ``MemoryStorage`` that counts the records it builds for the engine."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = self.scans = 0

    def get(self, key: int) -> StoredItem | None:
        self.gets += 1
        return super().get(key)

    def records(self) -> Iterator[StoredItem]:
        self.scans += 1
        return super().records()


def test_a_newcomer_costs_a_record_read_only_for_each_record_handed_off() -> None:
    """Deciding what a newcomer gets scans keys and expiry times (``expiries``): of the 200
    records held, only those handed off are read as records."""
    storage = _CountingStorage()
    engine = Engine(ALICE, storage, now=0.0)
    engine.port = 4000
    rng = random.Random(5)
    for n in range(20):
        engine.seen(Contact(rng.getrandbits(512), "127.0.0.1", 5000 + n), 0.0)
    known = [c.id for c in engine.routing.contacts()]
    items = [blob(b"%d" % n) for n in range(200)]
    for item in items:
        engine.store(item, 60.0, 0.0)
    # A record no known contact is nearer than us, whose key the newcomer is next to.
    ours = next(i for i in items if all(c ^ i.key > ALICE.node_id ^ i.key for c in known))
    storage.gets = storage.scans = 0
    newcomer = Contact(ours.key ^ 1, "127.0.0.1", 4100)
    commands = engine.seen(newcomer, 1.0)
    assert {to for _, to in sent(commands)} == {newcomer.id}
    handed = handed_off(engine, newcomer)
    assert ours in handed
    assert len(handed) < 50  # the records we hold best: about 200 / 21 of them
    assert (storage.gets, storage.scans) == (len(handed), 0)


def test_an_expire_pass_reads_only_the_records_it_drops() -> None:
    """An expire pass finds what goes by keys and expiry times (``expiries``) and reads only
    those records, for their publishers' counts: not every record held."""
    storage = _CountingStorage()
    engine = Engine(ALICE, storage, now=0.0)
    for n in range(200):
        engine.store(blob(b"%d" % n), 60.0 if n % 70 else 30.0, 0.0)
    storage.gets = storage.scans = 0
    assert engine.expire(30.0) == 3
    assert (storage.gets, storage.scans, storage.count()) == (3, 0, 197)


def test_an_expire_pass_forgets_who_replicates_the_keys_it_drops() -> None:
    """What the engine keeps per key for the replication rule goes with the record: a peer
    that stores many items for a second, marked ``replica``, no longer leaves an entry per key
    for two days (10,000 stores were 10,000 entries after their items were gone). A key still
    held keeps its entry, and the rule still skips it."""
    unlimited = Limits(peer_rate=1e12, peer_burst=1e12, global_rate=1e12, global_burst=1e12)
    engine = Engine(ALICE, MemoryStorage(), now=0.0, limits=unlimited)
    short = [blob(b"short %d" % n) for n in range(1000)]
    kept = blob(b"kept")
    for item in [*short, kept]:
        ttl = 3600.0 if item is kept else 1.0
        handle(engine, request(Store, item=item, ttl=ttl, replica=True), "10.0.0.7", 0.0)
    assert engine.expire(2.0) == len(short)
    assert list(engine._stored_at) == [kept.key]
    assert engine.replication_jobs(10.0, fresh=3600.0) == []


PEER = PUBLISHER.node_id


def test_replication_reads_only_the_records_it_replicates() -> None:
    """A replication round picks its keys by keys and expiry times (``expiries``) and reads
    only the records it stores again: not those a peer re-stored lately, nor expired ones."""
    storage = _CountingStorage()
    engine = Engine(ALICE, storage, now=0.0)
    engine.port = 4000
    items = [blob(b"%d" % n) for n in range(200)]
    for n, item in enumerate(items):
        engine.store(item, 5.0 if n % 50 == 1 else 60.0, 0.0)
    for rid, item in enumerate(items[::2], 1):  # a peer's replication store, just now
        again = Store(rid=rid, sender=PEER, port=4001, item=item, ttl=60.0, replica=True)
        reply, _ = engine.request_received(again, "127.0.0.1", 4001, 9.0)
        assert isinstance(reply, Ok)
    storage.gets = storage.scans = 0
    jobs = engine.replication_jobs(10.0, fresh=30.0)
    assert PEER in engine.routing
    expected = {i for n, i in enumerate(items) if n % 2 and n % 50 != 1}
    assert {item for item, _ in jobs} == expected
    assert all(left == 50.0 for _, left in jobs)
    assert (storage.gets, storage.scans) == (len(expected), 0)


def test_no_handoff_when_another_known_node_is_closer_than_us() -> None:
    """When a known contact is closer to the key than we are, it does the handing off."""
    engine = make_engine(k=3)
    item = blob(b"held")
    engine.store(item, 60.0, 0.0)
    assert sent(engine.seen(Contact(item.key ^ 1, "127.0.0.1", 4100), 0.0)) == [
        ("store", item.key ^ 1)
    ]
    assert engine.seen(Contact(item.key ^ 2, "127.0.0.1", 4101), 0.0) == []


def test_handoff_to_a_newcomer_alone_in_a_bucket_away_from_us() -> None:
    """A newcomer alone in a bucket that does not cover our id (its contacts were dropped) is
    handed the records there that we hold best: the bucket's contacts are nearer its keys than
    we are, but the newcomer is the only one, and it is not another holder."""
    engine = make_engine(k=2)
    own = engine.id
    # Two contacts in each of the buckets at distances 2**511, 2**510 and 2**509 from us,
    # and two in ours (at 2**508), which splits the table down to the 2**509 bucket.
    for n, bit in enumerate((511, 511, 510, 510, 509, 509, 508, 508)):
        engine.seen(Contact(own ^ (1 << bit) ^ n, "127.0.0.1", 5000 + n), 0.0)
    n, item = 0, blob(b"0")
    # A key in the 2**509 bucket, on our side of the 2**508 contacts (they are further).
    while (item.key ^ own) >> 508 != 2 and n < 10_000:
        n += 1
        item = blob(b"%d" % n)
    engine.store(item, 600.0, 0.0)
    bucket = engine.routing.bucket_for(item.key)
    assert not bucket.covers(own)
    for ident in list(bucket.entries):
        engine.routing.remove(ident)
    newcomer = Contact(item.key ^ 1, "127.0.0.1", 6000)
    assert sent(engine.seen(newcomer, 1.0)) == [("store", newcomer.id)]
    assert list(bucket.entries) == [newcomer.id]


def test_no_handoff_of_expired_records_or_to_far_newcomers() -> None:
    """Expired records are never handed off, nor records the newcomer is not near."""
    engine = make_engine(k=1)
    item = blob(b"held")
    engine.store(item, 60.0, 0.0)
    far = Contact(item.key ^ ALICE.node_id ^ (1 << 511), "127.0.0.1", 4100)
    assert far.id ^ item.key > ALICE.node_id ^ item.key
    assert engine.seen(far, 1.0) == []
    engine.routing.remove(far.id)
    near = Contact(item.key ^ 1, "127.0.0.1", 4101)
    assert engine.seen(near, 61.0) == []


def test_a_get_asks_its_nearest_contact_alone_where_the_table_says_it_holds_the_key() -> None:
    """``holders_within``: half of k / n of the id space, n the table's measured size (none
    below k live contacts), worked out at most once a second. A FIND_VALUE whose nearest
    contact is that near the key asks it alone first; one whose nearest is further, a
    FIND_NODE, and every lookup while the size cannot be measured, ask alpha at once."""
    engine = make_engine(k=4)
    own, spacing = engine.id, (1 << 512) // 1000  # contacts spaced as in a 1000-node network

    def first_queries(target: int, find_value: bool = True) -> int:
        return len(engine.lookup_machine(target, find_value).next_queries())

    for i in range(1, 4):
        engine.routing.seen(Contact(own ^ (i * spacing), "127.0.0.1", 5000 + i), 0.0)
    assert engine.holders_within() is None  # 3 live contacts: k = 4 needed to measure
    beside = own ^ spacing ^ 1  # one away from a contact
    assert first_queries(beside) == 3
    engine.routing.seen(Contact(own ^ (4 * spacing), "127.0.0.1", 5004), 0.0)
    assert engine.holders_within() is None  # worked out at time 0 already: until 1 s
    engine.now = 1.0
    size = engine.routing.measured_size()
    assert size == 1 + round(3 * (1 << 512) / (4 * spacing))  # about 750
    within = engine.holders_within()
    assert within == (4 << 511) // size
    assert first_queries(beside) == 1
    assert first_queries(beside, find_value=False) == 3  # a FIND_NODE asks the k closest
    far = own ^ (1 << 511)
    assert first_queries(far) == 3  # every contact is about half the space away
    engine.routing.seen(Contact(far ^ 1, "127.0.0.1", 5005), 1.0)  # a contact beside it
    assert first_queries(far) == 1
    for _ in range(2):
        engine.routing.failed(far ^ 1)  # it looks dead now: never asked
    engine.now = 1.5
    assert engine.holders_within() == within  # the same second's figure
    assert first_queries(far) == 3
    disjoint = Engine(ALICE, MemoryStorage(), now=5.0, k=4, paths=2)
    for i in range(1, 9):
        disjoint.routing.seen(Contact(own ^ (i * spacing), "127.0.0.1", 5000 + i), 0.0)
    machine = disjoint.lookup_machine(beside, find_value=True)
    assert len(machine.next_queries()) == 2 * 3  # each path its alpha: no path goes alone


def test_lookups_take_the_engines_number_of_paths() -> None:
    """paths=1 is a plain lookup, more is a DisjointLookup of that many paths; fewer than one
    is refused."""
    assert isinstance(make_engine().lookup_machine(5), IterativeLookup)
    machine = Engine(ALICE, MemoryStorage(), now=0.0, paths=3).lookup_machine(5)
    assert isinstance(machine, DisjointLookup)
    assert len(machine.paths) == 3
    with pytest.raises(
        ValueError, match=r"paths \(disjoint paths a lookup takes\) must be at least 1"
    ):
        Engine(ALICE, MemoryStorage(), now=0.0, paths=0)


def test_a_store_marked_closest_is_answered_with_the_closest_contacts() -> None:
    """A store that is also a put's lookup query (``closest``) gets an ``ok`` naming the k
    closest live contacts to the item's key but the asker, as a find_node's ``nodes``
    would; a plain store's ``ok`` names nobody."""
    engine = make_engine(k=3)
    for i in range(10):
        engine.seen(Contact(1000 + i, "127.0.0.1", 5000 + i), 0.0)
    item = blob(b"asked")
    asker = 1003
    reply = handle(
        engine, request(Store, sender=asker, item=item, ttl=60.0, closest=True), "127.0.0.1", 0.0
    )
    nodes = handle(engine, request(FindNode, sender=asker, target=item.key), "127.0.0.1", 0.0)
    assert isinstance(reply, Ok)
    assert isinstance(nodes, Nodes)
    assert reply.nodes == nodes.nodes
    assert len(reply.nodes) == 3
    assert asker not in {c.id for c in reply.nodes}
    assert engine.get(item.key, 0.0) == item
    plain = handle(engine, request(Store, sender=asker, item=item, ttl=60.0), "127.0.0.1", 0.0)
    assert isinstance(plain, Ok)
    assert plain.nodes == ()


@pytest.mark.parametrize("asker_rank", [0, 2, None])
def test_a_store_query_counts_the_asker_for_the_nearest_holder_and_leaves_it_out_of_the_reply(
    asker_rank: int | None,
) -> None:
    """The store query's one pass over the table serves both of its uses: the reply names the
    k closest live contacts but the asker (wherever the asker ranks, or when it is not in the
    table), and this node is the nearest holder (replicating at its first round) only if no
    live contact, the asker included, is nearer the key: with six nearer, with one (the asker
    or another) and with none."""
    item = blob(b"ranked")
    key = item.key
    for nearer in (6, 1, 0):
        engine = make_engine(k=3)
        own_nearest = not nearer
        # Six contacts: the first ``nearer`` of them at distances 1, 2... from the key, the
        # rest beyond this node's own distance (with none nearer, this node is the nearest
        # holder; with one, the asker or another, it is not).
        beyond = (engine.id ^ key) | (1 << 510)
        ids = [key ^ (d if d <= nearer else beyond + d) for d in range(1, 7)]
        for n, ident in enumerate(ids):
            if n != asker_rank:
                engine.seen(Contact(ident, "127.0.0.1", 5000 + n), 0.0)
        asker = ids[asker_rank] if asker_rank is not None else key ^ (beyond + 100)
        if asker_rank is not None:
            engine.seen(Contact(asker, "127.0.0.1", 4999), 0.0)
        reply = store_query(engine, item, asker, port=4999)
        assert [c.id for c in reply.nodes] == [i for i in ids if i != asker][:3]
        assert engine.nearest(key) is own_nearest
        assert replicated_first(engine) == ([item] if own_nearest else [])


def store_query(engine: Engine, item: Item, asker: int, port: int) -> Ok:
    """The ``ok`` of a put's store query (``closest``) of ``item`` from ``asker``."""
    reply = handle(
        engine,
        request(Store, sender=asker, port=port, item=item, ttl=60.0, closest=True),
        "127.0.0.1",
        0.0,
    )
    assert isinstance(reply, Ok)
    return reply


def replicated_first(engine: Engine) -> list[Item]:
    """The items this node replicates at its next round though a peer stored them just now:
    those it took as their nearest holder."""
    return [i for i, _ in engine.replication_jobs(10.0, fresh=3600.0)]


@pytest.mark.parametrize("failures", [0, 2])
def test_a_store_query_counts_the_asker_for_the_nearest_holder_only_while_it_looks_alive(
    failures: int,
) -> None:
    """The asker counts for the nearest holder as any contact of the table would: when it is
    the only one (and nearer the key than this node), this node is not the nearest holder;
    when it looks dead (its last two requests failed, and this store, sent from port 0, does
    not count as hearing from it), it does not count, as no dead contact does. Either way it
    is not in the reply, which here names nobody."""
    item = blob(b"lonely")
    engine = make_engine(k=3)
    asker = item.key ^ 1  # nearer the key than this node
    engine.seen(Contact(asker, "127.0.0.1", 4999), 0.0)
    for _ in range(failures):
        engine.routing.failed(asker)
    assert asker in engine.routing
    assert (engine.routing.live(asker) is None) is bool(failures)
    reply = store_query(engine, item, asker, port=0)
    assert reply.nodes == ()
    own_nearest = bool(failures)
    assert replicated_first(engine) == ([item] if own_nearest else [])


def test_handoff_picks_the_records_the_rule_names_in_a_split_table() -> None:
    """In a table of many buckets, a newcomer is handed exactly the records the rule names:
    this node is nearer the key than every contact but the newcomer, and the newcomer is among
    the k closest (this node counted). Worked out here by sorting every contact, for records
    near and far from this node's id and newcomers near and far from the keys."""
    rng, handed_in_all = random.Random(5), 0
    for trial in range(6):
        engine = make_engine(k=4)
        own = engine.id
        for n in range(60):
            # Ids near this node's (sharing 1 to 6 leading bits) and anywhere, so that the
            # table splits into several buckets.
            shared = rng.randrange(1, 7)
            near = own ^ (1 << (511 - shared)) ^ rng.getrandbits(511 - shared)
            ident = near if n % 2 else rng.getrandbits(512)
            engine.seen(Contact(ident, "127.0.0.1", 6000 + n), 0.0)
        items: list[Item] = []
        n = 0
        while len(items) < 40 and n < 100_000:
            # Half of the records with keys sharing 8 leading bits with this node's id (it is
            # the nearest holder of some of those), half anywhere.
            item, n = blob(b"record %d %d" % (trial, n)), n + 1
            if len(items) % 2 or (item.key ^ own) >> 504 == 0:
                items.append(item)
                engine.store(item, 600.0, 0.0)
        # The half of the id space away from this node's id emptied (its contacts and their
        # replacements dropped), and a record there: a newcomer next to its key is alone in
        # its bucket, and contacts on this node's side may still be nearer the key than it.
        far = engine.routing.bucket_for(own ^ (1 << 511))
        while far.entries:
            engine.routing.remove(next(iter(far.entries)))
        while n < 200_000 and not far.covers(items[-1].key):
            item, n = blob(b"record %d %d" % (trial, n)), n + 1
            if far.covers(item.key):
                items.append(item)
                engine.store(item, 600.0, 0.0)
        # A newcomer near one record's key (or near this node, or anywhere).
        newcomers = [items[-1].key ^ 1, items[trial].key ^ rng.getrandbits(500)]
        newcomers += [own ^ rng.getrandbits(505), rng.getrandbits(512)]
        for m, ident in enumerate(newcomers):
            contacts = [c.id for c in engine.routing.contacts()]
            expected = set()
            for item in items:
                key = item.key
                mine, theirs = own ^ key, ident ^ key
                others = sorted(c ^ key for c in contacts if c != ident)
                if others and others[0] < mine:
                    continue
                if (mine < theirs) + sum(1 for d in others if d < theirs) < 4:
                    expected.add(key)
            newcomer = Contact(ident, "127.0.0.1", 7000 + 10 * trial + m)
            if ident in engine.routing:
                continue
            commands = engine.seen(newcomer, 1.0)
            assert {to for _, to in sent(commands)} <= {newcomer.id}
            handed = {item.key for item in handed_off(engine, newcomer)}
            assert handed == expected
            handed_in_all += len(handed)
        assert len(engine.routing.buckets) > 4
    assert handed_in_all > 6
