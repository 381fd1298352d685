"""Tests for txdht.core.messages: the wire codec, its exact JSON form, and refusal of bad input."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, fields, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txdht.core import messages as codec
from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import Contact, id_to_hex, sha512_id
from txdht.core.items import MAX_TTL, Identity, Item, blob
from txdht.core.messages import (
    MAX_CONTACTS,
    MAX_DEPTH,
    MAX_ERROR_TEXT,
    MAX_LEASE,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    Error,
    Expired,
    FindNode,
    FindValue,
    Listen,
    Listening,
    Message,
    Nodes,
    Ok,
    Ping,
    Pong,
    Store,
    Update,
    Value,
    _checked,
    _parse,
    _parse_object,
    _refuse_constant,
    check_network,
    decode,
    encode,
)

OWNER = Identity.from_private_bytes(bytes(range(32)))
SIGNED = OWNER.sign("profile", b"hello", 3)
BLOB = blob(b"some data")
SENDER = sha512_id(b"sender")
TARGET = sha512_id(b"target")
CONTACTS = (
    Contact(sha512_id(b"a"), "192.0.2.1", 4000),
    Contact(sha512_id(b"b"), "2001:db8::1", 4001),
)
HEAD: dict[str, Any] = {"rid": 7, "sender": SENDER, "port": 4000}
RID = 7

#: One example of every message type, by type name.
EXAMPLES: dict[str, Message] = {
    "ping": Ping(**HEAD),
    "pong": Pong(**HEAD),
    "store": Store(**HEAD, item=SIGNED, ttl=3600.0),
    "ok": Ok(**HEAD),
    "find_node": FindNode(**HEAD, target=TARGET),
    "find_value": FindValue(**HEAD, key=TARGET),
    "nodes": Nodes(**HEAD, nodes=CONTACTS),
    "value": Value(**HEAD, item=BLOB),
    "error": Error(**HEAD, code=int(ErrorCode.BAD_FIELD), message="field 'ttl' is bad"),
    "listen": Listen(**HEAD, key=TARGET, lease=600.0, seq=3),
    "listening": Listening(**HEAD, lease=600.0, item=SIGNED),
    "update": Update(**HEAD, key=SIGNED.key, item=SIGNED),
    "expired": Expired(**HEAD, key=SIGNED.key, seq=3),
}

#: More messages for the round trip: the other item kind, empty and edge-valued envelopes.
ROUND_TRIP = [
    *(pytest.param(message, id=kind) for kind, message in EXAMPLES.items()),
    pytest.param(Store(**HEAD, item=BLOB, ttl=MAX_TTL), id="store-blob-max-ttl"),
    pytest.param(Store(**HEAD, item=BLOB, ttl=60.0, closest=True), id="store-closest"),
    pytest.param(Ok(**HEAD, nodes=CONTACTS), id="ok-nodes"),
    pytest.param(Value(**HEAD, item=SIGNED), id="value-signed"),
    pytest.param(Nodes(**HEAD), id="nodes-empty"),
    pytest.param(Pong(rid=0, sender=0, port=0), id="pong-zeros"),
    pytest.param(Error(rid=0, sender=0, port=0, code=100, message="?"), id="error-rid-0"),
    pytest.param(Ping(rid=2**53 - 1, sender=2**512 - 1, port=65535), id="ping-maxima"),
    pytest.param(Error(**HEAD, code=999, message="é\u2603"), id="error-unknown-code-unicode"),
    pytest.param(Ping(**HEAD, challenge=bytes(range(32))), id="ping-challenge"),
    pytest.param(Ping(**HEAD, challenge=b"\xff" * 16), id="ping-shortest-challenge"),
    pytest.param(Ping(**HEAD, challenge=b"\x00" * 64), id="ping-longest-challenge"),
    pytest.param(Pong(**HEAD, proof=OWNER.prove(b"c" * 32)), id="pong-proof"),
    pytest.param(Listen(**HEAD, key=TARGET, lease=0.0), id="listen-cancel-no-seq"),
    pytest.param(Listen(**HEAD, key=TARGET, lease=MAX_LEASE, seq=0), id="listen-max-lease"),
    pytest.param(Listening(**HEAD, lease=30.0), id="listening-nothing-held"),
    pytest.param(Update(**HEAD, key=BLOB.key, item=BLOB), id="update-blob"),
    pytest.param(Ping(**HEAD, network="lab-1.test_net"), id="ping-other-network"),
    pytest.param(Ping(**HEAD, network="a" * 64), id="ping-longest-network-name"),
    pytest.param(Update(**HEAD, key=BLOB.key, item=BLOB, network="z"), id="update-other-network"),
]


def b64(data: bytes) -> str:
    """Standard base64 with padding, as the wire carries bytes."""
    return base64.b64encode(data).decode("ascii")


def wire_object(kind: str) -> dict[str, Any]:
    """The decoded JSON of the example message of type ``kind``."""
    obj: dict[str, Any] = json.loads(encode(EXAMPLES[kind]))
    return obj


def wire(kind: str, *, drop: tuple[str, ...] = (), **changes: Any) -> bytes:
    """The example message of type ``kind`` with fields changed and ``drop`` removed."""
    obj = wire_object(kind)
    obj.update(changes)
    for name in drop:
        del obj[name]
    return json.dumps(obj).encode("utf-8")


def with_item(kind: str, item: object, **changes: Any) -> bytes:
    """The example ``store`` or ``value`` message carrying ``item`` as its wire item."""
    return wire(kind, item=item, **changes)


def contact(ident: object = None, host: object = "192.0.2.1", port: object = 4000) -> list[Any]:
    """A wire contact, valid unless a field is replaced."""
    return [id_to_hex(TARGET) if ident is None else ident, host, port]


def nodes_with(*entries: object) -> bytes:
    """The example ``nodes`` reply holding ``entries`` as its contact list."""
    return wire("nodes", nodes=list(entries))


def refusal(data: bytes) -> ProtocolError:
    """Decode ``data``, which must be refused, and return the error."""
    with pytest.raises(ProtocolError) as info:
        decode(data)
    return info.value


def outcome(data: bytes) -> Message | ProtocolError:
    """What decoding ``data`` gives: a message, or the ProtocolError it raised."""
    try:
        return decode(data)
    except ProtocolError as e:
        return e


@pytest.mark.parametrize("message", ROUND_TRIP)
def test_round_trip(message: Message) -> None:
    """Decoding an encoded message gives back an equal message of the same type."""
    decoded = decode(encode(message))
    assert decoded == message
    assert type(decoded) is type(message)


def test_encode_is_compact_utf8_json() -> None:
    """The wire form is one JSON object without whitespace between tokens, ASCII-escaped."""
    data = encode(Error(**HEAD, code=100, message="é"))
    assert b" " not in data
    assert data.startswith(b'{"v":1,"type":"error","rid":7,"sender":"')
    assert b'"message":"\\u00e9"' in data


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        pytest.param("ping", {}, id="ping"),
        pytest.param("pong", {}, id="pong"),
        pytest.param(
            "store",
            {
                "item": {
                    "value": b64(b"hello"),
                    "public_key": b64(OWNER.public_bytes),
                    "seq": 3,
                    "name": "profile",
                    "signature": b64(SIGNED.signature or b""),
                },
                "ttl": 3600.0,
            },
            id="store",
        ),
        pytest.param("ok", {}, id="ok"),
        pytest.param("find_node", {"target": id_to_hex(TARGET)}, id="find_node"),
        pytest.param("find_value", {"key": id_to_hex(TARGET)}, id="find_value"),
        pytest.param(
            "nodes",
            {
                "nodes": [
                    [id_to_hex(sha512_id(b"a")), "192.0.2.1", 4000],
                    [id_to_hex(sha512_id(b"b")), "2001:db8::1", 4001],
                ]
            },
            id="nodes",
        ),
        pytest.param("value", {"item": {"value": b64(b"some data")}}, id="value"),
        pytest.param("error", {"code": 104, "message": "field 'ttl' is bad"}, id="error"),
        pytest.param("listen", {"key": id_to_hex(TARGET), "lease": 600.0, "seq": 3}, id="listen"),
        pytest.param("listening", {"lease": 600.0, "item": SIGNED.to_json()}, id="listening"),
        pytest.param(
            "update", {"key": id_to_hex(SIGNED.key), "item": SIGNED.to_json()}, id="update"
        ),
        pytest.param("expired", {"key": id_to_hex(SIGNED.key), "seq": 3}, id="expired"),
    ],
)
def test_exact_wire_json(kind: str, body: dict[str, Any]) -> None:
    """Each type's wire object is the envelope (v, type, rid, sender, port) plus its body."""
    obj = wire_object(kind)
    assert obj == {
        "v": PROTOCOL_VERSION,
        "type": kind,
        "rid": 7,
        "sender": id_to_hex(SENDER),
        "port": 4000,
        **body,
    }
    assert re.fullmatch(r"[0-9a-f]{128}", obj["sender"])
    assert obj["v"] == 1


