"""A row log with a segment log's calls (SPEC.md 17.6), so the group commit (``LogWriter``)
drives either: one transaction per phase of a round, across every log in it.

Theory of operation
-------------------
A group-commit round writes every log's batch, then makes durable the ones that need it
(``gateway.log._writer``). Here all the logs of a node share one :class:`Round`: a
connection whose transaction the round's appends go into (each append a savepoint, so one
that fails leaves the others), and which the first ``sync`` of the round commits, once for
every log in it. Commit is durability (and, with a synchronous standby, replication), and
nothing of a round is visible to another node before it. If the commit fails (the database
gone, read-only after a failover, out of space), the round's records are rolled back
together, every log in it goes back to where the round found it, and each of their
``sync`` raises ``LogWriteError``: the appenders see a temporary failure, never a record
half there. The next round reconnects. Appends always end in a commit, durable or not, so a
round never leaves a log's row locked (other nodes wait for that lock).

Reads use a connection of their own, outside any round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg

from ..log import (
    REMOVED,
    SEGMENT_HEADER_SIZE,
    AppendItem,
    Compaction,
    Location,
    LogRecord,
    LogWriteError,
    RecordHeader,
    RecoveryPoint,
    encode_recovery_point,
    segment_name,
)
from ._files import FleetFiles
from ._rows import RowLog

__all__ = ["FleetLog", "Round", "recovery_name"]

Connect = Callable[[], psycopg.Connection[Any]]
_OUTCOMES_KEPT = 64


class Round:
    """The transaction every log of a node appends to in a group-commit round."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.number = 0  # the round appends go into now
        self._joined: list[FleetLog] = []
        self._outcomes: dict[int, LogWriteError | None] = {}

    def begin(self) -> psycopg.Connection[Any]:
        """The round's connection, its transaction open (so each append's own transaction
        block is a savepoint inside it, not a commit of its own)."""
        if self._conn is None or self._conn.closed:
            if self._joined:  # their records went with the old connection: this round fails
                raise psycopg.OperationalError("the connection of the round was lost")
            self._conn = self._connect()
        if self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("SELECT 1")  # a non-autocommit connection's first statement
        return self._conn

    def join(self, log: FleetLog) -> int:
        if log not in self._joined:
            self._joined.append(log)
        return self.number

    def abandon_if_empty(self) -> None:
        """An append failed (its savepoint is rolled back): with nothing else in the round,
        end its transaction rather than leave it idle."""
        with self._lock:
            if not self._joined and self._conn is not None and not self._conn.closed:
                try:
                    self._conn.rollback()
                except psycopg.Error:
                    self._drop()

    def commit(self, number: int) -> None:
        """Commit round ``number`` if it is still open; raise LogWriteError if it failed."""
        with self._lock:
            if number == self.number:
                self._outcomes[number] = self._finish()
                self._outcomes.pop(number - _OUTCOMES_KEPT, None)
                self.number += 1
            outcome = self._outcomes.get(number)
        if outcome is not None:
            raise outcome

    def _finish(self) -> LogWriteError | None:
        joined, self._joined = self._joined, []
        try:
            if self._conn is None or self._conn.closed:
                raise psycopg.OperationalError("the connection of the round was lost")
            self._conn.commit()  # never on a new connection: that would commit nothing
        except psycopg.Error as exc:
            self._drop()
            error = LogWriteError(f"the fleet store did not commit: {exc}")
            for log in joined:
                log.rolled_back(error)
            return error
        for log in joined:
            log.committed()
        return None

    def close(self) -> None:
        """Close the round's connection (anything not committed is rolled back)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        """Give up the connection (rolled back by closing): the next round makes another."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class FleetLog:
    """One log of the fleet store, appended through a node's :class:`Round`."""

    def __init__(
        self,
        round_: Round,
        reader: psycopg.Connection[Any],
        log_id: bytes,
        end: tuple[int, bytes],
        *,
        segment_bytes: int,
        on_foreign: Callable[[list[LogRecord]], None] | None = None,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        """``reader``: the connection reads and compaction use, under ``lock`` (shared with
        whoever else uses that connection)."""
        self.round = round_
        self.log_id = log_id
        self.segment_bytes = segment_bytes
        self.next_seq, self.chain = end
        self.synced_seq = self.next_seq
        self.on_foreign = on_foreign
        self.written = 0
        self._reader = RowLog(reader, log_id)
        self._reader_lock = lock if lock is not None else threading.RLock()
        self._before: tuple[int, bytes] | None = None  # the end when the round found it
        self._round = -1
        self._failed: LogWriteError | None = None  # its round rolled back, not told yet

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
    ) -> list[Location]:
        """Append a batch into the round's transaction (committed by :meth:`sync`, at
        once when ``sync``). Raises LogWriteError, having added nothing."""
        try:
            rows = RowLog(self.round.begin(), self.log_id, segment_bytes=self.segment_bytes)
            appended = rows.append(items, self.next_seq, self.on_foreign)
        except psycopg.Error as exc:
            self.round.abandon_if_empty()
            raise LogWriteError(f"the fleet store refused the batch: {exc}") from exc
        if self._before is None:
            self._before = (self.next_seq, self.chain)
        self._round = self.round.join(self)
        if appended.foreign:
            last = appended.foreign[-1]
            self.next_seq, self.chain = last.seq + 1, last.chain
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
        self.chain = appended.chains[-1] if appended.chains else self.chain
        if sync:
            self.sync()
        return locations

    def sync(self) -> None:
        """Commit the round this log's records are in (once for every log in it); raises
        LogWriteError when that round was rolled back."""
        if self._before is not None:
            try:
                self.round.commit(self._round)
            except LogWriteError:
                self._failed = None  # told now
                raise
        if self._failed is not None:  # rolled back in a commit another log's sync made
            failed, self._failed = self._failed, None
            raise failed

    def committed(self) -> None:
        self._before = None
        self.synced_seq = self.next_seq

    def rolled_back(self, error: LogWriteError) -> None:
        if self._before is not None:
            self.next_seq, self.chain = self._before
            self._before = None
            self._failed = error

    def read(self, location: Location) -> tuple[RecordHeader, bytes]:
        """A committed record, by its seq."""
        with self._reader_lock:
            kind, body = self._reader.read(location.seq)
        return RecordHeader(len(body), kind, location.seq), body

    def records(self, from_seq: int = 0) -> list[LogRecord]:
        with self._reader_lock:
            return list(self._reader.records(from_seq))

    def tree_head(self) -> tuple[int, bytes] | None:
        with self._reader_lock:
            return self._reader.tree_head()

    # -- the rest of what the services ask of a log (``gateway.log.StoreLog``)

    @property
    def directory(self) -> Path:
        return self._reader.where

    @property
    def tree_missing(self) -> str:
        if self.tree_head() is None:
            return "the log's tree in the fleet store does not reach its end"
        return ""

    @property
    def segments(self) -> list[int]:
        with self._reader_lock:
            return [first for first, _generation in self._reader.segments()]

    def file_name(self, segment: int) -> str:
        """The segment file a record would be in, copied into a data folder."""
        with self._reader_lock:
            generation = dict(self._reader.segments()).get(segment, 0)
        return segment_name(segment, generation)

    def recovery_point(self, state: bytes) -> RecoveryPoint:
        """A recovery point at the log's end (every record committed), carrying ``state``."""
        with self._reader_lock:
            segments = tuple(self._reader.segments())
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
        with self._reader_lock:
            FleetFiles(self._reader.conn).write(recovery_name(self.log_id), data)
        return len(data)

    def plan_compaction(self, segment: int, keep: Callable[[LogRecord], bool]) -> Compaction | None:
        """What compacting a sealed segment would do (changing nothing); see RowLog."""
        with self._reader_lock:
            planned = self._reader.plan_compaction(segment, keep)
            generation = dict(self._reader.segments()).get(segment, 0)
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
        with self._reader_lock:
            self._reader.apply_cut(compaction.segment, compaction.generation, compaction.gaps)

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
