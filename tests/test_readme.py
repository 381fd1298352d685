"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_twisted_example_runs() -> None:
    """The Deferred example joins two nodes, puts and gets a value and a blob."""
    (code,) = [b for b in BLOCKS if "task.react" in b]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, env=env, check=True
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0].endswith("b'hello, world'")
    assert lines[1] == "b'immutable bytes'"


def test_testing_example_runs() -> None:
    """The txdht.testing example runs in-process, assertions included."""
    (code,) = [b for b in BLOCKS if "MemoryNetwork()" in b]
    exec(compile(code, "README.md", "exec"), {})


def test_asyncio_examples_run() -> None:
    """Both asyncio examples (native twin and adapter) put and get a value."""
    blocks = [b for b in BLOCKS if "asyncio.run(main())" in b]
    assert len(blocks) == 2
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, timeout=60, env=env, check=True
        ).stdout
        for code in blocks
    ]
    assert outputs == [b"b'hello from asyncio'\n", b"b'hello from the Twisted node'\n"]
