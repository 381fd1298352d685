"""The data directory's lock: one running node per directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from txdht.datadir import LOCK_FILE, DataDirInUse, DataDirLock


def test_one_lock_at_a_time_in_one_process(tmp_path: Path) -> None:
    """The lock is held until released (twice is fine), and refused meanwhile."""
    first = DataDirLock(tmp_path)
    held = first.held
    assert (tmp_path / LOCK_FILE).exists()
    with pytest.raises(DataDirInUse, match="is in use by another running node"):
        DataDirLock(tmp_path)
    first.release()
    first.release()
    assert (held, first.held) == (True, False)
    second = DataDirLock(tmp_path)
    second.release()


def test_another_process_holding_it_is_refused_and_its_end_lets_go(tmp_path: Path) -> None:
    """A lock another process holds is refused; when that process ends, however it ends (here
    killed), the directory is free again."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from txdht.datadir import DataDirLock; "
            f"DataDirLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(DataDirInUse):
            DataDirLock(tmp_path)
    finally:
        holder.kill()
        holder.communicate(timeout=30)  # waits, and closes its pipe
    DataDirLock(tmp_path).release()
