"""Bad input on the wire: every case gets an error reply or a closed connection, a log line
saying why, and the node keeps serving other peers with nothing stored lost."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import id_to_hex
from txdht.core.items import Identity, blob
from txdht.core.messages import Error, Ping, Pong, encode
from txdht.core.storage import MemoryStorage
from txdht.testing import MemoryNetwork, RawConnection

PUBLISHER = Identity.from_private_bytes(b"q" * 32)
SENDER = id_to_hex(12345)


def netstring(data: bytes) -> bytes:
    """``data`` framed as one netstring."""
    return b"%d:%s," % (len(data), data)


def message(**fields: Any) -> bytes:
    """A framed JSON message: a valid ping envelope with ``fields`` changed (None removes)."""
    obj: dict[str, Any] = {"v": 1, "type": "ping", "rid": 7, "sender": SENDER, "port": 0}
    obj.update(fields)
    return netstring(json.dumps({k: v for k, v in obj.items() if v is not None}).encode())


def store(item: dict[str, Any], ttl: float = 60.0) -> bytes:
    """A framed store request for the item in wire form ``item``."""
    return message(type="store", item=item, ttl=ttl)


class Setup:
    """A 6-node network in which ``node`` (the target) holds a signed item at seq 2."""

    def __init__(self, max_message: int = 1024 * 1024) -> None:
        self.net = MemoryNetwork()
        self.net.create(5)
        self.node = self.net.add_node(max_message=max_message, max_value=1000)
        self.net.run(self.node.join([("127.0.0.1", self.net.nodes[0].port)]))
        self.other = self.net.nodes[1]
        self.item = PUBLISHER.sign("kept", b"precious", 2)
        self.node.engine.store(self.item, 3600.0, self.net.clock.seconds())

    def still_serving(self) -> None:
        """The node answers a ping from another peer and still holds its item."""
        reply = self.net.run(self.other.call(("127.0.0.1", self.node.port), Ping))
        assert isinstance(reply, Pong)
        assert reply.sender == self.node.engine.id
        assert self.node.engine.get(self.item.key, self.net.clock.seconds()) == self.item

    def send_raw(self, data: bytes) -> tuple[RawConnection, list[dict[str, Any]]]:
        """Send ``data`` on a fresh raw connection; return it and the log events."""
        with capturedLogs() as events:
            raw = self.net.open_raw(self.node)
            raw.send(data)
            self.net.flush()
        return raw, list(events)


def logged(events: list[dict[str, Any]], text: str) -> bool:
    """Whether any event's formatted text contains ``text``."""
    return any(text in formatEvent(e) for e in events)


FRAMING_CASES = [
    pytest.param(b"abc:xyz,", id="length-not-digits"),
    pytest.param(b'07:{"a":1},', id="length-leading-zero"),
    pytest.param(b"3:abcX", id="missing-comma"),
    pytest.param(b":abc,", id="missing-length"),
    pytest.param(b"2000000:", id="over-the-1MiB-limit"),
    pytest.param(b"99999999999999999999:", id="absurd-length"),
]


@pytest.mark.parametrize("data", FRAMING_CASES)
def test_framing_errors_close_the_connection(data: bytes) -> None:
    """Broken framing closes that connection, is logged, and the node keeps serving."""
    setup = Setup()
    raw, events = setup.send_raw(data)
    assert raw.lost
    assert raw.received == b""
    assert logged(events, "framing lost")
    setup.still_serving()


def padded_ping(size: int) -> bytes:
    """A framed ping whose payload is exactly ``size`` bytes long."""
    base = len(message(padding="")) - len(b"%d:," % (len(message(padding="")) - 4))
    data = message(padding="x" * (size - base))
    assert data.startswith(b"%d:" % size)
    return data


def test_configured_size_limit_applies() -> None:
    """A message of exactly max_message bytes is served; one byte more closes the connection."""
    setup = Setup(max_message=400)  # room for a pong with its handshake proof (~320 bytes)
    fits, _ = setup.send_raw(padded_ping(400))
    assert [r.TYPE for r in fits.messages()] == ["pong"]
    raw, events = setup.send_raw(padded_ping(401))
    assert raw.lost
    assert raw.received == b""
    assert logged(events, "longer than 400 bytes")
    setup.still_serving()


