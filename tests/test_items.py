"""Tests for txdht.core.items: blobs, signed mutable items, their wire form and replacement."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import sha512_id
from txdht.core.items import (
    MAX_NAME_BYTES,
    MAX_SEQ,
    MAX_VALUE_BYTES,
    PROOF_BYTES,
    Identity,
    Item,
    accept,
    blob,
    from_base64,
    mutable_key,
    proves,
    signed_payload,
)

OWNER = Identity.from_private_bytes(bytes(range(32)))
OTHER = Identity.from_private_bytes(bytes(range(1, 33)))
SIGNED = OWNER.sign("profile", b"hello", 7)


def refusal(call: Callable[[], object]) -> ProtocolError:
    """Run ``call``, which must raise ProtocolError, and return the error."""
    with pytest.raises(ProtocolError) as info:
        call()
    return info.value


def test_blob_key_is_sha512_of_value() -> None:
    """A blob lives at the sha512 of its value and is not mutable."""
    item = blob(b"some data")
    expected = int.from_bytes(hashlib.sha512(b"some data").digest(), "big")
    assert item.key == expected
    assert not item.mutable
    assert (item.public_key, item.name, item.seq, item.signature) == (None, None, 0, None)


def test_the_key_is_hashed_once_and_stays_out_of_equality(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node reads a stored item's key several times per store: it is hashed once per item.
    Equality and hashing still see the fields alone (an item whose key was read equals one
    whose key was not), and an item made from another by ``replace`` has its own key."""
    import txdht.core.items as items_module

    hashed: list[bytes] = []

    def sha512_id(data: bytes) -> int:
        hashed.append(data)
        return 7

    monkeypatch.setattr(items_module, "sha512_id", sha512_id)
    item, twin = blob(b"some data"), blob(b"some data")
    assert (item.key, item.key, item.key) == (7, 7, 7)
    assert hashed == [b"some data"]
    assert item == twin  # twin's key never read
    assert hash(item) == hash(twin)
    other = replace(item, value=b"other data")
    assert other.key == 7
    assert hashed == [b"some data", b"other data"]
    with pytest.raises(AttributeError):
        item.value = b"changed"  # type: ignore[misc]


def test_the_key_read_off_the_class_is_its_documented_descriptor() -> None:
    """``Item.key`` on the class (what ``help`` and documentation tools read) is the
    descriptor, with its docstring, and not a dataclass field: it is never compared, hashed,
    passed to the constructor or written by ``asdict``."""
    descriptor = Item.key
    assert "sha512(value)" in (descriptor.__doc__ or "")
    assert descriptor.__get__(blob(b"x")) == sha512_id(b"x")
    assert "key" not in {f.name for f in fields(Item)}
    assert "key" not in asdict(blob(b"x"))


def test_mutable_key_hashes_public_key_then_name() -> None:
    """A mutable item lives at sha512(public key + UTF-8 name), independent of its value."""
    expected = sha512_id(OWNER.public_bytes + b"profile")
    assert mutable_key(OWNER.public_bytes, "profile") == expected
    assert SIGNED.key == expected
    assert SIGNED.mutable
    assert OWNER.sign("profile", b"other value", 8).key == expected
    assert mutable_key(OWNER.public_bytes, "é") == sha512_id(OWNER.public_bytes + b"\xc3\xa9")


def test_nameless_mutable_item_hashes_as_empty_name() -> None:
    """The key of a malformed mutable item without a name is that of the empty name."""
    assert replace(SIGNED, name=None).key == mutable_key(OWNER.public_bytes, "")


def test_signed_payload_layout() -> None:
    """The payload is the domain tag, a 2-byte name length, the name, an 8-byte seq, the value."""
    payload = signed_payload("né", 258, b"v")
    assert payload == b"txdht-item-v1\0" + b"\x00\x03" + b"n\xc3\xa9" + bytes(6) + b"\x01\x02v"


def test_signed_payload_separates_fields() -> None:
    """Moving bytes between the name and the value changes the payload."""
    assert signed_payload("ab", 1, b"c") != signed_payload("a", 1, b"bc")


