"""``gateway store migrate``: a data folder copied into the fleet store, and back (SPEC.md 17.4).

Theory of operation
-------------------
**In.** The folder is locked (no gateway may run on it) and verified whole first
(``gateway verify``): only a store that checks out is copied, and verify says which segment
generation of each log the control log confirms. Each log is then copied segment by
segment, its records read with their chains checked (``iter_log``) and written in
transactions of ``_BATCH`` records, each moving the log's end in the store with them: a copy
cut short resumes after the last record the store holds. Then each log's tree file, and the
files a copy carries (``DataDir.carried_files``), replaced whole.

**Out.** Into a new, empty folder: every log's rows written back as its segment files, byte
for byte (``segment_files``, which checks every chain value again), its tree file, the
carried files; then the new folder is verified whole.

Both are blocking and run in this process (a command, not the gateway).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from ..log import (
    CONTROL_LOG_ID,
    TREE_FILE,
    DataDir,
    LogRecord,
    choose_files,
    iter_log,
    read_segment_header,
    tree_hashes,
)
from ..merkle import HASH_SIZE, frontier_of, leaves_in, tree_nodes
from ..verify import Report, verify_data_dir
from ._rows import RowLog, segment_files
from ._schema import ensure_schema
from ._tree_rows import TreeRows

__all__ = [
    "CONTROL_LOG_ID",
    "MigrateError",
    "Migrated",
    "copy_log_out",
    "copy_out",
    "migrate_in",
    "migrate_out",
    "snapshot",
]

_BATCH = 1000  # records a transaction


class MigrateError(Exception):
    """The copy cannot go on; the message says why."""


@dataclass(slots=True)
class Migrated:
    logs: int = 0
    records: int = 0  # copied by this run (a resumed run counts what it added)
    files: int = 0
    report: Report | None = None  # verify's, of the folder read or written


Progress = Callable[[str, int], None]


def migrate_in(data: DataDir, conn: psycopg.Connection[Any], progress: Progress) -> Migrated:
    """Copy a data folder into the fleet store (resumable)."""
    data.lock()
    try:
        report = verify_data_dir(data.root)
        if not report.ok:
            raise MigrateError(
                f"the data folder does not verify ({len(report.problems)} problem(s); "
                f"first: {report.problems[0]}): run gateway verify, and copy a sound folder"
            )
        ensure_schema(conn)
        done = Migrated(report=report)
        for where, cuts in report.cuts.items():
            log_dir, log_id = _log_of(data, where)
            done.records += _copy_log(RowLog(conn, log_id), log_dir, cuts, where, progress)
            _copy_tree(conn, log_id, log_dir)
            done.logs += 1
        for name in data.carried_files():
            with conn.transaction():
                conn.execute(
                    "INSERT INTO gateway_files (name, data) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                    (name, data.read_carried(name)),
                )
            done.files += 1
        return done
    finally:
        data.unlock()


def migrate_out(conn: psycopg.Connection[Any], data: DataDir, progress: Progress) -> Migrated:
    """Copy the fleet store into a new data folder, then verify it."""
    done = copy_out(conn, data, progress)
    done.report = verify_data_dir(data.root)
    return done


@contextmanager
def snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Read the store as it was at one moment (a read-only REPEATABLE READ transaction on an
    autocommit connection): a copy taken while nodes run then holds no mailbox record its
    control log does not account for, and no cut the control log does not confirm yet."""
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with conn.transaction():
            yield
    finally:
        conn.isolation_level = conn.read_only = None


def copy_out(
    conn: psycopg.Connection[Any],
    data: DataDir,
    progress: Progress,
    *,
    mailbox_logs: bool = True,
) -> Migrated:
    """Copy the fleet store into a new data folder (every chain checked as it is framed);
    without ``mailbox_logs``, the control log and the carried files only (each mailbox log
    is then copied on its own, :func:`copy_log_out`)."""
    if data.root.exists() and any(data.root.iterdir()):
        raise MigrateError(f"{data.root} is not empty: the store is copied into a new folder")
    data.lock()
    try:
        done = Migrated()
        logs = conn.execute("SELECT log_id FROM gateway_logs ORDER BY log_id").fetchall()
        for (raw_id,) in logs:
            log_id = bytes(raw_id)
            if log_id != CONTROL_LOG_ID and not mailbox_logs:
                continue
            progress(_where(log_id), copy_log_out(conn, data, log_id))
            done.logs += 1
        for name, blob in conn.execute("SELECT name, data FROM gateway_files ORDER BY name"):
            if data.carries(name):  # not a node's recovery points: a folder makes its own
                data.write_carried(name, bytes(blob))
                done.files += 1
    finally:
        data.unlock()
    return done


