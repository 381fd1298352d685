"""Tests for txdht.core.lookup: the iterative lookup state machine, by hand and on a toy network."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest

from txdht.core.errors import ErrorCode
from txdht.core.ids import MAX_ID, Contact, closest
from txdht.core.items import Identity, Item, blob
from txdht.core.lookup import ALPHA, DisjointLookup, IterativeLookup
from txdht.core.routing import K

#: Our own id in the hand-driven tests: as far as can be from target 0.
OWN = MAX_ID
OWNER = Identity.from_private_bytes(bytes(32))
FORGER = Identity.from_private_bytes(bytes([1]) * 32)
ITEM = OWNER.sign("profile", b"hello", 3)


def c(ident: int) -> Contact:
    """A contact with id ``ident`` and an address derived from it."""
    return Contact(ident, "192.0.2.1", 1000 + ident % 60000)


def cs(*idents: int) -> list[Contact]:
    """Contacts with the given ids, in that order."""
    return [c(i) for i in idents]


def near(target: int, *distances: int) -> list[Contact]:
    """Contacts at the given XOR distances from ``target``, in that order."""
    return [c(target ^ d) for d in distances]


def finished(lookup: IterativeLookup) -> bool:
    """``lookup.done``, read through a call so the type checker does not narrow it."""
    return lookup.done


def found(lookup: IterativeLookup) -> Item | None:
    """``lookup.value``, read through a call so the type checker does not narrow it."""
    return lookup.value


def test_defaults() -> None:
    """A lookup defaults to FIND_NODE with the paper's k and alpha and has sent nothing."""
    lookup = IterativeLookup(0, cs(1), own_id=OWN)
    assert (lookup.target, lookup.own_id, lookup.k, lookup.alpha) == (0, OWN, K, ALPHA)
    assert (ALPHA, K) == (3, 20)
    assert not lookup.find_value
    assert found(lookup) is None
    assert lookup.bad_values == []
    assert lookup.queries == 0
    assert not finished(lookup)
    assert lookup.closest() == []


def test_at_most_alpha_in_flight_nearest_first() -> None:
    """The first queries are the alpha seeds nearest the target, and no more until one ends."""
    lookup = IterativeLookup(0, cs(9, 3, 7, 1, 5), own_id=OWN, k=5, alpha=3)
    assert lookup.next_queries() == cs(1, 3, 5)
    assert lookup.next_queries() == []
    assert lookup.queries == 3
    assert not finished(lookup)


def test_one_answer_releases_exactly_one_query() -> None:
    """When one peer answers, one new query leaves at once though the others are still out."""
    lookup = IterativeLookup(0, cs(9, 3, 7, 1, 5), own_id=OWN, k=4, alpha=3)
    assert lookup.next_queries() == cs(1, 3, 5)
    lookup.nodes_received(c(3), cs(8, 2))
    # 2 arrived and is nearer than 7 and 9: it goes next, alone, while 1 and 5 are in flight.
    assert lookup.next_queries() == cs(2)
    assert lookup.next_queries() == []
    lookup.query_failed(c(5))
    # 5 failed: it leaves the shortlist of 4 and lets 7 in.
    assert lookup.next_queries() == cs(7)
    assert lookup.queries == 5


def test_terminates_when_the_k_closest_live_contacts_answered() -> None:
    """The lookup ends once the k closest non-failed contacts all answered, not before."""
    lookup = IterativeLookup(0, cs(9, 3, 7, 1, 5), own_id=OWN, k=4, alpha=3)
    lookup.next_queries()
    lookup.nodes_received(c(3), cs(8, 2))
    lookup.next_queries()
    lookup.query_failed(c(5))
    lookup.next_queries()
    lookup.nodes_received(c(1), [])
    lookup.nodes_received(c(2), cs(1, 3))
    assert not finished(lookup)  # 7 is still in flight
    assert lookup.next_queries() == []
    lookup.nodes_received(c(7), cs(9))
    assert finished(lookup)
    assert lookup.next_queries() == []
    # 8 and 9 are farther than the 4 that answered: never asked.
    assert lookup.closest() == cs(1, 2, 3, 7)
    assert lookup.queries == 5


def test_an_answer_says_how_many_of_its_contacts_are_new() -> None:
    """``nodes_received`` returns how many contacts the answer added to the lookup: not those
    it knew (a seed, one named before, itself), and none for an answer it does not take (a
    second one from the same peer, or one from a peer it never asked). A put's lookup stops
    asking its store queries for contacts at the first answer of k contacts that adds none."""
    lookup = IterativeLookup(0, cs(9, 3, 7, 1, 5), own_id=OWN, k=5, alpha=3)
    lookup.next_queries()  # 1, 3 and 5
    assert lookup.nodes_received(c(3), cs(8, 2, 9, 8)) == 2  # 9 was a seed; 8 twice
    assert lookup.nodes_received(c(1), cs(2, 3, OWN)) == 0
    assert lookup.nodes_received(c(1), cs(4)) == 0  # it answered already
    assert lookup.nodes_received(c(6), cs(4)) == 0  # never asked
    assert lookup.nodes_received(c(5), cs(4, 6)) == 2
    paths = DisjointLookup(0, cs(1, 2), OWN, 2, k=2, alpha=1)
    assert paths.next_queries() == cs(1, 2)
    assert paths.nodes_received(c(2), cs(3, 1)) == 2  # new to its path (1: the other's seed)
    assert paths.nodes_received(c(1), cs(3, 2)) == 2
    assert paths.nodes_received(c(3), cs(4)) == 0  # no path asked it yet


