"""A log as rows of the fleet store (SPEC.md 17.2): the same records, with the same chain
values, as a segment log holds.

Theory of operation
-------------------
Everything here is blocking (psycopg); callers run it in worker threads. A :class:`RowLog`
appends a batch in one transaction (its own, or a group-commit round's): the log's row in
``gateway_logs`` is locked (``FOR UPDATE``, by :func:`lock_ends` with the log's end), which
serializes appenders on every node, so the chain stays one line; it reads the records other
nodes appended since the caller's last look (``Appended.foreign``, for the caller's
projection, before its own); frames its records exactly as a segment log would
(``encode_record_parts``: the same chain values) and rolls segments by the same rule; inserts
them in one statement with the tree rows they complete; moves the log's end. Its statements
go out in one pipeline. Durable means committed: with a synchronous
standby, on two machines. Nothing of a batch is visible before the commit, and a batch a
failure cuts short is rolled back whole.

:func:`segment_files` turns a log's rows back into segment files byte for byte (a record's
framing is a function of its kind, seq, body and the chain before it), which is how a fleet
store is copied back into a data folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from ..log import (
    DEFAULT_SEGMENT_BYTES,
    RECORD_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    AppendItem,
    Location,
    LogCorrupt,
    LogRecord,
    RecordHeader,
    RecordKind,
    SegmentHeader,
    decode_gap,
    encode_gap,
    encode_record,
    encode_record_parts,
    encode_segment_header,
    genesis_chain,
    segment_name,
)
from ..merkle import MerkleTree, frontier_root
from ._coordination import CHANNEL
from ._session import Session
from ._tree_rows import TreeRows, split_frontier

__all__ = [
    "Appended",
    "LogEnd",
    "RowLog",
    "lock_ends",
    "log_place",
    "read_record",
    "segment_files",
    "session_rows",
]

_FETCH = 2000  # records read per round trip


@dataclass(frozen=True, slots=True)
class Appended:
    """What an append did: the records other nodes had appended since the caller's last
    look (to fold first), then the seq of the caller's first record, and each of its
    records' chain value and framed size."""

    foreign: list[LogRecord]
    first_seq: int
    chains: list[bytes]
    sizes: list[int]  # each record's framed size
    segments: list[int]  # the segment each record is in (its first seq)
    end: LogEnd  # the log's end after it (for the next append in the same transaction)


@dataclass(slots=True)
class LogEnd:
    """A log's end as an append continues from it: the seq after its last record, the chain
    value after it, its tree's size and frontier, its last segment (None: it has none)."""

    next_seq: int
    chain: bytes
    tree_size: int
    frontier: list[bytes]
    segment: _Segment | None


def lock_ends(conn: psycopg.Connection[Any], log_ids: Sequence[bytes]) -> dict[bytes, LogEnd]:
    """Lock the rows of these logs in log-id order (one statement, in the caller's
    transaction) and read their ends."""
    rows = conn.execute(
        "SELECT l.log_id, l.next_seq, l.chain, l.tree_size, l.frontier, "
        "s.first_seq, s.generation, s.prev_chain, s.size FROM gateway_logs l "
        "LEFT JOIN LATERAL (SELECT first_seq, generation, prev_chain, size "
        "  FROM gateway_segments WHERE log_id = l.log_id ORDER BY first_seq DESC LIMIT 1) s "
        "ON true WHERE l.log_id = ANY(%s) ORDER BY l.log_id FOR UPDATE OF l",
        (sorted(log_ids),),
    ).fetchall()
    return {
        bytes(r[0]): LogEnd(
            int(r[1]),
            bytes(r[2]),
            int(r[3]),
            split_frontier(bytes(r[4])),
            None if r[5] is None else _Segment(int(r[5]), int(r[6]), bytes(r[7]), int(r[8])),
        )
        for r in rows
    }


def log_place(log_id: bytes) -> Path:
    """How errors name a log (LogCorrupt takes a path: the log's place in the store)."""
    return Path("fleet-store") / log_id.hex()


