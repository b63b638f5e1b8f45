"""Compaction of a log in the fleet store (SPEC.md 6.4, 17.3): decided exactly as a segment
log decides it, and cut from what ``LogCompacted`` says.

Theory of operation
-------------------
:func:`plan_compaction` reads a sealed segment's records and finds the same runs of dropped
records, the same GAP records and the same generation (or the segment removed) as a data
folder would, changing nothing. Once the control log holds ``LogCompacted``, :func:`apply_cut`
makes the cut in one transaction: each run's rows deleted and one GAP row (seq: the last one
removed, chain: the chain after it) in their place, the segment's generation moved on, or,
for a segment of which nothing is kept, every row of it and the segment deleted. A cut is
idempotent, so one a crash interrupted is made when the store is opened. The tree's rows are
never touched: the tree is over every record ever appended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..log import (
    RECORD_OVERHEAD,
    REMOVED,
    SEGMENT_HEADER_SIZE,
    Gap,
    LogRecord,
    RecordKind,
    encode_gap_body,
)
from ._rows import RowLog

__all__ = ["RowCompaction", "apply_cut", "plan_compaction"]


@dataclass(frozen=True, slots=True)
class RowCompaction:
    """A compaction planned (SPEC.md 6.4): what ``LogCompacted`` records."""

    segment: int
    generation: int  # REMOVED when the whole segment goes
    gaps: list[tuple[Gap, bytes]]  # each removed run, with the chain value after it
    bytes_before: int
    bytes_after: int
    dropped_bytes: int


def plan_compaction(
    log: RowLog, segment: int, keep: Callable[[LogRecord], bool]
) -> RowCompaction | None:
    """What compacting a sealed segment would do, exactly as a segment log decides it
    (the same runs, GAP records and generation), changing nothing: the caller records
    the cut in the control log (``LogCompacted``), then calls :func:`apply_cut`."""
    segments = log.segments()
    firsts = [first for first, _generation in segments]
    if segment not in firsts or segment == firsts[-1]:
        raise ValueError("only a sealed segment of the log is compacted")
    following = firsts[firsts.index(segment) + 1]
    generation = dict(segments)[segment]
    gaps: list[tuple[Gap, bytes]] = []
    run: list[LogRecord] = []
    kept = dropped = before = 0
    for record in log.records(segment, following):
        before += record.location.size
        if record.kind == RecordKind.GAP or keep(record):
            if run:
                gaps.append((Gap(run[0].seq, run[-1].seq), run[-1].chain))
                run = []
            kept += record.kind != RecordKind.GAP
        else:
            run.append(record)
            dropped += record.location.size
    if run:
        gaps.append((Gap(run[0].seq, run[-1].seq), run[-1].chain))
    if dropped == 0:
        return None
    removed = kept == 0
    after = (
        0
        if removed
        else SEGMENT_HEADER_SIZE
        + before
        - dropped
        + sum(len(encode_gap_body(gap)) + RECORD_OVERHEAD for gap, _chain in gaps)
    )
    return RowCompaction(
        segment,
        REMOVED if removed else generation + 1,
        gaps,
        SEGMENT_HEADER_SIZE + before,
        after,
        dropped,
    )


def apply_cut(
    log: RowLog, segment: int, generation: int, gaps: Sequence[tuple[Gap, bytes]]
) -> None:
    """Make a cut the control log confirms (``LogCompacted``): the records of each gap
    replaced by one GAP record carrying the chain after it, the segment's generation
    moved on (or the segment gone). Idempotent: a cut already made is left alone, so
    opening the store makes any cut a crash interrupted."""
    conn = log.conn
    with conn.transaction():
        row = conn.execute(
            "SELECT generation FROM gateway_segments WHERE log_id = %s AND first_seq = %s "
            "FOR UPDATE",
            (log.log_id, segment),
        ).fetchone()
        if row is None or (generation != REMOVED and int(row[0]) >= generation):
            return  # made already
        for gap, chain in gaps:
            conn.execute(
                "DELETE FROM gateway_records WHERE log_id = %s AND seq BETWEEN %s AND %s",
                (log.log_id, gap.first_seq, gap.last_seq),
            )
            if generation != REMOVED:
                conn.execute(
                    "INSERT INTO gateway_records (log_id, seq, kind, body, chain) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (
                        log.log_id,
                        gap.last_seq,
                        int(RecordKind.GAP),
                        encode_gap_body(gap),
                        chain,
                    ),
                )
        if generation == REMOVED:  # every record of it goes, earlier GAP records too
            conn.execute(
                "DELETE FROM gateway_records WHERE log_id = %s AND seq >= %s AND seq < ("
                "SELECT coalesce(min(first_seq), %s) FROM gateway_segments "
                "WHERE log_id = %s AND first_seq > %s)",
                (log.log_id, segment, 1 << 62, log.log_id, segment),
            )
            conn.execute(
                "DELETE FROM gateway_segments WHERE log_id = %s AND first_seq = %s",
                (log.log_id, segment),
            )
        else:
            conn.execute(
                "UPDATE gateway_segments SET generation = %s, size = ("
                "  SELECT %s + coalesce(sum(octet_length(body) + %s), 0)"
                "  FROM gateway_records WHERE log_id = %s AND seq >= %s AND seq < ("
                "    SELECT coalesce(min(first_seq), %s) FROM gateway_segments"
                "    WHERE log_id = %s AND first_seq > %s))"
                " WHERE log_id = %s AND first_seq = %s",
                (
                    generation,
                    SEGMENT_HEADER_SIZE,
                    RECORD_OVERHEAD,
                    log.log_id,
                    segment,
                    1 << 62,
                    log.log_id,
                    segment,
                    log.log_id,
                    segment,
                ),
            )
