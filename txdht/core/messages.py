"""The wire messages and their codec: one UTF-8 JSON object per netstring.

Every message carries the protocol version ``v``, its ``type``, a request id ``rid`` (a reply
echoes the id of the request it answers, so many requests can share one connection), and the
sender's id and listening port (0: "I do not listen, do not add me to your routing table"), and,
outside the public network, the sender's ``network`` name (absent: the public network, so the
public network's messages are those of nodes that know nothing of names). The sender's host is
never sent: the receiver takes it from the connection, so a peer cannot point others at an
address it does not hold.

``decode`` is strict: anything but a well-formed message of a known type raises ``ProtocolError``
with the code that says what is wrong, and with the request id when one could be read, so that
the shell can answer with an ``error`` reply (or, for a broken reply, fail the request it
answers: a message whose ``type`` names a reply type is never answered, whatever else is wrong
with it). docs/protocol.md is the specification.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import json.scanner
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from itertools import starmap
from typing import Any, ClassVar, NoReturn

from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import Contact, id_from_hex, id_to_hex
from txdht.core.items import MAX_SEQ, MAX_TTL, PROOF_BYTES, Item, from_base64, to_base64

__all__ = [
    "DEFAULT_NETWORK",
    "MAX_CONTACTS",
    "MAX_DEPTH",
    "MAX_ERROR_TEXT",
    "MAX_LEASE",
    "PROTOCOL_VERSION",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "Error",
    "Expired",
    "FindNode",
    "FindValue",
    "Listen",
    "Listening",
    "Message",
    "Nodes",
    "Ok",
    "Ping",
    "Pong",
    "Store",
    "Update",
    "Value",
    "check_network",
    "decode",
    "encode",
]

#: The version this codec speaks; a message with another version is refused with BAD_VERSION.
PROTOCOL_VERSION = 1
#: Request ids are JSON integers that every JSON parser holds exactly (2**53, JavaScript's limit).
MAX_REQUEST_ID = 2**53 - 1
#: At most this many contacts in a ``nodes`` reply: k is configurable, but never above this, so
#: a peer cannot make us parse (or route to) thousands of contacts from one reply.
MAX_CONTACTS = 64
#: An error reply's text is cut to this many characters: it is for a person's log, not for data.
MAX_ERROR_TEXT = 1024
#: The deepest nesting of JSON objects and arrays a message may have (the message itself is
#: level 1; a contact in a ``nodes`` reply, the deepest thing version 1 sends, is level 3). The
#: bound is ours, not the JSON parser's recursion limit, which varies with the caller's stack:
#: every node refuses exactly the same messages, and leaves room for fields yet to come.
MAX_DEPTH = 32
#: The public network's name: a message without a ``network`` field is of this network, and
#: its nodes send none (so that they and nodes that know nothing of names are one network).
DEFAULT_NETWORK = "txdht"
#: A network name: 1 to 64 of lower-case ASCII letters, digits, ``.``, ``_`` and ``-``, starting
#: with a letter or digit (no escaping in JSON, no look-alikes, fits in a log line).
_NETWORK_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: The longest lease a ``listen`` may ask for or a ``listening`` reply may grant, in seconds (a
#: day; a node grants at most its own ``max_lease``).
MAX_LEASE = 86400.0


def check_network(name: str) -> str:
    """``name`` if it is a valid network name; ``ValueError`` saying why otherwise."""
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        raise ValueError(
            f"a network name is 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or "
            f"digit, not {name!r:.80}"
        )
    return name


@dataclass(frozen=True, kw_only=True)
class Message:
    """What every message carries: request id, the sender's id, the sender's listening port,
    and the network it belongs to."""

    TYPE: ClassVar[str] = ""
    rid: int
    sender: int
    port: int
    network: str = DEFAULT_NETWORK

    def body(self) -> dict[str, Any]:
        """The type-specific fields, in wire form."""
        return {}


@dataclass(frozen=True, kw_only=True)
class Ping(Message):
    """Are you there? Answered by ``pong``; with a ``challenge``, prove who you are."""

    TYPE = "ping"
    challenge: bytes | None = None

    def body(self) -> dict[str, Any]:
        return {} if self.challenge is None else {"challenge": to_base64(self.challenge)}


@dataclass(frozen=True, kw_only=True)
class Pong(Message):
    """I am here; ``proof`` answers a challenge (see ``txdht.core.items.proves``)."""

    TYPE = "pong"
    proof: bytes | None = None

    def body(self) -> dict[str, Any]:
        return {} if self.proof is None else {"proof": to_base64(self.proof)}


@dataclass(frozen=True, kw_only=True)
class Store(Message):
    """Keep ``item`` for ``ttl`` seconds; with ``cas``, only if the stored sequence number is
    ``cas`` (0: nothing stored). ``replica``: the sender is replicating a version it holds
    (its replication round), so the receiver need not replicate the key itself this interval.
    ``closest``: the store is also a lookup's query (a put's), so the ``ok`` names the
    receiver's closest contacts to the item's key, as a ``nodes`` reply to a ``find_node``
    would. Answered by ``ok`` or an ``error``."""

    TYPE = "store"
    item: Item
    ttl: float
    cas: int | None = None
    replica: bool = False
    closest: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"item": self.item.to_json(), "ttl": self.ttl}
        if self.cas is not None:
            body["cas"] = self.cas
        if self.replica:
            body["replica"] = True
        if self.closest:
            body["closest"] = True
        return body


@dataclass(frozen=True, kw_only=True)
class Ok(Message):
    """The item is stored; to a ``store`` with ``closest``, with the ``nodes`` the receiver
    knows closest to the item's key (absent, and empty here, otherwise)."""

    TYPE = "ok"
    nodes: tuple[Contact, ...] = ()

    def body(self) -> dict[str, Any]:
        return _contacts_body(self.nodes) if self.nodes else {}


