r"""What nodes of one fleet store tell each other through PostgreSQL (SPEC.md 17.5): maildrop
locks that die with the node holding them, and a wake-up when any node appends to a log.

Theory of operation
-------------------
**Maildrop locks.** A POP3 maildrop is locked on one node at a time (RFC 1939: a second login
gets ``[IN-USE]``). Each node holds its locks as session-level advisory locks on one
connection of its own (:class:`MaildropLocks`), keyed by a hash of the mailbox id. A lock
lives exactly as long as that connection: released by the node, or by PostgreSQL when the
node's session ends (a crash, a cut network: the server notices the dead connection by TCP
keepalive), never outliving a node that is gone. Advisory locks are re-entrant within one
session, so the node keeps its own per-mailbox lock in front of them.

**Wake-ups.** Every append notifies channel ``gateway_log`` with ``<log id hex> <next seq>``
inside its transaction, so PostgreSQL delivers it at commit and never for a batch rolled
back. A node :func:`listen`\ s on a connection of its own and learns which logs moved
(:func:`moved_logs`), so it folds other nodes' control records as they commit them (the audit
feed on every node) and catches up the mailboxes they wrote to.

Both are blocking (psycopg); callers run them in worker threads.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

__all__ = ["CHANNEL", "MaildropLocks", "listen", "moved_logs"]

CHANNEL = "gateway_log"


def _lock_key(mailbox_id: str) -> int:
    """A mailbox's advisory lock key: 64 bits of a hash, as PostgreSQL's signed bigint."""
    digest = hashlib.sha256(b"gateway maildrop\x00" + mailbox_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class MaildropLocks:
    """This node's maildrop locks, on one connection (not shared between threads)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def acquire(self, mailbox_id: str) -> bool:
        """Lock a maildrop for this node; False when another node holds it."""
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(%s)", (_lock_key(mailbox_id),)
        ).fetchone()
        return bool(row and row[0])

    def release(self, mailbox_id: str) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(mailbox_id),))


def listen(conn: psycopg.Connection[Any]) -> None:
    """Have PostgreSQL tell this (autocommit) connection of every log's commits."""
    conn.execute(f"LISTEN {CHANNEL}")


def moved_logs(conn: psycopg.Connection[Any], timeout: float) -> dict[bytes, int]:
    """The logs committed to (their new next seq), as a listening connection is told,
    waiting up to ``timeout`` seconds for the first; empty when none was."""
    moved: dict[bytes, int] = {}
    for wait in (timeout, 0.0):  # the first, then whatever came with it
        for notice in conn.notifies(timeout=wait, stop_after=None if wait == 0 else 1):
            log_hex, _, seq = notice.payload.partition(" ")
            try:
                log_id, end = bytes.fromhex(log_hex), int(seq)
            except ValueError:
                continue  # not ours
            moved[log_id] = max(end, moved.get(log_id, 0))
        if not moved:
            return moved
    return moved
