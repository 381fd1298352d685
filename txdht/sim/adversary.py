"""Hostile nodes for the simulator: how each kind answers the requests it gets.

An adversary speaks the protocol correctly (its messages decode, its pongs prove its id) but
serves its own ends. Each kind is a ``Hostile`` function that answers a request in place of the
core (``SimNode.hostile``); the adversary's own operations (its joins, its refreshes) stay the
core's, so it keeps its place in honest tables like any node.

- ``drop``: answers nothing at all (a black hole that still holds its place).
- ``collude``: answers every ``find_node`` and ``find_value`` with the adversaries nearest the
  target, and nothing else; acknowledges stores and keeps nothing; never returns a value.
- ``far``: answers with contacts that do not exist (random ids at addresses where nobody
  listens), far or near; acknowledges stores and keeps nothing; never returns a value.
- ``drop-stores``: routes honestly, but acknowledges stores and keeps nothing, and never
  returns a value.
- ``stale``: routes honestly, keeps the first version of each key it is sent and acknowledges
  the later ones without keeping them, and returns the old one to every ``find_value``.
- ``hush``: routes and stores honestly, but answers a ``store`` that asks for contacts
  (``closest``) with k copies of its own contact: k contacts, none new to the asker's lookup,
  which is what tells a put's lookup that asking has stopped bringing anyone new (see
  ``txdht.core.operations.Lookup``). It aims to end the lookup short of the key's holders.

``eclipse`` is not a kind of answer but of placement: adversaries whose ids were ground next to
one key (``grind``), answering as ``collude``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from txdht.core.commands import Command
from txdht.core.ids import Contact
from txdht.core.items import Identity
from txdht.core.messages import FindNode, FindValue, Message, Nodes, Ok, Ping, Store, Value
from txdht.sim.network import PORT, Hostile, Network, SimNode, closest_ids

__all__ = ["KINDS", "behaviour", "calm", "grind", "turn"]

#: The kinds of adversary, in the order the scenario reports them.
KINDS = ("drop", "collude", "far", "drop-stores", "stale", "hush")


def _honest(node: SimNode, request: Message, host: str) -> tuple[Message | None, list[Command]]:
    return node.engine.request_received(request, host, PORT, node.network.clock.now)


def _ping_or(
    node: SimNode, request: Message, host: str, other: Callable[[], Message | None]
) -> tuple[Message | None, list[Command]]:
    """Pings are answered honestly (to keep a place in tables); the rest by ``other``."""
    if isinstance(request, Ping):
        return _honest(node, request, host)
    return other(), []


def _drop(node: SimNode, request: Message, host: str) -> tuple[Message | None, list[Command]]:
    return None, []


def _nodes(node: SimNode, request: Message, contacts: list[Contact]) -> Message:
    return node.engine.message(Nodes, request.rid, nodes=tuple(contacts))


def _swallow(node: SimNode, request: Message) -> Message | None:
    """A store acknowledged and not kept; anything else not answered."""
    return node.engine.message(Ok, request.rid) if isinstance(request, Store) else None


def _target(request: Message) -> int | None:
    if isinstance(request, FindNode):
        return request.target
    if isinstance(request, FindValue):
        return request.key
    return None


def _colluding(network: Network) -> Hostile:
    """Adversaries that answer every lookup with the adversaries nearest its target."""
    hostile_ids = sorted(n.engine.id for n in network.nodes if n.hostile is not None)

    def answer(node: SimNode, request: Message, host: str) -> tuple[Message | None, list[Command]]:
        def other() -> Message | None:
            target = _target(request)
            if target is None:
                return _swallow(node, request)
            allies = closest_ids(hostile_ids, target, node.engine.k + 1)
            contacts = [network.by_id[i].contact for i in allies if i != request.sender]
            return _nodes(node, request, contacts[: node.engine.k])

        return _ping_or(node, request, host, other)

    return answer


def _far(network: Network, rng: random.Random) -> Hostile:
    """Adversaries that answer lookups with contacts that do not exist."""

    def answer(node: SimNode, request: Message, host: str) -> tuple[Message | None, list[Command]]:
        def other() -> Message | None:
            if _target(request) is None:
                return _swallow(node, request)
            ghosts = [
                Contact(rng.getrandbits(512), f"10.{rng.randrange(256)}.0.{n}", PORT)
                for n in range(node.engine.k)
            ]
            return _nodes(node, request, ghosts)

        return _ping_or(node, request, host, other)

    return answer


def _drop_stores(
    node: SimNode, request: Message, host: str
) -> tuple[Message | None, list[Command]]:
    if isinstance(request, Store):
        return node.engine.message(Ok, request.rid), []
    if isinstance(request, FindValue):  # route, but never hand out a value
        return _honest(
            node,
            FindNode(rid=request.rid, sender=request.sender, port=request.port, target=request.key),
            host,
        )
    return _honest(node, request, host)


def _stale(node: SimNode, request: Message, host: str) -> tuple[Message | None, list[Command]]:
    if isinstance(request, Store):
        held = node.engine.storage.get(request.item.key)
        if held is not None:  # keep the first version, claim to have taken the new one
            return node.engine.message(Ok, request.rid), []
    if isinstance(request, FindValue):
        held = node.engine.storage.get(request.key)
        if held is not None:
            return node.engine.message(Value, request.rid, item=held.item), []
    return _honest(node, request, host)


def _hush(node: SimNode, request: Message, host: str) -> tuple[Message | None, list[Command]]:
    reply, commands = _honest(node, request, host)
    if isinstance(request, Store) and request.closest and isinstance(reply, Ok):
        reply = node.engine.message(Ok, reply.rid, nodes=(node.contact,) * node.engine.k)
    return reply, commands


def behaviour(kind: str, network: Network, rng: random.Random) -> Hostile:
    """How an adversary of ``kind`` answers (the adversaries must be marked first: colluders
    name each other)."""
    if kind == "drop":
        return _drop
    if kind == "collude":
        return _colluding(network)
    if kind == "far":
        return _far(network, rng)
    if kind == "drop-stores":
        return _drop_stores
    if kind == "stale":
        return _stale
    if kind == "hush":
        return _hush
    raise ValueError(f"no adversary of kind {kind!r}; the kinds: {', '.join(KINDS)}")


def turn(nodes: list[SimNode], kind: str, network: Network, rng: random.Random) -> None:
    """Make ``nodes`` adversaries of ``kind`` (``mixed``: each of a kind drawn at random; None:
    honest again)."""
    for node in nodes:  # all marked first: colluders name each other
        node.hostile = _drop
    for node in nodes:
        chosen = rng.choice(KINDS) if kind == "mixed" else kind
        node.hostile = behaviour(chosen, network, rng)


def calm(nodes: list[SimNode]) -> None:
    """Make ``nodes`` honest again."""
    for node in nodes:
        node.hostile = None


def grind(
    key: int, beat: int, count: int, rng: random.Random, limit: int
) -> tuple[list[Identity], int]:
    """``count`` key pairs whose ids are nearer ``key`` than ``beat`` is (XOR), found by trying
    random keys, as an attacker would; and how many it tried. Stops after ``limit`` tries."""
    found: list[Identity] = []
    tries = 0
    while len(found) < count and tries < limit:
        tries += 1
        identity = Identity.from_private_bytes(rng.randbytes(32))
        if identity.node_id ^ key < beat:
            found.append(identity)
    return found, tries
