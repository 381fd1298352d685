"""The ``txdht`` command line client, against a fake node's HTTP API on real loopback HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from txdht import cli
from txdht.cli import main

MAX_VALUE = 1000
KEY_RE = re.compile(r"[0-9a-f]{128}")

STATUS: dict[str, Any] = {
    "id": "ab" * 64,
    "version": "0.1.0",
    "endpoints": {"dht": "udp:127.0.0.1:8468", "http": "http://127.0.0.1:8470"},
    "port": 8468,
    "joined": True,
    "peers": 2,
    "live_contacts": 1,
    "network_size": 1234.4,
    "items": 5,
    "uptime": 7390.75,
}

PEERS: list[dict[str, Any]] = [
    {
        "id": "0123456789abcdef" * 8,
        "host": "10.0.0.2",
        "port": 8468,
        "bucket": 155,
        "last_seen": 12.4,
        "failures": 0,
    },
    {"id": "fe" * 64, "host": "::1", "port": 8469, "bucket": 9, "last_seen": 3725, "failures": 2},
]

# Overrides: ``(status, content type, body)``, or one of these special behaviours.
SLOW = "slow"  # answer nothing until the test ends
HANG_UP = "hang up"  # close the connection without a reply
GARBAGE = "garbage"  # reply with something that is not HTTP
Override = tuple[int, str, bytes] | str


class FakeNode(ThreadingHTTPServer):
    """A stand-in for a node's HTTP API (``/v1/...``) over an in-memory dict.

    It implements just enough of the API, as documented, for the client's tests; the real API's
    own tests live elsewhere. ``overrides`` maps a path to a canned reply or misbehaviour.
    Handler threads are joined on close, and a slow handler waits at most for ``release``.
    """

    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeNodeHandler)
        self.values: dict[str, bytes] = {}
        self.names: dict[bytes, str] = {}
        self.status: dict[str, Any] = dict(STATUS)
        self.peers: list[dict[str, Any]] = list(PEERS)
        self.overrides: dict[str, Override] = {}
        self.release = threading.Event()
        #: The deadlines the client gave its gets and puts (``?timeout=``).
        self.timeouts: list[float] = []
        #: The path of every request, in order.
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        """The base URL of the API."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeNodeHandler(BaseHTTPRequestHandler):
    """Serves one request for ``FakeNode``."""

    server: FakeNode

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""

    @property
    def route(self) -> str:
        """The path, without its query."""
        return self.path.partition("?")[0]

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._reply(status, json.dumps(data).encode())

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": code, "message": message})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _overridden(self) -> bool:
        self.server.paths.append(self.route)
        query = self.path.partition("?")[2]
        self.server.timeouts += [float(v) for v in urllib.parse.parse_qs(query).get("timeout", [])]
        override = self.server.overrides.get(self.route)
        if override is None:
            return False
        if override == SLOW:
            self.server.release.wait(timeout=5)
        elif override == GARBAGE:
            self.wfile.write(b"garbage\r\n\r\n")
        elif isinstance(override, tuple):
            status, content_type, body = override
            self._reply(status, body, content_type)
        # HANG_UP: return without a reply; the server closes the connection.
        return True

    def _store(self, key: str, value: bytes) -> None:
        if len(value) > MAX_VALUE:
            self._error(413, "value_too_large", f"values are at most {MAX_VALUE} bytes")
            return
        self.server.values[key] = value
        self._json(201, {"key": key, "stored_on": 3})

    def do_PUT(self) -> None:
        """``PUT /v1/names/{name}``: store the body under the name's key."""
        body = self._body()
        if self._overridden():
            return
        prefix = "/v1/names/"
        name = urllib.parse.unquote_to_bytes(self.route[len(prefix) :])
        if not self.route.startswith(prefix) or not name:
            self._error(404, "no_route", "no such path")
            return
        key = hashlib.sha512(b"name\0" + name).hexdigest()
        self.server.names[name] = key
        self._store(key, body)

    def do_POST(self) -> None:
        """``POST /v1/blobs``: store the body under its hash."""
        body = self._body()
        if self._overridden():
            return
        self._store(hashlib.sha512(body).hexdigest(), body)

    def do_GET(self) -> None:
        """``GET /v1/keys/{key}``, ``/v1/status`` and ``/v1/peers``."""
        if self._overridden():
            return
        if self.route == "/v1/status":
            self._json(200, self.server.status)
        elif self.route == "/v1/peers":
            self._json(200, {"peers": self.server.peers})
        else:
            key = urllib.parse.unquote(self.route.removeprefix("/v1/keys/"))
            if not KEY_RE.fullmatch(key):
                self._error(400, "bad_key", "a key is 128 lowercase hex digits")
            elif key not in self.server.values:
                self._error(404, "not_found", f"no value found under {key[:16]}...")
            else:
                self._reply(200, self.server.values[key], "application/octet-stream")


