"""POP3 retrieval (SPEC.md 14): the job of a POP3 session logged in to a gateway mailbox, and
the session records every POP3 job ends with.

Theory of operation
-------------------
The maildrop is locked (one session per mailbox) and its message list fixed at login: the
mailbox as it was then, less messages sealed to a key a reset retired (they can never be
read). Sizes in STAT and LIST are the stored octet counts, which RETR sends exactly (before
dot-stuffing); UIDL is the message id. RETR and TOP decrypt piece by piece (at most 256 KiB)
and stream through the machine's dot-stuffer, so a session holds one piece at a time. DELE
only marks; QUIT appends ``MessagesExpunged`` and waits for it to be durable before +OK
(RFC 1939 §6); a session that ends any other way deletes nothing. The session ends with
``Pop3SessionEnded`` (what was retrieved and deleted, by id and size).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

import trio

from ..crypto import CryptoError, MailboxPrivateKey
from ..events import (
    MessageRef,
    Pop3Login,
    Pop3ProxySessionEnded,
    Pop3SessionEnded,
    Pop3SessionProgress,
    now,
)
from ..log import LogCorrupt, LogWriteError, StoreUnavailable
from ..protocols.pop3 import (
    ConnectionClosed,
    Dele,
    List,
    Noop,
    Quit,
    Reply,
    Retr,
    Rset,
    Stat,
    Top,
    TopCutter,
    Uidl,
)
from ..services.archive import ArchiveError
from ..store import Maildrop, StoreClient
from .session import Hook, Session

if TYPE_CHECKING:
    from .pop3 import POP3Server

__all__ = ["Retrieval", "closed", "record", "retrieval_ended", "session_ended"]

logger = logging.getLogger("gateway.pop3")

NO_SUCH_MESSAGE = Reply(False, "no such message")
DELETED = Reply(False, "message already deleted")
UNREADABLE = Reply(False, "message cannot be read; the gateway's log has the details", "SYS/PERM")
STORE_UNAVAILABLE = Reply(False, "the store cannot be reached, try again later", "SYS/TEMP")
NOT_COMMITTED = Reply(False, "deletions could not be made durable; nothing was deleted", "SYS/TEMP")
LISTING_BATCH = 4096  # lines of a LIST or UIDL answer sent at a time
# Message refs one session record holds (a record body is at most 1 MiB; a ref takes about
# 50 octets): more go ahead in Pop3SessionProgress records.
REFS_PER_RECORD = 10_000


class Retrieval:
    """The job of a POP3 session with the maildrop of ``mailbox_id`` locked (its messages are
    filled in once the lock is held)."""

    def __init__(
        self, server: POP3Server, session: Session, mailbox_id: str, key: MailboxPrivateKey
    ) -> None:
        self.store = server.store
        self.session = session
        self.hostname = server.config.hostname
        self.mailbox_id = mailbox_id
        self.key = key
        self.maildrop = Maildrop()
        self.deleted: set[int] = set()  # message numbers marked by DELE
        self.deleted_bytes = 0
        self.retrieved: list[MessageRef] = []
        self.expunged: list[MessageRef] = []
        self._unlocked = False
        self.hooks: dict[type, Hook] = {
            Stat: self._stat,
            List: self._list,
            Uidl: self._uidl,
            Retr: self._retr,
            Top: self._top,
            Dele: self._dele,
            Noop: self._noop,
            Rset: self._rset,
            Quit: self._quit,
            ConnectionClosed: self._closed,
        }

    async def _answer(self, reply: Reply) -> None:
        session = self.session
        await session.send(session.conn.send(reply))

    async def _stat(self, event: Stat) -> None:
        count, size = self._totals()
        await self._answer(Reply(True, f"{count} {size}"))

    async def _list(self, event: List) -> None:
        maildrop = self.maildrop
        if event.msg is None:
            count, size = self._totals()
            await self._listing(
                Reply(True, f"{count} messages ({size} octets)"),
                lambda n: f"{n} {maildrop.size(n)}",
            )
            return
        found = self._message(event.msg)
        await self._answer(found or Reply(True, f"{event.msg} {maildrop.size(event.msg)}"))

    async def _uidl(self, event: Uidl) -> None:
        maildrop = self.maildrop
        if event.msg is None:
            await self._listing(Reply(True), lambda n: f"{n} {maildrop.message_id(n)}")
            return
        found = self._message(event.msg)
        await self._answer(found or Reply(True, f"{event.msg} {maildrop.message_id(event.msg)}"))

    async def _listing(self, reply: Reply, line: Callable[[int], str]) -> None:
        """A multi-line answer, one line per message not deleted, sent LISTING_BATCH lines
        at a time: a million-message maildrop is never one string in memory."""
        conn, live = self.session.conn, self._live()
        out = conn.send_stream_start(reply)
        while batch := list(itertools.islice(live, LISTING_BATCH)):
            await self.session.send(out + conn.send_lines_more([line(n) for n in batch]))
            out = b""
        await self.session.send(out + conn.send_stream_end())

    async def _retr(self, event: Retr) -> None:
        await self._retrieve(event.msg, None)

    async def _top(self, event: Top) -> None:
        await self._retrieve(event.msg, event.lines)

    async def _dele(self, event: Dele) -> None:
        refused = self._message(event.msg)
        if refused is None:
            self.deleted.add(event.msg)
            self.deleted_bytes += self.maildrop.size(event.msg)
        await self._answer(refused or Reply(True, f"message {event.msg} deleted"))

    async def _noop(self, event: Noop) -> None:
        await self._answer(Reply(True))

    async def _rset(self, event: Rset) -> None:
        self.deleted.clear()
        self.deleted_bytes = 0
        count, size = self._totals()
        await self._answer(Reply(True, f"{count} messages ({size} octets)"))

    async def _quit(self, event: Quit) -> bool:
        self.session.outcome = "quit"
        reply = await self._update()
        # Released before the answer: a client that logs in again at once, on this node or
        # another, finds the maildrop free (RFC 1939 section 6 ends the lock with the session).
        await self.close()
        await self._answer(reply)
        return True

    async def _closed(self, event: ConnectionClosed) -> bool:
        return closed(self.session, event)

    def _live(self) -> Iterator[int]:
        """The numbers of the messages not marked deleted, in order."""
        return (n for n in range(1, len(self.maildrop) + 1) if n not in self.deleted)

    def _totals(self) -> tuple[int, int]:
        return (
            len(self.maildrop) - len(self.deleted),
            self.maildrop.total_bytes - self.deleted_bytes,
        )

    def _message(self, msg: int) -> Reply | None:
        """Why message ``msg`` cannot be had, or None when it can."""
        if not 1 <= msg <= len(self.maildrop):
            return NO_SUCH_MESSAGE
        if msg in self.deleted:
            return DELETED
        return None

    async def _retrieve(self, msg: int, top: int | None) -> None:
        refused = self._message(msg)
        if refused is not None:
            await self._answer(refused)
            return
        message_id, size = self.maildrop.message_id(msg), self.maildrop.size(msg)
        session, conn = self.session, self.session.conn
        cutter = TopCutter(top) if top is not None else None
        pieces = self.store.read_message(self.mailbox_id, message_id, self.key)
        async with aclosing(pieces):
            try:
                first = await anext(pieces, b"")
            except StoreUnavailable as exc:  # a fleet store between primaries (SPEC.md 17.7)
                logger.warning(
                    "event=pop3-store-unavailable session=%s reason=%r",
                    session.session_id,
                    str(exc),
                )
                await self._answer(STORE_UNAVAILABLE)
                return
            except (CryptoError, LogCorrupt, ArchiveError, OSError) as exc:
                logger.error(
                    "event=pop3-unreadable session=%s mailbox=%s message=%s reason=%r",
                    session.session_id,
                    self.mailbox_id,
                    message_id,
                    str(exc),
                )
                await self._answer(UNREADABLE)
                return
            # One write per piece: the status line goes with the first, the terminating
            # dot with the last (a message under 256 KiB is a single write).
            out = conn.send_stream_start(Reply(True, f"{size} octets"))
            piece: bytes | None = first
            sent = 0
            while piece is not None:
                if cutter is not None:
                    piece = cutter.feed(piece)
                sent += len(piece)
                out += conn.send_stream_data(piece)
                if cutter is not None and cutter.done:
                    break
                # A failure from here on cannot be an -ERR any more (the +OK is out): it
                # ends the session, without the terminating dot, so the client knows.
                piece = await anext(pieces, None)
                if piece is not None:
                    await session.send(out)
                    out = b""
            await session.send(out + conn.send_stream_end())
        # A TOP that sent all of it is a retrieval too: fetchmail downloads with TOP n 99999999.
        if top is None or sent == size:
            self.retrieved.append(MessageRef(message_id, size))
            if len(self.retrieved) >= REFS_PER_RECORD:
                await self._progress()

    async def _update(self) -> Reply:
        """QUIT in TRANSACTION: the marked messages go, durably, before +OK."""
        maildrop = self.maildrop
        marked = [
            MessageRef(maildrop.message_id(n), maildrop.size(n)) for n in sorted(self.deleted)
        ]
        if marked:
            try:
                await self.store.expunge(
                    self.mailbox_id, [m.message_id for m in marked], actor=self.session.actor
                )
            except (LogWriteError, ArchiveError, OSError) as exc:
                logger.error(
                    "event=pop3-expunge-failed session=%s mailbox=%s reason=%r",
                    self.session.session_id,
                    self.mailbox_id,
                    str(exc),
                )
                return NOT_COMMITTED
            self.expunged = marked
            while len(self.retrieved) + len(self.expunged) > REFS_PER_RECORD:
                await self._progress()
        count = len(maildrop) - len(marked)
        return Reply(True, f"{self.hostname} POP3 closing ({count} messages left)")

    async def _progress(self) -> None:
        """Write the session's record so far: one record holds REFS_PER_RECORD refs."""
        retrieved = self.retrieved[:REFS_PER_RECORD]
        deleted = self.expunged[: REFS_PER_RECORD - len(retrieved)]
        self.retrieved = self.retrieved[len(retrieved) :]
        self.expunged = self.expunged[len(deleted) :]
        session = self.session
        await record(
            self.store,
            Pop3SessionProgress(
                at=now(),
                actor=session.actor,
                session_id=session.session_id,
                mailbox_id=self.mailbox_id,
                retrieved=tuple(retrieved),
                deleted=tuple(deleted),
            ),
        )

    async def close(self) -> None:
        if self._unlocked:
            return
        self._unlocked = True
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.store.unlock_maildrop(self.mailbox_id)

    async def audit(self, seconds: float) -> None:
        await retrieval_ended(
            self.store, self.session, self.mailbox_id, self.retrieved, self.expunged, seconds
        )