def test_sender_is_zero_padded_hex() -> None:
    """A small sender id is written as 128 hex digits, leading zeros kept."""
    obj = json.loads(encode(Ping(rid=1, sender=1, port=0)))
    assert obj["sender"] == "0" * 127 + "1"


BAD_INPUTS = [
    # Not a JSON object at all: MALFORMED, and no request id can be read.
    pytest.param(b"\xff\xfe{}", ErrorCode.MALFORMED, None, id="not-utf8"),
    pytest.param(b"\xef\xbb\xbf" + wire("ping"), ErrorCode.MALFORMED, None, id="utf8-bom"),
    pytest.param(b"", ErrorCode.MALFORMED, None, id="empty"),
    pytest.param(b"{not json", ErrorCode.MALFORMED, None, id="not-json"),
    pytest.param(wire("ping") + b"x", ErrorCode.MALFORMED, None, id="trailing-garbage"),
    pytest.param(wire("ping") + wire("ping"), ErrorCode.MALFORMED, None, id="two-objects"),
    pytest.param(
        wire("store", ttl=12345.5).replace(b"12345.5", b"NaN"),
        ErrorCode.MALFORMED,
        None,
        id="nan",
    ),
    pytest.param(
        wire("store", ttl=12345.5).replace(b"12345.5", b"Infinity"),
        ErrorCode.MALFORMED,
        None,
        id="infinity",
    ),
    pytest.param(
        wire("store", ttl=12345.5).replace(b"12345.5", b"-Infinity"),
        ErrorCode.MALFORMED,
        None,
        id="minus-infinity",
    ),
    pytest.param(b"[" * 100_000, ErrorCode.MALFORMED, None, id="deep-nesting-unclosed"),
    pytest.param(
        b'{"v":1,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        ErrorCode.MALFORMED,
        None,
        id="deep-nesting-in-object",
    ),
    pytest.param(
        b'{"v":1,"x":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
        ErrorCode.MALFORMED,
        None,
        id="deep-nesting-objects",
    ),
    pytest.param(
        encode(EXAMPLES["ping"]).replace(b'"rid":7', b'"rid":' + b"9" * 5000),
        ErrorCode.MALFORMED,
        None,
        id="integer-too-long-to-parse",
    ),
    pytest.param(b"[]", ErrorCode.MALFORMED, None, id="array"),
    pytest.param(b'"ping"', ErrorCode.MALFORMED, None, id="string"),
    pytest.param(b"42", ErrorCode.MALFORMED, None, id="number"),
    pytest.param(b"null", ErrorCode.MALFORMED, None, id="null"),
    pytest.param(b"[" + wire("ping") + b"]", ErrorCode.MALFORMED, None, id="wrapped-in-array"),
    # Nested deeper than MAX_DEPTH (the message is level 1), even in a field nobody reads: the
    # rid is not read from a message refused as a whole.
    pytest.param(
        wire("ping", x=[[[0]]]).replace(b"[[[0]]]", b"[" * MAX_DEPTH + b"]" * MAX_DEPTH),
        ErrorCode.MALFORMED,
        None,
        id="nested-one-too-deep",
    ),
    pytest.param(
        wire("ping", x=0).replace(b"0}", b'{"a":' * MAX_DEPTH + b"0" + b"}" * MAX_DEPTH + b"}"),
        ErrorCode.MALFORMED,
        None,
        id="objects-nested-one-too-deep",
    ),
    # The version.
    pytest.param(wire("ping", drop=("v",)), ErrorCode.MISSING_FIELD, RID, id="missing-v"),
    pytest.param(wire("ping", v=2), ErrorCode.BAD_VERSION, RID, id="wrong-v"),
    pytest.param(wire("ping", v=0), ErrorCode.BAD_VERSION, RID, id="v-zero"),
    pytest.param(wire("ping", v="1"), ErrorCode.BAD_FIELD, RID, id="v-string"),
    pytest.param(wire("ping", v=True), ErrorCode.BAD_FIELD, RID, id="v-bool"),
    pytest.param(wire("ping", v=1.0), ErrorCode.BAD_FIELD, RID, id="v-float"),
    pytest.param(wire("ping", v=None), ErrorCode.BAD_FIELD, RID, id="v-null"),
    # The type.
    pytest.param(wire("ping", drop=("type",)), ErrorCode.MISSING_FIELD, RID, id="missing-type"),
    pytest.param(wire("ping", type="hello"), ErrorCode.UNKNOWN_TYPE, RID, id="unknown-type"),
    pytest.param(wire("ping", type=""), ErrorCode.UNKNOWN_TYPE, RID, id="empty-type"),
    pytest.param(wire("ping", type="PING"), ErrorCode.UNKNOWN_TYPE, RID, id="uppercase-type"),
    pytest.param(wire("ping", type="x" * 5000), ErrorCode.UNKNOWN_TYPE, RID, id="long-type"),
    pytest.param(wire("ping", type=1), ErrorCode.BAD_FIELD, RID, id="type-number"),
    pytest.param(wire("ping", type=["ping"]), ErrorCode.BAD_FIELD, RID, id="type-list"),
    # The request id: when it cannot be read, the error carries none.
    pytest.param(wire("ping", drop=("rid",)), ErrorCode.MISSING_FIELD, None, id="missing-rid"),
    pytest.param(wire("ping", rid=-1), ErrorCode.BAD_FIELD, None, id="negative-rid"),
    pytest.param(wire("ping", rid=2**53), ErrorCode.BAD_FIELD, None, id="too-large-rid"),
    pytest.param(wire("ping", rid=10**400), ErrorCode.BAD_FIELD, None, id="huge-rid"),
    pytest.param(wire("ping", rid=True), ErrorCode.BAD_FIELD, None, id="bool-rid"),
    pytest.param(wire("ping", rid=7.0), ErrorCode.BAD_FIELD, None, id="float-rid"),
    pytest.param(wire("ping", rid="7"), ErrorCode.BAD_FIELD, None, id="string-rid"),
    pytest.param(wire("ping", rid=None), ErrorCode.BAD_FIELD, None, id="null-rid"),
    # rid 0 is for error replies about unreadable rids: a request with it is refused, with it.
    pytest.param(wire("ping", rid=0), ErrorCode.BAD_FIELD, 0, id="request-rid-0"),
    pytest.param(wire("store", rid=0), ErrorCode.BAD_FIELD, 0, id="store-rid-0"),
    pytest.param(wire("ping", rid=-1, v=2), ErrorCode.BAD_VERSION, None, id="bad-rid-wrong-v"),
    pytest.param(
        wire("ping", rid=True, type="x"), ErrorCode.UNKNOWN_TYPE, None, id="bad-rid-unknown-type"
    ),
    # The sender.
    pytest.param(wire("ping", drop=("sender",)), ErrorCode.MISSING_FIELD, RID, id="no-sender"),
    pytest.param(
        wire("ping", sender=id_to_hex(SENDER)[:-1]), ErrorCode.BAD_FIELD, RID, id="short-sender"
    ),
    pytest.param(
        wire("ping", sender=id_to_hex(SENDER) + "0"), ErrorCode.BAD_FIELD, RID, id="long-sender"
    ),
    pytest.param(
        wire("ping", sender=id_to_hex(SENDER).upper()),
        ErrorCode.BAD_FIELD,
        RID,
        id="uppercase-sender",
    ),
    pytest.param(wire("ping", sender="g" * 128), ErrorCode.BAD_FIELD, RID, id="non-hex-sender"),
    pytest.param(
        wire("ping", sender=id_to_hex(SENDER)[:-1] + "\n"),
        ErrorCode.BAD_FIELD,
        RID,
        id="sender-newline",
    ),
    pytest.param(wire("ping", sender=SENDER), ErrorCode.BAD_FIELD, RID, id="sender-number"),
    pytest.param(wire("ping", sender=""), ErrorCode.BAD_FIELD, RID, id="sender-empty"),
    # The port.
    pytest.param(wire("ping", drop=("port",)), ErrorCode.MISSING_FIELD, RID, id="missing-port"),
    pytest.param(wire("ping", port=-1), ErrorCode.BAD_FIELD, RID, id="negative-port"),
    pytest.param(wire("ping", port=65536), ErrorCode.BAD_FIELD, RID, id="port-65536"),
    pytest.param(wire("ping", port=True), ErrorCode.BAD_FIELD, RID, id="port-bool"),
    pytest.param(wire("ping", port=4000.0), ErrorCode.BAD_FIELD, RID, id="port-float"),
    pytest.param(wire("ping", port="4000"), ErrorCode.BAD_FIELD, RID, id="port-string"),
    # The handshake fields: base64 of the right size, or absent.
    pytest.param(wire("ping", challenge=b64(b"x" * 15)), ErrorCode.BAD_FIELD, RID, id="short-chal"),
    pytest.param(wire("ping", challenge=b64(b"x" * 65)), ErrorCode.BAD_FIELD, RID, id="long-chal"),
    pytest.param(wire("ping", challenge="not base64!"), ErrorCode.BAD_FIELD, RID, id="chal-b64"),
    pytest.param(wire("ping", challenge=12345), ErrorCode.BAD_FIELD, RID, id="chal-number"),
    pytest.param(wire("ping", challenge=None), ErrorCode.BAD_FIELD, RID, id="chal-null"),
    pytest.param(wire("pong", proof=b64(b"p" * 95)), ErrorCode.BAD_FIELD, RID, id="short-proof"),
    pytest.param(wire("pong", proof=b64(b"p" * 97)), ErrorCode.BAD_FIELD, RID, id="long-proof"),
    pytest.param(wire("pong", proof="é"), ErrorCode.BAD_FIELD, RID, id="proof-not-ascii"),
    pytest.param(
        wire("ping", challenge=b64(b"x" * 16)[:-3] + "B=="),
        ErrorCode.BAD_FIELD,
        RID,
        id="chal-not-canonical",
    ),
    # store.
    pytest.param(
        wire("store", drop=("item",)), ErrorCode.MISSING_FIELD, RID, id="store-missing-item"
    ),
    pytest.param(with_item("store", "abc"), ErrorCode.BAD_FIELD, RID, id="store-item-string"),
    pytest.param(with_item("store", [1]), ErrorCode.BAD_FIELD, RID, id="store-item-list"),
    pytest.param(with_item("store", {}), ErrorCode.MISSING_FIELD, RID, id="store-item-empty"),
    pytest.param(
        with_item("store", {"value": "!!"}), ErrorCode.BAD_FIELD, RID, id="store-item-bad-base64"
    ),
    pytest.param(
        with_item("store", {"value": 5}), ErrorCode.BAD_FIELD, RID, id="store-item-value-number"
    ),
    pytest.param(
        with_item("store", {"value": "", "seq": 1}),
        ErrorCode.MISSING_FIELD,
        RID,
        id="store-item-half-mutable",
    ),
    pytest.param(
        with_item("store", {**SIGNED.to_json(), "seq": "3"}),
        ErrorCode.BAD_FIELD,
        RID,
        id="store-item-seq-string",
    ),
    pytest.param(
        with_item("store", {**SIGNED.to_json(), "name": 3}),
        ErrorCode.BAD_FIELD,
        RID,
        id="store-item-name-number",
    ),
    pytest.param(wire("store", drop=("ttl",)), ErrorCode.MISSING_FIELD, RID, id="missing-ttl"),
    pytest.param(wire("store", ttl=0), ErrorCode.BAD_FIELD, RID, id="ttl-zero"),
    pytest.param(wire("store", ttl=0.0), ErrorCode.BAD_FIELD, RID, id="ttl-zero-float"),
    pytest.param(wire("store", ttl=-5), ErrorCode.BAD_FIELD, RID, id="ttl-negative"),
    pytest.param(wire("store", ttl=MAX_TTL + 0.5), ErrorCode.BAD_FIELD, RID, id="ttl-above-max"),
    pytest.param(wire("store", ttl="60"), ErrorCode.BAD_FIELD, RID, id="ttl-string"),
    pytest.param(wire("store", ttl=True), ErrorCode.BAD_FIELD, RID, id="ttl-bool"),
    pytest.param(wire("store", ttl=None), ErrorCode.BAD_FIELD, RID, id="ttl-null"),
    pytest.param(
        wire("store", ttl=12345.5).replace(b"12345.5", b"1e999"),
        ErrorCode.BAD_FIELD,
        RID,
        id="ttl-1e999",
    ),
    pytest.param(wire("store", ttl=10**400), ErrorCode.BAD_FIELD, RID, id="ttl-huge-integer"),
    # A store's optional flags are JSON booleans; an ok's optional nodes, a nodes list.
    pytest.param(wire("store", replica=1), ErrorCode.BAD_FIELD, RID, id="replica-int"),
    pytest.param(wire("store", closest=1), ErrorCode.BAD_FIELD, RID, id="closest-int"),
    pytest.param(wire("store", closest="true"), ErrorCode.BAD_FIELD, RID, id="closest-string"),
    pytest.param(wire("store", closest=None), ErrorCode.BAD_FIELD, RID, id="closest-null"),
    pytest.param(wire("ok", nodes={}), ErrorCode.BAD_FIELD, RID, id="ok-nodes-object"),
    pytest.param(wire("ok", nodes=None), ErrorCode.BAD_FIELD, RID, id="ok-nodes-null"),
    pytest.param(wire("ok", nodes=[[1, 2]]), ErrorCode.BAD_FIELD, RID, id="ok-contact-short"),
    pytest.param(
        wire("ok", nodes=[contact(port=0)]), ErrorCode.BAD_FIELD, RID, id="ok-contact-port-0"
    ),
    pytest.param(
        wire("ok", nodes=[contact()] * (MAX_CONTACTS + 1)),
        ErrorCode.BAD_FIELD,
        RID,
        id="ok-too-many-contacts",
    ),
    pytest.param(
        wire("store", ttl=60, item="x"), ErrorCode.BAD_FIELD, RID, id="store-good-ttl-bad-item"
    ),
    # find_node and find_value.
    pytest.param(
        wire("find_node", drop=("target",)), ErrorCode.MISSING_FIELD, RID, id="missing-target"
    ),
    pytest.param(
        wire("find_node", target=id_to_hex(TARGET)[2:]), ErrorCode.BAD_FIELD, RID, id="short-target"
    ),
    pytest.param(wire("find_node", target=TARGET), ErrorCode.BAD_FIELD, RID, id="target-number"),
    pytest.param(
        wire("find_node", target="0x" + id_to_hex(TARGET)[2:]),
        ErrorCode.BAD_FIELD,
        RID,
        id="target-0x",
    ),
    pytest.param(wire("find_value", drop=("key",)), ErrorCode.MISSING_FIELD, RID, id="no-key"),
    pytest.param(
        wire("find_value", key=id_to_hex(TARGET).upper()),
        ErrorCode.BAD_FIELD,
        RID,
        id="uppercase-key",
    ),
    # nodes.
    pytest.param(wire("nodes", drop=("nodes",)), ErrorCode.MISSING_FIELD, RID, id="no-nodes"),
    pytest.param(wire("nodes", nodes={}), ErrorCode.BAD_FIELD, RID, id="nodes-object"),
    pytest.param(wire("nodes", nodes="abc"), ErrorCode.BAD_FIELD, RID, id="nodes-string"),
    pytest.param(
        nodes_with(*[contact()] * (MAX_CONTACTS + 1)),
        ErrorCode.BAD_FIELD,
        RID,
        id="too-many-contacts",
    ),
    pytest.param(nodes_with("abc"), ErrorCode.BAD_FIELD, RID, id="contact-3-char-string"),
    pytest.param(nodes_with(5), ErrorCode.BAD_FIELD, RID, id="contact-number"),
    pytest.param(nodes_with(None), ErrorCode.BAD_FIELD, RID, id="contact-null"),
    pytest.param(
        nodes_with({"id": id_to_hex(TARGET), "host": "192.0.2.1", "port": 4000}),
        ErrorCode.BAD_FIELD,
        RID,
        id="contact-object",
    ),
    pytest.param(nodes_with(contact()[:2]), ErrorCode.BAD_FIELD, RID, id="contact-2-list"),
    pytest.param(nodes_with([*contact(), 1]), ErrorCode.BAD_FIELD, RID, id="contact-4-list"),
    pytest.param(
        nodes_with(contact(host="example.com")), ErrorCode.BAD_FIELD, RID, id="contact-hostname"
    ),
    pytest.param(
        nodes_with(contact(host="192.0.2.256")), ErrorCode.BAD_FIELD, RID, id="contact-bad-ipv4"
    ),
    pytest.param(
        nodes_with(contact(host="010.0.0.1")), ErrorCode.BAD_FIELD, RID, id="contact-octal-ipv4"
    ),
    pytest.param(nodes_with(contact(host="")), ErrorCode.BAD_FIELD, RID, id="contact-empty-host"),
    pytest.param(
        nodes_with(contact(host=3221225985)), ErrorCode.BAD_FIELD, RID, id="contact-host-int"
    ),
    pytest.param(nodes_with(contact(port=0)), ErrorCode.BAD_FIELD, RID, id="contact-port-0"),
    pytest.param(
        nodes_with(contact(port=70000)), ErrorCode.BAD_FIELD, RID, id="contact-port-70000"
    ),
    pytest.param(nodes_with(contact(port=True)), ErrorCode.BAD_FIELD, RID, id="contact-port-bool"),
    pytest.param(
        nodes_with(contact(port="4000")), ErrorCode.BAD_FIELD, RID, id="contact-port-string"
    ),
    pytest.param(nodes_with(contact(ident="ab")), ErrorCode.BAD_FIELD, RID, id="contact-bad-id"),
    pytest.param(nodes_with(contact(ident=5)), ErrorCode.BAD_FIELD, RID, id="contact-id-number"),
    pytest.param(
        nodes_with(contact(), contact(host="nope")),
        ErrorCode.BAD_FIELD,
        RID,
        id="second-contact-bad",
    ),
    # The network name (after the port).
    pytest.param(wire("ping", network=None), ErrorCode.BAD_FIELD, RID, id="network-null"),
    pytest.param(wire("ping", network=""), ErrorCode.BAD_FIELD, RID, id="network-empty"),
    pytest.param(wire("ping", network="A"), ErrorCode.BAD_FIELD, RID, id="network-upper-case"),
    pytest.param(wire("ping", network="-a"), ErrorCode.BAD_FIELD, RID, id="network-leading-dash"),
    pytest.param(wire("ping", network="a b"), ErrorCode.BAD_FIELD, RID, id="network-space"),
    pytest.param(wire("ping", network="a" * 65), ErrorCode.BAD_FIELD, RID, id="network-too-long"),
    pytest.param(wire("ping", network=7), ErrorCode.BAD_FIELD, RID, id="network-number"),
    pytest.param(
        wire("ping", network=None, port=-1), ErrorCode.BAD_FIELD, RID, id="port-before-network"
    ),
    # listen, listening, update, expired.
    pytest.param(wire("listen", drop=("key",)), ErrorCode.MISSING_FIELD, RID, id="listen-no-key"),
    pytest.param(
        wire("listen", drop=("lease",)), ErrorCode.MISSING_FIELD, RID, id="listen-no-lease"
    ),
    pytest.param(wire("listen", lease=-1), ErrorCode.BAD_FIELD, RID, id="listen-negative-lease"),
    pytest.param(wire("listen", lease=86401), ErrorCode.BAD_FIELD, RID, id="listen-long-lease"),
    pytest.param(wire("listen", lease="60"), ErrorCode.BAD_FIELD, RID, id="listen-string-lease"),
    pytest.param(
        wire("listen", lease=12345.5).replace(b"12345.5", b"1e400"),
        ErrorCode.BAD_FIELD,
        RID,
        id="listen-huge-lease",
    ),
    pytest.param(wire("listen", seq=-1), ErrorCode.BAD_FIELD, RID, id="listen-negative-seq"),
    pytest.param(wire("listen", seq=2**63), ErrorCode.BAD_FIELD, RID, id="listen-huge-seq"),
    pytest.param(wire("listen", seq=None), ErrorCode.BAD_FIELD, RID, id="listen-null-seq"),
    pytest.param(wire("listen", key="ab"), ErrorCode.BAD_FIELD, RID, id="listen-bad-key"),
    pytest.param(
        wire("listen", key="ab", lease=-1), ErrorCode.BAD_FIELD, RID, id="listen-key-first"
    ),
    pytest.param(
        wire("listening", drop=("lease",)), ErrorCode.MISSING_FIELD, RID, id="listening-no-lease"
    ),
    pytest.param(wire("listening", item=None), ErrorCode.BAD_FIELD, RID, id="listening-null-item"),
    pytest.param(wire("listening", item={}), ErrorCode.MISSING_FIELD, RID, id="listening-item"),
    pytest.param(wire("update", drop=("item",)), ErrorCode.MISSING_FIELD, RID, id="update-no-item"),
    pytest.param(wire("update", drop=("key",)), ErrorCode.MISSING_FIELD, RID, id="update-no-key"),
    pytest.param(wire("expired", seq="3"), ErrorCode.BAD_FIELD, RID, id="expired-string-seq"),
    pytest.param(wire("expired", drop=("seq",)), ErrorCode.MISSING_FIELD, RID, id="expired-no-seq"),
    # value.
    pytest.param(
        wire("value", drop=("item",)), ErrorCode.MISSING_FIELD, RID, id="value-missing-item"
    ),
    pytest.param(with_item("value", None), ErrorCode.BAD_FIELD, RID, id="value-item-null"),
    pytest.param(
        with_item("value", {"value": "YQ="}), ErrorCode.BAD_FIELD, RID, id="value-bad-padding"
    ),
    # error.
    pytest.param(wire("error", drop=("code",)), ErrorCode.MISSING_FIELD, RID, id="error-no-code"),
    pytest.param(
        wire("error", drop=("message",)), ErrorCode.MISSING_FIELD, RID, id="error-no-message"
    ),
    pytest.param(wire("error", code="104"), ErrorCode.BAD_FIELD, RID, id="error-code-string"),
    pytest.param(wire("error", code=104.0), ErrorCode.BAD_FIELD, RID, id="error-code-float"),
    pytest.param(wire("error", message=5), ErrorCode.BAD_FIELD, RID, id="error-message-number"),
]


