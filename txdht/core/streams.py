"""Connections, as the core sees them: what a driver over TCP (or any stream) needs decided.

The engine addresses peers by (host, port); the Twisted node and the asyncio twin talk over
connections. ``Streams`` sits between: it keeps one ``Link`` per open connection and decides

- which connection a request goes out on: one per peer address, ours or theirs, whichever came
  first (``Connect`` when there is none yet; requests wait for it, and fail with it);
- which incoming connection stands for which peer: the listening port in a peer's request
  names its address, so our requests to that address share the connection it opened;
- what to do with a payload that is not a valid message: an ``error`` reply (unless it was
  recognisably a reply: then our own request fails instead), and the connection closed after
  ``max_bad_messages`` of them; a broken stream (framing lost) is closed at once;
- whom to refuse: a connection over ``max_connections_per_ip`` from one address (loopback
  exempt), one whose requests come from this node's own id (itself, reached through an
  address of its own that a peer named), and every connection once the node has stopped;
- which connections to let go: past ``max_connections`` in all, those quiet longest with no
  request of ours in flight and no listen on them (``_trim``). A connection is otherwise kept
  however long it is idle, so without this a node would hold one per peer it ever talked to.

The driver frames bytes into payloads and back, and reports each connection's life:
``opened``, ``connected`` (our attempt to an address succeeded), ``connect_failed``,
``received``, ``framing_lost``, ``lost``. Every method returns the engine's commands.
"""

from __future__ import annotations

from typing import Any

from txdht.core import listen
from txdht.core.commands import Close, Command, Connect, Write
from txdht.core.engine import Engine
from txdht.core.errors import ProtocolError
from txdht.core.limits import is_loopback
from txdht.core.messages import REPLY_TYPES, decode
from txdht.core.operations import Request

__all__ = ["Link", "Streams"]

Address = tuple[str, int]


class Link:
    """One connection, either direction: the driver's ``handle`` for it, and what the core
    knows of it."""

    __slots__ = (
        "address",
        "bad_messages",
        "closing",
        "handle",
        "heard",
        "host",
        "opened_at",
        "port",
    )

    def __init__(self, handle: Any, host: str, port: int, opened_at: float = 0.0) -> None:
        #: The driver's object for this connection (its protocol instance).
        self.handle = handle
        #: The peer's host and the port its end of the connection is on.
        self.host, self.port = host, port
        #: The peer's listening address, once known.
        self.address: Address | None = None
        #: Malformed messages received on it.
        self.bad_messages = 0
        #: Set once the core has asked for it to be closed: what still arrives is ignored.
        self.closing = False
        #: When a payload last arrived on it (None: never), and when it opened.
        self.heard: float | None = None
        self.opened_at = opened_at

    @property
    def quiet_since(self) -> float:
        """When it was last heard from (when it opened, if never)."""
        return self.opened_at if self.heard is None else self.heard