def copy_log_out(conn: psycopg.Connection[Any], data: DataDir, log_id: bytes) -> int:
    """Write one log's rows into the folder as its segment files and tree file (a new log
    folder); how many segment files. A log the store does not hold gets no folder."""
    log_dir, _id = _log_of(data, _where(log_id))
    files = list(segment_files(RowLog(conn, log_id)))
    if (
        not files
        and conn.execute("SELECT 1 FROM gateway_logs WHERE log_id = %s", (log_id,)).fetchone()
        is None
    ):
        return 0
    tree = b"".join(
        bytes(h)
        for (h,) in conn.execute(
            "SELECT hashes FROM gateway_trees WHERE log_id = %s ORDER BY chunk", (log_id,)
        ).fetchall()
    )
    data.write_log_files(log_dir, [*files, (TREE_FILE, tree)])
    return len(files)


def _where(log_id: bytes) -> str:
    return "control" if log_id == CONTROL_LOG_ID else log_id.hex()


def _log_of(data: DataDir, where: str) -> tuple[Path, bytes]:
    if where == "control":
        return data.control_dir, CONTROL_LOG_ID
    return data.mailbox_log_dir(where), bytes.fromhex(where)


def _copy_log(
    log: RowLog, log_dir: Path, cuts: dict[int, int], where: str, progress: Progress
) -> int:
    """Copy the records the store does not hold yet; how many."""
    log.create()
    copied, (held, _chain) = 0, log.end()
    kept = log.conn.execute(
        "SELECT first_seq FROM gateway_segments WHERE log_id = %s", (log.log_id,)
    ).fetchall()
    started = {int(first) for (first,) in kept}
    files = list(choose_files(log_dir, cuts).chosen.items())
    ends = [first for first, _file in files[1:]] + [None]
    for (first, (generation, path)), end in zip(files, ends, strict=True):
        if end is not None and end <= held:
            continue  # copied whole before
        if first not in started:
            log.copy_in(read_segment_header(path).prev_chain, first, generation)
        batch: list[LogRecord] = []
        for record in iter_log(log_dir, log.log_id, cuts=cuts, from_seq=max(first, held)):
            if end is not None and record.seq >= end:
                break
            if record.location.segment != first:
                continue  # a removed segment's GAP stand-in: no record of its own
            batch.append(record)
            if len(batch) == _BATCH:
                copied += _flush(log, batch, first)
                progress(where, copied)
        copied += _flush(log, batch, first)
        progress(where, copied)
    return copied


def _flush(log: RowLog, batch: list[LogRecord], segment: int) -> int:
    if not batch:
        return 0
    last = batch[-1]
    log.copy_records(batch, segment, (last.seq + 1, last.chain))
    count = len(batch)
    batch.clear()
    return count


def _copy_tree(conn: psycopg.Connection[Any], log_id: bytes, directory: Path) -> None:
    """Replace the log's tree in the store with its tree file's hashes, its size and
    frontier with them (a file behind its log leaves the copy without a tree)."""
    hashes = bytes(tree_hashes(directory) or b"")
    size = leaves_in(len(hashes) // HASH_SIZE)
    hashes = hashes[: tree_nodes(size) * HASH_SIZE]
    with conn.transaction():
        conn.execute("DELETE FROM gateway_trees WHERE log_id = %s", (log_id,))
        TreeRows(conn, log_id).write(0, hashes)
        conn.execute(
            "UPDATE gateway_logs SET tree_size = %s, frontier = %s WHERE log_id = %s",
            (size, b"".join(frontier_of(hashes, size)), log_id),
        )