def test_not_done_while_a_shortlist_contact_was_not_asked() -> None:
    """With nothing in flight the lookup still goes on while a shortlist contact was not asked."""
    lookup = IterativeLookup(0, cs(2, 1), own_id=OWN, k=3, alpha=1)
    assert lookup.next_queries() == cs(1)
    lookup.nodes_received(c(1), [])
    assert not finished(lookup)
    assert lookup.next_queries() == cs(2)
    lookup.nodes_received(c(2), cs(4))
    assert not finished(lookup)
    assert lookup.next_queries() == cs(4)
    lookup.nodes_received(c(4), [])
    assert finished(lookup)
    assert lookup.closest() == cs(1, 2, 4)


def test_a_failed_contact_frees_its_shortlist_slot() -> None:
    """A failure drops a contact from the shortlist so the next closest is asked and counted."""
    lookup = IterativeLookup(0, cs(1, 2, 3, 4), own_id=OWN, k=2, alpha=2)
    assert lookup.next_queries() == cs(1, 2)
    lookup.nodes_received(c(2), [])
    assert lookup.next_queries() == []  # 3 is not in the shortlist of 2 yet
    lookup.query_failed(c(1))
    assert lookup.next_queries() == cs(3)
    lookup.query_failed(c(3))
    assert lookup.next_queries() == cs(4)
    lookup.nodes_received(c(4), [])
    assert finished(lookup)
    assert lookup.closest() == cs(2, 4)


def test_every_contact_failing_ends_the_lookup_empty() -> None:
    """When every contact fails the lookup ends with no result."""
    lookup = IterativeLookup(0, cs(1, 2), own_id=OWN)
    assert lookup.next_queries() == cs(1, 2)
    lookup.query_failed(c(1))
    assert not finished(lookup)
    lookup.query_failed(c(2))
    assert finished(lookup)
    assert lookup.closest() == []


def test_done_with_no_seeds() -> None:
    """A lookup with no seeds is over before it starts."""
    lookup = IterativeLookup(0, [], own_id=OWN)
    assert finished(lookup)
    assert lookup.next_queries() == []
    assert lookup.queries == 0
    assert lookup.closest() == []


def test_own_id_is_never_queried() -> None:
    """Our own id, seeded or returned by a peer, is never asked nor in the result."""
    lookup = IterativeLookup(0, cs(1, 5), own_id=1, k=3)
    assert lookup.next_queries() == cs(5)
    lookup.nodes_received(c(5), cs(1, 3))
    assert lookup.next_queries() == cs(3)
    lookup.nodes_received(c(3), cs(1))
    assert finished(lookup)
    assert lookup.closest() == cs(3, 5)
    only_me = IterativeLookup(0, cs(1), own_id=1)
    assert finished(only_me)
    assert only_me.next_queries() == []


def test_duplicate_contacts_are_ignored() -> None:
    """A contact heard of twice is kept once, with its first address, and asked once."""
    moved = Contact(2, "198.51.100.7", 9)
    lookup = IterativeLookup(0, [c(1), c(2), c(1), moved], own_id=OWN, alpha=5)
    assert lookup.next_queries() == cs(1, 2)
    lookup.nodes_received(c(1), [c(1), moved, c(2), c(3)])
    assert lookup.next_queries() == cs(3)
    lookup.nodes_received(c(2), cs(1, 2, 3))
    lookup.nodes_received(c(3), cs(1, 2, 3))
    assert finished(lookup)
    assert lookup.queries == 3
    assert lookup.closest() == cs(1, 2, 3)
    assert lookup.closest()[1].host == "192.0.2.1"


def test_events_about_contacts_not_in_flight_are_ignored() -> None:
    """Replies from peers never asked, late replies and repeated events change nothing."""
    lookup = IterativeLookup(0, cs(4, 5, 6), own_id=OWN, k=3, alpha=1)
    assert lookup.next_queries() == cs(4)
    # A stranger and a contact not asked yet: their contacts are not taken.
    lookup.nodes_received(c(99), cs(1))
    lookup.nodes_received(c(5), cs(2))
    assert not lookup.value_received(c(6), ITEM)
    assert found(lookup) is None
    assert lookup.next_queries() == []  # 4 is still the one in flight
    lookup.query_failed(c(4))
    lookup.query_failed(c(4))  # a second failure of the same query
    lookup.nodes_received(c(4), cs(3))  # a late reply after the timeout
    assert not lookup.value_received(c(4), blob(b"late"))
    assert lookup.bad_values == []
    assert lookup.next_queries() == cs(5)  # 5 was never asked, so it is asked now
    lookup.nodes_received(c(5), [])
    lookup.nodes_received(c(5), cs(1))  # a duplicate reply
    lookup.query_failed(c(5))  # and a failure after the answer
    lookup.query_failed(c(99))  # and a failure of a stranger
    assert lookup.next_queries() == cs(6)
    lookup.nodes_received(c(6), [])
    assert finished(lookup)
    assert lookup.closest() == cs(5, 6)
    assert lookup.queries == 3


BLOB = blob(b"some data")


