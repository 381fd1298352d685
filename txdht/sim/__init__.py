"""A deterministic network simulator on the real core: ``python -m txdht.sim SCENARIO``.

Thousands of nodes, each a real ``txdht.core.engine.Engine`` (routing table, lookups, signed
items, ``MemoryStorage``), talk over an in-memory bus with latency, jitter and loss, on a
virtual clock: a heap of timed events. Everything random comes from one seeded RNG, so the same
seed gives the same run, event for event (``--trace FILE`` writes them). ``network`` has the
clock, the bus and the simulated shell (``SimNode``, driving the engine the way
``txdht.node.Node`` does); ``scenarios`` the four scenarios (lookup, crash, churn, partition);
``ideal`` the perfect-table lookups that real ones are measured against; ``report`` the tables.
"""

from txdht.sim.network import Clock, Network, SimLookup, SimNode, SimulationError
from txdht.sim.report import Report
from txdht.sim.scenarios import SCENARIOS, Settings, run

__all__ = [
    "SCENARIOS",
    "Clock",
    "Network",
    "Report",
    "Settings",
    "SimLookup",
    "SimNode",
    "SimulationError",
    "run",
]
