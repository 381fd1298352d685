"""Ids on the clock face: sha512 ids, XOR distance, bucket numbers, hex form, contacts."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txdht.core.ids import (
    ID_HEX_LENGTH,
    MAX_ID,
    Contact,
    bucket_index,
    closest,
    distance,
    id_from_hex,
    id_to_hex,
    sha512_id,
)

ids = st.integers(0, MAX_ID)


def test_sha512_id_is_the_digest_as_an_integer() -> None:
    """An id is the big-endian integer of the sha512 digest."""
    assert sha512_id(b"abc") == int(hashlib.sha512(b"abc").hexdigest(), 16)
    assert 0 <= sha512_id(b"") <= MAX_ID


@given(ids, ids)
def test_distance_is_symmetric_and_zero_only_for_equal_ids(a: int, b: int) -> None:
    """XOR distance is symmetric, and zero exactly when the ids are equal."""
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)


@given(ids, ids, ids)
def test_distance_obeys_the_triangle_inequality(a: int, b: int, c: int) -> None:
    """d(a, c) <= d(a, b) + d(b, c), so the clock face is a metric space."""
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@pytest.mark.parametrize(
    ("own", "other", "index"),
    [(0, 0, -1), (0, 1, 0), (0, 2, 1), (0, 3, 1), (5, 4, 0), (0, MAX_ID, 511), (MAX_ID, 0, 511)],
)
def test_bucket_index_is_the_highest_differing_bit(own: int, other: int, index: int) -> None:
    """The bucket number is the position of the top bit of the distance."""
    assert bucket_index(own, other) == index


def test_closest_orders_by_distance_and_truncates() -> None:
    """closest() returns the nearest entries first, at most ``count`` of them."""
    contacts = [Contact(i, "127.0.0.1", 4000 + i) for i in (1, 2, 6, 7, 8)]
    assert [c.id for c in closest(6, contacts, 3)] == [6, 7, 2]
    assert closest(6, [], 3) == []


def test_hex_round_trip_is_zero_padded() -> None:
    """Ids are written as 128 lowercase hex characters and read back exactly."""
    assert id_to_hex(1) == "0" * (ID_HEX_LENGTH - 1) + "1"
    assert id_from_hex(id_to_hex(MAX_ID)) == MAX_ID


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ab",
        "A" * ID_HEX_LENGTH,
        "g" * ID_HEX_LENGTH,
        "0" * (ID_HEX_LENGTH + 1),
        " " + "0" * 127,
    ],
)
def test_bad_hex_ids_are_refused(text: str) -> None:
    """Anything but exactly 128 lowercase hex characters raises ValueError."""
    with pytest.raises(ValueError, match="128 lowercase hex"):
        id_from_hex(text)


def test_non_string_id_is_refused() -> None:
    """A non-string is not an id."""
    with pytest.raises(ValueError, match="hex"):
        id_from_hex(5)


def test_unhashable_id_is_a_type_error() -> None:
    """A list or dict (as a hostile JSON text may carry) cannot be looked up: TypeError."""
    values: list[object] = [[1], {"a": 1}]
    for value in values:
        with pytest.raises(TypeError, match="unhashable"):
            id_from_hex(value)


def test_cached_conversions_agree_with_fresh_ones() -> None:
    """The cached hex forms are the ones computed afresh, both ways, however often asked."""
    for ident in (0, 1, MAX_ID, 0xABC << 500):
        text = format(ident, "0128x")
        for _ in range(3):
            assert id_to_hex(ident) == text
            assert id_from_hex(text) == ident


def test_contact_address_and_text() -> None:
    """A contact gives its address to connect to, and prints short."""
    contact = Contact(0xABC << 500, "127.0.0.1", 4000)
    assert contact.address == ("127.0.0.1", 4000)
    assert str(contact) == f"{id_to_hex(contact.id)[:12]}@127.0.0.1:4000"
