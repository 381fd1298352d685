"""Stored records and the in-memory store.

A node keeps two things: the records it holds for the network (each an item plus the time it
expires), and the latest item it published under each name, which it republishes before those
records expire elsewhere. ``MemoryStorage`` keeps both in dicts; it is the store for tests and
for nodes that need not survive a restart. Whether a new item may replace a stored one is decided
by ``txdht.core.items.accept`` before ``put`` is called, never by the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from zope.interface import implementer

from txdht.core.items import Item
from txdht.interfaces import IStorage

__all__ = ["MemoryStorage", "StoredItem"]


@dataclass(frozen=True)
class StoredItem:
    """An item held for the network, and the time (seconds, the caller's clock) it expires."""

    item: Item
    expires_at: float

    @property
    def key(self) -> int:
        """The item's key, which the record is stored under."""
        return self.item.key

    @property
    def id(self) -> int:
        """The item's key, as a place on the id space."""
        return self.item.key


@implementer(IStorage)
class MemoryStorage:
    """An ``IStorage`` in two dicts; everything is lost when the process ends."""

    def __init__(self) -> None:
        self._records: dict[int, StoredItem] = {}
        self._published: dict[str, Item] = {}

    def get(self, key: int) -> StoredItem | None:
        """The record stored under ``key``, or None."""
        return self._records.get(key)

    def put(self, record: StoredItem) -> None:
        """Store ``record`` under its item's key, replacing whatever was there."""
        self._records[record.key] = record

    def delete(self, key: int) -> None:
        """Forget the record under ``key``; no error when there is none."""
        self._records.pop(key, None)

    def records(self) -> Iterator[StoredItem]:
        """Every stored record, from a snapshot, so the store may change during iteration."""
        return iter(list(self._records.values()))

    def expire(self, now: float) -> int:
        """Drop every record whose ``expires_at`` is at or before ``now``; return how many."""
        dead = [key for key, record in self._records.items() if record.expires_at <= now]
        for key in dead:
            del self._records[key]
        return len(dead)

    def count(self) -> int:
        """How many records are stored."""
        return len(self._records)

    def published(self, name: str) -> Item | None:
        """The latest item this node published under ``name``, or None."""
        return self._published.get(name)

    def set_published(self, item: Item) -> None:
        """Remember ``item`` as the latest publication under its name (ValueError for a blob)."""
        if item.name is None:
            raise ValueError("only a mutable item, which has a name, can be recorded as published")
        self._published[item.name] = item

    def published_items(self) -> Iterator[Item]:
        """Every published item, one per name, from a snapshot."""
        return iter(list(self._published.values()))
