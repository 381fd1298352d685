"""The node service and its housekeeping, on the in-memory network and a Clock (48 h in seconds)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet.error import CannotListenError
from twisted.logger import LogEvent, capturedLogs, eventAsText, formatEvent

from txdht.core import schedule
from txdht.core.errors import NotFoundError
from txdht.core.ids import id_from_hex
from txdht.core.items import Identity, blob
from txdht.core.messages import FindNode, Message
from txdht.core.schedule import REPLICA_GRACE, Intervals
from txdht.node import Node
from txdht.service import DHTService
from txdht.testing import MemoryNetwork

HOUR = 3600.0


def start(net: MemoryNetwork, count: int, **node_options: object) -> list[DHTService]:
    """``count`` node services on ``net``, each joined through the first, all ready."""
    services: list[DHTService] = []
    for _ in range(count):
        node = net.add_node(**node_options)
        seeds = [("127.0.0.1", services[0].node.port)] if services else []
        service = DHTService(node, seeds=seeds)
        service.startService()
        net.run(service.when_ready())
        services.append(service)
    return services


def holders(services: list[DHTService], key: str, now: float) -> int:
    """How many of the services' nodes hold an unexpired copy of ``key``."""
    return sum(1 for s in services if s.node.engine.get(id_from_hex(key), now) is not None)


def test_first_node_says_it_starts_a_network() -> None:
    """A node with no seeds and no saved contacts logs that it is the first of a new network."""
    net = MemoryNetwork()
    with capturedLogs() as events:
        (service,) = start(net, 1)
    assert service.ready
    assert any("first node of a new network" in formatEvent(e) for e in events)
    assert net.run(service.when_ready()) is None


def test_the_first_node_joins_through_the_first_that_contact_it() -> None:
    """The first node of a network checks after 1 s, 2 s, 4 s... whether anyone contacted it,
    then joins through them and saves its contacts (so a restart after a crash rejoins)."""
    net = MemoryNetwork()
    (first,) = start(net, 1)
    net.advance(1)
    net.advance(2)  # the checks at 1 s and 3 s found nobody; the next is at 7 s
    second = DHTService(net.add_node(), seeds=[("127.0.0.1", first.node.port)])
    second.startService()
    net.run(second.when_ready())
    assert second.node.engine.id in first.node.engine.routing
    assert first.node.engine.storage.contacts() == []  # it only answered so far
    with capturedLogs() as events:
        net.advance(4)
    assert any("joined the network" in formatEvent(e) for e in events)
    assert [c.id for c in first.node.engine.storage.contacts()] == [second.node.engine.id]
    net.advance(3600)
    for service in (first, second):
        net.run(service.stopService())
    assert net.clock.getDelayedCalls() == []


def test_items_outlive_their_ttl_while_the_publisher_republishes() -> None:
    """Over 48 simulated hours, items put with the default 24 h ttl stay readable everywhere."""
    net = MemoryNetwork()
    services = start(net, 15, k=5)
    keys = [net.run(services[i].node.put(f"name-{i}", b"value %d" % i)) for i in range(5)]
    blob_key = net.run(services[7].node.put_blob(b"a blob"))
    for _hour in range(48):
        net.advance(HOUR)
    now = net.clock.seconds()
    assert now >= 48 * HOUR
    for i, key in enumerate(keys):
        assert holders(services, key, now) >= 5
        assert net.run(services[-1 - i].node.get(key)) == b"value %d" % i
    assert net.run(services[0].node.get(blob_key)) == b"a blob"


def test_items_of_a_stopped_publisher_expire() -> None:
    """An item whose publisher has stopped is dropped everywhere once its ttl has passed."""
    net = MemoryNetwork()
    services = start(net, 10, k=4)
    key = net.run(services[3].node.put("short", b"lived", ttl=2 * HOUR))
    services[3].stopService()
    net.kill(services[3].node)
    net.advance(HOUR)
    now = net.clock.seconds()
    assert holders(services, key, now) >= 3
    net.advance(HOUR + 61)
    assert sum(s.node.engine.storage.count() for s in services) == 0
    with pytest.raises(NotFoundError):
        net.run(services[0].node.get(key))


