"""The durable store: an ``IStorage`` in one SQLite database file in the node's data directory.

What is kept: the records the node holds for the network (``records``: the item as the JSON of
``Item.to_json`` and the time it expires, indexed by expiry), the latest item it published under
each key with the ttl it asked for (``published``), its private key (``meta``, under
``identity``) and its routing table contacts (``contacts``). Keys and ids are 128-character hex.
The file is marked as txdht's with ``PRAGMA application_id`` and its schema version is
``PRAGMA user_version``.

Why WAL and ``synchronous=FULL``: a node acknowledges a store right after ``put`` returns, so
every write method returns only once its write is committed and flushed to disk. Each write is
one autocommitted statement, or one explicit transaction when several statements must apply
together; in WAL mode with ``synchronous=FULL`` SQLite syncs the log on every commit, so an
acknowledged item survives the process being killed or the machine losing power.

What happens on damage: a file that is not a txdht database, is corrupt or truncated, or was
written by a newer txdht is refused at open with ``StorageError`` naming the file and what to
do; it is never replaced by an empty store, and a failed open leaves the file as it was. Open
runs ``PRAGMA quick_check`` and reads every row once so that damage shows there, not mid-run.
A stored item that no longer reads as an ``Item`` raises ``StorageError`` when it is read.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
from collections.abc import Iterator

from zope.interface import implementer

from txdht.core.errors import ProtocolError
from txdht.core.ids import Contact, id_from_hex, id_to_hex
from txdht.core.interfaces import IStorage
from txdht.core.items import Item
from txdht.core.storage import PublishedItem, StoredItem

__all__ = ["SQLiteStorage", "StorageError"]

#: Marks a database file as txdht's (``PRAGMA application_id``): the bytes "txdh".
_APPLICATION_ID = int.from_bytes(b"txdh", "big")
#: The schema version this code writes and reads (``PRAGMA user_version``).
_SCHEMA_VERSION = 1
#: How long to wait, in seconds, for another connection to release the database.
_BUSY_TIMEOUT = 5.0
_TABLES = ("records", "published", "meta", "contacts")
_SCHEMA = (
    "CREATE TABLE records (key TEXT PRIMARY KEY, item TEXT NOT NULL, expires_at REAL NOT NULL)",
    "CREATE INDEX records_expires_at ON records (expires_at)",
    "CREATE TABLE published (key TEXT PRIMARY KEY, item TEXT NOT NULL, ttl REAL NOT NULL)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE contacts (id TEXT PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL)",
    f"PRAGMA application_id = {_APPLICATION_ID}",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)


class StorageError(Exception):
    """The database cannot be used: unreadable, damaged, foreign or from a newer txdht."""


def _encode(item: Item) -> str:
    """The stored text of ``item``: the compact JSON of ``Item.to_json``."""
    return json.dumps(item.to_json(), separators=(",", ":"))


@implementer(IStorage)
class SQLiteStorage:
    """An ``IStorage`` in the SQLite database at ``path``, created with its schema if new.

    Every write is durable when the method returns. Call ``close`` when done.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open or create the database at ``path``; ``StorageError`` if it cannot be used."""
        self.path = os.fspath(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as error:
            raise self._error(error) from None
        try:
            self._open()
        except BaseException as error:
            self._db.close()
            if isinstance(error, sqlite3.Error):
                raise self._error(error) from None
            raise

    def _open(self) -> None:
        """Check the file is a sound txdht database (or empty: then create the schema)."""
        with self._db:  # one write transaction: a read-only or busy file fails here, at once
            self._db.execute("BEGIN IMMEDIATE")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems)[:500])
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            owner = self._db.execute("PRAGMA application_id").fetchone()[0]
            query = "SELECT name FROM sqlite_master WHERE type = 'table'"
            tables = {row[0] for row in self._db.execute(query)}
            if not tables and version == 0 and owner == 0:
                for statement in _SCHEMA:
                    self._db.execute(statement)
            elif owner != _APPLICATION_ID:
                raise self._damaged(f"it has no txdht schema (tables: {', '.join(sorted(tables))})")
            elif version > _SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} was written by a newer txdht (schema version {version}, this "
                    f"one reads {_SCHEMA_VERSION}): run that txdht, or move the file aside to "
                    "start with an empty store"
                )
            elif version != _SCHEMA_VERSION or not set(_TABLES) <= tables:
                raise self._damaged(f"tables are missing (found: {', '.join(sorted(tables))})")
            for table in _TABLES:  # read every row once, so damage shows now
                collections.deque(self._db.execute(f"SELECT * FROM {table}"), maxlen=0)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")

    def _damaged(self, detail: str) -> StorageError:
        """The error for a file that is not a sound txdht database, ``detail`` saying why."""
        return StorageError(
            f"{self.path} is not a txdht database or is damaged: {detail}; "
            "move it aside to start with an empty store"
        )

    def _error(self, error: sqlite3.Error) -> StorageError:
        """The error for ``error`` raised by sqlite3 while opening: unopenable or damaged."""
        if isinstance(error, sqlite3.OperationalError):  # cannot open, read-only, locked...
            return StorageError(
                f"cannot open the txdht database {self.path}: {error}; check that its directory "
                "exists, that this user may write there, and that no other process holds it"
            )
        return self._damaged(str(error))

    def _item(self, key: str, text: str) -> Item:
        """The item stored as ``text`` under the hex ``key``; ``StorageError`` if it is bad."""
        try:
            item = Item.from_json(json.loads(text))
        except (ValueError, TypeError, ProtocolError) as error:
            raise self._damaged(f"the item under key {key} does not read: {error}") from None
        if id_to_hex(item.key) != key:
            raise self._damaged(f"the item under key {key} belongs under another key")
        return item

    def close(self) -> None:
        """Close the database; the store cannot be used afterwards."""
        self._db.close()

    def get(self, key: int) -> StoredItem | None:
        """The record stored under ``key``, or None."""
        query = "SELECT key, item, expires_at FROM records WHERE key = ?"
        row = self._db.execute(query, (id_to_hex(key),)).fetchone()
        return None if row is None else StoredItem(self._item(row[0], row[1]), row[2])

    def put(self, record: StoredItem) -> None:
        """Store ``record`` under its item's key, replacing any; durable when this returns."""
        self._db.execute(
            "INSERT OR REPLACE INTO records (key, item, expires_at) VALUES (?, ?, ?)",
            (id_to_hex(record.key), _encode(record.item), record.expires_at),
        )

    def delete(self, key: int) -> None:
        """Forget the record under ``key``; no error when there is none."""
        self._db.execute("DELETE FROM records WHERE key = ?", (id_to_hex(key),))

    def records(self) -> Iterator[StoredItem]:
        """Every stored record, from a snapshot, so the store may change during iteration."""
        rows = self._db.execute("SELECT key, item, expires_at FROM records").fetchall()
        return iter([StoredItem(self._item(key, item), expires) for key, item, expires in rows])

    def expiries(self) -> Iterator[tuple[int, float]]:
        """The key and expiry time of every record, from a snapshot; no item is read."""
        rows = self._db.execute("SELECT key, expires_at FROM records").fetchall()
        return iter([(self._key(key), expires) for key, expires in rows])

    def _key(self, text: str) -> int:
        """The key written as ``text``; ``StorageError`` if it is not one."""
        try:
            return id_from_hex(text)
        except (ValueError, TypeError):
            raise self._damaged(f"a record's key {text!r:.40} is not a key") from None

    def expire(self, now: float) -> int:
        """Drop every record whose ``expires_at`` is at or before ``now``; return how many."""
        return self._db.execute("DELETE FROM records WHERE expires_at <= ?", (now,)).rowcount

    def count(self) -> int:
        """How many records are stored."""
        count: int = self._db.execute("SELECT count(*) FROM records").fetchone()[0]
        return count

    def published(self, key: int) -> PublishedItem | None:
        """The latest item this node published under ``key``, or None."""
        query = "SELECT key, item, ttl FROM published WHERE key = ?"
        row = self._db.execute(query, (id_to_hex(key),)).fetchone()
        return None if row is None else PublishedItem(self._item(row[0], row[1]), row[2])

    def set_published(self, record: PublishedItem) -> None:
        """Remember ``record`` as the latest publication under its key; durable on return."""
        self._db.execute(
            "INSERT OR REPLACE INTO published (key, item, ttl) VALUES (?, ?, ?)",
            (id_to_hex(record.item.key), _encode(record.item), record.ttl),
        )

    def published_items(self) -> Iterator[PublishedItem]:
        """Every published item, one per key, from a snapshot."""
        rows = self._db.execute("SELECT key, item, ttl FROM published").fetchall()
        return iter([PublishedItem(self._item(key, item), ttl) for key, item, ttl in rows])

    def identity(self) -> bytes | None:
        """The saved private key, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'identity'").fetchone()
        return None if row is None else bytes(row[0])

    def set_identity(self, private_key: bytes) -> None:
        """Save the private key; durable on return."""
        self._db.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES ('identity', ?)", (private_key,)
        )

    def contacts(self) -> list[Contact]:
        """The saved contacts, in the order they were saved."""
        rows = self._db.execute("SELECT id, host, port FROM contacts ORDER BY rowid")
        return [Contact(id_from_hex(ident), host, port) for ident, host, port in rows]

    def set_contacts(self, contacts: list[Contact]) -> None:
        """Replace the saved contacts in one transaction (a later one of an id wins)."""
        rows = [(id_to_hex(contact.id), contact.host, contact.port) for contact in contacts]
        with self._db:  # commits on success, rolls back on an error
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM contacts")
            self._db.executemany("INSERT OR REPLACE INTO contacts VALUES (?, ?, ?)", rows)
