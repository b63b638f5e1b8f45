"""tools/bench/store_bench.py (issue 14) at CI size: a ``--small`` run end to end (fill, then
every measurement against a real ``gateway serve``), and a fill that resumes, after a larger
``--messages`` or a kill -9, with exactly the messages still missing. Timings are not
checked: only that every figure is there and adds up."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.services.archive import Archive, StoreConfig

from .conftest import FAST_KDF

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "bench" / "store_bench.py"


def bench(folder: Path, *args: str, timeout: float = 300) -> Any:
    """Run the script with ``--json``; its JSON output."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(folder), "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def archive_counts(data: Path) -> dict[str, int]:
    """Messages per mailbox id, as the archive itself has them."""

    async def count() -> dict[str, int]:
        archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
        try:
            return {m.mailbox_id: len(archive.messages(m.mailbox_id)) for m in archive.mailboxes()}
        finally:
            await archive.aclose()

    return trio.run(count)


def segment_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.glob("mailboxes/*/log/*.seg"))


def state_counts(folder: Path) -> list[tuple[str, int]]:
    state = json.loads((folder / "state.json").read_text())
    return [(box["mailbox_id"], box["stored"]) for box in state["boxes"]]


def test_a_small_run_fills_and_measures_everything(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    result = bench(folder, "--small")
    assert result["messages_requested"] == result["messages_stored"] == 20_000
    assert result["mailboxes"] == 20
    assert result["big_mailbox_stored"] == 10_000
    assert result["fill"]["last"]["added"] == 20_000
    assert result["fill"]["last"]["mailboxes_created"] == 20
    # Sealed chunks, records and the commit record weigh more than the message itself.
    assert 1024 < result["disk_bytes_per_message"] < 16 * 1024
    assert result["segment_bytes"] <= result["disk_apparent"]
    for start in ("empty_start_s", "clean_start_1_s", "clean_start_2_s", "kill9_start_s"):
        assert result[start] > 0, start
        # Every mailbox log opens in the background, after the gateway serves.
        opened = start.replace("start", "opened")
        assert result[opened] >= result[start], opened
    assert result["clean_stop_status"] == result["final_stop_status"] == 0
    assert result["kill9_children"] >= 2  # the journal and the worker exited with it
    assert set(result["rss_filled_processes"]) == {"supervisor", "journal", "worker-1"}
    assert result["rss_filled"] > 0 and result["rss_empty"] > 0
    assert result["rss_per_message"] == pytest.approx(
        (result["rss_filled"] - result["rss_empty"]) / 20_000
    )
    pop3 = result["pop3"]
    assert pop3["login_reply"].startswith("+OK maildrop has 10000 messages")
    assert pop3["stat_count"] == pop3["list_lines"] == pop3["uidl_lines"] == 10_000
    assert pop3["list_octets"] == pop3["stat_octets"] == 10_000 * 1024
    assert pop3["retr_octets"] == 1024  # stored directly: no Received: field in front
    assert pop3["rss_peak"]["worker-1"] > 0 and pop3["rss_peak"]["journal"] > 0
    assert result["verify_status"] == 0
    assert "messages 20000" in result["verify_summary"]
    assert result["verify_log_bytes"] > 20_000 * 1024
    assert result["verify_mb_per_s"] > 0
    # Nothing was deleted by the POP3 step, and the state file holds passwords: 0600.
    assert sum(archive_counts(folder / "data").values()) == 20_000
    assert stat.S_IMODE((folder / "state.json").stat().st_mode) == 0o600
    assert json.loads((folder / "results.json").read_text()) == result


def test_a_larger_count_adds_only_the_difference(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    shape = ("--mailboxes", "5", "--big-mailbox", "400", "--fill-only")
    first = bench(folder, "--messages", "1000", *shape)
    assert first["stored"] == [400, 150, 150, 150, 150]
    second = bench(folder, "--messages", "1501", *shape)
    assert second["stored"] == [400, 276, 275, 275, 275]
    assert [f["added"] for f in second["fills"]] == [1000, 501]
    assert second["fills"][1]["mailboxes_created"] == 0
    ids = [mailbox_id for mailbox_id, _ in state_counts(folder)]
    assert archive_counts(folder / "data") == dict(zip(ids, second["stored"], strict=True))


def test_a_fill_killed_with_sigkill_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "bench"
    argv = [sys.executable, str(SCRIPT), "--dir", str(folder), "--fill-only", "--small"]
    argv += ["--messages", "20000"]
    process = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while segment_bytes(folder / "data") < 2 * 1024 * 1024:  # some hundreds of messages
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    partial = sum(archive_counts(folder / "data").values())
    assert 0 < partial < 20_000
    resumed = bench(folder, "--fill-only", "--small", "--messages", "20000")
    assert sum(resumed["stored"]) == 20_000
    assert [f["added"] for f in resumed["fills"]] == [20_000 - partial]
    assert sum(archive_counts(folder / "data").values()) == 20_000
