"""txdht: a Kademlia distributed hash table for Twisted and asyncio, on one sans-I/O core.

The public API is the names in ``__all__``. ``Node`` (the Twisted node, with a Deferred API) and
``Lookup`` are imported on first use, so that ``import txdht.core`` (and the asyncio side) never
imports Twisted, and nothing here installs a reactor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txdht.core.errors import (
    ErrorCode,
    JoinError,
    NotFoundError,
    OperationTimeout,
    ProtocolError,
    PutError,
    RemoteError,
)
from txdht.core.ids import Contact
from txdht.core.interfaces import IStorage
from txdht.core.items import Identity, Item
from txdht.core.limits import Limits
from txdht.core.storage import MemoryStorage

if TYPE_CHECKING:
    from txdht.node import Lookup, Node

__version__ = "0.1.0"

__all__ = [
    "Contact",
    "ErrorCode",
    "IStorage",
    "Identity",
    "Item",
    "JoinError",
    "Limits",
    "Lookup",
    "MemoryStorage",
    "Node",
    "NotFoundError",
    "OperationTimeout",
    "ProtocolError",
    "PutError",
    "RemoteError",
    "__version__",
]

_TWISTED_NAMES = {"Lookup", "Node"}


def __getattr__(name: str) -> Any:
    if name in _TWISTED_NAMES:
        from txdht import node

        return getattr(node, name)
    raise AttributeError(f"module 'txdht' has no attribute {name!r}")
