"""A node's life: join (and join again), and the housekeeping jobs on their intervals.

``Service`` is the operation a long-running node runs from start to stop; the Twisted service
(``txdht.service.DHTService``), the asyncio launcher and the simulator all run this one. At
start it joins through the seeds (or, after a restart, through the contacts it saved), and it
sets one timer per housekeeping job:

========== ======== ==========================================================================
job        default  what it does
========== ======== ==========================================================================
refresh    10 min   look up a random id in each bucket no lookup touched for an hour; join
                    again through the seeds (or the saved contacts) if the routing table has
                    no live contact left
replicate  1 h      store every held item again on the current k closest nodes, but not one a
                    peer stored here within the interval (it was sent to the others too), nor
                    one the nearest holder replicates (``Engine.replication_jobs``)
republish  12 h     publish again, with a fresh ttl, what this node published (the default ttl
                    is 24 h, so every item is renewed well before it expires)
expire     1 min    drop expired items (and ended rate-limit cool-offs)
save       5 min    save the routing table's contacts, to rejoin without seeds after a restart
========== ======== ==========================================================================

Jobs run only once the node has tried to join (``Ready``), and a job still running when its
time comes again is not started twice. Replication first runs at a random point of its
interval (each node its own), then every interval: the first of a key's k holders to replicate
it stores it on the others, which then skip it, so one node, not k, replicates each key per
interval (the Kademlia paper's rule). A holder skips a key another holder stored on it for
``REPLICA_GRACE`` of an interval longer than that interval: the holder that replicated a key
last comes to it again one interval later, give or take the seconds its round's pace varies,
and so replicates it again before any other holder's skip runs out; without the grace, a
holder whose round reached the key in those seconds replicated it too. The holder that
replicates a key stays the same from interval to interval; if it goes, the first of the
others whose round comes after the grace takes over. (In the idle 1,000-node network the
grace alone took the keys replicated twice in a steady interval from 0.40% to 0.32%; the
rest were holders at the edge of the k closest: ``Engine.outside``.)

A join that fails (no seed answered: they are down, or, after a restart, every saved contact
was a node that went down with us) is tried again after 1 s, then 2 s, 4 s... up to the refresh
interval, until a seed answers: nodes restarted together find each other again. The first node
of a network (no seeds, nothing saved) checks on the same schedule whether anyone has contacted
it, and then joins through them: it fills its table and saves its contacts like every other
node, instead of knowing only the nodes that happened to call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from txdht.core.commands import Joined, Ready
from txdht.core.ids import id_to_hex
from txdht.core.operations import Join, Operation, PublishAll, Refresh, Replicate
from txdht.core.routing import PING_AFTER

__all__ = [
    "FIRST_RETRY",
    "JOBS",
    "REFRESH_INTERVAL",
    "REPLICA_GRACE",
    "Intervals",
    "Service",
    "interval_options",
]

Address = tuple[str, int]
#: How much longer than the replication interval a holder skips a key another holder stored
#: on it (a fraction of the interval; see the module's docstring).
REPLICA_GRACE = 0.1

#: A bucket no lookup touched for this long is refreshed (the Kademlia paper's hour).
REFRESH_INTERVAL = 3600.0
#: Seconds before the first retry of a failed join; each retry waits twice as long as the last.
FIRST_RETRY = 1.0
#: The housekeeping jobs, in the order their timers are set.
JOBS = ("refresh", "replicate", "republish", "expire", "save")


def _every(default: float, option: str | None, text: str) -> Any:
    return field(default=default, metadata={"option": option, "help": text})


@dataclass(frozen=True)
class Intervals:
    """Seconds between two runs of each housekeeping job, and the node's other periods.

    A field with an ``option`` in its metadata is an option of ``twistd dht`` and of the
    asyncio launcher (``interval_options``)."""

    refresh: float = _every(600.0, "refresh-interval", "Seconds between bucket refreshes.")
    replicate: float = _every(
        3600.0,
        "replicate-interval",
        "Seconds between re-stores of held items to the k closest nodes (a key a peer stored "
        "here within this time is skipped: the peer sent it to the others too).",
    )
    republish: float = _every(
        12 * 3600.0, "republish-interval", "Seconds between republishing this node's own items."
    )
    expire: float = _every(60.0, "expire-interval", "Seconds between drops of expired items.")
    save: float = _every(
        300.0, "save-interval", "Seconds between saves of the routing table's contacts."
    )
    #: A bucket untouched by lookups for this long is refreshed (no option: the paper's hour).
    stale_bucket: float = _every(REFRESH_INTERVAL, None, "")
    ping_after: float = _every(
        PING_AFTER,
        "ping-after",
        "A full bucket's oldest contact is pinged before a newcomer may take its place only "
        "if not heard from for this many seconds.",
    )


def interval_options() -> list[tuple[str, float, str, str]]:
    """Every interval that is a command-line option: (option without dashes, default, help,
    field name)."""
    defaults = Intervals()
    return [
        (spec.metadata["option"], getattr(defaults, spec.name), spec.metadata["help"], spec.name)
        for spec in fields(Intervals)
        if spec.metadata["option"] is not None
    ]


class Service(Operation):
    """Run a node until stopped: join through ``seeds``, keep house (module docstring).

    It never ends by itself; ``Engine.cancel`` (or ``stop``) ends it with everything it runs.
    """

    def __init__(self, seeds: list[Address], intervals: Intervals | None = None) -> None:
        super().__init__()
        self.seeds = list(seeds)
        self.intervals = intervals or Intervals()
        #: True once the node has tried to join; jobs wait for it.
        self.ready = False
        #: True once a join succeeded.
        self.joined = False
        #: The jobs running now (a job is not started again while it runs).
        self.busy: dict[str, Operation] = {}
        #: Called with (job, True) when a job starts and (job, False) when it ends.
        self.job_observers: list[Callable[[str, bool], None]] = []
        self._retry_delay = FIRST_RETRY
        self._retry_at: float | None = None
        self._joining: Join | None = None

    def begin(self) -> None:
        self.engine.routing.ping_after = self.intervals.ping_after
        for job in JOBS:
            every = getattr(self.intervals, job)
            # Replication starts at a random point of its interval, so that of the k holders
            # of a key one replicates first, and the others, having just been sent it, skip it.
            first = self.engine.jitter(every) if job == "replicate" else every
            self.later(first, self._tick, job, every)
        seeds = self.current_seeds()
        if seeds:
            self._join(seeds)
            return
        self.engine.log(
            "info",
            "node {id} listens on port {port}; no --peer and no saved contacts: this is the "
            "first node of a new network",
            id=id_to_hex(self.engine.id)[:16],
            port=self.engine.port,
        )
        self._schedule_retry()  # to join through the first nodes that contact this one
        self._ready()

    def current_seeds(self) -> list[Address]:
        """The seeds given, or else the contacts saved before the last stop."""
        return self.seeds or [c.address for c in self.engine.storage.contacts()]

    # -- joining -------------------------------------------------------------------------------

    def _join(self, seeds: list[Address]) -> None:
        self._joining = Join(seeds)
        self.spawn(self._joining)

    def _ready(self) -> None:
        if not self.ready:
            self.ready = True
            self.engine.emit(Ready(self.joined))

    def _schedule_retry(self) -> float:
        """Make sure a retry is pending (backing off); return the seconds until it runs."""
        now = self.engine.now
        if self._retry_at is None:
            self._retry_at = now + self._retry_delay
            self.later(self._retry_delay, self._retry)
            self._retry_delay = min(2 * self._retry_delay, self.intervals.refresh)
        return self._retry_at - now

    def _retry(self) -> None:
        self._retry_at = None
        if self._joining is not None:
            return  # a join (by the refresh job) is on its way; its end decides what follows
        seeds = self.current_seeds()
        # The first node of a network has no seeds: it joins through whoever contacted it, so
        # that its table fills (and is saved) like everyone else's.
        if not seeds and len(self.engine.routing):
            self.engine.save_contacts()  # before anything else: a crash now still finds them
            seeds = [c.address for c in self.engine.routing.contacts()]
        if seeds:
            self._join(seeds)
        else:
            self._schedule_retry()

    def _joined(self, join: Operation) -> None:
        self._joining = None
        engine = self.engine
        if join.error is not None:  # no seed answered (or a bug, which the engine logged)
            delay = self._schedule_retry()
            text = "could not join yet ({error}); retrying in {delay:g} s"
            engine.log("warn", text, error=str(join.error), delay=delay)
        else:
            self._retry_delay = FIRST_RETRY
            self.joined = True
            engine.save_contacts()
            engine.log(
                "info",
                "node {id} on port {port} joined the network; it knows {count} contacts",
                id=id_to_hex(engine.id)[:16],
                port=engine.port,
                count=join.result,
            )
            engine.emit(Joined(join.result))
        self._ready()

    def cancelled(self) -> None:
        """Stopped: save the contacts, to rejoin through them after a restart."""
        self.engine.save_contacts()

    # -- housekeeping --------------------------------------------------------------------------

    def _tick(self, job: str, every: float) -> None:
        self.later(every, self._tick, job, every)
        if not self.ready or job in self.busy:
            return
        try:
            op = self._start_job(job)
        except Exception as e:  # a job that cannot even start (a storage error, a bug)
            self._job_failed(job, e)
            return
        if op is not None:
            self.busy[job] = op
            for observer in self.job_observers:
                observer(job, True)
            if op is not self._joining:
                self.spawn(op)

    def _start_job(self, job: str) -> Operation | None:
        """Run ``job``: the operation that does it, or None when it is done at once."""
        engine, now = self.engine, self.engine.now
        if job == "refresh":
            seeds = self.current_seeds()
            if not engine.routing.contacts(live=True) and seeds and self._joining is None:
                self._join(seeds)
                return self._joining
            return Refresh(self.intervals.stale_bucket)
        if job == "replicate":
            fresh = self.intervals.replicate * (1 + REPLICA_GRACE)
            return Replicate(engine.replication_jobs(now, fresh=fresh), fresh)
        if job == "republish":
            return PublishAll(engine.republish_jobs())
        result = engine.expire(now) if job == "expire" else engine.save_contacts()
        engine.log("debug", "{job} done: {result}", job=job, result=result)
        return None

    def _job_failed(self, job: str, error: Exception) -> None:
        self.engine.log(
            "error", "housekeeping job {job} failed: {error!r}", job=job, error=error, failure=error
        )

    def child_ended(self, child: Operation) -> None:
        joining = child is self._joining
        if joining:
            self._joined(child)  # it says how the join went
        for job, op in list(self.busy.items()):
            if op is child:
                del self.busy[job]
                if child.error is None:
                    self.engine.log("debug", "{job} done: {result}", job=job, result=child.result)
                elif not joining:
                    self._job_failed(job, child.error)
                for observer in self.job_observers:
                    observer(job, False)