@pytest.mark.parametrize(("data", "code", "request_id"), BAD_INPUTS)
def test_decode_refuses(data: bytes, code: ErrorCode, request_id: int | None) -> None:
    """Bad input is a ProtocolError with the right code, and the request id when readable."""
    error = refusal(data)
    assert error.code is code
    assert error.request_id == request_id
    assert error.message
    assert str(error).startswith(f"{code.name.lower()} ({int(code)}): ")


def test_refusal_names_the_field() -> None:
    """The error message says which field is wrong, in a form a person can read."""
    assert refusal(wire("store", ttl=0)).message == (
        f"field 'ttl' must be above 0 and at most {MAX_TTL:g}"
    )
    assert refusal(wire("ping", drop=("sender",))).message == "field 'sender' is missing"
    assert refusal(wire("ping", port="1")).message == "field 'port' must be an integer, not '1'"
    assert refusal(wire("store", ttl="3600")).message == (
        "field 'ttl' must be a number, not '3600'"
    )
    assert refusal(wire("store", replica=1)).message == (
        "field 'replica' must be true or false, not 1"
    )
    assert refusal(wire("nodes", nodes={})).message == "field 'nodes' must be an array, not {}"
    assert refusal(wire("ping", v=9)).message == "protocol version 9 is not spoken here"
    assert refusal(with_item("value", {})).message.startswith("field 'item': ")
    assert "example.com" in refusal(nodes_with(contact(host="example.com"))).message


