"""A node's data folder in fleet mode (SPEC.md 17.6): the same calls as ``DataDir``, answered
from the fleet store for everything the store keeps (logs, key files, the admin password's
verifier, the token and signing keys, checkpoints, recovery points), and from the node's own
folder for what is the node's (its lock, its TLS material, the ACME account).

Theory of operation
-------------------
:class:`FleetDataDir` holds two connections: the group commit's (its :class:`Round`) and one
for everything else, which every call here and every log's reads share under one lock (a
transaction of one call must not take in another thread's statements). Logs are
:class:`FleetLog` objects; opening one reads its rows after its recovery point (kept in
``gateway_files``), or all of them. A log whose rows end before a record the control log
says was acknowledged is ``LogCorrupt``: the database lost committed records (a failover to
a standby that was not synchronous), which the archive reports as damage.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..ids import parse_mailbox_id
from ..log import (
    CONTROL_LOG_ID,
    RECOVERY_FILE,
    DataDir,
    LogCorrupt,
    LogRecord,
    Opened,
    Place,
    RecordHeader,
    RecordSource,
    RecoveryPoint,
    StaleRecoveryPoint,
    StoreLog,
    StoreUnavailable,
    decode_recovery_point,
)
from ..merkle import MerkleTree
from ._coordination import NodeLocks, listen, moved_logs
from ._files import FleetFiles
from ._fleet_log import FleetLog, recovery_name
from ._round import Round
from ._rows import RowLog, log_place, read_record, session_rows
from ._schema import ensure_schema
from ._session import Session
from ._writers import chunks_by, ended_writers

__all__ = ["FleetDataDir"]

_PAGE = 2000  # records read under the connection's lock at a time


class FleetDataDir(DataDir):
    shared = True

    def __init__(
        self, root: Path, dsn: str, *, application_name: str = "gateway", node: str = ""
    ) -> None:
        """``node``: this node's name among the fleet's (default: the host name)."""
        super().__init__(root)
        self.dsn = with_defaults(dsn)
        self._name = application_name
        self.node = node or socket.gethostname()
        self.round = Round(self._connect)
        # Reads, files and compaction; the node's locks (maildrops, housekeeping: they live
        # as long as its connection); the wake-ups. Each made again after a failover.
        self.session = Session(lambda: self._connect(autocommit=True))
        self._locks = NodeLocks(lambda: self._connect(autocommit=True))
        self._follower = Session(
            lambda: self._connect(autocommit=True), on_connect=self._listen, listening=True
        )
        self._listening_anew = False  # the follower's connection is new: notices were missed
        try:
            with self.session.use() as conn:
                ensure_schema(conn)
        except BaseException:
            self.session.close()
            raise
        self.files = FleetFiles(self.session)

    def _connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=autocommit, application_name=self._name)

    def lock(self) -> None:
        """Lock the node's folder, and become its writer: the process whose appends go into
        the store (_writers; a later one ends this one's, once this one is gone)."""
        super().lock()
        try:
            self.round.open_writer(self.node)
        except psycopg.Error as exc:
            super().unlock()
            raise StoreUnavailable(f"the fleet store: {exc}") from exc
        except BaseException:
            super().unlock()
            raise

    def unlock(self) -> None:
        super().unlock()
        self.round.close()
        for session in (self.session, self._locks, self._follower):
            session.close()

    def size(self) -> int:
        """The bytes of the fleet store's database (PostgreSQL's own count)."""
        with self.session.use() as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row is not None else 0

    # -- between the nodes (SPEC.md 17.5)

    def lock_maildrop(self, mailbox_id: str) -> bool:
        return self._locks.lock_maildrop(parse_mailbox_id(mailbox_id))

    def unlock_maildrop(self, mailbox_id: str) -> None:
        self._locks.unlock_maildrop(parse_mailbox_id(mailbox_id))

    def holds_maildrop(self, mailbox_id: str) -> bool:
        return self._locks.holds_maildrop(parse_mailbox_id(mailbox_id))

    def housekeeping(self) -> bool:
        return self._locks.housekeeping()

    def ended_writers(self) -> frozenset[int]:
        with self.session.use() as conn:
            return ended_writers(conn)

    def chunks_written_by(
        self, mailbox_id: str, from_seq: int, writers: frozenset[int]
    ) -> dict[int, bytes]:
        with self._rows(mailbox_id) as rows:
            return chunks_by(rows.conn, rows.log_id, from_seq, writers)

    def wait_for_others(self, timeout: float) -> dict[bytes, int]:
        """The logs nodes committed to. When the follower's connection was lost, and once
        a new one listens (what was committed before its LISTEN sent it no notice), the
        control log is reported as moved. Each call also sees that the node's locks'
        connection lives (and, if it was lost, takes them again)."""
        self._locks.keep()
        try:
            with self._follower.use() as conn:
                if self._listening_anew:
                    self._listening_anew = False
                    return {CONTROL_LOG_ID: 1 << 62}
                return moved_logs(conn, timeout)
        except StoreUnavailable:
            time.sleep(min(timeout, 1.0))
            return {CONTROL_LOG_ID: 1 << 62}

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        listen(conn)
        self._listening_anew = True

    # -- the logs

    def _rows(self, mailbox_id: str | None) -> AbstractContextManager[RowLog]:
        """A log's rows through the session (its calls raise StoreUnavailable)."""
        return session_rows(self.session, _log_id(mailbox_id))

    def _fleet_log(self, rows: RowLog, segment_bytes: int) -> FleetLog:
        return FleetLog(
            self.round,
            self.session,
            rows.log_id,
            rows.end(),
            segment_bytes=segment_bytes,
            segments=rows.segments(),
            has_tree=rows.tree_head() is not None,
        )

    def _open(
        self,
        mailbox_id: str | None,
        segment_bytes: int,
        resume: RecoveryPoint | None,
        acknowledged: tuple[int, bytes] | None,
    ) -> Opened:
        with self._rows(mailbox_id) as rows:
            rows.create()
            next_seq, _chain = rows.end()
            start = 0
            if resume is not None:
                _check_resume(rows, resume, next_seq)
                start = resume.seq
            if acknowledged is not None and acknowledged[0] >= next_seq:
                raise LogCorrupt(
                    rows.where,
                    next_seq,
                    f"the fleet store's log ends at {next_seq}, before record "
                    f"{acknowledged[0]} the control log says was acknowledged",
                )
            records = list(rows.records(start, chunk_bodies=False))
            return self._fleet_log(rows, segment_bytes), records, None

    def open_control_log(self, *, segment_bytes: int, resume: RecoveryPoint | None) -> Opened:
        return self._open(None, segment_bytes, resume, None)

    def open_mailbox_log(
        self,
        mailbox_id: str,
        *,
        segment_bytes: int,
        cuts: Mapping[int, int],
        acknowledged: tuple[int, bytes] | None,
        resume: RecoveryPoint | None,
    ) -> Opened:
        return self._open(mailbox_id, segment_bytes, resume, acknowledged)

    def create_mailbox(
        self, mailbox_id: str, key_file: bytes, log_id: bytes, *, segment_bytes: int
    ) -> StoreLog:
        with self._rows(mailbox_id) as rows:
            self.files.write(f"mailboxes/{parse_mailbox_id(mailbox_id)}/key", key_file)
            rows.create()
            return self._fleet_log(rows, segment_bytes)

    def remove_mailbox(self, mailbox_id: str) -> None:
        """Delete a mailbox's rows and key file (after MailboxDeleted is durable)."""
        box = parse_mailbox_id(mailbox_id)
        with self.session.use() as conn, conn.transaction():
            conn.execute("DELETE FROM gateway_logs WHERE log_id = %s", (bytes.fromhex(box),))
            conn.execute(
                "DELETE FROM gateway_files WHERE name LIKE %s OR name = %s",
                (f"mailboxes/{box}/%", recovery_name(bytes.fromhex(box))),
            )

    def list_mailbox_ids(self) -> list[str]:
        with self.session.use() as conn:
            rows = conn.execute(
                "SELECT log_id FROM gateway_logs WHERE log_id <> %s ORDER BY log_id",
                (CONTROL_LOG_ID,),
            ).fetchall()
        return [bytes(log_id).hex() for (log_id,) in rows]

    def read_point(
        self, mailbox_id: str | None = None, name: str = RECOVERY_FILE
    ) -> RecoveryPoint | None:
        if name != RECOVERY_FILE:
            return None  # the fleet store keeps the whole control log: it has no base
        log_id = _log_id(mailbox_id)
        data = self.files.read(recovery_name(log_id))
        return None if data is None else decode_recovery_point(data, log_id)

    def records(
        self, mailbox_id: str | None = None, *, from_seq: int = 0, chunk_bodies: bool = True
    ) -> Iterator[LogRecord]:
        """A log's records, read a page at a time (the connection is not held between)."""
        while True:
            with self._rows(mailbox_id) as rows:
                page = list(
                    itertools.islice(rows.records(from_seq, chunk_bodies=chunk_bodies), _PAGE)
                )
            yield from page
            if len(page) < _PAGE:
                return
            from_seq = page[-1].seq + 1

    def log_tree(self, mailbox_id: str | None, size: int) -> MerkleTree:
        with self._rows(mailbox_id) as rows:
            tree = rows.tree(size)
            tree.root()  # read here, under the lock: the rows a proof needs come with it
        return tree

    def record_reader(self, mailbox_id: str) -> RecordSource:
        return _RowSource(self.session, _log_id(mailbox_id))

    # -- what a data folder keeps in files, kept in gateway_files

    def read_key_file(self, mailbox_id: str) -> bytes:
        return self.files.read_key_file(mailbox_id)

    def stage_key_file(self, mailbox_id: str, key_file: bytes) -> None:
        return self.files.stage_key_file(mailbox_id, key_file)

    def commit_key_file(self, mailbox_id: str) -> None:
        return self.files.commit_key_file(mailbox_id)

    def staged_key_file(self, mailbox_id: str) -> bytes | None:
        return self.files.staged_key_file(mailbox_id)

    def discard_staged_key_file(self, mailbox_id: str) -> None:
        return self.files.discard_staged_key_file(mailbox_id)

    def read_admin_password(self) -> bytes | None:
        return self.files.read_admin_password()

    def stage_admin_password(self, data: bytes) -> None:
        return self.files.stage_admin_password(data)

    def staged_admin_password(self) -> bytes | None:
        return self.files.staged_admin_password()

    def commit_admin_password(self) -> None:
        return self.files.commit_admin_password()

    def discard_staged_admin_password(self) -> None:
        return self.files.discard_staged_admin_password()

    def read_or_create_admin_token_key(self, make: Callable[[], bytes]) -> tuple[bytes, bool]:
        return self.files.read_or_create_admin_token_key(make)

    def read_admin_credentials(self) -> bytes | None:
        return None  # the file of versions before the fleet store: never in one

    def remove_admin_credentials(self) -> None:
        """Nothing to remove (see read_admin_credentials)."""

    def read_signing_key(self) -> bytes | None:
        return self.files.read_signing_key()

    def read_or_create_signing_key(self, make: Callable[[], bytes]) -> tuple[bytes, bool]:
        return self.files.read_or_create_signing_key(make)

    def save_checkpoint(self, size: int, note: bytes) -> None:
        return self.files.save_checkpoint(size, note)

    def read_checkpoint(self, size: int | None = None) -> bytes | None:
        return self.files.read_checkpoint(size)

    def checkpoint_sizes(self) -> list[int]:
        return self.files.checkpoint_sizes()

    def save_mailbox_checkpoint(self, mailbox_id: str, note: bytes) -> None:
        return self.files.save_mailbox_checkpoint(mailbox_id, note)

    def read_mailbox_checkpoint(self, mailbox_id: str) -> bytes | None:
        return self.files.read_mailbox_checkpoint(mailbox_id)


class _RowSource:
    """A mailbox log's records by seq (a worker's reader: the offset is the seq)."""

    def __init__(self, session: Session, log_id: bytes) -> None:
        self._session, self._log_id = session, log_id
        self.directory = log_place(log_id)

    def read(self, file: str, offset: int, size: int) -> tuple[RecordHeader, bytes]:
        return read_record(self._session, self._log_id, offset)

    def read_many(self, places: Sequence[Place]) -> list[tuple[RecordHeader, bytes]]:
        seqs = [offset for _file, offset, _size in places]
        found = self._session.read(lambda conn: RowLog(conn, self._log_id).read_many(seqs))
        return [
            (RecordHeader(len(body), kind, seq), body)
            for seq, (kind, body) in zip(seqs, found, strict=True)
        ]

    def close(self) -> None:
        """The session is the store's to close."""


# What a connection string does not say otherwise: a server that does not answer (a host gone,
# a network cut) costs a call seconds, not the minutes of TCP's own retries (SPEC.md 17.7).
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


def with_defaults(dsn: str) -> str:
    """``dsn`` with :data:`CONNECTION_DEFAULTS` for whatever it leaves out."""
    given = conninfo_to_dict(dsn)
    return make_conninfo(dsn, **{k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given})


def _log_id(mailbox_id: str | None) -> bytes:
    return CONTROL_LOG_ID if mailbox_id is None else bytes.fromhex(parse_mailbox_id(mailbox_id))


def _check_resume(rows: RowLog, point: RecoveryPoint, next_seq: int) -> None:
    """Is the log, as its rows are now, the one the recovery point was made from?"""
    if point.seq > next_seq:
        raise StaleRecoveryPoint(f"the log ends at {next_seq}, before the point", outgrown=True)
    now = dict(rows.segments())
    for first, generation in point.segments:
        if now.get(first, generation) != generation:
            raise StaleRecoveryPoint(f"segment {first} was compacted since", outgrown=True)
    if point.seq:
        last = next(iter(rows.records(point.seq - 1, point.seq)), None)
        if last is None or last.chain != point.chain:
            raise StaleRecoveryPoint("the record before the point is not the one it was made on")
