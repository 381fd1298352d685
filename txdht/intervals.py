"""How often each housekeeping job runs; shared by the Twisted service and the asyncio twin."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REFRESH_INTERVAL", "Intervals"]

#: A bucket no lookup touched for this long is refreshed (the Kademlia paper's hour).
REFRESH_INTERVAL = 3600.0


@dataclass(frozen=True)
class Intervals:
    """Seconds between two runs of each housekeeping job."""

    refresh: float = 600.0
    replicate: float = 3600.0
    republish: float = 12 * 3600.0
    expire: float = 60.0
    save: float = 300.0
    #: A bucket untouched by lookups for this long is refreshed.
    stale_bucket: float = REFRESH_INTERVAL