def test_find_value_ends_at_the_first_blob_that_verifies() -> None:
    """A blob that verifies against the key ends a FIND_VALUE lookup: a blob never changes."""
    target = BLOB.key
    lookup = IterativeLookup(target, near(target, 1, 2, 3, 4), own_id=OWN, find_value=True)
    assert lookup.find_value
    assert lookup.next_queries() == near(target, 1, 2, 3)
    lookup.nodes_received(near(target, 1)[0], near(target, 5))
    assert not finished(lookup)
    assert lookup.value_received(near(target, 2)[0], BLOB)
    assert lookup.value is BLOB
    assert finished(lookup)
    assert lookup.next_queries() == []
    assert lookup.bad_values == []
    assert lookup.queries == 3
    assert lookup.closest() == near(target, 1, 2)


def test_a_late_copy_of_the_blob_changes_nothing() -> None:
    """A copy of the blob from a peer still in flight when the lookup ended is the same value."""
    target = BLOB.key
    lookup = IterativeLookup(target, near(target, 1, 2), own_id=OWN, find_value=True)
    lookup.next_queries()
    assert lookup.value_received(near(target, 1)[0], BLOB)
    assert finished(lookup)
    assert lookup.value_received(near(target, 2)[0], blob(b"some data"))
    assert found(lookup) is BLOB


def test_a_mutable_value_does_not_end_the_lookup_and_the_newest_wins() -> None:
    """FIND_VALUE for a mutable item asks the whole shortlist and keeps the highest sequence."""
    target = ITEM.key
    older, newer = OWNER.sign("profile", b"old", 2), OWNER.sign("profile", b"new", 4)
    lookup = IterativeLookup(target, near(target, 1, 2, 3, 4), own_id=OWN, k=3, find_value=True)
    first, second, third = lookup.next_queries()
    assert lookup.value_received(first, ITEM)
    assert not finished(lookup)  # someone closer may hold a newer version
    assert lookup.value_received(second, newer)
    assert lookup.value_received(third, older)
    assert found(lookup) is newer
    assert [item for _, item in lookup.found] == [ITEM, newer, older]
    assert finished(lookup)
    assert lookup.next_queries() == []
    assert lookup.queries == 3


def test_a_find_value_asks_a_nearest_candidate_within_reach_alone_first() -> None:
    """``alone_within``: when the nearest candidate is nearer the target than that, the first
    query goes alone; a blob from it ends the lookup with one query. A candidate further out
    than that gets the usual alpha queries at once."""
    target = BLOB.key
    seeds = near(target, 1, 2, 3, 4)
    lookup = IterativeLookup(target, seeds, own_id=OWN, find_value=True, alone_within=2)
    assert lookup.next_queries() == seeds[:1]
    assert lookup.next_queries() == []  # still alone while it is out
    assert lookup.value_received(seeds[0], BLOB)
    assert finished(lookup)
    assert lookup.queries == 1
    far = IterativeLookup(target, seeds, own_id=OWN, find_value=True, alone_within=1)
    assert far.next_queries() == seeds[:3]  # distance 1 is not nearer than 1
    default = IterativeLookup(target, seeds, own_id=OWN, find_value=True)
    assert default.next_queries() == seeds[:3]


@pytest.mark.parametrize("event", ["nodes", "mutable", "forged", "failed", "slow"])
def test_any_event_about_the_lone_query_opens_the_lookup_to_alpha(event: str) -> None:
    """Whatever becomes of the first query (an answer without the value, a mutable item
    (a newer version may be nearer), a forgery, a failure, a slow deadline), the lookup then
    sends alpha queries at once, as it would have from the start."""
    target = ITEM.key if event == "mutable" else BLOB.key
    seeds = near(target, 1, 2, 3, 4, 5)
    lookup = IterativeLookup(target, seeds, own_id=OWN, find_value=True, alone_within=1 << 500)
    (first,) = lookup.next_queries()
    if event == "nodes":
        lookup.nodes_received(first, [])
    elif event == "mutable":
        assert lookup.value_received(first, ITEM)
    elif event == "forged":
        assert not lookup.value_received(first, blob(b"not the data"))
    elif event == "failed":
        lookup.query_failed(first)
    else:
        assert lookup.query_slow(first)  # one of the k closest: retried, and waited for
    assert lookup.next_queries() == seeds[1:4]
    assert not finished(lookup)


def test_an_empty_lookup_with_alone_within_asks_nobody() -> None:
    """No candidate at all: nothing to ask, alone or not."""
    lookup = IterativeLookup(5, (), own_id=OWN, find_value=True, alone_within=1 << 500)
    assert lookup.next_queries() == []
    assert finished(lookup)


def test_equal_versions_keep_the_first_received() -> None:
    """Two copies of the same version: the first one received is the value."""
    target = ITEM.key
    lookup = IterativeLookup(target, near(target, 1, 2), own_id=OWN, find_value=True)
    first, second = lookup.next_queries()
    same = OWNER.sign("profile", b"hello", 3)
    assert lookup.value_received(first, ITEM)
    assert lookup.value_received(second, same)
    assert found(lookup) is ITEM
    assert finished(lookup)


def test_a_query_left_outside_the_shortlist_does_not_hold_the_lookup() -> None:
    """Once closer contacts have all answered, a slow query to a farther one is not waited for."""
    lookup = IterativeLookup(0, cs(8, 9), own_id=OWN, k=2, alpha=2)
    assert lookup.next_queries() == cs(8, 9)
    lookup.nodes_received(c(8), cs(1, 2))
    assert lookup.next_queries() == cs(1)
    lookup.nodes_received(c(1), [])
    assert lookup.next_queries() == cs(2)
    lookup.nodes_received(c(2), [])
    # 9 is still in flight, but the two closest (1 and 2) have answered.
    assert finished(lookup)
    assert lookup.closest() == cs(1, 2)


