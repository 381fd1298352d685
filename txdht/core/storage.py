"""Stored records and the in-memory store.

A node keeps the records it holds for the network (each an item plus the time it expires), the
latest item it published under each key with the ttl it asked for (it republishes them before
those records expire elsewhere), its private key, and its routing table contacts.
``MemoryStorage`` keeps them in memory; it is the store for tests and for nodes that need not
survive a restart (``txdht.sqlite.SQLiteStorage`` is the durable one). Whether a new item may
replace a stored one is decided by ``txdht.core.items.accept`` before ``put`` is called, never
by the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from zope.interface import implementer

from txdht.core.ids import Contact
from txdht.core.interfaces import IStorage
from txdht.core.items import Item, held_item

_new = object.__new__

__all__ = ["MemoryStorage", "PublishedItem", "StoredItem"]


@dataclass(frozen=True)
class StoredItem:
    """An item held for the network, and the time (seconds, the caller's clock) it expires."""

    item: Item
    expires_at: float

    @property
    def key(self) -> int:
        """The item's key, which the record is stored under."""
        return self.item.key


@dataclass(frozen=True)
class PublishedItem:
    """An item this node published, and the ttl it asked the holders to keep it for."""

    item: Item
    ttl: float


#: A stored record's fields: the item's value, public key, name, seq and signature, and the
#: time the record expires.
_Fields = tuple[bytes, "bytes | None", "str | None", int, "bytes | None", float]


def _fields(record: StoredItem) -> _Fields:
    """``record`` as a tuple of bytes, str, numbers and None, which the cycle collector stops
    tracking at its first pass (it holds nothing that could be part of a cycle).

    Kept as objects, each record was two tracked objects (the item and the record) for as long
    as it is held: a node holding many records made every full collection walk them all, and
    their growth is what set off full collections while puts came in (docs/performance.md)."""
    item = record.item
    return (item.value, item.public_key, item.name, item.seq, item.signature, record.expires_at)


def _record(key: int, fields: _Fields) -> StoredItem:
    """The record ``_fields`` took apart, under ``key``."""
    value, public_key, name, seq, signature, expires_at = fields
    record = _new(StoredItem)  # as ``held_item`` builds the item: no dataclass ``__init__``
    record.__dict__.update(
        item=held_item(key, value, public_key, name, seq, signature), expires_at=expires_at
    )
    return record


@implementer(IStorage)
class MemoryStorage:
    """An ``IStorage`` in two dicts; everything is lost when the process ends. Records are
    kept as tuples of their fields (``_fields``), not as the objects ``get`` returns."""

    def __init__(self) -> None:
        #: Each record as ``_Fields``: see ``_fields``.
        self._records: dict[int, _Fields] = {}
        self._published: dict[int, PublishedItem] = {}
        self._identity: bytes | None = None
        self._contacts: list[Contact] = []

    def get(self, key: int) -> StoredItem | None:
        """The record stored under ``key``, or None."""
        fields = self._records.get(key)
        return None if fields is None else _record(key, fields)

    def put(self, record: StoredItem) -> None:
        """Store ``record`` under its item's key, replacing whatever was there."""
        self._records[record.key] = _fields(record)

    def delete(self, key: int) -> None:
        """Forget the record under ``key``; no error when there is none."""
        self._records.pop(key, None)

    def records(self) -> Iterator[StoredItem]:
        """Every stored record, from a snapshot, so the store may change during iteration."""
        return iter([_record(key, fields) for key, fields in self._records.items()])

    def expiries(self) -> Iterator[tuple[int, float]]:
        """The key and expiry time of every record, from a snapshot (no record is built)."""
        return iter([(key, fields[5]) for key, fields in self._records.items()])

    def expire(self, now: float) -> int:
        """Drop every record whose ``expires_at`` is at or before ``now``; return how many."""
        dead = [key for key, fields in self._records.items() if fields[5] <= now]
        for key in dead:
            del self._records[key]
        return len(dead)

    def count(self) -> int:
        """How many records are stored."""
        return len(self._records)

    def published(self, key: int) -> PublishedItem | None:
        """The latest item this node published under ``key``, or None."""
        return self._published.get(key)

    def set_published(self, record: PublishedItem) -> None:
        """Remember ``record`` as the latest publication under its key."""
        self._published[record.item.key] = record

    def published_items(self) -> Iterator[PublishedItem]:
        """Every published item, one per key, from a snapshot."""
        return iter(list(self._published.values()))

    def identity(self) -> bytes | None:
        """The saved private key, or None."""
        return self._identity

    def set_identity(self, private_key: bytes) -> None:
        """Save the private key."""
        self._identity = private_key

    def contacts(self) -> list[Contact]:
        """The saved contacts."""
        return list(self._contacts)

    def set_contacts(self, contacts: list[Contact]) -> None:
        """Replace the saved contacts."""
        self._contacts = list(contacts)
