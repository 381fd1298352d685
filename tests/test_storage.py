"""Contract tests for every IStorage implementation, and tests of StoredItem."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from txdht.core.ids import Contact
from txdht.core.interfaces import IStorage
from txdht.core.items import Identity, blob
from txdht.core.storage import MemoryStorage, PublishedItem, StoredItem
from txdht.sqlite import SQLiteStorage

OWNER = Identity.from_private_bytes(bytes(range(32)))


FACTORIES: dict[str, Callable[[Path], IStorage]] = {
    "memory": lambda tmp_path: MemoryStorage(),
    "sqlite": lambda tmp_path: SQLiteStorage(tmp_path / "txdht.sqlite3"),
}


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IStorage]:
    """A fresh, empty store of each implementation, closed after the test when it can be."""
    made = FACTORIES[request.param](tmp_path)
    yield made
    if isinstance(made, SQLiteStorage):
        made.close()


def record(value: bytes, expires_at: float = 100.0) -> StoredItem:
    """A record of the blob ``value`` expiring at ``expires_at``."""
    return StoredItem(blob(value), expires_at)


def test_stored_item_id_is_item_key() -> None:
    """A record's id and key are its item's key."""
    item = OWNER.sign("n", b"v", 1)
    stored = StoredItem(item, 5.0)
    assert stored.key == item.key


def test_provides_interface(store: IStorage) -> None:
    """The store fully provides IStorage."""
    assert verifyObject(IStorage, store)


def test_empty_store(store: IStorage) -> None:
    """A new store holds no records and no publications."""
    assert store.count() == 0
    assert store.get(blob(b"a").key) is None
    assert list(store.records()) == []
    assert list(store.expiries()) == []
    assert store.expire(1e12) == 0
    assert store.published(blob(b"a").key) is None
    assert list(store.published_items()) == []
    assert store.identity() is None
    assert store.contacts() == []


def test_put_then_get(store: IStorage) -> None:
    """A record put is found under its item's key and counted."""
    first, second = record(b"a"), record(b"b")
    store.put(first)
    store.put(second)
    assert store.get(first.key) == first
    assert store.get(second.key) == second
    assert store.count() == 2


def test_a_record_reads_back_whole(store: IStorage) -> None:
    """A signed record reads back with every field of its item, the same key and expiry, and
    its signature still verifying, once the objects it was put as are gone."""
    item = OWNER.sign("name", b"value", 7)
    key, fields = item.key, (item.value, item.public_key, item.name, item.seq, item.signature)
    store.put(StoredItem(item, 12.5))
    del item
    got = store.get(key)
    assert got is not None
    assert (got.item.value, got.item.public_key, got.item.name) == fields[:3]
    assert (got.item.seq, got.item.signature) == fields[3:]
    assert (got.key, got.item.key, got.expires_at) == (key, key, 12.5)
    got.item.verify()
    assert got.item.mutable
    assert [each.item for each in store.records()] == [got.item]


def test_memory_records_are_not_walked_by_the_cycle_collector() -> None:
    """MemoryStorage holds records as tuples of bytes, str, numbers and None, which the cycle
    collector stops tracking: holding many records adds nothing for every full collection to
    walk (as objects, each was two: the item and the record; docs/performance.md)."""
    store = MemoryStorage()
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1000):
        item = OWNER.sign(f"n{i}", b"v", 1) if i % 2 else blob(i.to_bytes(2, "big"))
        store.put(StoredItem(item, 100.0 + i))
    del item
    gc.collect()
    assert len(gc.get_objects()) - before < 100  # 2,000 when the records were objects
    assert store.count() == 1000
    assert store.get(blob((998).to_bytes(2, "big")).key) == StoredItem(
        blob((998).to_bytes(2, "big")), 1098.0
    )


def test_put_replaces_same_key(store: IStorage) -> None:
    """Putting a record under a key already used replaces the old one."""
    old = StoredItem(OWNER.sign("n", b"old", 1), 10.0)
    new = StoredItem(OWNER.sign("n", b"new", 2), 20.0)
    store.put(old)
    store.put(new)
    assert store.get(old.key) == new
    assert store.count() == 1


def test_delete(store: IStorage) -> None:
    """Delete forgets one record, and deleting a missing key is not an error."""
    kept, gone = record(b"a"), record(b"b")
    store.put(kept)
    store.put(gone)
    store.delete(gone.key)
    store.delete(gone.key)
    store.delete(12345)
    assert store.get(gone.key) is None
    assert store.get(kept.key) == kept
    assert store.count() == 1