def test_find_value_accepts_a_blob_under_its_hash() -> None:
    """A blob whose sha512 is the target verifies and ends the lookup."""
    item = blob(b"some data")
    lookup = IterativeLookup(item.key, near(item.key, 7), own_id=OWN, find_value=True)
    (peer,) = lookup.next_queries()
    assert lookup.value_received(peer, item)
    assert lookup.value == item
    assert finished(lookup)


@pytest.mark.parametrize(
    ("forged", "code"),
    [
        (FORGER.sign("profile", b"hello", 3), ErrorCode.KEY_MISMATCH),
        (replace(ITEM, signature=bytes(64)), ErrorCode.BAD_SIGNATURE),
        (replace(ITEM, value=b"tampered"), ErrorCode.BAD_SIGNATURE),
        (replace(ITEM, seq=4), ErrorCode.BAD_SIGNATURE),
        (blob(b"hello"), ErrorCode.KEY_MISMATCH),
    ],
)
def test_forged_value_fails_the_peer_and_the_lookup_goes_on(forged: Item, code: ErrorCode) -> None:
    """A value that does not verify is recorded, fails its sender, and the next peer is asked."""
    target = ITEM.key
    lookup = IterativeLookup(
        target, near(target, 1, 2, 3, 4), own_id=OWN, k=3, alpha=2, find_value=True
    )
    first, second = lookup.next_queries()
    assert not lookup.value_received(first, forged)
    assert found(lookup) is None
    assert not finished(lookup)
    ((peer, error),) = lookup.bad_values
    assert peer == first
    assert error.code == code
    # The liar failed: it left the shortlist and the next closest is asked in its place.
    assert lookup.next_queries() == near(target, 3)
    assert not lookup.value_received(first, ITEM)  # it is not in flight any more
    lookup.nodes_received(second, [])
    assert lookup.value_received(near(target, 3)[0], ITEM)
    assert lookup.value is ITEM
    assert not finished(lookup)  # a mutable item: the rest of the shortlist is asked
    assert lookup.next_queries() == near(target, 4)
    lookup.nodes_received(near(target, 4)[0], [])
    assert finished(lookup)
    assert lookup.closest() == near(target, 2, 3, 4)
    assert lookup.queries == 4


def test_find_value_without_a_value_behaves_like_find_node() -> None:
    """When nobody has the value, FIND_VALUE ends like FIND_NODE with the closest that answered."""
    target = ITEM.key
    lookup = IterativeLookup(target, near(target, 8, 9), own_id=OWN, k=2, find_value=True)
    for peer in lookup.next_queries():
        lookup.nodes_received(peer, near(target, 1))
    assert lookup.next_queries() == near(target, 1)
    lookup.nodes_received(near(target, 1)[0], [])
    assert finished(lookup)
    assert found(lookup) is None
    assert lookup.closest() == near(target, 1, 8)


def test_closest_is_the_k_nearest_that_answered() -> None:
    """closest() lists only answered contacts, the k nearest, nearest first."""
    lookup = IterativeLookup(0, cs(6, 4, 2, 1, 3), own_id=OWN, k=3, alpha=5)
    assert lookup.next_queries() == cs(1, 2, 3)
    lookup.nodes_received(c(3), [])
    lookup.query_failed(c(1))
    assert lookup.closest() == cs(3)
    assert lookup.next_queries() == cs(4)
    lookup.nodes_received(c(4), [])
    lookup.nodes_received(c(2), [])
    assert finished(lookup)
    assert lookup.closest() == cs(2, 3, 4)
    assert lookup.queries == 4


def simulate(
    network: dict[int, set[int]],
    start: int,
    target: int,
    rng: random.Random,
    dead: frozenset[int] = frozenset(),
) -> tuple[IterativeLookup, set[int]]:
    """Run a FIND_NODE lookup from ``start`` over ``network``, answering in random order.

    Returns the finished lookup and the ids of every contact it was told about.
    """
    seeds = closest(target, cs(*network[start]), K)
    heard = {peer.id for peer in seeds}
    lookup = IterativeLookup(target, seeds, own_id=start)
    in_flight: list[Contact] = []
    while True:
        sent = lookup.next_queries()
        assert all(peer.id != start and peer not in in_flight for peer in sent)
        in_flight += sent
        assert len(in_flight) <= ALPHA
        if not in_flight:
            break
        peer = in_flight.pop(rng.randrange(len(in_flight)))
        if peer.id in dead:
            lookup.query_failed(peer)
        else:
            answer = closest(target, cs(*network[peer.id]), K)
            heard |= {contact.id for contact in answer}
            lookup.nodes_received(peer, answer)
    assert finished(lookup)
    return lookup, heard - {start}


def build_network(
    rng: random.Random, size: int, randoms: int, neighbours: int
) -> dict[int, set[int]]:
    """``size`` nodes, each knowing ``randoms`` random nodes and its ``neighbours`` nearest."""
    ids = sorted({rng.getrandbits(512) for _ in range(size)})
    assert len(ids) == size
    network: dict[int, set[int]] = {}
    for node in ids:
        others = [i for i in ids if i != node]
        nearest = sorted(others, key=lambda i: i ^ node)[:neighbours]
        network[node] = set(nearest) | set(rng.sample(others, randoms))
    return network


