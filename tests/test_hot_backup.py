"""Hot backup: copying the data folder with ``cp -a`` or ``rsync`` while the gateway writes,
expunges and compacts always gives a folder that opens cleanly and holds every message that
was acknowledged before the copy began."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from gateway.verify import verify_data_dir

from .hot_writer import messages_present

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]


class Acks:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stored: set[tuple[str, str]] = set()
        self.expunged: set[tuple[str, str]] = set()

    def snapshot(self) -> set[tuple[str, str]]:
        with self.lock:
            return set(self.stored)


def follow(process: subprocess.Popen[str], acks: Acks) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        kind, *rest = line.split()
        with acks.lock:
            if kind == "stored":
                acks.stored.add((rest[0], rest[1]))
            elif kind in ("expunging", "expunged"):
                acks.expunged.add((rest[0], rest[1]))


@pytest.mark.parametrize("tool", ["gateway", "cp", "rsync"])
def test_copy_while_writing_opens_cleanly(tmp_path: Path, tool: str) -> None:
    """With ``gateway backup``, or with cp/rsync copying ``control/`` first and the rest
    after it (SPEC.md 7)."""
    if tool != "gateway" and shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (make test installs it)")
    data = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hot_writer", str(data), "8"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acks = Acks()
    reader = threading.Thread(target=follow, args=(process, acks), daemon=True)
    reader.start()
    copies: list[tuple[Path, set[tuple[str, str]]]] = []
    try:
        deadline = time.monotonic() + 6
        n = 0
        while time.monotonic() < deadline:
            time.sleep(0.3)
            before = acks.snapshot()
            if not before:
                continue
            copy = tmp_path / f"copy{n}"
            n += 1
            if tool == "gateway":
                commands = [[*GATEWAY, "backup", str(copy), "--data-dir", str(data)]]
            elif tool == "cp":
                copy.mkdir()
                commands = [
                    ["cp", "-a", str(data / "control"), str(copy)],
                    ["cp", "-a", str(data / "mailboxes"), str(copy)],
                ]
            else:
                copy.mkdir()
                commands = [
                    ["rsync", "-a", f"{data}/control/", f"{copy}/control/"],
                    ["rsync", "-a", "--exclude=/control", f"{data}/", f"{copy}/"],
                ]
            # A file that compaction removes while the copy runs may be reported as
            # vanished; the copy is still complete without it.
            for command in commands:
                subprocess.run(command, check=False, capture_output=True, cwd=ROOT)
            copies.append((copy, before))
    finally:
        assert process.wait(timeout=60) == 0
        reader.join(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
    assert len(copies) >= 3
    for copy, acknowledged in copies:
        # Verify first: opening for writing may cut a torn tail or drop leftovers.
        report = verify_data_dir(copy)
        assert report.ok, (copy.name, [str(p) for p in report.problems])
        present = trio.run(messages_present, copy)
        missing = acknowledged - present - acks.expunged
        assert not missing, f"{copy.name}: {len(missing)} acknowledged messages missing"
        assert verify_data_dir(copy).ok
