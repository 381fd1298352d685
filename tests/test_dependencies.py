"""The dependency rule that keeps every DHT decision in one place.

``txdht/core`` imports only itself, the standard library, ``cryptography`` and
``zope.interface``, so the core can be driven by anything; ``txdht/aio`` and ``txdht/sim`` import
no Twisted, directly or through what they import, so the asyncio twin and the simulator run
the core with nothing of the Twisted driver in them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the core may import besides the standard library.
CORE_ALLOWED = ("txdht.core", "cryptography", "zope.interface")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports are not used)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            assert node.module is not None
            names.add(node.module)
    return names


def outside_the_core(path: Path) -> set[str]:
    """What ``path`` imports that the core may not."""
    return {
        name
        for name in imported(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and not any(name == a or name.startswith(a + ".") for a in CORE_ALLOWED)
    }


@pytest.mark.parametrize(
    "path", sorted((ROOT / "txdht" / "core").glob("*.py")), ids=lambda p: p.name
)
def test_the_core_imports_only_itself_the_stdlib_cryptography_and_zope(path: Path) -> None:
    """A module of txdht/core imports nothing beyond its allowed dependencies."""
    assert outside_the_core(path) == set()


def test_the_rule_would_catch_a_twisted_import(tmp_path: Path) -> None:
    """The check itself finds an import of Twisted, or of a driver, in a core module."""
    module = tmp_path / "bad.py"
    module.write_text("import os\nfrom twisted.internet import defer\nimport txdht.node\n")
    assert outside_the_core(module) == {"twisted.internet", "txdht.node"}


@pytest.mark.parametrize(
    "modules",
    [
        "txdht.core.engine, txdht.core.streams, txdht.core.schedule",
        "txdht.aio, txdht.aio.node, txdht.aio.launcher, txdht.aio.testing",
        "txdht.sim, txdht.sim.network, txdht.sim.scenarios, txdht.sim.cli",
    ],
)
def test_the_core_the_asyncio_twin_and_the_simulator_run_without_twisted(modules: str) -> None:
    """Importing the core, the asyncio twin or the simulator loads no Twisted module at all."""
    code = (
        f"import sys, {modules}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'twisted')\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