ERROR_CASES = [
    pytest.param(netstring(b"\xff\xfe"), ErrorCode.MALFORMED, 0, id="not-utf8"),
    pytest.param(netstring(b"{not json"), ErrorCode.MALFORMED, 0, id="not-json"),
    pytest.param(netstring(b"[" * 50000 + b"]" * 50000), ErrorCode.MALFORMED, 0, id="nesting-bomb"),
    pytest.param(netstring(b'"a string"'), ErrorCode.MALFORMED, 0, id="not-an-object"),
    pytest.param(message(v=2), ErrorCode.BAD_VERSION, 7, id="wrong-version"),
    pytest.param(message(type="gossip"), ErrorCode.UNKNOWN_TYPE, 7, id="unknown-type"),
    pytest.param(message(type=None), ErrorCode.MISSING_FIELD, 7, id="missing-type"),
    pytest.param(message(sender=None), ErrorCode.MISSING_FIELD, 7, id="missing-sender"),
    pytest.param(message(rid="7"), ErrorCode.BAD_FIELD, 0, id="rid-as-string"),
    pytest.param(message(port=True), ErrorCode.BAD_FIELD, 7, id="port-as-bool"),
    pytest.param(message(port=70000), ErrorCode.BAD_FIELD, 7, id="port-out-of-range"),
    pytest.param(message(sender="xyz"), ErrorCode.BAD_FIELD, 7, id="sender-not-an-id"),
    pytest.param(
        message(type="find_node", target=5), ErrorCode.BAD_FIELD, 7, id="target-wrong-type"
    ),
    pytest.param(store({"value": "!!!"}), ErrorCode.BAD_FIELD, 7, id="item-bad-base64"),
    pytest.param(store({"value": "eA=="}, ttl=-1), ErrorCode.BAD_FIELD, 7, id="negative-ttl"),
    pytest.param(store(blob(b"x" * 1001).to_json()), ErrorCode.VALUE_TOO_LARGE, 7, id="too-large"),
    pytest.param(
        store(replace(PUBLISHER.sign("kept", b"forged", 3), value=b"tampered").to_json()),
        ErrorCode.BAD_SIGNATURE,
        7,
        id="bad-signature",
    ),
    pytest.param(
        store(dict(PUBLISHER.sign("kept", b"x", 3).to_json(), name="\ud800")),
        ErrorCode.BAD_FIELD,
        7,
        id="name-a-lone-surrogate",
    ),
    pytest.param(
        message(
            type="store",
            item=dict(PUBLISHER.sign("kept", b"x", 3).to_json(), name="a\udfff"),
            ttl=60.0,
            closest=True,
        ),
        ErrorCode.BAD_FIELD,
        7,
        id="name-a-lone-surrogate-asking-for-contacts",
    ),
    pytest.param(
        store(PUBLISHER.sign("kept", b"rollback", 1).to_json()),
        ErrorCode.STALE_SEQUENCE,
        7,
        id="stale-sequence",
    ),
    pytest.param(
        store(PUBLISHER.sign("kept", b"same seq, other data", 2).to_json()),
        ErrorCode.STALE_SEQUENCE,
        7,
        id="equal-sequence-other-value",
    ),
]


@pytest.mark.parametrize(("data", "code", "rid"), ERROR_CASES)
def test_bad_messages_get_an_error_reply(data: bytes, code: ErrorCode, rid: int) -> None:
    """A well-framed bad message gets an error reply with its code; the connection stays usable."""
    setup = Setup()
    raw, events = setup.send_raw(data)
    replies = raw.messages()
    assert len(replies) == 1
    error = replies[0]
    assert isinstance(error, Error)
    assert (error.code, error.rid, error.sender) == (code, rid, setup.node.engine.id)
    assert error.message
    assert not raw.lost
    assert logged(events, "bad message") or logged(events, "refused")
    raw.send(message(rid=8))
    setup.net.flush()
    assert isinstance(raw.messages()[-1], Pong)
    setup.still_serving()
    assert setup.node.engine.get(setup.item.key, 0.0) == setup.item


