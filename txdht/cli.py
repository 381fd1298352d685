"""The ``txdht`` command line client: talks to a running node over its HTTP JSON API.

It stores values (``put``, ``put-blob``), fetches them (``get``), prints each new version of
one as it is stored (``watch``) and shows the node's state (``status``, ``peers``). Only the
standard library is used (no Twisted), so the client starts fast and runs anywhere the package
is installed.

Exit status: 0 success; 1 the node reported an error (its message is shown) or sent a reply the
client cannot read; 2 a usage error or a local file that cannot be read or written; 3 the node
cannot be reached or did not answer in time; 130 interrupted (Ctrl-C).

``main`` reads ``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` when it runs, not at import, so
callers (and tests) may replace them.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from txdht import __version__

__all__ = ["main"]

DEFAULT_NODE = "http://127.0.0.1:8470"
DEFAULT_TIMEOUT = 10.0
#: Seconds the command waits for a get or put past the deadline it gave the node.
GRACE = 5.0
#: Seconds ``watch`` waits for a byte of its event stream (the node sends a comment every 15 s)
#: before it decides the node has gone.
WATCH_SILENCE = 45.0
NODE_ENV = "TXDHT_NODE"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

_PROGRAM_EPILOG = f"""\
examples:
  txdht put greeting "hello world"        store a value under a name, print its key
  txdht put-blob photo.jpg                store a file under its own hash, print its key
  txdht get KEY -o copy.jpg               fetch a value into a file
  txdht watch KEY --json                  print each new version as a JSON line
  txdht --node http://127.0.0.1:8471 status  talk to another node on this machine

The node is {DEFAULT_NODE} unless --node (before or after the command) or
the {NODE_ENV} environment variable names another.

exit status:
  0    success
  1    the node reported an error (e.g. not found) or sent an unreadable reply
  2    usage error, or a local file that cannot be read or written
  3    the node cannot be reached, or did not answer within --timeout
  130  interrupted
"""


class CLIError(Exception):
    """A failure to report as one line on stderr, with the exit status to end with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- argument types ---------------------------------------------------------------------------


def _node_url(text: str) -> str:
    """Check a node URL (``http://`` is assumed when no scheme is given); drop a trailing slash."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"invalid node URL {text!r} (from --node or {NODE_ENV}): expected http://HOST:PORT"
        )
    return url.rstrip("/")


def _timeout(text: str) -> float:
    """Parse a timeout: a finite number of seconds greater than zero."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected seconds > 0")
    return seconds


def _key(text: str) -> str:
    """Check a key: the 128 hex digits ``put`` printed (any case, spaces around ignored),
    before asking the node, so that a mistyped key is a usage error, not the node's refusal."""
    key = text.strip().lower()
    if not _KEY.fullmatch(key):
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise argparse.ArgumentTypeError(
            f"invalid key {shown!r} ({len(key)} characters): expected the 128 hex digits "
            "that put printed"
        )
    return key


_KEY = re.compile(r"[0-9a-f]{128}")


def _count(text: str) -> int:
    """Parse ``--count``: a whole number of events, at least 1."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a number >= 1")
    return count


# -- talking to the node ----------------------------------------------------------------------


def _exchange(request: urllib.request.Request, timeout: float) -> tuple[int, str, bytes]:
    """Send ``request`` and read the whole reply: (status, reason, body), error replies too."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body: bytes = reply.read()
            return int(reply.status), str(reply.reason), body
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, str(exc.reason), exc.read()


def _call(
    opts: argparse.Namespace,
    method: str,
    path: str,
    body: bytes | None = None,
    operation: bool = False,
) -> bytes:
    """Make one API call and return the body of its 2xx reply; raise CLIError on any failure.

    An ``operation`` (a get or a put) is given ``--timeout`` as its deadline on the node, which
    then answers with how far it got; the command waits ``GRACE`` seconds more for that answer.
    """
    node: str = opts.node
    wait: float = opts.timeout
    if operation:
        path += f"?timeout={opts.timeout:g}"
        wait += GRACE
    headers = {"User-Agent": f"txdht-cli/{__version__}"}
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(node + path, data=body, method=method, headers=headers)
    timed_out = CLIError(
        f"the node at {node} did not answer within {wait:g}s (--timeout)", EXIT_UNREACHABLE
    )
    try:
        status, reason, reply = _exchange(request, wait)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise timed_out from None
        raise CLIError(
            f"cannot reach the node at {node}: {exc.reason}; is it running? (--node)",
            EXIT_UNREACHABLE,
        ) from None
    except TimeoutError:
        raise timed_out from None
    except OSError as exc:
        message = f"the connection to the node at {node} failed: {exc}"
        raise CLIError(message, EXIT_UNREACHABLE) from None
    except http.client.HTTPException as exc:
        raise CLIError(
            f"the node at {node} sent an invalid HTTP reply: {type(exc).__name__}: {exc}",
            EXIT_ERROR,
        ) from None
    if status >= 300:
        raise _error_reply(status, reason, reply)
    return reply