def test_long_unknown_type_is_cut_in_the_error_text() -> None:
    """An unknown type is quoted in the error text cut to 40 characters."""
    assert refusal(wire("ping", type="x" * 5000)).message == f"unknown message type {'x' * 40!r}"


def test_a_peers_long_values_are_cut_in_the_error_text() -> None:
    """A version, a field of the wrong type or a sequence number out of range, however long,
    comes back (and goes to the log) cut to 40 characters."""
    nines = int("9" * 4000)
    version = refusal(wire("ping", v=nines)).message
    assert version == f"protocol version {'9' * 40} is not spoken here"
    assert refusal(wire("ping", port="p" * 5000)).message == (
        f"field 'port' must be an integer, not {'p' * 5000!r:.40}"
    )
    forged = Item(b"v", b"k" * 32, "name", nines, b"s" * 64)
    with pytest.raises(ProtocolError) as caught:
        forged.verify()
    assert caught.value.message == f"a sequence number is 0 to 2**63 - 1, got {'9' * 40}"


def test_edge_values_are_accepted() -> None:
    """Range limits are inclusive: rid 1 (0 on a reply) and 2**53-1, port 0 and 65535, ttl
    MAX_TTL, nesting MAX_DEPTH levels deep."""
    assert decode(wire("ping", rid=1)).rid == 1
    assert decode(wire("pong", rid=0)).rid == 0
    assert decode(wire("error", rid=0)).rid == 0
    deepest = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    assert decode(wire("ping", x=0).replace(b'"x": 0', b'"x": ' + deepest)).rid == RID
    assert decode(wire("ping", rid=2**53 - 1)).rid == 2**53 - 1
    assert decode(wire("ping", port=0)).port == 0
    assert decode(wire("ping", port=65535)).port == 65535
    store = decode(wire("store", ttl=MAX_TTL))
    assert isinstance(store, Store)
    assert store.ttl == MAX_TTL