@contextmanager
def session_rows(session: Session, log_id: bytes) -> Iterator[RowLog]:
    """A log's rows through a session, for one call (its errors raise StoreUnavailable)."""
    with session.use() as conn:
        yield RowLog(conn, log_id)


def read_record(session: Session, log_id: bytes, seq: int) -> tuple[RecordHeader, bytes]:
    """One committed record by its seq (asked again on a new connection after a failover)."""
    kind, body = session.read(lambda conn: RowLog(conn, log_id).read(seq))
    return RecordHeader(len(body), kind, seq), body


class RowLog:
    """One log in the fleet store, through one connection (not shared between threads)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        log_id: bytes,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        writer: int | None = None,
    ) -> None:
        """``writer``: the journal process whose appends these are (_writers), if any."""
        self.conn = conn
        self.log_id = log_id
        self.segment_bytes = segment_bytes
        self.writer = writer
        self.where = log_place(log_id)

    def create(self) -> None:
        """Make the log, empty, if it is not there yet."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO gateway_logs (log_id, next_seq, chain) VALUES (%s, 0, %s) "
                "ON CONFLICT (log_id) DO NOTHING",
                (self.log_id, genesis_chain(self.log_id)),
            )

    def end(self) -> tuple[int, bytes]:
        """The seq after the last record, and the chain value after it."""
        row = self.conn.execute(
            "SELECT next_seq, chain FROM gateway_logs WHERE log_id = %s", (self.log_id,)
        ).fetchone()
        if row is None:
            raise LogCorrupt(self.where, 0, "no such log in the fleet store")
        return int(row[0]), bytes(row[1])

    def append(
        self, items: Sequence[AppendItem], known: int, end: LogEnd | None = None
    ) -> Appended:
        """Append a batch after the records the caller knows (``known``: its next seq), in
        one transaction (or in the caller's, when it has one open: should this raise, the
        caller rolls that back, as a group-commit round does). Records other
        nodes appended meanwhile come back first. ``end``: the log's end as :func:`lock_ends`
        read it in the caller's transaction (else it is locked and read here). Raises
        LogCorrupt when the log ends before ``known`` (a store that lost records the caller
        saw committed). Its statements go out together (a pipeline): one round trip when
        ``end`` is given and nothing came from other nodes."""
        conn = self.conn
        own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with conn.pipeline(), conn.transaction() if own else nullcontext():
            if end is None:
                end = lock_ends(conn, [self.log_id]).get(self.log_id)
                if end is None:
                    raise LogCorrupt(self.where, 0, "no such log in the fleet store")
            seq, chain = end.next_seq, end.chain
            if seq < known:
                raise LogCorrupt(
                    self.where,
                    seq,
                    f"the fleet store's log ends at {seq}, before record {known} this node saw",
                )
            foreign = list(self.records(known, seq, chunk_bodies=False)) if seq > known else []
            # A copy: ``end`` stays as it was should this append be rolled back.
            segment = replace(end.segment or _Segment(seq, 0, chain, SEGMENT_HEADER_SIZE))
            touched = [segment] if end.segment is not None else []
            started = [] if end.segment is not None else [segment]
            first, chains, bodies, kinds, leaves, sizes, in_segment = seq, [], [], [], [], [], []
            for kind, body_or_builder in items:
                body = body_or_builder(seq) if callable(body_or_builder) else body_or_builder
                size = len(body) + RECORD_OVERHEAD
                if segment.size + size > self.segment_bytes and segment.size > SEGMENT_HEADER_SIZE:
                    segment = _Segment(seq, 0, chain, SEGMENT_HEADER_SIZE)
                    started.append(segment)
                _header, _trailer, chain = encode_record_parts(kind, seq, body, chain)
                kinds.append(int(kind))
                bodies.append(body)
                leaves.append((seq, int(kind), body))
                chains.append(chain)
                sizes.append(size)
                in_segment.append(segment.first_seq)
                segment.size += size
                seq += 1
            for new in started:
                self._start_segment(new)
            # One statement for the batch, however many records. The arrays go binary (%b):
            # a text bytea[] would be escaped element by element, on both sides.
            conn.execute(
                "INSERT INTO gateway_records (log_id, seq, kind, body, chain, writer) "
                "SELECT %s, *, %s::integer FROM unnest("
                "%b::bigint[], %b::smallint[], %b::bytea[], %b::bytea[])",
                (self.log_id, self.writer, list(range(first, seq)), kinds, bodies, chains),
            )
            conn.cursor().executemany(
                "UPDATE gateway_segments SET size = %s WHERE log_id = %s AND first_seq = %s",
                [(t.size, self.log_id, t.first_seq) for t in touched],
            )
            tree_size, frontier = end.tree_size, list(end.frontier)
            if tree_size == first:  # else the log has no tree (_tree_rows)
                TreeRows(conn, self.log_id).extend(tree_size, frontier, leaves)
                tree_size = seq
            # The notice is delivered at commit, never for a batch rolled back (_coordination).
            notice = f"{self.log_id.hex()} {seq}"
            conn.execute(
                "WITH moved AS (UPDATE gateway_logs SET next_seq = %s, chain = %s, "
                "tree_size = %s, frontier = %s WHERE log_id = %s RETURNING next_seq) "
                "SELECT pg_notify(%s, %s) FROM moved",
                (seq, chain, tree_size, b"".join(frontier), self.log_id, CHANNEL, notice),
            )
        after = LogEnd(seq, chain, tree_size, frontier, segment)
        return Appended(foreign, first, chains, sizes, in_segment, after)

    def records(
        self, from_seq: int = 0, to_seq: int | None = None, *, chunk_bodies: bool = True
    ) -> Iterator[LogRecord]:
        """The records from ``from_seq`` (up to ``to_seq``), in order, read in pages; with
        ``chunk_bodies`` False, CHUNK records come without their bodies (as a segment log's
        open hands them over: their place and size are what an index needs)."""
        body = "body" if chunk_bodies else "CASE WHEN kind = 2 THEN ''::bytea ELSE body END"
        while to_seq is None or from_seq < to_seq:
            rows = self._binary.execute(
                f"SELECT seq, kind, {body}, chain, octet_length(body) FROM gateway_records "  # noqa: S608 - two fixed texts
                "WHERE log_id = %s AND seq >= %s AND seq < %s ORDER BY seq LIMIT %s",
                (self.log_id, from_seq, to_seq if to_seq is not None else 1 << 62, _FETCH),
            ).fetchall()
            for seq, kind, data, chain, length in rows:
                yield _record(int(seq), int(kind), bytes(data), bytes(chain), int(length))
            if len(rows) < _FETCH:
                return
            from_seq = int(rows[-1][0]) + 1

    def tree_head(self) -> tuple[int, bytes] | None:
        """The head of the log's tree (every record committed): its size and root; None
        when the log has no tree."""
        row = self.conn.execute(
            "SELECT next_seq, tree_size, frontier FROM gateway_logs WHERE log_id = %s",
            (self.log_id,),
        ).fetchone()
        if row is None or int(row[0]) != int(row[1]):
            return None
        return int(row[1]), frontier_root(split_frontier(bytes(row[2])))

    def tree(self, size: int) -> MerkleTree:
        """The tree of the first ``size`` records, read lazily (proofs read few rows)."""
        return TreeRows(self.conn, self.log_id).view(size)

    def read(self, seq: int) -> tuple[int, bytes]:
        """One record's kind and body."""
        return self.read_many([seq])[0]

    def read_many(self, seqs: Sequence[int]) -> list[tuple[int, bytes]]:
        """Several records' kinds and bodies, in the order asked, in one query. Raises
        LogCorrupt for one that is not there."""
        rows = self._binary.execute(
            "SELECT seq, kind, body FROM gateway_records WHERE log_id = %s AND seq = ANY(%s)",
            (self.log_id, list(seqs)),
        ).fetchall()
        found = {int(seq): (int(kind), bytes(body)) for seq, kind, body in rows}
        for seq in seqs:
            if seq not in found:
                raise LogCorrupt(self.where, seq, f"record {seq} is not in the fleet store")
        return [found[seq] for seq in seqs]

    def segments(self) -> list[tuple[int, int]]:
        """The log's segments: (first seq, generation), oldest first."""
        rows = self.conn.execute(
            "SELECT first_seq, generation FROM gateway_segments WHERE log_id = %s "
            "ORDER BY first_seq",
            (self.log_id,),
        ).fetchall()
        return [(int(first), int(generation)) for first, generation in rows]

    # -- copying a data folder's log in (gateway store migrate)

    def copy_in(self, header_chain: bytes, first_seq: int, generation: int) -> None:
        """Start a segment as a data folder has it (its header's chain value)."""
        self._start_segment(_Segment(first_seq, generation, header_chain, SEGMENT_HEADER_SIZE))

    def copy_records(
        self, records: Sequence[LogRecord], segment: int, end: tuple[int, bytes]
    ) -> None:
        """Add records as read from a data folder (chains checked by the reader), in one
        transaction with the log's new end, so a copy cut short resumes after it."""
        conn = self.conn
        with conn.transaction():
            with conn.cursor().copy(
                "COPY gateway_records (log_id, seq, kind, body, chain) FROM STDIN"
            ) as copy:
                for record in records:
                    copy.write_row(
                        (self.log_id, record.seq, record.kind, record.body, record.chain)
                    )
            size = sum(r.location.size for r in records)
            conn.execute(
                "UPDATE gateway_segments SET size = size + %s WHERE log_id = %s AND first_seq = %s",
                (size, self.log_id, segment),
            )
            conn.execute(
                "UPDATE gateway_logs SET next_seq = %s, chain = %s WHERE log_id = %s",
                (*end, self.log_id),
            )

    # -- inside

    @property
    def _binary(self) -> psycopg.Cursor[Any]:
        """A cursor whose results come in binary: bodies as they are stored, not as hex
        text the server encodes and the driver decodes (twice their size on the wire)."""
        return self.conn.cursor(binary=True)

    def _start_segment(self, segment: _Segment) -> None:
        self.conn.execute(
            "INSERT INTO gateway_segments (log_id, first_seq, generation, prev_chain, size) "
            "VALUES (%s, %s, %s, %s, %s)",
            (self.log_id, segment.first_seq, segment.generation, segment.prev_chain, segment.size),
        )


