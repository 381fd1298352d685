"""The asyncio adapter: the Twisted node awaited from asyncio code, on Twisted's asyncioreactor.

Its behaviour can only be tested on the ``--reactor=asyncio`` pass, where pytest-twisted's
reactor is an asyncioreactor and the asyncio loop is the reactor's. Each such test is a
pytest-twisted coroutine that runs an asyncio ``scenario`` through ``on_asyncio`` (a Twisted
coroutine cannot await asyncio futures). The default pass checks that the adapter refuses the
default reactor. A subprocess runs the adapter the way applications do, under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Protocol

from txdht import JoinError, NotFoundError, ProtocolError, PutError
from txdht.asyncio_adapter import (
    AsyncioNode,
    ReactorMismatch,
    _reactor_on,
    _wait,
    install_reactor,
)
from txdht.core.errors import OperationTimeout
from txdht.core.messages import Ping
from txdht.node import DHTProtocol, Node

ROOT = Path(__file__).resolve().parent.parent
#: The longest any one scenario may run.
SCENARIO_TIMEOUT = 30.0
#: A key under which nothing is ever stored.
MISSING = hashlib.sha512(b"nothing is stored under this").hexdigest()

_T = TypeVar("_T")


@pytest.fixture
def asyncio_pass(request: pytest.FixtureRequest) -> None:
    """Skip unless pytest-twisted runs the asyncio reactor (the loop the adapter needs)."""
    if request.config.getoption("reactor") != "asyncio":
        pytest.skip("the adapter runs on the asyncio reactor pass only")


@pytest.fixture
def default_pass(request: pytest.FixtureRequest) -> None:
    """Skip unless pytest-twisted runs the default reactor."""
    if request.config.getoption("reactor") != "default":
        pytest.skip("this checks the adapter against the default reactor")


def on_asyncio(scenario: Coroutine[Any, Any, _T]) -> Deferred[_T]:
    """Run an asyncio coroutine as a Task on the reactor's loop, bounded by SCENARIO_TIMEOUT."""
    return Deferred.fromFuture(asyncio.ensure_future(asyncio.wait_for(scenario, SCENARIO_TIMEOUT)))


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, polling; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "the condition did not become true in time"
        await asyncio.sleep(0.01)


def pending(node: AsyncioNode) -> int:
    """How many requests of ``node`` await a reply."""
    return len(node.node.engine.pending())


def active_calls(reactor: Any) -> list[Any]:
    """The reactor's delayed calls that are still due to run."""
    return [call for call in reactor.getDelayedCalls() if call.active()]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def started(count: int, **options: Any) -> list[AsyncioNode]:
    """``count`` started adapter nodes on 127.0.0.1, not joined."""
    nodes = [AsyncioNode(rng=random.Random(i), **options) for i in range(count)]
    for node in nodes:
        await node.start()
    return nodes


async def stop_all(nodes: list[AsyncioNode]) -> None:
    """Stop every node (callers first, then the peers they were connected to)."""
    for node in nodes:
        await node.stop()


def make_silent(node: AsyncioNode) -> None:
    """From now on ``node`` accepts connections and never answers on them."""

    def quiet(addr: object) -> DHTProtocol:
        return cast(DHTProtocol, Protocol())  # a plain Protocol drops what it reads

    node.node.factory.buildProtocol = quiet  # type: ignore[method-assign]


async def silence(peer: AsyncioNode, caller: AsyncioNode) -> None:
    """Make ``peer`` silent and drop its connections, so ``caller`` reconnects to silence."""
    make_silent(peer)
    loop = asyncio.get_running_loop()
    links = list(peer.node.streams.links)
    closing = [link.handle.closed.asFuture(loop) for link in links]
    for link in links:
        link.handle.transport.loseConnection()
    await asyncio.gather(*closing)
    await until(lambda: not caller.node.streams.links)