def by_distance(target: int, idents: Iterable[int]) -> list[int]:
    """The ids sorted by XOR distance from ``target``."""
    return sorted(idents, key=lambda i: i ^ target)


def test_simulated_network_finds_the_true_k_closest() -> None:
    """On 200 random nodes every lookup finds exactly the true k closest within a bounded cost."""
    rng = random.Random(20240517)
    network = build_network(rng, 200, randoms=8, neighbours=K)
    nodes = sorted(network)
    for _ in range(30):
        start = rng.choice(nodes)
        target = rng.choice([rng.getrandbits(512), rng.choice(nodes)])
        lookup, _ = simulate(network, start, target, rng)
        truth = by_distance(target, (i for i in nodes if i != start))[:K]
        assert [peer.id for peer in lookup.closest()] == truth
        # Each query is answered once; with a 200-node network 2k queries are plenty.
        assert K <= lookup.queries <= 2 * K


def test_simulated_network_with_dead_nodes() -> None:
    """With a tenth of the nodes dead, lookups return the k closest live nodes they heard of."""
    rng = random.Random(7)
    network = build_network(rng, 200, randoms=8, neighbours=K)
    nodes = sorted(network)
    dead = frozenset(rng.sample(nodes, 20))
    live = [i for i in nodes if i not in dead]
    for _ in range(30):
        start = rng.choice(live)
        target = rng.getrandbits(512)
        lookup, heard = simulate(network, start, target, rng, dead)
        found = [peer.id for peer in lookup.closest()]
        assert found == by_distance(target, heard - dead)[:K]
        truth = by_distance(target, (i for i in live if i != start))[:K]
        assert found[0] == truth[0]
        # Live nodes crowded out of every answer by dead ones can be missed, but only a few.
        assert len(set(found) & set(truth)) >= K - 4
        assert lookup.queries <= 2 * K


def test_trace_records_what_happened_in_order() -> None:
    """The trace lists each query sent, answered and failed, in order (forgeries as failed)."""
    target = ITEM.key
    peers = near(target, 1, 2, 3)
    lookup = IterativeLookup(target, peers, own_id=OWN, find_value=True, alpha=3)
    lookup.next_queries()
    lookup.query_failed(peers[2])
    forged = OWNER.sign("profile", b"forged", 3)
    forged = replace(forged, value=b"tampered")
    assert not lookup.value_received(peers[1], forged)
    assert lookup.value_received(peers[0], ITEM)
    assert lookup.trace == [
        ("sent", peers[0]),
        ("sent", peers[1]),
        ("sent", peers[2]),
        ("failed", peers[2]),
        ("failed", peers[1]),
        ("answered", peers[0]),
    ]


# -- slow queries, retries, questionable contacts -----------------------------------------------


def test_a_slow_query_frees_its_slot_and_leaves_the_shortlist() -> None:
    """A query that goes slow (no retries) no longer holds a slot: the next candidate goes
    out; it is out of the shortlist, so the lookup ends without it, yet its late reply is
    taken while the lookup runs."""
    lookup = IterativeLookup(0, near(0, 1, 2, 3, 4), own_id=OWN, k=2, alpha=1, retries=0)
    (first,) = lookup.next_queries()
    assert first.id == 1
    assert not lookup.query_slow(first)
    (second,) = lookup.next_queries()
    assert second.id == 2
    lookup.nodes_received(first, [])  # the late reply is still taken
    assert ("slow", first) in lookup.trace
    assert lookup.trace[-1] == ("answered", first)
    lookup.nodes_received(second, [])
    assert finished(lookup)
    assert [x.id for x in lookup.closest()] == [1, 2]


def test_a_slow_query_to_one_of_the_k_closest_is_retried_and_waited_for() -> None:
    """A slow query to one of the k closest is sent again (twice at most by default): the
    retry holds no slot, but the lookup waits for it; after the last retry goes slow, the
    contact leaves the shortlist and the next one steps in."""
    lookup = IterativeLookup(0, near(0, 1, 2, 3), own_id=OWN, k=2, alpha=2)
    first, second = lookup.next_queries()
    lookup.nodes_received(second, [])
    assert lookup.query_slow(first)
    assert lookup.query_slow(first)
    assert lookup.queries == 4
    assert not finished(lookup)
    assert [x.id for x in lookup.next_queries()] == []  # the shortlist is 1 and 2, both asked
    assert not lookup.query_slow(first)  # a third time: no more
    assert [x.id for x in lookup.next_queries()] == [3]
    lookup.nodes_received(c(3), [])
    assert finished(lookup)
    assert [x.id for x in lookup.closest()] == [2, 3]
    assert ("retried", first) in lookup.trace


def test_a_slow_query_outside_the_k_closest_is_not_retried() -> None:
    """Only the k closest are worth a retry: a slow query to a contact that a closer one has
    pushed out of the k closest just leaves."""
    lookup = IterativeLookup(0, near(0, 2, 3), own_id=OWN, k=2, alpha=2)
    two, three = lookup.next_queries()
    lookup.nodes_received(two, [c(1)])  # a closer contact pushes 3 out of the k closest
    assert not lookup.query_slow(three)
    (one,) = lookup.next_queries()
    assert lookup.query_slow(one)
    lookup.query_failed(one)  # the query and its retry failed
    assert finished(lookup)
    assert [x.id for x in lookup.closest()] == [2]


