"""Limits on what peers may ask of a node, and the defaults every driver shares.

A DHT is open to anyone who can reach it, so every resource a peer can consume has a named
bound (docs/security.md lists them all). Requests are paced with token buckets: a peer may
send ``burst`` requests at once and ``rate`` per second after that. A peer over its rate gets
an error reply (RATE_LIMITED) for that request and is then ignored for ``cool_off`` seconds (no
reply at all, which costs it a timeout per request); a global bucket caps the node's total.
Time is passed in, as everywhere in the core.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_MESSAGE",
    "DEFAULT_RPC_TIMEOUT",
    "HOUSEKEEPING_CONCURRENCY",
    "PACE",
    "Abandoned",
    "Limits",
    "Pacer",
    "RateLimiter",
    "TokenBucket",
    "Verdict",
    "is_loopback",
    "limit_options",
    "peer_key",
    "subnet_of",
]


#: The longest netstring accepted by default: a 64 KiB value in base64 plus its envelope fits
#: many times over, and a peer cannot make us buffer more than this for one message.
DEFAULT_MAX_MESSAGE = 1024 * 1024
#: Seconds to wait for a connection and a reply before a request counts as failed.
DEFAULT_RPC_TIMEOUT = 5.0
#: Seconds to wait for a TCP connection to open: an address that does not answer a connection
#: attempt fails this soon (the requests waiting for it with it), not at the rpc timeout.
DEFAULT_CONNECT_TIMEOUT = 3.0
#: Items replicated or republished at once by housekeeping, so a large store cannot flood
#: the network or the node's own connection table in one go.
HOUSEKEEPING_CONCURRENCY = 8
#: The share of a peer's request rate and burst (``peer_rate``, ``peer_burst``: this node's
#: own, taken for the network's) that this node sends it at most (``Pacer``).
PACE = 0.8


#: The limits for which 0 means "no limit".
_ZERO_OK = ("max_per_subnet", "lookup_per_subnet")


def _limit(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class Limits:
    """Every configurable bound of a node, with its default.

    Each field's ``metadata["help"]`` says what it bounds: ``twistd dht`` and
    ``python -m txdht.aio`` turn every field into an option (``peer_rate`` is ``--peer-rate``).
    """

    peer_rate: float = _limit(50.0, "Requests per second a peer may send once its burst is spent.")
    peer_burst: float = _limit(100.0, "Requests a peer may send at once.")
    cool_off: float = _limit(10.0, "Seconds a peer over its rate is ignored.")
    global_rate: float = _limit(5000.0, "Requests per second the node serves in all.")
    global_burst: float = _limit(10000.0, "Requests the node serves at once in all.")
    tracked_peers: int = _limit(
        10000, "Peers whose rate buckets are remembered (the least recent are forgotten)."
    )
    max_items: int = _limit(100_000, "Items the node holds for the network.")
    max_items_per_publisher: int = _limit(
        1000, "Items the node holds from one publisher (one public key)."
    )
    max_connections_per_ip: int = _limit(16, "Connections from one IP address (not loopback).")
    max_connections: int = _limit(
        512,
        "Connections held in all, both ways: past it, those quiet longest with nothing in "
        "flight and no listen on them are closed, down to nine tenths of it (each is a file "
        "descriptor: keep it under the process's limit, `ulimit -n`).",
    )
    max_bad_messages: int = _limit(
        10, "Malformed messages one connection may send before it is closed."
    )
    max_per_subnet: int = _limit(
        2, "Contacts of one /24 (IPv4) or /48 (IPv6) per bucket (not loopback); 0: no limit."
    )
    lookup_per_subnet: int = _limit(
        2,
        "Contacts of one /24 (IPv4) or /48 (IPv6) a lookup takes from peers' replies (not "
        "loopback); 0: no limit. Ids ground next to a key on one network cannot fill a lookup.",
    )
    max_listens: int = _limit(
        10_000, "Listens the node holds for others in all (each costs about 0.6 to 0.8 KiB)."
    )
    max_listens_per_peer: int = _limit(
        32, "Listens the node holds for one peer (an IP address; a connection on loopback)."
    )
    max_listens_per_key: int = _limit(
        2000, "Listens the node holds on one key (each new version is pushed to every one)."
    )
    min_lease: float = _limit(30.0, "Shortest listen lease granted, in seconds.")
    max_lease: float = _limit(3600.0, "Longest listen lease granted, in seconds.")

    def __post_init__(self) -> None:
        """Refuse a limit that makes no sense (zero or negative), naming it."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            zero_ok = spec.name in _ZERO_OK
            lowest_ok = value >= 0 if zero_ok else value > 0
            if not lowest_ok:
                least = "0 or more" if zero_ok else "above 0"
                option = "--" + spec.name.replace("_", "-")
                raise ValueError(f"the limit {spec.name} ({option}) must be {least}, got {value!r}")
        if self.min_lease > self.max_lease:
            raise ValueError(
                f"the limit min_lease (--min-lease, {self.min_lease!r}) must be at most "
                f"max_lease (--max-lease, {self.max_lease!r})"
            )


def limit_options() -> list[tuple[str, type, object, str]]:
    """Every limit as a command-line option: (``--name``, type, default, help); the options'
    values, by field name, make a ``Limits`` (which checks them)."""
    return [
        (
            "--" + spec.name.replace("_", "-"),
            int if spec.type == "int" else float,
            spec.default,
            str(spec.metadata["help"]),
        )
        for spec in fields(Limits)
    ]


