"""Tests for txdht.core.routing: k-buckets, splitting, ping-before-evict, failures and refresh."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from txdht.core.ids import MAX_ID, Contact
from txdht.core.routing import MAX_FAILURES, PING_AFTER, K, KBucket, RoutingTable, _Entry

#: The size of the id space, and the middle of it.
SPACE = 1 << 512
TOP = 1 << 511


def c(ident: int) -> Contact:
    """A contact with id ``ident`` and an address derived from it."""
    return Contact(ident, "192.0.2.1", 1000 + ident % 60000)


def ranges(table: RoutingTable) -> list[tuple[int, int]]:
    """The ``[low, high)`` ranges of the table's buckets, in order."""
    return [(b.low, b.high) for b in table.buckets]


def ids(entries: dict[int, _Entry]) -> list[int]:
    """The ids of a bucket's entries or replacements, in their order."""
    return list(entries)


def upper_full() -> RoutingTable:
    """A k=2 table for own id 0: ``[0, TOP)`` holds 1, the full ``[TOP, SPACE)`` TOP+4, TOP+6.

    Newcomers at TOP+8 and beyond are not among the 2 closest to us, so they never split. Its
    contacts are pinged before eviction however lately they were heard from (``ping_after``
    is 0 in these tests, but in the ones of the staleness window itself).
    """
    table = RoutingTable(0, k=2, ping_after=0.0)
    for now, ident in enumerate((1, TOP + 4, TOP + 6), start=1):
        assert table.seen(c(ident), float(now)) is None
    assert ranges(table) == [(0, TOP), (TOP, SPACE)]
    return table


def pinging_head() -> tuple[RoutingTable, KBucket]:
    """``upper_full`` after TOP+8 and TOP+10 found the upper bucket full: TOP+4 is pinged."""
    table = upper_full()
    assert table.seen(c(TOP + 8), 4.0) == c(TOP + 4)
    assert table.seen(c(TOP + 10), 5.0) is None
    upper = table.bucket_for(TOP)
    assert upper.pinging == TOP + 4
    assert ids(upper.replacements) == [TOP + 8, TOP + 10]
    return table, upper


def test_new_table_is_one_empty_bucket_over_the_whole_space() -> None:
    """A new table has one empty bucket covering [0, 2**512) and the default k and failures."""
    table = RoutingTable(TOP, now=5.0, ping_after=0.0)
    assert (table.own_id, table.k, table.max_failures) == (TOP, K, MAX_FAILURES)
    assert ranges(table) == [(0, SPACE)]
    bucket = table.buckets[0]
    assert bucket.last_lookup == 5.0
    assert (bucket.pinging, len(bucket.entries), len(bucket.replacements)) == (None, 0, 0)
    assert bucket.covers(0)
    assert bucket.covers(MAX_ID)
    assert not bucket.covers(SPACE)
    assert table.bucket_for(0) is table.bucket_for(MAX_ID) is bucket
    assert len(table) == 0
    assert table.contacts() == []
    assert table.closest(0) == []


def test_own_id_is_never_stored() -> None:
    """Hearing from our own id changes nothing."""
    table = RoutingTable(TOP, ping_after=0.0)
    assert table.seen(c(TOP), 1.0) is None
    assert len(table) == 0
    assert TOP not in table
    assert table.entry(TOP) is None


def test_seen_adds_new_contacts_to_the_tail() -> None:
    """New contacts join their bucket in arrival order; len, ``in``, contacts and entry agree."""
    table = RoutingTable(0, ping_after=0.0)
    for now, ident in enumerate((TOP + 1, 5, 9), start=1):
        assert table.seen(c(ident), float(now)) is None
    assert len(table) == 3
    assert table.contacts() == [c(TOP + 1), c(5), c(9)]
    assert 5 in table
    assert 6 not in table
    entry = table.entry(9)
    assert entry is not None
    assert (entry.contact, entry.last_seen, entry.failures) == (c(9), 3.0, 0)
    assert table.entry(6) is None
    assert ranges(table) == [(0, SPACE)]


