"""Round-trip estimates and the slow deadline they give each request (RFC 6298's rules)."""

from __future__ import annotations

import pytest

from txdht.core.ids import Contact
from txdht.core.routing import RoutingTable
from txdht.core.timing import FIRST_SLOW, SLOW_FLOOR, RoundTrip, RoundTrips


def test_the_first_sample_sets_srtt_and_half_of_it_as_the_variation() -> None:
    """The first measurement R gives srtt = R, rttvar = R / 2, a timeout of 3R."""
    estimate = RoundTrip(0.2)
    assert (estimate.srtt, estimate.rttvar) == (0.2, 0.1)
    assert estimate.timeout() == pytest.approx(0.6)


def test_later_samples_are_smoothed_with_gains_of_an_eighth_and_a_quarter() -> None:
    """rttvar = 3/4 rttvar + 1/4 |srtt - R|, then srtt = 7/8 srtt + 1/8 R."""
    estimate = RoundTrip(0.2)
    estimate.update(0.6)
    assert estimate.rttvar == pytest.approx(0.75 * 0.1 + 0.25 * 0.4)
    assert estimate.srtt == pytest.approx(0.875 * 0.2 + 0.125 * 0.6)
    for _ in range(200):
        estimate.update(0.3)
    assert estimate.srtt == pytest.approx(0.3)
    assert estimate.timeout() == pytest.approx(0.3, abs=1e-6)  # steady: no variation left


def test_a_node_that_measured_nothing_waits_first_slow() -> None:
    """Before any reply, the slow deadline is FIRST_SLOW, for anyone."""
    trips = RoundTrips(ceiling=5.0)
    assert trips.slow_after(None) == trips.slow_after(7) == FIRST_SLOW


def test_a_request_waits_the_shorter_of_its_contacts_estimate_and_the_overall_one() -> None:
    """A contact's own estimate counts when it is the shorter one; one never measured, or
    measured while the network was slow (a stale estimate: it changes only when that contact
    answers), waits as long as the overall estimate, which every reply (from an address too)
    updates."""
    trips = RoundTrips(ceiling=5.0)
    trips.measured(1, 0.8)  # measured while everything was slow
    for _ in range(50):
        trips.measured(None, 0.2)  # then the network got fast
    overall = trips.slow_after(2)
    assert overall == pytest.approx(0.2, rel=0.1)
    assert trips.slow_after(1) == overall  # not 2.4 s: its own estimate is stale
    trips.measured(3, 0.101)
    trips.measured(3, 0.101)
    assert trips.slow_after(3) == pytest.approx(0.101 + 4 * 0.0505 * 0.75)  # shorter: its own
    assert len(trips) == 2


def test_the_deadline_stays_between_the_floor_and_the_ceiling() -> None:
    """A loopback peer's deadline is never under SLOW_FLOOR, a far one never over the
    ceiling (the full rpc_timeout)."""
    trips = RoundTrips(ceiling=2.0)
    trips.measured(1, 0.0001)
    trips.measured(2, 10.0)
    assert trips.slow_after(1) == SLOW_FLOOR
    assert trips.slow_after(2) == 2.0


def test_the_least_recently_measured_contact_is_forgotten_past_the_limit() -> None:
    """At most ``limit`` contacts are remembered: a new one pushes the stalest out."""
    trips = RoundTrips(ceiling=5.0, limit=2)
    trips.measured(1, 0.2)
    trips.measured(2, 0.2)
    trips.measured(1, 0.2)  # 1 is now the most recent
    trips.measured(3, 1.0)
    assert len(trips) == 2
    assert set(trips._by_id) == {1, 3}


def test_a_slow_or_failed_contact_is_questionable_until_it_answers() -> None:
    """The routing table marks a contact that went slow or failed, and clears the mark when it
    is heard from; being slow evicts nothing."""
    table = RoutingTable(own_id=0, k=2)
    one, two = Contact(1 << 500, "192.0.2.1", 1), Contact(1 << 501, "192.0.2.2", 2)
    table.seen(one, 0.0)
    table.seen(two, 0.0)
    table.slow(one.id)
    table.slow(12345)  # not in the table: nothing happens
    table.failed(two.id)
    assert table.suspects() == ([], {one.id, two.id})
    table.seen(one, 1.0)
    assert table.suspects() == ([], {two.id})  # one answered: no longer questionable
    assert [[c.id for c in run] for run in table.nearest(0)] == [[one.id, two.id]]
    table.failed(two.id)
    assert table.suspects() == ([two], {two.id})  # two failures in a row: dead to lookups
    table.failed(one.id)
    table.failed(one.id)
    assert table.suspects() == ([], {one.id, two.id})  # all look dead: all are asked again
    table.remove(two.id)
    assert table.suspects() == ([], {one.id})  # dropped: no longer a suspect
