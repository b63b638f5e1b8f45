"""A row log with a segment log's calls (SPEC.md 17.6), so the group commit (``LogWriter``)
drives either: one transaction per round, across every log in it.

Theory of operation
-------------------
A group-commit round writes every log's batch, then makes durable the ones that need it
(``gateway.log._writer``). Here all the logs of a node share one :class:`Round` (``_round``):
an append goes into the round's transaction, reading the log's end as the round's locking
query found it, and records the end it leaves for the next append in the same round. The
first ``sync`` commits, once for every log in it; a round with dependent records (a message's
witness) syncs only after appending them, so a commit record is never visible to another
node without its witness. Commit is durability (and, with a synchronous standby,
replication). If the commit fails (the database gone, read-only after a failover, out of
space), every log in it goes back to where the round found it, and each of their ``sync``
raises ``LogWriteError``: the appenders see a temporary failure, never a record half there.
Appends always end in a commit, durable or not, so a round never leaves a log's row locked
(other nodes wait for that lock).

Reads use a connection of their own, outside any round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import psycopg

from ..log import (
    REMOVED,
    SEGMENT_HEADER_SIZE,
    AppendItem,
    Compaction,
    Location,
    LogRecord,
    RecordHeader,
    RecoveryPoint,
    StoreUnavailable,
    encode_recovery_point,
    segment_name,
)
from ._files import FleetFiles
from ._round import Round
from ._row_compaction import apply_cut, plan_compaction
from ._rows import RowLog, log_place, read_record, session_rows
from ._session import Session

__all__ = ["FleetLog", "recovery_name"]


class FleetLog:
    """One log of the fleet store, appended through a node's :class:`Round`."""

    def __init__(
        self,
        round_: Round,
        session: Session,
        log_id: bytes,
        end: tuple[int, bytes],
        *,
        segment_bytes: int,
        segments: Sequence[tuple[int, int]],
        has_tree: bool,
    ) -> None:
        """``session``: what reads and compaction use (outside any round). ``segments``
        (first seq, generation) and ``has_tree``: as the store held them when it was read
        (in a worker thread): what the services ask of the log from the event loop is
        answered from memory, never by a query there."""
        self.round = round_
        self.log_id = log_id
        self.segment_bytes = segment_bytes
        self.next_seq, self.chain = end
        self.synced_seq = self.next_seq
        self.written = 0
        self._session = session
        self.directory = log_place(log_id)  # where the log is, as errors name it
        # The end and segments when the round found them (to go back to if it rolls back).
        self._before: tuple[int, bytes, dict[int, int]] | None = None
        self._round = -1  # the round of its last append
        # Its segments' generations: read with the log, moved on by its appends, read again
        # by a catch-up and a cut (another node's cuts show at the next catch-up).
        self._generations = dict(segments)
        self._has_tree = has_tree
        # Its last record in the round not committed yet: (log id, seq, chain).
        self.last_appended: tuple[bytes, int, bytes] | None = None

    @property
    def uncommitted(self) -> bool:
        """Records appended in a round not committed yet (the writer must call sync)."""
        return self._before is not None

    def append(
        self,
        items: Sequence[AppendItem],
        *,
        sync: bool = True,
        chains: list[bytes] | None = None,
        foreign: list[LogRecord] | None = None,
    ) -> list[Location]:
        """Append a batch into the round's transaction (committed by :meth:`sync`, at
        once when ``sync``); the records other nodes appended since this node last looked
        go into ``foreign``. Raises StoreUnavailable, having added nothing."""
        try:
            rows = RowLog(
                self.round.begin(),
                self.log_id,
                segment_bytes=self.segment_bytes,
                writer=self.round.writer,
            )
            appended = rows.append(items, self.next_seq, self.round.ends.get(self.log_id))
        except Exception as exc:  # its statements are in the round's transaction: it fails
            self.round.append_failed(str(exc))
            if isinstance(exc, psycopg.Error):
                raise StoreUnavailable(f"the fleet store refused the batch: {exc}") from exc
            raise
        if self._before is None:
            self._before = (self.next_seq, self.chain, dict(self._generations))
        self._round = self.round.join(self)
        self.round.ends[self.log_id] = appended.end
        if appended.end.segment is not None:  # the last, maybe started by another node
            self._generations.setdefault(appended.end.segment.first_seq, 0)
        for first in appended.segments:
            self._generations.setdefault(first, 0)  # started by this append
        if appended.foreign:
            last = appended.foreign[-1]
            self.next_seq, self.chain = last.seq + 1, last.chain
            if foreign is not None:
                foreign.extend(appended.foreign)
        # A row's place is its seq (the offset carries it too); rows never move.
        locations = [
            Location(segment, seq, size, seq)
            for seq, size, segment in zip(
                range(appended.first_seq, appended.first_seq + len(appended.sizes)),
                appended.sizes,
                appended.segments,
                strict=True,
            )
        ]
        self.written += sum(appended.sizes)
        if chains is not None:
            chains.extend(appended.chains)
        self.next_seq = appended.first_seq + len(items)
        if appended.chains:
            self.chain = appended.chains[-1]
            self.last_appended = (self.log_id, self.next_seq - 1, self.chain)
        if sync:
            self.sync()
        return locations

    def reserve(self) -> None:
        self.round.reserve(self.log_id)

    def sync(self) -> None:
        """Commit the round of this log's last append (once for every log in it), if no
        other log's sync did; raises LogWriteError when that round was rolled back (as
        often as asked)."""
        if self._round >= 0:
            self.round.commit(self._round)

    def committed(self) -> None:
        self._before = self.last_appended = None
        self.synced_seq = self.next_seq

    def rolled_back(self) -> None:
        if self._before is not None:
            self.next_seq, self.chain, self._generations = self._before
        self._before = self.last_appended = None

    def catch_up(self) -> list[LogRecord]:
        """The records other nodes committed since this node last looked; it follows them
        from here on. Never while this node's own are uncommitted. Raises StoreUnavailable
        when the store cannot be read."""
        assert self._before is None, "a round of this log is not committed"
        with self._rows() as rows:
            records = list(rows.records(self.next_seq, chunk_bodies=False))
            self._generations = dict(rows.segments())  # another node's cuts included
        if records:
            self.next_seq, self.chain = records[-1].seq + 1, records[-1].chain
            self.synced_seq = self.next_seq
        return records

    def _rows(self) -> AbstractContextManager[RowLog]:
        return session_rows(self._session, self.log_id)

    def read(self, location: Location) -> tuple[RecordHeader, bytes]:
        """A committed record, by its seq."""
        return read_record(self._session, self.log_id, location.seq)

    def records(self, from_seq: int = 0) -> list[LogRecord]:
        with self._rows() as rows:
            return list(rows.records(from_seq))

    def tree_head(self) -> tuple[int, bytes] | None:
        with self._rows() as rows:
            return rows.tree_head()

    # -- the rest of what the services ask of a log (``gateway.log.StoreLog``)

    @property
    def tree_missing(self) -> str:
        # Appends keep a tree whole; only a log copied in without one lacks it.
        return "" if self._has_tree else "the log's tree in the fleet store does not reach its end"

    @property
    def segments(self) -> list[int]:
        return sorted(self._generations)

    def file_name(self, segment: int) -> str:
        """The segment file a record would be in, copied into a data folder (asked for
        every record a worker reads; on the fleet store a reader goes by seq alone)."""
        return segment_name(segment, self._generations.get(segment, 0))

    def recovery_point(self, state: bytes) -> RecoveryPoint:
        """A recovery point at the log's end (every record committed), carrying ``state``."""
        with self._rows() as rows:
            segments = tuple(rows.segments())
        last, generation = segments[-1] if segments else (0, 0)
        return RecoveryPoint(
            self.log_id,
            self.next_seq,
            last,
            generation,
            SEGMENT_HEADER_SIZE,  # positions are seqs here; the offset is not used
            self.chain,
            segments,
            state,
        )

    def save_recovery_point(self, point: RecoveryPoint) -> int:
        data = encode_recovery_point(point)
        FleetFiles(self._session).write(recovery_name(self.log_id), data)
        return len(data)

    def plan_compaction(self, segment: int, keep: Callable[[LogRecord], bool]) -> Compaction | None:
        """What compacting a sealed segment would do (changing nothing); see RowLog. None
        also when the segment is no longer a sealed one (another node's cut removed it
        since this node last read the segments)."""
        with self._rows() as rows:
            self._generations = dict(rows.segments())
            if segment not in self._generations or segment == max(self._generations):
                return None
            planned = plan_compaction(rows, segment, keep)
        generation = self._generations[segment]
        if planned is None:
            return None
        removed = planned.generation == REMOVED
        return Compaction(
            segment,
            planned.generation,
            planned.gaps,
            self.directory / segment_name(segment, generation),
            None if removed else self.directory / segment_name(segment, planned.generation),
            {},  # a row stays where it is: seqs do not move
            planned.bytes_before,
            planned.bytes_after,
            planned.dropped_bytes,
        )

    def apply_compaction(self, compaction: Compaction) -> None:
        """Make the cut ``LogCompacted`` confirmed (one transaction)."""
        with self._rows() as rows:
            apply_cut(rows, compaction.segment, compaction.generation, compaction.gaps)
            self._generations = dict(rows.segments())

    def discard_compaction(self, compaction: Compaction) -> None:
        """Nothing to undo: planning wrote nothing."""

    def remove_retired(self, cuts: Mapping[int, int], grace_seconds: float) -> list[Path]:
        """None to remove: a cut deletes its rows when it is made (no file outlives it)."""
        return []

    def archive_history(self, point: RecoveryPoint, keep_bytes: int) -> list[Path]:
        """The fleet store keeps the whole control log (``control_history_bytes`` is a data
        folder's setting, SPEC.md 6.8)."""
        return []

    def close(self) -> None:
        """The store's connections are the store's to close."""


def recovery_name(log_id: bytes) -> str:
    """Where a log's recovery point is kept in ``gateway_files``."""
    return f"recovery/{log_id.hex()}"
