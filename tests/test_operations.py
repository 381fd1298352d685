"""The engine as a machine: operations fed events, commands out, time passed in.

These tests drive engines by hand, with no driver at all: ``Wire`` carries each ``Send``
command to the addressed engine's ``request_received`` and the reply back to the sender's
``reply_received``, and time moves only when a test says so (``timer_fired``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from txdht.core import operations as ops
from txdht.core.commands import Command, Done, Failed, Log, Send
from txdht.core.engine import Engine, outcome
from txdht.core.errors import ErrorCode, JoinError, OperationTimeout, ProtocolError, RemoteError
from txdht.core.ids import Contact
from txdht.core.items import MAX_TTL, MAX_VALUE_BYTES, Identity, Item, blob
from txdht.core.limits import HOUSEKEEPING_CONCURRENCY, PACE, Limits
from txdht.core.messages import Error, Message, Ping, Pong, Store
from txdht.core.storage import MemoryStorage, StoredItem

UNLIMITED = Limits(peer_rate=1e12, peer_burst=1e12, global_rate=1e12, global_burst=1e12)


def engine(index: int, **options: Any) -> Engine:
    """An engine with a seeded identity, listening (in name) on port 4000 + index."""
    raw = hashlib.sha256(b"operations %d" % index).digest()
    options.setdefault("limits", UNLIMITED)
    made = Engine(Identity.from_private_bytes(raw), MemoryStorage(), now=0.0, **options)
    made.port = 4000 + index
    return made


class Wire:
    """Engines joined by hand: ``deliver`` carries requests and replies until none is left,
    keeping every other command (what the drivers would carry out)."""

    def __init__(self, *engines: Engine) -> None:
        self.engines = {("127.0.0.1", e.port): e for e in engines}
        self.now = 0.0
        #: Every command other than Send, in order.
        self.kept: list[Command] = []

    def deliver(self, commands: list[Command], sender: Engine) -> None:
        pending = [(sender, c) for c in commands]
        for _ in range(10_000):
            if not pending:
                return
            source, command = pending.pop(0)
            if not isinstance(command, Send):
                self.kept.append(command)
                continue
            request = command.request
            target = self.engines.get(request.address)
            if target is None:  # nobody there (a dead node): the request times out
                continue
            reply, more = target.request_received(
                request.message, "127.0.0.1", source.port, self.now
            )
            pending += [(target, c) for c in more]
            if reply is not None:
                pending += [
                    (source, c) for c in source.reply_received(reply, "127.0.0.1", self.now)
                ]
        raise AssertionError("the engines did not settle")

    def start(self, at: Engine, op: ops.Operation) -> ops.Operation:
        self.deliver(at.start(op, self.now), at)
        return op

    def settle(self, at: Engine) -> None:
        """Move time on to each of ``at``'s timers in turn until it has none left."""
        while (when := at.next_timer()) is not None:
            self.now = when
            self.deliver(at.timer_fired(when), at)


def contact(made: Engine) -> Contact:
    """Where ``made`` is."""
    return Contact(made.id, "127.0.0.1", made.port)


def test_a_call_ends_with_its_reply_as_a_done_command() -> None:
    """An operation the driver started ends as one Done command, with the reply as result."""
    a, b = engine(1), engine(2)
    wire = Wire(a, b)
    call = wire.start(a, ops.Call(contact(b), Ping))
    assert [type(c) for c in wire.kept] == [Done]
    assert isinstance(call.result, Pong)
    assert call.result.sender == b.id
    assert a.metrics.rpcs[("sent", "ping", "ok")] == 1
    assert b.id in a.routing  # a reply from a contact counts as hearing from it


def test_a_request_nobody_answers_fails_at_the_rpc_timeout_and_not_before() -> None:
    """The engine times its own requests out: the deadline is its next timer (after the slow
    deadline, which a single call ignores), and at it the operation fails with TimeoutError;
    the late reply is then dropped without a word."""
    a, b = engine(1, rpc_timeout=2.0), engine(2)
    (send,) = a.start(call := ops.Call(contact(b), Ping), 0.0)
    assert isinstance(send, Send)
    assert a.next_timer() == 1.0  # slow: nobody measured yet, FIRST_SLOW
    assert a.timer_fired(1.0) == []
    assert send.request.slow
    assert a.next_timer() == 2.0
    assert a.timer_fired(1.99) == []
    assert not call.ended
    commands = a.timer_fired(2.0)
    assert isinstance(call.error, TimeoutError)
    assert str(call.error) == "no reply within 2 s"
    assert [type(c) for c in commands] == [Log, Failed]
    assert a.next_timer() is None
    late, _ = b.request_received(send.request.message, "127.0.0.1", a.port, 2.5)
    assert late is not None
    assert a.reply_received(late, "127.0.0.1", 3.0) == []  # an abandoned request's reply
    assert a.metrics.rpcs[("sent", "ping", "timeout")] == 1


def test_an_unsolicited_reply_is_logged() -> None:
    """A reply to a request never sent is logged (and changes nothing)."""
    a = engine(1)
    (logged,) = a.reply_received(engine(2).message(Pong, 999), "127.0.0.1", 0.0)
    assert isinstance(logged, Log)
    assert (
        logged.format() == "ignored a pong reply from 127.0.0.1 to request 999, which nobody awaits"
    )


def test_a_reply_from_another_id_or_an_error_reply_fails_the_request() -> None:
    """A reply from another id than the contact's fails with ProtocolError; an error reply
    with RemoteError carrying its code."""
    a, b = engine(1), engine(2)
    wire = Wire(a, b)
    impostor = Contact(b.id ^ 1, "127.0.0.1", b.port)
    call = wire.start(a, ops.Call(impostor, Ping))
    assert isinstance(call.error, ProtocolError)
    assert call.error.code == ErrorCode.UNEXPECTED
    older = Identity.from_private_bytes(b"o" * 32)
    b.store(older.sign("n", b"new", 2), 60.0, 0.0)
    refused = wire.start(a, ops.Call(contact(b), Store, item=older.sign("n", b"old", 1), ttl=60.0))
    assert isinstance(refused.error, RemoteError)
    assert refused.error.code == ErrorCode.STALE_SEQUENCE
    assert [outcome(e) for e in (refused.error, call.error, TimeoutError())] == [
        "error",
        "failed",
        "timeout",
    ]