def test_unsolicited_reply_is_ignored_and_logged() -> None:
    """A well-formed reply to a request nobody sent draws no answer, only a log line."""
    setup = Setup()
    raw, events = setup.send_raw(message(type="pong", rid=99))
    assert raw.received == b""
    assert not raw.lost
    assert logged(events, "which nobody awaits")
    setup.still_serving()


def test_late_reply_to_a_cancelled_request_is_dropped_quietly() -> None:
    """The reply to a request we cancelled comes late and is dropped without a log line; a
    second reply under that id is unsolicited, and logged."""
    setup = Setup()
    net, node, peer = setup.net, setup.node, setup.other
    outcome: list[object] = []
    with capturedLogs() as events:
        d = node.call(("127.0.0.1", peer.port), Ping)
        d.addErrback(outcome.append)
        link = node.streams.link_to(("127.0.0.1", peer.port))
        assert link is not None
        connection = link.handle
        (request_id,) = [r.rid for r in node.engine.pending()]
        d.cancel()
        net.flush()  # the peer's pong arrives, for nobody
        assert not logged(list(events), "which nobody awaits")
        pong = node.engine.message(Pong, request_id)
        connection.dataReceived(netstring(encode(replace(pong, sender=peer.engine.id))))
    assert logged(list(events), "which nobody awaits")
    assert len(outcome) == 1
    setup.still_serving()


def test_broken_reply_fails_the_waiting_request() -> None:
    """A malformed reply fails the request it answers, instead of drawing an error reply."""
    setup = Setup()
    net, node, peer = setup.net, setup.node, setup.other
    outcome: list[object] = []
    with capturedLogs() as events:
        node.call(("127.0.0.1", peer.port), Ping).addBoth(outcome.append)
        link = node.streams.link_to(("127.0.0.1", peer.port))
        assert link is not None
        connection = link.handle
        (request_id,) = [r.rid for r in node.engine.pending()]
        # The broken pong arrives before the peer's real one, which then has nobody to go to.
        connection.dataReceived(message(type="pong", rid=request_id, port="bad"))
        net.flush()
    assert len(outcome) == 1
    assert isinstance(outcome[0], Failure)
    assert outcome[0].check(ProtocolError)
    assert logged(list(events), "bad message")
    assert logged(list(events), "which nobody awaits")
    setup.still_serving()


def test_broken_unsolicited_reply_is_only_logged() -> None:
    """A malformed reply to no request of ours is logged and draws no error reply."""
    setup = Setup()
    raw, events = setup.send_raw(message(type="pong", rid=4242, port="bad"))
    assert raw.received == b""
    assert logged(events, "bad message")
    setup.still_serving()


def test_garbage_then_valid_request_on_one_connection() -> None:
    """Bad messages on one connection are each answered, then a good one is served."""
    setup = Setup()
    raw, _ = setup.send_raw(b"".join(netstring(b"junk %d" % i) for i in range(9)) + message())
    replies = raw.messages()
    assert [type(r) for r in replies] == [Error] * 9 + [Pong]
    assert not raw.lost
    setup.still_serving()


def test_a_peer_sending_too_much_garbage_is_disconnected() -> None:
    """After max_bad_messages malformed messages, the connection is closed and logged."""
    setup = Setup()
    raw, events = setup.send_raw(b"".join(netstring(b"junk %d" % i) for i in range(12)))
    assert [type(r) for r in raw.messages()] == [Error] * 10
    assert raw.lost
    assert logged(events, "10 malformed messages")
    setup.still_serving()


