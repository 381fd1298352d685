"""The node's HTTP JSON API (served by ``twistd dht --http``, used by the ``txdht`` command).

======  =====================  ===========================================================
method  path                   answer
======  =====================  ===========================================================
PUT     /v1/names/{name}       body = value; signs and stores it: 201 (below)
POST    /v1/blobs              body = value; stores an immutable blob: 201 (below)
GET     /v1/keys/{key}         200 the value bytes; 404 not found; 400 malformed key
GET     /v1/keys/{key}/events  Server-Sent Events while the client stays: ``version`` with
                               ``{"key", "seq", "value"}`` (base64) for each newer version,
                               ``expired`` with ``{"key", "seq", "expired": true}``
GET     /v1/listens            this node's listens: as listener (key, delivered, holders)
                               and as holder (key, peer, expires_in)
GET     /v1/status             id, version, endpoints, port, joined, peers, live_contacts,
                               network_size, items, uptime
GET     /v1/peers              the routing table: id, host, port, bucket, last_seen, failures
GET     /v1/items              the items held: key, kind, name, seq, size, expires_in
GET     /v1/lookups            the last lookups: target, kind, seconds, age, trace of queries
GET     /metrics               Prometheus text (``txdht.prometheus``): RPCs, lookup latency,
                               items, peers, the process's own metrics
GET     /                      the dashboard page (with /static/app.js, /static/style.css)
======  =====================  ===========================================================

A store answers ``{"key", "stored_on", "holders"}``: the item's key, how many nodes accepted
it, and their ids (this node's own first, when it keeps a copy).

Every error is JSON ``{"error": code, "message": text}`` with a 4xx or 5xx status, never a
traceback page. The API has no authentication: it is bound to 127.0.0.1 by default, and anyone
who can reach it can store through the node's identity.

Web pages the user visits can reach it too, so two browser attacks are refused. DNS rebinding
(a site's name made to resolve to 127.0.0.1, so that its page reads and writes the API as its
own origin): a request whose ``Host`` header names a host other than an IP address, localhost,
or one of ``allowed_hosts`` (``twistd dht --http-host``) is answered 421 ``host_not_allowed``.
Cross-site writes (a page on another site sending a form or a no-cors ``fetch``): a request
other than GET or HEAD whose ``Origin`` is not this API's own is answered 403 ``cross_origin``.
Clients that are not browsers (``txdht``, curl) send no ``Origin`` and are not affected.

The dashboard is three static files shipped in ``txdht/static``; only the paths listed above
are served (no directory listing, nothing else from the file system), the page with a
Content-Security-Policy that lets it load nothing but its own script, style and API.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections import deque
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from txdht.core.errors import ErrorCode, NotFoundError, OperationTimeout, ProtocolError, PutError
from txdht.core.ids import bucket_index, id_from_hex, id_to_hex
from txdht.core.items import Item, blob
from txdht.core.listen import Notice
from txdht.core.lookup import LookupMachine
from txdht.node import Node
from txdht.prometheus import CONTENT_TYPE, exposition, node_registry

__all__ = ["APIResource", "api_site"]

#: How many finished lookups ``/v1/lookups`` remembers, newest first.
RECENT_LOOKUPS = 20
#: Seconds between the comments an idle event stream sends (proxies close silent streams).
KEEP_ALIVE = 15.0
#: At most this many items are listed by ``/v1/items`` (``count`` is always the total).
MAX_LISTED_ITEMS = 2000
#: A put every node refused with one of these codes answers this status with the code's name
#: (a newer version is out there, or the item is too large), not 503 ``put_failed``.
REFUSED_PUT_STATUS = {
    ErrorCode.STALE_SEQUENCE: 400,
    ErrorCode.CAS_MISMATCH: 409,
    ErrorCode.VALUE_TOO_LARGE: 413,
}
#: The dashboard's files: URL path -> (file in ``txdht/static``, content type).
STATIC_FILES: dict[tuple[bytes, ...], tuple[str, bytes]] = {
    (b"",): ("index.html", b"text/html; charset=utf-8"),
    (b"static", b"app.js"): ("app.js", b"text/javascript; charset=utf-8"),
    (b"static", b"style.css"): ("style.css", b"text/css; charset=utf-8"),
}
#: The page may load its own script, style and API, and a data: favicon; nothing else.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    b"form-action 'none'; frame-ancestors 'none'"
)


#: Seconds a get or put through the API may take by default (``?timeout=`` for another); past
#: it the answer is 504 ``timeout``, saying how many peers answered and how many stored.
DEFAULT_TIMEOUT = 10.0
#: The longest deadline a request may ask for.
MAX_TIMEOUT = 600.0


class _HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        #: More fields for the JSON body (a timeout says how far the operation got).
        self.extra: dict[str, Any] = {}


class APIResource(Resource):
    """The whole API as one resource; ``endpoints`` are shown by ``/v1/status``."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        node: Node,
        endpoints: dict[str, str] | None = None,
        allowed_hosts: Iterable[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.node = node
        self.endpoints = endpoints or {}
        #: Seconds a get or put may take, unless the request asks for another (``?timeout=``).
        self.timeout = timeout
        #: Host names the API answers to, besides IP addresses and localhost (lower case).
        self.allowed_hosts = frozenset(["localhost", *(h.lower() for h in allowed_hosts)])
        self.started = node.reactor.seconds()
        #: The last lookups, newest first: (when it finished, what ``/v1/lookups`` shows).
        self.lookups: deque[tuple[float, dict[str, Any]]] = deque(maxlen=RECENT_LOOKUPS)
        self._lookup_count = 0
        node.lookup_observers.append(self._lookup_finished)
        #: What ``/metrics`` serves: this node's metrics and its process's.
        self.registry = node_registry(node.metrics, self._gauges)

    def _lookup_finished(self, machine: LookupMachine, seconds: float) -> None:
        """Keep a snapshot of a finished lookup (not the machine: it holds every contact)."""
        self._lookup_count += 1
        trace = [
            {"event": event, "id": id_to_hex(c.id), "host": c.host, "port": c.port}
            for event, c in machine.trace
        ]
        summary = {
            "number": self._lookup_count,
            "target": id_to_hex(machine.target),
            "kind": "find_value" if machine.find_value else "find_node",
            "found": machine.value is not None,
            "seconds": round(seconds, 6),
            "hops": sum(1 for event in trace if event["event"] == "sent"),
            "trace": trace,
        }
        self.lookups.appendleft((self.node.reactor.seconds(), summary))

    def render(self, request: Request) -> bytes | int:
        method = (request.method or b"").decode("ascii", "replace")
        path = [unquote_to_bytes(segment) for segment in request.postpath or []]
        try:
            self._check_browser(method, request)
            result = self._route(method, path, request)
        except _HTTPError as e:
            return self._error(request, e)
        if isinstance(result, int):  # NOT_DONE_YET: a stream, which writes as it goes
            return result
        if isinstance(result, Deferred):
            request.notifyFinish().addErrback(lambda _: result.cancel())
            result.addCallback(self._write, request)
            result.addErrback(self._failed, request)
            return NOT_DONE_YET
        status, body = result
        return self._body(request, status, body)

    def _check_browser(self, method: str, request: Request) -> None:
        """Refuse DNS rebinding and cross-site writes (see the module docstring)."""
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
        if host and not self._host_allowed(host):
            raise _HTTPError(
                421,
                "host_not_allowed",
                f"this API answers to IP addresses, localhost and the names given with "
                f"--http-host, not {host[:100]!r} (a web page may be trying DNS rebinding)",
            )
        origin = request.getHeader(b"origin")
        if method in ("GET", "HEAD") or origin is None:
            return
        text = origin.decode("latin-1").strip().lower()
        try:
            ours = urlsplit(text).netloc == host != ""
        except ValueError:
            ours = False
        if not ours:
            raise _HTTPError(
                403,
                "cross_origin",
                f"a page from {text[:100]!r} may not write through this node's API",
            )

    def _host_allowed(self, host: str) -> bool:
        """Whether a ``Host`` header (name or address, with or without a port) is ours."""
        if host.startswith("["):  # an IPv6 address: [::1]:8470
            name = host[1 : host.find("]")] if "]" in host else ""
        else:
            name = host.rsplit(":", 1)[0]
        if name in self.allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def _route(self, method: str, path: list[bytes], request: Request) -> Any:
        handler: Callable[[Request], Any]
        routes: dict[tuple[bytes, ...], tuple[str, Callable[[Request], Any]]] = {
            (b"v1", b"status"): ("GET", self._status),
            (b"v1", b"peers"): ("GET", self._peers),
            (b"v1", b"items"): ("GET", self._items),
            (b"v1", b"lookups"): ("GET", self._recent_lookups),
            (b"v1", b"listens"): ("GET", self._listens),
            (b"metrics",): ("GET", self._metrics),
            (b"v1", b"blobs"): ("POST", self._put_blob),
        }
        if len(path) == 3 and path[:2] == [b"v1", b"keys"]:
            expected, handler = "GET", lambda r: self._get(path[2], r)
        elif len(path) == 4 and path[:2] == [b"v1", b"keys"] and path[3] == b"events":
            if method == "HEAD":  # a stream has no end to measure: nothing to say of it
                request.setHeader(b"allow", b"GET")
                raise _HTTPError(405, "method_not_allowed", "use GET here, not HEAD")
            expected, handler = "GET", lambda r: self._events(path[2], r)
        elif len(path) == 3 and path[:2] == [b"v1", b"names"]:
            expected, handler = "PUT", lambda r: self._put(path[2], r)
        elif tuple(path) in STATIC_FILES:
            expected, handler = "GET", lambda r: self._static(tuple(path), r)
        elif tuple(path) in routes:
            expected, handler = routes[tuple(path)]
        else:
            where = request.uri.decode("ascii", "replace")
            raise _HTTPError(404, "no_such_path", f"nothing at {where}")
        if method != expected and not (method == "HEAD" and expected == "GET"):
            request.setHeader(b"allow", b"GET, HEAD" if expected == "GET" else expected.encode())
            raise _HTTPError(405, "method_not_allowed", f"use {expected} here, not {method}")
        return handler(request)

    # -- the routes --------------------------------------------------------------------------

    def _status(self, request: Request) -> tuple[int, Any]:
        node, routing = self.node, self.node.engine.routing
        return 200, {
            "id": node.id,
            "version": _version(),
            "endpoints": self.endpoints,
            "port": node.port,
            "joined": node.engine.joined,
            "peers": len(routing),
            "live_contacts": routing.answering(),
            "network_size": routing.estimated_size(),
            "items": node.engine.storage.count(),
            "uptime": round(node.reactor.seconds() - self.started, 3),
        }

    def _peers(self, request: Request) -> tuple[int, Any]:
        engine, now = self.node.engine, self.node.reactor.seconds()
        peers = []
        for bucket in engine.routing.buckets:
            for entry in bucket.entries.values():
                peers.append(
                    {
                        "id": id_to_hex(entry.contact.id),
                        "host": entry.contact.host,
                        "port": entry.contact.port,
                        "bucket": bucket_index(engine.id, entry.contact.id),
                        "last_seen": round(now - entry.last_seen, 3),
                        "failures": entry.failures,
                    }
                )
        return 200, {"peers": peers}

    def _items(self, request: Request) -> tuple[int, Any]:
        storage, now = self.node.engine.storage, self.node.reactor.seconds()
        records = sorted(storage.records(), key=lambda record: record.key)
        items = [
            {
                "key": id_to_hex(record.key),
                "kind": "named" if record.item.mutable else "blob",
                "name": record.item.name,
                "seq": record.item.seq,
                "size": len(record.item.value),
                "expires_in": round(record.expires_at - now, 3),
            }
            for record in records[:MAX_LISTED_ITEMS]
        ]
        return 200, {"count": len(records), "items": items}

    def _recent_lookups(self, request: Request) -> tuple[int, Any]:
        now = self.node.reactor.seconds()
        lookups = [
            {**summary, "age": round(now - finished, 3)} for finished, summary in self.lookups
        ]
        return 200, {"count": self._lookup_count, "lookups": lookups}

    def _static(self, path: tuple[bytes, ...], request: Request) -> tuple[int, Any]:
        name, content_type = STATIC_FILES[path]
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"referrer-policy", b"no-referrer")
        if name == "index.html":
            request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
        return 200, (resources.files("txdht") / "static" / name).read_bytes()

    def _metrics(self, request: Request) -> tuple[int, Any]:
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return 200, exposition(self.registry)

    def _gauges(self) -> list[tuple[str, str, float]]:
        """The node's gauges, for ``/metrics``."""
        engine = self.node.engine
        routing = engine.routing
        return [
            (
                "txdht_items_stored",
                "Items this node holds for the network.",
                engine.storage.count(),
            ),
            ("txdht_peers", "Contacts in the routing table.", len(routing)),
            (
                "txdht_live_contacts",
                "Contacts whose last request did not fail.",
                routing.answering(),
            ),
            (
                "txdht_network_size",
                "The network's size, estimated from the routing table.",
                routing.estimated_size(),
            ),
            ("txdht_joined", "1 once a join of this node succeeded, else 0.", engine.joined),
            (
                "txdht_uptime_seconds",
                "Seconds since the API started.",
                self.node.reactor.seconds() - self.started,
            ),
        ]

    def _get(self, raw_key: bytes, request: Request) -> Deferred[tuple[int, Any]]:
        key = raw_key.decode("ascii", "replace")
        try:
            id_from_hex(key)
        except ValueError as e:
            raise _HTTPError(400, "bad_key", str(e)) from None
        d = self.node.get(key, self._timeout(request))
        return d.addCallback(lambda value: (200, value))

    def _events(self, raw_key: bytes, request: Request) -> int:
        """Listen to the key while the client stays, and send each notice as an event."""
        key = raw_key.decode("ascii", "replace")
        try:
            id_from_hex(key)
        except ValueError as e:
            raise _HTTPError(400, "bad_key", str(e)) from None
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.write(b": listening\n\n")  # the headers go now: the client knows it is on
        reactor = self.node.reactor

        def send(notice: Notice) -> None:
            kind = b"expired" if notice.expired else b"version"
            data = json.dumps(notice.to_json()).encode()
            request.write(b"event: %s\nid: %d\ndata: %s\n\n" % (kind, notice.seq, data))

        def keep_alive() -> None:  # a comment now and then, so idle proxies keep it open
            request.write(b": keep-alive\n\n")
            timer[0] = reactor.callLater(KEEP_ALIVE, keep_alive)

        subscription = self.node.listen(key, send)
        timer = [reactor.callLater(KEEP_ALIVE, keep_alive)]

        def gone(_: object) -> None:
            subscription.cancel()
            timer[0].cancel()

        request.notifyFinish().addBoth(gone)
        return NOT_DONE_YET

    def _listens(self, request: Request) -> tuple[int, Any]:
        node, now = self.node, self.node.reactor.seconds()
        mine = [
            {
                "key": sub.key,
                "delivered": sub.op.delivered,
                "seq": sub.op.seq if sub.op.seq >= 0 else None,
                "holders": [id_to_hex(c.id) for c in sub.holders],
                "polled": [id_to_hex(c.id) for c in sub.op.polled()],
            }
            for sub in node.subscriptions.values()
        ]
        held = [
            {
                "key": id_to_hex(entry.key),
                "listener": id_to_hex(entry.ident),
                "host": entry.host,
                "expires_in": round(entry.expires_at - now, 3),
            }
            for entry in node.engine.listeners.entries()
            if entry.expires_at > now
        ]
        return 200, {"listening": mine, "held": held[:MAX_LISTED_ITEMS]}

    def _timeout(self, request: Request) -> float:
        """The operation's deadline: ``?timeout=SECONDS`` (0 < SECONDS <= MAX_TIMEOUT), or
        the API's default."""
        given = (request.args or {}).get(b"timeout")
        if not given:
            return self.timeout
        text = given[0].decode("ascii", "replace")
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= MAX_TIMEOUT:  # NaN fails too
            message = f"timeout is seconds above 0 and at most {MAX_TIMEOUT:g}, not {text!r}"
            raise _HTTPError(400, "bad_timeout", message)
        return seconds

    def _put(self, raw_name: bytes, request: Request) -> Deferred[tuple[int, Any]]:
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise _HTTPError(400, "bad_name", "a name is UTF-8 text") from None
        value = self._value(request)
        try:
            item = self.node.sign(name, value)
        except ValueError as e:
            raise _HTTPError(400, "bad_name", str(e)) from None
        return self._stored(item, request)

    def _put_blob(self, request: Request) -> Deferred[tuple[int, Any]]:
        return self._stored(blob(self._value(request)), request)

    def _stored(self, item: Item, request: Request) -> Deferred[tuple[int, Any]]:
        def done(holders: list[int]) -> tuple[int, Any]:
            ids = [id_to_hex(ident) for ident in holders]
            return 201, {"key": id_to_hex(item.key), "stored_on": len(ids), "holders": ids}

        timeout = self._timeout(request)
        return self.node.publish_own_holders(item, timeout=timeout).addCallback(done)

    def _value(self, request: Request) -> bytes:
        content = request.content
        limit = self.node.engine.max_value
        # One byte over the limit tells a value too large (``api_site`` keeps no more).
        value = content.read(limit + 1) if content is not None else b""
        if len(value) > limit:
            raise _HTTPError(413, "value_too_large", f"values are at most {limit} bytes here")
        return value

    # -- answers -------------------------------------------------------------------------------

    def _write(self, result: tuple[int, Any], request: Request) -> None:
        if not request.finished and not request._disconnected:
            request.write(self._body(request, *result))
            request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(defer.CancelledError):
            return
        if failure.check(NotFoundError):
            error = _HTTPError(404, "not_found", failure.getErrorMessage())
        elif failure.check(OperationTimeout):
            late = failure.value
            assert isinstance(late, OperationTimeout)
            error = _HTTPError(504, "timeout", str(late))
            error.extra = {"answered": late.answered}
            if late.stored is not None:
                error.extra["stored"] = late.stored
        elif failure.check(PutError):
            codes = failure.value.codes  # type: ignore[union-attr]
            code = next(iter(codes)) if len(codes) == 1 else None
            if code in REFUSED_PUT_STATUS:
                # Every node refused it for the same reason: say which, as a client error.
                name = ErrorCode(code).name.lower()
                error = _HTTPError(REFUSED_PUT_STATUS[code], name, failure.getErrorMessage())
            else:
                error = _HTTPError(503, "put_failed", failure.getErrorMessage())
        elif failure.check(ProtocolError):
            code = failure.value.code  # type: ignore[union-attr]
            status = 413 if code == ErrorCode.VALUE_TOO_LARGE else 400
            error = _HTTPError(status, code.name.lower(), failure.getErrorMessage())
        else:
            self.log.failure("HTTP request {uri} failed", failure, uri=request.uri)
            error = _HTTPError(500, "internal", "the node failed to answer; see its log")
        if not request.finished and not request._disconnected:
            request.write(self._error(request, error))
            request.finish()

    def _error(self, request: Request, error: _HTTPError) -> bytes:
        body = {"error": error.code, "message": error.message, **error.extra}
        return self._body(request, error.status, body)

    def _body(self, request: Request, status: int, body: Any) -> bytes:
        """The bytes of an answer (for a HEAD request, none: its length in Content-Length)."""
        request.setResponseCode(status)
        if isinstance(body, bytes):
            if not request.responseHeaders.hasHeader(b"content-type"):
                request.setHeader(b"content-type", b"application/octet-stream")
            data = body
        else:
            request.setHeader(b"content-type", b"application/json")
            data = json.dumps(body).encode() + b"\n"
        if request.method == b"HEAD":
            request.setHeader(b"content-length", b"%d" % len(data))
            return b""
        return data


def api_site(resource: APIResource) -> Site:
    """The ``Site`` that serves ``resource``: tracebacks are not shown to clients, and a
    request keeps at most one byte more of its body than the node takes as a value, so that a
    body of any size is refused (413) without being held in memory, or written to a
    temporary file, first."""

    class BoundedRequest(Request):
        def handleContentChunk(self, data: bytes) -> None:
            content = self.content
            assert content is not None  # made by gotLength, before any chunk
            room = resource.node.engine.max_value + 1 - content.tell()
            if room > 0:
                content.write(data[:room])

    site = Site(resource)
    site.requestFactory = BoundedRequest
    site.displayTracebacks = False
    return site


def _version() -> str:
    from txdht import __version__

    return __version__
