"""A bounded control log (SPEC.md 6.8): sealed segments behind its recovery point move to
control/archive/ beyond the history kept; the gateway starts from its recovery point or its
base without them, verify works from the base and says where the history kept starts, and
the records read from the start show the archived history as one gap."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.events import Envelope, now
from gateway.log import ARCHIVE_FOLDER, BASE_FILE, RECOVERY_FILE, RecordKind, decode_gap
from gateway.services.archive import Archive, StoreConfig
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF

CONFIG = StoreConfig(
    kdf=FAST_KDF, segment_bytes=16 * 1024, control_history_bytes=32 * 1024, compaction_grace=0
)


async def fill(data: Path) -> tuple[str, list[str]]:
    archive = await Archive.open(data, CONFIG)
    try:
        info, _ = await archive.create_mailbox("a")
        box = info.mailbox_id
        ids = []
        for n in range(300):
            writer = archive.begin_message([box])
            await writer.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
            ids.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[box])
        await archive.expunge(box, ids[:100])
        assert await archive.compact(box, min_gain=0.01) > 0
        return box, ids[100:]
    finally:
        await archive.aclose()


async def listed(data: Path, box: str) -> list[str]:
    archive = await Archive.open(data, CONFIG)
    try:
        return [m.message_id for m in archive.messages(box)]
    finally:
        await archive.aclose(checkpoint=False)


async def test_old_control_segments_are_archived_and_the_gateway_starts_without_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    box, kept = await fill(data)
    control = data / "control"
    archived = sorted((control / ARCHIVE_FOLDER).glob("*.seg"))
    assert archived, "nothing archived"
    live = sorted(control.glob("*.seg"))
    assert sum(p.stat().st_size for p in live[:-1]) <= 32 * 1024 + 16 * 1024
    assert (control / BASE_FILE).exists()

    assert await listed(data, box) == kept  # from the recovery point
    report = verify_data_dir(data)
    assert report.ok, [str(p) for p in report.problems]
    assert any("was archived" in note for note in report.notes)

    # Without the recovery point: from the base; without the archive: the same.
    (control / RECOVERY_FILE).unlink()
    shutil.rmtree(control / ARCHIVE_FOLDER)
    assert await listed(data, box) == kept
    assert "recovery-point-unused" not in caplog.text
    report = verify_data_dir(data)
    assert report.ok, [str(p) for p in report.problems]

    archive = await Archive.open(data, CONFIG)
    try:
        first = next(iter(archive.read_control(0)))
        assert first.kind == RecordKind.GAP  # the history before the base, said as a gap
        gap = decode_gap(first.body)
        assert gap.first_seq == 0 and gap.last_seq + 1 == int(live[0].name.split(".")[0])
    finally:
        await archive.aclose()


async def test_a_damaged_base_is_reported_and_the_recovery_point_still_starts_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    box, kept = await fill(data)
    base = data / "control" / BASE_FILE
    raw = bytearray(base.read_bytes())
    raw[120] ^= 1
    base.write_bytes(bytes(raw))
    report = verify_data_dir(data)
    assert not report.ok
    assert any(p.path == str(base) for p in report.problems), report.problems
    assert await listed(data, box) == kept


async def test_nothing_is_archived_by_default(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF, segment_bytes=16 * 1024))
    try:
        info, _ = await archive.create_mailbox("a")
        for n in range(200):
            writer = archive.begin_message([info.mailbox_id])
            await writer.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
            await writer.commit(Envelope(received_at=now(), origin="journal"))
    finally:
        await archive.aclose()
    assert not (data / "control" / ARCHIVE_FOLDER).exists()
    assert not (data / "control" / BASE_FILE).exists()
    assert len(list((data / "control").glob("*.seg"))) > 3