def closed(session: Session, event: ConnectionClosed) -> bool:
    """The machine closed the session (EOF, QUIT in AUTHORIZATION, too many errors)."""
    if session.outcome == "closed":
        session.outcome = str(event.reason)
    return True


def session_ended(
    session: Session, mailbox_id: str, retrieved: int, deleted: int, seconds: float
) -> None:
    logger.info(
        "event=pop3-session-ended session=%s client=%s mailbox=%s retrieved=%d deleted=%d "
        "outcome=%s seconds=%.3f",
        session.session_id,
        session.peer,
        mailbox_id or "-",
        retrieved,
        deleted,
        session.outcome,
        seconds,
    )


async def retrieval_ended(
    store: StoreClient,
    session: Session,
    mailbox_id: str,
    retrieved: Sequence[MessageRef],
    deleted: Sequence[MessageRef],
    seconds: float,
) -> None:
    """The record of a POP3 session that was no proxy session."""
    seconds = round(seconds, 3)
    session_ended(session, mailbox_id, len(retrieved), len(deleted), seconds)
    await record(
        store,
        Pop3SessionEnded(
            at=now(),
            actor=session.actor,
            session_id=session.session_id,
            listener=session.listener.name,
            client_address=session.peer,
            tls=session.tls,
            mailbox_id=mailbox_id,
            retrieved=tuple(retrieved),
            deleted=tuple(deleted),
            outcome=session.outcome,
            seconds=seconds,
        ),
    )


async def record(
    store: StoreClient,
    event: Pop3Login | Pop3SessionEnded | Pop3SessionProgress | Pop3ProxySessionEnded,
) -> None:
    try:
        await store.append_control(event, durable=False)
    except LogWriteError as exc:
        logger.error("event=audit-write-failed reason=%r", str(exc))