def _error_reply(status: int, reason: str, body: bytes) -> CLIError:
    """The error to report for a non-2xx reply: the node's JSON message, else the status line."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = data.get("message")
        if isinstance(message, str) and message:
            return CLIError(message, EXIT_ERROR)
    return CLIError(f"the node replied {status} {reason}".rstrip(), EXIT_ERROR)


def _json_object(body: bytes) -> dict[str, Any]:
    """Decode a success reply that must be a JSON object."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise CLIError(f"the node sent a reply that is not valid JSON: {exc}", EXIT_ERROR) from None
    if not isinstance(data, dict):
        raise CLIError("the node sent a JSON reply that is not an object", EXIT_ERROR)
    return data


def _stored_key(body: bytes) -> str:
    """The key from a store reply (``{"key": ..., "stored_on": n}``)."""
    key = _json_object(body).get("key")
    if not isinstance(key, str) or not key:
        raise CLIError("the node's reply to a store has no key", EXIT_ERROR)
    return key


# -- local input and output -------------------------------------------------------------------


def _read_input(path: str) -> bytes:
    """The bytes of file ``path``, or of stdin when ``path`` is ``-``."""
    if path == "-":
        data: bytes = sys.stdin.buffer.read()
        return data
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None


def _print(line: str) -> None:
    """Write one line to stdout."""
    sys.stdout.write(line + "\n")


def _print_json(body: bytes) -> None:
    """Print a JSON object reply as the node returned it (checked to be a JSON object first)."""
    _json_object(body)
    text = body.decode("utf-8", errors="replace")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null, so the final flush at exit cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


# -- formatting -------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    """``value`` as a finite number, or None if it is not one (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _duration(value: object) -> str:
    """A number of seconds as ``1d 02h 03m 10s``, ``2h 03m 10s``, ``3m 05s`` or ``7s``."""
    seconds = _number(value)
    if seconds is None:
        return "?"
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _text(value: object) -> str:
    """A reply field for display: ``?`` when the node left it out."""
    return "?" if value is None else str(value)


def _yes_no(value: object) -> str:
    """A true/false reply field as ``yes`` or ``no``; ``?`` when it is not a boolean."""
    if not isinstance(value, bool):
        return "?"
    return "yes" if value else "no"


def _estimate(value: object) -> str:
    """An estimated count as ``~N (estimated)``; ``?`` when it is not a number."""
    number = _number(value)
    return "?" if number is None else f"~{round(number)} (estimated)"


def _address(host: object, port: object) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    host_text = _text(host)
    if ":" in host_text:
        host_text = f"[{host_text}]"
    return f"{host_text}:{_text(port)}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Lay out rows in columns; the columns whose index is in ``right`` are right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


# -- commands ---------------------------------------------------------------------------------


def _cmd_put(opts: argparse.Namespace) -> int:
    """``txdht put NAME VALUE``: store VALUE (``-``: stdin) under NAME, print the key."""
    name: str = opts.name
    if not name:
        raise CLIError("the name must not be empty", EXIT_USAGE)
    value = _read_input("-") if opts.value == "-" else os.fsencode(opts.value)
    path = "/v1/names/" + urllib.parse.quote(os.fsencode(name), safe="")
    _print(_stored_key(_call(opts, "PUT", path, value, operation=True)))
    return EXIT_OK


def _cmd_put_blob(opts: argparse.Namespace) -> int:
    """``txdht put-blob FILE``: store the bytes of FILE (``-``: stdin), print the key."""
    value = _read_input(opts.file)
    _print(_stored_key(_call(opts, "POST", "/v1/blobs", value, operation=True)))
    return EXIT_OK


def _cmd_get(opts: argparse.Namespace) -> int:
    """``txdht get KEY``: write the value's bytes to stdout, or to the ``--output`` file."""
    path = "/v1/keys/" + urllib.parse.quote(os.fsencode(opts.key), safe="")
    value = _call(opts, "GET", path, operation=True)
    output: str | None = opts.output
    if output is None:
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        return EXIT_OK
    try:
        with open(output, "wb") as file:
            file.write(value)
    except OSError as exc:
        raise CLIError(f"cannot write {output}: {exc.strerror or exc}", EXIT_USAGE) from None
    return EXIT_OK