def test_integer_ttl_is_read_as_float() -> None:
    """A ttl written as a JSON integer is accepted and held as a float."""
    store = decode(wire("store", ttl=60))
    assert isinstance(store, Store)
    assert store.ttl == 60.0
    assert isinstance(store.ttl, float)


def test_smallest_positive_ttl_is_accepted() -> None:
    """Any ttl above zero is in range, however small."""
    store = decode(wire("store", ttl=5e-324))
    assert isinstance(store, Store)
    assert store.ttl == 5e-324


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(contact(port=True), id="port-true-after-1"),
        pytest.param(contact(port=1.0), id="port-float-after-1"),
        pytest.param([*contact(port=1), []], id="four-after-three"),
        pytest.param([contact(port=1)], id="nested-list"),
        pytest.param({"a": 1, "b": 2, "c": 3}, id="object-of-three"),
        pytest.param("abc", id="string-of-three"),
    ],
)
def test_a_contact_read_before_does_not_let_in_the_same_values_of_another_kind(
    odd: object,
) -> None:
    """Contacts are read through a cache (peers name the same ones in every reply): the
    contact ``[id, host, 1]`` read first, the same values as another JSON type or shape
    (``true`` or ``1.0`` for the port, one value more, the contact inside a list) are still
    refused, each with the field-by-field reader's message."""
    first = decode(nodes_with(contact(port=1)))
    assert isinstance(first, Nodes)
    assert first.nodes[0].port == 1
    error = refusal(nodes_with(odd))
    assert error.code is ErrorCode.BAD_FIELD
    assert error.message.startswith(("a contact is [id, ip, port]", "field 'nodes'"))


def test_contacts_up_to_the_limit_are_accepted() -> None:
    """A nodes reply with exactly MAX_CONTACTS contacts decodes."""
    reply = decode(nodes_with(*[contact()] * MAX_CONTACTS))
    assert isinstance(reply, Nodes)
    assert len(reply.nodes) == MAX_CONTACTS


def test_ipv6_contacts_round_trip() -> None:
    """IPv6 contacts, including loopback and link-local ones, survive the round trip."""
    hosts = ["::1", "2001:db8::1", "fe80::1", "2001:db8:0:1:2:3:4:5"]
    contacts = tuple(Contact(sha512_id(h.encode()), h, 1 + i) for i, h in enumerate(hosts))
    message = Nodes(**HEAD, nodes=contacts)
    assert decode(encode(message)) == message


def test_contact_hosts_are_normalised() -> None:
    """A contact's IP address is read in its canonical text form."""
    reply = decode(nodes_with(contact(host="2001:0DB8:0000::0001"), contact(host="0:0::1")))
    assert isinstance(reply, Nodes)
    assert [c.host for c in reply.nodes] == ["2001:db8::1", "::1"]
    assert reply.nodes[0] == Contact(TARGET, "2001:db8::1", 4000)


def test_unknown_fields_are_ignored() -> None:
    """Extra fields in the envelope, the body or an item are ignored, for forward compatibility."""
    extra: dict[str, Any] = {"future": [1, {"x": None}], "flags": 3}
    obj = wire_object("store")
    obj.update(extra)
    obj["item"].update(extra)
    assert decode(json.dumps(obj).encode()) == EXAMPLES["store"]
    assert decode(wire("ping", target=id_to_hex(TARGET))) == EXAMPLES["ping"]


