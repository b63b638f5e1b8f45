"""The segment log on disk: append, reopen, roll, torn tails, corruption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.log import (
    LogCorrupt,
    RecordKind,
    SegmentLog,
    iter_log,
    segment_name,
)
from gateway.log._framing import RECORD_OVERHEAD, SEGMENT_HEADER_SIZE

LOG_ID = bytes(range(16))


def make_log(tmp_path: Path, count: int, *, segment_bytes: int = 1 << 20) -> Path:
    directory = tmp_path / "log"
    log = SegmentLog.create(directory, LOG_ID, segment_bytes=segment_bytes)
    for i in range(count):
        log.append([(RecordKind.EVENT, b"event %d" % i)])
    log.close()
    return directory


def bodies(directory: Path) -> list[bytes]:
    return [r.body for r in iter_log(directory, LOG_ID)]


def test_append_and_reopen(tmp_path: Path) -> None:
    directory = make_log(tmp_path, 5)
    log, records, recovery = SegmentLog.open(directory, LOG_ID)
    assert recovery is None
    assert [r.body for r in records] == [b"event %d" % i for i in range(5)]
    assert [r.seq for r in records] == list(range(5))
    locations = log.append([(RecordKind.EVENT, b"more"), (RecordKind.CHUNK, b"x" * 100)])
    assert log.read(locations[1])[1] == b"x" * 100
    log.close()
    assert bodies(directory)[-2:] == [b"more", b"x" * 100]


def test_segments_roll_and_chain_across_them(tmp_path: Path) -> None:
    directory = make_log(
        tmp_path, 50, segment_bytes=SEGMENT_HEADER_SIZE + 3 * (RECORD_OVERHEAD + 8)
    )
    names = sorted(os.listdir(directory))
    assert len(names) > 10
    assert names[0] == segment_name(0)
    assert bodies(directory) == [b"event %d" % i for i in range(50)]
    log, records, _ = SegmentLog.open(directory, LOG_ID)
    assert len(records) == 50 and log.next_seq == 50


def test_truncation_at_every_offset_of_the_last_records_recovers(tmp_path: Path) -> None:
    directory = make_log(tmp_path, 6)
    path = directory / segment_name(0)
    whole = path.read_bytes()
    # Offsets where each record ends.
    log, records, _ = SegmentLog.open(directory, LOG_ID)
    log.close()
    ends = [r.location.offset + r.location.size for r in records]
    start = records[3].location.offset
    for cut in range(start, len(whole)):
        path.write_bytes(whole[:cut])
        log, recovered, recovery = SegmentLog.open(directory, LOG_ID)
        whole_records = sum(1 for end in ends if end <= cut)
        assert len(recovered) == whole_records, cut
        assert (recovery is None) == (cut in ends)
        assert path.stat().st_size == (ends[whole_records - 1])
        log.append([(RecordKind.EVENT, b"after")])
        log.close()
        assert bodies(directory)[-1] == b"after"
        path.write_bytes(whole)


def test_garbage_tail_is_cut_off(tmp_path: Path) -> None:
    directory = make_log(tmp_path, 3)
    path = directory / segment_name(0)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(os.urandom(777))
    _log, records, recovery = SegmentLog.open(directory, LOG_ID)
    assert len(records) == 3
    assert recovery is not None and recovery.offset == size and recovery.dropped_bytes == 777


def test_every_byte_flip_is_detected_and_located(tmp_path: Path) -> None:
    directory = make_log(tmp_path, 4)
    path = directory / segment_name(0)
    whole = path.read_bytes()
    log, records, _ = SegmentLog.open(directory, LOG_ID)
    log.close()
    for offset in range(len(whole)):
        damaged = bytearray(whole)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(LogCorrupt) as info:
            list(iter_log(directory, LOG_ID, tail_ok=False))
        # Located at the header or at the record holding the flipped byte.
        if offset < SEGMENT_HEADER_SIZE:
            assert info.value.offset == 0
        else:
            holder = next(
                r
                for r in records
                if r.location.offset <= offset < r.location.offset + r.location.size
            )
            assert info.value.offset == holder.location.offset, offset
    path.write_bytes(whole)


def test_damage_before_the_tail_refuses_to_open(tmp_path: Path) -> None:
    directory = make_log(tmp_path, 5)
    path = directory / segment_name(0)
    log, records, _ = SegmentLog.open(directory, LOG_ID)
    log.close()
    damaged = bytearray(path.read_bytes())
    damaged[records[1].location.offset + 20] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(LogCorrupt) as info:
        SegmentLog.open(directory, LOG_ID)
    assert info.value.offset == records[1].location.offset
    assert path.read_bytes() == bytes(damaged)  # nothing repaired or cut


def test_reordered_or_dropped_records_break_the_chain(tmp_path: Path) -> None:
    directory = make_log(tmp_path, 4)
    path = directory / segment_name(0)
    log, records, _ = SegmentLog.open(directory, LOG_ID)
    log.close()
    whole = path.read_bytes()
    parts = [whole[r.location.offset : r.location.offset + r.location.size] for r in records]
    head = whole[:SEGMENT_HEADER_SIZE]
    path.write_bytes(head + parts[0] + parts[2] + parts[1] + parts[3])
    with pytest.raises(LogCorrupt):
        list(iter_log(directory, LOG_ID, tail_ok=False))
    path.write_bytes(head + parts[0] + parts[2] + parts[3])
    with pytest.raises(LogCorrupt):
        SegmentLog.open(directory, LOG_ID)


def test_segment_moved_to_another_log_is_refused(tmp_path: Path) -> None:
    directory = make_log(tmp_path, 2)
    with pytest.raises(LogCorrupt, match="another log"):
        SegmentLog.open(directory, bytes(16))