def test_cancelling_an_operation_abandons_its_requests_silently() -> None:
    """A cancelled operation gets no Done or Failed; its requests are counted as cancelled,
    their timers go, and their replies are dropped quietly when they come."""
    a, b = engine(1), engine(2)
    commands = a.start(call := ops.Call(contact(b), Ping), 0.0)
    (send,) = commands
    assert isinstance(send, Send)
    assert a.cancel(call, 0.5) == []
    assert call.ended
    assert call.result is None
    assert call.error is None
    assert a.pending() == []
    assert a.running() == []
    assert a.next_timer() is None
    assert a.metrics.rpcs[("sent", "ping", "cancelled")] == 1
    reply, _ = b.request_received(send.request.message, "127.0.0.1", a.port, 0.6)
    assert reply is not None
    assert a.reply_received(reply, "127.0.0.1", 0.7) == []
    assert a.cancel(call, 0.8) == []  # cancelling again does nothing


class Steps(ops.Operation):
    """An operation that runs whatever a test gives it, to reach the engine's corners."""

    def __init__(self, begin: Any = None, child_ended: Any = None) -> None:
        super().__init__()
        self._begin, self._child_ended = begin, child_ended
        self.heard: list[ops.Operation] = []

    def begin(self) -> None:
        if self._begin is not None:
            self._begin(self)

    def child_ended(self, child: ops.Operation) -> None:
        self.heard.append(child)
        if self._child_ended is not None:
            self._child_ended(self, child)


def test_a_bug_in_a_step_fails_the_operation_and_the_node_goes_on() -> None:
    """An exception in an operation's step ends it with that error, logged with its
    traceback; an exception after it has ended is logged and changes nothing more."""
    a = engine(1)

    def broken(op: ops.Operation) -> None:
        raise ZeroDivisionError("a bug")

    commands = a.start(failing := Steps(broken), 0.0)
    logged, failed = commands
    assert isinstance(logged, Log)
    assert logged.level == "error"
    assert logged.format() == "Steps failed: ZeroDivisionError('a bug')"
    assert isinstance(logged.fields["failure"], ZeroDivisionError)
    assert failed == Failed(failing)
    assert isinstance(failing.error, ZeroDivisionError)

    def finish_then_raise(op: ops.Operation) -> None:
        op.finish("kept")
        raise ValueError("after the end")

    commands = a.start(finished := Steps(finish_then_raise), 1.0)
    assert [type(c) for c in commands] == [Done, Log]
    assert (finished.result, finished.error) == ("kept", None)


def test_a_timer_of_an_operation_that_raises_fails_it() -> None:
    """A timer set with ``later`` runs in the operation's name: if it raises, the operation
    fails; if the operation has ended, the timer never runs."""
    a = engine(1)
    ran: list[float] = []

    def bug() -> None:
        raise ZeroDivisionError("a bug")

    def late(op: ops.Operation) -> None:
        op.later(5.0, bug)
        op.later(7.0, ran.append, 7.0)
        op.send(contact(engine(2)), Ping)

    a.start(op := Steps(late), 0.0)
    assert a.timer_fired(1.0) == []  # the request's slow deadline: nothing for Steps to do
    assert a.next_timer() == 5.0
    commands = a.timer_fired(5.0)
    assert [type(c) for c in commands] == [Log, Failed]
    assert isinstance(op.error, ZeroDivisionError)
    assert a.next_timer() is None  # the request's deadline went with it
    with pytest.raises(RuntimeError, match="has ended"):
        op.send(contact(engine(2)), Ping)
    with pytest.raises(RuntimeError, match="has ended"):
        op.later(1.0, ran.append, 8.0)
    assert a.timer_fired(7.0) == []
    assert ran == []


def test_a_parent_that_ended_does_not_hear_of_its_children() -> None:
    """A child's end is queued for its parent; if the parent ends first (here on hearing of
    its first child), it never hears of the other, and cannot start anything more."""
    a = engine(1)

    def two_children(op: ops.Operation) -> None:
        op.spawn(Steps(lambda child: child.finish(1)))
        op.spawn(Steps(lambda child: child.finish(2)))

    def end_at_the_first(op: ops.Operation, child: ops.Operation) -> None:
        op.finish(child.result)
        op.spawn(Steps())  # a bug: an operation that has ended starts nothing more

    parent = Steps(two_children, end_at_the_first)
    done, logged = a.start(parent, 0.0)
    assert done == Done(parent)
    assert isinstance(logged, Log)
    assert logged.format() == (
        "Steps failed: RuntimeError('Steps has ended, and cannot act any more')"
    )
    assert parent.result == 1
    assert [child.result for child in parent.heard] == [1]
    assert a.running() == []


def test_the_engine_refuses_a_timeout_of_zero() -> None:
    """rpc_timeout must be above 0, k from 1 to 64, alpha at least 1."""
    with pytest.raises(ValueError, match="rpc_timeout is a finite number of seconds above 0"):
        engine(1, rpc_timeout=0.0)


def test_a_join_through_no_seed_fails_and_through_one_fills_the_table() -> None:
    """Join fails with JoinError when no seed proves its id, and otherwise knows its seed and
    what the seed knew."""
    a, b, c = engine(1), engine(2), engine(3)
    wire = Wire(a, b, c)
    assert isinstance(wire.start(a, ops.Join([])).error, JoinError)
    wire.start(b, ops.Join([("127.0.0.1", c.port)]))
    join = wire.start(a, ops.Join([("127.0.0.1", b.port)]))
    assert join.result == 2
    assert {b.id, c.id} <= {known.id for known in a.routing.contacts()}


def test_a_joining_node_hands_its_records_to_the_seed_it_joins_through() -> None:
    """A node that holds records (a restart with its data) and joins through a seed new to its
    table copies the seed the records it is among the k closest to, as for any newcomer. The
    join's step used to hand over the commands so far to nobody: the copies were never sent,
    and each timed out 5 s later (seen with real processes, on every restart)."""
    a, b = engine(1), engine(2)
    items = [blob(b"held %d" % n) for n in range(5)]
    for item in items:
        a.store(item, 600.0, 0.0)
    wire = Wire(a, b)
    received = _tap([b])
    join = wire.start(a, ops.Join([("127.0.0.1", b.port)]))
    assert join.error is None
    stores = [m for _, m in received if isinstance(m, Store)]
    assert {m.item for m in stores} == set(items)
    assert all(b.storage.get(item.key) is not None for item in items)
    assert not a.pending()  # every copy was answered: none waits for a timeout


