"""Netstring framing (``<length>:<bytes>,``) as an incremental decoder, for the asyncio twin.

The Twisted shell frames with Twisted's own ``NetstringReceiver``; this decoder accepts and
refuses exactly what it does (tests feed both the same streams): the length is ASCII digits with
no leading zero, it is checked against the limit before it is converted (a peer cannot make us
parse a million digits), and a payload must be followed by a comma. A violation sets ``error``
(a ``FramingError``): the payloads before it are still delivered, nothing after it is, and the
connection must be closed.
"""

from __future__ import annotations

import re

__all__ = ["FramingError", "NetstringDecoder", "netstring"]

_LENGTH = re.compile(rb"(0|[1-9][0-9]*):")


class FramingError(ValueError):
    """The byte stream is not a sequence of netstrings within the limit."""


def netstring(payload: bytes) -> bytes:
    """``payload`` framed as one netstring."""
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Feed it bytes as they arrive; it returns the complete payloads, in order."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._digits = len(str(max_length))
        self._buffer = bytearray()
        #: Set once the stream is broken; from then on nothing more is decoded.
        self.error: FramingError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data``, up to any framing error (then see ``error``)."""
        found: list[bytes] = []
        if self.error is not None:
            return found
        buffer = self._buffer
        start = size = 0
        if buffer:  # the rest of a netstring begun earlier: ``_next`` takes it from here
            buffer += data
        else:
            # The common case, whole well-formed netstrings, read in place; from the first
            # thing that is not one (a part, or a broken one) on, ``_next`` judges.
            size, digits, limit = len(data), self._digits, self.max_length
            while start < size:
                colon = data.find(b":", start, start + digits + 1)
                if colon < 0:
                    break
                head = data[start:colon]
                if not head.isdigit() or (head[0] == 48 and colon - start > 1):  # 48: "0"
                    break
                end = colon + 1 + int(head)
                if end - colon - 1 > limit or end >= size or data[end] != 44:  # 44: ","
                    break
                found.append(data[colon + 1 : end])
                start = end + 1
        if start < size:
            buffer += data[start:]
        if buffer:
            try:
                while (payload := self._next()) is not None:
                    found.append(payload)
            except FramingError as e:
                self.error = e
        return found

    def _next(self) -> bytes | None:
        buffer = self._buffer
        colon = buffer.find(b":", 0, self._digits + 1)
        if colon < 0:
            if len(buffer) > self._digits or (not buffer.isdigit() and buffer):
                raise FramingError(f"a netstring starts with at most {self._digits} digits and ':'")
            if buffer.startswith(b"0") and len(buffer) > 1:
                raise FramingError("a netstring length is digits (no leading zero) before ':'")
            if buffer and int(buffer) > self.max_length:
                raise FramingError(f"a netstring of {int(buffer)}+ bytes is over the limit")
            return None
        if not _LENGTH.fullmatch(buffer[: colon + 1]):
            raise FramingError("a netstring length is digits (no leading zero) before ':'")
        length = int(buffer[:colon])
        if length > self.max_length:
            raise FramingError(f"a netstring of {length} bytes is over the {self.max_length} limit")
        end = colon + 1 + length
        if len(buffer) <= end:
            return None
        if buffer[end] != ord(","):
            raise FramingError("a netstring must end with ','")
        payload = bytes(buffer[colon + 1 : end])
        del buffer[: end + 1]
        return payload
