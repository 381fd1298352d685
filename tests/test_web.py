"""The HTTP JSON API over real loopback HTTP: every route's success and error paths."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import quote

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from txdht.core.errors import ErrorCode, NotFoundError, PutError
from txdht.core.ids import id_to_hex
from txdht.core.items import blob
from txdht.node import Node
from txdht.web import DEFAULT_TIMEOUT, APIResource, api_site


class _Collect(Protocol):
    """Collects a response body (readBody warns on this transport in Twisted 26)."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(b"".join(self.parts))


class API:
    """Three TCP nodes; node 0 serves the API on a loopback port."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.nodes: list[Node] = []
        self.port: Any = None

    async def start(self, **options: Any) -> None:
        """Start the nodes and the HTTP server."""
        self.nodes = [Node(self.reactor, **options) for _ in range(3)]
        for node in self.nodes:
            await node.listen()
        for node in self.nodes[1:]:
            await node.join([("127.0.0.1", self.nodes[0].port)])
        self.resource = APIResource(self.nodes[0], {"dht": "tcp:0", "http": "tcp:0"})
        self.port = self.reactor.listenTCP(0, api_site(self.resource), interface="127.0.0.1")

    async def stop(self) -> None:
        """Stop the HTTP server and the nodes."""
        await self.port.stopListening()
        await gatherResults([n.stop() for n in self.nodes])

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, IResponse]:
        """One HTTP request (with extra ``headers``); the status, the body and the response."""
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        agent = Agent(self.reactor)
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        url = f"http://127.0.0.1:{self.port.getHost().port}{path}".encode()
        sent = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        response = await agent.request(method.encode(), url, sent, producer)
        body_read: Deferred[bytes] = Deferred()
        response.deliverBody(_Collect(body_read))
        data = await body_read
        return response.code, data, response

    async def json(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request whose answer is JSON."""
        status, data, response = await self.request(method, path, body, headers)
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return status, json.loads(data)


@pytest_twisted.async_yield_fixture()
async def api(reactor: Any) -> AsyncIterator[API]:
    """A started API over a 3-node network; stopped after the test."""
    server = API(reactor)
    await server.start(max_value=1000)
    yield server
    await server.stop()


def error_of(status: int, body: Any, expected_status: int, code: str) -> str:
    """Check an error answer's status and code; its message."""
    assert status == expected_status
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    return str(body["message"])


@pytest_twisted.ensureDeferred
async def test_put_name_then_get_from_another_node(api: API) -> None:
    """PUT /v1/names/{name} stores a signed item (201) that any node then reads."""
    status, body = await api.json(
        "PUT", "/v1/names/" + quote("my name/ü", safe=""), b"\x00value\xff"
    )
    assert status == 201
    assert body["stored_on"] == 3
    # Every node of the three holds it (k is 20); the API's own node, which keeps a copy, first.
    assert body["holders"][0] == api.nodes[0].id
    assert sorted(body["holders"]) == sorted(node.id for node in api.nodes)
    assert await api.nodes[2].get(body["key"]) == b"\x00value\xff"
    status, data, response = await api.request("GET", f"/v1/keys/{body['key']}")
    assert (status, data) == (200, b"\x00value\xff")
    assert response.headers.getRawHeaders(b"content-type") == [b"application/octet-stream"]


@pytest_twisted.ensureDeferred
async def test_put_again_replaces(api: API) -> None:
    """A second PUT under the same name gets the same key and the new value."""
    _, first = await api.json("PUT", "/v1/names/n", b"one")
    _, second = await api.json("PUT", "/v1/names/n", b"two")
    assert first["key"] == second["key"]
    assert await api.nodes[1].get(first["key"]) == b"two"


@pytest_twisted.ensureDeferred
async def test_post_blob(api: API) -> None:
    """POST /v1/blobs stores an immutable blob under the sha512 of its value."""
    status, body = await api.json("POST", "/v1/blobs", b"blob bytes")
    assert status == 201
    assert body["key"] == id_to_hex(blob(b"blob bytes").key)
    assert body["stored_on"] == 3 == len(set(body["holders"]))
    assert set(body["holders"]) == {node.id for node in api.nodes}


@pytest_twisted.ensureDeferred
async def test_get_missing_key_is_404(api: API) -> None:
    """GET of a key nobody holds answers 404 not_found."""
    status, body = await api.json("GET", "/v1/keys/" + "ab" * 64)
    error_of(status, body, 404, "not_found")