def test_seen_moves_a_known_contact_to_the_tail() -> None:
    """Seeing a known contact again moves it to the tail, updates last_seen, clears failures."""
    table = RoutingTable(0, ping_after=0.0)
    for now, ident in enumerate((1, 2, 3), start=1):
        table.seen(c(ident), float(now))
    table.failed(1)
    table.failed(1)
    entry = table.entry(1)
    assert entry is not None
    assert entry.failures == 2
    assert table.seen(c(1), 10.0) is None
    assert ids(table.buckets[0].entries) == [2, 3, 1]
    assert (entry.last_seen, entry.failures) == (10.0, 0)
    assert len(table) == 3


def test_heard_marks_a_known_contact_as_seen_does_and_leaves_newcomers_to_seen() -> None:
    """heard() is seen()'s rule for a known id: to the tail, last_seen now, failures and the
    questionable mark cleared, its ping ended; an id not in the table (a replacement too)
    is not added, and False says that seen() must decide."""
    table, upper = pinging_head()
    table.slow(TOP + 4)
    entry = table.entry(TOP + 4)
    assert entry is not None
    assert entry.questionable
    assert table.heard(TOP + 4, 9.0) is True
    assert ids(upper.entries) == [TOP + 6, TOP + 4]
    assert (entry.last_seen, entry.failures, entry.questionable) == (9.0, 0, False)
    assert upper.pinging is None
    assert table.heard(TOP + 8, 9.0) is False  # a replacement: not in the table yet
    assert table.heard(TOP + 14, 9.0) is False
    assert ids(upper.entries) == [TOP + 6, TOP + 4]
    assert ids(upper.replacements) == [TOP + 8, TOP + 10]


def test_full_bucket_covering_own_id_splits() -> None:
    """A full bucket covering our id splits in two, and the newcomer joins its half."""
    table = RoutingTable(0, k=2, now=3.0, ping_after=0.0)
    table.seen(c(1), 1.0)
    table.seen(c(TOP), 2.0)
    assert table.seen(c(TOP + 1), 3.0) is None
    assert ranges(table) == [(0, TOP), (TOP, SPACE)]
    lower, upper = table.buckets
    assert ids(lower.entries) == [1]
    assert ids(upper.entries) == [TOP, TOP + 1]
    assert lower.last_lookup == upper.last_lookup == 3.0
    assert len(table) == 3


def test_splitting_repeats_until_the_newcomer_fits() -> None:
    """Contacts crowding around our id split the table down to buckets of width 2 and 2."""
    table = RoutingTable(0, k=2, ping_after=0.0)
    for ident in (1, 2, 3):
        assert table.seen(c(ident), 1.0) is None
    expected = [(0, 2)] + [(1 << i, 1 << (i + 1)) for i in range(1, 512)]
    assert ranges(table) == expected
    assert ids(table.bucket_for(1).entries) == [1]
    assert ids(table.bucket_for(2).entries) == [2, 3]
    assert len(table) == 3


def test_splitting_around_a_high_own_id() -> None:
    """With our id at 2**511 the lower half is split off and left to fill on its own."""
    table = RoutingTable(TOP, k=2, ping_after=0.0)
    for ident in (1, 2, 3):
        table.seen(c(ident), 1.0)
    assert ranges(table) == [(0, TOP), (TOP, SPACE)]
    lower = table.buckets[0]
    assert ids(lower.entries) == [1, 2]
    assert ids(lower.replacements) == [3]
    assert lower.pinging == 1


def test_relaxed_rule_splits_a_full_bucket_for_one_of_the_k_closest() -> None:
    """A full bucket away from our id splits when the newcomer is among the k closest to us."""
    table = upper_full()
    table.remove(1)
    # Only TOP+4 is closer to us than TOP+5: it is among the 2 closest, so the bucket splits.
    assert table.seen(c(TOP + 5), 4.0) is None
    assert TOP + 5 in table
    assert TOP + 4 in table
    assert TOP + 6 in table
    home = table.bucket_for(TOP + 5)
    assert (home.low, home.high) == (TOP + 4, TOP + 6)
    assert ids(home.entries) == [TOP + 4, TOP + 5]
    assert ids(table.bucket_for(TOP + 6).entries) == [TOP + 6]
    assert all(b.pinging is None for b in table.buckets)
    assert not any(b.replacements for b in table.buckets)
    assert sum(len(b.entries) for b in table.buckets) == 3