@dataclass(frozen=True, kw_only=True)
class FindNode(Message):
    """Which contacts do you know closest to ``target``? Answered by ``nodes``."""

    TYPE = "find_node"
    target: int

    def body(self) -> dict[str, Any]:
        return {"target": id_to_hex(self.target)}


@dataclass(frozen=True, kw_only=True)
class FindValue(Message):
    """The item under ``key``, please. Answered by ``value``, or ``nodes`` when not held."""

    TYPE = "find_value"
    key: int

    def body(self) -> dict[str, Any]:
        return {"key": id_to_hex(self.key)}


@dataclass(frozen=True, kw_only=True)
class Nodes(Message):
    """The closest contacts the sender knows to what was asked."""

    TYPE = "nodes"
    nodes: tuple[Contact, ...] = field(default=())

    def body(self) -> dict[str, Any]:
        return _contacts_body(self.nodes)


def _contacts_body(nodes: tuple[Contact, ...]) -> dict[str, Any]:
    """The wire form of a ``nodes`` reply's contacts (and an ``ok``'s)."""
    return {"nodes": [[id_to_hex(c.id), c.host, c.port] for c in nodes]}


@dataclass(frozen=True, kw_only=True)
class Value(Message):
    """The item that was asked for."""

    TYPE = "value"
    item: Item

    def body(self) -> dict[str, Any]:
        return {"item": self.item.to_json()}


@dataclass(frozen=True, kw_only=True)
class Error(Message):
    """The request was refused; ``code`` is an ``ErrorCode`` value."""

    TYPE = "error"
    code: int
    message: str

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message[:MAX_ERROR_TEXT]}


@dataclass(frozen=True, kw_only=True)
class Listen(Message):
    """Tell me of every newer version of the item under ``key`` you store, for ``lease``
    seconds (0: stop telling me); ``seq``, when given, is the newest version I have. Answered by
    ``listening``, then ``update`` and ``expired`` requests on this connection."""

    TYPE = "listen"
    key: int
    lease: float
    seq: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": id_to_hex(self.key), "lease": self.lease}
        return body if self.seq is None else {**body, "seq": self.seq}


