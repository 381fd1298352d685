"""What a node knows of the network, as ``/v1/status`` shows it: whether it has joined, how many
of its contacts answer, and how many nodes the network has (estimated from the routing table,
and checked against simulated networks whose size is known)."""

from __future__ import annotations

import statistics

import pytest

from txdht.core.errors import JoinError
from txdht.core.ids import Contact
from txdht.core.routing import RoutingTable
from txdht.sim.network import Network, SimNode
from txdht.sim.scenarios import SPACING
from txdht.testing import MemoryNetwork

#: The size of the id space.
SPACE = 1 << 512
#: Every node's estimate is within this factor of the true size...
EVERY_NODE_FACTOR = 3.0
#: ...and the median of them within this fraction of it.
MEDIAN_ERROR = 0.15


def contact(ident: int) -> Contact:
    """A contact with id ``ident`` on an address of its own."""
    return Contact(ident, "127.0.0.1", 1000 + ident % 60000)


def test_a_bare_node_has_joined_once_its_join_succeeded() -> None:
    """``joined`` is False until a join succeeds, stays False after one that fails, and is
    True after one that succeeds, for a node whose caller joins it (no service runs)."""
    net = MemoryNetwork()
    seed, node = net.create(2)
    assert (seed.engine.joined, node.engine.joined) == (False, True)  # the first joined nobody
    alone = net.add_node()
    with pytest.raises(JoinError):
        net.run(alone.join([("127.0.0.1", 1)]))
    failed = alone.engine.joined
    net.run(alone.join([("127.0.0.1", seed.port)]))
    assert (failed, alone.engine.joined) == (False, True)


def test_a_serving_node_has_joined_once_its_service_joined() -> None:
    """Nodes run by the core's service have joined once their join succeeded (the first node
    of a network, once it joins through those that contacted it); one whose only seed is dead
    has not."""
    net = Network(seed=3)
    first, *others = grow(net, 5)
    assert all(node.engine.joined for node in others)
    before = first.engine.joined
    net.clock.run(net.clock.now + 2.0)  # its first retry, 1 s after it started
    assert (before, first.engine.joined) == (False, True)
    lost = net.add_node()
    dead = net.add_node()
    net.start(lost, [dead.address])
    net.clock.run(net.clock.now + 60.0)
    assert lost.ready
    assert not lost.engine.joined


def test_answering_counts_the_contacts_whose_last_request_did_not_fail() -> None:
    """A contact counts as answering until a request to it fails, and again once heard from."""
    table = RoutingTable(0, k=20)
    for ident in range(1, 6):
        table.seen(contact(ident), 0.0)
    assert table.answering() == 5
    table.failed(2)
    table.failed(3)
    table.failed(3)
    assert table.answering() == 3
    table.seen(contact(3), 1.0)
    assert table.answering() == 4


def test_a_small_table_estimates_the_nodes_it_knows() -> None:
    """With fewer live contacts than k (a network that small), the estimate is the contacts
    known and this node."""
    table = RoutingTable(0, k=4)
    assert table.estimated_size() == 1
    for ident in (1 << 500, 1 << 501, 1 << 502):
        table.seen(contact(ident), 0.0)
    assert table.estimated_size() == 4
    table.seen(contact(1 << 503), 0.0)
    for _ in range(2):
        table.failed(1 << 503)  # looks dead: not counted as near us
    assert table.estimated_size() == 5
    assert table.measured_size() is None  # a count, not a measure: too few to measure by
    table.seen(contact(1 << 504), 0.0)
    assert table.measured_size() == table.estimated_size() == 1 + round(3 * SPACE / (1 << 504))


def test_the_estimate_is_m_minus_1_over_the_m_th_distance() -> None:
    """With k contacts or more, the estimate is 1 + (k - 1) * 2**512 / d, d the distance of the
    k-th closest live contact: evenly spaced contacts give the density they were spaced at."""
    own = 12345
    table = RoutingTable(own, k=8)
    spacing = SPACE // 1000  # as if the network had 1000 nodes: one per thousandth
    for i in range(1, 40):
        table.seen(contact(own ^ (i * spacing)), 0.0)
    assert table.estimated_size() == 1 + round(7 * SPACE / (8 * spacing))
    assert 870 <= table.estimated_size() <= 880  # 7/8 of 1000: one spacing short of k
    for i in range(1, 9):  # the 8 closest fail twice: the next 8 are the live closest
        for _ in range(2):
            table.failed(own ^ (i * spacing))
    assert table.estimated_size() == 1 + round(7 * SPACE / (16 * spacing))
    with_k_1 = RoutingTable(own, k=1)
    for i in (1, 2):
        with_k_1.seen(contact(own ^ (i * spacing)), 0.0)
    assert with_k_1.estimated_size() == 1 + round(SPACE / (2 * spacing))  # m is at least 2


def grow(net: Network, count: int) -> list[SimNode]:
    """Start ``count`` nodes, one every ``SPACING`` s, each joining through a random member;
    run until all have joined (bounded)."""
    joined: list[SimNode] = []
    nodes: list[SimNode] = []

    def launch() -> None:
        node = net.add_node()
        nodes.append(node)
        net.start(node, net.seeds(), joined.append)

    for i in range(count):
        net.clock.later(i * SPACING, launch)
    net.clock.run_until(lambda: len(joined) == count, count * SPACING + 3600, "growing")
    return nodes


@pytest.mark.parametrize("size", [100, 1000])
def test_the_estimate_is_close_to_the_size_of_a_simulated_network(size: int) -> None:
    """In simulated networks of 100 and 1,000 nodes every node's estimate of the size is within
    a factor of 3 of it, and their median within 15%."""
    net = Network(seed=1, latency=0.0)
    nodes = grow(net, size)
    ratios = [node.engine.routing.estimated_size() / size for node in nodes]
    assert min(ratios) >= 1 / EVERY_NODE_FACTOR
    assert max(ratios) <= EVERY_NODE_FACTOR
    assert abs(statistics.median(ratios) - 1) <= MEDIAN_ERROR
    assert all(node.engine.routing.answering() == len(node.engine.routing) for node in nodes)