@dataclass(slots=True)
class _Segment:
    first_seq: int
    generation: int
    prev_chain: bytes
    size: int


def _record(seq: int, kind: int, body: bytes, chain: bytes, length: int) -> LogRecord:
    return LogRecord(seq, kind, body, chain, Location(0, seq, length + RECORD_OVERHEAD, seq))


def segment_files(log: RowLog) -> Iterator[tuple[str, bytes]]:
    """Each segment of a log as a data folder's file: its name and bytes."""
    segments = log.conn.execute(
        "SELECT first_seq, generation, prev_chain FROM gateway_segments "
        "WHERE log_id = %s ORDER BY first_seq",
        (log.log_id,),
    ).fetchall()
    ends = [int(s[0]) for s in segments[1:]] + [None]
    for (first, generation, prev_chain), end in zip(segments, ends, strict=True):
        chain = bytes(prev_chain)
        parts = [encode_segment_header(SegmentHeader(log.log_id, int(first), chain))]
        for record in log.records(int(first), end):
            if record.kind == RecordKind.GAP:
                framed, chain = encode_gap(decode_gap(record.body), record.chain)
            else:
                framed, chain = encode_record(
                    RecordKind(record.kind), record.seq, record.body, chain
                )
                if chain != record.chain:
                    raise LogCorrupt(
                        log.where, record.seq, f"record {record.seq}: chain value differs"
                    )
            parts.append(framed)
        yield segment_name(int(first), int(generation)), b"".join(parts)
