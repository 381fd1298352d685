"""The core netstring decoder, and that it frames exactly as Twisted's NetstringReceiver does."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import NetstringReceiver

from txdht.core.framing import FramingError, NetstringDecoder, netstring

LIMIT = 1000


class Collecting(NetstringReceiver):
    """A NetstringReceiver that records what it receives."""

    MAX_LENGTH = LIMIT

    def __init__(self) -> None:
        self.strings: list[bytes] = []

    def stringReceived(self, string: bytes) -> None:
        self.strings.append(string)


def twisted_frames(chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """What NetstringReceiver makes of ``chunks``: payloads, and whether it closed."""
    receiver = Collecting()
    transport = StringTransport()
    receiver.makeConnection(transport)  # type: ignore[no-untyped-call]
    for chunk in chunks:
        receiver.dataReceived(chunk)  # type: ignore[no-untyped-call]
        if transport.disconnecting:
            break
    return receiver.strings, bool(transport.disconnecting)


def ours(chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """What NetstringDecoder makes of ``chunks``: payloads, and whether it failed."""
    decoder = NetstringDecoder(LIMIT)
    found: list[bytes] = []
    for chunk in chunks:
        found += decoder.feed(chunk)
    return found, decoder.error is not None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_round_trip() -> None:
    """Framed payloads come back out, one per netstring, across any chunking."""
    stream = netstring(b"hello") + netstring(b"") + netstring(b"a,b:c")
    decoder = NetstringDecoder(LIMIT)
    assert [p for byte in stream for p in decoder.feed(bytes([byte]))] == [b"hello", b"", b"a,b:c"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x:", "digits \\(no leading zero\\)"),
        (b"ab", "at most 4 digits"),
        (b"12345", "at most 4 digits"),
        (b"01:a,", "no leading zero"),
        (b"01", "no leading zero"),
        (b"1001", "1001\\+ bytes is over the limit"),
        (b"-1:", "no leading zero"),
        (b":", "no leading zero"),
        (b"1001:", "over the 1000 limit"),
        (b"3:abcX", "must end with ','"),
    ],
)
def test_bad_streams_fail_and_stay_failed(data: bytes, message: str) -> None:
    """Each kind of bad framing sets the error, and nothing is decoded after it."""
    decoder = NetstringDecoder(LIMIT)
    assert decoder.feed(data) == []
    assert isinstance(decoder.error, FramingError)
    assert re.search(message, str(decoder.error))
    assert decoder.feed(netstring(b"fine")) == []


def test_payloads_before_an_error_are_delivered() -> None:
    """What was framed correctly before the garbage still comes out."""
    decoder = NetstringDecoder(LIMIT)
    assert decoder.feed(netstring(b"one") + b"garbage") == [b"one"]
    assert decoder.error is not None


def test_payload_at_the_limit_is_accepted() -> None:
    """A payload of exactly the limit decodes."""
    assert NetstringDecoder(LIMIT).feed(netstring(b"x" * LIMIT)) == [b"x" * LIMIT]


payloads = st.lists(st.binary(max_size=40), max_size=6)


@settings(max_examples=300, deadline=None)
@given(payloads, st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_of_a_valid_stream_parses_the_same(items: list[bytes], cuts: list[int]) -> None:
    """However a valid stream is cut into chunks, the same payloads come out."""
    stream = b"".join(netstring(p) for p in items)
    assert ours(split(stream, cuts)) == (items, False)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            payloads.map(lambda ps: b"".join(netstring(p) for p in ps)),
            st.binary(max_size=12),
            st.sampled_from([b"0:,", b"01:", b"1000:", b"1001:", b":", b",", b"9999"]),
        ),
        max_size=5,
    ),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_same_verdict_as_twisted(parts: list[bytes], cuts: list[int]) -> None:
    """On any stream (valid or garbage), our decoder and NetstringReceiver agree on the
    payloads delivered and on whether the stream is broken, once the whole stream is in."""
    stream = b"".join(parts)
    theirs_payloads, theirs_closed = twisted_frames([stream])
    our_payloads, our_failed = ours(split(stream, cuts))
    assert our_payloads == theirs_payloads
    assert our_failed == theirs_closed
