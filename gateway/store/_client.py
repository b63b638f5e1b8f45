"""A protocol worker's side of the seam: the store as the SMTP and POP3 servers see it, over
one journal connection (SPEC.md 16).

Theory of operation
-------------------
:class:`StoreClient` sends requests and matches replies by id; one reader task takes every
frame the journal sends, wakes the request it answers or folds a pushed mailbox change into
the worker's view of the mailboxes. Sealing happens here (``services.writer``) with the
public key the view carries; opening happens here too, with a private key that never leaves
this process: the key file comes from the journal, the password from the client, and the
sealed records are read straight from the segment files the journal named
(``log.RecordSource``). If the journal connection is lost, every request fails at once with
LogWriteError, so nothing is acknowledged that the journal did not make durable.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from ..crypto import (
    MailboxPrivateKey,
    MailboxPublicKey,
    MessageOpener,
    decode_key_file,
    unlock,
)
from ..events import (
    SYSTEM,
    Actor,
    ControlEvent,
    Envelope,
    MailboxStatus,
    MessageAccepted,
    MessageStored,
    decode_envelope,
    decode_message_event,
    encode_event,
)
from ..ids import new_message_id, parse_mailbox_id
from ..log import DataDir, LogCorrupt, LogWriteError, RecordSource, decode_chunk_body
from ..services.archive import (
    ArchiveError,
    InsufficientStorage,
    MailboxUnavailable,
    MessageTooLarge,
    NoSuchMailbox,
    find_mailbox,
    sealed_of,
)
from ..services.keyforge import KeyForge
from ..services.projection import MailboxInfo
from ..services.writer import MessageWriter, SealedCopy, SealTarget
from ..threads import ThreadPool
from ._maildrop import Maildrop
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
    KeyFileBytes,
    ListMaildrop,
    Lock,
    MailboxChanged,
    MailboxGone,
    MailboxView,
    MaildropPage,
    MessageEntry,
    MessageList,
    ToJournal,
    ToWorker,
    Unlock,
    Welcome,
    WorkerFrames,
    encode_frame,
)

__all__ = ["StoreClient", "StoreLimits"]

logger = logging.getLogger("gateway.worker")

# Sealed chunks sent to the journal in one append (a frame holds at most MAX_FRAME).
APPEND_BYTES = 1 << 20
# Message ids in one expunge request (33 octets each in a frame).
EXPUNGE_BATCH = 10_000
# A message of at most this many octets is read and opened in one hand-off to a thread.
READ_AT_ONCE = 1 << 20
# Where messages are read and opened: a thread per session reading at once, at most.
_OPENING = ThreadPool("gateway-open", 16)

_ERRORS: dict[str, type[Exception]] = {
    "MailboxUnavailable": MailboxUnavailable,
    "MessageTooLarge": MessageTooLarge,
    "InsufficientStorage": InsufficientStorage,
    "NoSuchMailbox": NoSuchMailbox,
    "LogWriteError": LogWriteError,
    "StaleEpoch": LogWriteError,
    "ArchiveError": ArchiveError,
}
_actor_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_message_bytes: int


@dataclass(slots=True)
class _Mailbox:
    view: MailboxView
    info: MailboxInfo
    public_key: MailboxPublicKey | None


class StoreClient:
    """The store over one journal connection. Use :meth:`connect`, then run :meth:`run` in
    a nursery for as long as the worker serves."""

    def __init__(self, stream: trio.abc.Stream, data: DataDir | Path, name: str) -> None:
        """``data``: where the worker reads message records (the data folder, or a fleet
        store's ``DataDir``)."""
        self._stream = stream
        self._data = data if isinstance(data, DataDir) else DataDir(data)
        self.name = name
        self._decoder = WorkerFrames()
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[ToWorker]] = {}
        self._send_lock = trio.Lock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._readers: dict[str, RecordSource] = {}
        self._broken: str | None = None
        self.config = StoreLimits(0)
        # Set by whoever runs a KeyForge beside this worker: prepared data keys (SPEC.md 5.4).
        self.key_forge: KeyForge | None = None
        # Called when the journal says a new certificate is in the data folder (SPEC.md 12.4).
        self.on_certificate_changed: Callable[[], None] | None = None

    # -- the connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Say hello and take the journal's view of the mailboxes."""
        await self._stream.send_all(
            encode_frame(Hello(id=0, version=PROTOCOL_VERSION, worker=self.name))
        )
        frames: list[ToWorker] = []
        welcomed = False
        while not welcomed:  # one welcome frame, or several for many mailboxes
            while not frames:
                data = await self._stream.receive_some(1 << 20)
                if not data:
                    raise LogWriteError("the journal closed the connection before its welcome")
                frames = self._decoder.feed(data)
            welcome = frames.pop(0)
            if isinstance(welcome, Failed):
                raise LogWriteError(f"the journal refused this worker: {welcome.message}")
            if not isinstance(welcome, Welcome) or welcome.version != PROTOCOL_VERSION:
                raise LogWriteError("the journal speaks another protocol version")
            self.config = StoreLimits(welcome.max_message_bytes)
            for view in welcome.mailboxes:
                self._take_view(view)
            welcomed = not welcome.more
        for frame in frames:
            self._dispatch(frame)

    async def run(self) -> None:
        """Read the journal's frames until the connection ends; then every request fails."""
        try:
            while True:
                data = await self._stream.receive_some(1 << 20)
                if not data:
                    break
                for frame in self._decoder.feed(data):
                    self._dispatch(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError) as exc:
            logger.error("event=worker-journal-lost worker=%s reason=%r", self.name, str(exc))
        finally:
            self._fail_all("the journal connection is lost")
            await trio.aclose_forcefully(self._stream)

    def _fail_all(self, why: str) -> None:
        self._broken = why
        for channel in self._waiting.values():
            channel.close()
        self._waiting.clear()

    async def aclose(self) -> None:
        self._fail_all("the worker is closing")
        for reader in self._readers.values():
            reader.close()
        await self._stream.aclose()

    def _dispatch(self, frame: ToWorker) -> None:
        match frame:
            case MailboxChanged():
                self._take_view(frame.mailbox)
            case MailboxGone():
                self._mailboxes.pop(frame.mailbox_id, None)
            case CertificateChanged():
                if self.on_certificate_changed is not None:
                    self.on_certificate_changed()
            case _:
                channel = self._waiting.pop(frame.id, None)
                if channel is not None:
                    channel.send_nowait(frame)

    async def _call(self, frame: ToJournal) -> ToWorker:
        if self._broken is not None:
            raise LogWriteError(self._broken)
        send, receive = trio.open_memory_channel[ToWorker](1)
        self._waiting[frame.id] = send
        try:
            async with self._send_lock:
                await self._stream.send_all(encode_frame(frame))
            try:
                reply = await receive.receive()
            except trio.EndOfChannel:
                raise LogWriteError(self._broken or "the journal connection is lost") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LogWriteError(f"the journal connection is lost: {exc}") from None
        finally:
            self._waiting.pop(frame.id, None)
        if isinstance(reply, Failed):
            raise _ERRORS.get(reply.code, ArchiveError)(reply.message)
        return reply

    def _next_id(self) -> int:
        return next(self._ids)

    # -- mailboxes ------------------------------------------------------------------------------

    def _take_view(self, view: MailboxView) -> None:
        known = self._mailboxes.get(view.mailbox_id)
        if known is not None and known.view.public_key == view.public_key:
            public_key = known.public_key
        else:
            public_key = MailboxPublicKey(view.public_key) if view.public_key else None
        info = MailboxInfo(
            mailbox_id=view.mailbox_id,
            name=view.name,
            description="",
            status=MailboxStatus(view.status),
            key_id=view.key_id,
            wrap_id=view.wrap_id,
            created_at=view.created_at,
            updated_at=view.updated_at,
        )
        self._mailboxes[view.mailbox_id] = _Mailbox(view, info, public_key)

    def _box(self, mailbox_id: str) -> _Mailbox:
        return find_mailbox(self._mailboxes, mailbox_id)

    def mailbox(self, mailbox_id: str) -> MailboxInfo:
        return self._box(mailbox_id).info

    def damaged(self, mailbox_id: str) -> str | None:
        return self._box(mailbox_id).view.damaged

    def mailboxes(self) -> list[MailboxInfo]:
        return sorted((b.info for b in self._mailboxes.values()), key=lambda m: m.created_at)

    # -- messages in ----------------------------------------------------------------------------

    def begin_message(self, mailbox_ids: Sequence[str], source_key: str = "") -> MessageWriter:
        """Start sealing one message to one or more mailboxes; the journal appends and
        commits it. Raises MailboxUnavailable or NoSuchMailbox at once, as the view has it
        (the journal checks again)."""
        targets: dict[str, SealTarget] = {}
        for mailbox_id in mailbox_ids:
            box = self._box(mailbox_id)
            canonical = box.info.mailbox_id
            if box.info.status != MailboxStatus.ACTIVE:
                raise MailboxUnavailable(f"mailbox {canonical} is suspended")
            if box.view.damaged is not None or box.public_key is None:
                raise MailboxUnavailable(f"mailbox {canonical} is damaged: {box.view.damaged}")
            if canonical not in targets:
                forge = self.key_forge
                prepared = forge.take(box.public_key, bytes.fromhex(canonical)) if forge else None
                message_id = prepared.message_id.hex() if prepared else new_message_id()
                targets[canonical] = SealTarget(canonical, box.public_key, message_id, prepared)
        if not targets:
            raise ArchiveError("a message needs at least one mailbox")
        sink = _RemoteMessage(self, list(targets.values()), source_key)
        return MessageWriter(
            list(targets.values()),
            sink,
            max_bytes=self.config.max_message_bytes,
            source_key=source_key,
        )

    async def has_source(self, mailbox_id: str, *source_keys: str) -> bool:
        reply = await self._call(
            HasSource(id=self._next_id(), mailbox_id=mailbox_id, source_keys=list(source_keys))
        )
        return isinstance(reply, Done) and bool(reply.value)

    async def append_control(
        self, event: ControlEvent, *, durable: bool = False, wait: bool = True
    ) -> None:
        """Append an audit event (the journal refuses any other kind). Audit events
        acknowledge nothing and are never fsynced on their own; with ``wait`` this returns
        once the journal wrote it (a session's records are in the log in order before the
        session ends). ``wait=False`` sends it with id 0 and returns at once (the journal
        answers it only in its log if it refuses it): for a record on the path to a reply,
        such as MessageAccepted before the 250."""
        del durable
        frame = Audit(id=self._next_id() if wait else 0, event=encode_event(event))
        if wait:
            await self._call(frame)
            return
        if self._broken is not None:
            raise LogWriteError(self._broken)
        try:
            async with self._send_lock:
                await self._stream.send_all(encode_frame(frame))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LogWriteError(f"the journal connection is lost: {exc}") from None

    # -- messages out ---------------------------------------------------------------------------

    async def maildrop(self, mailbox_id: str, key_id: str) -> Maildrop:
        """The mailbox's messages sealed to ``key_id`` now, oldest first, by id and size: a
        POP3 maildrop at login (read from the journal in pages, as of the first)."""
        canonical = self._box(mailbox_id).info.mailbox_id
        maildrop = Maildrop()
        listing = 0
        while True:
            request = ListMaildrop(
                id=self._next_id(), mailbox_id=canonical, key_id=key_id, listing=listing
            )
            reply = await self._call(request)
            assert isinstance(reply, MaildropPage)
            maildrop.extend(reply.ids, reply.sizes)
            if not reply.listing:
                return maildrop
            listing = reply.listing

    async def lock_maildrop(self, mailbox_id: str) -> bool:
        reply = await self._call(Lock(id=self._next_id(), mailbox_id=mailbox_id))
        return isinstance(reply, Done) and bool(reply.value)

    async def unlock_maildrop(self, mailbox_id: str) -> None:
        await self._call(Unlock(id=self._next_id(), mailbox_id=mailbox_id))

    async def expunge(
        self, mailbox_id: str, message_ids: Sequence[str], *, actor: Actor = SYSTEM
    ) -> int:
        """Delete messages, EXPUNGE_BATCH ids a request (and a record): a POP3 session that
        deleted 200,000 would not fit in one frame. Returns how many were deleted."""
        ids = list(message_ids)
        deleted = 0
        for start in range(0, len(ids), EXPUNGE_BATCH):
            reply = await self._call(
                Expunge(
                    id=self._next_id(),
                    mailbox_id=mailbox_id,
                    message_ids=ids[start : start + EXPUNGE_BATCH],
                    actor=_actor_encoder.encode(actor),
                )
            )
            assert isinstance(reply, Done)
            deleted += reply.value
        return deleted

    async def unlock(
        self, mailbox_id: str, password: str, *, limiter: trio.CapacityLimiter | None = None
    ) -> MailboxPrivateKey:
        """Open the mailbox's private key here (Argon2id in a thread of this process; the
        key never leaves it). Raises crypto.WrongPassword."""
        box = self._box(mailbox_id)
        reply = await self._call(GetKeyFile(id=self._next_id(), mailbox_id=box.info.mailbox_id))
        assert isinstance(reply, KeyFileBytes)
        key = decode_key_file(reply.data)
        return await trio.to_thread.run_sync(
            unlock, key, bytes.fromhex(box.info.mailbox_id), password, limiter=limiter
        )

    async def read_message(
        self, mailbox_id: str, message_id: str, key: MailboxPrivateKey
    ) -> AsyncGenerator[bytes, None]:
        """Decrypt one message piece by piece (each at most 256 KiB): where its records are
        comes from the journal, the records from the segment files (a message of up to
        READ_AT_ONCE octets in one go). Raises ArchiveError for a message the mailbox does
        not serve (expunged), crypto.MessageCorrupt on any tampering, LogCorrupt on a damaged
        record."""
        entry, reader = await self._entry(mailbox_id, message_id)
        mid = bytes.fromhex(entry.message_id)

        def open_one(opener: MessageOpener, index: int, body: bytes) -> bytes:
            chunk_mid, chunk_index, ciphertext = decode_chunk_body(body)
            if chunk_mid != mid or chunk_index != index:
                at = entry.chunks[index]
                raise LogCorrupt(reader.directory / at.file, at.offset, "chunk record mismatch")
            return opener.open_chunk(bytes(ciphertext))

        def read_one(opener: MessageOpener, index: int) -> bytes:
            at = entry.chunks[index]
            return open_one(opener, index, reader.read(at.file, at.offset, at.size)[1])

        if entry.size <= READ_AT_ONCE:
            # Most mail: one hand-off to a thread for the whole message, not one per piece,
            # and its records read in one call.
            def open_all() -> list[bytes]:
                places = [(at.file, at.offset, at.size) for at in (entry.commit, *entry.chunks)]
                (_header, commit), *chunks = reader.read_many(places)
                opener = self._opener_of(commit, reader, entry, mailbox_id, key)
                pieces = [open_one(opener, i, body) for i, (_h, body) in enumerate(chunks)]
                opener.finish()
                return pieces

            for piece in await _OPENING.run(open_all):
                yield piece
            return
        opener = await trio.to_thread.run_sync(self._opener, reader, entry, mailbox_id, key)
        for index in range(len(entry.chunks)):
            yield await trio.to_thread.run_sync(read_one, opener, index)
        opener.finish()

    async def read_envelope(
        self, mailbox_id: str, message_id: str, key: MailboxPrivateKey
    ) -> Envelope:
        entry, reader = await self._entry(mailbox_id, message_id)
        opener = await trio.to_thread.run_sync(self._opener, reader, entry, mailbox_id, key)
        return decode_envelope(opener.meta())

    async def _entry(self, mailbox_id: str, message_id: str) -> tuple[MessageEntry, RecordSource]:
        canonical = self._box(mailbox_id).info.mailbox_id
        reply = await self._call(
            GetMessage(id=self._next_id(), mailbox_id=canonical, message_id=message_id)
        )
        assert isinstance(reply, MessageList)
        (entry,) = reply.messages
        reader = self._readers.get(canonical)
        if reader is None:
            reader = self._readers[canonical] = self._data.record_reader(canonical)
        return entry, reader

    @classmethod
    def _opener(
        cls, reader: RecordSource, entry: MessageEntry, mailbox_id: str, key: MailboxPrivateKey
    ) -> MessageOpener:
        at = entry.commit
        _header, body = reader.read(at.file, at.offset, at.size)
        return cls._opener_of(body, reader, entry, mailbox_id, key)

    @staticmethod
    def _opener_of(
        commit: bytes,
        reader: RecordSource,
        entry: MessageEntry,
        mailbox_id: str,
        key: MailboxPrivateKey,
    ) -> MessageOpener:
        """The message's opener, from its commit record's body."""
        event = decode_message_event(commit)
        if not isinstance(event, MessageStored) or event.message_id != entry.message_id:
            at = entry.commit
            raise LogCorrupt(reader.directory / at.file, at.offset, "commit record mismatch")
        return MessageOpener(
            key,
            bytes.fromhex(parse_mailbox_id(mailbox_id)),
            bytes.fromhex(entry.message_id),
            sealed_of(event),
        )


