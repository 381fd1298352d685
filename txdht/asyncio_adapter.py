"""The Twisted node exposed to asyncio applications, on Twisted's asyncioreactor.

Use this when an asyncio application wants the Twisted ``txdht.node.Node`` itself (to share one
process, and one event loop, with Twisted code, or to use the Twisted node's storage and
housekeeping) rather than the native asyncio twin. ``AsyncioNode`` is a thin facade: each method
calls the Twisted node and awaits its Deferred through ``Deferred.asFuture``.

asyncio owns the loop. ``AsyncioNode.start()`` (or ``install_reactor()``) installs
``twisted.internet.asyncioreactor`` on the *running* asyncio loop, so it must run inside
``asyncio.run()`` and **before anything imports** ``twisted.internet.reactor``: such an import
installs Twisted's default reactor, and the adapter then raises ``ReactorMismatch``. A reactor
installed at import time, before ``asyncio.run()`` created its loop, would run on another loop
and never fire; that is refused too. The reactor is never run nor stopped (``reactor.stop()``
would stop the asyncio loop): its timers and sockets simply live on the asyncio loop, and
``AsyncioNode.stop()`` closes what the node opened. An application whose reactor already runs on
the same loop (``twistd --reactor=asyncio``, ``task.react`` after ``asyncioreactor.install()``)
can use the adapter as well.

Because the reactor never runs, its thread pool never starts and Twisted cannot resolve host
names. ``AsyncioNode.join`` therefore resolves seed host names itself, with the loop's
``getaddrinfo``, before handing IPv4 addresses to the node.

Errors cross the boundary as asyncio code expects them: Twisted's ``defer.TimeoutError``
becomes ``TimeoutError`` (which ``asyncio.TimeoutError`` is) and ``defer.CancelledError``
becomes ``asyncio.CancelledError``; txdht's own errors (``NotFoundError``, ``JoinError``,
``PutError``, ``RemoteError``, ``ProtocolError``, ``ValueError`` for a bad key) pass through
unchanged. Cancelling the task that awaits a method cancels the Deferred beneath it, which
stops its requests. For a deadline, use ``asyncio.timeout()`` (or ``asyncio.wait_for()``)
around the call; either raises ``TimeoutError`` and cancels the operation.

Example::

    import asyncio

    from txdht.asyncio_adapter import AsyncioNode

    async def main() -> None:
        async with AsyncioNode() as node:
            await node.join([("192.0.2.10", 4000)])
            key = await node.put("greeting", b"hello")
            print(await node.get(key))

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypedDict, TypeVar

from twisted.internet import asyncioreactor, defer
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txdht.core.arguments import check_seeds
from txdht.core.errors import JoinError
from txdht.core.items import DEFAULT_TTL
from txdht.node import Node

if TYPE_CHECKING:
    import random
    from types import TracebackType
    from typing import Self

    from typing_extensions import Unpack

    from txdht.core.interfaces import IStorage
    from txdht.core.items import Identity
    from txdht.core.limits import Limits
    from txdht.core.listen import Notice

__all__ = ["AsyncioNode", "Listening", "ReactorMismatch", "install_reactor"]

_T = TypeVar("_T")
_log = Logger(namespace="txdht.asyncio_adapter")
_NOT_STARTED = "call start() first"


class ReactorMismatch(RuntimeError):
    """The installed Twisted reactor cannot serve asyncio code on this event loop."""


class _NodeOptions(TypedDict, total=False):
    """The options ``AsyncioNode`` passes on to ``txdht.node.Node``."""

    identity: Identity
    storage: IStorage
    k: int
    alpha: int
    paths: int
    rpc_timeout: float
    max_message: int
    max_value: int
    rng: random.Random
    limits: Limits
    network: str


def install_reactor(loop: asyncio.AbstractEventLoop | None = None) -> AsyncioSelectorReactor:
    """The asyncio reactor on ``loop`` (the running loop when None), installing it if needed.

    If no reactor is installed yet, Twisted's asyncioreactor is installed on ``loop``. If one
    is, it is returned when it is an asyncioreactor on that same loop.

    :raises ReactorMismatch: another reactor is installed, or the asyncioreactor runs on
        another event loop.
    :raises RuntimeError: ``loop`` is None and no event loop is running.
    """
    return _reactor_on(
        asyncio.get_running_loop() if loop is None else loop,
        _installed_reactor,
        asyncioreactor.install,
    )


def _installed_reactor() -> object | None:
    """The installed reactor, or None; unlike an import, this never installs one."""
    return sys.modules.get("twisted.internet.reactor")


def _reactor_on(
    loop: asyncio.AbstractEventLoop,
    installed: Callable[[], object | None],
    install: Callable[[asyncio.AbstractEventLoop], None],
) -> AsyncioSelectorReactor:
    """``install_reactor`` with its two effects passed in: read the installed reactor, install."""
    reactor = installed()
    if reactor is None:
        install(loop)
        reactor = installed()
    if not isinstance(reactor, AsyncioSelectorReactor):
        kind = type(reactor)
        raise ReactorMismatch(
            f"{kind.__module__}.{kind.__qualname__} is installed, not Twisted's asyncioreactor: "
            "import and start txdht's adapter before anything imports twisted.internet.reactor"
        )
    reactor_loop = getattr(reactor, "_asyncioEventloop", None)
    if reactor_loop is not loop:
        raise ReactorMismatch(
            f"the reactor runs on another event loop ({reactor_loop!r}) than {loop!r}. A process "
            "has one Twisted reactor, installed once, on one loop: install it from inside "
            "asyncio.run(), with install_reactor() or AsyncioNode.start(), not before the loop "
            "exists, and run the nodes of the adapter under that one asyncio.run() (a second "
            "asyncio.run() makes a new loop the reactor cannot move to)"
        )
    return reactor


async def _wait(d: Deferred[_T]) -> _T:
    """Await ``d`` from asyncio code, with Twisted's timeout and cancellation made asyncio's."""
    try:
        return await d.asFuture(asyncio.get_running_loop())
    except defer.TimeoutError as e:
        raise TimeoutError(str(e)) from e
    except defer.CancelledError as e:
        raise asyncio.CancelledError(str(e)) from e


def _endpoint(host: str, port: int) -> str:
    """The server endpoint string for ``host`` and ``port``; an IPv6 host's colons escaped."""
    escaped = host.replace(":", "\\:")
    return f"tcp:{port}:interface={escaped}"


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> tuple[str, int] | None:
    """``(host, port)`` with a host name resolved to an IPv4 address, or None if it cannot be.

    The Twisted node connects to host names over IPv4 (``TCP4ClientEndpoint``); resolve them
    the same way, on the loop's executor, since the reactor's thread pool never starts here.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host, port
    try:
        found = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        _log.warn(
            "seed {host}:{port} could not be resolved: {error}", host=host, port=port, error=e
        )
        return None
    return str(found[0][4][0]), port


class Listening:
    """A listen of the adapter's node: ``async for notice in node.listen(key)`` gives each
    ``Notice``; ``cancel()`` (or leaving ``async with``) stops it and ends the iteration after
    what was queued."""

    def __init__(self, node: Node, key: str) -> None:
        self._notices: asyncio.Queue[Notice | None] = asyncio.Queue()
        self.subscription = node.listen(key, self._notices.put_nowait)
        self.subscription.done.addBoth(lambda _: self._notices.put_nowait(None))

    def cancel(self) -> None:
        """Stop listening."""
        self.subscription.cancel()

    def __aiter__(self) -> Listening:
        return self

    async def __anext__(self) -> Notice:
        notice = await self._notices.get()
        if notice is None:
            self._notices.put_nowait(None)  # the end, for any later reader too
            raise StopAsyncIteration
        return notice

    async def __aenter__(self) -> Listening:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()


class AsyncioNode:
    """The Twisted ``Node`` with an async API, for asyncio code on Twisted's asyncioreactor.

    :param node_options: passed to ``txdht.node.Node``: ``identity``, ``storage``, ``k``,
        ``alpha``, ``paths``, ``rpc_timeout``, ``max_message``, ``max_value``, ``rng``.

    Every method but ``stop`` raises ``RuntimeError`` until ``start()`` has finished, and again
    after ``stop()``. A stopped adapter can be started again, as a new Twisted node.
    """

    def __init__(self, **node_options: Unpack[_NodeOptions]) -> None:
        self._options = node_options
        self._node: Node | None = None

    def _started(self) -> Node:
        if self._node is None:
            raise RuntimeError(_NOT_STARTED)
        return self._node

    @property
    def node(self) -> Node:
        """The underlying Twisted node, for Twisted-side use (its methods return Deferreds)."""
        return self._started()

    @property
    def id(self) -> str:
        """The node's id, in hex."""
        return self._started().id

    @property
    def port(self) -> int:
        """The TCP port the node listens on."""
        return self._started().port

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Install or check the reactor on the running loop, then listen on ``host``:``port``.

        Port 0 picks a free port; read it back from ``port``.

        :raises ReactorMismatch: see ``install_reactor``.
        :raises RuntimeError: the node is already started.
        :raises twisted.internet.error.CannotListenError: the address cannot be listened on.
        """
        if self._node is not None:
            raise RuntimeError("the node is already started")
        node = Node(install_reactor(), **self._options)
        await _wait(node.listen(_endpoint(host, port)))
        self._node = node

    async def stop(self) -> None:
        """Cancel what the node is doing, close its connections and stop listening.

        Operations still running fail with ``asyncio.CancelledError``. Stopping a node that is
        not started does nothing.
        """
        node, self._node = self._node, None
        if node is not None:
            await _wait(node.stop())

    async def __aenter__(self) -> Self:
        """Start on 127.0.0.1 and a free port."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop."""
        await self.stop()

    async def join(self, seeds: Iterable[tuple[str, int]], timeout: float | None = None) -> int:
        """Join the network through ``seeds`` (host, port); return the number of contacts known.

        Host names are resolved to IPv4 addresses first; a seed that cannot be resolved counts as
        one that did not answer.

        :raises JoinError: no seed answered.
        :raises OperationTimeout: not joined within ``timeout`` seconds (as every operation
            given a ``timeout``; it is a ``TimeoutError``).
        """
        node = self._started()
        pairs = check_seeds(seeds)
        loop = asyncio.get_running_loop()
        found = await asyncio.gather(*(_resolve(loop, host, port) for host, port in pairs))
        addresses = [address for address in found if address is not None]
        if pairs and not addresses:
            names = ", ".join(f"{host}:{port}" for host, port in pairs)
            raise JoinError(f"none of the {len(pairs)} seed nodes could be resolved: {names:.200}")
        return await _wait(node.join(addresses, timeout))

    async def put(
        self,
        name: str,
        value: bytes,
        ttl: float = DEFAULT_TTL,
        cas: int | None = None,
        timeout: float | None = None,
    ) -> str:
        """Sign ``value`` under ``name`` with this node's key and store it; return its key (hex).
        With ``cas``, only nodes holding sequence number ``cas`` (0: none) store it.

        :raises PutError: no node stored the item.
        :raises ProtocolError: the item is not valid (for example, the value is too large).
        """
        return await _wait(self._started().put(name, value, ttl, cas, timeout=timeout))

    async def put_blob(
        self, value: bytes, ttl: float = DEFAULT_TTL, timeout: float | None = None
    ) -> str:
        """Store an immutable blob; return its key (hex), the sha512 of the value.

        :raises PutError: no node stored the item.
        :raises ProtocolError: the item is not valid (for example, the value is too large).
        """
        return await _wait(self._started().put_blob(value, ttl, timeout))

    def listen(self, key: str) -> Listening:
        """Listen to the item under ``key`` (hex): ``async for notice in node.listen(key)``
        gives a ``Notice`` for each newer version (in order, each once) and for its expiry."""
        return Listening(self._started(), key)

    async def get(self, key: str, timeout: float | None = None) -> bytes:
        """The value under ``key`` (hex), verified.

        :raises NotFoundError: no node holds a valid value under ``key``.
        :raises ValueError: ``key`` is not a valid hex id.
        """
        return await _wait(self._started().get(key, timeout))