def test_sign_and_verify_round_trip() -> None:
    """An item signed by an identity verifies, carries its fields, and is valid Ed25519."""
    SIGNED.verify()
    SIGNED.verify_for(SIGNED.key)
    assert (SIGNED.value, SIGNED.name, SIGNED.seq) == (b"hello", "profile", 7)
    assert SIGNED.public_key == OWNER.public_bytes
    assert SIGNED.signature is not None
    assert len(SIGNED.signature) == 64


def test_blob_verifies() -> None:
    """A blob of any allowed size verifies, including one exactly at the limit."""
    blob(b"").verify()
    blob(bytes(MAX_VALUE_BYTES)).verify()
    blob(b"x").verify_for(blob(b"x").key)


def test_verify_accepts_edge_values() -> None:
    """The longest name, the largest seq and seq 0 are all allowed."""
    OWNER.sign("n" * MAX_NAME_BYTES, b"", MAX_SEQ).verify()
    OWNER.sign("é" * (MAX_NAME_BYTES // 2), b"v", 0).verify()


def test_verify_max_value_is_configurable() -> None:
    """``max_value`` sets the limit: equal passes, one byte more is VALUE_TOO_LARGE."""
    item = OWNER.sign("n", bytes(10), 1)
    item.verify(max_value=10)
    assert refusal(lambda: item.verify(max_value=9)).code == ErrorCode.VALUE_TOO_LARGE
    assert refusal(lambda: item.verify_for(item.key, 9)).code == ErrorCode.VALUE_TOO_LARGE


@pytest.mark.parametrize(
    ("item", "code"),
    [
        pytest.param(blob(bytes(MAX_VALUE_BYTES + 1)), ErrorCode.VALUE_TOO_LARGE, id="big-blob"),
        pytest.param(
            OWNER.sign("n", bytes(MAX_VALUE_BYTES + 1), 0),
            ErrorCode.VALUE_TOO_LARGE,
            id="big-mutable",
        ),
        pytest.param(Item(b"v", name="n"), ErrorCode.BAD_FIELD, id="blob-with-name"),
        pytest.param(Item(b"v", signature=bytes(64)), ErrorCode.BAD_FIELD, id="blob-with-sig"),
        pytest.param(Item(b"v", seq=1), ErrorCode.BAD_FIELD, id="blob-with-seq"),
        pytest.param(replace(SIGNED, name=None), ErrorCode.BAD_FIELD, id="no-name"),
        pytest.param(replace(SIGNED, signature=None), ErrorCode.BAD_FIELD, id="no-signature"),
        pytest.param(replace(SIGNED, name=""), ErrorCode.BAD_FIELD, id="empty-name"),
        pytest.param(
            replace(SIGNED, name="n" * (MAX_NAME_BYTES + 1)), ErrorCode.BAD_FIELD, id="long-name"
        ),
        pytest.param(
            replace(SIGNED, name="é" * (MAX_NAME_BYTES // 2 + 1)),
            ErrorCode.BAD_FIELD,
            id="long-name-in-bytes",
        ),
        pytest.param(replace(SIGNED, name="a\ud800"), ErrorCode.BAD_FIELD, id="surrogate-name"),
        pytest.param(replace(SIGNED, seq=-1), ErrorCode.BAD_FIELD, id="negative-seq"),
        pytest.param(replace(SIGNED, seq=MAX_SEQ + 1), ErrorCode.BAD_FIELD, id="huge-seq"),
        pytest.param(replace(SIGNED, public_key=bytes(31)), ErrorCode.BAD_FIELD, id="short-key"),
        pytest.param(replace(SIGNED, public_key=bytes(33)), ErrorCode.BAD_FIELD, id="long-key"),
        pytest.param(replace(SIGNED, signature=bytes(63)), ErrorCode.BAD_FIELD, id="short-sig"),
        pytest.param(replace(SIGNED, signature=bytes(65)), ErrorCode.BAD_FIELD, id="long-sig"),
        pytest.param(replace(SIGNED, value=b"hellO"), ErrorCode.BAD_SIGNATURE, id="value"),
        pytest.param(replace(SIGNED, name="profilE"), ErrorCode.BAD_SIGNATURE, id="name"),
        pytest.param(replace(SIGNED, seq=8), ErrorCode.BAD_SIGNATURE, id="seq"),
        pytest.param(
            replace(SIGNED, public_key=OTHER.public_bytes), ErrorCode.BAD_SIGNATURE, id="key"
        ),
        pytest.param(
            replace(SIGNED, signature=bytes(64)), ErrorCode.BAD_SIGNATURE, id="zero-signature"
        ),
        pytest.param(
            replace(SIGNED, signature=OTHER.sign("profile", b"hello", 7).signature),
            ErrorCode.BAD_SIGNATURE,
            id="signed-by-other",
        ),
    ],
)
def test_verify_refuses(item: Item, code: ErrorCode) -> None:
    """Every malformed or forged item is refused by verify with the exact code and a message."""
    error = refusal(item.verify)
    assert error.code == code
    assert error.message
    assert refusal(lambda: item.verify_for(SIGNED.key)).code == code


def test_verify_for_refuses_other_key() -> None:
    """A valid item returned for a key it does not live at is KEY_MISMATCH."""
    error = refusal(lambda: SIGNED.verify_for(SIGNED.key ^ 1))
    assert error.code == ErrorCode.KEY_MISMATCH
    assert refusal(lambda: blob(b"a").verify_for(blob(b"b").key)).code == ErrorCode.KEY_MISMATCH


@settings(database=None, max_examples=60)
@given(
    name=st.text(min_size=1, max_size=20),
    value=st.binary(max_size=64),
    seq=st.integers(0, MAX_SEQ),
    data=st.data(),
)
def test_any_single_field_change_breaks_signature(
    name: str, value: bytes, seq: int, data: st.DataObject
) -> None:
    """Changing any one field of a signed item to another valid value makes it BAD_SIGNATURE."""
    item = OWNER.sign(name, value, seq)
    item.verify()
    field = data.draw(st.sampled_from(["value", "name", "seq", "public_key", "signature"]))
    if field == "signature":
        assert item.signature is not None
        flipped = bytearray(item.signature)
        flipped[data.draw(st.integers(0, 63))] ^= 1 << data.draw(st.integers(0, 7))
        changed = replace(item, signature=bytes(flipped))
    else:
        strategy = {
            "value": st.binary(max_size=64),
            "name": st.text(min_size=1, max_size=20),
            "seq": st.integers(0, MAX_SEQ),
            "public_key": st.binary(min_size=32, max_size=32),
        }[field]
        new = data.draw(strategy.filter(lambda new: new != getattr(item, field)))
        changes: dict[str, Any] = {field: new}
        changed = replace(item, **changes)
    assert refusal(changed.verify).code == ErrorCode.BAD_SIGNATURE


def test_blob_json_round_trip() -> None:
    """A blob's wire form is just its base64 value, and it reads back equal."""
    item = blob(b"\x00\xffdata")
    assert item.to_json() == {"value": "AP9kYXRh"}
    assert Item.from_json(json.loads(json.dumps(item.to_json()))) == item


def test_mutable_json_round_trip() -> None:
    """A mutable item's wire form has all five fields, and it reads back equal and valid."""
    obj = SIGNED.to_json()
    assert set(obj) == {"value", "public_key", "name", "seq", "signature"}
    assert (obj["value"], obj["name"], obj["seq"]) == ("aGVsbG8=", "profile", 7)
    back = Item.from_json(json.loads(json.dumps(obj)))
    assert back == SIGNED
    back.verify()


def test_from_json_ignores_unknown_keys() -> None:
    """Extra keys are ignored, for blobs and mutable items alike."""
    assert Item.from_json({"value": "YQ==", "extra": [1]}) == blob(b"a")
    assert Item.from_json({**SIGNED.to_json(), "ttl": 5}) == SIGNED


def test_from_json_does_not_check_values() -> None:
    """from_json checks types only: an out-of-range seq is read and refused later by verify."""
    item = Item.from_json({**SIGNED.to_json(), "seq": -1})
    assert item.seq == -1
    assert refusal(item.verify).code == ErrorCode.BAD_FIELD


GOOD = SIGNED.to_json()


def without(key: str) -> dict[str, object]:
    """The signed item's wire form without ``key``."""
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        pytest.param([], ErrorCode.BAD_FIELD, id="list"),
        pytest.param("YQ==", ErrorCode.BAD_FIELD, id="string"),
        pytest.param(None, ErrorCode.BAD_FIELD, id="null"),
        pytest.param({}, ErrorCode.MISSING_FIELD, id="empty"),
        pytest.param({"value": 5}, ErrorCode.BAD_FIELD, id="value-int"),
        pytest.param({"value": None}, ErrorCode.BAD_FIELD, id="value-null"),
        pytest.param({"value": b"YQ=="}, ErrorCode.BAD_FIELD, id="value-bytes"),
        pytest.param({"value": "!!!!"}, ErrorCode.BAD_FIELD, id="value-bad-chars"),
        pytest.param({"value": "YQ"}, ErrorCode.BAD_FIELD, id="value-no-padding"),
        pytest.param({"value": "YQ==YQ=="}, ErrorCode.BAD_FIELD, id="value-data-after-padding"),
        pytest.param({"value": "YQ==\n"}, ErrorCode.BAD_FIELD, id="value-newline"),
        pytest.param({"value": "YR=="}, ErrorCode.BAD_FIELD, id="value-padding-bits-set"),
        pytest.param({"value": "YWJ="}, ErrorCode.BAD_FIELD, id="value-padding-bits-set-2"),
        pytest.param({"value": "é"}, ErrorCode.BAD_FIELD, id="value-non-ascii"),
        pytest.param({"value": "YQ==", "name": "n"}, ErrorCode.MISSING_FIELD, id="blob-name"),
        pytest.param(without("public_key"), ErrorCode.MISSING_FIELD, id="no-public-key"),
        pytest.param(without("name"), ErrorCode.MISSING_FIELD, id="no-name"),
        pytest.param(without("seq"), ErrorCode.MISSING_FIELD, id="no-seq"),
        pytest.param(without("signature"), ErrorCode.MISSING_FIELD, id="no-signature"),
        pytest.param(without("value"), ErrorCode.MISSING_FIELD, id="no-value"),
        pytest.param({**GOOD, "public_key": 1}, ErrorCode.BAD_FIELD, id="key-int"),
        pytest.param({**GOOD, "public_key": "a"}, ErrorCode.BAD_FIELD, id="key-bad-base64"),
        pytest.param({**GOOD, "signature": None}, ErrorCode.BAD_FIELD, id="sig-null"),
        pytest.param({**GOOD, "signature": "&"}, ErrorCode.BAD_FIELD, id="sig-bad-base64"),
        pytest.param(
            {**GOOD, "signature": str(GOOD["signature"])[:-3] + "B=="},
            ErrorCode.BAD_FIELD,
            id="sig-not-canonical",
        ),
        pytest.param({**GOOD, "name": 5}, ErrorCode.BAD_FIELD, id="name-int"),
        pytest.param({**GOOD, "name": None}, ErrorCode.BAD_FIELD, id="name-null"),
        pytest.param(  # each field fully (present, of its type) before the next
            {**without("seq"), "name": 5}, ErrorCode.BAD_FIELD, id="bad-name-before-missing-seq"
        ),
        pytest.param({**GOOD, "seq": True}, ErrorCode.BAD_FIELD, id="seq-bool"),
        pytest.param({**GOOD, "seq": "7"}, ErrorCode.BAD_FIELD, id="seq-string"),
        pytest.param({**GOOD, "seq": 7.0}, ErrorCode.BAD_FIELD, id="seq-float"),
        pytest.param({**GOOD, "seq": None}, ErrorCode.BAD_FIELD, id="seq-null"),
    ],
)
def test_from_json_refuses(obj: object, code: ErrorCode) -> None:
    """Every malformed wire form is refused by from_json with the exact code and a message."""
    error = refusal(lambda: Item.from_json(obj))
    assert error.code == code
    assert error.message


def test_identity_round_trips_through_private_bytes() -> None:
    """An identity rebuilt from its private bytes has the same keys, id and signatures."""
    identity = Identity.generate()
    again = Identity.from_private_bytes(identity.private_bytes())
    assert len(identity.private_bytes()) == 32
    assert len(identity.public_bytes) == 32
    assert again.public_bytes == identity.public_bytes
    assert again.node_id == identity.node_id == sha512_id(identity.public_bytes)
    assert again.sign("n", b"v", 1) == identity.sign("n", b"v", 1)


def test_generated_identities_differ() -> None:
    """Two generated identities have different keys."""
    assert Identity.generate().public_bytes != Identity.generate().public_bytes


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_identity_refuses_wrong_private_key_size(size: int) -> None:
    """A private key that is not 32 bytes is a ValueError that says so."""
    with pytest.raises(ValueError, match=f"32 raw bytes, got {size} bytes"):
        Identity.from_private_bytes(bytes(size))


@pytest.mark.parametrize(
    ("name", "seq", "message"),
    [
        pytest.param("", 0, "non-empty name", id="empty-name"),
        pytest.param("n" * (MAX_NAME_BYTES + 1), 0, "257 bytes long", id="long-name"),
        pytest.param("\udc80", 0, "lone surrogate", id="surrogate-name"),
        pytest.param("n", -1, "got -1", id="negative-seq"),
        pytest.param("n", MAX_SEQ + 1, "2\\*\\*63 - 1", id="huge-seq"),
    ],
)
def test_sign_refuses_bad_arguments(name: str, seq: int, message: str) -> None:
    """Signing with an unusable name or seq is the caller's fault: ValueError."""
    with pytest.raises(ValueError, match=message):
        OWNER.sign(name, b"v", seq)


def test_accept_first_store() -> None:
    """With nothing stored, any item is accepted."""
    assert accept(None, SIGNED)
    assert accept(None, blob(b"x"))


def test_accept_higher_seq_wins() -> None:
    """A higher sequence number replaces the stored item, whatever its value."""
    assert accept(SIGNED, OWNER.sign("profile", b"new", 8))
    assert accept(SIGNED, OWNER.sign("profile", b"hello", MAX_SEQ))


def test_accept_same_item_refreshes() -> None:
    """The same seq and value again is accepted, so the expiry is refreshed."""
    assert accept(SIGNED, OWNER.sign("profile", b"hello", 7))
    assert accept(blob(b"x"), blob(b"x"))


def test_accept_refuses_lower_seq() -> None:
    """A lower sequence number is STALE_SEQUENCE, and the message gives both numbers."""
    error = refusal(lambda: accept(SIGNED, OWNER.sign("profile", b"hello", 6)))
    assert error.code == ErrorCode.STALE_SEQUENCE
    assert "6" in error.message
    assert "7" in error.message
    assert "older" in error.message


def test_accept_refuses_equal_seq_with_other_value() -> None:
    """The same sequence number with a different value is STALE_SEQUENCE (no tie-breaking)."""
    error = refusal(lambda: accept(SIGNED, OWNER.sign("profile", b"other", 7)))
    assert error.code == ErrorCode.STALE_SEQUENCE
    assert error.message.count("7") == 2
    assert "different value" in error.message


@pytest.mark.parametrize(
    "new",
    [
        pytest.param(OWNER.sign("other name", b"hello", 8), id="other-name"),
        pytest.param(OTHER.sign("profile", b"hello", 8), id="other-owner"),
        pytest.param(blob(b"hello"), id="blob"),
    ],
)
def test_accept_refuses_other_key(new: Item) -> None:
    """An item under a different key never replaces the stored one: KEY_MISMATCH."""
    assert refusal(lambda: accept(SIGNED, new)).code == ErrorCode.KEY_MISMATCH
    assert refusal(lambda: accept(blob(b"a"), blob(b"b"))).code == ErrorCode.KEY_MISMATCH


CHALLENGE = bytes(range(32))


def test_a_proof_shows_the_node_holds_the_key_of_its_id() -> None:
    """A node's proof of a challenge passes for its own id, and is key plus signature."""
    proof = OWNER.prove(CHALLENGE)
    assert len(proof) == PROOF_BYTES == 96
    assert proof[:32] == OWNER.public_bytes
    assert proves(OWNER.node_id, CHALLENGE, proof)


@pytest.mark.parametrize(
    ("node_id", "challenge", "proof"),
    [
        pytest.param(OTHER.node_id, CHALLENGE, OWNER.prove(CHALLENGE), id="someone-elses-id"),
        pytest.param(sha512_id(b"chosen"), CHALLENGE, OWNER.prove(CHALLENGE), id="made-up-id"),
        pytest.param(OWNER.node_id, b"another challenge", OWNER.prove(CHALLENGE), id="replayed"),
        pytest.param(
            OWNER.node_id,
            CHALLENGE,
            OWNER.public_bytes + OTHER.prove(CHALLENGE)[32:],
            id="signed-by-another-key",
        ),
        pytest.param(
            OWNER.node_id, CHALLENGE, OWNER.prove(CHALLENGE)[:-1] + b"\x00", id="tampered"
        ),
        pytest.param(OWNER.node_id, CHALLENGE, OWNER.prove(CHALLENGE)[:40], id="cut-short"),
        pytest.param(OWNER.node_id, CHALLENGE, b"", id="empty"),
    ],
)
def test_a_proof_that_does_not_hold_is_refused(
    node_id: int, challenge: bytes, proof: bytes
) -> None:
    """A proof for another id, another challenge, by another key, or damaged, proves nothing."""
    assert not proves(node_id, challenge, proof)


def test_an_item_signature_never_passes_as_a_handshake_proof() -> None:
    """Signing a challenge as an item's value gives no proof: the two use different domains."""
    item = OWNER.sign("x", CHALLENGE, 0)
    assert item.signature is not None
    assert not proves(OWNER.node_id, CHALLENGE, OWNER.public_bytes + item.signature)


def _canonical_by_encoding_again(text: str) -> bytes:
    """What ``from_base64`` must agree with: decode strictly, then encode the whole value
    again and compare (how it was written before it re-encoded only the last group)."""
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data) != text.encode("ascii"):
        raise ValueError("not canonical")
    return data


def _outcome(read: Callable[[str], bytes], text: str) -> bytes | None:
    try:
        return read(text)
    except ValueError:
        return None


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def test_from_base64_agrees_with_encoding_again_on_every_short_text() -> None:
    """Every text of up to 6 characters of a small alphabet (padding, the characters whose
    unused bits are zero or not, and the end of the alphabet) is read, or refused, as it
    would be by encoding the whole value again."""
    count = 0
    for length in range(7):
        for chars in itertools.product("AQgBw=+/", repeat=length):
            text = "".join(chars)
            assert _outcome(from_base64, text) == _outcome(_canonical_by_encoding_again, text)
            count += 1
    assert count == sum(8**n for n in range(7))


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=64),
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.integers(0, 200),
            st.sampled_from([*_B64_CHARS, " ", "\n", "-", "_", "\u00e9", "\x00"]),
        ),
        max_size=3,
    ),
)
def test_from_base64_agrees_with_encoding_again(
    data: bytes, edits: list[tuple[int, int, str]]
) -> None:
    """A value's base64 with up to three characters changed, added or removed is read, or
    refused, as it would be by encoding the whole value again; unchanged, it reads back."""
    text = base64.b64encode(data).decode("ascii")
    assert from_base64(text) == data
    chars = list(text)
    for kind, where, char in edits:
        if kind == 0 and chars:
            chars[where % len(chars)] = char
        elif kind == 1:
            chars.insert(where % (len(chars) + 1), char)
        elif chars:
            del chars[where % len(chars)]
    text = "".join(chars)
    assert _outcome(from_base64, text) == _outcome(_canonical_by_encoding_again, text)


@given(st.binary(max_size=100))
def test_a_blob_is_the_item_its_dataclass_would_build(value: bytes) -> None:
    """``blob`` (and so every blob read off the wire) builds the item without the dataclass's
    ``__init__``: the same fields, equal, with the same hash, still frozen."""
    made, built = blob(value), Item(value)
    assert made == built
    assert hash(made) == hash(built)
    assert vars(made) == vars(built)
    assert Item.from_json({"value": base64.b64encode(value).decode()}) == built
    with pytest.raises(AttributeError):
        made.seq = 1  # type: ignore[misc]