def test_relaxed_rule_does_not_split_for_a_contact_outside_the_k_closest() -> None:
    """A newcomer with k contacts closer to us waits as a replacement; the head is to be pinged."""
    table = upper_full()
    # Contacts 1 and TOP+4 are closer to us than TOP+5, so k=2 of them: no split.
    assert table.seen(c(TOP + 5), 4.0) == c(TOP + 4)
    assert ranges(table) == [(0, TOP), (TOP, SPACE)]
    upper = table.buckets[1]
    assert ids(upper.entries) == [TOP + 4, TOP + 6]
    assert ids(upper.replacements) == [TOP + 5]
    assert upper.pinging == TOP + 4
    assert TOP + 5 not in table


def test_relaxed_rule_matches_a_count_of_every_closer_contact() -> None:
    """Whether a full bucket away from our id may split for a newcomer is whether fewer than k
    contacts of the whole table are closer to us than the newcomer: checked against that
    count in random tables of many buckets, for newcomers near and far (the rule answers
    from the nearer buckets' sizes when they hold k, and sorts only otherwise)."""
    rng = random.Random(11)
    checked = {True: 0, False: 0}
    for _ in range(20):
        own = rng.getrandbits(512)
        table = RoutingTable(own, k=4, ping_after=0.0)
        for n in range(80):
            shared = rng.randrange(0, 12)
            ident = own ^ (1 << (511 - shared)) ^ rng.getrandbits(511 - shared)
            table.seen(c(ident if n % 3 else rng.getrandbits(512)), 0.0)
        every = [contact.id for contact in table.contacts()]
        for _ in range(40):
            shared = rng.randrange(0, 12)
            newcomer = own ^ (1 << (511 - shared)) ^ rng.getrandbits(511 - shared)
            bucket = table.bucket_for(newcomer)
            if newcomer in table or bucket.covers(own) or len(bucket.entries) < table.k:
                continue
            closer = sum(1 for i in every if i ^ own < newcomer ^ own)
            assert table._may_split(bucket, newcomer) is (closer < table.k)
            checked[closer < table.k] += 1
    assert checked[True] >= 5
    assert checked[False] >= 50


def test_relaxed_rule_at_default_k() -> None:
    """At k=20 the far half fills, refuses a farther newcomer and splits for a closer one."""
    table = RoutingTable(0, ping_after=0.0)
    far = [TOP + 2 * i for i in range(1, K + 1)]
    for ident in far:
        table.seen(c(ident), 1.0)
    assert ranges(table) == [(0, SPACE)]
    assert table.seen(c(TOP + 2 * K + 2), 2.0) == c(far[0])
    assert ranges(table) == [(0, TOP), (TOP, SPACE)]
    assert ids(table.buckets[1].replacements) == [TOP + 2 * K + 2]
    assert table.seen(c(TOP + 3), 3.0) is None
    assert TOP + 3 in table
    assert len(table) == K + 1
    assert max(len(b.entries) for b in table.buckets) <= K
    assert table.closest(0, 3) == [c(TOP + 2), c(TOP + 3), c(TOP + 4)]


def test_one_ping_per_bucket_at_a_time() -> None:
    """Only the first newcomer to a full bucket returns the head; later ones just wait."""
    table, upper = pinging_head()
    assert table.seen(c(TOP + 12), 6.0) is None
    assert upper.pinging == TOP + 4
    assert ids(upper.entries) == [TOP + 4, TOP + 6]


def test_head_that_answers_stays() -> None:
    """The pinged head answering moves to the tail and clears the ping; replacements stay."""
    table, upper = pinging_head()
    assert table.seen(c(TOP + 4), 7.0) is None
    assert upper.pinging is None
    assert ids(upper.entries) == [TOP + 6, TOP + 4]
    assert ids(upper.replacements) == [TOP + 8, TOP + 10]
    # The next newcomer pings the new head.
    assert table.seen(c(TOP + 12), 8.0) == c(TOP + 6)
    assert upper.pinging == TOP + 6