@dataclass(frozen=True, kw_only=True)
class Listening(Message):
    """The listen is granted for ``lease`` seconds (0: cancelled); ``item`` is the newest
    version held, when there is one newer than the listener said it has."""

    TYPE = "listening"
    lease: float
    item: Item | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"lease": self.lease}
        return body if self.item is None else {**body, "item": self.item.to_json()}


@dataclass(frozen=True, kw_only=True)
class Update(Message):
    """A newer version of the item under ``key`` was stored here (to a listener). Answered by
    ``ok``."""

    TYPE = "update"
    key: int
    item: Item

    def body(self) -> dict[str, Any]:
        return {"key": id_to_hex(self.key), "item": self.item.to_json()}


@dataclass(frozen=True, kw_only=True)
class Expired(Message):
    """The item under ``key`` (version ``seq``) expired here (to a listener). Answered by
    ``ok``."""

    TYPE = "expired"
    key: int
    seq: int

    def body(self) -> dict[str, Any]:
        return {"key": id_to_hex(self.key), "seq": self.seq}


REQUEST_TYPES: tuple[type[Message], ...] = (
    Ping,
    Store,
    FindNode,
    FindValue,
    Listen,
    Update,
    Expired,
)
REPLY_TYPES: tuple[type[Message], ...] = (Pong, Ok, Nodes, Value, Error, Listening)
_BY_TYPE = {cls.TYPE: cls for cls in REQUEST_TYPES + REPLY_TYPES}
_REPLY_NAMES = frozenset(cls.TYPE for cls in REPLY_TYPES)


def encode(message: Message) -> bytes:
    """The wire bytes of ``message`` (without the netstring framing).

    The text is exactly what ``json.dumps(obj, separators=(",", ":"))`` writes for the wire
    object (the envelope, then the body in ``body()`` order), assembled from pieces without
    building the object: strings through ``json``'s own C escaper (ASCII, ``\\u`` escapes), numbers
    as ``json`` writes them. A type this module does not know is encoded through ``body()``.
    """
    body = _BODY_TEXT.get(type(message))
    network = message.network
    if body is None:  # a type of someone else's: the plain way
        obj = {"v": PROTOCOL_VERSION, "type": message.TYPE, "rid": message.rid}
        obj.update(sender=id_to_hex(message.sender), port=message.port)
        if network != DEFAULT_NETWORK:
            obj["network"] = network
        return _json(obj | message.body()).encode("ascii")
    text = _HEAD % (
        message.TYPE,
        _value(message.rid),
        id_to_hex(message.sender),
        _value(message.port),
        "" if network == DEFAULT_NETWORK else ',"network":' + _value(network),
        body(message),
    )
    return text.encode("ascii")


#: The envelope of our own types (their names are ASCII constants); the fields are JSON text
#: (the network, outside the public network, after the port).
_HEAD = f'{{"v":{PROTOCOL_VERSION},"type":"%s","rid":%s,"sender":"%s","port":%s%s%s}}'
#: Any JSON value, written exactly as ``json.dumps(value, separators=(",", ":"))`` writes it.
_json = json.JSONEncoder(separators=(",", ":")).encode
#: A string as JSON: ``json``'s C escaper, the one ``json.dumps`` uses (ASCII-only output).
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _value(value: object) -> str:
    """``value`` as JSON: strings and numbers directly (as ``json`` writes them: an int
    subclass as its number, a bool as ``true``), anything else through ``json``."""
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    if isinstance(value, float) and math.isfinite(value):
        return float.__repr__(value)
    return _json(value)


def _b64_text(name: str, data: bytes | None) -> str:
    return "" if data is None else f',"{name}":"{to_base64(data)}"'


@functools.lru_cache(maxsize=64)
def _item_text(item: Item) -> str:
    """``item.to_json()`` as JSON (cached: a put sends the same item to k peers, replication
    and read repair send it again)."""
    text = '{"value":"' + to_base64(item.value) + '"'
    if item.public_key is not None:
        text += f',"public_key":"{to_base64(item.public_key)}","seq":{_value(item.seq)}'
    if item.name is not None:
        text += ',"name":' + _value(item.name)
    if item.signature is not None:
        text += f',"signature":"{to_base64(item.signature)}"'
    return text + "}"


