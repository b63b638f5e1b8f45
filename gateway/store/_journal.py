"""The journal's side of the seam: it serves protocol workers' connections against the
archive (SPEC.md 16).

Theory of operation
-------------------
One :class:`Journal` per archive. Each worker connection gets a task that reads frames and
a task per request (a worker's sessions ask concurrently), and one writer task that sends
replies and pushed mailbox changes in order. A frame that does not decode, or exceeds the
frame limit, ends the connection: it can never write a record. What a worker may ask is
narrow: append sealed chunks to a message it began, commit it, expunge, take a maildrop
lock, append an *audit* event. Everything it leaves behind when its connection ends (a
message half written, a maildrop lock) is released at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgspec
import trio

from ..crypto import CryptoError
from ..events import (
    Actor,
    ConnectionsSummarized,
    DeliveryRefused,
    MessageAccepted,
    Pop3Login,
    Pop3ProxySessionEnded,
    Pop3SessionEnded,
    Pop3SessionProgress,
    SmtpLogin,
    SmtpProxySessionEnded,
    SmtpSessionEnded,
    decode_control_event,
)
from ..ids import InvalidId
from ..log import Location, LogCorrupt, LogWriteError
from ..services.archive import (
    Archive,
    ArchiveError,
    InsufficientStorage,
    MailboxUnavailable,
    MessageTooLarge,
    NoSuchMailbox,
)
from ..services.intake import PendingMessage
from ..services.message_index import StoredMessage
from ._wire import (
    PROTOCOL_VERSION,
    Abort,
    Append,
    Audit,
    CertificateChanged,
    Commit,
    Done,
    Expunge,
    Failed,
    FrameError,
    GetKeyFile,
    GetMessage,
    HasSource,
    Hello,
    JournalFrames,
    KeyFileBytes,
    ListMaildrop,
    Lock,
    MailboxChanged,
    MailboxGone,
    MailboxView,
    MaildropPage,
    MessageEntry,
    MessageList,
    RecordAt,
    ToJournal,
    ToWorker,
    Unlock,
    Welcome,
    encode_frame,
)

__all__ = ["AUDIT_EVENTS", "Journal"]

logger = logging.getLogger("gateway.journal")

# The only control events a worker may append: audit records that acknowledge nothing.
AUDIT_EVENTS = (
    SmtpSessionEnded,
    MessageAccepted,
    DeliveryRefused,
    Pop3Login,
    Pop3SessionEnded,
    Pop3SessionProgress,
    Pop3ProxySessionEnded,
    SmtpLogin,
    SmtpProxySessionEnded,
    ConnectionsSummarized,
)
# Replies and pushes waiting for a slow worker; one that falls this far behind is cut off.
OUTBOX = 10_000
# A maildrop listing's page holds about this many octets (a frame: at most MAX_FRAME):
# 16 for an id, up to 9 for a size.
LIST_PAGE_BYTES = 1 << 20
_BRIEF_BYTES = 25
MAX_LISTINGS = 64  # listings a connection may leave unfinished
RELEASE_WAIT = 5.0  # seconds a maildrop lock of a worker gone may take to release
WELCOME_PAGE = 500  # mailbox views per welcome frame (each about 1.4 KiB)
_actor_decoder = msgspec.msgpack.Decoder(Actor)


@dataclass(eq=False)
class _Connection:
    name: str
    outbox: trio.MemorySendChannel[ToWorker]
    pending: dict[int, PendingMessage] = field(default_factory=dict)
    locks: set[str] = field(default_factory=set)
    # Listings sent in pages: (mailbox, the seq of the last commit sent, the newest commit
    # when the listing began).
    listings: dict[int, tuple[str, int, int]] = field(default_factory=dict)

    def send(self, frame: ToWorker) -> None:
        try:
            self.outbox.send_nowait(frame)
        except trio.WouldBlock:
            logger.error("event=journal-worker-behind worker=%s", self.name)
            self.outbox.close()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


class Journal:
    """Serves worker connections against one archive."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._connections: set[_Connection] = set()
        self._locks: dict[str, _Connection] = {}
        self._changed = trio.Event()  # set (and renewed) whenever a worker leaves
        self.connected_total = 0  # worker connections since start (a restarted one again)
        archive.mailbox_listeners.append(self._mailbox_changed)

    @property
    def workers(self) -> int:
        """Worker connections now."""
        return len(self._connections)

    @property
    def open_listings(self) -> int:
        """Listings sent in pages whose last page was not asked for yet."""
        return sum(len(connection.listings) for connection in self._connections)

    async def wait_for_workers_gone(self) -> None:
        while self._connections:
            await self._changed.wait()

    @property
    def locked_maildrops(self) -> frozenset[str]:
        """Mailboxes a POP3 session holds now, on any worker."""
        return frozenset(self._locks)

    def view(self, mailbox_id: str) -> MailboxView:
        archive = self.archive
        info = archive.mailbox(mailbox_id)
        public_key = archive.public_key(mailbox_id)
        return MailboxView(
            mailbox_id=info.mailbox_id,
            name=info.name,
            status=str(info.status),
            key_id=info.key_id,
            wrap_id=info.wrap_id,
            created_at=info.created_at,
            updated_at=info.updated_at,
            public_key=public_key.public_bytes if public_key is not None else b"",
            damaged=archive.damaged(mailbox_id),
        )

    def _mailbox_changed(self, mailbox_id: str) -> None:
        try:
            frame: ToWorker = MailboxChanged(mailbox=self.view(mailbox_id))
        except NoSuchMailbox:
            frame = MailboxGone(mailbox_id=mailbox_id)
        for connection in self._connections:
            connection.send(frame)

    def certificate_changed(self) -> None:
        """Tell every worker to load the certificate again (a new one from the ACME CA)."""
        for connection in self._connections:
            connection.send(CertificateChanged())

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one worker until it hangs up (or breaks the protocol)."""
        try:
            await self._serve(stream)
        except Exception:
            # One worker's connection never takes the journal down.
            logger.exception("event=journal-connection-failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.Stream) -> None:
        decoder = JournalFrames()
        first = await _first_frames(stream, decoder)
        if first is None:
            return
        hello, *pipelined = first
        send, receive = trio.open_memory_channel[ToWorker](OUTBOX)
        connection = _Connection(hello.worker, send)
        views = [self.view(m.mailbox_id) for m in self.archive.mailboxes()]
        for start in range(0, max(len(views), 1), WELCOME_PAGE):  # a frame holds ~2,800
            connection.send(
                Welcome(
                    id=hello.id,
                    version=PROTOCOL_VERSION,
                    mailboxes=views[start : start + WELCOME_PAGE],
                    max_message_bytes=self.archive.config.max_message_bytes,
                    more=start + WELCOME_PAGE < len(views),
                )
            )
        self._connections.add(connection)
        self.connected_total += 1
        logger.info("event=journal-worker-connected worker=%s", connection.name)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write_frames, stream, receive, nursery.cancel_scope)
                for frame in pipelined:
                    nursery.start_soon(self._answer, connection, frame)
                while True:
                    data = await stream.receive_some(1 << 20)
                    if not data:
                        break
                    for frame in decoder.feed(data):
                        nursery.start_soon(self._answer, connection, frame)
                nursery.cancel_scope.cancel()
        except FrameError as exc:
            logger.error("event=journal-bad-frame worker=%s reason=%r", connection.name, str(exc))
        except trio.BrokenResourceError:
            pass
        finally:
            self._connections.discard(connection)
            with trio.CancelScope(shield=True):
                await self._release(connection)
            self._changed.set()
            self._changed = trio.Event()
            logger.info("event=journal-worker-gone worker=%s", connection.name)

    async def _release(self, connection: _Connection) -> None:
        pending, connection.pending = list(connection.pending.values()), {}
        for message in pending:
            with trio.move_on_after(RELEASE_WAIT):
                await message.abort()
        for mailbox_id in list(connection.locks):
            self._drop_lock(connection, mailbox_id)
            with trio.move_on_after(RELEASE_WAIT):
                try:
                    await self.archive.unlock_maildrop(mailbox_id)
                except LogWriteError as exc:  # gone with the store's session anyway
                    logger.warning("event=maildrop-unlock-failed reason=%r", str(exc))

    def _drop_lock(self, connection: _Connection, mailbox_id: str) -> None:
        connection.locks.discard(mailbox_id)
        if self._locks.get(mailbox_id) is connection:
            del self._locks[mailbox_id]

    async def _answer(self, connection: _Connection, frame: ToJournal) -> None:
        try:
            reply = await self._handle(connection, frame)
        except (
            MailboxUnavailable,
            MessageTooLarge,
            NoSuchMailbox,
            InsufficientStorage,
            LogWriteError,
        ) as exc:
            reply = Failed(id=frame.id, code=type(exc).__name__, message=str(exc))
        except (ArchiveError, LogCorrupt, CryptoError, InvalidId, ValueError) as exc:
            reply = Failed(id=frame.id, code="ArchiveError", message=str(exc))
        except Exception:
            # One bad request never takes the journal or the worker's connection down.
            logger.exception("event=journal-request-failed worker=%s", connection.name)
            reply = Failed(id=frame.id, code="ArchiveError", message="internal error")
        if frame.id == 0:  # sent without waiting for an answer (audit events)
            if isinstance(reply, Failed):
                logger.error(
                    "event=journal-refused worker=%s op=%s reason=%r",
                    connection.name,
                    type(frame).__name__.lower(),
                    reply.message,
                )
            return
        connection.send(reply)

    async def _handle(self, connection: _Connection, frame: ToJournal) -> ToWorker:
        archive = self.archive
        match frame:
            case Append():
                pending = await self._pending(connection, frame)
                await pending.append_chunks(frame.mailbox_id, frame.chunks)
                return Done(id=frame.id)
            case Commit():
                pending = await self._pending(connection, frame)
                connection.pending.pop(frame.token, None)
                await pending.commit(frame.copies, _accepted(frame))
                return Done(id=frame.id)
            case Abort():
                dropped = connection.pending.pop(frame.token, None)
                if dropped is not None:
                    await dropped.abort()
                return Done(id=frame.id)
            case ListMaildrop():
                await archive.opened(frame.mailbox_id)
                return self._maildrop_page(connection, frame)
            case GetMessage():
                await archive.opened(frame.mailbox_id)
                mailbox_id = archive.mailbox(frame.mailbox_id).mailbox_id
                return MessageList(
                    id=frame.id,
                    messages=[
                        self._entry(mailbox_id, archive.message(mailbox_id, frame.message_id))
                    ],
                )
            case HasSource():
                await archive.opened(frame.mailbox_id)
                found = any(archive.has_source(frame.mailbox_id, k) for k in frame.source_keys)
                return Done(id=frame.id, value=int(found))
            case GetKeyFile():
                return KeyFileBytes(id=frame.id, data=await archive.key_file(frame.mailbox_id))
            case Expunge():
                # A worker's expunge is a POP3 session's UPDATE: only under its maildrop lock.
                mailbox_id = archive.mailbox(frame.mailbox_id).mailbox_id
                if mailbox_id not in connection.locks or not await archive.holds_maildrop(
                    mailbox_id
                ):
                    raise LogWriteError(
                        f"mailbox {mailbox_id}: this session no longer holds its maildrop lock"
                    )
                actor = _actor_decoder.decode(frame.actor)
                count = await archive.expunge(mailbox_id, frame.message_ids, actor=actor)
                return Done(id=frame.id, value=count)
            case Lock():
                mailbox_id = archive.mailbox(frame.mailbox_id).mailbox_id
                holder = self._locks.setdefault(mailbox_id, connection)
                if holder is not connection or mailbox_id in connection.locks:
                    return Done(id=frame.id, value=0)
                connection.locks.add(mailbox_id)
                locked = False
                try:  # and against other nodes (a fleet store)
                    locked = await archive.lock_maildrop(mailbox_id)
                finally:
                    if not locked:
                        self._drop_lock(connection, mailbox_id)
                return Done(id=frame.id, value=int(locked))
            case Unlock():
                mailbox_id = archive.mailbox(frame.mailbox_id).mailbox_id
                if mailbox_id in connection.locks:
                    self._drop_lock(connection, mailbox_id)
                    await archive.unlock_maildrop(mailbox_id)
                return Done(id=frame.id)
            case Audit():
                event = decode_control_event(frame.event)
                if not isinstance(event, AUDIT_EVENTS):
                    raise ArchiveError("a worker appends audit events only")
                await archive.append_control(event, durable=False)
                return Done(id=frame.id)
            case Hello():
                raise ArchiveError("hello twice")

    async def _pending(self, connection: _Connection, frame: Append | Commit) -> PendingMessage:
        """The message a frame goes on with, begun by its first frame once its mailboxes are
        open (nothing awaits between looking it up and keeping it)."""
        if frame.token not in connection.pending:
            for mailbox_id in frame.mailbox_ids:
                await self.archive.opened(mailbox_id)
        pending = connection.pending.get(frame.token)
        if pending is None:
            pending = self.archive.begin_pending(
                frame.mailbox_ids, frame.message_ids, frame.source_key
            )
            connection.pending[frame.token] = pending
        return pending

    def _maildrop_page(self, connection: _Connection, frame: ListMaildrop) -> MaildropPage:
        """A maildrop brief (id and size), those sealed to the key named only, in pages of
        about LIST_PAGE_BYTES (a million messages are about 24 frames), as of the first page:
        the journal keeps where the listing stands, no copy of the mailbox."""
        archive = self.archive
        mailbox_id = archive.mailbox(frame.mailbox_id).mailbox_id
        if frame.listing == 0:
            listing, after, upto = frame.id, -1, archive.newest_commit(mailbox_id)
        else:
            listing = frame.listing
            taken = connection.listings.pop(listing, None)
            if taken is None or taken[0] != mailbox_id:
                raise ArchiveError(f"no listing {listing} of mailbox {frame.mailbox_id} goes on")
            _mailbox_id, after, upto = taken
        ids, sizes, more = archive.maildrop_page(
            mailbox_id, after, upto, frame.key_id, LIST_PAGE_BYTES // _BRIEF_BYTES
        )
        if more is None:
            return MaildropPage(id=frame.id, ids=ids, sizes=sizes)
        if len(connection.listings) >= MAX_LISTINGS:  # abandoned ones: the oldest goes
            connection.listings.pop(next(iter(connection.listings)))
        connection.listings[listing] = (mailbox_id, more, upto)
        return MaildropPage(id=frame.id, ids=ids, sizes=sizes, listing=listing)

    def _entry(self, mailbox_id: str, m: StoredMessage) -> MessageEntry:
        def at(location: Location) -> RecordAt:
            file = self.archive.record_file(mailbox_id, location)
            return RecordAt(file, location.offset, location.size, location.seq)

        return MessageEntry(
            m.message_id, m.seq, m.size, m.key_id, at(m.commit), [at(c) for c in m.chunks]
        )


async def _first_frames(
    stream: trio.abc.Stream, decoder: JournalFrames
) -> tuple[Hello, *tuple[ToJournal, ...]] | None:
    """The worker's hello (and whatever it sent after it at once), or None: nothing, or not
    a hello of this version within 30 s."""
    with trio.move_on_after(30):
        while True:
            data = await stream.receive_some(1 << 16)
            if not data:
                return None
            try:
                frames = decoder.feed(data)
            except FrameError as exc:
                logger.error("event=journal-bad-frame worker=? reason=%r", str(exc))
                return None
            if frames:
                hello, *rest = frames
                if not isinstance(hello, Hello) or hello.version != PROTOCOL_VERSION:
                    logger.error("event=journal-bad-hello frame=%r", type(hello).__name__)
                    await stream.send_all(
                        encode_frame(
                            Failed(
                                id=hello.id,
                                code="ArchiveError",
                                message=f"journal protocol version {PROTOCOL_VERSION} expected",
                            )
                        )
                    )
                    return None
                return (hello, *rest)
    return None


def _accepted(frame: Commit) -> MessageAccepted | None:
    """The acceptance record a commit carries: a MessageAccepted of exactly this message."""
    if not frame.accepted:
        return None
    event = decode_control_event(frame.accepted)
    if not isinstance(event, MessageAccepted) or (event.mailbox_ids, event.message_ids) != (
        tuple(frame.mailbox_ids),
        tuple(frame.message_ids),
    ):
        raise ArchiveError("a commit carries the acceptance of its own message only")
    return event


def _encode_reply(frame: ToWorker) -> bytes:
    """A reply too large for a frame is refused, not sent (which would end the connection)."""
    try:
        return encode_frame(frame)
    except FrameError as exc:
        logger.error(
            "event=journal-reply-too-large op=%s reason=%r", type(frame).__name__.lower(), str(exc)
        )
        return encode_frame(Failed(id=frame.id, code="ArchiveError", message=str(exc)))


async def _write_frames(
    stream: trio.abc.Stream,
    frames: trio.MemoryReceiveChannel[ToWorker],
    scope: trio.CancelScope,
) -> None:
    try:
        async with frames:
            async for frame in frames:
                out = [_encode_reply(frame)]
                while True:  # whatever else is ready goes in the same write
                    try:
                        out.append(_encode_reply(frames.receive_nowait()))
                    except trio.WouldBlock:
                        break
                await stream.send_all(b"".join(out))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()  # the worker is gone, or fell too far behind: end the connection