def test_slow_means_nothing_once_answered_or_unknown() -> None:
    """A slow deadline after the answer, or for a contact never asked, changes nothing."""
    lookup = IterativeLookup(0, near(0, 1), own_id=OWN)
    (one,) = lookup.next_queries()
    lookup.nodes_received(one, [])
    assert not lookup.query_slow(one)
    assert not lookup.query_slow(c(99))
    assert lookup.answered == 1


def test_a_find_value_that_found_nothing_waits_for_a_retry() -> None:
    """A FIND_VALUE with nothing found yet waits for a query's retry, not for slow queries."""
    lookup = IterativeLookup(0, near(0, 1), own_id=OWN, find_value=True)
    (one,) = lookup.next_queries()
    assert lookup.query_slow(one)
    assert not finished(lookup)
    assert lookup.query_slow(one)
    assert not lookup.query_slow(one)
    assert finished(lookup)
    assert found(lookup) is None


def test_questionable_contacts_are_asked_after_the_others() -> None:
    """Among the shortlist's contacts not asked yet, questionable ones go last."""
    lookup = IterativeLookup(0, near(0, 1, 2, 3, 4), own_id=OWN, alpha=2, questionable=[1, 2])
    assert [x.id for x in lookup.next_queries()] == [3, 4]
    lookup.nodes_received(c(3), [])
    assert [x.id for x in lookup.next_queries()] == [1]


# -- disjoint paths --------------------------------------------------------------------------


def run_disjoint(
    network: dict[int, set[int]],
    start: int,
    target: int,
    paths: int,
    rng: random.Random,
    hostile: frozenset[int] = frozenset(),
    k: int = K,
) -> tuple[IterativeLookup | DisjointLookup, list[int]]:
    """Run a FIND_NODE lookup over ``paths`` paths (1: a plain lookup) from ``start``; hostile
    nodes answer with the k hostile nodes nearest the target (colluding). Returns the lookup
    and every contact asked, in order."""
    seeds = closest(target, cs(*network[start]), k)
    lookup: IterativeLookup | DisjointLookup
    if paths == 1:
        lookup = IterativeLookup(target, seeds, own_id=start, k=k)
    else:
        lookup = DisjointLookup(target, seeds, start, paths, k=k)
    allies = by_distance(target, hostile)
    asked: list[int] = []
    in_flight: list[Contact] = []
    for _ in range(10 * len(network)):  # bounded: each contact is asked once
        sent = lookup.next_queries()
        asked += [peer.id for peer in sent]
        in_flight += sent
        if not in_flight:
            break
        peer = in_flight.pop(rng.randrange(len(in_flight)))
        answer = cs(*allies[:k]) if peer.id in hostile else cs(*network[peer.id])
        lookup.nodes_received(peer, closest(target, answer, k))
    assert lookup.done
    return lookup, asked


def test_disjoint_paths_share_out_the_seeds_and_never_ask_a_contact_twice() -> None:
    """Each path starts from its share of the seeds (nearest first, dealt in turn), no contact
    is asked by two paths, and the lookup still finds the true k closest."""
    rng = random.Random(11)
    network = build_network(rng, 200, randoms=8, neighbours=K)
    nodes = sorted(network)
    for _ in range(10):
        start, target = rng.choice(nodes), rng.getrandbits(512)
        lookup, asked = run_disjoint(network, start, target, 3, rng)
        assert isinstance(lookup, DisjointLookup)
        assert len(asked) == len(set(asked))
        seeds = closest(target, cs(*network[start]), K)
        firsts = [path.trace[0][1] for path in lookup.paths]
        assert firsts == seeds[:3]
        truth = by_distance(target, (i for i in nodes if i != start))[:K]
        assert [peer.id for peer in lookup.closest()] == truth
        assert lookup.queries == len(asked)
        assert lookup.answered == len(asked)
        assert lookup.hops() == max(path.hops() for path in lookup.paths)
        assert len(lookup.trace) == sum(len(path.trace) for path in lookup.paths)


def test_colluders_steer_the_paths_they_are_asked_on_not_the_others() -> None:
    """With a fifth of the nodes colluding (k = 8, sparse tables), a plain lookup often ends
    among them, missing the nearest honest node; over three disjoint paths, rarely."""
    k = 8
    rng = random.Random(1)
    network = build_network(rng, 200, randoms=4, neighbours=k)
    nodes = sorted(network)
    hostile = frozenset(rng.sample(nodes, 40))
    honest = [i for i in nodes if i not in hostile]
    misses = {1: 0, 3: 0}
    for _ in range(100):
        start, target = rng.choice(honest), rng.getrandbits(512)
        nearest_honest = by_distance(target, (i for i in honest if i != start))[0]
        for paths in misses:
            lookup, _ = run_disjoint(network, start, target, paths, rng, hostile, k)
            misses[paths] += nearest_honest not in {c.id for c in lookup.closest()}
    assert misses[1] >= 20  # 29 of 100 at this seed
    assert misses[3] * 5 <= misses[1]  # 2 of 100