#: The JSON of each contact a ``nodes`` reply named, by id, with the host and port it was
#: written for (a node names the same few hundred contacts in every reply). Keyed by the id,
#: an int hashed in C, not by the ``Contact``, whose dataclass ``__hash__`` and ``__eq__`` are
#: Python calls: with them, looking a contact up cost more than writing it.
_CONTACT_TEXT: dict[int, tuple[str, int, str]] = {}
#: How many contacts ``_CONTACT_TEXT`` holds at most (the oldest go first).
MAX_CONTACT_TEXTS = 1 << 14


def _contact_text(contact: Contact) -> str:
    """One contact of a ``nodes`` reply as JSON."""
    ident, host, port = contact.id, contact.host, contact.port
    text = f'["{id_to_hex(ident)}",{_value(host)},{_value(port)}]'
    texts = _CONTACT_TEXT
    if len(texts) >= MAX_CONTACT_TEXTS:
        del texts[next(iter(texts))]
    texts[ident] = (host, port, text)
    return text


def _nodes_text(message: Any) -> str:
    texts, parts = _CONTACT_TEXT, []
    for contact in message.nodes:
        held = texts.get(contact.id)
        if held is None or held[0] != contact.host or held[1] != contact.port:
            parts.append(_contact_text(contact))
        else:
            parts.append(held[2])
    return ',"nodes":[' + ",".join(parts) + "]"


def _store_text(message: Any) -> str:
    text = f',"item":{_item_text(message.item)},"ttl":{_value(message.ttl)}'
    if message.cas is not None:
        text += f',"cas":{_value(message.cas)}'
    if message.replica:
        text += ',"replica":true'
    return text + ',"closest":true' if message.closest else text


def _listen_text(message: Any) -> str:
    text = f',"key":"{id_to_hex(message.key)}","lease":{_value(message.lease)}'
    return text if message.seq is None else f'{text},"seq":{_value(message.seq)}'


def _listening_text(message: Any) -> str:
    text = f',"lease":{_value(message.lease)}'
    return text if message.item is None else f'{text},"item":{_item_text(message.item)}'


def _error_text(message: Any) -> str:
    return f',"code":{_value(message.code)},"message":{_value(message.message[:MAX_ERROR_TEXT])}'


#: How each type's body is written, after the envelope (``Ok``'s is empty).
_BODY_TEXT: dict[type[Message], Callable[[Any], str]] = {
    Ping: lambda m: _b64_text("challenge", m.challenge),
    Pong: lambda m: _b64_text("proof", m.proof),
    Store: _store_text,
    Ok: lambda m: _nodes_text(m) if m.nodes else "",
    FindNode: lambda m: f',"target":"{id_to_hex(m.target)}"',
    FindValue: lambda m: f',"key":"{id_to_hex(m.key)}"',
    Nodes: _nodes_text,
    Value: lambda m: ',"item":' + _item_text(m.item),
    Error: _error_text,
    Listen: _listen_text,
    Listening: _listening_text,
    Update: lambda m: f',"key":"{id_to_hex(m.key)}","item":{_item_text(m.item)}',
    Expired: lambda m: f',"key":"{id_to_hex(m.key)}","seq":{_value(m.seq)}',
}


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


#: ``json.loads(text, parse_constant=_refuse_constant)``, built once rather than per message.
_decoder = json.JSONDecoder(parse_constant=_refuse_constant)
_parse = _decoder.decode
#: The decoder's C scanner, called directly on a text that is one object with no whitespace
#: around it (every message a node sends): ``decode`` around it is two regular-expression
#: matches and two Python calls per message. Anything else goes through ``_parse``.
#: (typeshed's stub names the scanner class as its argument's type; it takes the decoder.)
_scan = json.scanner.make_scanner(_decoder)  # type: ignore[arg-type]


def _parse_object(text: str) -> Any:
    """``_parse(text)``, the same value or the same error, in fewer steps for a text that is
    a bare JSON object."""
    if text[-1:] == "}" and text[:1] == "{":
        try:
            obj, end = _scan(text, 0)
        except (StopIteration, ValueError, RecursionError):
            pass  # _parse says what is wrong
        else:
            if end == len(text):
                return obj
    return _parse(text)


