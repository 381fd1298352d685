"""A node as a long-running Twisted service: listen, join, and housekeeping on timers.

``DHTService`` is what ``twistd dht`` runs (``txdht.tap`` builds it), and what a Twisted
application can add to its own service tree. On start it listens, joins through the given seeds
(or, after a restart, through the contacts it saved), and starts one ``TimerService`` per
housekeeping job on the injected clock:

========== ======== ==========================================================================
job        default  what it does
========== ======== ==========================================================================
refresh    10 min   look up a random id in each bucket no lookup touched for an hour; rejoin
                    through the seeds (or the saved contacts) if the routing table has emptied
replicate  1 h      store every held item again on the current k closest nodes
republish  12 h     publish again, with a fresh ttl, what this node published (the default ttl
                    is 24 h, so every item is renewed well before it expires)
expire     1 min    drop expired items
save       5 min    save the routing table's contacts, to rejoin without seeds after a restart
========== ======== ==========================================================================

Each job is guarded: a failure is logged with its traceback and the timer goes on (a
``LoopingCall`` whose call fails would otherwise stop for good).

A join that fails (no seed answered: they are down, or, after a restart, every saved contact
was a node that went down with us) is retried after 1 s, then 2 s, 4 s... up to the refresh
interval, until a seed answers: nodes restarted together find each other again. The first node
of a network (no seeds, nothing saved) checks on the same schedule whether anyone has contacted
it, and then joins through them: it fills its table and saves its contacts like every other
node, instead of knowing only the nodes that happened to call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txdht.errors import JoinError
from txdht.intervals import Intervals
from txdht.node import Address, Node

__all__ = ["DHTService"]

#: Seconds before the first retry of a failed join; each retry waits twice as long as the last.
FIRST_RETRY = 1.0


class DHTService(MultiService):
    """Run ``node``: listen on ``endpoint`` (unless None), join ``seeds``, keep house.

    :param clock: the ``IReactorTime`` the timers run on (the node's reactor by default).
    """

    log = Logger()

    def __init__(
        self,
        node: Node,
        *,
        endpoint: str | None = None,
        seeds: list[Address] | None = None,
        intervals: Intervals | None = None,
        clock: Any = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.node = node
        self.endpoint = endpoint
        self.seeds = list(seeds or [])
        self.intervals = intervals = intervals or Intervals()
        #: True once the node listens and has tried to join; jobs wait for it.
        self.ready = False
        self._waiting: list[Deferred[None]] = []
        self._clock = clock if clock is not None else node.reactor
        self._retry: Any = None
        self._retry_delay = FIRST_RETRY
        # Each job is looked up when it runs, so a replaced method (in a test) is the one run.
        jobs: list[tuple[str, float, Callable[[], object]]] = [
            ("refresh", intervals.refresh, lambda: self.refresh()),
            ("replicate", intervals.replicate, lambda: self.node.replicate()),
            ("republish", intervals.republish, lambda: self.node.republish()),
            ("expire", intervals.expire, lambda: self.node.expire()),
            ("save", intervals.save, lambda: self.node.save_contacts()),
        ]
        for name, step, job in jobs:
            timer = TimerService(step, self._guarded, name, job)
            timer.clock = self._clock
            timer.setName(name)
            timer.setServiceParent(self)

    def startService(self) -> None:
        """Listen (raising at once if the endpoint cannot be had), then join in the background."""
        if self.endpoint is not None:
            outcome: list[object] = []
            self.node.listen(self.endpoint).addBoth(outcome.append)
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()
        super().startService()  # type: ignore[no-untyped-call]
        self._bootstrap = Deferred.fromCoroutine(self._join())
        self._bootstrap.addErrback(self._bootstrap_failed)

    def _bootstrap_failed(self, failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            self.log.failure("starting the node failed", failure)

    def when_ready(self) -> Deferred[None]:
        """A new Deferred that fires once the node listens and has tried to join."""
        if self.ready:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _seeds(self) -> list[Address]:
        """The seeds given, or else the contacts saved before the last stop."""
        return self.seeds or [c.address for c in self.node.engine.storage.contacts()]

    def _schedule_retry(self) -> float:
        """Make sure a retry is pending (backing off); return the seconds until it runs."""
        if self._retry is None or not self._retry.active():
            self._retry = self._clock.callLater(self._retry_delay, self._retry_join)
            self._retry_delay = min(2 * self._retry_delay, self.intervals.refresh)
        return float(self._retry.getTime() - self._clock.seconds())

    async def _join(self) -> None:
        seeds = self._seeds()
        if not seeds:
            self.log.info(
                "node {id} listens on port {port}; no --peer and no saved contacts: this is the "
                "first node of a new network",
                id=self.node.id[:16],
                port=self.node.port,
            )
            self._schedule_retry()  # to join through the first nodes that contact this one
        else:
            await self._try_join(seeds)
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def _try_join(self, seeds: list[Address]) -> None:
        try:
            count = await self.node.join(seeds)
        except JoinError as e:
            delay = self._schedule_retry()
            self.log.warn(
                "could not join yet ({error}); retrying in {delay:g} s", error=e, delay=delay
            )
            return
        self._retry_delay = FIRST_RETRY
        self.node.save_contacts()
        self.log.info(
            "node {id} on port {port} joined the network; it knows {count} contacts",
            id=self.node.id[:16],
            port=self.node.port,
            count=count,
        )

    def refresh(self) -> Deferred[Any]:
        """Refresh idle buckets, or rejoin through the seeds when no contact is left."""
        if not len(self.node.engine.routing) and self._seeds():
            return self._rejoin()
        return self.node.refresh(self.intervals.stale_bucket)

    def _retry_join(self) -> None:
        # The first node of a network has no seeds: it joins through whoever contacted it, so
        # that its table fills (and is saved) like everyone else's.
        seeds = self._seeds()
        if not seeds and len(self.node.engine.routing):
            self.node.save_contacts()  # before anything else: a crash now still finds them
            seeds = [c.address for c in self.node.engine.routing.contacts()]
        if seeds:
            self._rejoin(seeds).addErrback(self._bootstrap_failed)
        else:
            self._schedule_retry()

    def _rejoin(self, seeds: list[Address] | None = None) -> Deferred[None]:
        return Deferred.fromCoroutine(self._try_join(seeds or self._seeds()))

    def _guarded(self, name: str, job: Callable[[], object]) -> Deferred[Any] | None:
        if not self.ready:
            return None
        d = defer.maybeDeferred(job)
        d.addCallback(
            lambda result: self.log.debug("{job} done: {result}", job=name, result=result)
        )
        d.addErrback(lambda f: self.log.failure("housekeeping job {job} failed", f, job=name))
        return d

    def stopService(self) -> Deferred[None]:
        """Stop the timers, save the contacts, stop the node (its connections and port)."""
        stopped: Deferred[Any] = defer.maybeDeferred(super().stopService)
        self._bootstrap.cancel()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self.node.save_contacts()
        return defer.gatherResults([stopped, self.node.stop()]).addCallback(lambda _: None)