# -- install_reactor ------------------------------------------------------------------------------


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_install_reactor_returns_the_running_reactor(reactor: Any) -> None:
    """On the reactor's own loop, install_reactor returns the installed reactor."""

    async def scenario() -> None:
        assert install_reactor() is reactor
        assert install_reactor(asyncio.get_running_loop()) is reactor

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
def test_install_reactor_refuses_another_loop(reactor: Any) -> None:
    """An asyncio reactor on another loop than the given one raises ReactorMismatch."""
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ReactorMismatch, match="runs on another event loop"):
            install_reactor(loop)
    finally:
        loop.close()


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_a_reactor_is_installed_on_the_loop_when_none_is(reactor: Any) -> None:
    """With no reactor installed yet, the asyncio reactor is installed on the loop and returned."""
    # pytest-twisted always installs its reactor first: pretend there was none until install().
    installed: list[object] = []
    installs: list[asyncio.AbstractEventLoop] = []

    def install(loop: asyncio.AbstractEventLoop) -> None:
        installs.append(loop)
        installed.append(reactor)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert _reactor_on(loop, lambda: installed[0] if installed else None, install) is reactor
        assert installs == [loop]

    await on_asyncio(scenario())


@pytest.mark.usefixtures("default_pass")
def test_another_reactor_is_refused() -> None:
    """With the default reactor installed, install_reactor and start raise ReactorMismatch."""
    errors: list[ReactorMismatch] = []

    async def check() -> None:
        with pytest.raises(ReactorMismatch) as installing:
            install_reactor()
        with pytest.raises(ReactorMismatch) as starting:
            await AsyncioNode().start()
        errors.extend([installing.value, starting.value])

    # The default pass runs no asyncio loop; make one in a thread of its own, since the main
    # thread's loop (the reactor's, on the asyncio pass) must not be nested in.
    thread = threading.Thread(target=asyncio.run, args=(asyncio.wait_for(check(), 10),))
    thread.start()
    thread.join(SCENARIO_TIMEOUT)
    assert not thread.is_alive()
    assert len(errors) == 2
    for error in errors:
        assert "Reactor is installed, not Twisted's asyncioreactor" in str(error)
        assert "before anything imports twisted.internet.reactor" in str(error)


