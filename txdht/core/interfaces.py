"""The seams of txdht, as zope interfaces.

Every implementation of an interface passes the same contract tests (``verifyObject`` plus
behaviour), so a store or a transport can be swapped without the rest of the node noticing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from txdht.core.ids import Contact
    from txdht.core.storage import PublishedItem, StoredItem

__all__ = ["IStorage"]


class IStorage(Interface):
    """What a node keeps: items it holds for the network, items it published, its key, its peers.

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

    def expiries() -> Iterator[tuple[int, float]]:
        """The key and expiry time of every stored record, in no particular order: for a scan
        of every record that needs no item, without reading or building an item per record.
        The engine makes one for each newcomer to its routing table, each expire pass and
        each replication round, and reads only the few records each of them then needs."""

    def expire(now: float) -> int:
        """Drop every record whose ``expires_at`` is at or before ``now``; return how many."""

    def count() -> int:
        """How many records are stored."""

    def published(key: int) -> PublishedItem | None:
        """The latest item this node published under ``key``, with the ttl it asked for."""

    def set_published(record: PublishedItem) -> None:
        """Remember ``record`` as this node's latest publication under its item's key."""

    def published_items() -> Iterator[PublishedItem]:
        """Every item this node published, one per key: what it republishes."""

    def identity() -> bytes | None:
        """The node's private key (32 raw Ed25519 bytes) if one was saved: the node's id."""

    def set_identity(private_key: bytes) -> None:
        """Save the node's private key, so that a restarted node keeps its id."""

    def contacts() -> list[Contact]:
        """The routing table contacts saved last, to rejoin without a seed after a restart."""

    def set_contacts(contacts: list[Contact]) -> None:
        """Replace the saved routing table contacts."""