def test_head_that_fails_is_evicted_for_the_latest_replacement() -> None:
    """The pinged head failing is evicted and the most recently seen replacement takes its place."""
    table, upper = pinging_head()
    table.failed(TOP + 4)
    assert TOP + 4 not in table
    assert ids(upper.entries) == [TOP + 6, TOP + 10]
    assert ids(upper.replacements) == [TOP + 8]
    assert upper.pinging is None
    entry = table.entry(TOP + 10)
    assert entry is not None
    assert (entry.last_seen, entry.failures) == (5.0, 0)


def test_pinged_head_failing_with_no_replacement_left_stays() -> None:
    """If the replacements ran out meanwhile, the failed head stays and the ping is over."""
    table, upper = pinging_head()
    table.failed(TOP + 8)
    table.failed(TOP + 10)
    assert not upper.replacements
    table.failed(TOP + 4)
    assert ids(upper.entries) == [TOP + 4, TOP + 6]
    assert upper.pinging is None
    entry = table.entry(TOP + 4)
    assert entry is not None
    assert entry.failures == 1


def test_failed_counts_failures() -> None:
    """Each failure of a known contact counts; hearing from it again clears the count."""
    table = RoutingTable(0, ping_after=0.0)
    table.seen(c(7), 1.0)
    for expected in range(1, 6):
        table.failed(7)
        entry = table.entry(7)
        assert entry is not None
        assert entry.failures == expected
    assert 7 in table
    table.seen(c(7), 2.0)
    entry = table.entry(7)
    assert entry is not None
    assert entry.failures == 0


def test_contact_with_a_replacement_waiting_is_dropped_after_max_failures() -> None:
    """With a replacement waiting, MAX_FAILURES failures in a row evict a contact."""
    table, upper = pinging_head()
    table.seen(c(TOP + 4), 6.0)  # the head answers the ping
    for _ in range(MAX_FAILURES - 1):
        table.failed(TOP + 6)
        assert TOP + 6 in table
    table.failed(TOP + 6)
    assert TOP + 6 not in table
    assert ids(upper.entries) == [TOP + 4, TOP + 10]
    assert ids(upper.replacements) == [TOP + 8]


def test_max_failures_is_configurable() -> None:
    """A table built with max_failures=1 evicts after one failure when a replacement waits."""
    table = RoutingTable(0, k=1, max_failures=1, ping_after=0.0)
    table.seen(c(TOP), 1.0)
    assert table.seen(c(TOP + 1), 2.0) == c(TOP)
    table.seen(c(TOP), 3.0)  # answered the ping
    table.failed(TOP)
    assert table.contacts() == [c(TOP + 1)]


def test_stale_contact_without_replacement_stays_until_a_newcomer_arrives() -> None:
    """With nobody waiting a failing contact stays; a newcomer then replaces it at once."""
    table = upper_full()
    upper = table.buckets[1]
    for _ in range(MAX_FAILURES + 2):
        table.failed(TOP + 6)
    entry = table.entry(TOP + 6)
    assert entry is not None
    assert entry.failures == MAX_FAILURES + 2
    assert table.seen(c(TOP + 8), 9.0) is None
    assert ids(upper.entries) == [TOP + 4, TOP + 8]
    assert TOP + 6 not in table
    assert upper.pinging is None
    assert not upper.replacements


def test_failed_of_an_unknown_id_drops_it_from_the_replacements() -> None:
    """A failure of a waiting replacement removes it from the cache; a stranger changes nothing."""
    table, upper = pinging_head()
    table.failed(TOP + 8)
    assert ids(upper.replacements) == [TOP + 10]
    table.failed(TOP + 99)
    assert ids(upper.replacements) == [TOP + 10]
    assert ids(upper.entries) == [TOP + 4, TOP + 6]
    assert upper.pinging == TOP + 4