def test_a_disjoint_find_value_takes_the_newest_version_over_all_paths() -> None:
    """Each path keeps what its peers sent; the lookup's value is the newest of them all, and
    a blob found on any path ends the lookup."""
    target = ITEM.key
    seeds = near(target, 1, 2, 3, 4)
    lookup = DisjointLookup(target, seeds, OWN, 2, find_value=True, k=2, alpha=1)
    first = lookup.next_queries()
    assert [p.id ^ target for p in first] == [1, 2]  # one per path, nearest first
    older, newer = OWNER.sign("profile", b"old", 2), ITEM
    assert lookup.value_received(first[0], older)
    assert lookup.value_received(first[1], newer)
    assert lookup.value == newer
    assert {item for _, item in lookup.found} == {older, newer}
    assert lookup.value_depth >= 1
    forged = replace(ITEM, value=b"forged")
    second = lookup.next_queries()
    assert not lookup.value_received(second[0], forged)
    assert [peer for peer, _ in lookup.bad_values] == [second[0]]
    lookup.query_failed(second[1])
    assert lookup.done  # each path's two seeds answered or failed
    assert lookup.value == newer
    answer = blob(b"plain")
    blob_lookup = DisjointLookup(answer.key, near(answer.key, 1, 2), OWN, 2, find_value=True)
    one, _ = blob_lookup.next_queries()
    assert blob_lookup.value_received(one, answer)
    assert blob_lookup.done
    assert blob_lookup.next_queries() == []


def test_events_about_contacts_no_path_asked_are_ignored() -> None:
    """Replies, failures and slowness of contacts no path asked change nothing."""
    lookup = DisjointLookup(0, cs(1, 2), OWN, 2, find_value=True)
    stranger = c(99)
    lookup.nodes_received(stranger, cs(3))
    assert not lookup.value_received(stranger, ITEM)
    lookup.query_failed(stranger)
    assert not lookup.query_slow(stranger)
    assert lookup.queries == 0
    one, two = lookup.next_queries()
    assert lookup.query_slow(one)  # one of the k closest: asked again
    lookup.query_failed(two)
    assert lookup.closest() == []


def test_a_disjoint_lookup_needs_two_paths() -> None:
    """One path is an IterativeLookup; fewer than two paths is a mistake."""
    with pytest.raises(ValueError, match="at least 2 paths"):
        DisjointLookup(0, cs(1), OWN, 1)


def test_a_lookup_takes_few_contacts_of_one_subnet_from_replies() -> None:
    """Ids ground next to the target and run on one /24 (or /48) fill no shortlist: a lookup
    takes ``per_subnet`` of each network from peers' replies; loopback, other networks and
    hosts that are not addresses are not counted, nor are the seeds (our own table's)."""
    ground = [Contact(i, f"203.0.113.{i}", 4000) for i in range(1, 6)]
    seeds = [Contact(1 << 300 | i, "203.0.113.200", 4000 + i) for i in range(3)]
    lookup = IterativeLookup(0, seeds, own_id=OWN, per_subnet=2)
    assert lookup.per_subnet == 2
    asked = lookup.next_queries()
    assert asked == seeds  # three seeds of one /24: all taken
    honest = [Contact(100 + i, "127.0.0.1", 5000 + i) for i in range(3)] + [
        Contact(200, "198.51.100.7", 4000),
        Contact(201, "2001:db8:1::1", 4000),
    ]
    v6 = [Contact(300 + i, f"2001:db8:1::{i + 2}", 4000) for i in range(2)]
    odd = Contact(400, "node.example", 4000)
    lookup.nodes_received(asked[0], [*ground, *honest, *v6, odd])
    assert lookup.refused == 3 + 1  # three of the ground /24, one of the /48
    taken = set(lookup._shortlist_ids())
    assert {1, 2} <= taken
    assert not {3, 4, 5} & taken
    assert {100, 101, 102, 200, 201, 300, 400} <= taken
    assert 301 not in taken
    lookup.nodes_received(asked[1], ground)  # named again by another peer: still refused
    assert lookup.refused == 4 + 3


def test_without_a_subnet_limit_a_lookup_takes_every_contact() -> None:
    """``per_subnet`` 0 (the machine's default; ``--lookup-per-subnet 0``) takes them all."""
    ground = [Contact(i, f"203.0.113.{i}", 4000) for i in range(1, 6)]
    lookup = IterativeLookup(0, cs(1 << 300), own_id=OWN)
    (peer,) = lookup.next_queries()
    lookup.nodes_received(peer, ground)
    assert lookup.refused == 0
    assert {1, 2, 3, 4, 5} <= set(lookup._shortlist_ids())


def test_seeds_taken_nearest_first_as_needed() -> None:
    """With ``nearest``, a lookup takes seeds as it needs them: k that are still candidates,
    and one more for each that fails or goes slow, until none are left."""
    ordered = near(0, *range(1, 31))  # nearest 0 first
    taken: list[Contact] = []

    def source() -> Iterable[list[Contact]]:
        for contact in ordered:  # runs of one
            taken.append(contact)
            yield [contact]

    lookup = IterativeLookup(0, (), own_id=OWN, k=4, alpha=2, nearest=iter(source()))
    assert len(taken) == 0  # nothing is read before the lookup runs
    first = lookup.next_queries()
    assert first == ordered[:2]
    assert len(taken) == 4
    for contact in first:
        lookup.query_failed(contact)
    assert lookup.next_queries() == ordered[2:4]
    assert len(taken) == 6
    for contact in ordered[2:4]:
        lookup.query_failed(contact)
    for _ in range(20):  # every seed fails: the lookup goes through the table, then ends
        asked = lookup.next_queries()
        if not asked:
            break
        for contact in asked:
            lookup.query_failed(contact)
    assert len(taken) == 30
    assert finished(lookup)
    assert lookup.closest() == []
    mine = IterativeLookup(0, (), own_id=5, k=2, nearest=iter([cs(5, 6), cs(7)]))
    assert mine.next_queries() == cs(6, 7)  # never our own id


