"""Recovery points (SPEC.md 6.7): a store opens from them reading only what follows them;
one that is damaged, of another log, outgrown or ahead of its log is set aside for a whole
read; a crash while one is written, or between a message's chunks and its commit, loses
nothing; and verify checks each against its log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from gateway.events import Envelope, now
from gateway.log import RECOVERY_FILE, remove_recovery_point
from gateway.services import _archive_checkpoint
from gateway.services.archive import Archive, StoreConfig
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF

ROOT = Path(__file__).resolve().parent.parent
CONFIG = StoreConfig(kdf=FAST_KDF, segment_bytes=256 * 1024, compaction_grace=0)


async def store(archive: Archive, box: str, count: int, size: int = 8000) -> list[str]:
    ids = []
    for n in range(count):
        writer = archive.begin_message([box])
        await writer.write(b"Subject: %d\r\n\r\n" % n + os.urandom(size // 2).hex().encode())
        ids.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[box])
    return ids


async def fill(data: Path, count: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Two mailboxes with ``count`` messages each, closed cleanly (recovery points made)."""
    archive = await Archive.open(data, CONFIG)
    try:
        ids, passwords = {}, {}
        for name in ("a", "b"):
            info, passwords[name] = await archive.create_mailbox(name)
            ids[info.mailbox_id] = await store(archive, info.mailbox_id, count)
        return ids, passwords
    finally:
        await archive.aclose()


def log_dirs(data: Path) -> list[Path]:
    return [data / "control", *sorted(data.glob("mailboxes/*/log"))]


def log_bytes(data: Path) -> int:
    return sum(p.stat().st_size for d in log_dirs(data) for p in d.glob("*.seg"))


def bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def served(data: Path) -> tuple[dict[str, list[str]], int]:
    """What a fresh open serves, per mailbox, and how many bytes it read."""
    before = bytes_read()
    archive = await Archive.open(data, CONFIG)
    read = bytes_read() - before
    try:
        return {
            i.mailbox_id: [m.message_id for m in archive.messages(i.mailbox_id)]
            for i in archive.mailboxes()
        }, read
    finally:
        await archive.aclose()