def test_replacement_cache_is_bounded_at_k() -> None:
    """The replacement cache keeps the k most recently seen newcomers, most recent last."""
    table, upper = pinging_head()
    table.seen(c(TOP + 12), 6.0)
    assert ids(upper.replacements) == [TOP + 10, TOP + 12]
    table.seen(c(TOP + 10), 7.0)
    assert ids(upper.replacements) == [TOP + 12, TOP + 10]
    assert upper.replacements[TOP + 10].last_seen == 7.0


def test_replacement_cache_is_bounded_at_default_k() -> None:
    """At k=20 the cache holds 20 newcomers and drops the oldest."""
    table = RoutingTable(TOP, ping_after=0.0)
    for ident in range(1, K + 1):
        table.seen(c(ident), 1.0)
    for ident in range(K + 1, 2 * K + 6):
        table.seen(c(ident), 2.0)
    lower = table.bucket_for(0)
    assert len(lower.entries) == K
    assert ids(lower.replacements) == list(range(K + 6, 2 * K + 6))


def test_remove_promotes_the_latest_replacement() -> None:
    """Removing a contact lets the most recently seen replacement in."""
    table, upper = pinging_head()
    table.remove(TOP + 6)
    assert ids(upper.entries) == [TOP + 4, TOP + 10]
    assert ids(upper.replacements) == [TOP + 8]
    assert upper.pinging == TOP + 4


def test_remove_without_replacement_leaves_a_gap() -> None:
    """Removing a contact with nobody waiting just forgets it; unknown ids are ignored."""
    table = upper_full()
    table.remove(TOP + 4)
    assert table.contacts() == [c(1), c(TOP + 6)]
    table.remove(TOP + 4)
    table.remove(12345)
    assert table.contacts() == [c(1), c(TOP + 6)]
    assert ranges(table) == [(0, TOP), (TOP, SPACE)]


def test_remove_of_the_pinged_head_ends_the_ping() -> None:
    """Removing the head being pinged clears the ping, so the next newcomer can ping again."""
    table, upper = pinging_head()
    table.remove(TOP + 4)
    assert upper.pinging is None
    assert ids(upper.entries) == [TOP + 6, TOP + 10]
    assert table.seen(c(TOP + 12), 6.0) == c(TOP + 6)
    assert upper.pinging == TOP + 6


def test_closest_orders_by_xor_distance() -> None:
    """closest() returns count (default k) contacts nearest the target first, minus exclude."""
    table = RoutingTable(0, ping_after=0.0)
    for ident in range(1, 31):
        table.seen(c(ident), 1.0)
    assert len(table) == 30
    everyone = sorted(range(1, 31), key=lambda i: i ^ 5)
    assert table.closest(5) == [c(i) for i in everyone[:K]]
    assert table.closest(5, 3) == [c(5), c(4), c(7)]
    assert table.closest(5, 3, exclude=5) == [c(4), c(7), c(6)]
    assert table.closest(5, 100) == [c(i) for i in everyone]
    small = RoutingTable(0, k=2, ping_after=0.0)
    small.seen(c(9), 1.0)
    small.seen(c(TOP), 1.0)
    assert small.closest(8) == [c(9), c(TOP)]
    assert small.closest(MAX_ID) == [c(TOP), c(9)]


def test_nearest_live_takes_the_nearest_of_the_targets_bucket_or_the_long_way() -> None:
    """nearest_live() is the nearest live contact: found in the target's own bucket when that
    bucket's nearest is live, and by closest() when it looks dead or the bucket is empty."""
    assert RoutingTable(0, ping_after=0.0).nearest_live(5) is None
    table = RoutingTable(0, k=3, ping_after=0.0)
    for ident in (TOP + 4, TOP + 6, TOP + 8, TOP + 10):  # the lower half splits off, empty
        table.seen(c(ident), 1.0)
    assert ranges(table) == [(0, TOP), (TOP, SPACE)]
    assert table.bucket_for(4).entries == {}
    assert table.nearest_live(4) == c(TOP + 4)  # an empty bucket: the next one's nearest
    assert table.nearest_live(TOP + 7) == c(TOP + 6)  # its own bucket's nearest
    table.failed(TOP + 6)
    assert table.nearest_live(TOP + 7) == c(TOP + 6)  # one failure: not dead yet
    table.failed(TOP + 6)
    assert table.nearest_live(TOP + 7) == c(TOP + 4)  # dead: the nearest live one
    lone = RoutingTable(0, ping_after=0.0)
    lone.seen(c(9), 1.0)
    lone.failed(9)
    lone.failed(9)
    assert len(lone) == 1
    assert lone.nearest_live(8) is None  # the only contact looks dead