def test_field_order_does_not_matter() -> None:
    """Fields may come in any order."""
    obj = wire_object("find_node")
    reordered = dict(reversed(list(obj.items())))
    assert decode(json.dumps(reordered).encode()) == EXAMPLES["find_node"]


def test_whitespace_is_allowed() -> None:
    """Pretty-printed JSON decodes like the compact form."""
    assert decode(json.dumps(wire_object("nodes"), indent=2).encode()) == EXAMPLES["nodes"]


def test_long_error_text_is_truncated_on_decode() -> None:
    """An error reply's message longer than MAX_ERROR_TEXT is cut to that length."""
    reply = decode(wire("error", message="x" * (MAX_ERROR_TEXT + 100)))
    assert isinstance(reply, Error)
    assert reply.message == "x" * MAX_ERROR_TEXT
    assert reply.rid == RID


def test_long_error_text_is_truncated_on_encode() -> None:
    """Encoding an error reply never sends more than MAX_ERROR_TEXT characters of text."""
    data = encode(Error(**HEAD, code=500, message="y" * (MAX_ERROR_TEXT * 3)))
    assert json.loads(data)["message"] == "y" * MAX_ERROR_TEXT


def test_error_code_is_not_limited_to_known_codes() -> None:
    """An error reply with a code this node does not know still decodes, code intact."""
    reply = decode(wire("error", code=42))
    assert isinstance(reply, Error)
    assert reply.code == 42


def test_item_is_decoded_but_not_verified() -> None:
    """A well-formed item with a bad signature decodes: verifying it is the receiver's job."""
    forged = {**SIGNED.to_json(), "value": b64(b"forged")}
    store = decode(with_item("store", forged))
    assert isinstance(store, Store)
    assert store.item.value == b"forged"
    with pytest.raises(ProtocolError) as info:
        store.item.verify()
    assert info.value.code is ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("data", "in_reply"),
    [
        pytest.param(wire("pong", port="x"), True, id="broken-pong"),
        pytest.param(wire("error", v=2), True, id="reply-with-wrong-version"),
        pytest.param(wire("value", v=2, rid="x"), True, id="reply-wrong-version-bad-rid"),
        pytest.param(wire("ok", v=None, drop=("sender",)), True, id="ok-missing-sender-null-v"),
        pytest.param(wire("ping", port="x"), False, id="broken-ping"),
        pytest.param(wire("ping", v=2), False, id="request-with-wrong-version"),
        pytest.param(wire("ping", type="gossip"), False, id="unknown-type"),
        pytest.param(wire("ping", type=["pong"]), False, id="type-not-a-string"),
        pytest.param(wire("ping", type={"pong": 1}), False, id="type-an-object"),
        pytest.param(b"{not json", False, id="not-json"),
    ],
)
def test_a_message_whose_type_names_a_reply_is_a_reply(data: bytes, in_reply: bool) -> None:
    """A refused message is marked as a reply (never to be answered) exactly when its type is
    a reply type's name, whatever else is wrong with it, its version included."""
    assert refusal(data).in_reply is in_reply


def test_request_and_reply_types_partition_the_types() -> None:
    """Every message type is a request or a reply, never both, and type names are unique."""
    requests = {cls.TYPE for cls in REQUEST_TYPES}
    replies = {cls.TYPE for cls in REPLY_TYPES}
    assert requests == {"ping", "store", "find_node", "find_value", "listen", "update", "expired"}
    assert replies == {"pong", "ok", "nodes", "value", "error", "listening"}
    assert not requests & replies
    assert requests | replies == set(EXAMPLES)
    assert len(REQUEST_TYPES) + len(REPLY_TYPES) == len(EXAMPLES)
    assert set(REQUEST_TYPES + REPLY_TYPES) == set(Message.__subclasses__())


def test_decoded_type_matches_type_field() -> None:
    """Each type name decodes to its own class."""
    for kind, message in EXAMPLES.items():
        decoded = decode(wire(kind))
        assert (decoded.TYPE, type(decoded)) == (kind, type(message))


ENCODED = [
    *(encode(message) for message in EXAMPLES.values()),
    encode(Ping(**HEAD, challenge=b"c" * 32)),
    encode(Pong(**HEAD, proof=OWNER.prove(b"c" * 32))),
    encode(Store(**HEAD, item=BLOB, ttl=60.0, closest=True)),
    encode(Ok(**HEAD, nodes=CONTACTS)),
]


@settings(max_examples=300, deadline=None)
@given(
    data=st.sampled_from(ENCODED),
    position=st.integers(min_value=0),
    byte=st.integers(min_value=0, max_value=255),
)
def test_single_byte_mutation_decodes_or_is_refused(data: bytes, position: int, byte: int) -> None:
    """Any one byte changed in a valid message gives a Message or a ProtocolError, nothing else."""
    index = position % len(data)
    mutated = data[:index] + bytes([byte]) + data[index + 1 :]
    result = outcome(mutated)
    if isinstance(result, ProtocolError):
        assert isinstance(result.code, ErrorCode)
        assert result.request_id is None or 0 <= result.request_id < 2**53
    else:
        assert decode(encode(result)) == result


@settings(max_examples=100, deadline=None)
@given(data=st.sampled_from(ENCODED), cut=st.integers(min_value=0))
def test_truncated_message_is_malformed(data: bytes, cut: int) -> None:
    """A valid message cut short anywhere is MALFORMED."""
    assert refusal(data[: cut % len(data)]).code is ErrorCode.MALFORMED


# -- the fast codec is the plain one, byte for byte and verdict for verdict -----------------------


def reference_encode(message: Message) -> bytes:
    """The wire bytes as the codec first wrote them: the wire object through ``json.dumps``."""
    obj = {"v": PROTOCOL_VERSION, "type": message.TYPE, "rid": message.rid}
    obj.update(sender=id_to_hex(message.sender), port=message.port)
    if message.network != "txdht":
        obj["network"] = message.network
    obj.update(message.body())
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


ODD_VALUES = [
    pytest.param(Store(**HEAD, item=SIGNED, ttl=86400, cas=2), id="store-int-ttl-cas"),
    pytest.param(Store(**HEAD, item=SIGNED, ttl=60, cas=0, replica=True), id="store-replica"),
    pytest.param(
        Store(**HEAD, item=SIGNED, ttl=60, replica=True, closest=True), id="store-both-flags"
    ),
    pytest.param(Ok(**HEAD, nodes=(Contact(0, "::1", 1),)), id="ok-nodes-zero-id"),
    pytest.param(Store(**HEAD, item=BLOB, ttl=1e-05), id="store-tiny-ttl"),
    pytest.param(Store(**HEAD, item=BLOB, ttl=float("inf")), id="store-infinite-ttl"),
    pytest.param(Error(**HEAD, code=ErrorCode.BAD_FIELD, message='\ud800 \x00 "\\'), id="error"),
    pytest.param(Value(**HEAD, item=OWNER.sign('é\u2603 "name"', b"", 0)), id="value-unicode"),
    pytest.param(Value(**HEAD, item=blob(b"")), id="value-empty"),
    pytest.param(Nodes(**HEAD, nodes=(Contact(0, "::1", 1),)), id="nodes-zero-id"),
    pytest.param(Listen(**HEAD, key=0, lease=1e-05, seq=2**63 - 1), id="listen-tiny-lease"),
    pytest.param(Listening(**HEAD, lease=86400, item=blob(b"")), id="listening-int-lease"),
]