# -- the node -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_five_nodes_join_put_and_get(reactor: Any) -> None:
    """Five adapter nodes join; signed items and blobs put on one are read from the others."""

    async def scenario() -> None:
        nodes = await started(5)
        try:
            for node in nodes[1:]:
                assert await node.join([("127.0.0.1", nodes[0].port)]) >= 1
            assert len({node.id for node in nodes}) == 5
            assert all(len(node.id) == 128 and node.id == node.node.id for node in nodes)
            assert all(isinstance(node.node, Node) for node in nodes)
            key = await nodes[1].put("greeting", b"hello")
            blob_key = await nodes[2].put_blob(b"a blob", ttl=60)
            assert blob_key == hashlib.sha512(b"a blob").hexdigest()
            for node in nodes:
                assert await node.get(key) == b"hello"
                assert await node.get(blob_key) == b"a blob"
            assert await nodes[1].put("greeting", b"hello again", ttl=60) == key
            assert await nodes[4].get(key) == b"hello again"
        finally:
            await stop_all(nodes)

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_txdht_errors_pass_through(reactor: Any) -> None:
    """NotFoundError, ValueError for a bad key and ProtocolError for a big value pass unchanged."""

    async def scenario() -> None:
        nodes = await started(2, max_value=10)
        try:
            await nodes[1].join([("127.0.0.1", nodes[0].port)])
            with pytest.raises(NotFoundError, match="no value found"):
                await nodes[1].get(MISSING)
            with pytest.raises(ValueError, match="lowercase hex"):
                await nodes[1].get("not a key")
            with pytest.raises(ProtocolError, match="over the 10 accepted"):
                await nodes[1].put_blob(b"eleven byte")
            # The caller's mistakes raise at the call, as on the other nodes.
            with pytest.raises(TypeError, match="a value is bytes, not str"):
                await nodes[1].put("n", "text")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="a ttl is above 0"):
                await nodes[1].put_blob(b"v", ttl=0)
            with pytest.raises(TypeError, match="seeds are a list of"):
                await nodes[1].join("127.0.0.1:4000")  # type: ignore[arg-type]
            key = await nodes[1].put("counter", b"1", cas=0)
            with pytest.raises(PutError, match="expected sequence 0"):
                await nodes[1].put("counter", b"2", cas=0)
            assert await nodes[0].get(key) == b"1"
        finally:
            await stop_all(nodes)

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_join_fails_when_the_seed_is_not_listening(reactor: Any) -> None:
    """Joining through a port nobody listens on raises JoinError."""

    async def scenario() -> None:
        (node,) = await started(1)
        try:
            with pytest.raises(JoinError, match="none of the 1 seed nodes answered"):
                await node.join([("127.0.0.1", free_port())])
        finally:
            await node.stop()

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_join_fails_when_the_seed_is_silent(reactor: Any) -> None:
    """Joining through a seed that accepts and never answers raises JoinError after the timeout."""

    async def scenario() -> None:
        seed, caller = AsyncioNode(), AsyncioNode(rpc_timeout=0.3)
        await seed.start()
        await caller.start()
        make_silent(seed)
        try:
            with pytest.raises(JoinError):
                await caller.join([("127.0.0.1", seed.port)])
        finally:
            await stop_all([caller, seed])

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_join_resolves_host_names(reactor: Any) -> None:
    """A seed given by host name is resolved on the loop; one that cannot be is skipped."""

    async def scenario() -> None:
        nodes = await started(2)
        try:
            unresolvable = ("x" * 64 + ".invalid", nodes[0].port)
            with pytest.raises(JoinError, match="none of the 1 seed nodes could be resolved: x"):
                await nodes[1].join([unresolvable])
            assert await nodes[1].join([unresolvable, ("localhost", nodes[0].port)]) == 1
            assert [c.host for c in nodes[1].node.engine.routing.contacts()] == ["127.0.0.1"]
        finally:
            await stop_all(nodes)

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_ipv6(reactor: Any) -> None:
    """Nodes listen on an IPv6 address (escaped in the endpoint) and join through it."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def scenario() -> None:
        nodes = [AsyncioNode(), AsyncioNode()]
        for node in nodes:
            await node.start("::1")
        try:
            assert await nodes[1].join([("::1", nodes[0].port)]) == 1
            key = await nodes[0].put_blob(b"over IPv6")
            assert await nodes[1].get(key) == b"over IPv6"
        finally:
            await stop_all(nodes)

    await on_asyncio(scenario())


# -- timeouts and cancellation --------------------------------------------------------------------


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_a_get_through_a_silent_peer_is_not_found(reactor: Any) -> None:
    """A get whose only peer went silent gives up after the RPC timeout with NotFoundError."""

    async def scenario() -> None:
        peer, caller = AsyncioNode(), AsyncioNode(rpc_timeout=0.3)
        await peer.start()
        await caller.start()
        try:
            await caller.join([("127.0.0.1", peer.port)])
            await silence(peer, caller)
            with pytest.raises(NotFoundError):
                await caller.get(MISSING)
        finally:
            await stop_all([caller, peer])

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_twisted_timeouts_become_asyncio_timeout_error(reactor: Any) -> None:
    """A Twisted request to a silent peer fails, once awaited from asyncio, with asyncio's
    TimeoutError (on Python 3.10 not the builtin one)."""
    # The node's own operations fold request timeouts into JoinError or NotFoundError, so the
    # boundary is tested on a raw request of the underlying Twisted node.

    async def scenario() -> None:
        peer, caller = AsyncioNode(), AsyncioNode(rpc_timeout=0.3)
        await peer.start()
        await caller.start()
        make_silent(peer)
        try:
            with pytest.raises(asyncio.TimeoutError) as raised:
                await _wait(caller.node.call(("127.0.0.1", peer.port), Ping))
            assert raised.type is asyncio.TimeoutError
            assert isinstance(raised.value.__cause__, defer.TimeoutError)
            assert not isinstance(raised.value, defer.TimeoutError)
            assert not pending(caller)
        finally:
            await stop_all([caller, peer])

    await on_asyncio(scenario())


#: Every public operation that sends requests, as started by ``caller`` with ``peer`` known.
OPERATIONS: dict[str, Callable[[AsyncioNode, AsyncioNode], Coroutine[Any, Any, object]]] = {
    "get": lambda caller, peer: caller.get(MISSING),
    "put": lambda caller, peer: caller.put("name", b"value"),
    "put_blob": lambda caller, peer: caller.put_blob(b"value"),
    "join": lambda caller, peer: caller.join([("127.0.0.1", peer.port)]),
}


@contextlib.asynccontextmanager
async def stalled(operation: str) -> AsyncIterator[tuple[AsyncioNode, Coroutine[Any, Any, object]]]:
    """A caller and ``operation`` of it, not yet started, once its one contact is silent; both
    nodes are stopped at the end."""
    peer, caller = AsyncioNode(), AsyncioNode(rpc_timeout=20)
    await peer.start()
    await caller.start()
    try:
        await caller.join([("127.0.0.1", peer.port)])
        await silence(peer, caller)
        yield caller, OPERATIONS[operation](caller, peer)
    finally:
        await stop_all([caller, peer])


def assert_nothing_left(caller: AsyncioNode, reactor: Any) -> None:
    """No request of ``caller`` pending, no operation running, no timer left."""
    assert not pending(caller)
    assert not caller.node.engine.running()
    assert not active_calls(reactor)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_cancelling_the_task_cancels_the_operation(operation: str, reactor: Any) -> None:
    """Cancelling a task awaiting an operation on a silent peer cancels its requests and timers."""

    async def scenario() -> None:
        async with stalled(operation) as (caller, work):
            task = asyncio.ensure_future(work)
            await until(lambda: pending(caller) > 0)
            assert active_calls(reactor)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert_nothing_left(caller, reactor)

    await on_asyncio(scenario())


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_a_deadline_raises_asyncio_timeout_error(operation: str, reactor: Any) -> None:
    """An operation past its asyncio.wait_for deadline raises asyncio.TimeoutError, cancelled."""

    async def scenario() -> None:
        async with stalled(operation) as (caller, work):
            started = asyncio.get_running_loop().time()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(work, 0.05)  # before its queries go slow (0.1 s)
            assert asyncio.get_running_loop().time() - started < 5
            assert_nothing_left(caller, reactor)

    await on_asyncio(scenario())


TIMED: dict[str, Callable[[AsyncioNode, AsyncioNode], Coroutine[Any, Any, object]]] = {
    "get": lambda caller, peer: caller.get(MISSING, timeout=0.05),
    "put": lambda caller, peer: caller.put("name", b"value", timeout=0.05),
    "put_blob": lambda caller, peer: caller.put_blob(b"value", timeout=0.05),
    "join": lambda caller, peer: caller.join([("127.0.0.1", peer.port)], timeout=0.05),
}


@pytest.mark.parametrize("operation", TIMED)
@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_an_operation_given_a_timeout_raises_operation_timeout(
    operation: str, reactor: Any
) -> None:
    """An operation given a ``timeout`` that it misses raises the core's OperationTimeout (a
    TimeoutError, saying how far it got) through the adapter, and leaves nothing behind."""

    async def scenario() -> None:
        async with stalled(operation) as (caller, work):
            work.close()  # the untimed one is not run
            with pytest.raises(OperationTimeout, match=r"did not finish within 0\.05 s"):
                await TIMED[operation](caller, caller)
            assert_nothing_left(caller, reactor)

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_stopping_cancels_running_operations(reactor: Any) -> None:
    """A get still running when its node stops fails with asyncio.CancelledError."""

    async def scenario() -> None:
        peer, caller = AsyncioNode(), AsyncioNode(rpc_timeout=20)
        await peer.start()
        await caller.start()
        try:
            await caller.join([("127.0.0.1", peer.port)])
            await silence(peer, caller)
            task = asyncio.ensure_future(caller.get(MISSING))
            await until(lambda: pending(caller) > 0)
            await caller.stop()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not active_calls(reactor)
        finally:
            await stop_all([caller, peer])

    await on_asyncio(scenario())


# -- life cycle -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_async_with_starts_and_stops(reactor: Any) -> None:
    """``async with`` listens on a free port and closes it on exit; the node can start again."""

    async def scenario() -> None:
        node = AsyncioNode()
        async with node as entered:
            assert entered is node
            port = node.port
            assert port > 0
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
        with pytest.raises(RuntimeError, match=r"call start\(\) first"):
            _ = node.port
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
        async with node:
            assert node.port > 0

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_start_on_a_busy_port_fails(reactor: Any) -> None:
    """Starting on a port already listened on raises CannotListenError; the node stays stopped."""

    async def scenario() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            node = AsyncioNode()
            with pytest.raises(CannotListenError):
                await node.start(port=busy.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"call start\(\) first"):
            _ = node.port

    await on_asyncio(scenario())


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_methods_need_start(reactor: Any) -> None:
    """Before start, every method and property raises RuntimeError; stop does nothing."""

    async def scenario() -> None:
        node = AsyncioNode()
        calls: list[Callable[[], Coroutine[Any, Any, object]]] = [
            lambda: node.join([("127.0.0.1", 1)]),
            lambda: node.put("name", b"value"),
            lambda: node.put_blob(b"value"),
            lambda: node.get(MISSING),
        ]
        for call in calls:
            with pytest.raises(RuntimeError, match=r"call start\(\) first"):
                await call()
        for name in ("id", "port", "node"):
            with pytest.raises(RuntimeError, match=r"call start\(\) first"):
                getattr(node, name)
        await node.stop()
        await node.start()
        try:
            with pytest.raises(RuntimeError, match="already started"):
                await node.start()
        finally:
            await node.stop()

    await on_asyncio(scenario())


# -- in an application ----------------------------------------------------------------------------

PROGRAM = """
import asyncio, sys
from txdht.asyncio_adapter import AsyncioNode