def test_what_follows_the_last_tolerated_garbage_in_one_segment_is_not_served() -> None:
    """Once the connection is to be closed for garbage, the rest of the same segment (here a
    valid store) is not served, and the closing is logged once."""
    setup = Setup()
    junk = b"".join(netstring(b"junk %d" % i) for i in range(11))
    item = PUBLISHER.sign("sneaked in", b"after the garbage", 1)
    raw, events = setup.send_raw(junk + store(item.to_json()))
    assert [type(r) for r in raw.messages()] == [Error] * 10
    assert raw.lost
    assert sum(logged([e], "malformed messages") for e in events) == 1
    assert setup.node.engine.get(item.key, setup.net.clock.seconds()) is None
    setup.still_serving()


def test_data_after_a_framing_error_is_not_processed() -> None:
    """After framing is lost, what follows on that connection is never treated as a request."""
    setup = Setup()
    raw, events = setup.send_raw(b"x:" + message())
    assert raw.received == b""
    assert raw.lost
    assert sum(logged([e], "framing lost") for e in events) == 1


def test_store_of_valid_item_over_raw_connection_is_kept() -> None:
    """The raw helpers speak the protocol: a valid store is acknowledged and kept."""
    setup = Setup()
    item = PUBLISHER.sign("fresh", b"new value", 1)
    raw, _ = setup.send_raw(store(item.to_json()))
    assert [r.TYPE for r in raw.messages()] == ["ok"]
    assert setup.node.engine.get(item.key, 0.0) == item


def test_raw_connection_write_sequence_and_addresses() -> None:
    """The in-memory transport supports writeSequence and reports both addresses."""
    setup = Setup()
    raw = setup.net.open_raw(setup.node)
    assert raw.transport is not None
    raw.transport.writeSequence([message()[:5], message()[5:]])
    setup.net.flush()
    assert [r.TYPE for r in raw.messages()] == ["pong"]
    assert raw.transport.getHost().port != raw.transport.getPeer().port  # type: ignore[attr-defined]
    raw.transport.loseConnection()
    raw.transport.loseConnection()
    raw.transport.write(b"ignored after close")
    setup.net.flush()
    assert raw.lost


def test_encode_used_by_the_node_is_what_raw_tests_send() -> None:
    """The hand-built ping matches the codec's own encoding of the same message."""
    ping = Ping(rid=7, sender=12345, port=0)
    assert json.loads(encode(ping)) == json.loads(message()[message().index(b":") + 1 : -1])


def test_both_ends_closing_at_once() -> None:
    """When both ends of a connection close together, each side sees the loss once."""
    setup = Setup()
    raw = setup.net.open_raw(setup.node)
    link = next(k for k in setup.node.streams.links if k.address is None)
    assert raw.transport is not None
    raw.transport.loseConnection()
    link.handle.transport.loseConnection()
    setup.net.flush()
    assert raw.lost
    assert link not in setup.node.streams.links
    setup.still_serving()


class FailingStorage(MemoryStorage):
    """A ``MemoryStorage`` whose reads fail while ``failing`` is set (a disk gone bad)."""

    failing = False

    def get(self, key: int) -> Any:
        if self.failing:
            raise OSError(5, "Input/output error")
        return super().get(key)


def test_a_request_the_node_fails_on_gets_an_internal_error_and_the_rest_are_served(
    fail_on_logged_errors: list[dict[str, Any]],
) -> None:
    """A request whose handling raises (here the storage; a bug would do the same) is answered
    with INTERNAL and logged with its traceback; the requests after it on the same connection,
    in the same segment, are served, and the node goes on."""
    setup = Setup()
    storage = FailingStorage()
    node = setup.net.add_node(storage=storage)
    setup.net.run(node.join([("127.0.0.1", setup.net.nodes[0].port)]))
    storage.failing = True
    with capturedLogs() as events:
        raw = setup.net.open_raw(node)
        raw.send(message(rid=1) + store(blob(b"v").to_json()) + message(rid=3))
        setup.net.flush()
    replies = raw.messages()
    assert [type(r).__name__ for r in replies] == ["Pong", "Error", "Pong"]
    assert [r.rid for r in replies] == [1, 7, 3]
    error = replies[1]
    assert isinstance(error, Error)
    assert (error.code, error.message) == (
        ErrorCode.INTERNAL,
        "the node failed while handling this request",
    )
    assert not raw.lost
    (failed,) = [e for e in events if "failed while handling a store request" in formatEvent(e)]
    assert "Input/output error" in formatEvent(failed)
    assert isinstance(failed.get("log_failure"), Failure)
    assert fail_on_logged_errors == [failed]  # the one error expected, and no other
    fail_on_logged_errors.clear()
    assert node.metrics.rpcs[("received", "store", "error")] == 1
    storage.failing = False
    key = setup.net.run(node.put_blob(b"after"))
    assert setup.net.run(setup.other.get(key)) == b"after"