def test_touch_and_stale_buckets() -> None:
    """touch() marks a target's bucket looked up; stale_buckets names those idle long enough."""
    table = RoutingTable(0, k=1, now=0.0, ping_after=0.0)
    table.seen(c(1), 0.0)
    table.seen(c(TOP), 0.0)
    lower, upper = table.buckets
    assert table.stale_buckets(10.0, 30.0) == []
    table.touch(TOP + 123, 50.0)
    assert (lower.last_lookup, upper.last_lookup) == (0.0, 50.0)
    assert table.stale_buckets(60.0, 30.0) == [lower]
    assert table.stale_buckets(80.0, 30.0) == [lower, upper]
    table.touch(0, 70.0)
    assert table.stale_buckets(90.0, 30.0) == [upper]


def test_random_id_stays_in_the_bucket_range() -> None:
    """random_id() draws ids from the bucket's own range, reproducibly for a seeded rng."""
    rng = random.Random(42)
    narrow = KBucket(TOP + 4, TOP + 8, 0.0)
    drawn = {narrow.random_id(rng) for _ in range(200)}
    assert drawn == {TOP + 4, TOP + 5, TOP + 6, TOP + 7}
    whole = KBucket(0, SPACE, 0.0)
    for _ in range(200):
        assert whole.covers(whole.random_id(rng))
    upper = KBucket(TOP, SPACE, 0.0)
    for _ in range(200):
        assert TOP <= upper.random_id(rng) < SPACE
    assert narrow.random_id(random.Random(7)) == narrow.random_id(random.Random(7))


def test_split_shares_out_contacts_replacements_and_ping() -> None:
    """split() gives each half its own contacts, replacements and pending ping, keeping order."""
    bucket = KBucket(16, 32, 7.5)
    for ident in (25, 17, 30, 18):
        bucket.entries[ident] = _Entry(c(ident), float(ident))
    for ident in (19, 28):
        bucket.replacements[ident] = _Entry(c(ident), 1.0)
    bucket.pinging = 25
    lower, upper = bucket.split()
    assert (lower.low, lower.high, upper.low, upper.high) == (16, 24, 24, 32)
    assert ids(lower.entries) == [17, 18]
    assert ids(upper.entries) == [25, 30]
    assert ids(lower.replacements) == [19]
    assert ids(upper.replacements) == [28]
    assert (lower.pinging, upper.pinging) == (None, 25)
    assert lower.last_lookup == upper.last_lookup == 7.5
    assert lower.entries[17] is bucket.entries[17]
    bucket.pinging = 17
    lower, upper = bucket.split()
    assert (lower.pinging, upper.pinging) == (17, None)
    bucket.pinging = None
    lower, upper = bucket.split()
    assert (lower.pinging, upper.pinging) == (None, None)


def check_invariants(table: RoutingTable) -> None:
    """Assert the structural invariants of a routing table."""
    assert table.buckets[0].low == 0
    assert table.buckets[-1].high == SPACE
    for before, after in zip(table.buckets, table.buckets[1:], strict=False):
        assert before.high == after.low
    seen_ids: set[int] = set()
    for bucket in table.buckets:
        assert bucket.low < bucket.high
        # Every id of its range, its ends included, is found in it (``bucket_for``'s index).
        assert table.bucket_for(bucket.low) is table.bucket_for(bucket.high - 1) is bucket
        assert len(bucket.entries) <= table.k
        assert len(bucket.replacements) <= table.k
        assert not set(bucket.entries) & set(bucket.replacements)
        assert table.own_id not in bucket.entries
        assert table.own_id not in bucket.replacements
        assert bucket.pinging is None or bucket.pinging in bucket.entries
        for ident, entry in [*bucket.entries.items(), *bucket.replacements.items()]:
            assert bucket.covers(ident)
            assert entry.contact.id == ident
        assert not seen_ids & set(bucket.entries)
        seen_ids |= set(bucket.entries)
    assert len(table) == len(seen_ids) == len(table.contacts())
    assert all(ident in table for ident in seen_ids)


