"""A connection to the fleet store that outlives a failover (SPEC.md 17.7).

Theory of operation
-------------------
A :class:`Session` is one connection shared by whoever uses it (one at a time, under a re-
entrant lock: a call's transaction must not take in another thread's statements). When the
connection breaks (the server gone, a failover, the network cut), the call that met it fails
with ``StoreUnavailable`` and the next use connects again; with a multi-host connection
string and ``target_session_attrs=read-write``, libpq finds whichever server is the primary
now. Every database error becomes ``StoreUnavailable`` at this boundary, so nothing above
the fleet store sees a driver's exception. ``on_connect`` restores a fresh connection's
session state (a ``LISTEN``, the maildrop locks a node held, when no other node took them
meanwhile). A connection the server ended while it was idle is noticed before it is used
(:func:`gone`), so a failover costs no call an error.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from ..log import StoreUnavailable

__all__ = ["Session", "gone"]

Connection = psycopg.Connection[Any]
T = TypeVar("T")


def gone(conn: Connection) -> bool:
    """Whether an idle connection (not listening) is closed, or was ended by its server: then
    its socket is readable (an error, or the end of the stream) while nothing was asked."""
    if conn.closed:
        return True
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return False  # in a transaction: its statements meet the error themselves
    readable, _w, _x = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


class Session:
    def __init__(
        self,
        connect: Callable[[], Connection],
        *,
        on_connect: Callable[[Connection], object] | None = None,
        listening: bool = False,
    ) -> None:
        """``on_connect``: run on each new connection, under the session's lock.
        ``listening``: the connection LISTENs (its socket is readable with notices, so
        :func:`gone` cannot tell whether it was ended)."""
        self._connect = connect
        self._on_connect = on_connect
        self._listening = listening
        self._conn: Connection | None = None
        self.lock = threading.RLock()

    @contextmanager
    def use(self) -> Iterator[Connection]:
        """The connection (made, or made again), for one call; raises StoreUnavailable for
        any database error in the block."""
        with self.lock:
            try:
                if self._conn is not None and not self._listening and gone(self._conn):
                    self._close()  # ended by the server while idle (a failover, a restart)
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                    if self._on_connect is not None:
                        self._on_connect(self._conn)
                yield self._conn
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.closed or self._conn.broken):
                    self._close()
                raise StoreUnavailable(f"the fleet store: {exc}") from exc

    def read(self, call: Callable[[Connection], T]) -> T:
        """A call that changes nothing, tried once more on a new connection when the one it
        met had broken (a failover, or a server restart, since the session was last used)."""
        try:
            with self.use() as conn:
                return call(conn)
        except StoreUnavailable:
            if self._conn is not None:
                raise  # the connection lives: the server refused; asking again is no use
        with self.use() as conn:
            return call(conn)

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