class _RemoteMessage:
    """The journal's half of one message, over the connection (an ``IntakeSink``): the
    first frame begins the message there."""

    _tokens = itertools.count(1)

    def __init__(self, client: StoreClient, targets: list[SealTarget], source_key: str) -> None:
        self._client = client
        self._token = next(self._tokens)
        self._mailbox_ids = [t.mailbox_id for t in targets]
        self._message_ids = [t.message_id for t in targets]
        self._source_key = source_key
        self._begun = False

    async def append_chunks(self, mailbox_id: str, chunks: list[bytes]) -> None:
        client = self._client
        while chunks:  # about APPEND_BYTES a frame: a large write seals into many chunks
            size, count = 0, 0
            while count < len(chunks) and (count == 0 or size < APPEND_BYTES):
                size += len(chunks[count])
                count += 1
            await client._call(
                Append(
                    id=client._next_id(),
                    token=self._token,
                    mailbox_ids=self._mailbox_ids,
                    message_ids=self._message_ids,
                    source_key=self._source_key,
                    mailbox_id=mailbox_id,
                    chunks=chunks[:count],
                )
            )
            self._begun = True
            chunks = chunks[count:]

    async def commit(
        self, copies: Sequence[SealedCopy], accepted: MessageAccepted | None = None
    ) -> None:
        if sum(len(copy.last_chunk or b"") for copy in copies) > APPEND_BYTES:
            # Each copy's final chunk is up to a sealed 256 KiB: for a message to many
            # mailboxes they go ahead as appends, so that the commit fits in its frame.
            for copy in copies:
                if copy.last_chunk is not None:
                    await self.append_chunks(copy.mailbox_id, [copy.last_chunk])
            copies = [msgspec.structs.replace(copy, last_chunk=None) for copy in copies]
        client = self._client
        await client._call(
            Commit(
                id=client._next_id(),
                token=self._token,
                mailbox_ids=self._mailbox_ids,
                message_ids=self._message_ids,
                source_key=self._source_key,
                copies=list(copies),
                accepted=b"" if accepted is None else encode_event(accepted),
            )
        )

    async def abort(self) -> None:
        if not self._begun:
            return  # the journal never heard of it
        client = self._client
        with contextlib.suppress(LogWriteError):  # gone: the journal dropped it with us
            await client._call(Abort(id=client._next_id(), token=self._token))