ANY_ID = st.one_of(st.integers(0, MAX_ID), st.integers(0, 64), st.integers(MAX_ID - 64, MAX_ID))


@settings(max_examples=200, deadline=None)
@given(
    own=ANY_ID,
    k=st.integers(1, 5),
    pool=st.lists(ANY_ID, min_size=1, max_size=24),
    ops=st.lists(
        st.tuples(st.sampled_from(["seen", "failed", "remove"]), st.integers(0, 23)),
        max_size=80,
    ),
)
def test_invariants_hold_after_any_operations(
    own: int, k: int, pool: list[int], ops: list[tuple[str, int]]
) -> None:
    """Any sequence of seen, failed and remove calls keeps the table well formed."""
    table = RoutingTable(own, k=k, ping_after=0.0)
    for now, (op, index) in enumerate(ops):
        ident = pool[index % len(pool)]
        if op == "seen":
            ping = table.seen(c(ident), float(now))
            if ping is not None:
                assert ping.id != ident
                assert table.bucket_for(ping.id).pinging == ping.id
            if ident != own:
                bucket = table.bucket_for(ident)
                assert ident in bucket.entries or ident in bucket.replacements
        elif op == "failed":
            table.failed(ident)
        else:
            table.remove(ident)
            assert ident not in table
        check_invariants(table)


@settings(max_examples=300, deadline=None)
@given(
    own=ANY_ID,
    k=st.integers(1, 5),
    pool=st.lists(ANY_ID, min_size=1, max_size=40, unique=True),
    failures=st.lists(st.integers(0, 39), max_size=30),
    target=ANY_ID,
    count=st.one_of(st.none(), st.integers(1, 50)),
    exclude=st.one_of(st.none(), st.integers(0, 39)),
    live=st.booleans(),
)
def test_closest_is_the_brute_force_answer(
    own: int,
    k: int,
    pool: list[int],
    failures: list[int],
    target: int,
    count: int | None,
    exclude: int | None,
    live: bool,
) -> None:
    """closest(), which sorts only the buckets nearest the target, gives exactly what sorting
    the whole table by distance gives, for any table, target, count, exclusion and liveness;
    nearest_live(), which looks in the target's bucket first, the nearest live contact."""
    table = RoutingTable(own, k=k, ping_after=0.0)
    for now, ident in enumerate(pool):
        table.seen(c(ident), float(now))
    for index in failures:
        table.failed(pool[index % len(pool)])
    excluded = None if exclude is None else pool[exclude % len(pool)]
    everyone = [e for b in table.buckets for e in b.entries.values()]
    allowed = [
        e.contact for e in everyone if e.contact.id != excluded and not (live and e.failures >= 2)
    ]
    expected = sorted(allowed, key=lambda contact: contact.id ^ target)[: count or k]
    assert table.closest(target, count, excluded, live) == expected
    alive = [e.contact for e in everyone if e.failures < 2]
    nearest = min(alive, key=lambda contact: contact.id ^ target, default=None)
    assert table.nearest_live(target) == nearest


def test_a_head_heard_from_lately_is_not_pinged() -> None:
    """A newcomer to a full bucket sets off no ping when the bucket's oldest contact was heard
    from within ``ping_after`` (15 minutes by default): it waits in the replacement cache; the
    first newcomer after that window sets off the ping."""
    table = RoutingTable(0, k=2)
    assert table.ping_after == PING_AFTER == 900.0
    for now, ident in enumerate((1, TOP + 4, TOP + 6), start=1):
        table.seen(c(ident), float(now))
    assert table.seen(c(TOP + 8), 2.0 + PING_AFTER - 1) is None
    upper = table.bucket_for(TOP)
    assert list(upper.replacements) == [TOP + 8]
    assert upper.pinging is None
    assert table.seen(c(TOP + 10), 2.0 + PING_AFTER) == c(TOP + 4)
    assert upper.pinging == TOP + 4
