"""Checks of what a program hands a node: the caller's mistakes, told at the call.

Every driver's public methods (``put``, ``put_blob``, ``get``, ``join``, the constructor...) and
the core's operations take their arguments through these, so that a wrong type or an
impossible number is a ``TypeError`` or ``ValueError`` naming the argument and what it takes,
raised before anything is started, sent or stored. Without them a mistake surfaced far from
its cause: a ``bytearray`` value was stored here and refused by every peer (a put that
"succeeded" nowhere), a ttl of 0 or NaN the same, a timeout of NaN froze every timer, and a
seed given as ``"host:port"`` was read one character at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from txdht.core.items import MAX_SEQ, MAX_TTL

__all__ = [
    "check_cas",
    "check_count",
    "check_name",
    "check_seconds",
    "check_seeds",
    "check_timeout",
    "check_ttl",
    "check_value",
]

Address = tuple[str, int]


def _kind(value: object) -> str:
    return type(value).__name__


def check_value(value: object) -> bytes:
    """A value to store: ``bytes`` as it is; a ``bytearray`` or ``memoryview`` copied to
    ``bytes`` (an item must not change under its signature and key)."""
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a value is bytes, not {_kind(value)} (encode a str first)")


def check_name(name: object) -> str:
    """A mutable item's name: a ``str`` (what else it must be, ``Identity.sign`` says)."""
    if not isinstance(name, str):
        raise TypeError(f"a name is a str, not {_kind(name)}")
    return name


def _number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} is a number of seconds, not {_kind(value)}")
    return float(value)


def check_ttl(ttl: object) -> float:
    """A ttl: seconds above 0 and at most ``MAX_TTL`` (what every peer accepts)."""
    seconds = _number("a ttl", ttl)
    if not 0 < seconds <= MAX_TTL:  # (NaN fails this too)
        raise ValueError(f"a ttl is above 0 and at most {MAX_TTL:g} seconds, not {ttl!r}")
    return seconds


def check_timeout(timeout: object) -> float | None:
    """An operation's timeout: None (none), or a finite number of seconds above 0."""
    if timeout is None:
        return None
    seconds = _number("a timeout", timeout)
    if not 0 < seconds < math.inf:
        raise ValueError(f"a timeout is above 0 seconds and finite (None: none), not {timeout!r}")
    return seconds


def check_seconds(what: str, value: object) -> float:
    """A setting in seconds (``rpc_timeout``...): a finite number above 0."""
    seconds = _number(what, value)
    if not 0 < seconds < math.inf:
        raise ValueError(f"{what} is a finite number of seconds above 0, not {value!r}")
    return seconds


def check_count(what: str, value: object, low: int = 1, high: int | None = None) -> int:
    """A whole-number setting (``k``, ``alpha``...) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} is a whole number, not {_kind(value)}")
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{what} must be {bound}, not {value!r}")
    return value


def check_cas(cas: object) -> int | None:
    """A compare-and-swap sequence number: None (none), or 0 to ``MAX_SEQ``."""
    if cas is None:
        return None
    return check_count("cas (the sequence number expected)", cas, 0, MAX_SEQ)


def check_seeds(seeds: object) -> list[Address]:
    """Seeds to join through: (host, port) pairs, the host a ``str`` and the port 1 to 65535."""
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Iterable):
        raise TypeError(
            f"seeds are a list of (host, port) pairs, like [('127.0.0.1', 4000)], not {seeds!r:.60}"
        )
    checked = []
    for seed in seeds:
        if not isinstance(seed, tuple | list) or len(seed) != 2 or not isinstance(seed[0], str):
            raise TypeError(
                f"a seed is a (host, port) pair, like ('127.0.0.1', 4000), not {seed!r:.60}"
            )
        host, port = seed
        checked.append((host, check_count(f"the port of seed {host!r:.40}", port, 1, 65535)))
    return checked
