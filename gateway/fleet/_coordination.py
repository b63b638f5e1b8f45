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

**Node locks.** The same connection (:class:`NodeLocks`) holds the *housekeeping* lock: the
node that has it runs the fleet's periodic passes (compaction, backlog alarms, signed
checkpoints), which every node would otherwise repeat over the same store. The first node to
ask takes it and keeps it while that connection lives; when its node is gone, the next node
to ask takes it. A node whose connection was lost takes its locks again on a new one; a lock
another node took meanwhile is lost.

**Wake-ups.** Every append notifies channel ``gateway_log`` with ``<log id hex> <next seq>``
inside its transaction, so PostgreSQL delivers it at commit and never for a batch rolled
back. A node :func:`listen`\ s on a connection of its own and learns which logs moved
(:func:`moved_logs`), so it folds other nodes' control records as they commit them (the audit
feed on every node) and catches up the mailboxes they wrote to.

Both are blocking (psycopg); callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from ..log import StoreUnavailable
from ._session import Session

__all__ = ["CHANNEL", "MaildropLocks", "NodeLocks", "listen", "moved_logs"]

logger = logging.getLogger("gateway.fleet")

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
        return _try_lock(self.conn, _lock_key(mailbox_id))

    def release(self, mailbox_id: str) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(mailbox_id),))


# The housekeeping lock's key: "gwhskeep" as a signed big-endian integer.
_HOUSEKEEPING = int.from_bytes(b"gwhskeep", "big") - (1 << 63)


class NodeLocks:
    """This node's session-level locks (maildrops it holds, the housekeeping), on one
    connection of their own: made again when it is lost, and the locks taken again."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self.session = Session(connect, on_connect=self._relock)
        self._held: set[str] = set()  # the maildrops this node holds (under the session's lock)
        self._housekeeper = False

    def lock_maildrop(self, mailbox_id: str) -> bool:
        with self.session.use() as conn:
            taken = MaildropLocks(conn).acquire(mailbox_id)
            if taken:
                self._held.add(mailbox_id)
            return taken

    def unlock_maildrop(self, mailbox_id: str) -> None:
        with self.session.use() as conn:
            self._held.discard(mailbox_id)
            MaildropLocks(conn).release(mailbox_id)

    def holds_maildrop(self, mailbox_id: str) -> bool:
        """Whether this node still holds a maildrop it locked: asked on the connection, so
        one lost since its last use is found (and, on a new one, the locks taken again)."""
        return self.session.read(lambda conn: _alive(conn) and mailbox_id in self._held)

    def housekeeping(self) -> bool:
        """Whether this node runs the fleet's periodic passes now: it holds the lock, or
        took it now that no other node does."""

        def ask(conn: psycopg.Connection[Any]) -> bool:
            if not self._housekeeper:
                self._housekeeper = _try_lock(conn, _HOUSEKEEPING)
            return _alive(conn) and self._housekeeper

        return self.session.read(ask)

    def keep(self) -> None:
        """See that the connection lives, if it holds anything (made again, and the locks
        taken again, if it was lost)."""
        if self._held or self._housekeeper:
            with contextlib.suppress(StoreUnavailable), self.session.use():
                pass

    def close(self) -> None:
        self.session.close()

    def _relock(self, conn: psycopg.Connection[Any]) -> None:
        """A new connection holds none of the node's locks: take them again. One another
        node took meanwhile is lost (a POP3 session holding it here deletes nothing)."""
        locks = MaildropLocks(conn)
        for mailbox_id in sorted(self._held):
            if not locks.acquire(mailbox_id):
                self._held.discard(mailbox_id)
                logger.warning("event=fleet-maildrop-lock-lost mailbox=%s", mailbox_id)
        if self._housekeeper and not _try_lock(conn, _HOUSEKEEPING):
            self._housekeeper = False
            logger.warning("event=fleet-housekeeping-moved: another node runs the periodic passes")


def _try_lock(conn: psycopg.Connection[Any], key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def _alive(conn: psycopg.Connection[Any]) -> bool:
    """True, once the server answered (a connection lost since its last use fails here)."""
    conn.execute("SELECT 1")
    return True


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