def test_requests_past_a_peers_burst_wait_for_their_slot_and_time_out_from_there() -> None:
    """With default limits a node sends a peer at most ``PACE`` of its burst at once; the rest
    wait for their slots (``Pacer``), and a request's deadlines count from when it goes, so a
    wait is never taken for a silent peer. An operation that ends cancels those still waiting:
    they never go."""
    a, b = engine(1, limits=Limits()), engine(2)
    burst = int(Limits().peer_burst * PACE)
    calls = [ops.Call(contact(b), Ping) for _ in range(burst + 3)]
    sends = [c for call in calls for c in a.start(call, 0.0) if isinstance(c, Send)]
    assert len(sends) == burst
    held = [r for r in a.pending() if r.rid not in {s.request.rid for s in sends}]
    assert len(held) == 3
    when = a.next_timer()
    assert when == pytest.approx(1 / (Limits().peer_rate * PACE))
    assert when is not None
    first = [c.request for c in a.timer_fired(when) if isinstance(c, Send)]
    assert first == held[:1]
    assert held[0].sent_at == when
    a.cancel(calls[-1], when)  # the last still waits: it never goes
    launched: list[ops.Request] = []
    for _ in range(100):
        if (next_at := a.next_timer()) is None or next_at > when + 1.0:
            break
        launched += [c.request for c in a.timer_fired(next_at) if isinstance(c, Send)]
    assert launched == [held[1]]
    assert held[1].sent_at == pytest.approx(2 / (Limits().peer_rate * PACE))
    assert held[2] not in a.pending()
    # Nobody answers: each times out rpc_timeout after it went, not after it was asked for.
    failed = a.timer_fired(held[1].sent_at + a.rpc_timeout - 0.001)
    assert held[1] in a.pending()
    failed = a.timer_fired(held[1].sent_at + a.rpc_timeout + 0.001)
    assert held[1] not in a.pending()
    assert [type(c) for c in failed if isinstance(c, Failed)]


def test_a_handoff_copies_a_few_records_at_a_time() -> None:
    """A newcomer is sent ``HOUSEKEEPING_CONCURRENCY`` copies at once, and one more as each
    ends, until every record is copied: thousands at once would make every other request to
    it wait behind them."""
    a, b = engine(1), engine(2)
    items = [blob(b"item %d" % n) for n in range(30)]
    for item in items:
        a.store(item, 600.0, 0.0)
    b.routing.seen(contact(a), 0.0)  # (a is no newcomer to b)
    first = [c for c in a.seen(contact(b), 1.0) if isinstance(c, Send)]
    (handoff,) = [op for op in a.running() if isinstance(op, ops.Handoff)]
    assert len(first) == HOUSEKEEPING_CONCURRENCY
    assert len(handoff.records) == len(items)  # b is among the k closest to each
    wire = Wire(a, b)
    wire.now = 1.0
    for command in first:  # b answers each: the rest follow, eight in flight at most
        wire.deliver([command], a)
    assert handoff.ended
    assert handoff.result == len(handoff.records)
    assert all(b.storage.get(r.item.key) is not None for r in handoff.records)


def test_a_handoff_skips_the_records_that_expired_while_they_waited_their_turn() -> None:
    a, b = engine(1), engine(2)
    records = [StoredItem(blob(b"item %d" % n), 2.0 if n >= 8 else 600.0) for n in range(10)]
    handoff = ops.Handoff(contact(b), records)
    first = [c for c in a.start(handoff, 1.0) if isinstance(c, Send)]
    assert len(first) == HOUSEKEEPING_CONCURRENCY
    wire = Wire(a, b)
    wire.now = 3.0  # the last two expired meanwhile: they are not sent
    for command in first:
        wire.deliver([command], a)
    assert handoff.result == HOUSEKEEPING_CONCURRENCY
    assert [b.storage.get(r.item.key) is not None for r in records] == [True] * 8 + [False] * 2


def test_a_publish_of_an_item_too_large_fails_at_once() -> None:
    """A put of an item the node would refuse itself fails before anything is sent."""
    a = engine(1, max_value=4)
    commands = a.start(put := ops.Publish(blob(b"far too large"), 60.0), 0.0)
    assert commands == [Failed(put)]
    assert isinstance(put.error, ProtocolError)
    assert put.error.code == ErrorCode.VALUE_TOO_LARGE


def test_messages_carry_the_sender() -> None:
    """Requests made by the engine carry its id and port, and fresh request ids."""
    a = engine(1)
    first, second = a.message(Ping), a.message(Ping)
    assert isinstance(first, Message)
    assert (first.sender, first.port, second.rid - first.rid) == (a.id, a.port, 1)


def test_an_operation_past_its_deadline_fails_with_how_far_it_got() -> None:
    """An operation started with a timeout ends at it with OperationTimeout, which says how
    many peers answered (and, for a put, how many stored the item); nothing is left behind."""
    a, b, c = engine(1), engine(2), engine(3)
    wire = Wire(a, b, c)
    wire.start(b, ops.Join([("127.0.0.1", c.port)]))
    wire.start(a, ops.Join([("127.0.0.1", b.port)]))
    # Every request of a's from now on goes unanswered: nothing is delivered.
    commands = a.start(get := ops.Get(blob(b"x").key), 10.0, timeout=0.5)
    assert all(isinstance(c, Send) for c in commands)
    commands = a.timer_fired(10.5)
    assert commands[-1] == Failed(get)
    assert isinstance(get.error, OperationTimeout)
    assert isinstance(get.error, TimeoutError)
    assert str(get.error) == "get did not finish within 0.5 s: 0 peers answered"
    assert (get.error.answered, get.error.stored) == (0, None)
    assert a.running() == []
    assert a.pending() == []
    assert a.next_timer() is None
    put = ops.Publish(blob(b"late"), 60.0)
    a.start(put, 20.0, timeout=1.0)
    a.timer_fired(21.0)
    assert isinstance(put.error, OperationTimeout)
    assert str(put.error) == (
        "publish did not finish within 1 s: 0 peers answered, 0 nodes stored the item"
    )
    assert put.error.stored == 0


def test_a_put_past_its_deadline_counts_the_nodes_that_stored() -> None:
    """A put stopped while its stores are out counts the peers its lookup heard from and
    the nodes (this one among them) that had taken the item."""
    a, b, c = engine(1), engine(2), engine(3)
    wire = Wire(a, b, c)
    wire.start(b, ops.Join([("127.0.0.1", c.port)]))
    wire.start(a, ops.Join([("127.0.0.1", b.port)]))
    put = ops.Publish(blob(b"half way"), 60.0)
    commands = a.start(put, 0.0, timeout=5.0)
    for command in commands:  # answer the lookup, keep the stores unanswered
        assert isinstance(command, Send)
        target = wire.engines[command.request.address]
        reply, _ = target.request_received(command.request.message, "127.0.0.1", a.port, 0.0)
        assert reply is not None
        for more in a.reply_received(reply, "127.0.0.1", 0.0):
            assert isinstance(more, Send)
            assert isinstance(more.request.message, Store)
    a.timer_fired(5.0)
    assert isinstance(put.error, OperationTimeout)
    assert (put.error.answered, put.error.stored) == (2, 1)


def test_a_deadline_must_be_above_zero() -> None:
    """A timeout of zero or less is the caller's mistake."""
    with pytest.raises(ValueError, match="above 0"):
        engine(1).start(ops.Get(1), 0.0, timeout=0.0)