def _cmd_watch(opts: argparse.Namespace) -> int:
    """``txdht watch KEY``: print each new version's value as a line (``--json``: each event
    as a JSON line), until interrupted or ``--count`` events; an expiry is told on stderr."""
    node: str = opts.node
    path = "/v1/keys/" + urllib.parse.quote(os.fsencode(opts.key), safe="") + "/events"
    headers = {"User-Agent": f"txdht-cli/{__version__}", "Accept": "text/event-stream"}
    request = urllib.request.Request(node + path, headers=headers)
    left: int | None = opts.count
    try:
        with urllib.request.urlopen(request, timeout=WATCH_SILENCE) as reply:
            event, data = "", ""
            while left is None or left > 0:
                raw = reply.readline()
                if not raw:
                    raise CLIError(f"the node at {node} closed the stream", EXIT_UNREACHABLE)
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line and data:
                    _watched(opts, event, data)
                    event, data = "", ""
                    left = None if left is None else left - 1
    except urllib.error.HTTPError as exc:
        with exc:
            raise _error_reply(exc.code, str(exc.reason), exc.read()) from None
    except urllib.error.URLError as exc:
        raise CLIError(
            f"cannot reach the node at {node}: {exc.reason}; is it running? (--node)",
            EXIT_UNREACHABLE,
        ) from None
    except TimeoutError:
        message = f"the node at {node} sent nothing for {WATCH_SILENCE:g}s: it has gone"
        raise CLIError(message, EXIT_UNREACHABLE) from None
    except (OSError, http.client.HTTPException) as exc:
        message = f"the connection to the node at {node} failed: {exc}"
        raise CLIError(message, EXIT_UNREACHABLE) from None
    return EXIT_OK


def _watched(opts: argparse.Namespace, event: str, data: str) -> None:
    """Print one event of ``watch``."""
    notice = _json_object(data.encode())
    if opts.json:
        _print(json.dumps(notice))
    elif event == "expired":
        sys.stderr.write(f"txdht: version {notice.get('seq')} expired, and no newer is stored\n")
    else:
        value = base64.b64decode(str(notice.get("value", "")))
        # One line per version: the value's own line end, or one added (--json is exact).
        sys.stdout.buffer.write(value if value.endswith(b"\n") else value + b"\n")
    sys.stdout.flush()


def _cmd_status(opts: argparse.Namespace) -> int:
    """``txdht status``: the node's identity, endpoints, whether it joined, its peers (and how
    many answer), the network's estimated size, its item count and uptime."""
    body = _call(opts, "GET", "/v1/status")
    if opts.json:
        _print_json(body)
        return EXIT_OK
    status = _json_object(body)
    endpoints = status.get("endpoints")
    lines = [("id", _text(status.get("id"))), ("version", _text(status.get("version")))]
    if isinstance(endpoints, dict):
        lines += [(f"{name} endpoint", _text(url)) for name, url in endpoints.items()]
    lines += [
        ("port", _text(status.get("port"))),
        ("joined", _yes_no(status.get("joined"))),
        ("peers", _text(status.get("peers"))),
        ("live contacts", _text(status.get("live_contacts"))),
        ("network size", _estimate(status.get("network_size"))),
        ("items", _text(status.get("items"))),
        ("uptime", _duration(status.get("uptime"))),
    ]
    width = max(len(label) for label, _ in lines) + 1
    for label, value in lines:
        _print(f"{label + ':':<{width}} {value}")
    return EXIT_OK


def _cmd_peers(opts: argparse.Namespace) -> int:
    """``txdht peers``: the node's routing table as a table, one peer a line."""
    body = _call(opts, "GET", "/v1/peers")
    if opts.json:
        _print_json(body)
        return EXIT_OK
    peers = _json_object(body).get("peers")
    if not isinstance(peers, list) or not all(isinstance(peer, dict) for peer in peers):
        raise CLIError("the node's peer list is malformed", EXIT_ERROR)
    if not peers:
        _print("no peers")
        return EXIT_OK
    rows = [
        [
            _text(peer.get("id"))[:16],
            _address(peer.get("host"), peer.get("port")),
            _text(peer.get("bucket")),
            _duration(peer.get("last_seen")) + " ago",
            _text(peer.get("failures")),
        ]
        for peer in peers
    ]
    for line in _table(["ID", "ADDRESS", "BUCKET", "LAST SEEN", "FAILURES"], rows, {2, 4}):
        _print(line)
    return EXIT_OK


