"""What the core asks of a driver: the commands its methods return.

Every method of ``Engine`` and ``Streams`` that a driver calls with an event (a message, a lost
connection, the time) returns a list of these, in the order they are to be carried out. A
driver carries each out and decides nothing: it writes, connects, closes, fires the Deferred or
future of a finished operation, logs. Commands are plain values, so a test can read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txdht.core.listen import Notice
    from txdht.core.messages import Message
    from txdht.core.operations import Operation, Request
    from txdht.core.streams import Link

__all__ = [
    "Close",
    "Command",
    "Connect",
    "Done",
    "Failed",
    "Joined",
    "Log",
    "Notify",
    "Ready",
    "Send",
    "Write",
]

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``request.message`` to the peer at ``request.address``; the outcome comes back
    as ``Engine.reply_received`` or ``Engine.request_failed``. Only drivers without
    connections (the simulator) see this: ``Streams`` turns it into ``Write`` or ``Connect``."""

    request: Request


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``message`` on ``link``'s connection."""

    link: Link
    message: Message


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection to ``address``; report ``Streams.connected`` or ``connect_failed``."""

    address: Address


@dataclass(frozen=True, slots=True)
class Close:
    """Close ``link``'s connection; ``Streams.lost`` follows, as for any lost connection."""

    link: Link


@dataclass(frozen=True, slots=True)
class Done:
    """The operation the driver started (``Engine.start``) ended with ``op.result``."""

    op: Operation


@dataclass(frozen=True, slots=True)
class Failed:
    """The operation the driver started ended with the error ``op.error``."""

    op: Operation


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell the application of the listen ``op`` (``Engine.start``) of ``notice``: a newer
    version of the item it listens to, or its expiry."""

    op: Operation
    notice: Notice


@dataclass(frozen=True, slots=True)
class Ready:
    """The node's service has listened and tried to join (``joined``: and succeeded)."""

    joined: bool


@dataclass(frozen=True, slots=True)
class Joined:
    """The node's service joined the network (at start, or again later); ``contacts`` known."""

    contacts: int


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the node's log: ``text`` is a PEP 3101 template filled from ``fields``.

    ``level`` is one of debug, info, warn, error (``twisted.logger``'s names). A ``failure``
    field, when present, is the exception to log with its traceback.
    """

    level: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        """The line, filled in."""
        return self.text.format(**self.fields)


Command = Send | Write | Connect | Close | Done | Failed | Notify | Ready | Joined | Log
