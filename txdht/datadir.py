"""One running node per data directory: a lock held for as long as the node runs.

Two nodes started on one data directory would share one identity (the network would see one
id at two addresses) and write one database at once. ``twistd dht`` and ``python -m txdht.aio``
take this lock before they open the database, and the second node is refused with a line
saying so. The lock is an exclusive ``flock`` on ``node.lock`` in the directory: the system
lets it go when the process ends, however it ends, so a crash leaves nothing to clean up.
Where ``fcntl`` is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def _flock(fd: int) -> None:
    """Take the exclusive lock on ``fd`` or raise ``BlockingIOError`` at once."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


_lock: Callable[[int], None] | None = _flock
try:
    import fcntl
except ImportError:  # pragma: no cover - no flock on Windows: nothing is locked there
    _lock = None

__all__ = ["LOCK_FILE", "DataDirInUse", "DataDirLock"]

#: The file the lock is held on, in the data directory.
LOCK_FILE = "node.lock"


class DataDirInUse(Exception):
    """Another running node holds the data directory."""


class DataDirLock:
    """The lock on ``directory`` (which must exist), held from construction to ``release``;
    ``DataDirInUse`` if another process (or another lock in this one) holds it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if _lock is None:  # pragma: no cover - see the module docstring
            return
        try:
            _lock(self._fd)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise DataDirInUse(
                f"the data directory {self.path.parent} is in use by another running node: "
                "give each node its own data directory"
            ) from None

    @property
    def held(self) -> bool:
        """Whether the lock is still held (not released)."""
        return self._fd is not None

    def release(self) -> None:
        """Let the directory go (once; later calls do nothing)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
