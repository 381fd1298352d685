"""512-bit identifiers on the "clock face" of XOR distance.

Every node and every item has a place in one id space: the integers from 0 to 2**512 - 1, taken
from sha512. A node's id is the sha512 of its Ed25519 public key; an item's key is the sha512 of
what names it. The distance between two ids is their XOR, read as an integer: it is symmetric, zero
only for equal ids, and for any point and distance there is exactly one id at that distance, which
is what lets every node agree on "the k closest to X" without talking to anyone.

Ids are plain ``int`` values in memory (XOR and comparison are then single operations) and
128-character lowercase hex strings on the wire and in the public API.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ID_BITS",
    "ID_HEX_LENGTH",
    "MAX_ID",
    "Contact",
    "bucket_index",
    "closest",
    "distance",
    "id_from_hex",
    "id_to_hex",
    "sha512_id",
]

#: The width of every id and key: the size of a sha512 digest in bits.
ID_BITS = 512
#: The largest id; the smallest is 0.
MAX_ID = (1 << ID_BITS) - 1
#: An id written as lowercase hex, zero-padded, is always this long.
ID_HEX_LENGTH = ID_BITS // 4

_HEX_ID = re.compile(rf"[0-9a-f]{{{ID_HEX_LENGTH}}}")


def sha512_id(data: bytes) -> int:
    """The id of ``data``: its sha512 digest read as a big-endian integer."""
    return int.from_bytes(hashlib.sha512(data).digest(), "big")


def distance(a: int, b: int) -> int:
    """The XOR distance between two ids."""
    return a ^ b


def bucket_index(own: int, other: int) -> int:
    """The index of the highest bit in which ``own`` and ``other`` differ (-1 when equal).

    Contacts whose distance from us has its top bit at position i share the first 511 - i bits
    of our id: this is the number of the k-bucket they belong to in a fully split table.
    """
    return (own ^ other).bit_length() - 1


def closest(target: int, entries: Iterable[Contact], count: int) -> list[Contact]:
    """The ``count`` entries closest to ``target``, nearest first (distinct ids never tie).

    ``sorted(...)[:count]`` is what ``heapq.nsmallest`` is documented to equal; for the few
    dozen contacts a node sorts per request it is twice as fast (nsmallest's heap is Python).
    """
    return sorted(entries, key=lambda entry: entry.id ^ target)[:count]


@functools.lru_cache(maxsize=1 << 14)
def id_to_hex(ident: int) -> str:
    """The 128-character lowercase hex form of an id (cached, like ``id_from_hex``: the same
    few hundred ids fill every ``nodes`` reply a node sends and reads)."""
    return format(ident, f"0{ID_HEX_LENGTH}x")


@functools.lru_cache(maxsize=1 << 14)
def id_from_hex(text: str) -> int:
    """Parse an id written as 128 lowercase hex characters; ``ValueError`` for anything else
    (``TypeError`` for an unhashable value, which the cache cannot look up)."""
    if not isinstance(text, str) or not _HEX_ID.fullmatch(text):
        raise ValueError(f"an id is {ID_HEX_LENGTH} lowercase hex characters, got {text!r:.40}")
    return int(text, 16)


@dataclass(frozen=True)
class Contact:
    """Where a node is: its id, and the host and port it listens on."""

    id: int
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` to connect to."""
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"{id_to_hex(self.id)[:12]}@{self.host}:{self.port}"