class BinaryStdin:
    """A stand-in for ``sys.stdin`` with only the binary ``buffer``."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


class BrokenStdout:
    """A ``sys.stdout`` whose reader has gone: every write fails with a broken pipe."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.buffer = self

    def write(self, data: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        """Nothing is buffered."""

    def fileno(self) -> int:
        if self.fd is None:
            raise io.UnsupportedOperation("fileno")
        return self.fd


@pytest.fixture
def node() -> Iterator[FakeNode]:
    """A fake node serving on a loopback port in a background thread."""
    server = FakeNode()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


@pytest.fixture(autouse=True)
def no_node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of whoever runs the tests does not choose the node."""
    monkeypatch.delenv(cli.NODE_ENV, raising=False)


def run(node: FakeNode, *args: str) -> int:
    """Run the client against ``node``."""
    return main(["--node", node.url, *args])


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- put, put-blob, get -----------------------------------------------------------------------


def test_put_prints_the_key(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """``put NAME VALUE`` stores the value and prints its key as one line."""
    assert run(node, "put", "greeting", "hello") == 0
    key = node.names[b"greeting"]
    assert capsys.readouterr() == (key + "\n", "")
    assert node.values[key] == b"hello"


def test_put_percent_encodes_the_name(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """A name with slashes, spaces, ``?`` and non-ASCII reaches the node intact, as UTF-8."""
    name = "a/b c?d#é%"
    assert run(node, "put", name, "välue") == 0
    key = node.names[name.encode()]
    assert capsys.readouterr().out == key + "\n"
    assert node.values[key] == "välue".encode()


def test_put_reads_the_value_from_stdin(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put NAME -`` stores the bytes of stdin."""
    monkeypatch.setattr(sys, "stdin", BinaryStdin(b"from stdin\n"))
    assert run(node, "put", "n", "-") == 0
    assert node.values[capsys.readouterr().out.strip()] == b"from stdin\n"


def test_put_rejects_an_empty_name(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty name is a usage error, and nothing is sent."""
    assert run(node, "put", "", "v") == 2
    assert capsys.readouterr() == ("", "txdht: the name must not be empty\n")
    assert node.values == {}


def test_put_blob_stores_a_file(
    node: FakeNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``put-blob FILE`` stores the file's bytes and prints the key."""
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x00blob\xff")
    assert run(node, "put-blob", str(path)) == 0
    key = hashlib.sha512(b"\x00blob\xff").hexdigest()
    assert capsys.readouterr() == (key + "\n", "")
    assert node.values[key] == b"\x00blob\xff"


def test_put_blob_reads_stdin(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``put-blob -`` stores the bytes of stdin."""
    monkeypatch.setattr(sys, "stdin", BinaryStdin(b"piped"))
    assert run(node, "put-blob", "-") == 0
    assert capsys.readouterr().out == hashlib.sha512(b"piped").hexdigest() + "\n"


def test_put_blob_of_a_missing_file_exits_2(
    node: FakeNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file that cannot be read is reported in one line, with exit status 2."""
    missing = tmp_path / "missing.bin"
    assert run(node, "put-blob", str(missing)) == 2
    assert capsys.readouterr() == ("", f"txdht: cannot read {missing}: No such file or directory\n")


def test_binary_values_round_trip_exactly(
    node: FakeNode, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes with NULs, non-UTF-8 and no final newline come back from ``get`` unchanged."""
    value = bytes(range(256)) + b"\x00\xff\xfe\r\n\x00"
    monkeypatch.setattr(sys, "stdin", BinaryStdin(value))
    assert run(node, "put", "binary", "-") == 0
    key = capsysbinary.readouterr().out.decode().strip()
    assert run(node, "get", key) == 0
    assert capsysbinary.readouterr() == (value, b"")


def test_get_writes_to_an_output_file(
    node: FakeNode, capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    """``get KEY -o FILE`` writes the value to FILE and nothing to stdout."""
    key = hashlib.sha512(b"\x00data\x80").hexdigest()
    node.values[key] = b"\x00data\x80"
    out = tmp_path / "out.bin"
    assert run(node, "get", key, "-o", str(out)) == 0
    assert out.read_bytes() == b"\x00data\x80"
    assert capsysbinary.readouterr() == (b"", b"")


def test_get_to_an_unwritable_file_exits_2(
    node: FakeNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """An output path that cannot be written is reported, with exit status 2."""
    key = "0" * 128
    node.values[key] = b"v"
    assert run(node, "get", key, "--output", str(tmp_path)) == 2
    assert capsys.readouterr().err.startswith(f"txdht: cannot write {tmp_path}: ")


def test_get_of_an_unknown_key_exits_1(
    node: FakeNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A 404 prints the node's message on stderr, exits 1, and writes no output file."""
    out = tmp_path / "never-written"
    assert run(node, "get", "a" * 128, "-o", str(out)) == 1
    assert capsys.readouterr() == ("", "txdht: no value found under aaaaaaaaaaaaaaaa...\n")
    assert not out.exists()


@pytest.mark.parametrize("command", ["get", "watch"])
@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("nothex", "'nothex' (6 characters)"),
        ("../status", "'../status' (9 characters)"),
        ("ab" * 63, f"'{'ab' * 8}a...' (126 characters)"),
        ("ab" * 64 + "0", f"'{'ab' * 8}a...' (129 characters)"),
        ("g" * 128, f"'{'g' * 17}...' (128 characters)"),
        ("", "'' (0 characters)"),
    ],
)
def test_a_malformed_key_is_a_usage_error(
    node: FakeNode, capsys: pytest.CaptureFixture[str], command: str, key: str, shown: str
) -> None:
    """A key that is not 128 hex digits exits 2 with what was expected, without asking the
    node (a path such as ../status never reaches it)."""
    with pytest.raises(SystemExit) as caught:
        run(node, command, key)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument KEY: invalid key {shown}: expected the 128 hex digits" in err
    assert node.paths == []


def test_a_key_in_capitals_or_with_spaces_is_read(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hex digits in either case, with spaces around (pasted), name the same key."""
    key = hashlib.sha512(b"shouting").hexdigest()
    node.values[key] = b"shouting"
    assert run(node, "get", f"  {key.upper()}\n") == 0
    assert capsys.readouterr().out == "shouting"
    assert node.paths == [f"/v1/keys/{key}"]


def test_a_value_too_large_exits_1(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 413 prints the node's message."""
    monkeypatch.setattr(sys, "stdin", BinaryStdin(b"x" * (MAX_VALUE + 1)))
    assert run(node, "put-blob", "-") == 1
    assert capsys.readouterr() == ("", f"txdht: values are at most {MAX_VALUE} bytes\n")


def test_a_failed_put_exits_1(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """A 503 ``put_failed`` prints the node's message."""
    error = {"error": "put_failed", "message": "no peer stored the value"}
    node.overrides["/v1/names/n"] = (503, "application/json", json.dumps(error).encode())
    assert run(node, "put", "n", "v") == 1
    assert capsys.readouterr() == ("", "txdht: no peer stored the value\n")


@pytest.mark.parametrize(
    "body",
    [b"<html>Bad Gateway</html>", b'{"error": "bad_gateway"}', b'["not", "an object"]'],
    ids=["html", "json-without-message", "json-not-an-object"],
)
def test_an_error_without_a_message_shows_the_status_line(
    node: FakeNode, capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    """An error reply without a JSON message is reported by its status line."""
    node.overrides["/v1/status"] = (502, "text/html", body)
    assert run(node, "status") == 1
    assert capsys.readouterr() == ("", "txdht: the node replied 502 Bad Gateway\n")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "the node sent a reply that is not valid JSON: Expecting value"),
        (b'["a list"]', "the node sent a JSON reply that is not an object"),
        (b'{"stored_on": 3}', "the node's reply to a store has no key"),
    ],
    ids=["invalid-json", "not-an-object", "no-key"],
)
def test_an_unreadable_store_reply_exits_1(
    node: FakeNode, capsys: pytest.CaptureFixture[str], body: bytes, message: str
) -> None:
    """A 201 whose body is not the expected JSON object is an error, not a traceback."""
    node.overrides["/v1/names/n"] = (201, "application/json", body)
    assert run(node, "put", "n", "v") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"txdht: {message}")
    assert err.count("\n") == 1


# -- status and peers -------------------------------------------------------------------------


def test_status_is_human_readable(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """``status`` prints one labelled line per field: whether the node joined, its peers and
    how many answer, the network's estimated size, the uptime in hours and minutes."""
    assert run(node, "status") == 0
    assert capsys.readouterr().out == (
        f"id:            {'ab' * 64}\n"
        "version:       0.1.0\n"
        "dht endpoint:  udp:127.0.0.1:8468\n"
        "http endpoint: http://127.0.0.1:8470\n"
        "port:          8468\n"
        "joined:        yes\n"
        "peers:         2\n"
        "live contacts: 1\n"
        "network size:  ~1234 (estimated)\n"
        "items:         5\n"
        "uptime:        2h 03m 10s\n"
    )


def test_status_says_when_the_node_has_not_joined(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node that has not joined says so: ``joined: no``."""
    node.status["joined"] = False
    assert run(node, "status") == 0
    assert "joined:        no\n" in capsys.readouterr().out


def test_status_of_a_sparse_reply_shows_question_marks(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fields the node left out (or sent oddly) show as ``?`` instead of failing."""
    node.status = {"endpoints": "none", "uptime": "long", "joined": 1, "network_size": "many"}
    assert run(node, "status") == 0
    assert capsys.readouterr().out == (
        "id:            ?\n"
        "version:       ?\n"
        "port:          ?\n"
        "joined:        ?\n"
        "peers:         ?\n"
        "live contacts: ?\n"
        "network size:  ?\n"
        "items:         ?\n"
        "uptime:        ?\n"
    )


@pytest.mark.parametrize(
    ("uptime", "shown"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (65, "1m 05s"),
        (3600, "1h 00m 00s"),
        (90061, "1d 01h 01m 01s"),
        (-5, "0s"),
        (True, "?"),
        (None, "?"),
    ],
)
def test_uptime_formats(
    node: FakeNode, capsys: pytest.CaptureFixture[str], uptime: object, shown: str
) -> None:
    """Uptimes read as days, hours, minutes and seconds; a non-number shows as ``?``."""
    node.status["uptime"] = uptime
    assert run(node, "status") == 0
    assert capsys.readouterr().out.endswith(f"uptime:        {shown}\n")


def test_an_infinite_uptime_shows_a_question_mark(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON ``Infinity`` (which Python's json accepts) is not a duration."""
    node.overrides["/v1/status"] = (200, "application/json", b'{"uptime": Infinity}')
    assert run(node, "status") == 0
    assert capsys.readouterr().out.endswith("uptime:        ?\n")


@pytest.mark.parametrize("command", ["status", "peers"])
def test_json_output_is_the_reply(
    node: FakeNode, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """``--json`` prints the node's JSON reply as returned, ending in a newline."""
    assert run(node, command, "--json") == 0
    expected = node.status if command == "status" else {"peers": node.peers}
    out = capsys.readouterr().out
    assert out == json.dumps(expected) + "\n"
    assert json.loads(out) == expected


def test_json_output_keeps_a_final_newline_single(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reply that already ends in a newline is printed without a second one."""
    node.overrides["/v1/status"] = (200, "application/json", b'{"id": "x"}\n')
    assert run(node, "status", "--json") == 0
    assert capsys.readouterr().out == '{"id": "x"}\n'


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["peers", "--json"]])
def test_invalid_json_in_a_success_reply_exits_1(
    node: FakeNode, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """A 200 whose body is not JSON is reported in one line, with exit status 1."""
    node.overrides["/v1/" + args[0]] = (200, "application/json", b"{oops")
    assert run(node, *args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("txdht: the node sent a reply that is not valid JSON: ")


def test_peers_is_a_table(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """``peers`` prints a table with short ids, addresses (IPv6 bracketed) and ages."""
    assert run(node, "peers") == 0
    assert capsys.readouterr().out == (
        "ID                ADDRESS        BUCKET  LAST SEEN       FAILURES\n"
        "0123456789abcdef  10.0.0.2:8468     155  12s ago                0\n"
        "fefefefefefefefe  [::1]:8469          9  1h 02m 05s ago         2\n"
    )


def test_peers_shows_missing_fields_as_question_marks(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer entry with fields left out still makes a row."""
    node.peers = [{}]
    assert run(node, "peers") == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["?", "?:?", "?", "?", "ago", "?"]


def test_no_peers(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty routing table says so."""
    node.peers = []
    assert run(node, "peers") == 0
    assert capsys.readouterr().out == "no peers\n"


@pytest.mark.parametrize("body", [b'{"peers": 3}', b'{"peers": [1]}', b"{}"])
def test_a_malformed_peer_list_exits_1(
    node: FakeNode, capsys: pytest.CaptureFixture[str], body: bytes
) -> None:
    """A peer list that is not a list of objects is an error."""
    node.overrides["/v1/peers"] = (200, "application/json", body)
    assert run(node, "peers") == 1
    assert capsys.readouterr() == ("", "txdht: the node's peer list is malformed\n")


# -- connection options and failures ----------------------------------------------------------


def test_node_from_the_environment(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TXDHT_NODE`` chooses the node when ``--node`` is not given."""
    monkeypatch.setenv("TXDHT_NODE", node.url + "/")
    assert main(["status"]) == 0
    assert capsys.readouterr().out.startswith("id:")


def test_options_after_the_command_override(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--node`` after the command wins over the environment; a bare HOST:PORT is http."""
    monkeypatch.setenv("TXDHT_NODE", f"http://127.0.0.1:{closed_port()}")
    host_port = node.url.removeprefix("http://")
    assert main(["peers", "--node", host_port, "--timeout", "5"]) == 0
    assert capsys.readouterr().out.startswith("ID ")


def test_default_node(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without ``--node`` or ``TXDHT_NODE`` the client asks the default node URL."""
    urls: list[str] = []

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> object:
        urls.append(request.full_url)
        assert timeout == 10.0
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert main(["status"]) == 3
    assert urls == ["http://127.0.0.1:8470/v1/status"]
    capsys.readouterr()


def test_gets_and_puts_give_the_node_their_deadline(node: FakeNode) -> None:
    """A get or a put asks the node to give up after ``--timeout`` seconds (10 by default);
    other commands give no deadline."""
    assert run(node, "put", "greeting", "hello") == 0
    key = node.names[b"greeting"]
    assert run(node, "--timeout", "2.5", "get", key) == 0
    assert run(node, "status") == 0
    assert node.timeouts == [10.0, 2.5]


def test_the_command_waits_a_little_longer_than_the_deadline_it_gives(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """For a get the command waits its --timeout plus GRACE, so the node's own answer to a
    missed deadline (504, saying how far it got) reaches it."""
    waits: list[float] = []

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> object:
        waits.append(timeout)
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert main(["--timeout", "3", "get", "ab" * 64]) == 3
    assert waits == [3.0 + cli.GRACE]
    capsys.readouterr()


def test_a_missed_deadline_is_reported_with_what_the_node_got(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node's 504 for a get that missed its deadline is printed as it says it, exit 1."""
    key = "ab" * 64
    message = "get did not finish within 10 s: 7 peers answered"
    body = json.dumps({"error": "timeout", "message": message, "answered": 7}).encode()
    node.overrides["/v1/keys/" + key] = (504, "application/json", body)
    assert run(node, "get", key) == 1
    assert capsys.readouterr() == ("", f"txdht: {message}\n")


def test_unreachable_node_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """A node that is not listening is reported with a hint about ``--node``, exit status 3."""
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["--node", url, "status"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"txdht: cannot reach the node at {url}: ")
    assert err.endswith("; is it running? (--node)\n")
    assert err.count("\n") == 1


def test_a_slow_node_times_out_with_exit_3(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node that does not answer within ``--timeout`` is given up on, exit status 3."""
    node.overrides["/v1/status"] = SLOW
    started = time.monotonic()
    assert run(node, "--timeout", "0.2", "status") == 3
    assert time.monotonic() - started < 3
    assert capsys.readouterr() == (
        "",
        f"txdht: the node at {node.url} did not answer within 0.2s (--timeout)\n",
    )


def test_a_connect_timeout_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A timeout while connecting (urllib wraps it in URLError) is reported the same way."""

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> object:
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert main(["--node", "http://192.0.2.1:8470", "--timeout", "1.5", "peers"]) == 3
    assert capsys.readouterr().err == (
        "txdht: the node at http://192.0.2.1:8470 did not answer within 1.5s (--timeout)\n"
    )


def test_a_node_that_hangs_up_exits_3(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """A connection closed without a reply is reported as a connection failure."""
    node.overrides["/v1/status"] = HANG_UP
    assert run(node, "status") == 3
    assert capsys.readouterr().err.startswith(
        f"txdht: the connection to the node at {node.url} failed: "
    )


def test_a_reply_that_is_not_http_exits_1(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """Something other than HTTP on the port is reported, not raised."""
    node.overrides["/v1/status"] = GARBAGE
    assert run(node, "status") == 1
    assert capsys.readouterr().err.startswith(
        f"txdht: the node at {node.url} sent an invalid HTTP reply: BadStatusLine"
    )


def test_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while waiting for the node ends quietly with exit status 130."""

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert main(["status"]) == 130
    assert capsys.readouterr() == ("", "txdht: interrupted\n")


def test_closed_stdout_without_a_descriptor(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that went away (``| head``) ends the command quietly with exit status 1."""
    node.values["0" * 128] = b"value"
    monkeypatch.setattr(sys, "stdout", BrokenStdout(None))
    assert run(node, "get", "0" * 128) == 1
    assert capsys.readouterr().err == "txdht: output closed early\n"


def test_closed_stdout_is_pointed_at_devnull(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a broken pipe stdout's descriptor goes to /dev/null, so the exit flush is quiet."""
    read_fd, write_fd = os.pipe()
    try:
        monkeypatch.setattr(sys, "stdout", BrokenStdout(write_fd))
        assert run(node, "status") == 1
        assert os.read(read_fd, 10) == b""  # the pipe has no writer left
        assert os.write(write_fd, b"x") == 1  # and writes go to /dev/null
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert capsys.readouterr().err == "txdht: output closed early\n"


# -- usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["put", "name"], "the following arguments are required: VALUE"),
        (["--node", "ftp://host", "status"], "invalid node URL 'ftp://host'"),
        (["--node", "http://", "status"], "invalid node URL 'http://'"),
        (["--timeout", "0", "status"], "invalid timeout '0'"),
        (["--timeout", "-1", "status"], "invalid timeout '-1'"),
        (["--timeout", "inf", "status"], "invalid timeout 'inf'"),
        (["--timeout", "soon", "status"], "invalid timeout 'soon'"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Bad arguments exit 2 through argparse, naming the problem."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_node_url_in_the_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid ``TXDHT_NODE`` is a usage error that names the variable."""
    monkeypatch.setenv("TXDHT_NODE", "gopher://x")
    with pytest.raises(SystemExit) as exit_info:
        main(["status"])
    assert exit_info.value.code == 2
    assert "TXDHT_NODE" in capsys.readouterr().err


def test_help_mentions_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` exits 0 and lists every command, the exit statuses and the environment."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in ["put", "put-blob", "get", "status", "peers", "TXDHT_NODE", "--timeout", "130"]:
        assert word in out


@pytest.mark.parametrize("command", ["put", "put-blob", "get", "status", "peers"])
def test_each_command_has_help_with_an_example(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Each command's ``--help`` exits 0 and shows an example using it."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: txdht {command} " in out
    assert re.search(rf"example:\n .*txdht {command} ", out)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` prints the package version."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == "txdht 0.1.0\n"


def test_runs_in_a_fresh_interpreter_without_twisted() -> None:
    """In a new process, ``main(["--help"])`` works and Twisted is never imported."""
    code = (
        "import sys\n"
        "from txdht.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'twisted']\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: txdht" in result.stdout
    assert "put-blob" in result.stdout


# -- watch ------------------------------------------------------------------------------------

WATCHED = "cd" * 64
EVENTS = (
    b": listening\n\n"
    b'event: version\nid: 1\ndata: {"key": "'
    + WATCHED.encode()
    + b'", "seq": 1, "value": "b25l"}\n\n'
    b": keep-alive\n\n"
    b'event: version\nid: 2\ndata: {"key": "'
    + WATCHED.encode()
    + b'", "seq": 2, "value": "dHdv"}\n\n'
    b'event: expired\nid: 2\ndata: {"key": "'
    + WATCHED.encode()
    + b'", "seq": 2, "expired": true}\n\n'
)


def watch_stream(node: FakeNode, body: bytes) -> None:
    """Make ``node`` answer the watch of ``WATCHED`` with the event stream ``body``."""
    node.overrides[f"/v1/keys/{WATCHED}/events"] = (200, "text/event-stream", body)


def test_watch_prints_each_value_and_tells_expiry_on_stderr(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each version's value is a line on stdout; the expiry is told on stderr."""
    watch_stream(node, EVENTS)
    assert run(node, "watch", WATCHED, "--count", "3") == 0
    out, err = capsys.readouterr()
    assert out == "one\ntwo\n"
    assert "version 2 expired" in err


def test_watch_adds_no_second_line_end(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """A value that ends with a newline (``echo v1 | txdht put``) is one line, not two."""
    watch_stream(node, EVENTS.replace(b'"b25l"', b'"djEK"'))  # "v1\n"
    assert run(node, "watch", WATCHED, "--count", "2") == 0
    assert capsys.readouterr().out == "v1\ntwo\n"


@pytest.mark.parametrize("count", ["0", "-1", "many"])
def test_watch_count_is_at_least_1(
    node: FakeNode, capsys: pytest.CaptureFixture[str], count: str
) -> None:
    """--count takes a whole number of events, 1 or more."""
    with pytest.raises(SystemExit) as caught:
        run(node, "watch", WATCHED, "--count", count)
    assert caught.value.code == 2
    assert f"invalid count {count!r}: expected a number >= 1" in capsys.readouterr().err


def test_watch_json_prints_each_event_as_a_json_line(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints each event as the node sent it, one JSON object a line."""
    watch_stream(node, EVENTS)
    assert run(node, "watch", WATCHED, "--json", "--count", "3") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["seq"], e.get("value"), e.get("expired")) for e in lines] == [
        (1, "b25l", None),
        (2, "dHdv", None),
        (2, None, True),
    ]


def test_watch_of_a_stream_that_ends_exits_3(
    node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream the node closes (it stopped) ends the watch with status 3."""
    watch_stream(node, EVENTS)
    assert run(node, "watch", WATCHED) == 3
    assert "closed the stream" in capsys.readouterr().err


def test_watch_errors(node: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused watch exits 1 with the node's message; garbage, silence and no node exit 3."""
    node.overrides[f"/v1/keys/{WATCHED}/events"] = (
        400,
        "application/json",
        b'{"error": "bad_request", "message": "too many listens"}',
    )
    assert run(node, "watch", WATCHED) == 1
    assert capsys.readouterr().err == "txdht: too many listens\n"
    node.overrides[f"/v1/keys/{WATCHED}/events"] = GARBAGE
    assert run(node, "watch", WATCHED) == 3
    assert "connection to the node" in capsys.readouterr().err
    assert main(["--node", f"http://127.0.0.1:{closed_port()}", "watch", WATCHED]) == 3
    assert "cannot reach" in capsys.readouterr().err


def test_watch_of_a_silent_node_exits_3(
    node: FakeNode, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that sends nothing (not even its keep-alive comments) is taken as gone."""
    monkeypatch.setattr(cli, "WATCH_SILENCE", 0.2)
    node.overrides[f"/v1/keys/{WATCHED}/events"] = SLOW
    assert run(node, "watch", WATCHED) == 3
    assert "sent nothing for 0.2s" in capsys.readouterr().err
