"""A node as a long-running Twisted service: listen, then the node's life from the core.

``DHTService`` is what ``twistd dht`` runs (``txdht.tap`` builds it), and what a Twisted
application can add to its own service tree. On start it listens (failing at once if the
endpoint cannot be had), then runs ``txdht.core.schedule.Service`` on the node: the join with
its retries, and the housekeeping jobs on their intervals, as the asyncio launcher and the
simulator run them too. On stop it stops the node (its operations, connections and port; the
core saves the contacts first).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service as TwistedService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txdht.core.schedule import Intervals, Service
from txdht.node import Address, Node

__all__ = ["DHTService"]


class DHTService(TwistedService):
    """Run ``node``: listen on ``endpoint`` (unless None), join ``seeds``, keep house."""

    def __init__(
        self,
        node: Node,
        *,
        endpoint: str | None = None,
        seeds: list[Address] | None = None,
        intervals: Intervals | None = None,
    ) -> None:
        self.node = node
        self.endpoint = endpoint
        self.seeds = list(seeds or [])
        self.intervals = intervals or Intervals()
        self.service: Service | None = None
        self._waiting: list[Deferred[None]] = []
        node.ready_observers.append(self._ready)

    @property
    def ready(self) -> bool:
        """True once the node listens and has tried to join."""
        return self.service is not None and self.service.ready

    def startService(self) -> None:
        """Listen (raising at once if the endpoint cannot be had), then start the node's life."""
        if self.endpoint is not None:
            outcome: list[object] = []
            self.node.listen(self.endpoint).addBoth(outcome.append)
            if isinstance(outcome[0], Failure):
                outcome[0].raiseException()
        super().startService()  # type: ignore[no-untyped-call]
        self.service = self.node.serve(self.seeds, self.intervals)

    def when_ready(self) -> Deferred[None]:
        """A new Deferred that fires once the node listens and has tried to join."""
        if self.ready:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _ready(self, joined: bool) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stopService(self) -> Deferred[Any]:
        """Stop the node: its operations and timers (saving its contacts), its connections,
        its port."""
        super().stopService()  # type: ignore[no-untyped-call]
        return self.node.stop()
