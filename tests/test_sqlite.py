"""Tests of SQLiteStorage beyond the IStorage contract: persistence, durability, damage."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from txdht import sqlite as txdht_sqlite
from txdht.core.ids import Contact, id_to_hex
from txdht.core.items import Identity, blob
from txdht.core.storage import PublishedItem, StoredItem
from txdht.sqlite import SQLiteStorage, StorageError

ROOT = Path(__file__).resolve().parents[1]
OWNER = Identity.from_private_bytes(bytes(range(32)))


def raw(path: Path, *statements: str) -> None:
    """Run ``statements`` on the database at ``path`` with plain sqlite3, and commit."""
    with closing(sqlite3.connect(path)) as db, db:
        for statement in statements:
            db.execute(statement)


def pragma(path: Path, name: str) -> object:
    """The value of ``PRAGMA name`` in the database at ``path``."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


def filled(path: Path) -> None:
    """Make a txdht database at ``path`` holding a hundred 1000-byte records."""
    with closing(SQLiteStorage(path)) as store:
        for i in range(100):
            store.put(StoredItem(blob(bytes([i]) * 1000), float(i)))


def garbage(path: Path) -> None:
    """Random bytes."""
    path.write_bytes(os.urandom(10_000))


def foreign(path: Path) -> None:
    """Another application's database, without a schema version."""
    raw(path, "CREATE TABLE songs (title TEXT)", "INSERT INTO songs VALUES ('x')")


def foreign_versioned(path: Path) -> None:
    """Another application's database with a schema version of its own."""
    raw(path, "CREATE TABLE records (a)", "PRAGMA user_version = 7")


def truncated(path: Path) -> None:
    """A txdht database cut to half its size."""
    filled(path)
    os.truncate(path, path.stat().st_size // 2)


def scrambled(path: Path) -> None:
    """A txdht database whose index page lost its cell pointers (quick_check lists problems)."""
    filled(path)
    with path.open("r+b") as file:
        file.seek(2 * 4096 + 12)
        file.write(bytes(50))


def table_dropped(path: Path) -> None:
    """A txdht database missing one of its tables."""
    filled(path)
    raw(path, "DROP TABLE contacts")


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (garbage, "file is not a database"),
        (foreign, "no txdht schema"),
        (foreign_versioned, "no txdht schema"),
        (truncated, "malformed"),
        (scrambled, "out of range"),
        (table_dropped, "tables are missing"),
    ],
)
def test_damaged_file_is_refused_and_left_alone(
    tmp_path: Path, damage: Callable[[Path], None], detail: str
) -> None:
    """A file that is not a sound txdht database raises StorageError naming it, and is kept."""
    path = tmp_path / "txdht.sqlite3"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StorageError, match="is not a txdht database or is damaged") as caught:
        SQLiteStorage(path)
    assert str(path) in str(caught.value)
    assert detail in str(caught.value)
    assert "move it aside" in str(caught.value)
    assert path.read_bytes() == before


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer txdht is refused, saying so, and left alone."""
    path = tmp_path / "txdht.sqlite3"
    filled(path)
    raw(path, "PRAGMA user_version = 2")
    before = path.read_bytes()
    with pytest.raises(StorageError, match="written by a newer txdht") as caught:
        SQLiteStorage(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["missing/txdht.sqlite3", "."])
def test_unopenable_path(tmp_path: Path, name: str) -> None:
    """A path in a missing directory, or a directory itself, raises StorageError naming it."""
    path = tmp_path / name
    with pytest.raises(StorageError, match="cannot open the txdht database") as caught:
        SQLiteStorage(path)
    assert str(path) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directory(tmp_path: Path) -> None:
    """A path in a directory this user may not write raises StorageError naming it."""
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="cannot open") as caught:
            SQLiteStorage(tmp_path / "txdht.sqlite3")
    finally:
        tmp_path.chmod(0o700)
    assert str(tmp_path) in str(caught.value)


def test_locked_database_is_not_called_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database another process holds raises StorageError that says so, not "damaged"."""
    path = tmp_path / "txdht.sqlite3"
    filled(path)
    monkeypatch.setattr(txdht_sqlite, "_BUSY_TIMEOUT", 0.01)
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match=r"cannot open .* database is locked"):
            SQLiteStorage(path)
        other.execute("ROLLBACK")


def test_fresh_file_gets_the_schema(tmp_path: Path) -> None:
    """A new database has the txdht tables, schema version 1, and is in WAL mode."""
    path = tmp_path / "txdht.sqlite3"
    SQLiteStorage(path).close()
    assert pragma(path, "user_version") == 1
    assert pragma(path, "journal_mode") == "wal"
    with closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"records", "records_expires_at", "published", "meta", "contacts"} <= tables
    SQLiteStorage(path).close()


