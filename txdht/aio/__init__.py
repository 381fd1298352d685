"""The native asyncio twin of the Twisted node: the same core and protocol, no Twisted at all.

``python -m txdht.aio`` runs a node (see ``txdht.aio.launcher``); ``Node`` is the API.
"""

from txdht.aio.node import Lookup, NetstringProtocol, Node, run

__all__ = ["Lookup", "NetstringProtocol", "Node", "run"]
