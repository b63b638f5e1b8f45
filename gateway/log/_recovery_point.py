"""Recovery points: where a log was last checked, and the state folded from it up to there,
so that opening the log reads only the records after it (SPEC.md 6.7).

Theory of operation
-------------------
A recovery point names a position in its log (the next record's seq, the segment file and
generation it goes in, its byte offset there, and the chain value before it) and carries an
opaque state the layer above folded from every record before that position. It is written
whole under ``recovery.new``, fsynced, renamed over ``recovery`` and the folder fsynced, so a
crash leaves the old one or the new one, never a mix. Its SHA-256 covers every byte.

It is a hint, never the truth: on open it is checked against the log (the segment file and
generation it names exist, are long enough, and the chain value stored just before its
position, in the last record's chain field or the segment header, is its chain value), and any
doubt makes the caller read the whole log instead. ``gateway verify`` reads every byte
regardless and checks each recovery point against what it read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._files import replace_file
from ._framing import SEGMENT_HEADER_SIZE, FramingError, decode_segment_header
from ._scan import read_exact

__all__ = [
    "ARCHIVE_FOLDER",
    "BASE_FILE",
    "RECOVERY_FILE",
    "RecoveryPoint",
    "StaleRecoveryPoint",
    "check_position",
    "decode_recovery_point",
    "encode_recovery_point",
    "read_recovery_point",
    "remove_recovery_point",
    "write_recovery_point",
]

RECOVERY_FILE = "recovery"
# A log whose oldest segments were archived starts at its base, a recovery point kept until
# the next archiving (SPEC.md 6.8); the segments went into ARCHIVE_FOLDER beside the others.
BASE_FILE = "base"
ARCHIVE_FOLDER = "archive"
_STAGING = ".new"
_MAGIC = b"MAGRCP1\n"
_VERSION = 1
_HEAD = struct.Struct("<8sI16sQQIQ32sIQ")  # magic .. state length: 100 bytes
_SEGMENT = struct.Struct("<QI")  # a segment file: first seq, generation
_DIGEST = 32
_CHAIN_TRAILER = 36  # a record ends with its chain value (32) and its CRC-32 (4)


class StaleRecoveryPoint(Exception):
    """A recovery point that cannot be used: damaged, of another log, or not matching the log
    as it is (cut back, rewritten, compacted since). The log must be read whole.
    ``outgrown``: the log moved on from it in a way a crash or compaction explains (a segment
    it relied on rewritten or removed, the log cut back), not a contradiction."""

    def __init__(self, reason: str, *, outgrown: bool = False) -> None:
        super().__init__(reason)
        self.outgrown = outgrown


@dataclass(frozen=True, slots=True)
class RecoveryPoint:
    log_id: bytes
    seq: int  # records 0 .. seq-1 are covered
    segment: int  # first seq of the segment file record ``seq`` goes in
    generation: int  # that file's generation
    offset: int  # where record ``seq`` starts in it
    chain: bytes  # the chain value after record seq-1
    # Every segment file of the log then, (first seq, generation): what the state's record
    # locations point into. A segment rewritten since moved them; one removed held none.
    segments: tuple[tuple[int, int], ...]
    # What the layer above folded from records 0 .. seq-1 (read back: a view into the file's
    # bytes, not a copy of them).
    state: bytes | memoryview


def encode_recovery_point(point: RecoveryPoint) -> bytes:
    head = _HEAD.pack(
        _MAGIC,
        _VERSION,
        point.log_id,
        point.seq,
        point.segment,
        point.generation,
        point.offset,
        point.chain,
        len(point.segments),
        len(point.state),
    )
    files = b"".join(_SEGMENT.pack(first, generation) for first, generation in point.segments)
    body = head + files + point.state
    return body + hashlib.sha256(body).digest()


def decode_recovery_point(data: bytes, log_id: bytes) -> RecoveryPoint:
    """Parse and check a recovery point file's bytes. Raises StaleRecoveryPoint."""
    if len(data) < _HEAD.size + _DIGEST:
        raise StaleRecoveryPoint("recovery point too short")
    (magic, version, found_id, seq, segment, generation, offset, chain, count, length) = (
        _HEAD.unpack_from(data)
    )
    if magic != _MAGIC:
        raise StaleRecoveryPoint("not a recovery point (bad magic)")
    if version != _VERSION:
        raise StaleRecoveryPoint(f"recovery point format {version} is not known")
    files_end = _HEAD.size + count * _SEGMENT.size
    if len(data) != files_end + length + _DIGEST:
        raise StaleRecoveryPoint("recovery point length does not match its size")
    view = memoryview(data)
    if hashlib.sha256(view[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise StaleRecoveryPoint("recovery point checksum mismatch")
    if found_id != log_id:
        raise StaleRecoveryPoint("recovery point of another log")
    if segment > seq or offset < SEGMENT_HEADER_SIZE:
        raise StaleRecoveryPoint("recovery point position is impossible")
    segments = tuple(_SEGMENT.iter_unpack(data[_HEAD.size : files_end]))
    state = view[files_end : files_end + length]
    return RecoveryPoint(found_id, seq, segment, generation, offset, chain, segments, state)


def read_recovery_point(
    directory: Path, log_id: bytes, *, name: str = RECOVERY_FILE
) -> RecoveryPoint | None:
    """The log's recovery point (or, by ``name``, its base); None when it has none. Raises
    StaleRecoveryPoint for one that does not check out by itself (its position is checked by
    :func:`check_position`)."""
    try:
        data = (directory / name).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StaleRecoveryPoint(f"recovery point unreadable: {exc.strerror or exc}") from None
    return decode_recovery_point(data, log_id)


def write_recovery_point(
    directory: Path, point: RecoveryPoint, *, name: str = RECOVERY_FILE
) -> int:
    """Replace the log's recovery point (or, by ``name``, its base) atomically and durably.
    Returns its size."""
    data = encode_recovery_point(point)
    replace_file(directory / name, data)
    return len(data)


def remove_recovery_point(directory: Path) -> None:
    """Drop a log's recovery point (and a half-written one): the next open reads it whole."""
    for name in (RECOVERY_FILE, RECOVERY_FILE + _STAGING):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def check_position(point: RecoveryPoint, chosen: Mapping[int, tuple[int, Path]]) -> Path:
    """Is the log, as its files are now (``chosen``: first seq -> generation and path), the
    one the recovery point was made from, up to its position? Returns the file the position
    is in; raises StaleRecoveryPoint if not."""
    for first, generation in point.segments:
        now = chosen.get(first)
        if now is not None and now[0] != generation:
            raise StaleRecoveryPoint(
                f"segment {first} is generation {now[0]}, the recovery point was made from "
                f"{generation} (compacted since)",
                outgrown=True,
            )
    found = chosen.get(point.segment)
    if found is None:
        raise StaleRecoveryPoint(
            f"recovery point names segment {point.segment}, gone", outgrown=True
        )
    if found[0] != point.generation or (point.segment, point.generation) not in point.segments:
        raise StaleRecoveryPoint("recovery point does not match its own segment list")
    path = found[1]
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size < point.offset:
            raise StaleRecoveryPoint(
                f"recovery point is past the end of {path.name} (the log was cut back)",
                outgrown=True,
            )
        if point.offset == SEGMENT_HEADER_SIZE:
            try:
                header = decode_segment_header(read_exact(fd, SEGMENT_HEADER_SIZE, 0))
            except FramingError as exc:
                raise StaleRecoveryPoint(f"segment header: {exc}") from None
            if header.first_seq != point.seq or header.prev_chain != point.chain:
                raise StaleRecoveryPoint("recovery point does not match the segment it names")
            return path
        trailer = read_exact(fd, _CHAIN_TRAILER, point.offset - _CHAIN_TRAILER)
        if trailer[:32] != point.chain:
            raise StaleRecoveryPoint(
                f"the record before the recovery point in {path.name} has another chain value"
            )
        return path
    finally:
        os.close(fd)