def test_replication_restores_copies_after_holders_die() -> None:
    """When holders die right after a put, replication puts the item back on k live nodes:
    the nearest holder at its first round, or, if it is one of the dead and no node noticed
    (nobody asked the dead anything), the other holders an interval after the put."""
    net = MemoryNetwork()
    services = start(net, 16, k=4)
    key = net.run(services[0].node.put_blob(b"replicate me"))
    now = net.clock.seconds()
    dead = [s for s in services[1:] if s.node.engine.get(id_from_hex(key), now)][:2]
    for service in dead:
        service.stopService()
        net.kill(service.node)
    alive = [s for s in services if s not in dead]
    assert holders(alive, key, now) <= 2 + 1
    net.advance(2 * HOUR * (1 + REPLICA_GRACE) + 1)
    assert holders(alive, key, net.clock.seconds()) >= 4


def test_a_new_node_closest_to_a_key_gets_a_copy_at_once() -> None:
    """A node joining right next to a stored key is handed a copy when it is first seen."""
    net = MemoryNetwork()
    services = start(net, 8, k=3)
    newcomer = Identity.from_private_bytes(b"n" * 32)
    ids = [s.node.engine.id for s in services]
    value = next(
        v
        for v in (b"item %d" % i for i in range(10_000))
        if all(newcomer.node_id ^ blob(v).key < i ^ blob(v).key for i in ids)
    )
    key = net.run(services[0].node.put_blob(value))
    node = net.add_node(k=3, identity=newcomer)
    service = DHTService(node, seeds=[("127.0.0.1", services[0].node.port)])
    service.startService()
    net.run(service.when_ready())
    net.flush()
    assert node.engine.get(id_from_hex(key), net.clock.seconds()) == blob(value)


def test_refresh_looks_up_idle_buckets() -> None:
    """After an hour without lookups, the refresh job looks up a random id in idle buckets."""
    net = MemoryNetwork()
    services = start(net, 6)
    node = services[-1].node
    before = node.metrics.lookup_count
    net.advance(HOUR + 600)
    assert node.metrics.lookup_count > before
    assert node.engine.routing.stale_buckets(net.clock.seconds(), HOUR) == []


def test_node_whose_seeds_were_down_joins_at_a_later_refresh() -> None:
    """A node started while its seed was unreachable joins once the seed is up."""
    net = MemoryNetwork()
    late = net.add_node()
    seed_port = 4001
    service = DHTService(late, seeds=[("127.0.0.1", seed_port)])
    with capturedLogs() as events:
        service.startService()
        net.run(service.when_ready())
    assert any("could not join yet" in formatEvent(e) for e in events)
    assert len(late.engine.routing) == 0
    seed = net.add_node()
    assert seed.port == seed_port
    net.advance(600)
    assert seed.engine.id in late.engine.routing


#: Each housekeeping job: the engine method it calls first, and the interval the tests give it.
JOBS = {
    "refresh": ("refresh_targets", 10.0),
    "replicate": ("replication_jobs", 20.0),
    "republish": ("republish_jobs", 30.0),
    "expire": ("expire", 40.0),
    "save": ("save_contacts", 50.0),
}


def test_the_jobs_tested_are_every_job_of_the_service() -> None:
    """The failure test below covers every housekeeping job the node's life has."""
    assert tuple(JOBS) == schedule.JOBS
    assert all(getattr(Intervals(), job) > 0 for job in JOBS)