@pytest.mark.parametrize("key", ["short", "AB" * 64, "%FF" * 64, "zz" * 64])
@pytest_twisted.ensureDeferred
async def test_get_malformed_key_is_400(api: API, key: str) -> None:
    """GET of something that is not 128 lowercase hex answers 400 bad_key."""
    status, body = await api.json("GET", "/v1/keys/" + key)
    assert "hex" in error_of(status, body, 400, "bad_key")


@pytest_twisted.ensureDeferred
async def test_value_too_large_is_413(api: API) -> None:
    """A value over the node's limit answers 413 value_too_large, for names and blobs."""
    for method, path in (("PUT", "/v1/names/big"), ("POST", "/v1/blobs")):
        status, body = await api.json(method, path, b"x" * 1001)
        assert "1000 bytes" in error_of(status, body, 413, "value_too_large")


@pytest_twisted.ensureDeferred
async def test_a_huge_body_is_413_and_only_its_start_is_kept(api: API) -> None:
    """A 4 MiB body for a node that takes 1,000-byte values answers 413, the request holding
    1,001 bytes of it at most; a value of exactly the limit is stored."""
    kept: list[int] = []
    value_of = api.resource._value

    def spy(request: Any) -> bytes:
        assert request.content is not None
        kept.append(request.content.seek(0, 2))  # the size of what the request holds
        request.content.seek(0)
        return value_of(request)

    api.resource._value = spy  # type: ignore[method-assign]
    status, body = await api.json("POST", "/v1/blobs", b"x" * (4 << 20))
    assert "1000 bytes" in error_of(status, body, 413, "value_too_large")
    status, body = await api.json("POST", "/v1/blobs", b"y" * 1000)
    assert status == 201
    assert kept == [1001, 1000]


def test_the_site_hides_tracebacks() -> None:
    """api_site shows no traceback to a client when the resource fails."""
    resource = cast(APIResource, SimpleNamespace(node=None))
    assert api_site(resource).displayTracebacks is False


@pytest.mark.parametrize("name", [quote("x" * 300), "%FF%FE", pytest.param("", id="empty")])
@pytest_twisted.ensureDeferred
async def test_bad_names_are_400(api: API, name: str) -> None:
    """A name that is too long, not UTF-8 or empty answers 400 bad_name."""
    status, body = await api.json("PUT", "/v1/names/" + name, b"v")
    error_of(status, body, 400, "bad_name")


@pytest_twisted.ensureDeferred
async def test_put_nobody_accepts_is_503(api: API) -> None:
    """When no node stores the item, the answer is 503 put_failed."""

    def refuse(item: Any, **options: Any) -> Deferred[list[int]]:
        return fail(PutError("no node stored the item (2 were asked)"))

    api.nodes[0].publish_own_holders = refuse  # type: ignore[method-assign,assignment]
    status, body = await api.json("POST", "/v1/blobs", b"v")
    assert "no node stored" in error_of(status, body, 503, "put_failed")