def test_a_request_in_the_nodes_own_name_closes_its_connection() -> None:
    """A request whose sender is the node's own id gets no reply: its connection is closed and
    logged, and the node serves other peers."""
    setup = Setup()
    raw, events = setup.send_raw(message(sender=id_to_hex(setup.node.engine.id)))
    assert raw.lost
    assert raw.received == b""
    assert logged(events, "its requests come from this node itself")
    setup.still_serving()


def test_a_node_sent_to_its_own_address_keeps_no_connection_to_itself() -> None:
    """A node told to ask an address that is its own (a peer named it under another id)
    connects to itself once: the request fails at once, and both ends of that connection are
    closed, not kept for good."""
    setup = Setup()
    node = setup.node
    before = len(node.streams.links)
    started = setup.net.clock.seconds()
    with capturedLogs() as events, pytest.raises(ConnectionDone):  # closed by its other end
        setup.net.run(node.call(("127.0.0.1", node.port), Ping))
    assert setup.net.clock.seconds() == started  # at once, not at the request's timeout
    assert logged(list(events), "its requests come from this node itself")
    assert len(node.streams.links) == before
    assert node.streams.link_to(("127.0.0.1", node.port)) is None
    setup.still_serving()


def test_routine_refusals_are_info_and_forgeries_warnings() -> None:
    """A stale copy (a holder that missed an update) is refused at info level; a forged
    signature is a warning."""
    setup = Setup()
    stale = store(PUBLISHER.sign("kept", b"rollback", 1).to_json())
    forged = store(replace(PUBLISHER.sign("kept", b"forged", 3), value=b"tampered").to_json())
    for data, level in ((stale, "info"), (forged, "warn")):
        _, events = setup.send_raw(data)
        (refusal,) = [e for e in events if "refused a store request" in formatEvent(e)]
        assert refusal["log_level"].name == level
    setup.still_serving()


def test_a_refusal_names_the_peer_not_only_its_host() -> None:
    """Every peer of a machine shares its address (loopback, a NAT): a refusal names a node by
    its id's first digits and the port it listens on, and a client (port 0) by the port of
    its connection."""
    setup = Setup()
    stale = PUBLISHER.sign("kept", b"rollback", 1).to_json()
    node_id = id_to_hex(67890)
    for data, name in (
        (store(stale), r"127\.0\.0\.1:\d+"),  # a client: its connection's port
        (message(type="store", item=stale, ttl=60.0, sender=node_id, port=4321), None),
    ):
        _, events = setup.send_raw(data)
        (refusal,) = [formatEvent(e) for e in events if "refused a store request" in formatEvent(e)]
        if name is None:
            assert f"from {node_id[:12]}@127.0.0.1:4321:" in refusal
        else:
            assert re.search(f"from {name}: ", refusal)
    setup.still_serving()


def test_an_update_for_a_listen_just_cancelled_is_refused_at_info() -> None:
    """A holder's update crossing the listener's cancel is the protocol at work: refused with
    NOT_LISTENING at info level, not as a warning."""
    setup = Setup()
    update = message(type="update", key=id_to_hex(99), item=PUBLISHER.sign("n", b"v", 1).to_json())
    _, events = setup.send_raw(update)
    (refusal,) = [e for e in events if "refused a update request" in formatEvent(e)]
    assert "does not listen" in formatEvent(refusal)
    assert refusal["log_level"].name == "info"
    setup.still_serving()
