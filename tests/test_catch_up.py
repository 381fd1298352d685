"""A holder that missed an update catches up when its replica is refused as stale.

Engines joined by hand (``tests.test_operations.Wire``): ``a`` holds version 1 of a name,
``b`` and ``c`` hold version 2. Without the catch-up, ``a`` replicated version 1 every interval,
refused each time by both, and kept serving it until it expired.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.test_operations import Wire, contact, engine
from txdht.core import operations as ops
from txdht.core.commands import Log
from txdht.core.engine import Engine
from txdht.core.items import Identity, Item
from txdht.core.messages import FindValue, Message, Nodes, Ping, Store, Value

OWNER = Identity.from_private_bytes(bytes(range(32)))
V1, V2, V3 = (OWNER.sign("name", b"version %d" % n, n) for n in (1, 2, 3))


def holders(count: int = 2, **options: Any) -> tuple[Engine, list[Engine], Wire]:
    """``a`` holding V1 until t=600, and ``count`` peers holding V2, that know each other."""
    a = engine(1, **options)
    peers = [engine(2 + n) for n in range(count)]
    a.store(V1, 600.0, 0.0)
    for peer in peers:
        peer.store(V2, 3600.0, 0.0)
        a.routing.seen(contact(peer), 0.0)
        peer.routing.seen(contact(a), 0.0)  # (a newcomer would be handed V2 at once)
    wire = Wire(a, *peers)
    wire.now = 100.0
    return a, peers, wire


def tap(made: Engine, answer: Any = None) -> list[Message]:
    """Every request ``made`` receives from now on; ``answer(message)`` replaces its reply to
    a FIND_VALUE (None: its own)."""
    received: list[Message] = []

    def request_received(message: Message, host: str, port: int, now: float) -> Any:
        received.append(message)
        if answer is not None and isinstance(message, FindValue):
            return answer(message), []
        return Engine.request_received(made, message, host, port, now)

    made.request_received = request_received  # type: ignore[method-assign,assignment]
    return received


def held(made: Engine) -> tuple[Item | None, float | None]:
    """The copy ``made`` holds of the name, and when it expires."""
    record = made.storage.get(V1.key)
    return (record.item, record.expires_at) if record else (None, None)


def logs(wire: Wire) -> list[str]:
    return [c.text.format(**c.fields) for c in wire.kept if isinstance(c, Log)]


def replicate(a: Engine, wire: Wire, item: Item = V1) -> ops.Replicate:
    op = ops.Replicate([(item, 500.0)], fresh=3600.0)
    wire.start(a, op)
    return op


def test_a_replica_refused_as_stale_is_replaced_by_the_newer_version() -> None:
    """The refusers are asked for the key, the newest valid answer replaces ``a``'s copy for
    the time the old one had left, and the next round replicates it with no refusal."""
    a, (b, c), wire = holders()
    replicate(a, wire)
    assert held(a) == (V2, 600.0)  # the old copy's lifetime, not the refusers'
    assert any(line.startswith("caught up on") and "seq 2" in line for line in logs(wire))
    received = tap(b) + tap(c)
    wire.kept.clear()
    assert [item for item, _ in a.replication_jobs(wire.now, fresh=0.0)] == [V2]
    replicate(a, wire, V2)
    assert not [line for line in logs(wire) if "did not store" in line]
    assert all(isinstance(m, Store) and m.item == V2 for m in received)


def test_without_the_catch_up_the_old_copy_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the catch-up changes: with it switched off, ``a`` still holds version 1 after the
    round, and its next round is refused again by both holders."""
    monkeypatch.setattr(ops, "CATCH_UP_ASKS", 0)
    a, _, wire = holders()
    replicate(a, wire)
    assert held(a)[0] == V1
    wire.kept.clear()
    replicate(a, wire)
    assert len([line for line in logs(wire) if "did not store" in line]) == 2


def test_the_newest_of_several_answers_wins() -> None:
    """Holders of different newer versions: the highest sequence number is kept."""
    a, (_, c), wire = holders()
    c.store(V3, 3600.0, 0.0)
    replicate(a, wire)
    assert held(a)[0] == V3


def test_at_most_catch_up_asks_refusers_are_asked() -> None:
    a, peers, wire = holders(count=5)
    asked = [tap(peer) for peer in peers]
    replicate(a, wire)
    finds = sum(1 for received in asked for m in received if isinstance(m, FindValue))
    assert finds == ops.CATCH_UP_ASKS
    assert held(a)[0] == V2