@pytest.mark.parametrize(
    ("codes", "status", "code"),
    [
        ({ErrorCode.CAS_MISMATCH}, 409, "cas_mismatch"),
        ({ErrorCode.VALUE_TOO_LARGE}, 413, "value_too_large"),
        ({ErrorCode.STALE_SEQUENCE, ErrorCode.CAS_MISMATCH}, 503, "put_failed"),
        ({ErrorCode.STORAGE_FULL}, 503, "put_failed"),
        ({999}, 503, "put_failed"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_put_refused_by_every_node(api: API, codes: set[int], status: int, code: str) -> None:
    """A put every node refused for one reason answers with that reason; mixed ones are 503."""

    def refuse(item: Any, **options: Any) -> Deferred[list[int]]:
        text = "no node stored the item (2 were asked); first refusal: ..."
        return fail(PutError(text, frozenset(codes)))

    api.nodes[0].publish_own_holders = refuse  # type: ignore[method-assign,assignment]
    got, body = await api.json("PUT", "/v1/names/n", b"v")
    assert "first refusal" in error_of(got, body, status, code)


@pytest.mark.parametrize(
    ("error_code", "status"), [(ErrorCode.BAD_SIGNATURE, 400), (ErrorCode.VALUE_TOO_LARGE, 413)]
)
@pytest_twisted.ensureDeferred
async def test_protocol_error_from_the_node(api: API, error_code: ErrorCode, status: int) -> None:
    """A ProtocolError out of the node answers 400 (413 for a size) with the code's name."""
    from twisted.internet import defer

    from txdht.core.errors import ProtocolError

    api.nodes[0].get = lambda key, timeout=None: defer.fail(  # type: ignore[method-assign]
        ProtocolError(error_code, "refused")
    )
    got, body = await api.json("GET", "/v1/keys/" + "ab" * 64)
    assert "refused" in error_of(got, body, status, error_code.name.lower())


def silence(node: Node) -> None:
    """From now on ``node`` answers no request (as a frozen host)."""
    real = node.engine.request_received

    def unanswered(request: Any, host: str, port: int, now: float, link: object = None) -> Any:
        _, commands = real(request, host, port, now, link)
        return None, commands

    node.engine.request_received = unanswered  # type: ignore[method-assign]


@pytest_twisted.ensureDeferred
async def test_a_get_past_its_deadline_is_504_saying_how_far_it_got(api: API) -> None:
    """A get that has not finished by ``?timeout=`` answers 504 timeout, with the peers that
    had answered, and leaves nothing running on the node."""
    for node in api.nodes[1:]:
        silence(node)
    status, body = await api.json("GET", "/v1/keys/" + "ab" * 64 + "?timeout=0.05")
    message = error_of(status, body, 504, "timeout")
    assert message == "get did not finish within 0.05 s: 0 peers answered"
    assert body["answered"] == 0
    assert "stored" not in body
    assert not api.nodes[0].engine.running()
    assert not api.nodes[0].engine.pending()


@pytest_twisted.ensureDeferred
async def test_a_put_past_its_deadline_is_504_saying_how_many_stored(api: API) -> None:
    """A put that has not finished by ``?timeout=`` answers 504 timeout, with how many peers
    had answered and how many nodes had stored the item."""
    for node in api.nodes[1:]:
        silence(node)
    status, body = await api.json("POST", "/v1/blobs?timeout=0.05", b"late")
    assert error_of(status, body, 504, "timeout").startswith("publish did not finish")
    assert (body["answered"], body["stored"]) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_gets_and_puts_have_a_default_deadline(api: API) -> None:
    """Without ``?timeout=``, a get or a put is given the API's default deadline (10 s); with
    it, the one it asks for."""
    given: list[float | None] = []
    get, publish = api.nodes[0].get, api.nodes[0].publish_own_holders

    def watched_get(key: str, timeout: float | None = None) -> Deferred[bytes]:
        given.append(timeout)
        return get(key, timeout)

    def watched_publish(item: Any, **options: Any) -> Deferred[list[int]]:
        given.append(options["timeout"])
        return publish(item, **options)

    api.nodes[0].get = watched_get  # type: ignore[method-assign]
    api.nodes[0].publish_own_holders = watched_publish  # type: ignore[method-assign,assignment]
    status, body = await api.json("POST", "/v1/blobs", b"on time")
    assert status == 201
    assert (await api.request("GET", "/v1/keys/" + body["key"]))[:2] == (200, b"on time")
    assert (await api.request("GET", "/v1/keys/" + body["key"] + "?timeout=30"))[0] == 200
    assert given == [DEFAULT_TIMEOUT, DEFAULT_TIMEOUT, 30.0]
    assert DEFAULT_TIMEOUT == 10.0


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", "601"])
@pytest_twisted.ensureDeferred
async def test_a_bad_deadline_is_400(api: API, value: str) -> None:
    """A ``?timeout=`` that is not seconds above 0 and at most MAX_TIMEOUT is refused."""
    status, body = await api.json("GET", "/v1/keys/" + "ab" * 64 + "?timeout=" + value)
    assert repr(value) in error_of(status, body, 400, "bad_timeout")


@pytest_twisted.ensureDeferred
async def test_refused_item_is_400(api: API) -> None:
    """An item the node itself refuses (stale sequence) answers 400 with the protocol code."""
    _, first = await api.json("PUT", "/v1/names/n", b"one")
    stored = api.nodes[0].engine.storage.published(int(first["key"], 16))
    assert stored is not None
    api.nodes[0].engine.storage.delete(0)
    from txdht.core.storage import PublishedItem

    api.nodes[0].engine.storage.set_published(
        PublishedItem(
            stored.item.__class__(
                stored.item.value,
                stored.item.public_key,
                stored.item.name,
                0,
                stored.item.signature,
            ),
            60.0,
        )
    )
    status, body = await api.json("PUT", "/v1/names/n", b"older")
    assert "sequence number" in error_of(status, body, 400, "stale_sequence")


@pytest_twisted.ensureDeferred
async def test_status(api: API) -> None:
    """GET /v1/status shows id, version, endpoints, port, whether the node joined, its peers
    and how many answer, the network's estimated size, items and uptime."""
    await api.json("POST", "/v1/blobs", b"v")
    status, body = await api.json("GET", "/v1/status")
    assert status == 200
    node = api.nodes[0]
    assert body["id"] == node.id
    assert body["port"] == node.port
    assert (body["peers"], body["live_contacts"], body["items"]) == (2, 2, 1)
    assert body["network_size"] == 3  # fewer than k contacts: all of them, and itself
    assert body["joined"] is False  # the others joined through it; it joined nobody
    assert body["endpoints"] == {"dht": "tcp:0", "http": "tcp:0"}
    assert body["version"] == "0.1.0"
    assert body["uptime"] >= 0
    await node.join([("127.0.0.1", api.nodes[1].port)])
    await api.nodes[2].stop()
    await node.lookup(api.nodes[2].engine.id)  # its request to the stopped node fails
    _, body = await api.json("GET", "/v1/status")
    assert (body["joined"], body["peers"], body["live_contacts"]) == (True, 2, 1)


@pytest_twisted.ensureDeferred
async def test_peers(api: API) -> None:
    """GET /v1/peers lists every contact with address, bucket, last seen and failures."""
    status, body = await api.json("GET", "/v1/peers")
    assert status == 200
    assert sorted(p["port"] for p in body["peers"]) == sorted(n.port for n in api.nodes[1:])
    for peer in body["peers"]:
        assert peer["host"] == "127.0.0.1"
        assert 0 <= peer["bucket"] <= 511
        assert peer["last_seen"] >= 0
        assert peer["failures"] == 0
        assert len(peer["id"]) == 128


@pytest_twisted.ensureDeferred
async def test_metrics(api: API) -> None:
    """GET /metrics is Prometheus text, as prometheus_client's parser reads it: RPC counters,
    lookup latency, the node's gauges, and the process metrics every target has."""
    await api.json("POST", "/v1/blobs", b"v")
    status, data, response = await api.request("GET", "/metrics")
    assert status == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"text/plain; version=0.0.4; charset=utf-8"
    ]
    families = {f.name: f for f in text_string_to_metric_families(data.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    stores = ("txdht_rpcs_total", (("direction", "sent"), ("outcome", "ok"), ("type", "store")))
    assert samples[stores] == 2
    assert families["txdht_rpcs"].type == "counter"
    assert families["txdht_lookup_duration_seconds"].type == "histogram"
    assert samples[("txdht_lookup_duration_seconds_count", ())] >= 1
    gauges = {name: samples[(name, ())] for name in GAUGES}
    assert gauges == {
        "txdht_items_stored": 1,
        "txdht_peers": 2,
        "txdht_live_contacts": 2,
        "txdht_network_size": 3,
        "txdht_joined": 0,
        "txdht_uptime_seconds": pytest.approx(gauges["txdht_uptime_seconds"]),
    }
    assert all(families[name].type == "gauge" for name in GAUGES)
    assert samples[("process_resident_memory_bytes", ())] > 1e6
    assert samples[("process_open_fds", ())] >= 3
    assert "python_info" in families
    # Every API (every node) has a registry of its own.
    other = APIResource(api.nodes[1])
    assert other.registry is not api.resource.registry


GAUGES = (
    "txdht_items_stored",
    "txdht_peers",
    "txdht_live_contacts",
    "txdht_network_size",
    "txdht_joined",
    "txdht_uptime_seconds",
)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/index.html", 404, "no_such_path"),
        ("POST", "/", 405, "method_not_allowed"),
        ("PUT", "/static/app.js", 405, "method_not_allowed"),
        ("GET", "/v1", 404, "no_such_path"),
        ("GET", "/v1/keys", 404, "no_such_path"),
        ("GET", "/etc/passwd", 404, "no_such_path"),
        ("DELETE", "/v1/status", 405, "method_not_allowed"),
        ("POST", "/v1/keys/" + "ab" * 64, 405, "method_not_allowed"),
        ("GET", "/v1/names/x", 405, "method_not_allowed"),
        ("GET", "/v1/blobs", 405, "method_not_allowed"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unknown_paths_and_methods(
    api: API, method: str, path: str, status: int, code: str
) -> None:
    """Unknown paths answer 404 and wrong methods 405 (with Allow), as JSON."""
    got, body = await api.json(method, path)
    error_of(got, body, status, code)


@pytest_twisted.ensureDeferred
async def test_head_answers_as_get_without_a_body(
    api: API, fail_on_logged_errors: list[LogEvent]
) -> None:
    """HEAD of anything GET serves answers GET's status and headers, its length in
    Content-Length and no body (a get too: 200 when found, 404 when not); nothing is logged
    of a body eaten. A write answers 405 naming GET and HEAD where GET is the method, and
    an event stream (which has no length) 405 naming GET."""
    key = await api.nodes[1].put_blob(b"here")
    with capturedLogs() as events:
        for path, status, length in (
            ("/v1/status", 200, None),
            ("/", 200, None),
            (f"/v1/keys/{key}", 200, 4),
            (f"/v1/keys/{'ab' * 64}", 404, None),
        ):
            got, body, response = await api.request("HEAD", path)
            assert (got, body) == (status, b"")
            (size,) = response.headers.getRawHeaders(b"content-length")
            get_status, get_body, _ = await api.request("GET", path)
            assert get_status == status
            if path != "/v1/status":  # (its uptime moves between the two)
                assert int(size) == len(get_body)
            if length is not None:
                assert int(size) == length
        got, body, response = await api.request("POST", "/v1/status")
        assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
        got, body, response = await api.request("HEAD", f"/v1/keys/{key}/events")
        assert got == 405
        assert response.headers.getRawHeaders(b"allow") == [b"GET"]
    assert not [e for e in events if "eat it" in formatEvent(e)]
    assert fail_on_logged_errors == []


@pytest_twisted.ensureDeferred
async def test_internal_failure_is_500_without_traceback(
    api: API, fail_on_logged_errors: list[LogEvent]
) -> None:
    """An unexpected failure answers 500 with a plain message and logs the traceback."""

    def broken(key: str, timeout: float | None = None) -> Deferred[bytes]:
        return fail(RuntimeError("a bug"))

    api.nodes[0].get = broken  # type: ignore[method-assign]
    status, body = await api.json("GET", "/v1/keys/" + "ab" * 64)
    message = error_of(status, body, 500, "internal")
    assert "a bug" not in message
    assert "Traceback" not in json.dumps(body)
    assert len(fail_on_logged_errors) == 1
    fail_on_logged_errors.clear()


@pytest.mark.parametrize("ending", ["cancelled", "late value", "late error"])
@pytest_twisted.ensureDeferred
async def test_client_going_away_cancels_the_work(api: API, reactor: Any, ending: str) -> None:
    """When the HTTP client disconnects mid-request, its get is cancelled and nothing is written.

    The get may end as cancelled, or (if it ignores cancellation) with a late value or error.
    """
    cancelled: list[bool] = []

    def cancel(d: Deferred[bytes]) -> None:
        cancelled.append(True)
        if ending == "late value":
            d.callback(b"too late")
        elif ending == "late error":
            d.errback(NotFoundError("too late"))

    api.nodes[0].get = lambda key, timeout=None: Deferred(cancel)  # type: ignore[method-assign]
    lost: Deferred[None] = Deferred()

    class Impatient(Protocol):
        def connectionMade(self) -> None:
            assert self.transport is not None
            path = "/v1/keys/" + "ab" * 64
            self.transport.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            reactor.callLater(0.05, self.transport.loseConnection)

        def connectionLost(self, reason: Failure | None = None) -> None:
            lost.callback(None)

    await ClientCreator(reactor, Impatient).connectTCP("127.0.0.1", api.port.getHost().port)
    await lost
    for _ in range(50):
        if cancelled:
            break
        pause: Deferred[None] = Deferred()
        reactor.callLater(0.01, pause.callback, None)
        await pause
    assert cancelled == [True]


# -- the dashboard's page and routes ----------------------------------------------------------

STATIC = Path(__file__).resolve().parent.parent / "txdht" / "static"


async def raw_request(reactor: Any, port: int, request: bytes) -> bytes:
    """Send ``request`` as it is (no client normalises its path); the whole answer."""
    done: Deferred[bytes] = Deferred()

    class Raw(Protocol):
        def connectionMade(self) -> None:
            assert self.transport is not None
            self.parts: list[bytes] = []
            self.transport.write(request)

        def dataReceived(self, data: bytes) -> None:
            self.parts.append(data)

        def connectionLost(self, reason: Failure | None = None) -> None:
            done.callback(b"".join(self.parts))

    await ClientCreator(reactor, Raw).connectTCP("127.0.0.1", port)
    return await done


@pytest_twisted.ensureDeferred
async def test_dashboard_page(api: API) -> None:
    """GET / serves the page as UTF-8 HTML with a same-origin Content-Security-Policy."""
    status, data, response = await api.request("GET", "/")
    assert status == 200
    headers = response.headers
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    (policy,) = headers.getRawHeaders(b"content-security-policy")
    assert policy.startswith(b"default-src 'self';")
    assert b"frame-ancestors 'none'" in policy
    assert headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
    assert data == (STATIC / "index.html").read_bytes()
    page = data.decode()
    assert 'src="static/app.js"' in page
    assert 'href="static/style.css"' in page
    assert '<svg id="face"' in page
    assert "node unreachable — retrying" in page


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/app.js", b"text/javascript; charset=utf-8"),
        ("/static/style.css", b"text/css; charset=utf-8"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_static_files(api: API, path: str, content_type: bytes) -> None:
    """The script and the style sheet are served with their content type and no CSP."""
    status, data, response = await api.request("GET", path)
    assert status == 200
    assert response.headers.getRawHeaders(b"content-type") == [content_type]
    assert response.headers.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
    assert not response.headers.hasHeader(b"content-security-policy")
    assert data == (STATIC / path.rsplit("/", 1)[1]).read_bytes()


def test_static_files_load_nothing_from_elsewhere() -> None:
    """The page, script and style refer to no other site (no CDN, no web fonts)."""
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        # The only address is the SVG namespace, which is a name, not something fetched.
        assert set(re.findall(r"(?:https?:)?//[\w.-]+", text)) <= {"http://www.w3.org"}
        assert "@import" not in text
        assert "url(" not in text


@pytest.mark.parametrize(
    "path",
    [
        "/static",
        "/static/",
        "/static/index.html",
        "/static/APP.JS",
        "/static/app.js/",
        "/static/py.typed",
        "/static/../web.py",
        "/static/%2e%2e/web.py",
        "/static/..%2fweb.py",
        "/static/../../setup.cfg",
        "/txdht/static/app.js",
        "//static/app.js",
        "/static//app.js",
        "/favicon.ico",
    ],
)
@pytest_twisted.ensureDeferred
async def test_only_the_three_files_are_served(api: API, reactor: Any, path: str) -> None:
    """Any path but /, /static/app.js and /static/style.css is a 404 JSON error, unnormalised."""
    answer = await raw_request(
        reactor,
        api.port.getHost().port,
        f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 404 ")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"] == "no_such_path"


@pytest_twisted.ensureDeferred
async def test_items(api: API, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /v1/items lists the held items by key: kind, name, seq, size and time to expiry."""
    status, body = await api.json("GET", "/v1/items")
    assert (status, body) == (200, {"count": 0, "items": []})
    _, named = await api.json("PUT", "/v1/names/greeting", b"hello")
    _, blob_key = await api.json("POST", "/v1/blobs", b"blob!!")
    status, body = await api.json("GET", "/v1/items")
    assert status == 200
    assert body["count"] == 2
    assert [i["key"] for i in body["items"]] == sorted([named["key"], blob_key["key"]])
    by_key = {i["key"]: i for i in body["items"]}
    assert by_key[named["key"]]["kind"] == "named"
    assert by_key[named["key"]]["name"] == "greeting"
    assert by_key[named["key"]]["seq"] == 1
    assert by_key[named["key"]]["size"] == 5
    assert by_key[blob_key["key"]]["kind"] == "blob"
    assert by_key[blob_key["key"]]["name"] is None
    assert by_key[blob_key["key"]]["size"] == 6
    for item in body["items"]:
        assert 86000 < item["expires_in"] <= 86400
    monkeypatch.setattr("txdht.web.MAX_LISTED_ITEMS", 1)
    _, body = await api.json("GET", "/v1/items")
    assert body["count"] == 2
    assert [i["key"] for i in body["items"]] == [min(named["key"], blob_key["key"])]


@pytest_twisted.ensureDeferred
async def test_lookups(api: API) -> None:
    """GET /v1/lookups shows the node's finished lookups, newest first, with their traces."""
    status, body = await api.json("GET", "/v1/lookups")
    assert (status, body) == (200, {"count": 0, "lookups": []})
    _, stored = await api.json("POST", "/v1/blobs", b"far away")
    api.nodes[0].engine.storage.delete(int(stored["key"], 16))  # so the get has to look
    status, data, _ = await api.request("GET", f"/v1/keys/{stored['key']}")
    assert (status, data) == (200, b"far away")
    await api.json("GET", "/v1/keys/" + "cd" * 64)  # 404: a lookup that found nothing
    status, body = await api.json("GET", "/v1/lookups")
    assert status == 200
    assert body["count"] == 3
    missing, found, put = body["lookups"]
    assert [lookup["number"] for lookup in body["lookups"]] == [3, 2, 1]
    assert (put["kind"], put["target"], put["found"]) == ("find_node", stored["key"], False)
    assert (found["kind"], found["target"], found["found"]) == ("find_value", stored["key"], True)
    assert (missing["kind"], missing["target"], missing["found"]) == (
        "find_value",
        "cd" * 64,
        False,
    )
    ports = {node.id: node.port for node in api.nodes[1:]}
    for lookup in body["lookups"]:
        assert lookup["seconds"] >= 0
        assert lookup["age"] >= 0
        assert lookup["trace"]
        assert lookup["hops"] == sum(1 for step in lookup["trace"] if step["event"] == "sent")
        for step in lookup["trace"]:
            assert step["event"] in ("sent", "answered")
            assert (step["host"], step["port"]) == ("127.0.0.1", ports[step["id"]])
    assert put["trace"][0]["event"] == "sent"


@pytest_twisted.ensureDeferred
async def test_lookups_show_failures_and_keep_the_last_twenty(api: API) -> None:
    """A peer that is gone shows as failed in the trace; only the last 20 lookups are kept."""
    gone = api.nodes[2]
    await gone.stop()
    await api.nodes[0].lookup(api.nodes[0].engine.id)
    _, body = await api.json("GET", "/v1/lookups")
    events = {(step["event"], step["id"]) for step in body["lookups"][0]["trace"]}
    assert ("sent", gone.id) in events
    assert ("failed", gone.id) in events
    for _ in range(24):
        await api.nodes[0].lookup(api.nodes[1].engine.id)
    _, body = await api.json("GET", "/v1/lookups")
    assert body["count"] == 25
    assert [lookup["number"] for lookup in body["lookups"]] == list(range(25, 5, -1))


# -- web pages of other sites: DNS rebinding and cross-site writes ----------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8470",
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io:80",
        "[::1",
        "x" * 300,
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_host_that_is_not_ours_is_refused(api: API, host: str) -> None:
    """A Host header naming another site (DNS rebinding) gets 421 for reads and writes alike;
    nothing is stored and the API keeps serving."""
    for method, path, body in (
        ("GET", "/v1/status", None),
        ("GET", "/", None),
        ("PUT", "/v1/names/n", b"value"),
        ("POST", "/v1/blobs", b"blob"),
    ):
        status, answer = await api.json(method, path, body, {"Host": host})
        message = error_of(status, answer, 421, "host_not_allowed")
        assert "DNS rebinding" in message
        assert len(message) < 300
    assert api.nodes[0].engine.storage.count() == 0
    assert (await api.json("GET", "/v1/status"))[0] == 200


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:{port}", "127.0.0.1", "LOCALHOST:{port}", "localhost", "[::1]:{port}", "10.1.2.3"],
)
@pytest_twisted.ensureDeferred
async def test_ip_addresses_and_localhost_are_ours(api: API, host: str) -> None:
    """An IP address (v4 or v6, any port) or localhost in Host is served."""
    port = api.port.getHost().port
    status, body = await api.json("GET", "/v1/status", headers={"Host": host.format(port=port)})
    assert status == 200
    assert body["id"] == api.nodes[0].id


@pytest_twisted.ensureDeferred
async def test_allowed_host_names_are_served(api: API) -> None:
    """Names given to the resource (twistd dht --http-host) are served, in any case."""
    api.resource.allowed_hosts = frozenset({"localhost", "dht.lan"})
    status, _ = await api.json("PUT", "/v1/names/n", b"v", {"Host": "DHT.lan:8470"})
    assert status == 201
    status, _ = await api.json("GET", "/v1/status", headers={"Host": "other.lan"})
    assert status == 421


@pytest_twisted.ensureDeferred
async def test_a_request_without_host_is_served(api: API, reactor: Any) -> None:
    """An HTTP/1.0 request without Host (no browser sends one) is served."""
    answer = await raw_request(reactor, api.port.getHost().port, b"GET /v1/status HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 ")


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1:1",
        "https://127.0.0.1:{port}.evil.example",
        "http://[::1",
        "",
    ],
)
@pytest_twisted.ensureDeferred
async def test_writes_from_another_origin_are_refused(api: API, origin: str) -> None:
    """A PUT or POST whose Origin is not the API's own (a page on another site) gets 403, and
    nothing is stored; reads from such pages are answered (the browser keeps them from it)."""
    port = api.port.getHost().port
    headers = {"Origin": origin.format(port=port)}
    for method, path in (("PUT", "/v1/names/n"), ("POST", "/v1/blobs")):
        status, body = await api.json(method, path, b"value", headers)
        assert "may not write through this node" in error_of(status, body, 403, "cross_origin")
    assert api.nodes[0].engine.storage.count() == 0
    assert list(api.nodes[0].engine.storage.published_items()) == []
    status, _ = await api.json("GET", "/v1/status", headers=headers)
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_writes_from_the_dashboard_s_own_origin_are_served(api: API) -> None:
    """The dashboard's form writes with Origin equal to the API's own address: served."""
    port = api.port.getHost().port
    headers = {"Origin": f"http://127.0.0.1:{port}"}
    status, body = await api.json("PUT", "/v1/names/n", b"value", headers)
    assert status == 201
    status, _ = await api.json("POST", "/v1/blobs", b"blob", headers)
    assert status == 201
    assert await api.nodes[1].get(body["key"]) == b"value"


class _Events(Protocol):
    """Reads a Server-Sent Events stream; ``wait(n)`` fires once ``n`` events have come."""

    def __init__(self) -> None:
        self.buffer = b""
        self.events: list[tuple[str, Any]] = []
        self.comments = 0
        self._waiting: list[tuple[int, Deferred[None]]] = []
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().splitlines() if ": " in line
            )
            if block.startswith(b":"):
                self.comments += 1
                continue
            self.events.append((fields["event"], json.loads(fields["data"])))
        for count, d in list(self._waiting):
            if len(self.events) >= count:
                self._waiting.remove((count, d))
                d.callback(None)

    def wait(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_events_stream_each_new_version_and_stop_when_the_client_goes(api: API) -> None:
    """GET /v1/keys/{key}/events is an event stream: a ``version`` event (key, seq, value in
    base64) for the current and each newer version, in order; when the client closes the
    connection, the node stops listening."""
    writer = api.nodes[1]
    key = await writer.put("news", b"one")
    agent = Agent(api.reactor)
    url = f"http://127.0.0.1:{api.port.getHost().port}/v1/keys/{key}/events".encode()
    response = await agent.request(b"GET", url)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    stream = _Events()
    response.deliverBody(stream)
    await stream.wait(1)
    await writer.put("news", b"two")
    await stream.wait(2)
    assert stream.events == [
        ("version", {"key": key, "seq": 1, "value": "b25l"}),
        ("version", {"key": key, "seq": 2, "value": "dHdv"}),
    ]
    assert stream.comments >= 1
    status, listens = await api.json("GET", "/v1/listens")
    assert status == 200
    (mine,) = listens["listening"]
    assert (mine["key"], mine["delivered"], mine["seq"]) == (key, 2, 2)
    assert len(mine["holders"]) >= 1
    assert mine["polled"] == []
    holder_view = await api.json("GET", "/v1/listens")
    assert isinstance(holder_view[1]["held"], list)
    response._transport.loseConnection()  # type: ignore[attr-defined]
    await stream.closed
    await until_unsubscribed(api)


async def until_unsubscribed(api: API) -> None:
    """Wait (5 s at most) until the API's node has no listen left (the server has seen the
    client go)."""
    for _ in range(500):
        if not api.nodes[0].subscriptions:
            return
        await deferLater(api.reactor, 0.01)
    raise AssertionError("the listen outlived its event stream")


@pytest_twisted.ensureDeferred
async def test_events_tell_of_expiry_and_keep_the_stream_alive(
    api: API, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``expired`` event comes when the item expires; an idle stream gets comments."""
    import txdht.web

    monkeypatch.setattr(txdht.web, "KEEP_ALIVE", 0.05)
    key = await api.nodes[1].put("brief", b"soon gone", ttl=1)
    agent = Agent(api.reactor)
    url = f"http://127.0.0.1:{api.port.getHost().port}/v1/keys/{key}/events".encode()
    response = await agent.request(b"GET", url)
    stream = _Events()
    response.deliverBody(stream)
    await stream.wait(1)
    await deferLater(api.reactor, 1.2)
    for node in api.nodes:
        node.expire()
    await stream.wait(2)
    assert stream.events[1] == ("expired", {"key": key, "seq": 1, "expired": True})
    assert stream.comments >= 3
    response._transport.loseConnection()  # type: ignore[attr-defined]
    await stream.closed
    await until_unsubscribed(api)


@pytest_twisted.ensureDeferred
async def test_events_of_a_malformed_key_are_refused(api: API) -> None:
    """A malformed key is answered 400 bad_key, as for a get."""
    status, body = await api.json("GET", "/v1/keys/nothex/events")
    error_of(status, body, 400, "bad_key")
    status, body = await api.json("POST", f"/v1/keys/{'ab' * 64}/events")
    error_of(status, body, 405, "method_not_allowed")
