"""What the DHT stores: immutable blobs and signed mutable items.

A *blob* is a value stored under its own hash: its key is ``sha512(value)``, so anyone who asks
for that key can check what comes back without trusting the node that answered, and nobody can
ever store different data under it.

A *mutable item* belongs to an Ed25519 key pair. Its key is ``sha512(public_key + name)``, so one
owner can keep many items (one per name) and nobody else can write under them: the owner signs
``(name, seq, value)`` (see ``signed_payload``) and every node and every reader checks the
signature against the public key carried in the item. The public key is bound into the key, so a
forger cannot sign with a key of their own either.

The sequence number orders the versions of one item. Nodes' clocks disagree and a peer can lie
about time, so "the newest write wins" would let an attacker replay an old, validly signed
version; instead a node keeps the highest ``seq`` it has seen and refuses anything lower (see
``accept``). The owner increments ``seq`` on every change.

Items live, like everything in Kademlia, on the k nodes whose ids are closest to the item's key.
They expire there after a time to live unless the publisher stores them again, which the owner's
node does periodically for what it published.

This module is pure: no I/O, no clock. Wire form is a JSON object (``Item.to_json``).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import ClassVar, overload

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import sha512_id

__all__ = [
    "DEFAULT_TTL",
    "MAX_NAME_BYTES",
    "MAX_SEQ",
    "MAX_TTL",
    "MAX_VALUE_BYTES",
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "Identity",
    "Item",
    "accept",
    "blob",
    "from_base64",
    "mutable_key",
    "proves",
    "signed_payload",
    "to_base64",
]

#: Longest name, in UTF-8 bytes: plenty for a label chosen by a person or a program, and it keeps
#: every message small and the 2-byte length prefix in ``signed_payload`` far from its limit.
MAX_NAME_BYTES = 256
#: Largest value a node accepts by default: every item is kept by k nodes and sent in one
#: message, so this bounds the memory and bandwidth one peer can make a node spend per item.
MAX_VALUE_BYTES = 64 * 1024
#: How long a stored item lives, in seconds, unless its publisher stores it again: a day is long
#: enough to ride out a publisher's restart and short enough that abandoned items go away.
DEFAULT_TTL = 24 * 3600.0
#: The longest life a store request may ask for, so no peer can fill a node with immortal data.
MAX_TTL = 48 * 3600.0
#: Sequence numbers run from 0 to ``MAX_SEQ``: they must fit the signed payload's 8 bytes and a
#: signed 64-bit integer, which is what other implementations and databases will hold them in.
MAX_SEQ = 2**63 - 1
#: Size of a raw Ed25519 public key.
PUBLIC_KEY_BYTES = 32
#: Size of an Ed25519 signature.
SIGNATURE_BYTES = 64

#: Random bytes a node sends in a handshake ``ping`` for the peer to sign.
CHALLENGE_BYTES = 32
#: A handshake proof: the peer's public key, then its signature of the challenge.
PROOF_BYTES = PUBLIC_KEY_BYTES + SIGNATURE_BYTES

_DOMAIN = b"txdht-item-v1\0"
_HELLO = b"txdht-hello-v1\0"
_MUTABLE_FIELDS = ("public_key", "name", "seq", "signature")


def mutable_key(public_key: bytes, name: str) -> int:
    """The key of the mutable item ``name`` owned by ``public_key``.

    Defined for any ``str``: a name holding a lone surrogate (JSON's ``"\\ud800"`` decodes to
    one) is hashed as its surrogates' bytes, so that ``Item.key`` can be read before ``verify``
    refuses such an item (a valid name hashes as its UTF-8, as ever)."""
    return sha512_id(public_key + name.encode("utf-8", "surrogatepass"))


def blob(value: bytes) -> Item:
    """An immutable item: ``value`` stored under its own hash (built by ``_built``: every
    value a reader gets back is read into one of these)."""
    return _built(value, None, None, 0, None)


def held_item(
    key: int,
    value: bytes,
    public_key: bytes | None,
    name: str | None,
    seq: int,
    signature: bytes | None,
) -> Item:
    """The item a store kept under ``key``, from its fields (built by ``_built``). The key is
    kept as ``Item.key`` keeps it on first reading, so it is not hashed again."""
    item = _built(value, public_key, name, seq, signature)
    item.__dict__["key"] = key
    return item


def _built(
    value: bytes, public_key: bytes | None, name: str | None, seq: int, signature: bytes | None
) -> Item:
    """An ``Item`` of these fields, built as ``Item(...)`` would be but without the frozen
    dataclass's ``__init__``, which sets each of the five fields with an
    ``object.__setattr__`` call."""
    item = _new(Item)
    item.__dict__.update(
        value=value, public_key=public_key, name=name, seq=seq, signature=signature
    )
    return item


def signed_payload(name: str, seq: int, value: bytes) -> bytes:
    """The exact bytes an owner signs for version ``seq`` of item ``name`` holding ``value``.

    The name is length-prefixed and the sequence number has a fixed width, so no two different
    ``(name, seq, value)`` give the same bytes: a signature cannot be moved between fields (say,
    the end of a name read as the start of the value). The leading domain tag, which no other
    protocol's messages start with, stops a signature made here from being replayed as one made
    for something else with the same key, and the ``v1`` in it lets the format change one day.
    Names and sequence numbers must already be in range (``Item.verify`` checks that).
    """
    raw = name.encode("utf-8")
    return _DOMAIN + len(raw).to_bytes(2, "big") + raw + seq.to_bytes(8, "big") + value


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a mutable item, or None when it can."""
    if not name:
        return "a mutable item needs a non-empty name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"the name {name!r:.60} is not valid Unicode text (it holds a lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"the name is {size} bytes long in UTF-8, more than the {MAX_NAME_BYTES} allowed"
    return None


def _seq_problem(seq: int) -> str | None:
    """Why ``seq`` cannot be a sequence number, or None when it can."""
    return None if 0 <= seq <= MAX_SEQ else f"a sequence number is 0 to 2**63 - 1, got {seq!r:.40}"


def _size_problem(what: str, data: bytes, size: int) -> str | None:
    """Why ``data`` cannot be the item's ``what``, or None when it is ``size`` bytes long."""
    return None if len(data) == size else f"the {what} must be {size} bytes, got {len(data)}"


_new = object.__new__


def to_base64(data: bytes) -> str:
    """``data`` as base64 text (how bytes travel in JSON)."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def from_base64(text: str) -> bytes:
    """The bytes of canonical base64 ``text``; ``ValueError`` for anything else.

    Canonical is what ``to_base64`` writes: the standard alphabet, padded, no whitespace, and
    the unused bits of the last character zero. Python (like Go) would also take ``eB==`` for
    ``eA==``, which other decoders (Rust's ``base64``) refuse; allowing one text per byte string
    only keeps every implementation in agreement.
    """
    # Strict: only the alphabet, padded, padding only at the end (binascii.Error, a ValueError,
    # or ValueError for text that is not ASCII).
    data = binascii.a2b_base64(text, strict_mode=True)
    # Every group of four characters but the last encodes three bytes with no bits to spare,
    # so only the last group can differ from what ``to_base64`` writes: encode its bytes
    # again, not the whole value (a value's second encoding was most of the cost of reading it).
    size = len(data)
    if size and binascii.b2a_base64(data[size - (size % 3 or 3) :], newline=False) != (
        text[-4:].encode("ascii")
    ):
        raise ValueError("not canonical: the unused bits of the last character must be zero")
    return data


def _bad(text: str, code: ErrorCode = ErrorCode.BAD_FIELD) -> ProtocolError:
    return ProtocolError(code, text)


def _field(obj: dict[str, object], name: str) -> object:
    if name not in obj:
        raise _bad(f"the item has no {name!r} field", ErrorCode.MISSING_FIELD)
    return obj[name]


def _decode(obj: dict[str, object], name: str) -> bytes:
    text = _field(obj, name)
    if not isinstance(text, str):
        raise _bad(f"the item's {name!r} must be a base64 string, not {text!r:.40}")
    try:
        return from_base64(text)
    except ValueError:  # binascii.Error for bad data, ValueError for non-ASCII or not canonical
        raise _bad(f"the item's {name!r} is not valid base64: {text!r:.40}") from None


class _Key:
    """Where the item lives: ``sha512(value)`` for a blob, ``mutable_key`` otherwise. A
    mutable item without a name (which ``verify`` refuses) hashes as the empty name.

    Computed once per item (the fields are frozen): a node that takes a store reads the key
    five times or so, and hashing a large value each time was 6% of a put's instructions. It
    is kept in the instance's ``__dict__`` on first reading (this is a non-data descriptor, so
    the kept value is read from then on without calling it), as ``functools.cached_property``
    does, without the lock that takes on every first reading in Python 3.11 (a lock around
    one hash, for every item a node decodes). Equality, hashing and ``replace`` see the
    fields alone."""

    @overload
    def __get__(self, item: None, owner: type) -> _Key: ...
    @overload
    def __get__(self, item: Item, owner: type | None = None) -> int: ...
    def __get__(self, item: Item | None, owner: type | None = None) -> int | _Key:
        if item is None:  # read off the class (``help(Item)``): the descriptor
            return self
        if item.public_key is None:
            key = sha512_id(item.value)
        else:
            key = mutable_key(item.public_key, item.name or "")
        item.__dict__["key"] = key
        return key


@dataclass(frozen=True)
class Item:
    """A value as stored in the DHT: a blob, or a mutable item when ``public_key`` is set.

    Construction checks nothing, so that an item read off the wire can be held and refused with
    a clear reason: call ``verify`` (or ``verify_for``) before trusting one.
    """

    value: bytes
    #: The owner's raw 32-byte Ed25519 public key; None for a blob.
    public_key: bytes | None = None
    #: The name the owner stores it under; None for a blob.
    name: str | None = None
    #: The version number, raised by the owner on every change; 0 for a blob.
    seq: int = 0
    #: The 64-byte Ed25519 signature of ``signed_payload(name, seq, value)``; None for a blob.
    signature: bytes | None = None

    @property
    def mutable(self) -> bool:
        """Whether this is a signed mutable item rather than a blob."""
        return self.public_key is not None

    #: Where the item lives (``sha512(value)`` for a blob), hashed once per item: see ``_Key``.
    key: ClassVar[_Key] = _Key()

    def verify(self, max_value: int = MAX_VALUE_BYTES) -> None:
        """Check the item is well formed and, if mutable, signed by its key; else ProtocolError."""
        if (size := len(self.value)) > max_value:
            text = f"the value is {size} bytes, over the {max_value} accepted"
            raise _bad(text, ErrorCode.VALUE_TOO_LARGE)
        if self.public_key is None:
            if self.name is not None or self.signature is not None or self.seq != 0:
                raise _bad("an item without a public key is a blob: no name, seq or signature")
            return
        if self.name is None or self.signature is None:
            raise _bad("a mutable item needs both a name and a signature")
        problem = (
            _size_problem("public key", self.public_key, PUBLIC_KEY_BYTES)
            or _size_problem("signature", self.signature, SIGNATURE_BYTES)
            or _name_problem(self.name)
            or _seq_problem(self.seq)
        )
        if problem is not None:
            raise _bad(problem)
        payload = signed_payload(self.name, self.seq, self.value)
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(self.signature, payload)
        except InvalidSignature:
            text = f"the signature of item {self.name!r:.60} (seq {self.seq}) is not its key's"
            raise _bad(text, ErrorCode.BAD_SIGNATURE) from None

    def verify_for(self, key: int, max_value: int = MAX_VALUE_BYTES) -> None:
        """``verify`` the item, then check it is the one stored under ``key`` (KEY_MISMATCH).

        This is what a reader calls on a value a peer returned for ``key``.
        """
        self.verify(max_value)
        if self.key != key:
            raise _bad("the item returned is not the one under that key", ErrorCode.KEY_MISMATCH)

    def to_json(self) -> dict[str, object]:
        """The wire form: base64 bytes, with the mutable fields only when they are set."""
        obj: dict[str, object] = {"value": to_base64(self.value)}
        if self.public_key is not None:
            obj["public_key"] = to_base64(self.public_key)
            obj["seq"] = self.seq
        if self.name is not None:
            obj["name"] = self.name
        if self.signature is not None:
            obj["signature"] = to_base64(self.signature)
        return obj

    @staticmethod
    def from_json(obj: object) -> Item:
        """Read the wire form, checking types (not the signature); ProtocolError when malformed.

        An object with any of the mutable fields is a mutable item and must have all of them.
        Unknown keys are ignored.
        """
        if not isinstance(obj, dict):
            raise _bad(f"an item is a JSON object, not {obj!r:.40}")
        value = _decode(obj, "value")
        if obj.keys().isdisjoint(_MUTABLE_FIELDS):
            return blob(value)
        # Field by field, in the order docs/protocol.md gives (the first problem is reported).
        public_key = _decode(obj, "public_key")
        name = _field(obj, "name")
        if not isinstance(name, str):
            raise _bad(f"the item's name must be a string: {name!r:.40}")
        seq = _field(obj, "seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise _bad(f"the item's seq must be an integer: {seq!r:.40}")
        return Item(value, public_key, name, seq, _decode(obj, "signature"))


class Identity:
    """An Ed25519 key pair: a node's identity, and the owner of the mutable items it signs."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        """Wrap ``private_key``; ``generate`` and ``from_private_bytes`` are the usual ways in."""
        self._private_key = private_key
        self._public_bytes = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> Identity:
        """A new random key pair."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> Identity:
        """The key pair whose raw 32-byte private key is ``raw`` (as from ``private_bytes``)."""
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 private key is 32 raw bytes, got {len(raw)} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key: keep it secret, it is the whole identity."""
        return self._private_key.private_bytes_raw()

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public_bytes

    @property
    def node_id(self) -> int:
        """The node id that goes with this key: ``sha512(public key)``."""
        return sha512_id(self._public_bytes)

    def sign(self, name: str, value: bytes, seq: int) -> Item:
        """Version ``seq`` of the mutable item ``name`` holding ``value``, signed by this key.

        Raises ``ValueError`` for an empty or too long name or a seq outside 0 .. 2**63 - 1.
        """
        problem = _name_problem(name) or _seq_problem(seq)
        if problem is not None:
            raise ValueError(problem)
        signature = self._private_key.sign(signed_payload(name, seq, value))
        return Item(value, self._public_bytes, name, seq, signature)

    def prove(self, challenge: bytes) -> bytes:
        """The handshake proof that this node holds its key: the public key, then its signature
        of ``challenge`` (under a domain tag of its own, so it can never pass for an item's)."""
        return self._public_bytes + self._private_key.sign(_HELLO + challenge)


def proves(node_id: int, challenge: bytes, proof: bytes) -> bool:
    """Whether a handshake ``proof`` (from ``Identity.prove``) carries a public key whose sha512
    is ``node_id`` and that key's signature of ``challenge``.

    A node id costs nothing to make up; a key pair whose hash lands next to a chosen key costs
    about as many key pairs as there are nodes. This is what makes a peer pay for its place.
    """
    key, signature = proof[:PUBLIC_KEY_BYTES], proof[PUBLIC_KEY_BYTES:]
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, _HELLO + challenge)
    except (InvalidSignature, ValueError):
        return False
    return sha512_id(key) == node_id


def accept(stored: Item | None, new: Item) -> bool:
    """Whether a node holding ``stored`` should write ``new`` (both already verified).

    True for a first store, a higher sequence number, or the same item again (a refresh, which
    extends its life). Raises ProtocolError: STALE_SEQUENCE for a lower sequence number or the
    same one with a different value, KEY_MISMATCH when the two are not under the same key.
    Time never decides: an old version replayed later is still old.
    """
    if stored is None:
        return True
    if stored.key != new.key:
        raise ProtocolError(ErrorCode.KEY_MISMATCH, "the new item is not stored under that key")
    if new.seq > stored.seq or (new.seq == stored.seq and new.value == stored.value):
        return True
    if new.seq < stored.seq:
        problem = f"sequence number {new.seq} is older than the stored {stored.seq}"
    else:
        problem = f"sequence number {new.seq} equals the stored {stored.seq} with a different value"
    raise ProtocolError(ErrorCode.STALE_SEQUENCE, f"the new item's {problem}")