@pytest.mark.parametrize("message", [*ROUND_TRIP, *ODD_VALUES])
def test_encode_writes_what_json_dumps_writes(message: Message) -> None:
    """The codec's text is byte for byte what ``json.dumps`` writes for the wire object."""
    assert encode(message) == reference_encode(message)


def test_a_message_type_of_ones_own_is_encoded_from_its_body() -> None:
    """A Message subclass the codec does not know is written from its ``body()``."""

    class Hello(Message):
        TYPE = "hello"

        def body(self) -> dict[str, Any]:
            return {"greeting": "hé"}

    message = Hello(**HEAD)
    assert encode(message) == reference_encode(message)
    assert encode(message).endswith(b',"greeting":"h\\u00e9"}')
    named = Hello(**HEAD, network="lab")
    assert b',"port":4000,"network":"lab","greeting"' in encode(named)


ids = st.integers(min_value=0, max_value=2**512 - 1)
items = st.one_of(
    st.binary(max_size=80).map(blob),
    st.builds(
        lambda name, value, seq: OWNER.sign(name, value, seq),
        st.text(min_size=1, max_size=20).filter(lambda n: len(n.encode("utf-8", "replace")) <= 256),
        st.binary(max_size=80),
        st.integers(min_value=0, max_value=2**63 - 1),
    ),
)
contacts = st.builds(
    Contact, ids, st.sampled_from(["127.0.0.1", "192.0.2.1", "2001:db8::1"]), st.integers(1, 65535)
)
head = {
    "rid": st.integers(min_value=1, max_value=2**53 - 1),  # 0: error replies about unread ids
    "sender": ids,
    "port": st.integers(min_value=0, max_value=65535),
}
messages = st.one_of(
    st.builds(Ping, **head, challenge=st.none() | st.binary(min_size=16, max_size=64)),
    st.builds(Pong, **head, proof=st.none() | st.binary(min_size=96, max_size=96)),
    st.builds(
        Store,
        **head,
        item=items,
        ttl=st.floats(min_value=1e-9, max_value=MAX_TTL) | st.integers(1, int(MAX_TTL)),
        cas=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
        replica=st.booleans(),
        closest=st.booleans(),
    ),
    st.builds(Ok, **head, nodes=st.lists(contacts, max_size=5).map(tuple)),
    st.builds(FindNode, **head, target=ids),
    st.builds(FindValue, **head, key=ids),
    st.builds(Nodes, **head, nodes=st.lists(contacts, max_size=5).map(tuple)),
    st.builds(Value, **head, item=items),
    st.builds(Error, **head, code=st.integers(-(2**70), 2**70), message=st.text(max_size=30)),
    st.builds(
        Listen,
        **head,
        key=ids,
        lease=st.floats(min_value=0, max_value=MAX_LEASE),
        seq=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
        network=st.sampled_from(["txdht", "private", "lab.2_x-y"]),
    ),
    st.builds(
        Listening,
        **head,
        lease=st.floats(min_value=0, max_value=MAX_LEASE),
        item=st.none() | items,
    ),
    st.builds(Update, **head, key=ids, item=items),
    st.builds(Expired, **head, key=ids, seq=st.integers(min_value=0, max_value=2**63 - 1)),
)


@settings(max_examples=300, deadline=None)
@given(message=messages)
def test_any_message_encodes_as_json_dumps_and_round_trips(message: Message) -> None:
    """Every message's text is what ``json.dumps`` writes, and decodes to an equal message."""
    data = encode(message)
    assert data == reference_encode(message)
    decoded = decode(data)
    assert type(decoded) is type(message)
    expected = replace(message, ttl=float(message.ttl)) if isinstance(message, Store) else message
    assert decoded == expected


def checked_outcome(data: bytes) -> Message | ProtocolError:
    """What the field-by-field reader alone makes of ``data`` (the codec's reference)."""
    try:
        return _checked(json.loads(data.decode("utf-8"), parse_constant=_refuse_constant), data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return refusal(data)
    except ProtocolError as e:
        return e


def same_outcome(a: Message | ProtocolError, b: Message | ProtocolError) -> bool:
    """Whether two outcomes are the same message, or the same refusal."""
    if isinstance(a, ProtocolError) and isinstance(b, ProtocolError):
        return (a.code, a.message, a.request_id, a.in_reply) == (
            b.code,
            b.message,
            b.request_id,
            b.in_reply,
        )
    return type(a) is type(b) and a == b


@settings(max_examples=500, deadline=None)
@given(
    data=st.sampled_from(
        [
            *ENCODED,
            encode(Store(**HEAD, item=BLOB, ttl=60.0, cas=0)),
            encode(Store(**HEAD, item=BLOB, ttl=60.0, closest=True)),
            encode(Ok(**HEAD, nodes=CONTACTS)),
            encode(Nodes(**HEAD, nodes=CONTACTS * 3)),
            encode(Value(**HEAD, item=SIGNED)),
            encode(Listen(**HEAD, key=TARGET, lease=60.0, network="private")),
            encode(Listening(**HEAD, lease=60.0)),
        ]
    ),
    position=st.integers(min_value=0),
    byte=st.integers(min_value=0, max_value=255),
)
def test_fast_reader_agrees_with_the_field_by_field_reader(
    data: bytes, position: int, byte: int
) -> None:
    """With one byte changed anywhere, decode gives what the field-by-field reader gives: the
    same message, or the same refusal (code, text, request id, direction)."""
    index = position % len(data)
    mutated = data[:index] + bytes([byte]) + data[index + 1 :]
    assert same_outcome(outcome(mutated), checked_outcome(mutated))


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({"v": True}, id="bool-version"),
        pytest.param({"type": ["ping"]}, id="list-type"),
        pytest.param({"type": "hello"}, id="unknown-type"),
        pytest.param({"challenge": None}, id="null-challenge"),
        pytest.param({"challenge": "AAAA"}, id="short-challenge"),
        pytest.param({"type": "store", "ttl": 5, "item": {"value": ""}, "cas": True}, id="cas"),
        pytest.param(
            {"type": "store", "ttl": 5, "item": {"value": ""}, "replica": 1}, id="replica-int"
        ),
        pytest.param(
            {"type": "store", "ttl": 5, "item": {"value": ""}, "replica": None}, id="replica-null"
        ),
        pytest.param(
            {"type": "store", "ttl": 5, "item": {"value": ""}, "closest": 1}, id="closest-int"
        ),
        pytest.param(
            {"type": "store", "ttl": 5, "item": {"value": ""}, "closest": None}, id="closest-null"
        ),
        pytest.param({"type": "ok", "nodes": {}}, id="ok-nodes-object"),
        pytest.param({"type": "ok", "nodes": [["a", "b", "c"]]}, id="ok-contact-types"),
        pytest.param({"type": "store", "ttl": "5", "item": {"value": ""}}, id="ttl"),
        pytest.param({"type": "store", "ttl": 5, "item": []}, id="item"),
        pytest.param({"type": "nodes", "nodes": {}}, id="nodes-object"),
        pytest.param({"type": "nodes", "nodes": [[1, 2]]}, id="contact-short"),
        pytest.param({"type": "nodes", "nodes": [["a", "b", "c"]]}, id="contact-types"),
        pytest.param({"type": "nodes", "nodes": [[id_to_hex(1), "::1", 0]]}, id="contact-port"),
        pytest.param({"type": "error", "code": 1.0, "message": ""}, id="error-code"),
        pytest.param({"network": None}, id="null-network"),
        pytest.param({"network": "Upper"}, id="upper-case-network"),
        pytest.param({"type": "listen", "key": id_to_hex(1), "lease": True}, id="bool-lease"),
        pytest.param({"type": "listen", "key": id_to_hex(1), "lease": 1, "seq": -1}, id="seq"),
        pytest.param({"type": "listening", "lease": 1, "item": None}, id="null-item"),
        pytest.param({"type": "expired", "key": id_to_hex(1), "seq": 1.0}, id="float-seq"),
    ],
)
def test_fast_reader_hands_the_odd_ones_to_the_field_by_field_reader(obj: dict[str, Any]) -> None:
    """A message with one field of an odd kind gets the field-by-field reader's verdict."""
    data = json.dumps({**wire_object("ping"), **obj}).encode()
    assert same_outcome(outcome(data), checked_outcome(data))


