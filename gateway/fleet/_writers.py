"""Writers: which node process wrote a chunk, and whether that process is gone (SPEC.md 17.5).

Theory of operation
-------------------
A message's chunks go into its mailbox log before its commit record names them. On a data
folder the one process knows which of its messages are in flight, and compaction drops the
chunks of the others (6.4). On a fleet store a node cannot tell another node's message in
flight from one a killed node left half written: both are chunks nothing names yet.

So each journal process that appends is a *writer*: a row of ``gateway_writers`` (its node's
name), registered when it locks its node folder (:func:`register_writer`). Its rows in
``gateway_records`` carry its number. For as long as it lives, the connection of its rounds
holds the writer's advisory lock (:func:`hold_writer`: taken again on every new connection,
and checked then that nobody ended the writer meanwhile).

A writer *ends* at a clean stop (:func:`end_writer`), or once its advisory lock is free (no
server process of it is left, so none of its transactions can still commit) and either a
later writer of the same node has started (the node's folder lock let that one start only
once this one was gone: :func:`ended_writers`) or an administrator retired the node
(:func:`retire_node`). Those two record it under the lock, so a writer reconnecting in
between waits and then finds itself ended, and refuses to append rather than commit a message
whose chunks may be gone (two live nodes under one name, a misconfiguration). The chunks
of an ended writer that no commit record names can never be named: compaction drops them
(:func:`chunks_by`).
"""

from __future__ import annotations

import datetime
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg

from ..log import RecordKind

__all__ = [
    "Writer",
    "WriterEnded",
    "chunks_by",
    "end_writer",
    "ended_writers",
    "hold_writer",
    "register_writer",
    "retire_node",
    "writers",
]

# The class of writers' advisory locks (pg_advisory_lock(class, writer): a key space of its
# own, apart from the maildrop locks' bigint keys): "gw" and 1.
WRITER_LOCKS = 0x67770001
_LOCK_TIMEOUT = "5s"  # a writer's lock waits this long for an ending under way


class WriterEnded(psycopg.OperationalError):
    """This process's writer was ended while its connection was lost: another node runs
    under its name. Nothing more is appended; the node must be restarted."""


def register_writer(conn: psycopg.Connection[Any], node: str) -> int:
    """A new writer of ``node`` (committed at once); the caller then holds it."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO gateway_writers (node) VALUES (%s) RETURNING writer", (node,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def hold_writer(conn: psycopg.Connection[Any], writer: int) -> None:
    """Take the writer's lock on a new connection of its rounds (waiting out an ending under
    way, at most a few seconds), then check it was not ended; raises WriterEnded."""
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (_LOCK_TIMEOUT,))
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (WRITER_LOCKS, writer))
        row = conn.execute(
            "SELECT node, ended_at FROM gateway_writers WHERE writer = %s", (writer,)
        ).fetchone()
    if row is None or row[1] is not None:
        node = "?" if row is None else row[0]
        raise WriterEnded(
            f"this node's writer {writer} was ended while its connection was lost: another "
            f"gateway runs under the node name {node!r}; restart this node"
        )


def end_writer(conn: psycopg.Connection[Any], writer: int) -> None:
    """End a writer that stops cleanly (nothing of it in flight), on a connection of its own."""
    with conn.transaction():
        conn.execute(
            "UPDATE gateway_writers SET ended_at = now() WHERE writer = %s AND ended_at IS NULL",
            (writer,),
        )


def ended_writers(conn: psycopg.Connection[Any]) -> frozenset[int]:
    """Every writer that has ended, after ending those that have now: a later writer of
    their node started and their lock is free. (On an autocommit connection.)"""
    superseded = conn.execute(
        "SELECT w.writer FROM gateway_writers w WHERE w.ended_at IS NULL AND EXISTS ("
        "  SELECT 1 FROM gateway_writers l WHERE l.node = w.node AND l.writer > w.writer)"
    ).fetchall()
    for (writer,) in superseded:
        _end_if_gone(conn, int(writer))
    rows = conn.execute("SELECT writer FROM gateway_writers WHERE ended_at IS NOT NULL")
    return frozenset(int(r[0]) for r in rows)


def retire_node(conn: psycopg.Connection[Any], node: str) -> list[int]:
    """End every writer of a node taken out of the fleet for good (``gateway store retire``):
    those whose lock is free. Returns the writers of the node still running (left as
    they are). (On an autocommit connection.)"""
    running = conn.execute(
        "SELECT writer FROM gateway_writers WHERE node = %s AND ended_at IS NULL ORDER BY writer",
        (node,),
    ).fetchall()
    return [int(w) for (w,) in running if not _end_if_gone(conn, int(w))]


def _end_if_gone(conn: psycopg.Connection[Any], writer: int) -> bool:
    """End a writer if its lock is free (none of its server processes is left), in the
    transaction that holds the lock meanwhile; whether it did."""
    with conn.transaction():
        free = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s, %s)", (WRITER_LOCKS, writer)
        ).fetchone()
        if free is None or not free[0]:
            return False
        conn.execute("UPDATE gateway_writers SET ended_at = now() WHERE writer = %s", (writer,))
    return True


@dataclass(frozen=True, slots=True)
class Writer:
    """A writer as ``gateway store writers`` lists it."""

    writer: int
    node: str
    started_at: datetime.datetime
    ended_at: datetime.datetime | None
    running: bool  # its lock is held: a process of it is connected


def writers(conn: psycopg.Connection[Any]) -> list[Writer]:
    """Every writer, oldest first."""
    rows = conn.execute(
        "SELECT w.writer, w.node, w.started_at, w.ended_at, EXISTS ("
        "  SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
        "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "  AND l.classid = %s::oid AND l.objid = w.writer::oid AND l.objsubid = 2)"
        " FROM gateway_writers w ORDER BY w.writer",
        (WRITER_LOCKS,),
    ).fetchall()
    return [Writer(int(r[0]), str(r[1]), r[2], r[3], bool(r[4])) for r in rows]


def chunks_by(
    conn: psycopg.Connection[Any], log_id: bytes, from_seq: int, writers: Collection[int]
) -> dict[int, bytes]:
    """The chunks of a log from ``from_seq`` on that these writers wrote, each with the
    message id its body names."""
    if not writers:
        return {}
    rows = conn.execute(
        "SELECT seq, substring(body FROM 1 FOR 16) FROM gateway_records "
        "WHERE log_id = %s AND seq >= %s AND kind = %s AND writer = ANY(%s)",
        (log_id, from_seq, int(RecordKind.CHUNK), sorted(writers)),
    )
    return {int(seq): bytes(mid) for seq, mid in rows}