def test_a_deadline_that_is_not_reached_changes_nothing() -> None:
    """An operation that ends before its deadline ends as it would have; its deadline goes."""
    a, b = engine(1), engine(2)
    wire = Wire(a, b)
    call = ops.Call(contact(b), Ping)
    wire.deliver(a.start(call, 0.0, timeout=3.0), a)
    assert isinstance(call.result, Pong)
    assert a.next_timer() is None


def test_replication_skips_keys_a_peer_stored_here_again_within_the_interval() -> None:
    """A key a peer stored here again (a STORE of the version already held: that peer is
    replicating it) within ``fresh`` seconds is not replicated by this node; a version's first
    arrival (a publish), a key stored by this node itself, or one stored again longer ago, is;
    the memory of a store goes once it is older than any item can live."""
    a = engine(1)
    replicated, published, own = blob(b"replicated"), blob(b"published"), blob(b"mine")
    for when, item in ((50.0, replicated), (100.0, replicated), (100.0, published)):
        reply, _ = a.request_received(
            a.message(Store, 7, item=item, ttl=600.0), "127.0.0.1", 9, when
        )
        assert reply is not None
    a.store(own, 600.0, 100.0)
    jobs = a.replication_jobs(200.0, fresh=3600.0)
    assert {item for item, _ in jobs} == {own, published}
    assert {item for item, _ in a.replication_jobs(200.0)} == {own, published, replicated}
    assert {item for item, _ in a.replication_jobs(3700.0 - 1, fresh=3600.0)} == set()  # expired
    assert len(a._stored_at) == 1
    a.expire(100.0 + MAX_TTL + 1)
    assert a._stored_at == {}


def test_after_a_put_the_nearest_holder_replicates_first() -> None:
    """After a put, every holder got the version at the same moment. The one whose routing
    table knows no live contact nearer the key replicates it at its first round; the others
    take the put as this interval's replication and skip it (two holders whose rounds ran
    together both replicated it, before); they replicate it an interval after the put if no
    peer stored it again, or as soon as a contact comes to look dead (a crash right after a
    put is repaired at once)."""
    a, b, c = engine(1), engine(2), engine(3)
    everyone = (a, b, c)
    for holder in everyone:
        for other in everyone:
            if other is not holder:
                holder.routing.seen(contact(other), 0.0)
    item = blob(b"fresh")
    first = min(everyone, key=lambda e: e.id ^ item.key)
    others = [e for e in everyone if e is not first]
    for holder in everyone:
        reply, _ = holder.request_received(
            a.message(Store, 8, item=item, ttl=86400.0), "127.0.0.1", a.port, 0.0
        )
        assert reply is not None
    assert first.nearest(item.key)
    assert not any(e.nearest(item.key) for e in others)
    assert [i for i, _ in first.replication_jobs(10.0, fresh=3600.0)] == [item]
    assert all(e.replication_jobs(10.0, fresh=3600.0) == [] for e in others)
    assert all(e.replication_jobs(3601.0, fresh=3600.0) for e in others)  # none came
    others[0].now = 20.0
    others[0].routing.failed(first.id)
    others[0].routing.failed(first.id)  # the nearest looks dead: ours to replicate now
    assert [i for i, _ in others[0].replication_jobs(30.0, fresh=3600.0)] == [item]
    assert others[1].replication_jobs(30.0, fresh=3600.0) == []
    for holder in others:  # the nearest re-stores it on the others, as its round does
        reply, _ = holder.request_received(
            first.message(Store, 9, item=item, ttl=86000.0), "127.0.0.1", first.port, 3000.0
        )
        assert reply is not None
    assert others[1].replication_jobs(3601.0, fresh=3600.0) == []  # stored again at 3,000 s


def test_a_node_alone_is_the_nearest_holder() -> None:
    """A node that knows no live contact replicates what it holds at its first round."""
    a = engine(1)
    item = blob(b"alone")
    a.request_received(a.message(Store, 8, item=item, ttl=600.0), "127.0.0.1", 9, 0.0)
    assert a.nearest(item.key)
    assert [i for i, _ in a.replication_jobs(10.0, fresh=3600.0)] == [item]


def test_a_key_replicated_by_a_peer_is_replicated_again_once_a_contact_is_lost() -> None:
    """The skip holds only while the network is calm: once a contact comes to look dead
    after the peer's store (a crash, say), the key is replicated at the next round."""
    a = engine(1)
    item = blob(b"replicated")
    for when in (0.0, 10.0):  # a first arrival, then a peer's replication of it
        reply, _ = a.request_received(
            a.message(Store, 7, item=item, ttl=600.0), "127.0.0.1", 9, when
        )
        assert reply is not None
    assert a.replication_jobs(20.0, fresh=3600.0) == []
    gone = contact(engine(2))
    a.routing.seen(gone, 20.0)
    a.routing.failed(gone.id)
    assert a.replication_jobs(20.0, fresh=3600.0) == []  # one failure: not yet dead-looking
    a.routing.failed(gone.id)
    assert [i for i, _ in a.replication_jobs(20.0, fresh=3600.0)] == [item]


def test_a_round_whose_lookups_find_a_contact_dead_replicates_the_keys_it_skipped() -> None:
    """A holder skips a key whose new version came while it knew a nearer holder (that one
    replicates it first). Its round looks at every key when it begins; if its own lookups
    then find a contact dead (a crash: the nearest holder may be among the dead), the round
    takes the keys it skipped for an arrival up again at its end, instead of leaving them
    for the next round, an interval later (after a 50% crash of 200 nodes right after the
    puts, 44 of 1,000 keys whose nearest holder died stayed on fewer than 16 of their 20
    closest live nodes for the interval). A key the round already took up is not taken up
    twice."""
    a, nearest, peer = engine(1, rpc_timeout=2.0), engine(2), engine(3)
    wire = Wire(a, peer)  # nearest is dead: nothing answers at its address
    a.routing.seen(contact(nearest), 0.0)
    a.routing.seen(contact(peer), 0.0)
    items = [blob(b"round %d" % i) for i in range(200)]
    behind = [i for i in items if nearest.id ^ i.key < a.id ^ i.key]
    old, fresh = behind[:2]  # a knows a nearer holder of these two
    own = next(i for i in items if a.id ^ i.key < min(nearest.id ^ i.key, peer.id ^ i.key))
    a.store(old, 86400.0, 0.0)  # arrivals: left to the nearest holder...
    a.store(fresh, 86400.0, 1000.0)
    a.store(own, 86400.0, 1000.0)  # ...and one that a is the nearest holder of
    assert [a.nearest(i.key) for i in (old, fresh, own)] == [False, False, True]
    a.now = 3990.0
    a.routing.failed(nearest.id)  # once: not yet dead-looking
    jobs = a.replication_jobs(4000.0, fresh=3600.0)
    assert [i for i, _ in jobs] == [old, own]  # the old arrival's wait is over; fresh waits
    wire.now = 4000.0
    round_ = ops.Replicate(jobs, fresh=3600.0)
    wire.start(a, round_)
    assert peer.get(fresh.key, 4000.0) is None
    wire.settle(a)  # the round's lookups ask the nearest holder again: it looks dead now
    assert (round_.ended, round_.result, round_.skipped) == (True, 3, 0)
    assert round_.taken == {old.key, own.key, fresh.key}
    assert peer.get(fresh.key, wire.now) == fresh  # replicated in this round, not the next
    arrivals = a.replication_jobs(wire.now, fresh=3600.0, arrivals=True)
    assert [i for i, _ in arrivals] == [old, fresh]  # (a's own round is no peer's store)