def decode(data: bytes) -> Message:
    """Parse one message; ``ProtocolError`` says what is wrong with anything else.

    A well-formed message of one of our types is read by ``_read``, which checks every rule
    in straight-line code; anything it does not accept, ``_checked`` reads again, field by
    field in the order docs/protocol.md gives, to say exactly what is wrong (and the rare
    valid message ``_read`` leaves to it, it reads too).
    """
    try:
        text = data.decode("utf-8")
        # json.loads refuses a byte order mark (the decoder alone would not): so do we.
        obj = json.loads(text) if text.startswith("\ufeff") else _parse_object(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(ErrorCode.MALFORMED, f"not a UTF-8 JSON text: {e}") from None
    if type(obj) is dict:
        try:
            message = _read(obj)
        except (LookupError, ValueError, TypeError, ProtocolError):
            message = None
        if message is not None and (_known_keys_only(obj) or not _too_deep(obj, data)):
            return message
    return _checked(obj, data)


def _known_keys_only(obj: dict[str, Any]) -> bool:
    """Whether ``obj``, which ``_read`` read, has only the keys its type knows, in it and in
    its item: then it nests three levels at most (``_read`` checked the type of every value),
    and ``_too_deep`` need not count its brackets (a pass over every byte of the message)."""
    item = obj.get("item")
    return obj.keys() <= _KNOWN_KEYS[obj["type"]] and (item is None or item.keys() <= _ITEM_KEYS)


def _read(obj: dict[str, Any]) -> Message | None:
    """The message ``obj`` holds, if it is well formed and every field is of the plain kind
    (None, or an exception, sends it to ``_checked``)."""
    rid, port, sender, kind = obj.get("rid"), obj.get("port"), obj.get("sender"), obj.get("type")
    if not (
        type(kind) is str
        and obj.get("v") == PROTOCOL_VERSION
        and type(obj["v"]) is int
        and type(rid) is int
        and (0 if kind in _REPLY_NAMES else 1) <= rid <= MAX_REQUEST_ID
        and type(port) is int
        and 0 <= port <= 65535
        and type(sender) is str
    ):
        return None
    body = _BODY_READERS.get(kind)
    network = obj.get("network", DEFAULT_NETWORK)
    if body is None or (network is not DEFAULT_NETWORK and not _is_network(network)):
        return None
    message = _new(_BY_TYPE[kind])
    # The instance's fields, set as the dataclass's own __init__ would (every field is in
    # ``body``'s dict and the envelope's): a third of the cost of that __init__, which sets a
    # frozen instance's fields one ``object.__setattr__`` call at a time.
    message.__dict__.update(
        body(obj), rid=rid, sender=id_from_hex(sender), port=port, network=network
    )
    return message


_new = object.__new__


def _is_network(name: object) -> bool:
    return type(name) is str and _NETWORK_NAME.fullmatch(name) is not None


def _b64(obj: dict[str, Any], name: str, low: int, high: int) -> bytes | None:
    """The optional base64 field ``name`` (absent: None); ValueError or TypeError if it is
    not ``low`` to ``high`` bytes of base64."""
    text = obj.get(name)
    if text is None and name not in obj:
        return None
    if type(text) is not str:
        raise TypeError(name)
    data = from_base64(text)
    if not low <= len(data) <= high:
        raise ValueError(name)
    return data


def _item(obj: dict[str, Any], name: str = "item") -> Item:
    item = obj[name]
    if type(item) is not dict:
        raise TypeError(name)
    return Item.from_json(item)


def _ttl(obj: dict[str, Any]) -> float:
    ttl = obj["ttl"]
    if type(ttl) not in (int, float) or not 0 < ttl <= MAX_TTL:
        raise ValueError("ttl")
    return float(ttl)


def _lease(obj: dict[str, Any]) -> float:
    lease = obj["lease"]
    if type(lease) not in (int, float) or not 0 <= lease <= MAX_LEASE:
        raise ValueError("lease")
    return float(lease)


def _seq(obj: dict[str, Any], name: str = "seq") -> int:
    seq = obj[name]
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        raise ValueError(name)
    return seq


def _cas(obj: dict[str, Any]) -> int | None:
    if "cas" not in obj:
        return None
    cas = obj["cas"]
    if type(cas) is not int or not 0 <= cas <= MAX_SEQ:
        raise ValueError("cas")
    return cas


def _flag(obj: dict[str, Any], name: str) -> bool:
    """The optional boolean field ``name`` (absent: false)."""
    flag = obj.get(name, False)
    if type(flag) is not bool:
        raise ValueError(name)
    return flag


def _nodes(obj: dict[str, Any]) -> tuple[Contact, ...]:
    raw = obj["nodes"]
    if type(raw) is not list or len(raw) > MAX_CONTACTS:
        raise ValueError("nodes")
    # Each entry spread into the cached reader, in C: an entry that is not three values fails
    # in the call (TypeError), one holding a list or an object in the cache's hashing
    # (TypeError), and the rest in the reader's own checks.
    return tuple(starmap(_wire_contact, raw))


@functools.lru_cache(maxsize=1 << 14, typed=True)
def _wire_contact(ident: str, host: str, port: int) -> Contact:
    """The contact ``[ident, host, port]`` of a ``nodes`` reply; ValueError if it is not one.
    Cached, by value and type (a port ``true`` is not the port 1): peers name the same
    contacts in every reply, and a contact found in the cache was checked when it was put
    there."""
    if type(ident) is not str or type(host) is not str or type(port) is not int:
        raise ValueError("contact")
    if not 1 <= port <= 65535:
        raise ValueError("port")
    return Contact(id_from_hex(ident), _ip(host), port)


def _error(obj: dict[str, Any]) -> dict[str, Any]:
    code, message = obj["code"], obj["message"]
    if type(code) is not int or type(message) is not str:
        raise TypeError("error")
    return {"code": code, "message": message[:MAX_ERROR_TEXT]}


#: How ``_read`` reads each type's body: keyword arguments for its class.
_BODY_READERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ping": lambda o: {"challenge": _b64(o, "challenge", 16, 64)},
    "pong": lambda o: {"proof": _b64(o, "proof", PROOF_BYTES, PROOF_BYTES)},
    "ok": lambda o: {"nodes": _nodes(o) if "nodes" in o else ()},
    "store": lambda o: {
        "ttl": _ttl(o),
        "cas": _cas(o),
        "replica": _flag(o, "replica"),
        "closest": _flag(o, "closest"),
        "item": _item(o),
    },
    "find_node": lambda o: {"target": id_from_hex(o["target"])},
    "find_value": lambda o: {"key": id_from_hex(o["key"])},
    "nodes": lambda o: {"nodes": _nodes(o)},
    "value": lambda o: {"item": _item(o)},
    "error": _error,
    "listen": lambda o: {
        "key": id_from_hex(o["key"]),
        "lease": _lease(o),
        "seq": _seq(o) if "seq" in o else None,
    },
    "listening": lambda o: {"lease": _lease(o), "item": _item(o) if "item" in o else None},
    "update": lambda o: {"key": id_from_hex(o["key"]), "item": _item(o)},
    "expired": lambda o: {"key": id_from_hex(o["key"]), "seq": _seq(o)},
}