@functools.lru_cache(maxsize=4096)
def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (exempt from per-address rules); cached, as it
    is asked for every request."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=65536)
def subnet_of(host: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of ``host``, as text; None for a loopback address
    (exempt from per-network rules, so that local test networks work) or a host that is not
    an IP address. Cached: lookups ask it for every contact a reply names."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.is_loopback:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{host}/{prefix}", strict=False))


def peer_key(host: str, port: int) -> object:
    """Whom a request counts against: its IP address, or on loopback (where every local
    process shares one address) the connection's own port."""
    return (host, port) if is_loopback(host) else host


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one token per request."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> bool:
        """Spend a token if there is one; whether there was."""
        tokens = self.tokens + (now - self.updated) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.updated = now
        if tokens >= 1:
            self.tokens = tokens - 1
            return True
        self.tokens = tokens
        return False


class Pacer:
    """When each request of ours may go, so that no peer gets more than ``PACE`` of the rate
    and burst it accepts (a peer running the same ``peer_rate`` and ``peer_burst`` as this
    node): past them it would refuse one request and ignore the rest for ``cool_off`` seconds,
    and every request silenced so counts as a failure of that peer.

    A node's own housekeeping goes past them wherever a peer holds much of what it holds: in a
    network of ten nodes holding 5,000 items, replication rounds and handoffs sent each peer
    hundreds of requests at once; with the rates enforced, 22% of the requests went
    unanswered, peers came to look dead, and every holder replicated every key (three lookups
    per item per interval instead of one). The pacing is a virtual schedule per peer address
    (the generic cell rate algorithm): ``when`` reserves the next slot and says when it is,
    now while the burst lasts. With rates too high to matter (a test network's, a
    benchmark's), it is off."""

    def __init__(self, limits: Limits) -> None:
        rate, burst = limits.peer_rate * PACE, max(1.0, limits.peer_burst * PACE)
        #: Whether requests go at once, whatever the rate (no peer would refuse them).
        self.off = rate >= 1e9
        self.interval = 1.0 / rate
        #: How far ahead of its slot a request may go: the burst.
        self.ahead = (burst - 1.0) * self.interval
        self.tracked = limits.tracked_peers
        self._due: OrderedDict[object, float] = OrderedDict()

    def when(self, address: object, now: float) -> float:
        """The time a request to ``address`` may go (``now`` or later), its slot reserved."""
        due = self._due
        slot = due.get(address, now)
        if slot < now:
            slot = now
        due[address] = slot + self.interval
        due.move_to_end(address)
        if len(due) > self.tracked:  # the least recent: its slots are long past, most likely
            due.popitem(last=False)
        return max(now, slot - self.ahead)


class Verdict:
    """What to do with a request: serve it, refuse it with an error, or drop it silently."""

    SERVE = "serve"
    REFUSE = "refuse"
    DROP = "drop"


class RateLimiter:
    """A token bucket per peer key (bounded in number) and one for the whole node."""

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self._global = TokenBucket(limits.global_rate, limits.global_burst, now)
        self._peers: OrderedDict[object, TokenBucket] = OrderedDict()
        self._cooling: dict[object, float] = {}
        #: Requests refused and dropped so far (for metrics).
        self.refused = 0
        self.dropped = 0

    def check(self, peer: object, now: float) -> str:
        """The ``Verdict`` for one request from ``peer`` at ``now``."""
        cooling = self._cooling
        if cooling:  # (almost always empty: one dict lookup less per request)
            until = cooling.get(peer)
            if until is not None:
                if now < until:
                    self.dropped += 1
                    return Verdict.DROP
                del cooling[peer]
        peers = self._peers
        bucket = peers.get(peer)
        if bucket is None:
            limits = self.limits
            bucket = peers[peer] = TokenBucket(limits.peer_rate, limits.peer_burst, now)
            while len(peers) > limits.tracked_peers:
                peers.popitem(last=False)
        else:
            peers.move_to_end(peer)
        if not bucket.take(now):
            self._cooling[peer] = now + self.limits.cool_off
            if len(self._cooling) > self.limits.tracked_peers:
                del self._cooling[next(iter(self._cooling))]
            self.refused += 1
            return Verdict.REFUSE
        if not self._global.take(now):
            self.refused += 1
            return Verdict.REFUSE
        return Verdict.SERVE

    def forget(self, now: float) -> None:
        """Drop cool-off entries that have ended (called from housekeeping)."""
        for peer in [p for p, until in self._cooling.items() if until <= now]:
            del self._cooling[peer]


class Abandoned:
    """The ids of the requests a connection gave up on (cancelled, or timed out), the newest
    ``size`` of them: a reply to one of those is expected to come late, and is dropped without
    the log line an unsolicited reply gets (a lookup that ends cancels its last queries, so a
    busy node would otherwise log a line for most lookups)."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._ids: dict[int, None] = {}

    def add(self, rid: int) -> None:
        """Remember that request ``rid`` was given up on."""
        self._ids[rid] = None
        if len(self._ids) > self.size:
            del self._ids[next(iter(self._ids))]

    def claim(self, rid: int) -> bool:
        """Whether ``rid`` was given up on (forgetting it: one reply per request)."""
        return self._ids.pop(rid, 0) is None