def test_everything_persists_across_reopen(tmp_path: Path) -> None:
    """Records, publications, the identity and the contacts are all there after a reopen."""
    path = tmp_path / "txdht.sqlite3"
    records = [StoredItem(blob(b"a"), 12.5), StoredItem(OWNER.sign("n", b"v", 3), 99.0)]
    published = [PublishedItem(OWNER.sign("p", b"w", 1), 3600.0), PublishedItem(blob(b"b"), 60)]
    contacts = [Contact(7, "127.0.0.1", 4001), Contact(3, "::1", 4002)]
    with closing(SQLiteStorage(path)) as store:
        for each in records:
            store.put(each)
        for publication in published:
            store.set_published(publication)
        store.set_identity(b"k" * 32)
        store.set_contacts(contacts)
    with closing(SQLiteStorage(path)) as store:
        assert sorted(store.records(), key=lambda r: r.key) == sorted(records, key=lambda r: r.key)
        assert store.get(records[1].key) == records[1]
        assert sorted(store.published_items(), key=lambda p: p.ttl) == published[::-1]
        assert store.identity() == b"k" * 32
        assert store.contacts() == contacts
        assert store.expire(50.0) == 1
    with closing(SQLiteStorage(path)) as store:
        assert list(store.records()) == [records[1]]


def test_item_survives_sigkill(tmp_path: Path) -> None:
    """An item put by a process killed with SIGKILL right after put returned is there."""
    path = tmp_path / "txdht.sqlite3"
    code = textwrap.dedent(
        """
        import sys
        from txdht.core.items import blob
        from txdht.core.storage import StoredItem
        from txdht.sqlite import SQLiteStorage
        store = SQLiteStorage(sys.argv[1])
        store.put(StoredItem(blob(b"acknowledged"), 123.0))
        print("stored", flush=True)
        sys.stdin.read()
        """
    )
    command = [sys.executable, "-c", code, str(path)]
    with subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        try:
            ready, _, _ = select.select([process.stdout], [], [], 30)
            assert ready, "the child did not report the store within 30 seconds"
            assert process.stdout.readline() == "stored\n"
        finally:
            os.kill(process.pid, signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
    with closing(SQLiteStorage(path)) as store:
        assert store.get(blob(b"acknowledged").key) == StoredItem(blob(b"acknowledged"), 123.0)


def test_a_record_key_that_is_not_a_key_raises_naming_the_file(tmp_path: Path) -> None:
    """expiries() (which reads no item) refuses a record whose key column is not a key."""
    path = tmp_path / "txdht.sqlite3"
    with closing(SQLiteStorage(path)) as store:
        store.put(StoredItem(blob(b"x"), 1.0))
        assert list(store.expiries()) == [(blob(b"x").key, 1.0)]
    raw(path, "UPDATE records SET key = 'not a key'")
    with closing(SQLiteStorage(path)) as store:
        with pytest.raises(StorageError, match="a record's key 'not a key' is not a key") as caught:
            list(store.expiries())
        assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "does not read"),
        ('{"value": 5}', "does not read"),
        ('{"value": "YQ=="}', "belongs under another key"),
    ],
)
def test_unreadable_item_raises_naming_its_key(tmp_path: Path, text: str, problem: str) -> None:
    """A stored item that is not a valid Item under its key raises StorageError when read."""
    path = tmp_path / "txdht.sqlite3"
    item = blob(b"x")
    key = id_to_hex(item.key)
    with closing(SQLiteStorage(path)) as store:
        store.put(StoredItem(item, 1.0))
        store.set_published(PublishedItem(item, 1.0))
    raw(path, f"UPDATE records SET item = '{text}'", f"UPDATE published SET item = '{text}'")
    with closing(SQLiteStorage(path)) as store:
        for read in (
            lambda: store.get(item.key),
            lambda: list(store.records()),
            lambda: store.published(item.key),
            lambda: list(store.published_items()),
        ):
            with pytest.raises(StorageError, match=problem) as caught:
                read()
            assert key in str(caught.value)
            assert str(path) in str(caught.value)


def test_set_contacts_is_all_or_nothing(tmp_path: Path) -> None:
    """A failure while replacing the contacts keeps the old ones; a repeated id keeps the last."""
    with closing(SQLiteStorage(tmp_path / "txdht.sqlite3")) as store:
        store.set_contacts([Contact(1, "127.0.0.1", 4001)])
        bad = Contact(2, None, 4002)  # type: ignore[arg-type]
        with pytest.raises(sqlite3.IntegrityError):
            store.set_contacts([Contact(3, "127.0.0.1", 4003), bad])
        assert store.contacts() == [Contact(1, "127.0.0.1", 4001)]
        store.set_contacts([Contact(1, "a", 1), Contact(1, "b", 2)])
        assert store.contacts() == [Contact(1, "b", 2)]
