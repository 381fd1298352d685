"""The errors of the node API, which both shells raise to their callers.

The protocol's own error type and codes are in ``txdht.core.errors``; these are what a caller of
``put``, ``get`` and ``join`` sees when the network could not do what was asked.
"""

from __future__ import annotations

__all__ = ["JoinError", "NotFoundError", "PutError", "RemoteError"]


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
