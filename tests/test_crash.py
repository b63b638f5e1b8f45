"""kill -9 while writers store, expunge and compact: after restart every acknowledged
message is there and verifies, and no unacknowledged message is half there."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from gateway.verify import verify_data_dir

from .hot_writer import messages_present

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


Ids = set[tuple[str, str]]


def run_and_kill(data: Path, after: float) -> tuple[Ids, Ids, Ids]:
    """Returns (stored, maybe expunged, surely expunged), as the writer acknowledged them."""
    stored: Ids = set()
    expunging: Ids = set()
    expunged: Ids = set()
    with subprocess.Popen(
        [sys.executable, "-m", "tests.hot_writer", str(data), "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        time.sleep(after)
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
    # Everything printed was acknowledged before the kill (lines are flushed one by one;
    # a line cut short by the kill is not counted).
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and len(parts[2]) == 32:
            if parts[0] == "stored":
                stored.add((parts[1], parts[2]))
            elif parts[0] == "expunging":
                expunging.add((parts[1], parts[2]))
            elif parts[0] == "expunged":
                expunged.add((parts[1], parts[2]))
    return stored, expunging, expunged


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acknowledged: Ids = set()
    maybe_gone: Ids = set()
    expunged: Ids = set()
    for round_no, after in enumerate([1.5, 2.2, 1.1, 2.7]):
        stored, expunging, gone = run_and_kill(data, after)
        assert stored, f"round {round_no}: nothing was stored before the kill"
        acknowledged |= stored
        maybe_gone |= expunging
        expunged |= gone
        # verify first (read-only), then open for writing (which cuts the torn tail).
        report = verify_data_dir(data)
        assert report.ok, [str(p) for p in report.problems]
        now_present = trio.run(messages_present, data)
        missing = acknowledged - maybe_gone - now_present
        assert not missing, f"round {round_no}: {len(missing)} acknowledged messages lost"
        assert not (expunged & now_present), "an acknowledged expunge was undone"
        # Whatever is present beyond the acknowledged was committed just before the kill,
        # and is whole: verify opened every commit's chunks above.
    assert verify_data_dir(data).ok