def test_network_names_are_checked() -> None:
    """A network name is 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit."""
    for good in ("txdht", "a", "0", "my-net.2_x", "z" * 64):
        assert check_network(good) == good
    for bad in ("", "Net", "-a", ".a", "a b", "a/b", "é", "z" * 65, None):
        with pytest.raises(ValueError, match="a network name is"):
            check_network(bad)  # type: ignore[arg-type]


def test_the_public_network_sends_no_name_and_a_missing_name_is_the_public_network() -> None:
    """A message of the public network has no network field, which is what nodes that know
    nothing of names send; one of another network names it after the port."""
    assert b"network" not in encode(EXAMPLES["ping"])
    assert decode(wire("ping")).network == "txdht"
    assert decode(wire("ping", network="txdht")).network == "txdht"
    other = encode(Ping(**HEAD, network="lab"))
    assert b'"port":4000,"network":"lab"}' in other
    assert decode(other).network == "lab"


def test_byte_order_mark_is_malformed() -> None:
    """A payload starting with a UTF-8 byte order mark is refused as json.loads refuses it."""
    error = refusal(b"\xef\xbb\xbf" + encode(EXAMPLES["ping"]))
    assert error.code is ErrorCode.MALFORMED
    assert "BOM" in error.message


@pytest.mark.parametrize("message", ROUND_TRIP)
def test_a_decoded_message_holds_its_fields_and_nothing_else(message: Message) -> None:
    """The fast reader fills the instance's fields without the dataclass's __init__: every
    field is set, to what the constructor would set, and nothing else is."""
    decoded = decode(encode(message))
    assert set(vars(decoded)) == {f.name for f in fields(type(message))}
    assert vars(decoded) == vars(message)


def parse_outcome(parse: Any, text: str) -> object:
    """What ``parse`` makes of ``text``: the value, or the kind and text of its error."""
    try:
        return ("value", parse(text))
    except (ValueError, RecursionError) as e:
        return ("error", type(e), str(e))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('{"a":1}', id="object"),
        pytest.param("{}", id="empty-object"),
        pytest.param('{"a":"}"}', id="brace-in-string"),
        pytest.param(' {"a":1}', id="leading-space"),
        pytest.param('{"a":1}\n', id="trailing-newline"),
        pytest.param('{"a":1}{"b":2}', id="two-objects"),
        pytest.param('{"a":1} }', id="trailing-brace"),
        pytest.param('{"a":NaN}', id="nan"),
        pytest.param('{"a":-Infinity}', id="infinity"),
        pytest.param('{"a":1', id="unterminated"),
        pytest.param("{", id="open-brace"),
        pytest.param("}", id="close-brace"),
        pytest.param("{}}", id="extra-close"),
        pytest.param('{"a":1,}', id="trailing-comma"),
        pytest.param("{'a':1}", id="single-quotes"),
        pytest.param('{"a":[1,2}', id="mismatched"),
        pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, id="deep"),
        pytest.param("", id="empty"),
        pytest.param("[1]", id="array"),
        pytest.param('"}"', id="string"),
    ],
)
def test_the_object_parser_gives_what_the_decoder_gives(text: str) -> None:
    """The short way to parse a bare object gives the decoder's value, or its error, for
    anything: whitespace around it, data after it, constants, nesting past the recursion
    limit."""
    assert parse_outcome(_parse_object, text) == parse_outcome(_parse, text)


@settings(max_examples=500, deadline=None)
@given(text=st.text(alphabet='{}[]":,a1 .-eNInfty\\', max_size=30).map(lambda t: "{" + t))
def test_the_object_parser_agrees_with_the_decoder_on_any_text(text: str) -> None:
    """On texts made of JSON's punctuation, the two parsers agree."""
    assert parse_outcome(_parse_object, text) == parse_outcome(_parse, text)


def too_deep(levels: int = MAX_DEPTH) -> list[Any]:
    """An array nested ``levels`` deep."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(wire("find_value", extra=too_deep()), id="unknown-key"),
        pytest.param(wire("find_value", TYPE=too_deep()), id="class-attribute-name"),
        pytest.param(wire("find_value", item=too_deep()), id="item-key-of-another-type"),
        pytest.param(
            with_item("value", {**SIGNED.to_json(), "extra": too_deep()}), id="unknown-item-key"
        ),
        pytest.param(
            with_item("store", {**BLOB.to_json(), "extra": too_deep()}), id="unknown-blob-key"
        ),
        pytest.param(wire("listening", extra=too_deep()), id="listening-no-item"),
    ],
)
def test_depth_is_checked_wherever_a_key_is_unknown(data: bytes) -> None:
    """The bracket count is skipped only for a message with none but its own keys: one too
    deep in any other key, at the top or in the item, is still refused."""
    error = refusal(data)
    assert error.code is ErrorCode.MALFORMED
    assert f"nested deeper than {MAX_DEPTH} levels" in error.message


@pytest.mark.parametrize("kind", EXAMPLES)
def test_unknown_keys_nested_to_the_limit_are_read(kind: str) -> None:
    """An unknown key nested as deep as allowed does not make the message unreadable."""
    message = decode(wire(kind, extra=too_deep(MAX_DEPTH - 1)))
    assert message == EXAMPLES[kind]


def test_a_contact_that_moved_is_written_at_its_new_address() -> None:
    """The written form of a contact is kept by id: a contact of the same id at another host
    or port is written at that one, not at the address written before."""
    for host, port in [("192.0.2.1", 4000), ("192.0.2.2", 4000), ("192.0.2.2", 4001)]:
        message = Nodes(**HEAD, nodes=(Contact(TARGET, host, port),))
        assert encode(message) == reference_encode(message)
        decoded = decode(encode(message))
        assert isinstance(decoded, Nodes)
        assert decoded.nodes == (Contact(TARGET, host, port),)


def test_the_written_contacts_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_CONTACT_TEXTS written contacts are kept, the oldest dropped first."""
    monkeypatch.setattr(codec, "MAX_CONTACT_TEXTS", 3)
    monkeypatch.setattr(codec, "_CONTACT_TEXT", {})
    contacts = tuple(Contact(sha512_id(b"%d" % i), "192.0.2.1", 4000 + i) for i in range(5))
    message = Nodes(**HEAD, nodes=contacts)
    assert encode(message) == reference_encode(message)
    assert list(codec._CONTACT_TEXT) == [c.id for c in contacts[2:]]
    assert encode(message) == reference_encode(message)  # written again, as they were


def test_a_message_type_of_ones_own_without_a_body_is_its_envelope() -> None:
    """A type of someone else's that adds no field is written as the envelope alone."""

    @dataclass(frozen=True, kw_only=True)
    class Hello(Message):
        TYPE = "hello"

    obj = json.loads(encode(Hello(**HEAD)))
    assert obj == {"v": 1, "type": "hello", "rid": RID, "sender": id_to_hex(SENDER), "port": 4000}
