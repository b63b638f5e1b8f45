"""The journal's Unix socket: the journal accepts its protocol workers there, a worker reaches
its journal there (SPEC.md 16.1). The socket is 0600 in a 0700 folder, and the journal
closes any connection whose peer is another user."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ..store import Journal

__all__ = ["JOURNAL_CONNECT_TIMEOUT", "JournalLost", "connect_journal", "serve_workers"]

logger = logging.getLogger("gateway")

# How long a starting worker keeps trying to reach its journal (started at the same time,
# it may be opening its data folder), and how often.
JOURNAL_CONNECT_TIMEOUT = 60.0
JOURNAL_CONNECT_POLL = 0.02


class JournalLost(Exception):
    """A worker's journal connection ended, or never began: it can acknowledge nothing."""


async def serve_workers(
    journal: Journal, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Accept protocol workers on a Unix socket only this user can reach (0600, and the
    peer's uid checked), each served by the journal until it hangs up."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket a killed journal left behind
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            await sock.bind(str(path))
        finally:
            os.umask(old)
        sock.listen(64)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await sock.accept()
                uid = _peer_uid(conn)
                if uid != os.getuid():
                    logger.error("event=journal-refused-peer uid=%s", uid)
                    conn.close()
                    continue
                nursery.start_soon(journal.serve, trio.SocketStream(conn))
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


async def connect_journal(path: Path) -> trio.SocketStream:
    """Reach the journal, waiting for it to listen (it starts first, but may be restarting)."""
    deadline = trio.current_time() + JOURNAL_CONNECT_TIMEOUT
    while True:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(str(path))
        except OSError as exc:
            sock.close()
            if trio.current_time() > deadline:
                raise JournalLost(f"cannot reach the journal at {path}: {exc.strerror}") from None
            await trio.sleep(JOURNAL_CONNECT_POLL)
            continue
        return trio.SocketStream(sock)


def _peer_uid(conn: trio.socket.SocketType) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], "little")