def forged(message: Message) -> Message:
    """Version 3 with version 2's signature: a seq that does not verify."""
    item = Item(V2.value, V2.public_key, V2.name, 3, V2.signature)
    return Value(rid=message.rid, sender=0, port=0, item=item)


@pytest.mark.parametrize(
    ("answer", "warning"),
    [
        (forged, "sent an invalid value"),
        (lambda m: Value(rid=m.rid, sender=0, port=0, item=V1), None),  # not newer
        (lambda m: Nodes(rid=m.rid, sender=0, port=0, nodes=()), None),  # holds nothing now
        (
            lambda m: Value(rid=m.rid, sender=0, port=0, item=OWNER.sign("other", b"x", 9)),
            "sent an invalid value",
        ),
    ],
    ids=["forged", "older", "nodes", "another-key"],
)
def test_an_answer_that_is_not_a_valid_newer_version_changes_nothing(
    answer: Any, warning: str | None
) -> None:
    """A refuser that lies (or no longer holds the key) costs one request; ``a`` keeps its copy
    and the round ends."""
    a, (b, c), wire = holders()
    for peer in (b, c):
        _fill_sender(peer, answer)
    op = replicate(a, wire)
    assert op.ended
    assert held(a) == (V1, 600.0)
    assert not any(line.startswith("caught up") for line in logs(wire))
    if warning:
        assert any(warning in line for line in logs(wire))


def _fill_sender(peer: Engine, answer: Callable[[Message], Message]) -> None:
    """Have ``peer`` answer FIND_VALUE with ``answer``'s reply, sent in its own name."""

    def reply(message: Message) -> Message:
        made = answer(message)
        made.__dict__.update(sender=peer.id, port=peer.port)
        return made

    tap(peer, reply)


def test_a_put_refused_as_stale_does_not_catch_up() -> None:
    """Only a replication round's refusals start it: a put of an old version fails with
    STALE_SEQUENCE, as the caller's own mistake, and asks nobody for the key."""
    a, (b, c), wire = holders()
    asked = tap(b) + tap(c)
    put = wire.start(a, ops.Publish(V1, 500.0))
    assert not [m for m in asked if isinstance(m, FindValue)]
    assert held(a)[0] == V1
    assert put.error is None  # a kept its own copy: it is a holder


def test_nothing_is_replaced_when_our_copy_went_or_moved_on_meanwhile() -> None:
    """The copy expired, or a newer version reached ``a`` while it asked: the catch-up keeps
    what is held."""
    for change, expect in ((lambda a: a.storage.delete(V1.key), None), (_take_v3, V3)):
        a, (b, _), wire = holders()
        tap(b, lambda m, a=a, b=b, change=change: _changed(a, b, m, change))
        replicate(a, wire)
        assert held(a)[0] == expect


def _take_v3(a: Engine) -> None:
    a.store(V3, 600.0, a.now)


def _changed(a: Engine, b: Engine, message: Message, change: Any) -> Message:
    change(a)
    return Value(rid=message.rid, sender=b.id, port=b.port, item=V2)


def test_a_newer_version_larger_than_this_node_takes_is_refused_with_a_warning() -> None:
    big = OWNER.sign("name", b"x" * 2000, 2)
    a, (b, c), wire = holders(max_value=1000)
    for peer in (b, c):
        peer.storage.delete(V1.key)
        peer.store(big, 3600.0, 0.0)
    replicate(a, wire)
    assert held(a)[0] == V1
    assert any(line.startswith("did not take seq 2") for line in logs(wire))


def test_a_handoff_refused_as_stale_catches_up_from_the_newcomer() -> None:
    """A newcomer that holds a newer version than the one handed to it refuses the handoff's
    store; the node that handed it off takes the newer one from it."""
    a, b = engine(1), engine(2)
    a.store(V1, 600.0, 0.0)
    b.store(V2, 3600.0, 0.0)
    b.routing.seen(contact(a), 0.0)  # (a is no newcomer to b: b hands nothing to a)
    wire = Wire(a, b)
    wire.now = 100.0
    asked = tap(b)
    wire.start(b, ops.Call(contact(a), Ping))  # b is new to a: a hands V1 off to it
    assert [type(m) for m in asked] == [Store, FindValue]
    assert held(a) == (V2, 600.0)


def test_replicating_by_hand_catches_up_too() -> None:
    """``PublishAll`` (what ``Node.replicate()`` and republishing run) stores copies held here
    again, as a replication round does: a refusal as stale starts a catch-up."""
    a, _, wire = holders()
    wire.start(a, ops.PublishAll([(V1, 500.0)]))
    assert held(a) == (V2, 600.0)
