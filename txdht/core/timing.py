"""How long to wait for a peer: round-trip estimates, as TCP's retransmission timer keeps them.

Theory of operation
-------------------
A request has two deadlines. The *full* one, ``rpc_timeout`` after it left, is when it fails.
The *slow* one comes much sooner: when a reply is overdue for what we know of the peer, the
operation waiting for it stops waiting (a lookup frees the request's slot for the next
candidate, and may send a retry), yet a reply that still comes before the full deadline is
used. A silent peer then costs a lookup a few round trips, not five seconds.

The slow deadline comes from measured round trips, the way RFC 6298 sets TCP's retransmission
timeout: a smoothed round-trip time ``srtt`` and its mean deviation ``rttvar``, updated with
every reply (gains 1/8 and 1/4), and a timeout of ``srtt + 4 * rttvar``, here kept between
``SLOW_FLOOR`` and ``rpc_timeout``. The node keeps an overall estimate, which every reply
updates, and one per contact (a bounded number of them, the least recently measured forgotten
first); a request waits the shorter of the two (a contact's own estimate can be stale: it
changes only when that contact answers). Before any reply at all the node waits
``FIRST_SLOW`` seconds.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["FIRST_SLOW", "SLOW_FLOOR", "RoundTrip", "RoundTrips"]

#: The shortest slow deadline, in seconds: on a fast network (loopback), a reply is not called
#: slow for being a few milliseconds late (a pause for garbage collection, a busy peer).
SLOW_FLOOR = 0.1
#: The slow deadline before the node has measured any round trip.
FIRST_SLOW = 1.0
#: Contacts whose round trips are remembered, the least recently measured forgotten first.
MAX_ESTIMATES = 10_000


class RoundTrip:
    """One smoothed round-trip estimate (RFC 6298, section 2)."""

    __slots__ = ("rttvar", "srtt")

    def __init__(self, sample: float) -> None:
        self.srtt = sample
        self.rttvar = sample / 2

    def update(self, sample: float) -> None:
        """Fold in one measured round trip, in seconds."""
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
        self.srtt = 0.875 * self.srtt + 0.125 * sample

    def timeout(self) -> float:
        """How long a reply may take before it is overdue: ``srtt + 4 * rttvar``."""
        return self.srtt + 4 * self.rttvar


class RoundTrips:
    """The node's round-trip estimates: one per contact, and one over all of them."""

    def __init__(self, ceiling: float, limit: int = MAX_ESTIMATES) -> None:
        #: No slow deadline is later than this (the full deadline, ``rpc_timeout``).
        self.ceiling = ceiling
        self.limit = limit
        self.overall: RoundTrip | None = None
        self._by_id: OrderedDict[int, RoundTrip] = OrderedDict()

    def measured(self, ident: int | None, sample: float) -> None:
        """A reply came ``sample`` seconds after its request, from ``ident`` (None: a bare
        address, counted only in the overall estimate)."""
        if self.overall is None:
            self.overall = RoundTrip(sample)
        else:
            self.overall.update(sample)
        if ident is None:
            return
        by_id = self._by_id
        estimate = by_id.get(ident)
        if estimate is None:
            by_id[ident] = RoundTrip(sample)
            if len(by_id) > self.limit:
                by_id.popitem(last=False)
        else:
            estimate.update(sample)
            by_id.move_to_end(ident)  # the most recently measured last

    def slow_after(self, ident: int | None) -> float:
        """Seconds after which a reply from ``ident`` is overdue: the shorter of its own
        estimate and the overall one (or the overall one alone, for a contact never measured),
        kept between ``SLOW_FLOOR`` and the ceiling.

        Never longer than the overall estimate: a contact's own estimate changes only when it
        answers, so one measured while the network was slow (a busy start) would keep its
        requests waiting long after the network got fast again, and one that stopped
        answering (a frozen host) keeps that estimate for good. The overall estimate, which
        every reply updates, already spans the spread of round trips over the contacts."""
        if self.overall is None:
            return min(self.ceiling, FIRST_SLOW)
        wait = self.overall.timeout()
        own = self._by_id.get(ident) if ident is not None else None
        if own is not None:
            wait = min(wait, own.timeout())
        return min(self.ceiling, max(SLOW_FLOOR, wait))

    def __len__(self) -> int:
        return len(self._by_id)
