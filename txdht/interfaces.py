"""The seams of txdht, as zope interfaces.

Every implementation of an interface passes the same contract tests (``verifyObject`` plus
behaviour), so a store or a transport can be swapped without the rest of the node noticing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from txdht.core.items import Item
    from txdht.core.storage import StoredItem

__all__ = ["IStorage"]


class IStorage(Interface):
    """Where a node keeps the items it holds for the network, and the items it published itself.

    A store is a dumb, durable map: the rules about which item may replace which (signatures,
    sequence numbers) are applied by the core before it calls ``put``. ``put`` returns only once
    the write is durable, because the node acknowledges a store right after it.
    """

    def get(key: int) -> StoredItem | None:
        """The record stored under ``key``, or None."""

    def put(record: StoredItem) -> None:
        """Store ``record`` under its item's key, replacing whatever was there."""

    def delete(key: int) -> None:
        """Forget the record under ``key``; no error when there is none."""

    def records() -> Iterator[StoredItem]:
        """Every stored record, in no particular order."""

    def expire(now: float) -> int:
        """Drop every record whose ``expires_at`` is at or before ``now``; return how many."""

    def count() -> int:
        """How many records are stored."""

    def published(name: str) -> Item | None:
        """The latest item this node published under ``name`` (with its sequence number)."""

    def set_published(item: Item) -> None:
        """Remember ``item`` as this node's latest publication under its name."""

    def published_items() -> Iterator[Item]:
        """Every item this node published, one per name: what it republishes."""