async def main():
    assert "twisted.internet.reactor" not in sys.modules
    async with AsyncioNode() as a, AsyncioNode() as b:
        await b.join([("localhost", a.port)])
        key = await b.put("greeting", b"hello from asyncio.run")
        print((await a.get(key)).decode())
    from twisted.internet import reactor
    assert reactor._asyncioEventloop is asyncio.get_running_loop()

asyncio.run(main())
"""


def test_an_asyncio_program_uses_the_node() -> None:
    """A fresh asyncio.run program installs the reactor on its loop, joins, puts and gets."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from asyncio.run\n"


@pytest.mark.usefixtures("asyncio_pass")
@pytest_twisted.ensureDeferred
async def test_listen_gives_each_new_version_until_cancelled(reactor: Any) -> None:
    """``async for notice in node.listen(key)`` gives each new version once, in order; after
    cancel() the iteration ends."""

    async def scenario() -> None:
        nodes = await started(4, network="adapted")
        try:
            for node in nodes[1:]:
                await node.join([("127.0.0.1", nodes[0].port)])
            key = await nodes[1].put("news", b"v1")
            got: list[tuple[int, bytes | None]] = []
            async with nodes[2].listen(key) as listening:
                async for notice in listening:
                    got.append((notice.seq, notice.value))
                    if notice.seq == 1:
                        await nodes[1].put("news", b"v2")
                    else:
                        break
            assert got == [(1, b"v1"), (2, b"v2")]
            assert [n async for n in listening] == []
            assert [n async for n in listening] == []
            assert nodes[2].node.engine.network == "adapted"
        finally:
            await stop_all(nodes)

    await on_asyncio(scenario())