def test_a_round_that_finds_no_contact_dead_leaves_the_arrivals_for_the_nearest() -> None:
    """In a calm network a round takes up nothing more at its end: the arrivals it skipped
    are the nearest holder's to replicate (the idle network's one replication per key)."""
    a, nearest = engine(1), engine(2)
    wire = Wire(a, nearest)
    a.routing.seen(contact(nearest), 0.0)
    items = [blob(b"calm %d" % i) for i in range(200)]
    behind = next(i for i in items if nearest.id ^ i.key < a.id ^ i.key)
    own = next(i for i in items if a.id ^ i.key < nearest.id ^ i.key)
    a.store(behind, 86400.0, 0.0)
    a.store(own, 86400.0, 0.0)
    jobs = a.replication_jobs(10.0, fresh=3600.0)
    assert [i for i, _ in jobs] == [own]
    wire.now = 10.0
    round_ = ops.Replicate(jobs, fresh=3600.0)
    wire.start(a, round_)
    wire.settle(a)
    assert (round_.ended, round_.result, round_.taken) == (True, 1, {own.key})
    assert nearest.get(own.key, wire.now) == own


def test_a_replication_round_skips_a_key_a_peer_replicated_while_it_waited_its_turn() -> None:
    """A round publishes ``HOUSEKEEPING_CONCURRENCY`` keys at a time; a key a peer stores
    here again before its turn comes is skipped then (no lookup, no stores), and the round
    ends with the others."""
    a, b = engine(1), engine(2)
    wire = Wire(a, b)
    items = [blob(b"item %d" % i) for i in range(HOUSEKEEPING_CONCURRENCY + 2)]
    for item in items:  # first arrivals: every key is due
        a.request_received(a.message(Store, 7, item=item, ttl=600.0), "127.0.0.1", 9, 0.0)
    a.routing.seen(contact(b), 0.0)  # (a knew no nearer node when they came: it is the first)
    jobs = a.replication_jobs(1.0, fresh=3600.0)
    assert len(jobs) == len(items)
    round_ = ops.Replicate(jobs, fresh=3600.0)
    sent = a.start(round_, 1.0)  # the first lookups leave; the last two keys wait their turn
    assert len([c for c in sent if isinstance(c, Send)]) == HOUSEKEEPING_CONCURRENCY
    late = jobs[-1][0]  # a peer replicates the last one meanwhile
    a.request_received(a.message(Store, 8, item=late, ttl=599.0), "127.0.0.1", 9, 2.0)
    wire.deliver(sent, a)
    assert round_.ended
    assert round_.skipped == 1
    assert round_.result == len(items) - 1
    assert a.metrics.operations["Publish"] == len(items) - 1
    assert b.storage.get(late.key) is None  # not sent: its peer did it
    assert all(b.storage.get(item.key) for item, _ in jobs[:-1])


