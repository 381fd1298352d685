"""The one error type of the wire protocol, and its numeric codes.

Whatever a peer sends that txdht will not accept (a message it cannot parse, an item whose
signature does not verify, a sequence number older than the one stored) becomes a
``ProtocolError`` carrying a code from ``ErrorCode`` and a readable message. The shells turn it
into an ``error`` reply to the peer and a log line; nothing else about the node changes. The same
codes come back to a caller as ``txdht.core.errors.RemoteError`` when a peer refuses one of our
requests.

The other errors are what a caller of ``put``, ``get`` and ``join`` sees when the network could
not do what was asked; every driver raises these same classes.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ErrorCode",
    "JoinError",
    "NotFoundError",
    "OperationTimeout",
    "ProtocolError",
    "PutError",
    "RemoteError",
]


class ErrorCode(IntEnum):
    """Numeric error codes carried by ``error`` replies (see docs/protocol.md)."""

    #: The message is not a UTF-8 JSON object.
    MALFORMED = 100
    #: The message's protocol version is not one this node speaks.
    BAD_VERSION = 101
    #: The message type is not known.
    UNKNOWN_TYPE = 102
    #: A required field is missing.
    MISSING_FIELD = 103
    #: A field has the wrong type or an out-of-range value.
    BAD_FIELD = 104
    #: The message is a reply nobody asked for, or a request where a reply was due.
    UNEXPECTED = 105
    #: The message is of another network than this node's (its ``network`` field).
    WRONG_NETWORK = 106
    #: A mutable item's signature does not verify against its public key.
    BAD_SIGNATURE = 200
    #: A mutable item's sequence number is lower than the stored one (or equal with other data).
    STALE_SEQUENCE = 201
    #: An item is not stored under the key it was asked for.
    KEY_MISMATCH = 202
    #: The item's value is larger than this node accepts.
    VALUE_TOO_LARGE = 203
    #: The node holds as many items as it accepts (in all, or from this publisher).
    STORAGE_FULL = 204
    #: A compare-and-swap store found another sequence number than the one expected.
    CAS_MISMATCH = 205
    #: The peer sends requests faster than this node serves it; it is ignored for a while.
    RATE_LIMITED = 300
    #: The node holds as many listens as it accepts (``max_listens``).
    LISTENS_FULL = 301
    #: The node holds as many listens from this peer as it accepts (``max_listens_per_peer``).
    PEER_LISTENS_FULL = 302
    #: The node holds as many listens on this key as it accepts (``max_listens_per_key``).
    KEY_LISTENS_FULL = 303
    #: An update or expired notice for a key the receiver does not listen to (any more).
    NOT_LISTENING = 304
    #: The node failed while handling a valid request (its fault, not the peer's).
    INTERNAL = 500


class ProtocolError(Exception):
    """A message or item was refused; ``code`` says why and ``message`` says it to a person.

    ``request_id`` is the id of the request being refused when it could be read, so that the
    error reply can be matched by the peer. ``in_reply`` is set when the broken message was
    recognisably a reply: then it is our own request ``request_id`` that failed, and no error
    reply is sent (the peer could mistake it for the answer to a request of its own).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        request_id: int | None = None,
        *,
        in_reply: bool = False,
    ) -> None:
        super().__init__(f"{code.name.lower()} ({int(code)}): {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.in_reply = in_reply


class RemoteError(Exception):
    """A peer answered one of our requests with an ``error`` reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"peer refused the request with error {code}: {message}")
        self.code = code
        self.message = message


class NotFoundError(LookupError):
    """No node holds a valid value under the key that was asked for."""


class JoinError(Exception):
    """None of the seed nodes answered, so the node could not join the network."""


class PutError(Exception):
    """No node accepted the item, so nothing was stored.

    ``codes`` holds the error codes of the refusals (empty when nodes failed to answer): all
    ``STALE_SEQUENCE`` or ``CAS_MISMATCH`` means a newer version is out there.
    """

    def __init__(self, message: str, codes: frozenset[int] = frozenset()) -> None:
        super().__init__(message)
        self.codes = codes


class OperationTimeout(TimeoutError):
    """An operation did not finish within the deadline its caller gave it; it was stopped,
    leaving nothing behind. ``answered`` says how many peers had answered its lookup, and, for
    a put, ``stored`` how many nodes had taken the item by then (None for other operations)."""

    def __init__(self, message: str, answered: int = 0, stored: int | None = None) -> None:
        super().__init__(message)
        self.answered = answered
        self.stored = stored