# -- the parser -------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--node`` and ``--timeout``: with defaults on the program, without on each command.

    A command's copy of an option only overrides the program's when it is given, so the options
    work before or after the command name.
    """
    node_default = (os.environ.get(NODE_ENV) or DEFAULT_NODE) if defaults else argparse.SUPPRESS
    timeout_default = str(DEFAULT_TIMEOUT) if defaults else argparse.SUPPRESS
    parser.add_argument(
        "--node",
        metavar="URL",
        type=_node_url,
        default=node_default,
        help=f"the node's HTTP API (default: ${NODE_ENV}, else {DEFAULT_NODE})",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=timeout_default,
        help="seconds a get or put may take on the node, which then answers with how far it "
        f"got (the command waits {GRACE:g} s more for that); for status and peers, how long to "
        f"wait for the node; not watch, which waits for new versions until interrupted or "
        f"--count, and gives up on a node silent for {WATCH_SILENCE:g} s "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )


def _build_parser() -> argparse.ArgumentParser:
    """The argument parser for the program and its commands."""
    parser = argparse.ArgumentParser(
        prog="txdht",
        description="Talk to a running txdht node over its HTTP API: store values, fetch them\n"
        "by key, and look at the node's status and peers.",
        epilog=_PROGRAM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_connection_options(parser, defaults=True)
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )

    def command(
        name: str, summary: str, description: str, example: str, run: Callable[..., int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_connection_options(sub, defaults=False)
        sub.set_defaults(run=run)
        return sub

    put = command(
        "put",
        "store a value under a name and print its key",
        "Store VALUE under NAME on the DHT and print the key to fetch it by.",
        "echo -n 'hello world' | txdht put greeting -",
        _cmd_put,
    )
    put.add_argument("name", metavar="NAME", help="the name to store the value under")
    put.add_argument("value", metavar="VALUE", help="the value; '-' reads the bytes from stdin")

    blob = command(
        "put-blob",
        "store a file's bytes and print their key",
        "Store the bytes of FILE on the DHT under a key derived from their content, and\n"
        "print the key.",
        "txdht put-blob photo.jpg",
        _cmd_put_blob,
    )
    blob.add_argument("file", metavar="FILE", help="the file to store; '-' reads stdin")

    get = command(
        "get",
        "fetch a value by key",
        "Fetch the value stored under KEY and write its bytes, exactly, to stdout or a\n"
        "file. Exits with status 1 when no value is found.",
        'txdht get "$(txdht put-blob photo.jpg)" -o copy.jpg',
        _cmd_get,
    )
    get.add_argument(
        "key", metavar="KEY", type=_key, help="the key (128 hex digits) printed by put"
    )
    get.add_argument(
        "-o", "--output", metavar="FILE", help="write the value to FILE instead of stdout"
    )

    watch = command(
        "watch",
        "print each new version of a value as it is stored",
        "Listen to KEY through the node and print the value of each new version as a line\n"
        "(the current one first; a newline is added unless the value ends with one), until\n"
        "interrupted or --count. An expiry is told on stderr. Use --json for exact values.",
        "txdht watch KEY --json",
        _cmd_watch,
    )
    watch.add_argument(
        "key", metavar="KEY", type=_key, help="the key (128 hex digits) printed by put"
    )
    watch.add_argument(
        "--json",
        action="store_true",
        help='print each event as a JSON line: {"key", "seq", "value" (base64)} or '
        '{"key", "seq", "expired": true}',
    )
    watch.add_argument(
        "--count", metavar="N", type=_count, help="stop after N events (default: never)"
    )

    status = command(
        "status",
        "show the node's id, endpoints, whether it joined, counts and uptime",
        "Show the node's id, version, endpoints, whether it has joined the network, its\n"
        "peers and how many of them answer, the network's estimated size, the number of\n"
        "items it holds, and its uptime.",
        "txdht status --json",
        _cmd_status,
    )
    status.add_argument("--json", action="store_true", help="print the node's JSON reply")

    peers = command(
        "peers",
        "list the peers in the node's routing table",
        "List the peers in the node's routing table: id (first 16 hex digits), address,\n"
        "bucket, how long ago each was last heard from, and its failures.",
        "txdht peers --json",
        _cmd_peers,
    )
    peers.add_argument("--json", action="store_true", help="print the node's JSON reply")
    return parser


def _fail(message: str, status: int) -> int:
    """Report ``message`` on stderr as one ``txdht:`` line and return ``status``."""
    sys.stderr.write(f"txdht: {message}\n")
    sys.stderr.flush()
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the ``txdht`` command line on ``argv`` (default ``sys.argv[1:]``); return its status.

    Usage errors exit through argparse (``SystemExit(2)``), as do ``--help`` and ``--version``
    (``SystemExit(0)``).
    """
    try:
        opts = _build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = opts.run
        status = run(opts)
        sys.stdout.flush()
    except CLIError as exc:
        return _fail(exc.message, exc.status)
    except BrokenPipeError:
        # Whoever read stdout has gone (``txdht get KEY | head``): nothing more to say to them.
        _silence_stdout()
        return _fail("output closed early", EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    return status