def test_a_copy_of_the_item_held_is_stored_again_without_verifying_it_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replication resends the same signed item: its expiry is renewed without a second
    Ed25519 check. Anything else under the key (a forgery, a new version) is verified."""
    a = engine(1)
    owner = Identity.from_private_bytes(bytes(32))
    item = owner.sign("name", b"value", 1)
    checked: list[Item] = []
    verify = Item.verify

    def counted(self: Item, max_value: int = MAX_VALUE_BYTES) -> None:
        checked.append(self)
        verify(self, max_value)

    monkeypatch.setattr(Item, "verify", counted)
    a.store(item, 600.0, 0.0)
    a.store(item, 600.0, 100.0)  # a peer's replication: the same bytes
    assert checked == [item]
    stored = a.storage.get(item.key)
    assert stored is not None
    assert stored.expires_at == 700.0
    forged = replace(item, signature=bytes(64))
    with pytest.raises(ProtocolError) as refused:
        a.store(forged, 600.0, 200.0)
    assert refused.value.code == ErrorCode.BAD_SIGNATURE
    newer = owner.sign("name", b"newer", 2)
    a.store(newer, 600.0, 300.0)
    assert checked == [item, forged, newer]
    a.store(item, 600.0, 1000.0)  # once what was held has expired, a copy is checked again
    assert checked[-1] == item
    assert len(checked) == 4


def test_a_replicas_first_arrival_counts_as_this_intervals_replication() -> None:
    """A store marked ``replica`` (a peer's replication round) counts even where the key was
    not held yet: a node the replicator's lookup found among the k closest does not replicate
    the key again in the same interval. A first arrival without the mark (a put) does not."""
    a = engine(1)
    replicated, published = blob(b"replicated"), blob(b"published")
    reply, _ = a.request_received(
        a.message(Store, 7, item=replicated, ttl=600.0, replica=True), "127.0.0.1", 9, 0.0
    )
    assert reply is not None
    reply, _ = a.request_received(
        a.message(Store, 8, item=published, ttl=600.0), "127.0.0.1", 9, 0.0
    )
    assert reply is not None
    assert [item for item, _ in a.replication_jobs(10.0, fresh=3600.0)] == [published]


def test_a_replication_rounds_stores_are_marked_replica() -> None:
    """Replicate's stores carry ``replica``; a put's do not."""
    a, b = engine(1), engine(2)
    wire = Wire(a, b)
    a.routing.seen(contact(b), 0.0)
    replicated, put = blob(b"replicated"), blob(b"put")
    a.store(replicated, 600.0, 0.0)
    wire.start(a, ops.Replicate([(replicated, 600.0)], fresh=3600.0))
    wire.start(a, ops.Publish(put, 600.0))
    assert b.storage.get(replicated.key) is not None
    assert b.storage.get(put.key) is not None
    assert [item for item, _ in b.replication_jobs(10.0, fresh=3600.0)] == [put]


def _lose_a_contact(made: Engine, index: int = 3) -> None:
    """Have ``made`` come to see a contact of its own as dead (two failures in a row): the
    network is not calm for it for an interval."""
    gone = next(
        c for c in (contact(engine(i)) for i in range(index, index + 50)) if c.id ^ made.id > 1
    )
    made.routing.seen(gone, made.now)
    assert gone.id in made.routing, "no room for the contact to lose"
    losses = made.routing.losses
    made.routing.failed(gone.id)
    made.routing.failed(gone.id)
    assert made.routing.losses == losses + 1


def test_a_holder_outside_the_k_closest_hands_the_key_off() -> None:
    """A replication that finds k nodes nearer the key than this one, all of which take the
    item, stops this node replicating it (it keeps its copy) until a contact looks dead or a
    new version is stored here; a put, or a round whose stores were not all taken, does not.
    (While the network is calm, the routing table alone keeps such a holder from replicating:
    see the next test. Here it is not: a contact has just come to look dead.)"""
    a, b = engine(1, k=1), engine(2)
    wire = Wire(a, b)
    items = (blob(b"item %d" % n) for n in range(100))
    item = next(i for i in items if b.id ^ i.key < a.id ^ i.key)  # b is nearer
    a.store(item, 86400.0, 0.0)  # (a knew no nearer node when it came: it is the first)
    a.routing.seen(contact(b), 0.0)
    _lose_a_contact(a)
    wire.start(a, ops.Publish(item, 86400.0))  # a put: no hand-off
    assert [i for i, _ in a.replication_jobs(1.0, fresh=386400.0)] == [item]
    wire.start(a, ops.Replicate([(item, 86400.0)], fresh=386400.0))
    assert b.storage.get(item.key) is not None
    assert a.storage.get(item.key) is not None  # a keeps its copy
    assert a.replication_jobs(7200.0, fresh=386400.0) == []  # handed off, past the interval
    a.routing.failed(b.id)
    a.routing.failed(b.id)  # a contact looks dead: the key is a's to replicate again
    assert [i for i, _ in a.replication_jobs(7200.0, fresh=386400.0)] == [item]


def test_a_holder_outside_the_k_closest_leaves_the_key_to_them_while_calm() -> None:
    """A holder whose routing table knows k live contacts nearer a key than itself does not
    replicate the key, without a lookup, while no contact has come to look dead for an
    interval; once one has, it replicates as every holder does, until an interval has passed
    without another. A holder that knows fewer than k nearer contacts replicates."""
    a, b, c = engine(1, k=2), engine(2), engine(3)
    items = [blob(b"item %d" % n) for n in range(200)]
    # Items b and c are both nearer than a (a is outside at k = 2), and one only b is.
    outside = next(i for i in items if max(b.id ^ i.key, c.id ^ i.key) < a.id ^ i.key)
    edge = next(i for i in items if b.id ^ i.key < a.id ^ i.key < c.id ^ i.key)
    for item in (outside, edge):
        a.store(item, 86400.0, 0.0)  # (a knew no nearer node when they came)
    for made in (b, c):
        a.routing.seen(contact(made), 0.0)
    assert a.outside(outside.key)
    assert not a.outside(edge.key)
    assert [i for i, _ in a.replication_jobs(10.0, fresh=3600.0)] == [edge]
    a.now = 20.0
    _lose_a_contact(a, 4)
    assert {i for i, _ in a.replication_jobs(30.0, fresh=3600.0)} == {outside, edge}
    assert {i for i, _ in a.replication_jobs(3629.0, fresh=3600.0)} == {outside, edge}
    assert [i for i, _ in a.replication_jobs(3631.0, fresh=3600.0)] == [edge]  # calm again
    a.routing.failed(b.id)
    a.routing.failed(b.id)  # b looks dead: a knows one live contact nearer, not k
    assert not a.outside(outside.key)
    assert {i for i, _ in a.replication_jobs(7300.0, fresh=3600.0)} == {outside, edge}


def test_a_new_version_takes_back_a_handed_off_key() -> None:
    """A store of another version (a put that found this node among the k closest) ends the
    hand-off; a copy of the held one does not."""
    a = engine(1)
    owner = Identity.from_private_bytes(bytes(32))
    first, second = owner.sign("name", b"1", 1), owner.sign("name", b"2", 2)
    a.store(first, 600.0, 0.0)
    a.handed_off(first.key)
    assert a.replication_jobs(10.0, fresh=3600.0) == []
    a.request_received(a.message(Store, 7, item=second, ttl=600.0), "127.0.0.1", 9, 20.0)
    assert [i for i, _ in a.replication_jobs(30.0, fresh=3600.0)] == [second]
    a.handed_off(second.key)
    a.request_received(a.message(Store, 8, item=second, ttl=600.0), "127.0.0.1", 9, 40.0)
    assert a.replication_jobs(50.0, fresh=3600.0) == []  # a peer's re-store: not due anyway


def test_a_replication_round_with_nothing_left_due_ends_at_once() -> None:
    """A round whose keys were all replicated by peers before it began ends with 0."""
    a = engine(1)
    item = blob(b"held")
    for when in (0.0, 1.0):  # a first arrival, then a peer's replication
        a.request_received(a.message(Store, 7, item=item, ttl=600.0), "127.0.0.1", 9, when)
    round_ = ops.Replicate([(item, 590.0)], fresh=3600.0)
    a.start(round_, 2.0)
    assert (round_.ended, round_.result, round_.skipped) == (True, 0, 1)


def test_a_contact_that_proved_its_id_is_pinged_without_a_challenge() -> None:
    """Ping-before-evict challenges a contact only until it has proved its id from its present
    address; then a plain ping will do, until it moves."""
    a, b = engine(1), engine(2)
    wire = Wire(a, b)
    first = ops.PingCheck(contact(b))
    wire.start(a, first)
    assert first.challenge is not None
    assert a.has_proved(contact(b))
    again = ops.PingCheck(contact(b))
    (send,) = a.start(again, 1.0)
    assert isinstance(send, Send)
    assert isinstance(send.request.message, Ping)
    assert send.request.message.challenge is None
    moved = Contact(b.id, "127.0.0.1", b.port + 1)
    assert not a.has_proved(moved)


def test_operations_are_counted_by_kind() -> None:
    """The engine counts every operation it starts, by kind, those inside others too."""
    a, b = engine(1), engine(2)
    wire = Wire(a, b)
    wire.start(a, ops.Join([("127.0.0.1", b.port)]))
    counted = a.metrics.operations
    assert (counted["Join"], counted["Lookup"] >= 1, counted["Refresh"]) == (1, True, 1)


def test_only_the_most_recent_proofs_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_PROOFS proofs are kept: a new one pushes the oldest out."""
    monkeypatch.setattr("txdht.core.engine.MAX_PROOFS", 1)
    a, b, c = engine(1), engine(2), engine(3)
    wire = Wire(a, b, c)
    wire.start(a, ops.PingCheck(contact(b)))
    wire.start(a, ops.PingCheck(contact(c)))
    assert a.has_proved(contact(c))
    assert not a.has_proved(contact(b))


# -- a put's stores as its lookup's queries ------------------------------------------------


def _network(count: int, k: int = 5, **options: Any) -> tuple[list[Engine], Wire]:
    """``count`` engines, each with every other offered to its routing table."""
    engines = [engine(i, k=k, **options) for i in range(1, count + 1)]
    for made in engines:
        for other in engines:
            if other is not made:
                made.routing.seen(contact(other), 0.0)
    return engines, Wire(*engines)


def _tap(engines: list[Engine]) -> list[tuple[Engine, Message]]:
    """Every request the engines receive from now on, with its receiver, in order."""
    received: list[tuple[Engine, Message]] = []
    for made in engines:

        def request_received(
            message: Message, host: str, port: int, now: float, _made: Engine = made
        ) -> Any:
            received.append((_made, message))
            return Engine.request_received(_made, message, host, port, now)

        made.request_received = request_received  # type: ignore[method-assign,assignment]
    return received


def _kinds(
    received: list[tuple[Engine, Message]], order: list[Engine], ended: int
) -> list[tuple[int, str]]:
    """Each request as (its receiver's rank by distance to the key, its kind), a store that
    is also a query (received before the lookup ``ended``, the count received by then)
    written ``store+``."""
    return [
        (order.index(made), "store+" if m.TYPE == "store" and n < ended else m.TYPE)
        for n, (made, m) in enumerate(received)
    ]


def _lookup_end(put: ops.Publish, received: list[tuple[Engine, Message]]) -> list[int]:
    """Note, as the put's lookup ends, how many requests were received by then."""
    ended: list[int] = []
    child_ended = put.child_ended

    def noted(child: ops.Operation) -> None:
        ended.append(len(received))
        child_ended(child)

    put.child_ended = noted  # type: ignore[method-assign]
    return ended


def _put(
    a: Engine, wire: Wire, received: list[tuple[Engine, Message]], item: Item
) -> tuple[ops.Publish, int]:
    """``a`` puts ``item``; the put, and how many of the requests it set off (from an empty
    ``received``) were received by the end of its lookup."""
    received.clear()
    put = ops.Publish(item, 600.0)
    ended = _lookup_end(put, received)
    wire.start(a, put)
    return put, ended[0]


def test_a_puts_lookup_stores_on_the_nodes_within_reach_of_the_k_closest_as_it_goes() -> None:
    """A put's lookup sends its query to a node within the distance where the k closest are
    expected as the store itself, asking with ``closest`` for that node's closest contacts
    until an ``ok`` names k contacts, none new to the lookup (the later store queries do not
    ask); farther nodes get a ``find_node``, and the k closest not stored on by the lookup a
    plain store once it ends. The item lands on exactly the k closest, this node counted
    when it is one of them (its lookup then asks the k-th other node a find_node: that one is
    not among the k closest, and takes no copy)."""
    engines, wire = _network(30)
    a = engines[0]
    received = _tap(engines)
    reach = 2 * a.holders_within()  # type: ignore[operator]
    merged = nearer_self = unasked = 0
    for n in range(8):
        item = blob(b"item %d" % n)
        put, lookup_end = _put(a, wire, received, item)
        order = sorted(engines, key=lambda e: e.id ^ item.key)
        holders = {made.id for made in engines if made.storage.get(item.key) is not None}
        assert holders == {made.id for made in order[:5]}
        assert put.extra == 0
        kinds = _kinds(received, order, lookup_end)
        flags = [m.closest for _, m in received[:lookup_end] if isinstance(m, Store)]
        assert flags[0]  # the first store query asks for contacts
        assert flags == sorted(flags, reverse=True)  # and once one does not, none does
        unasked += flags.count(False)
        stored = [rank for rank, kind in kinds if kind == "store+"]
        later = [rank for rank, kind in kinds if kind == "store"]
        asked = [rank for rank, kind in kinds if kind == "find_node"]
        assert all(order[rank].id ^ item.key <= reach for rank in stored)
        assert not set(stored) & set(later)
        mine = order.index(a)
        assert sorted(stored + later + ([mine] if mine < 5 else [])) == [0, 1, 2, 3, 4]
        assert set(later) <= set(asked)  # asked a find_node first: outside the reach
        assert len(received) == len(stored) + len(asked) + len(later)
        merged += len(stored)
        if mine < 5:
            nearer_self += 1
            assert 5 in asked  # the k-th other node: asked, not stored on
    assert merged >= 20  # most of the 40 stores went as queries
    assert nearer_self  # and one item had this node among its k closest
    assert unasked  # and some of those queries no longer asked for contacts


#: Answers a hostile holder could give a store query with ``closest``, to switch a put's
#: asking off: from the asker's contact, its own and k.
HUSHES: dict[str, Callable[[Contact, Contact, int], tuple[Contact, ...]]] = {
    "only the asker": lambda asker, own, k: (asker,),
    "the asker k times": lambda asker, own, k: (asker,) * k,
    "itself k times": lambda asker, own, k: (own,) * k,
    "itself and the asker, k times": lambda asker, own, k: (own, asker) * k,
}


@pytest.mark.parametrize("hush", list(HUSHES))
def test_only_k_distinct_contacts_none_new_stop_the_store_queries_asking(hush: str) -> None:
    """Only an ``ok`` naming k distinct contacts, none new, and neither the answering node
    nor the asker, stops a put's store queries asking for contacts: holders that name only
    the asker (which the lookup never takes) or themselves, once or k times over, as a
    hostile node could to switch the asking off, leave every store query of the lookup
    asking."""
    engines, wire = _network(30)
    a = engines[0]
    received = _tap(engines)
    for made in engines[1:]:

        def short(
            message: Message,
            host: str,
            port: int,
            now: float,
            _answer: Any = made.request_received,
            _made: Engine = made,
        ) -> Any:
            reply, commands = _answer(message, host, port, now)
            if isinstance(message, Store) and message.closest:
                asker = Contact(message.sender, host, message.port)
                reply = replace(reply, nodes=HUSHES[hush](asker, contact(_made), a.k))
            return reply, commands

        made.request_received = short  # type: ignore[method-assign,assignment]
    asked = 0
    for n in range(4):
        put, lookup_end = _put(a, wire, received, blob(b"short %d" % n))
        assert put.error is None
        flags = [m.closest for _, m in received[:lookup_end] if isinstance(m, Store)]
        assert all(flags)  # no such answer stopped the asking
        asked += len(flags)
    assert asked >= 8  # (the same puts among honest holders stop asking: the test above)


@pytest.mark.parametrize(
    ("options", "publish"),
    [
        pytest.param({}, {"cas": 0}, id="compare-and-swap"),
        pytest.param({}, {"replica": True}, id="replication"),
        pytest.param({"paths": 2}, {}, id="disjoint-paths"),
    ],
)
def test_these_puts_store_only_once_their_lookup_has_ended(
    options: dict[str, Any], publish: dict[str, Any]
) -> None:
    """A compare-and-swap (which every node not holding the current version would refuse),
    a replication round's store (whose ``replica`` mark tells the receiver its round is
    done) and a lookup over disjoint paths (no one path sees all the candidates) ask with
    ``find_node`` and store after: k requests more."""
    engines, wire = _network(30, **options)
    received = _tap(engines)
    put = ops.Publish(blob(b"after"), 600.0, **publish)
    wire.start(engines[0], put)
    assert put.ended
    assert put.error is None
    kinds = {m.TYPE for _, m in received}
    assert kinds == {"find_node", "store"}
    assert not any(getattr(m, "closest", False) for _, m in received)
    assert sum(1 for _, m in received if m.TYPE == "store") == 5


def test_a_put_stores_after_its_lookup_while_the_table_is_too_small_to_measure() -> None:
    """With fewer than k live contacts there is no estimate of where the k closest lie: the
    put asks with find_node and stores after, as before."""
    engines, wire = _network(4)
    received = _tap(engines)
    assert engines[0].holders_within() is None
    wire.start(engines[0], ops.Publish(blob(b"small"), 600.0))
    assert sorted(m.TYPE for _, m in received) == ["find_node"] * 3 + ["store"] * 3
    assert all(made.storage.get(blob(b"small").key) is not None for made in engines)


def test_a_node_that_refuses_the_store_mid_lookup_is_asked_a_find_node_and_not_again() -> None:
    """A node holding a newer version refuses the put's store (an ``error``, not a failure):
    the lookup asks it a find_node next, so it learns the node's contacts all the same, and
    the put does not store there again; the refusal is among the put's reasons, and the
    others take the item."""
    engines, wire = _network(30)
    a, owner = engines[0], Identity.from_private_bytes(b"w" * 32)
    old, new = owner.sign("name", b"old", 1), owner.sign("name", b"new", 2)
    received = _tap(engines)
    order = sorted(engines, key=lambda e: e.id ^ old.key)
    reach = 2 * a.holders_within()  # type: ignore[operator]
    holder = next(e for e in order[:5] if e is not a and e.id ^ old.key <= reach)
    holder.store(new, 600.0, 0.0)
    put = ops.Publish(old, 600.0)
    wire.start(a, put)
    assert put.error is None
    assert [m.TYPE for made, m in received if made is holder] == ["store", "find_node"]
    assert next(getattr(m, "closest", None) for made, m in received if made is holder) is True
    assert holder.get(old.key, 1.0) == new  # kept its newer version
    assert any(reason.startswith(str(contact(holder))) for reason in put.reasons)
    assert int(ErrorCode.STALE_SEQUENCE) in put.codes
    assert holder.id not in put.result
    assert set(put.result) == {e.id for e in order[:5]} - {holder.id}


def test_a_node_that_answers_the_store_query_with_a_plain_ok_names_nobody() -> None:
    """A node that predates ``closest`` ignores it and answers a plain ``ok``: it took the
    item (it is not stored on again), and the lookup goes on from the others' contacts."""
    engines, wire = _network(30)
    a = engines[0]
    item = blob(b"old node")
    order = sorted(engines, key=lambda e: e.id ^ item.key)
    reach = 2 * a.holders_within()  # type: ignore[operator]
    old = next(e for e in order[:5] if e is not a and e.id ^ item.key <= reach)

    def plain(message: Message, host: str, port: int, now: float) -> Any:
        message = replace(message, closest=False) if isinstance(message, Store) else message
        return Engine.request_received(old, message, host, port, now)

    old.request_received = plain  # type: ignore[method-assign,assignment]
    put = ops.Publish(item, 600.0)
    wire.start(a, put)
    assert set(put.result) == {e.id for e in order[:5]}
    assert old.metrics.rpcs[("received", "store", "ok")] == 1  # once: not stored on again
    assert old.metrics.rpcs[("received", "find_node", "ok")] == 0


def test_a_slow_store_query_is_retried_as_a_find_node() -> None:
    """A store query that went slow is sent again as a find_node (the node may be gone, and
    a value is bigger than a query). When the node then refuses the store, nothing more is
    sent to it: the retry asks what the lookup needs."""
    for n in range(20):  # an item whose lookup starts with a store query
        engines, _ = _network(30)
        a = engines[0]
        put = ops.Publish(blob(b"slow %d" % n), 600.0)
        first = [c.request for c in a.start(put, 0.0) if isinstance(c, Send)]
        stores = [r for r in first if isinstance(r.message, Store)]
        if stores:
            break
    store = stores[0]
    assert isinstance(store.message, Store)
    assert store.message.closest
    assert store.contact is not None
    slow = a.next_timer()
    assert slow is not None
    retries = [c.request for c in a.timer_fired(slow) if isinstance(c, Send)]
    retry = next(r for r in retries if r.retry_of is store)
    assert retry.message.TYPE == "find_node"
    refusal = Error(
        rid=store.rid,
        sender=store.contact.id,
        port=store.contact.port,
        code=201,
        message="a newer version is held",
    )
    sent = a.reply_received(refusal, "127.0.0.1", slow)
    assert not [c for c in sent if isinstance(c, Send) and c.request.contact == store.contact]


def test_a_put_past_its_deadline_during_its_lookup_counts_the_nodes_it_stored_on() -> None:
    """A put stopped while its lookup is out counts the nodes that took the item from the
    lookup's store queries."""
    engines, wire = _network(30)
    a = engines[0]
    for n in range(20):  # an item whose lookup starts with store queries
        put = ops.Publish(blob(b"deadline %d" % n), 60.0)
        commands = a.start(put, 0.0, timeout=5.0)
        stores = [c for c in commands if isinstance(c, Send) and c.request.message.TYPE == "store"]
        if stores:
            break
        a.timer_fired(5.0)
    for command in stores:  # the stores are answered, the find_nodes (and what follows) not
        target = wire.engines[command.request.address]
        reply, _ = target.request_received(command.request.message, "127.0.0.1", a.port, 0.0)
        assert reply is not None
        a.reply_received(reply, "127.0.0.1", 0.0)
    a.timer_fired(5.0)
    assert isinstance(put.error, OperationTimeout)
    assert (put.error.answered, put.error.stored) == (len(stores), len(stores))