async def test_an_open_reads_only_what_follows_the_recovery_points(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ids, _ = await fill(data, 150)
    assert all((d / RECOVERY_FILE).exists() for d in log_dirs(data))
    total = log_bytes(data)
    points = sum((d / RECOVERY_FILE).stat().st_size for d in log_dirs(data))
    got, read = await served(data)
    assert got == ids
    # The recovery points, a segment header and a chain value or two per log: nothing of
    # the records they cover.
    assert read < points + 64 * 1024, (read, points, total)
    assert total > 10 * (points + 64 * 1024)
    for log_dir in log_dirs(data):
        remove_recovery_point(log_dir)
    got, read = await served(data)
    assert got == ids and read >= total


@pytest.mark.parametrize("spoil", ["flip", "truncate", "other-log", "garbage"])
async def test_a_bad_recovery_point_falls_back_to_reading_the_log_whole(
    tmp_path: Path, spoil: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    ids, _ = await fill(data, 40)
    a, b = [d / RECOVERY_FILE for d in log_dirs(data)[1:]]
    raw = a.read_bytes()
    if spoil == "flip":
        a.write_bytes(raw[:200] + bytes([raw[200] ^ 1]) + raw[201:])
    elif spoil == "truncate":
        a.write_bytes(raw[:-1])
    elif spoil == "other-log":
        shutil.copy(b, a)
    else:
        a.write_bytes(b"not a recovery point")
    got, read = await served(data)
    assert got == ids
    assert "event=recovery-point-unused" in caplog.text
    assert read >= sum(p.stat().st_size for p in a.parent.glob("*.seg"))
    assert verify_data_dir(data).ok  # the open made a good one again


async def test_an_older_recovery_point_is_used_and_the_rest_read(tmp_path: Path) -> None:
    """Older than the log but still of it (what a crash after a checkpoint leaves): the
    records after it are read, every message is there."""
    data = tmp_path / "data"
    ids, _ = await fill(data, 20)
    box = next(iter(ids))
    old = {d: (d / RECOVERY_FILE).read_bytes() for d in log_dirs(data)}
    archive = await Archive.open(data, CONFIG)
    try:
        ids[box] += await store(archive, box, 30)
    finally:
        await archive.aclose()
    for d, raw in old.items():
        (d / RECOVERY_FILE).write_bytes(raw)
    got, _read = await served(data)
    assert got == ids


async def test_a_recovery_point_the_log_outgrew_by_compaction_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    ids, _ = await fill(data, 60)
    box = next(iter(ids))
    log_dir = data / "mailboxes" / box / "log"
    old = (log_dir / RECOVERY_FILE).read_bytes()
    archive = await Archive.open(data, CONFIG)
    try:
        await archive.expunge(box, ids[box][:40])
        assert await archive.compact(box, min_gain=0.01) > 0
    finally:
        await archive.aclose(checkpoint=False)  # a crash before the next checkpoint
    (log_dir / RECOVERY_FILE).write_bytes(old)
    ids[box] = ids[box][40:]
    got, _read = await served(data)
    assert got == ids
    assert "compacted since" in caplog.text
    assert verify_data_dir(data).ok


async def test_a_recovery_point_ahead_of_its_log_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log was cut back behind its recovery point (a restore of the segments alone): the
    log is read whole, and what it lost is reported as the witnesses say."""
    data = tmp_path / "data"
    ids, _ = await fill(data, 10)
    box = next(iter(ids))
    log_dir = data / "mailboxes" / box / "log"
    before = {p: p.read_bytes() for p in log_dir.glob("*.seg")}
    archive = await Archive.open(data, CONFIG)
    try:
        lost = await store(archive, box, 5)
    finally:
        await archive.aclose()
    for path in log_dir.glob("*.seg"):
        if path in before:
            path.write_bytes(before[path])
        else:
            path.unlink()
    archive = await Archive.open(data, CONFIG)
    try:
        assert [m.message_id for m in archive.messages(box)] == ids[box]
        damage = archive.state.damage[box]
        assert {m for d in damage for m in d.lost_message_ids} == set(lost)
    finally:
        await archive.aclose()
    assert "past the end" in caplog.text


async def test_a_message_begun_before_a_checkpoint_and_committed_after_survives_a_crash(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    info, _ = await archive.create_mailbox("a")
    box = info.mailbox_id
    kept = await store(archive, box, 3)
    writer = archive.begin_message([box])
    await writer.write(os.urandom(600 * 1024))  # chunks written before the checkpoint
    assert await archive.checkpoint(everything=True) == 2
    kept += ((await writer.commit(Envelope(received_at=now(), origin="journal")))[box],)
    await archive.aclose(checkpoint=False)
    got, _read = await served(data)
    assert got == {box: kept}
    assert verify_data_dir(data).ok


async def test_a_commit_witnessed_before_the_control_logs_recovery_point_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control log's recovery point vouches for the witnesses before it without naming
    them: a commit after the mailbox's own recovery point but witnessed before the control
    log's is served after a crash, not rolled back."""
    data = tmp_path / "data"
    ids, _ = await fill(data, 5)
    box = next(iter(ids))
    archive = await Archive.open(data, CONFIG)
    try:
        ids[box] += await store(archive, box, 4)
        monkeypatch.setattr(_archive_checkpoint, "_due", lambda box, everything: False)
        assert await archive.checkpoint(everything=True) == 1  # the control log's alone
    finally:
        await archive.aclose(checkpoint=False)
    got, _read = await served(data)
    assert got == ids
    assert verify_data_dir(data).ok


CHILD = textwrap.dedent(
    """
    import os, sys, trio
    from pathlib import Path
    from gateway.events import Envelope, now
    from gateway.services.archive import Archive, StoreConfig
    from tests.conftest import FAST_KDF

    async def main():
        archive = await Archive.open(Path(sys.argv[1]), StoreConfig(kdf=FAST_KDF))
        box = archive.mailboxes()[0].mailbox_id
        print("ready", flush=True)
        while True:
            writer = archive.begin_message([box])
            await writer.write(os.urandom(20000))
            await writer.commit(Envelope(received_at=now(), origin="journal"))
            await archive.checkpoint(everything=True)

    trio.run(main)
    """
)


@pytest.mark.slow
def test_kill_9_while_recovery_points_are_written_leaves_a_store_that_opens(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    ids, _passwords = trio.run(fill, data, 3)
    box = next(iter(ids))
    for round_no in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data)], cwd=ROOT, stdout=subprocess.PIPE
        )
        assert child.stdout is not None
        with child.stdout:
            assert child.stdout.readline() == b"ready\n"
            time.sleep(0.3 + 0.23 * round_no)
            child.send_signal(signal.SIGKILL)
            child.wait()
        got, _read = trio.run(served, data)
        assert got[box][: len(ids[box])] == ids[box], f"round {round_no}"
        ids[box] = got[box]
        report = verify_data_dir(data)
        assert report.ok, [str(p) for p in report.problems]
    assert len(ids[box]) > 10
