"""The transaction a node's logs append to in one group-commit round (SPEC.md 17.6, 17.7).

Theory of operation
-------------------
All the logs of a node share one :class:`Round`: a connection whose transaction every append
of a group-commit round goes into (an append that fails fails the round: its other records
are rolled back with it). Before its first append the round locks the rows of every log it
will append to, in log-id order (``reserve``), and reads their ends in the same statement,
so two nodes' rounds never wait for each other in a circle. :meth:`Round.commit` ends it
once for every log in it; each log hears whether its records committed
(``committed``/``rolled_back``). If the commit fails, every log goes back to where the
round found it, and the next round reconnects (never committing on a new connection what
the old one held).

A connection that dies *during* COMMIT leaves the outcome unknown: the server (or, after a
failover, the standby now primary) may have committed it. The round then learns which, from
the store itself, before it answers: it reconnects (libpq finds the primary), waits until its
old server process is gone (ending it if it lingers), and looks for the last record it
appended. Found, the round committed, and its appenders hear so; a message acknowledged then
is really there, and one refused is really not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from ..log import LogWriteError, StoreUnavailable
from ._rows import LogEnd, lock_ends
from ._session import gone
from ._writers import WriterEnded, end_writer, hold_writer, register_writer

__all__ = ["RESOLVE_SECONDS", "Round", "RoundMember"]

logger = logging.getLogger("gateway.fleet")

Connect = Callable[[], psycopg.Connection[Any]]
_OUTCOMES_KEPT = 64
# Seconds a round whose connection died during COMMIT keeps trying to learn whether it
# committed (a failover to a standby takes this long at most, SPEC.md 17.7).
RESOLVE_SECONDS = 30.0


class RoundMember(Protocol):
    """A log that appended in a round (``FleetLog``): told how the round ended."""

    # Its last record in the round not committed yet: (log id, seq, chain).
    last_appended: tuple[bytes, int, bytes] | None

    def committed(self) -> None: ...

    def rolled_back(self) -> None: ...


class Round:
    """The transaction every log of a node appends to in a group-commit round."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.number = 0  # the round appends go into now
        self._joined: list[RoundMember] = []
        self._outcomes: dict[int, LogWriteError | None] = {}
        self._reserved: set[bytes] = set()  # logs the round will append to
        self.ends: dict[bytes, LogEnd] = {}  # those whose rows its transaction holds
        self._backend: tuple[int, object] | None = None  # the connection's server process
        self._poisoned = ""  # why an append of the round failed, when others are in it
        self.writer: int | None = None  # this process as a writer (_writers), once it is one
        self._ended: WriterEnded | None = None

    def open_writer(self, node: str) -> None:
        """Make this process a writer of ``node`` (_writers): registered, and held by the
        connection of its rounds from now on."""
        with self._lock:
            self._drop()
            with self._connect() as conn:
                self.writer = register_writer(conn, node)
            self._reconnect()

    def reserve(self, log_id: bytes) -> None:
        """The round will append to this log: its row is locked with the others reserved,
        in log-id order, before the round's first append (so rounds never deadlock)."""
        self._reserved.add(log_id)

    def begin(self) -> psycopg.Connection[Any]:
        """The round's connection, its transaction open (each append goes into it, not
        into a transaction of its own) and holding the rows of every log reserved."""
        if self._poisoned:
            raise psycopg.OperationalError(f"an append of the round failed: {self._poisoned}")
        if self._ended is not None:
            raise self._ended
        if self._conn is not None and not self._joined and gone(self._conn):
            self._drop()  # ended by the server while idle (a failover, a restart)
        if self._conn is None or self._conn.closed:
            if self._joined:  # their records went with the old connection: this round fails
                raise psycopg.OperationalError("the connection of the round was lost")
            self._reconnect()
        assert self._conn is not None
        if self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self.ends.clear()
        if self._reserved - self.ends.keys():
            # A non-autocommit connection's first statement opens the transaction.
            self.ends.update(lock_ends(self._conn, sorted(self._reserved - self.ends.keys())))
        elif self._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("SELECT 1")
        return self._conn

    def _reconnect(self) -> None:
        """A new connection for the rounds, holding the writer's lock (the old connection's
        server process, should it linger, is ended first: it would hold the lock)."""
        conn = self._connect()
        try:
            if self.writer is not None:
                if self._backend is not None:
                    with conn.transaction():
                        conn.execute(
                            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                            "WHERE pid = %s AND backend_start = %s",
                            self._backend,
                        )
                try:
                    hold_writer(conn, self.writer)
                except WriterEnded as exc:
                    self._ended = exc
                    logger.error("event=fleet-writer-ended reason=%r", str(exc))
                    raise
            row = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            conn.commit()  # not idle in a transaction until the first round
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.ends.clear()
        self._backend = (int(row[0]), row[1]) if row is not None else None

    def join(self, log: RoundMember) -> int:
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

    def _failed(self, joined: list[RoundMember], why: str) -> StoreUnavailable:
        for log in joined:
            log.rolled_back()
        return StoreUnavailable(f"the fleet store did not commit: {why}")

    def _committed_after_all(self, joined: list[RoundMember]) -> bool | None:
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
        """Close the round's connection (anything not committed is rolled back). A writer
        ends here: nothing of it is in flight any more."""
        with self._lock:
            if self.writer is not None and self._ended is None:
                try:
                    self._drop()
                    with self._connect() as conn:
                        end_writer(conn, self.writer)
                except psycopg.Error as exc:  # ended when its node starts again
                    logger.warning("event=fleet-writer-end-failed reason=%r", str(exc))
                self.writer = None
            self._drop()

    def _drop(self) -> None:
        """Give up the connection (rolled back by closing): the next round makes another."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