@pytest.mark.parametrize("seed", range(40))
def test_seeds_taken_as_needed_behave_as_the_whole_table(seed: int) -> None:
    """Fed the same events, a lookup that takes its seeds nearest first as it needs them asks
    the same contacts in the same order, ends at the same time and finds the same closest as
    one given the whole table at the start; dead and questionable contacts included."""
    rng = random.Random(seed)
    target = rng.getrandbits(160)
    table = [c(rng.getrandbits(160)) for _ in range(rng.randrange(0, 40))]
    others = [c(rng.getrandbits(160)) for _ in range(40)]
    dead = rng.sample(table, min(len(table), rng.randrange(3)))
    questionable = {contact.id for contact in rng.sample(table, min(len(table), 3))}
    k, alpha, find_value = rng.choice((2, 5, 8)), rng.choice((1, 3)), rng.random() < 0.3

    def start(seeds: list[Contact], nearest: list[Contact] | None) -> IterativeLookup:
        return IterativeLookup(
            target,
            seeds,
            OWN,
            k=k,
            alpha=alpha,
            find_value=find_value,
            dead=dead,
            questionable=questionable,
            nearest=None if nearest is None else iter(runs(nearest)),
        )

    def runs(ordered: list[Contact]) -> list[list[Contact]]:  # as buckets come: any sizes
        cuts = (
            sorted(rng.sample(range(1, len(ordered)), min(len(ordered) - 1, 4))) if ordered else []
        )
        return [ordered[a:b] for a, b in zip([0, *cuts], [*cuts, len(ordered)], strict=True)]

    whole = start(table, None)
    lazy = start([], closest(target, table, len(table)))
    waiting: list[Contact] = []
    for _ in range(200):
        asked = whole.next_queries()
        assert lazy.next_queries() == asked
        waiting += asked
        assert finished(lazy) == finished(whole)
        if not waiting:
            break
        peer = waiting.pop(rng.randrange(len(waiting)))
        event = rng.random()
        if event < 0.5:
            named = rng.sample(table + others, min(len(table) + len(others), rng.randrange(8)))
            whole.nodes_received(peer, named)
            lazy.nodes_received(peer, named)
        elif event < 0.8:
            whole.query_failed(peer)
            lazy.query_failed(peer)
        else:
            again = whole.query_slow(peer)
            assert lazy.query_slow(peer) == again
            if again or rng.random() < 0.5:
                waiting.append(peer)  # a retry, or a slow query that may still answer
    assert lazy.closest() == whole.closest()
    assert lazy.answered == whole.answered
    assert lazy.queries == whole.queries


def done_by_definition(lookup: IterativeLookup) -> bool:
    """``done`` as the lookup defines it, read the long way: a blob found; or, unless a
    find_value with nothing yet still waits on a query, the first k candidates (not failed,
    not gone slow) have all answered."""
    best = found(lookup)
    if best is not None and not best.mutable:
        return True
    if lookup.find_value and best is None and lookup._pending:
        return False
    first = list(lookup._candidates())[: lookup.k]
    return all(lookup._state[i].name == "ANSWERED" for i in first)


@pytest.mark.parametrize("seed", range(60))
def test_done_is_what_its_definition_says_after_any_events(seed: int) -> None:
    """``done`` reads the shortlist in one loop (it runs after every reply): at every step of
    random lookups, with every kind of event, seeds given whole or taken as needed, and
    disjoint paths, it says what the definition says."""
    rng = random.Random(seed)
    target = rng.getrandbits(160)
    table = [c(rng.getrandbits(160)) for _ in range(rng.randrange(0, 40))]
    others = [c(rng.getrandbits(160)) for _ in range(40)]
    dead = rng.sample(table, min(len(table), rng.randrange(3)))
    k, alpha = rng.choice((1, 2, 5, 8)), rng.choice((1, 3))
    options: dict[str, Any] = {
        "k": k,
        "alpha": alpha,
        "find_value": rng.random() < 0.3,
        "dead": dead,
    }
    shape = rng.choice(("whole", "nearest", "disjoint"))
    lookup: IterativeLookup | DisjointLookup
    if shape == "whole":
        lookup = IterativeLookup(target, table, OWN, **options)
    elif shape == "nearest":
        ordered = closest(target, table, len(table))
        runs = [ordered[i : i + 3] for i in range(0, len(ordered), 3)]
        lookup = IterativeLookup(target, (), OWN, nearest=iter(runs), **options)
    else:
        lookup = DisjointLookup(target, table, OWN, 2, **options)
    paths = lookup.paths if isinstance(lookup, DisjointLookup) else [lookup]
    waiting: list[Contact] = []
    checked = 0
    for _ in range(200):
        for path in paths:
            assert finished(path) == done_by_definition(path)
            checked += 1
        waiting += lookup.next_queries()
        if not waiting:
            break
        peer = waiting.pop(rng.randrange(len(waiting)))
        event = rng.random()
        if event < 0.4:
            named = rng.sample(table + others, min(len(table) + len(others), rng.randrange(8)))
            lookup.nodes_received(peer, named)
        elif event < 0.5 and lookup.find_value:
            lookup.value_received(peer, blob(b"x"))  # not under the target's key: a forgery
        elif event < 0.65:
            lookup.query_failed(peer)
        elif lookup.query_slow(peer) or rng.random() < 0.5:
            waiting.append(peer)
    for path in paths:
        assert finished(path) == done_by_definition(path)
    assert checked >= 1