@pytest.mark.parametrize("job", list(JOBS))
def test_a_failing_job_is_logged_and_runs_again(
    job: str, fail_on_logged_errors: list[LogEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A housekeeping job that fails (here: its first step raises) is logged with its name and
    its error, and runs again at its next interval; the node goes on."""
    net = MemoryNetwork()
    intervals = Intervals(**{name: step for name, (_, step) in JOBS.items()})
    service = DHTService(net.add_node(), intervals=intervals)
    service.startService()
    net.run(service.when_ready())
    method, step = JOBS[job]
    engine = service.node.engine
    real = getattr(engine, method)
    calls: list[float] = []

    def flaky(*args: object, **options: object) -> object:
        calls.append(net.clock.seconds())
        if len(calls) == 1:
            raise RuntimeError("disk on fire")
        return real(*args, **options)

    monkeypatch.setattr(engine, method, flaky)
    with capturedLogs() as events:
        for _ in range(2 * int(step)):
            net.advance(1.0)
    # Replication first runs at a random point of its interval; the others after a whole one.
    first = calls[0] if job == "replicate" else step
    assert 0 < first <= step
    assert calls[:2] == [first, first + step]
    (logged,) = [e for e in fail_on_logged_errors if "housekeeping job" in formatEvent(e)]
    assert formatEvent(logged) == f"housekeeping job {job} failed: RuntimeError('disk on fire')"
    assert logged["job"] == job
    assert logged["log_failure"].check(RuntimeError)
    assert "RuntimeError: disk on fire" in eventAsText(logged)
    assert [e["job"] for e in events if "done" in e["log_format"] and e.get("job") == job]
    fail_on_logged_errors.clear()
    net.run(service.stopService())
    assert net.clock.getDelayedCalls() == []


def test_a_bug_in_an_operation_fails_it_and_the_node_goes_on(
    fail_on_logged_errors: list[LogEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception inside an operation's step (a bug) fails that operation with it, is
    logged, and leaves the node serving: the next operation works."""
    net = MemoryNetwork()
    nodes = net.create(5)
    engine = nodes[0].engine
    real = engine.placement
    monkeypatch.setattr(engine, "placement", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        net.run(nodes[0].put("n", b"v"))
    (logged,) = fail_on_logged_errors
    assert formatEvent(logged).startswith("Publish failed: ZeroDivisionError")
    fail_on_logged_errors.clear()
    monkeypatch.setattr(engine, "placement", real)
    key = net.run(nodes[0].put("n", b"v"))
    assert net.run(nodes[4].get(key)) == b"v"


def test_stop_saves_contacts_and_a_restart_rejoins_without_seeds() -> None:
    """stopService saves the contacts; a new service on the same store rejoins through them."""
    net = MemoryNetwork()
    services = start(net, 5)
    leaving = services[-1]
    net.run(leaving.stopService())
    saved = leaving.node.engine.storage.contacts()
    assert len(saved) == 4
    again = Node(
        net.clock,
        identity=leaving.node.engine.identity,
        storage=leaving.node.engine.storage,
        connect=net._connect,
    )
    again.engine.port = 4100
    net._listeners[("127.0.0.1", 4100)] = again
    service = DHTService(again)
    with capturedLogs() as events:
        service.startService()
        net.run(service.when_ready())
    assert len(again.engine.routing) == 4
    assert any("joined the network" in formatEvent(e) for e in events)


def restarted(net: MemoryNetwork, old: Node, port: int) -> Node:
    """``old`` started again on ``port`` with its identity and store (as after a kill)."""
    node = Node(
        net.clock, identity=old.engine.identity, storage=old.engine.storage, connect=net._connect
    )
    node.engine.port = port
    net._listeners[("127.0.0.1", port)] = node
    return node


def test_a_restart_whose_saved_contacts_are_down_retries_until_one_is_back() -> None:
    """Nodes restarted together find each other: when every saved contact is down, the join is
    retried after 1 s, 2 s, 4 s..., and succeeds as soon as one of them is back."""
    net = MemoryNetwork()
    first, second = start(net, 2)
    net.run(second.stopService())
    assert [c.id for c in second.node.engine.storage.contacts()] == [first.node.engine.id]
    net.kill(first.node)
    again = restarted(net, second.node, 4100)
    service = DHTService(again)
    with capturedLogs() as events:
        service.startService()
        net.run(service.when_ready())
        net.advance(1)
        net.advance(2)
    waits = [e["delay"] for e in events if "could not join yet" in formatEvent(e)]
    assert waits == [1.0, 2.0, 4.0]
    assert len(again.engine.routing) == 0
    back = restarted(net, first.node, first.node.port)
    with capturedLogs() as events:
        net.advance(4)
    assert back.engine.id in again.engine.routing
    assert any("joined the network" in formatEvent(e) for e in events)
    with capturedLogs() as events:
        net.advance(3600)
    assert not any("could not join yet" in formatEvent(e) for e in events)


def test_retries_back_off_up_to_the_refresh_interval_and_stop_cancels_them() -> None:
    """With seeds that never come up, retries wait twice as long each time, never longer than
    the refresh interval; stopping the service leaves no retry behind."""
    net = MemoryNetwork()
    node = net.add_node()
    service = DHTService(node, seeds=[("127.0.0.1", 1)], intervals=Intervals(refresh=60.0))
    with capturedLogs() as events:
        service.startService()
        net.run(service.when_ready())
        for _ in range(8):
            net.advance(60)
    # (The refresh job also tries when the table is empty, and logs the time left to wait.)
    waits = {e["delay"] for e in events if "could not join yet" in formatEvent(e)}
    assert {1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0} <= waits
    assert max(waits) == 60.0
    net.run(service.stopService())
    assert net.clock.getDelayedCalls() == []


def test_stopping_during_the_join_cancels_it_quietly() -> None:
    """Stopping the service while it is still joining cancels the join without an error."""
    net = MemoryNetwork()
    seed = net.add_node()
    net.silence(seed)
    node = net.add_node()
    service = DHTService(node, seeds=[("127.0.0.1", seed.port)])
    service.startService()
    assert not service.ready
    net.run(service.stopService())
    assert net.clock.getDelayedCalls() == []


def test_unexpected_join_failure_is_logged_and_retried(
    fail_on_logged_errors: list[LogEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure other than JoinError while joining (a bug) is logged loudly, and the join is
    tried again as after any failed join."""
    net = MemoryNetwork()
    seed, node = net.add_node(), net.add_node()
    real = node.engine.challenge
    monkeypatch.setattr(node.engine, "challenge", lambda to: 1 / 0)
    service = DHTService(node, seeds=[("127.0.0.1", seed.port)])
    service.startService()
    net.run(service.when_ready())
    (logged,) = fail_on_logged_errors
    assert formatEvent(logged) == "Join failed: ZeroDivisionError('division by zero')"
    fail_on_logged_errors.clear()
    monkeypatch.setattr(node.engine, "challenge", real)
    net.advance(1.0)
    assert seed.engine.id in node.engine.routing


def test_intervals_have_the_documented_defaults() -> None:
    """Refresh 10 min, replicate 1 h, republish 12 h, expire 1 min, save 5 min."""
    assert Intervals() == Intervals(600.0, HOUR, 12 * HOUR, 60.0, 300.0, HOUR)


def test_a_busy_port_fails_the_start_at_once(reactor: object) -> None:
    """Starting on a port already in use raises right away (twistd then exits with the reason)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = DHTService(Node(reactor), endpoint=f"tcp:{port}:interface=127.0.0.1")
        with pytest.raises(CannotListenError):
            service.startService()


def test_stopping_during_the_first_lookup_is_quiet() -> None:
    """Stopping while the join's lookup is still running cancels it without logging an error."""
    net = MemoryNetwork()
    seed = net.add_node()
    node = net.add_node()
    real = seed.engine.request_received

    def no_find_node(
        request: Message, host: str, port: int, now: float, link: object = None
    ) -> Any:
        reply, commands = real(request, host, port, now, link)
        return (None if isinstance(request, FindNode) else reply), commands

    seed.engine.request_received = no_find_node  # type: ignore[method-assign]
    service = DHTService(node, seeds=[("127.0.0.1", seed.port)])
    service.startService()
    net.flush()
    assert [r.message.TYPE for r in node.engine.pending()] == ["find_node"]
    net.run(service.stopService())
    assert not service.ready
    assert not node.engine.pending()
    assert net.clock.getDelayedCalls() == []


def test_housekeeping_lets_go_of_the_timers_that_fired() -> None:
    """The housekeeping runs for the node's life, arming one timer after another: it holds
    only those still due (it held every one: 60 more an hour for the expire pass alone)."""
    net = MemoryNetwork()
    services = start(net, 3)
    for _hour in range(6):
        net.advance(HOUR)
    for service in services:
        (housekeeping,) = [
            op for op in service.node.engine._running if isinstance(op, schedule.Service)
        ]
        assert 0 < len(housekeeping.timers) <= len(schedule.JOBS)
        assert not [t for t in housekeeping.timers if t.cancelled]
