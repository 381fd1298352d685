"""One node's DHT logic, shared by both shells: answer requests, keep the table, decide stores.

The engine owns the routing table and the store. A shell hands it each decoded request with the
host it came from and the time, and sends back the reply the engine returns; it tells the engine
when a peer answered (``replied``) or failed (``failed``) one of our requests; it starts lookups
with ``lookup``. Whenever the routing table wants a contact pinged before evicting it, the engine
returns that contact and the shell pings it, reporting the outcome like any other request.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from txdht.core.errors import ErrorCode, ProtocolError
from txdht.core.ids import Contact
from txdht.core.items import MAX_TTL, MAX_VALUE_BYTES, Identity, Item, accept
from txdht.core.lookup import ALPHA, IterativeLookup
from txdht.core.messages import (
    MAX_CONTACTS,
    Error,
    FindNode,
    FindValue,
    Message,
    Nodes,
    Ok,
    Ping,
    Pong,
    Store,
    Value,
)
from txdht.core.routing import K, RoutingTable
from txdht.core.storage import StoredItem
from txdht.interfaces import IStorage

__all__ = ["Engine", "Handled"]


@dataclass(frozen=True)
class Handled:
    """The outcome of one request: the reply to send, and a contact to ping (or None)."""

    reply: Message
    ping: Contact | None = None


class Engine:
    """The DHT logic of one node (see the module docstring)."""

    def __init__(
        self,
        identity: Identity,
        storage: IStorage,
        *,
        now: float,
        k: int = K,
        alpha: int = ALPHA,
        max_value: int = MAX_VALUE_BYTES,
    ) -> None:
        if not 1 <= k <= MAX_CONTACTS:
            raise ValueError(f"k must be from 1 to {MAX_CONTACTS} (what a nodes reply may carry)")
        if alpha < 1:
            raise ValueError("alpha must be at least 1")
        self.identity = identity
        self.id = identity.node_id
        self.storage = storage
        self.k = k
        self.alpha = alpha
        self.max_value = max_value
        #: The port this node listens on, sent in every message (0 until it listens).
        self.port = 0
        self.routing = RoutingTable(self.id, k, now)
        self._rids = itertools.count(1)

    def message(self, cls: type[Message], rid: int | None = None, **fields: object) -> Message:
        """A message from this node; a request gets a fresh request id."""
        if rid is None:
            rid = next(self._rids)
        return cls(rid=rid, sender=self.id, port=self.port, **fields)

    def handle(self, request: Message, host: str, now: float) -> Handled:
        """Answer ``request``, which came from ``host``; peers' mistakes become error replies."""
        ping = None
        if request.port and request.sender != self.id:
            ping = self.routing.seen(Contact(request.sender, host, request.port), now)
        try:
            reply = self._answer(request, now)
        except ProtocolError as e:
            reply = self.error(request.rid, e.code, e.message)
        return Handled(reply, ping)

    def error(self, rid: int, code: ErrorCode, text: str) -> Message:
        """An error reply."""
        return self.message(Error, rid, code=int(code), message=text)

    def _answer(self, request: Message, now: float) -> Message:
        rid = request.rid
        if isinstance(request, Ping):
            return self.message(Pong, rid)
        if isinstance(request, Store):
            self.store(request.item, request.ttl, now)
            return self.message(Ok, rid)
        if isinstance(request, FindValue):
            item = self.get(request.key, now)
            if item is not None:
                return self.message(Value, rid, item=item)
            return self._nodes(rid, request.key, request.sender)
        if isinstance(request, FindNode):
            return self._nodes(rid, request.target, request.sender)
        raise ProtocolError(ErrorCode.UNEXPECTED, f"a {request.TYPE!r} message is not a request")

    def _nodes(self, rid: int, target: int, asker: int) -> Message:
        return self.message(Nodes, rid, nodes=tuple(self.routing.closest(target, exclude=asker)))

    def store(self, item: Item, ttl: float, now: float) -> None:
        """Keep ``item`` for ``ttl`` seconds if it verifies and may replace what is stored."""
        item.verify(self.max_value)
        stored = self.storage.get(item.key)
        if stored is not None and stored.expires_at <= now:
            stored = None
        accept(stored.item if stored else None, item)
        expires = now + min(ttl, MAX_TTL)
        if stored is not None and stored.item == item:
            expires = max(expires, stored.expires_at)
        self.storage.put(StoredItem(item, expires))

    def get(self, key: int, now: float) -> Item | None:
        """The item stored here under ``key``, if it has not expired."""
        stored = self.storage.get(key)
        if stored is None or stored.expires_at <= now:
            return None
        return stored.item

    def replied(self, contact: Contact, now: float) -> Contact | None:
        """``contact`` answered one of our requests; return a contact to ping, if any."""
        return self.routing.seen(contact, now)

    def failed(self, contact: Contact) -> None:
        """A request to ``contact`` failed or timed out."""
        self.routing.failed(contact.id)

    def lookup(self, target: int, now: float, find_value: bool = False) -> IterativeLookup:
        """A new lookup for ``target``, seeded from the routing table."""
        self.routing.touch(target, now)
        seeds = self.routing.closest(target)
        return IterativeLookup(
            target, seeds, own_id=self.id, k=self.k, alpha=self.alpha, find_value=find_value
        )