class Streams:
    """The connection policy of one node (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.sender = self._send
        self.links: set[Link] = set()
        self.stopped = False
        self._by_address: dict[Address, Link] = {}
        self._connecting: dict[Address, list[Request]] = {}

    @property
    def connecting(self) -> list[Address]:
        """The addresses a connection attempt is on its way to."""
        return list(self._connecting)

    def link_to(self, address: Address) -> Link | None:
        """The connection our requests to ``address`` go out on, if there is one."""
        return self._by_address.get(address)

    def opened(self, handle: Any, host: str, port: int, now: float) -> tuple[Link, list[Command]]:
        """A connection is up (ours or theirs); it is closed at once if the node has stopped or
        its host has too many."""
        link = Link(handle, host, port, now)
        self.links.add(link)
        self.engine.now = now
        engine, limit = self.engine, self.engine.limits.max_connections_per_ip
        crowded = not is_loopback(host) and sum(1 for k in self.links if k.host == host) > limit
        if crowded:
            engine.log(
                "warn",
                "closing connection from {host}: over {limit} connections from it",
                host=host,
                limit=limit,
            )
        if crowded or self.stopped:
            self._close(link)
        elif len(self.links) > engine.limits.max_connections:
            self._trim(link)
        return link, engine.settle()

    def before_listen(self, listening: bool, call: str) -> None:
        """``RuntimeError`` if the node may not listen now: it listens already (``listening``;
        a second port would be left open by stop, which closes one) or it has stopped.
        ``call`` names the driver's method, for the message."""
        if listening or self.stopped:
            state = "has stopped" if self.stopped else f"listens on {self.engine.port} already"
            raise RuntimeError(f"this node {state}: one {call} per node")

    def _trim(self, new: Link) -> None:
        """More than ``max_connections`` are open: close those quiet longest, down to 90% of
        it, but never ``new``, one a request of ours is in flight on (or waits to be pushed
        on), or one a listen is on, either way (a holder's pushes come on it; a listener's
        holders would be asked again at once). If too few are quiet, more stay open."""
        engine = self.engine
        limit = engine.limits.max_connections
        open_links = [link for link in self.links if not link.closing]
        excess = len(open_links) - max(1, limit * 9 // 10)
        if excess <= 0:
            return
        busy = listen.links_in_use(engine)
        busy.add(new)
        busy.update(request.link for request in engine.pending())
        quiet = sorted(
            (link for link in open_links if link not in busy), key=lambda link: link.quiet_since
        )
        for link in quiet[:excess]:
            self._close(link)
        engine.log(
            "info",
            "{count} connections open, over max_connections ({limit}): closed the {closed} "
            "quiet longest",
            count=len(open_links),
            limit=limit,
            closed=min(excess, len(quiet)),
        )

    def connected(self, link: Link, address: Address, now: float) -> list[Command]:
        """Our connection attempt to ``address`` succeeded: the requests waiting go out."""
        self.engine.now = now
        self._adopt(link, address)
        for request in self._connecting.pop(address, []):
            if not request.ended:  # it may have timed out, or its operation ended, meanwhile
                self._send(request)
        if self._by_address.get(address) is not link and not link.closing:
            # The peer's own connection came first and stands for its address (its request
            # named it meanwhile): the waiting requests went on that one, and this one would
            # stay open unused by either side, for good. One per such race, they piled up.
            self._close(link)
        return self.engine.settle()

    def connect_failed(self, address: Address, error: Exception, now: float) -> list[Command]:
        """Our connection attempt to ``address`` failed: so do the requests waiting for it."""
        commands: list[Command] = []
        for request in self._connecting.pop(address, []):
            commands += self.engine.request_failed(request.rid, error, now)
        return commands

    def lost(self, link: Link, error: Exception, now: float) -> list[Command]:
        """A connection closed: our requests on it fail with ``error``."""
        self.links.discard(link)
        if link.address is not None and self._by_address.get(link.address) is link:
            del self._by_address[link.address]
        commands: list[Command] = []
        for request in self.engine.pending():
            if request.link is link:
                commands += self.engine.request_failed(request.rid, error, now)
        return commands + self.engine.link_lost(link, now)

    def received(self, link: Link, payload: bytes, now: float) -> list[Command]:
        """One payload (a netstring's contents) arrived on ``link`` (ignored once the core
        has decided to close it: the rest of a segment that broke the rules is not served)."""
        engine = self.engine
        if link.closing:
            return []
        link.heard = now
        try:
            message = decode(payload)
        except ProtocolError as e:
            engine.now = now
            return self._bad(link, e)
        if isinstance(message, REPLY_TYPES):
            return engine.reply_received(message, link.host, now, link)
        if message.sender == engine.id:
            # This node itself, at an address of its own that a peer named (127.0.0.2, 0.0.0.0,
            # another interface), or a peer using its id: nothing to serve, and a connection
            # to itself would stay open for good, one more for every such address.
            engine.log(
                "info",
                "closing connection from {host}: its requests come from this node itself "
                "(an address of its own, named by a peer), or from a peer using its id",
                host=link.host,
            )
            self._close(link)
            return engine.settle()
        if message.port and link.address is None and message.network == engine.network:
            self._adopt(link, (link.host, message.port))
        reply, commands = engine.request_received(message, link.host, link.port, now, link)
        if reply is not None:
            commands.insert(0, Write(link, reply))
        return commands

    def framing_lost(self, link: Link, why: str) -> list[Command]:
        """The byte stream on ``link`` is broken (``why``): close it."""
        engine = self.engine
        engine.log(
            "warn", "closing connection from {host}: framing lost ({why})", host=link.host, why=why
        )
        self._close(link)
        return engine.settle()

    def stop(self, now: float) -> list[Command]:
        """Stop: every operation ends, every connection closes, new ones are refused."""
        self.stopped = True
        for link in list(self.links):
            self._close(link)
        return self.engine.stop(now)

    def _close(self, link: Link) -> None:
        """Ask the driver to close ``link`` (once); no request of ours takes it from now on."""
        if not link.closing:
            link.closing = True
            if link.address is not None and self._by_address.get(link.address) is link:
                del self._by_address[link.address]
            self.engine.emit(Close(link))

    def _adopt(self, link: Link, address: Address) -> None:
        link.address = address
        if not link.closing:  # (one being closed stands for no address)
            self._by_address.setdefault(address, link)

    def _bad(self, link: Link, error: ProtocolError) -> list[Command]:
        engine = self.engine
        engine.log("warn", "bad message from {host}: {error}", host=link.host, error=str(error))
        if error.in_reply:
            request = engine.request(error.request_id or 0)
            commands = []
            if request is not None and request.link is link:
                commands = engine.request_failed(request.rid, error, engine.now)
        else:
            engine.emit(Write(link, engine.error(error.request_id or 0, error.code, error.message)))
            commands = []
        link.bad_messages += 1
        if link.bad_messages >= engine.limits.max_bad_messages:
            engine.log(
                "warn",
                "closing connection from {host}: {count} malformed messages",
                host=link.host,
                count=link.bad_messages,
            )
            self._close(link)
        return commands + engine.settle()

    def _send(self, request: Request) -> None:
        """The engine sends ``request``: on the peer's connection, or once there is one; a
        request to be sent ``via`` a given connection (a push to a listener), on that one, or
        it fails (the connection has gone).

        A retry does not go on the connection its first try went on if nothing at all has
        arrived on it since: that connection may be dead without knowing it (a peer that
        vanished without a reset), so it is closed and a fresh one opened."""
        via = request.via
        if via is not None:
            if via in self.links and not via.closing:
                request.link = via
                self.engine.emit(Write(via, request.message))
            else:
                self.engine.fail_soon(request, ConnectionError("its connection has closed"))
            return
        link = self._by_address.get(request.address)
        if link is not None and _silent_since(link, request.retry_of):
            self.engine.log(
                "info",
                "nothing from {host} since a request now overdue: reconnecting",
                host=link.host,
            )
            self._close(link)  # (which forgets it for its address)
            link = None
        if link is not None:
            request.link = link
            self.engine.emit(Write(link, request.message))
            return
        waiting = self._connecting.get(request.address)
        if waiting is None:
            self._connecting[request.address] = [request]
            self.engine.emit(Connect(request.address))
        else:
            waiting.append(request)


def _silent_since(link: Link, first: Request | None) -> bool:
    """Whether ``first`` (a retried request) went out on ``link`` and nothing has arrived on
    it since."""
    if first is None or first.link is not link:
        return False
    return link.heard is None or link.heard <= first.sent_at
