"""The public API is pinned: names in ``txdht.__all__`` are the objects they stand for."""

from __future__ import annotations

import subprocess
import sys

import pytest

import txdht
from txdht import core, node, testing
from txdht.core import errors as core_errors
from txdht.core import ids, interfaces, items, limits, storage

EXPECTED = {
    "Contact": ids.Contact,
    "ErrorCode": core_errors.ErrorCode,
    "IStorage": interfaces.IStorage,
    "Identity": items.Identity,
    "Item": items.Item,
    "JoinError": core_errors.JoinError,
    "Limits": limits.Limits,
    "Lookup": node.Lookup,
    "MemoryStorage": storage.MemoryStorage,
    "Node": node.Node,
    "NotFoundError": core_errors.NotFoundError,
    "OperationTimeout": core_errors.OperationTimeout,
    "ProtocolError": core_errors.ProtocolError,
    "PutError": core_errors.PutError,
    "RemoteError": core_errors.RemoteError,
}


def test_all_is_exactly_the_public_api() -> None:
    """``__all__`` lists the public names and nothing else."""
    assert sorted(txdht.__all__) == sorted([*EXPECTED, "__version__"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_export_is_the_real_object(name: str) -> None:
    """Each public name is the implementation object, not a copy."""
    assert getattr(txdht, name) is EXPECTED[name]


def test_unknown_attribute_raises() -> None:
    """Asking for a name txdht does not have raises AttributeError."""
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = txdht.Nope


def test_testing_module_exports() -> None:
    """txdht.testing offers the in-memory network and the raw connection."""
    assert testing.__all__ == ["MemoryNetwork", "RawConnection"]
    assert core.__doc__


@pytest.mark.parametrize("module", ["txdht", "txdht.core.engine"])
def test_core_and_package_import_without_twisted(module: str) -> None:
    """Importing txdht or its core does not import Twisted (the asyncio side relies on it)."""
    code = f"import sys, {module}; assert not any(m.startswith('twisted') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nothing_installs_a_reactor_on_import() -> None:
    """Importing the Twisted node does not install a reactor."""
    code = (
        "import sys, txdht.node, txdht.testing; "
        "assert 'twisted.internet.reactor' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