def test_records_lists_every_record(store: IStorage) -> None:
    """records() yields each stored record once."""
    records = [record(bytes([i])) for i in range(5)]
    for each in records:
        store.put(each)
    assert sorted(store.records(), key=lambda r: r.key) == sorted(records, key=lambda r: r.key)


def test_expiries_lists_each_record_key_and_expiry(store: IStorage) -> None:
    """expiries() yields each stored record's key and expiry time once, from a snapshot."""
    records = [record(bytes([i]), 10.0 + i) for i in range(5)]
    for each in records:
        store.put(each)
    store.put(record(bytes([4]), 99.0))  # replaced: its latest expiry only
    expected = sorted([(r.key, r.expires_at) for r in records[:4]] + [(records[4].key, 99.0)])
    assert sorted(store.expiries()) == expected
    seen = []
    for key, _ in store.expiries():
        store.delete(key)
        seen.append(key)
    assert sorted(seen) == [key for key, _ in expected]
    assert store.count() == 0


def test_records_may_change_during_iteration(store: IStorage) -> None:
    """Deleting and adding records while iterating records() is safe and sees the snapshot."""
    for i in range(3):
        store.put(record(bytes([i])))
    seen = 0
    for each in store.records():
        store.delete(each.key)
        store.put(record(b"new" + bytes([seen])))
        seen += 1
    assert seen == 3
    assert store.count() == 3


def test_expire_drops_records_at_or_before_now(store: IStorage) -> None:
    """expire(now) drops records expiring before or exactly at now, keeps later ones."""
    early, exact, late = record(b"a", 9.5), record(b"b", 10.0), record(b"c", 10.001)
    for each in (early, exact, late):
        store.put(each)
    assert store.expire(9.0) == 0
    assert store.expire(10.0) == 2
    assert store.get(early.key) is None
    assert store.get(exact.key) is None
    assert store.get(late.key) == late
    assert store.count() == 1
    assert store.expire(10.0) == 0
    assert store.expire(11.0) == 1
    assert store.count() == 0


def test_published_keeps_latest_per_key(store: IStorage) -> None:
    """set_published replaces the item under the same key and keeps other keys apart."""
    first = PublishedItem(OWNER.sign("a", b"1", 1), 60.0)
    second = PublishedItem(OWNER.sign("a", b"2", 2), 30.0)
    other = PublishedItem(blob(b"x"), 90.0)
    store.set_published(first)
    store.set_published(other)
    assert store.published(first.item.key) == first
    store.set_published(second)
    assert store.published(first.item.key) == second
    assert store.published(other.item.key) == other
    assert store.published(blob(b"nothing").key) is None
    assert sorted(store.published_items(), key=lambda p: p.ttl) == [second, other]


def test_published_is_separate_from_records(store: IStorage) -> None:
    """Publishing does not store a record, and storing a record does not publish it."""
    item = OWNER.sign("a", b"1", 1)
    store.set_published(PublishedItem(item, 60.0))
    assert store.count() == 0
    stored = OWNER.sign("b", b"1", 1)
    store.put(StoredItem(stored, 5.0))
    assert store.published(stored.key) is None


def test_published_items_may_change_during_iteration(store: IStorage) -> None:
    """Publishing while iterating published_items() is safe and sees the snapshot."""
    store.set_published(PublishedItem(OWNER.sign("a", b"1", 1), 60.0))
    seen: list[PublishedItem] = []
    for published in store.published_items():
        seen.append(published)
        store.set_published(PublishedItem(OWNER.sign("b", b"1", 1), 60.0))
    assert len(seen) == 1
    assert len(list(store.published_items())) == 2


def test_identity_round_trip(store: IStorage) -> None:
    """The saved private key is returned as saved, and replaced by a later save."""
    store.set_identity(b"k" * 32)
    assert store.identity() == b"k" * 32
    store.set_identity(b"j" * 32)
    assert store.identity() == b"j" * 32


def test_contacts_are_replaced_whole(store: IStorage) -> None:
    """set_contacts replaces the saved list; the returned list is a copy."""
    first = [Contact(1, "127.0.0.1", 4001), Contact(2, "::1", 4002)]
    store.set_contacts(first)
    got = store.contacts()
    assert sorted(got, key=lambda c: c.id) == first
    got.clear()
    assert len(store.contacts()) == 2
    store.set_contacts([Contact(3, "127.0.0.1", 4003)])
    assert store.contacts() == [Contact(3, "127.0.0.1", 4003)]
