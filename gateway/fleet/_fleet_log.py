"""A row log with a segment log's calls (SPEC.md 17.6), so the group commit (``LogWriter``)
drives either: one transaction per round, across every log in it.

Theory of operation
-------------------
A group-commit round writes every log's batch, then makes durable the ones that need it
(``gateway.log._writer``). Here all the logs of a node share one :class:`Round`: a
connection whose transaction the round's appends go into (an append that fails fails the
round: its other records are rolled back with it). The round first locks the rows of every
log it will append to, in log-id order (``reserve``), so two nodes' rounds never wait for
each other in a circle. The first ``sync`` commits, once for every log in it; a round with
dependent records (a message's witness) syncs only after appending them, so a commit record
is never visible to another node without its witness. Commit is durability (and, with a
synchronous standby, replication). If the commit fails (the database gone, read-only after a
failover, out of space), the round's records are rolled back together, every log in it goes
back to where the round found it, and each of their ``sync`` raises ``LogWriteError``: the
appenders see a temporary failure, never a record half there. The next round reconnects.
Appends always end in a commit, durable or not, so a round never leaves a log's row locked
(other nodes wait for that lock).

A connection that dies *during* COMMIT leaves the outcome unknown: the server (or, after a
failover, the standby now primary) may have committed it. The round then learns which, from
the store itself, before it answers: it reconnects (libpq finds the primary), waits until its
old server process is gone (ending it if it lingers), and looks for the last record it
appended. Found, the round committed, and its appenders hear so; a message acknowledged then
is really there, and one refused is really not.

Reads use a connection of their own, outside any round.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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
    StoreUnavailable,
    encode_recovery_point,
    segment_name,
)
from ._files import FleetFiles
from ._rows import LogEnd, RowLog, lock_ends, log_place
from ._session import Session, gone

__all__ = ["FleetLog", "Round", "recovery_name"]

logger = logging.getLogger("gateway.fleet")

Connect = Callable[[], psycopg.Connection[Any]]
_OUTCOMES_KEPT = 64
# Seconds a round whose connection died during COMMIT keeps trying to learn whether it
# committed (a failover to a standby takes this long at most, SPEC.md 17.7).
RESOLVE_SECONDS = 30.0


class Round:
    """The transaction every log of a node appends to in a group-commit round."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.number = 0  # the round appends go into now
        self._joined: list[FleetLog] = []
        self._outcomes: dict[int, LogWriteError | None] = {}
        self._reserved: set[bytes] = set()  # logs the round will append to
        self.ends: dict[bytes, LogEnd] = {}  # those whose rows its transaction holds
        self._backend: tuple[int, object] | None = None  # the connection's server process
        self._poisoned = ""  # why an append of the round failed, when others are in it

    def reserve(self, log_id: bytes) -> None:
        """The round will append to this log: its row is locked with the others reserved,
        in log-id order, before the round's first append (so rounds never deadlock)."""
        self._reserved.add(log_id)

    def begin(self) -> psycopg.Connection[Any]:
        """The round's connection, its transaction open (each append goes into it, not
        into a transaction of its own) and holding the rows of every log reserved."""
        if self._poisoned:
            raise psycopg.OperationalError(f"an append of the round failed: {self._poisoned}")
        if self._conn is not None and not self._joined and gone(self._conn):
            self._drop()  # ended by the server while idle (a failover, a restart)
        if self._conn is None or self._conn.closed:
            if self._joined:  # their records went with the old connection: this round fails
                raise psycopg.OperationalError("the connection of the round was lost")
            self._conn = self._connect()
            self.ends.clear()
            row = self._conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            self._backend = (int(row[0]), row[1]) if row is not None else None
        if self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self.ends.clear()
        if self._reserved - self.ends.keys():
            # A non-autocommit connection's first statement opens the transaction.
            self.ends.update(lock_ends(self._conn, sorted(self._reserved - self.ends.keys())))
        elif self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("SELECT 1")
        return self._conn

    def join(self, log: FleetLog) -> int:
        if log not in self._joined:
            self._joined.append(log)
        return self.number

    def append_failed(self, why: str) -> None:
        """An append failed (what it wrote is in the round's transaction). With nothing
        else in the round, roll that back at once; else the round fails whole (its
        other records, and any appended after, are rolled back at its commit): a message's
        commit records are never committed without their witness (SPEC.md 17.6)."""
        with self._lock:
            if self._joined:
                self._poisoned = self._poisoned or why
                return
            self._reserved.clear()
            if self._conn is not None and not self._conn.closed:
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
        self._reserved.clear()
        poisoned, self._poisoned = self._poisoned, ""
        conn = self._conn
        if conn is None or conn.closed:  # lost before COMMIT was sent: rolled back
            return self._failed(joined, "the connection of the round was lost")
        if poisoned:
            try:
                conn.rollback()
            except psycopg.Error:
                self._drop()
            return self._failed(joined, f"an append of the round failed: {poisoned}")
        try:
            conn.commit()  # never on a new connection: that would commit nothing
        except psycopg.Error as exc:
            lost = conn.closed or conn.broken
            self._drop()
            if not lost:  # the server answered: it rolled the transaction back
                return self._failed(joined, str(exc))
            # Lost during COMMIT: the transaction may have committed, on this server or
            # (a failover) on the standby now primary. Learn which before answering.
            outcome = self._committed_after_all(joined)
            logger.warning(
                "event=fleet-commit-in-doubt outcome=%s reason=%r",
                {True: "committed", False: "rolled-back", None: "unknown"}[outcome],
                str(exc),
            )
            if outcome is None:
                return self._failed(joined, f"{exc} (whether it committed is not known)")
            if not outcome:
                return self._failed(joined, str(exc))
        for log in joined:
            log.committed()
        return None

    def _failed(self, joined: list[FleetLog], why: str) -> StoreUnavailable:
        for log in joined:
            log.rolled_back()
        return StoreUnavailable(f"the fleet store did not commit: {why}")

    def _committed_after_all(self, joined: list[FleetLog]) -> bool | None:
        """Whether a round whose connection died during COMMIT committed: once its server
        process is gone (ended here if it lingers), the last record it appended to any log
        is there, or not. None when the store cannot be reached for :data:`RESOLVE_SECONDS`
        (the appenders then hear of a failure that may not be one: their records, if
        committed, come back to this node as another's)."""
        probe = next((log.last_appended for log in joined if log.last_appended), None)
        if probe is None:
            return True  # nothing of it to lose either way
        log_id, seq, chain = probe
        deadline = time.monotonic() + RESOLVE_SECONDS
        while time.monotonic() < deadline:
            try:
                with self._connect() as check:
                    check.autocommit = True
                    self._end_backend(check, deadline)
                    row = check.execute(
                        "SELECT chain FROM gateway_records WHERE log_id = %s AND seq = %s",
                        (log_id, seq),
                    ).fetchone()
                    return row is not None and bytes(row[0]) == chain
            except psycopg.Error:
                time.sleep(0.2)
        return None

    def _end_backend(self, check: psycopg.Connection[Any], deadline: float) -> None:
        """Wait for the round's old server process to end (terminating it after a second):
        until it has, its COMMIT may still be under way."""
        if self._backend is None:
            return
        pid, started = self._backend
        grace = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            alive = check.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND backend_start = %s",
                (pid, started),
            ).fetchone()
            if alive is None:
                return
            if time.monotonic() > grace:
                check.execute("SELECT pg_terminate_backend(%s)", (pid,))
            time.sleep(0.05)
        raise psycopg.OperationalError("the round's old server process does not end")

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
        session: Session,
        log_id: bytes,
        end: tuple[int, bytes],
        *,
        segment_bytes: int,
    ) -> None:
        """``session``: what reads and compaction use (outside any round)."""
        self.round = round_
        self.log_id = log_id
        self.segment_bytes = segment_bytes
        self.next_seq, self.chain = end
        self.synced_seq = self.next_seq
        self.written = 0
        self._session = session
        self.directory = log_place(log_id)  # where the log is, as errors name it
        self._before: tuple[int, bytes] | None = None  # the end when the round found it
        self._round = -1  # the round of its last append
        # Its segments' generations as last read (a cut, or another node's, forgets them).
        self._generations: dict[int, int] | None = None
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
            rows = RowLog(self.round.begin(), self.log_id, segment_bytes=self.segment_bytes)
            appended = rows.append(items, self.next_seq, self.round.ends.get(self.log_id))
        except Exception as exc:  # its statements are in the round's transaction: it fails
            self.round.append_failed(str(exc))
            if isinstance(exc, psycopg.Error):
                raise StoreUnavailable(f"the fleet store refused the batch: {exc}") from exc
            raise
        if self._before is None:
            self._before = (self.next_seq, self.chain)
        self._round = self.round.join(self)
        self.round.ends[self.log_id] = appended.end
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
            self.next_seq, self.chain = self._before
        self._before = self.last_appended = None

    def catch_up(self) -> list[LogRecord]:
        """The records other nodes committed since this node last looked; it follows them
        from here on. Never while this node's own are uncommitted. Raises StoreUnavailable
        when the store cannot be read."""
        assert self._before is None, "a round of this log is not committed"
        self._generations = None  # it is called when another node compacted it, too
        with self._rows() as rows:
            records = list(rows.records(self.next_seq, chunk_bodies=False))
        if records:
            self.next_seq, self.chain = records[-1].seq + 1, records[-1].chain
            self.synced_seq = self.next_seq
        return records

    @contextmanager
    def _rows(self) -> Iterator[RowLog]:
        """The log's rows through the session (its calls raise StoreUnavailable)."""
        with self._session.use() as conn:
            yield RowLog(conn, self.log_id)

    def read(self, location: Location) -> tuple[RecordHeader, bytes]:
        """A committed record, by its seq."""
        kind, body = self._session.read(lambda conn: RowLog(conn, self.log_id).read(location.seq))
        return RecordHeader(len(body), kind, location.seq), body

    def records(self, from_seq: int = 0) -> list[LogRecord]:
        with self._rows() as rows:
            return list(rows.records(from_seq))

    def tree_head(self) -> tuple[int, bytes] | None:
        with self._rows() as rows:
            return rows.tree_head()

    # -- the rest of what the services ask of a log (``gateway.log.StoreLog``)

    @property
    def tree_missing(self) -> str:
        if self.tree_head() is None:
            return "the log's tree in the fleet store does not reach its end"
        return ""

    @property
    def segments(self) -> list[int]:
        with self._rows() as rows:
            return [first for first, _generation in rows.segments()]

    def file_name(self, segment: int) -> str:
        """The segment file a record would be in, copied into a data folder (asked for
        every record a worker reads: the segments are read again only when one is new)."""
        generations = self._generations
        if generations is None or segment not in generations:
            with self._rows() as rows:
                generations = self._generations = dict(rows.segments())
        return segment_name(segment, generations.get(segment, 0))

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
        """What compacting a sealed segment would do (changing nothing); see RowLog."""
        with self._rows() as rows:
            planned = rows.plan_compaction(segment, keep)
            generation = dict(rows.segments()).get(segment, 0)
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
        self._generations = None
        with self._rows() as rows:
            rows.apply_cut(compaction.segment, compaction.generation, compaction.gaps)

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