#: The keys each type's messages may have, and an item (``_known_keys_only``): the wire names
#: are the dataclasses' field names, with the version and the type.
_KNOWN_KEYS = {
    cls.TYPE: frozenset({"v", "type", *(f.name for f in fields(cls))})
    for cls in REQUEST_TYPES + REPLY_TYPES
}
_ITEM_KEYS = frozenset(f.name for f in fields(Item))


def _checked(obj: object, data: bytes) -> Message:
    """Read ``obj`` (parsed from ``data``) field by field, in the order docs/protocol.md
    gives, raising the ``ProtocolError`` for the first rule it breaks."""
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "a message is a JSON object")
    if _too_deep(obj, data):
        raise ProtocolError(ErrorCode.MALFORMED, f"nested deeper than {MAX_DEPTH} levels")
    rid = obj.get("rid")
    readable = isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= MAX_REQUEST_ID
    fields = _Fields(obj, rid if readable else None)
    # A message whose type names a reply is a reply, whatever else is wrong with it (even its
    # version): the shell must not answer it with an error reply (two nodes could answer each
    # other's errors for ever, and the peer could take it for the answer to a request of its
    # own), but fail our request that awaits it, if any.
    kind = obj.get("type")
    fields.in_reply = isinstance(kind, str) and kind in _REPLY_NAMES
    if fields.get("v", int) != PROTOCOL_VERSION:
        fields.fail(ErrorCode.BAD_VERSION, f"protocol version {obj['v']!r:.40} is not spoken here")
    kind = fields.get("type", str)
    cls = _BY_TYPE.get(kind)
    if cls is None:
        fields.fail(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    # rid 0 belongs to error replies about messages whose rid could not be read: a request
    # with rid 0 could not tell its answer from one of those, so it is refused.
    low = 0 if fields.in_reply else 1
    rid, sender = fields.int_in("rid", low, MAX_REQUEST_ID), fields.id("sender")
    port = fields.int_in("port", 0, 65535)
    network = fields.network()
    body = _BODY_PARSERS[kind](fields)
    return cls(rid=rid, sender=sender, port=port, network=network, **body)


def _too_deep(obj: dict[str, Any], data: bytes) -> bool:
    """Whether ``obj`` (parsed from ``data``) nests objects and arrays deeper than MAX_DEPTH.

    Most messages have too few brackets in all to go that deep, and are not walked."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    level: list[Any] = [obj]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for value in level
            for child in (value.values() if isinstance(value, dict) else value)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> str:
    """``host`` as a canonical IP address (``ValueError`` if it is none); peers repeat the same
    few addresses in every reply, so the parse is cached."""
    return str(ipaddress.ip_address(host))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: JSON has one number type: an int field takes no bool (nor float), a float field takes ints.
_TYPE_CHECKS: dict[type, Callable[[object], bool]] = {
    int: _is_int,
    float: lambda v: _is_int(v) or isinstance(v, float),
}


#: What each Python type a field is read as is called in JSON, for error messages.
_JSON_KINDS: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "an array",
    dict: "an object",
}


class _Fields:
    """Typed access to a decoded JSON object; every failure is a ``ProtocolError``."""

    def __init__(self, obj: dict[str, Any], rid: int | None) -> None:
        self.obj = obj
        self.rid = rid
        self.in_reply = False

    def fail(self, code: ErrorCode, message: str) -> NoReturn:
        raise ProtocolError(code, message, self.rid, in_reply=self.in_reply)

    def get(self, name: str, kind: type) -> Any:
        if name not in self.obj:
            self.fail(ErrorCode.MISSING_FIELD, f"field {name!r} is missing")
        value = self.obj[name]
        check = _TYPE_CHECKS.get(kind)
        if not (check(value) if check else isinstance(value, kind)):
            wanted = _JSON_KINDS.get(kind, kind.__name__)
            self.fail(ErrorCode.BAD_FIELD, f"field {name!r} must be {wanted}, not {value!r:.40}")
        return value

    def int_in(self, name: str, low: int, high: int) -> int:
        value: int = self.get(name, int)
        if not low <= value <= high:
            self.fail(ErrorCode.BAD_FIELD, f"field {name!r} must be from {low} to {high}")
        return value

    def id(self, name: str) -> int:
        try:
            return id_from_hex(str(self.get(name, str)))
        except ValueError as e:
            self.fail(ErrorCode.BAD_FIELD, f"field {name!r}: {e}")

    def network(self) -> str:
        """The optional ``network`` name; the public network's when absent."""
        if "network" not in self.obj:
            return DEFAULT_NETWORK
        name: str = self.get("network", str)
        if not _NETWORK_NAME.fullmatch(name):
            self.fail(ErrorCode.BAD_FIELD, f"field 'network' is not a network name: {name!r:.80}")
        return name

    def lease(self) -> float:
        """A lease: a number of seconds from 0 to MAX_LEASE."""
        lease = self.get("lease", float)
        if not 0 <= lease <= MAX_LEASE:
            self.fail(ErrorCode.BAD_FIELD, f"field 'lease' must be from 0 to {MAX_LEASE:g}")
        return float(lease)

    def b64(self, name: str, low: int, high: int) -> bytes | None:
        """The optional base64 field ``name``, of ``low`` to ``high`` bytes; None when absent."""
        if name not in self.obj:
            return None
        try:
            data = from_base64(self.get(name, str))
        except ValueError:
            self.fail(ErrorCode.BAD_FIELD, f"field {name!r} is not canonical base64")
        if not low <= len(data) <= high:
            self.fail(ErrorCode.BAD_FIELD, f"field {name!r} must be {low} to {high} bytes")
        return data

    def item(self) -> Item:
        try:
            return Item.from_json(self.get("item", dict))
        except ProtocolError as e:
            self.fail(e.code, f"field 'item': {e.message}")

    def contacts(self) -> tuple[Contact, ...]:
        raw: list[Any] = self.get("nodes", list)
        if len(raw) > MAX_CONTACTS:
            self.fail(ErrorCode.BAD_FIELD, f"at most {MAX_CONTACTS} contacts in a reply")
        return tuple(self._contact(entry) for entry in raw)

    def _contact(self, entry: Any) -> Contact:
        try:
            ident, host, port = entry
            if not (isinstance(host, str) and _is_int(port) and 1 <= port <= 65535):
                raise ValueError(f"bad host or port {host!r:.40}, {port!r:.10}")
            return Contact(id_from_hex(ident), _ip(host), port)
        except (TypeError, ValueError) as e:
            self.fail(ErrorCode.BAD_FIELD, f"a contact is [id, ip, port]: {e}")


def _store_body(f: _Fields) -> dict[str, Any]:
    # Compare before converting: float() of a huge JSON integer raises OverflowError.
    ttl = f.get("ttl", float)
    if not 0 < ttl <= MAX_TTL:
        f.fail(ErrorCode.BAD_FIELD, f"field 'ttl' must be above 0 and at most {MAX_TTL:g}")
    cas = f.int_in("cas", 0, MAX_SEQ) if "cas" in f.obj else None
    replica = f.get("replica", bool) if "replica" in f.obj else False
    closest = f.get("closest", bool) if "closest" in f.obj else False
    return {"item": f.item(), "ttl": float(ttl), "cas": cas, "replica": replica, "closest": closest}


def _listen_body(f: _Fields) -> dict[str, Any]:
    key, lease = f.id("key"), f.lease()
    return {
        "key": key,
        "lease": lease,
        "seq": f.int_in("seq", 0, MAX_SEQ) if "seq" in f.obj else None,
    }


def _listening_body(f: _Fields) -> dict[str, Any]:
    return {"lease": f.lease(), "item": f.item() if "item" in f.obj else None}


def _error_body(f: _Fields) -> dict[str, Any]:
    return {"code": f.get("code", int), "message": f.get("message", str)[:MAX_ERROR_TEXT]}


#: How to read each type's body (a ping, pong or ok may have none).
_BODY_PARSERS: dict[str, Callable[[_Fields], dict[str, Any]]] = {
    "ping": lambda f: {"challenge": f.b64("challenge", 16, 64)},
    "pong": lambda f: {"proof": f.b64("proof", PROOF_BYTES, PROOF_BYTES)},
    "ok": lambda f: {"nodes": f.contacts() if "nodes" in f.obj else ()},
    "store": _store_body,
    "find_node": lambda f: {"target": f.id("target")},
    "find_value": lambda f: {"key": f.id("key")},
    "nodes": lambda f: {"nodes": f.contacts()},
    "value": lambda f: {"item": f.item()},
    "error": _error_body,
    "listen": _listen_body,
    "listening": _listening_body,
    "update": lambda f: {"key": f.id("key"), "item": f.item()},
    "expired": lambda f: {"key": f.id("key"), "seq": f.int_in("seq", 0, MAX_SEQ)},
}
