"""Reading a stored message back: its commit record, its data key, its chunks.

Theory of operation
-------------------
A message is opened from its commit record (``MessageStored``: the wrapped data key and the
sealed envelope) with the mailbox's private key, then its chunks are read and decrypted one
by one (each at most 256 KiB of plaintext). Every record read runs in a worker thread under
the mailbox's ``io_lock``, so compaction never replaces a segment file under a read; chunk
locations are looked up afresh for each chunk, since compaction may move them in between.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime

import trio

from ..crypto import MailboxPrivateKey, MessageOpener, SealedMessage
from ..events import Envelope, MessageStored, decode_envelope, decode_message_event
from ..log import Location, LogCorrupt, StoreLog, decode_chunk_body
from ._archive_core import ArchiveCore
from ._common import ArchiveError, MailboxState
from .message_index import StoredMessage

__all__ = ["committed_at", "read_envelope", "read_message", "sealed_of"]


async def read_message(
    core: ArchiveCore, mailbox_id: str, message_id: str, key: MailboxPrivateKey
) -> AsyncGenerator[bytes, None]:
    box, stored, log = _stored(core, mailbox_id, message_id)
    mid = bytes.fromhex(stored.message_id)

    def open_one(opener: MessageOpener, location: Location, index: int) -> bytes:
        _header, body = log.read(location)
        chunk_mid, chunk_index, ciphertext = decode_chunk_body(body)
        if chunk_mid != mid or chunk_index != index:
            raise LogCorrupt(log.directory, location.offset, "chunk record mismatch")
        return opener.open_chunk(bytes(ciphertext))

    def open_first() -> tuple[MessageOpener, bytes | None]:
        # The commit record, the data key (HPKE) and the first chunk in one hand-off to
        # a worker thread: a message under 256 KiB costs one.
        opener = _opener(box, stored, log, key)
        first = open_one(opener, stored.chunks[0], 0) if stored.chunks else None
        return opener, first

    async with box.io_lock:
        opener, piece = await trio.to_thread.run_sync(open_first)
    if piece is not None:
        yield piece
    for index in range(1, len(stored.chunks)):
        # Locations are looked up afresh for every chunk: compaction may have moved them.
        async with box.io_lock:
            piece = await trio.to_thread.run_sync(open_one, opener, stored.chunks[index], index)
        yield piece
    opener.finish()


async def read_envelope(
    core: ArchiveCore, mailbox_id: str, message_id: str, key: MailboxPrivateKey
) -> Envelope:
    box, stored, log = _stored(core, mailbox_id, message_id)
    async with box.io_lock:
        opener = await trio.to_thread.run_sync(_opener, box, stored, log, key)
    return decode_envelope(opener.meta())


async def committed_at(core: ArchiveCore, mailbox_id: str, message_id: str) -> datetime:
    box, stored, log = _stored(core, mailbox_id, message_id)
    async with box.io_lock:
        _header, body = await trio.to_thread.run_sync(log.read, stored.commit)
    event = decode_message_event(body)
    if not isinstance(event, MessageStored) or event.message_id != stored.message_id:
        raise LogCorrupt(log.directory, stored.commit.offset, "commit record mismatch")
    return event.at


async def commit_record(core: ArchiveCore, mailbox_id: str, message_id: str) -> tuple[int, bytes]:
    """A message's commit record in its mailbox log: its seq and body."""
    box, stored, log = _stored(core, mailbox_id, message_id)
    async with box.io_lock:
        _header, body = await trio.to_thread.run_sync(log.read, stored.commit)
    return stored.seq, body


def sealed_of(event: MessageStored) -> SealedMessage:
    """What a commit record says about its sealed message, as the opener takes it."""
    return SealedMessage(
        key_id=bytes.fromhex(event.key_id),
        wrapped_key=event.wrapped_key,
        envelope=event.envelope,
        chunk_count=len(event.chunk_seqs),
        size=event.size,
        sealed_size=event.sealed_size,
    )


def _stored(
    core: ArchiveCore, mailbox_id: str, message_id: str
) -> tuple[MailboxState, StoredMessage, StoreLog]:
    box = core.open_box(mailbox_id)
    stored = box.index.get(message_id)
    if stored is None or box.writer is None:
        raise ArchiveError(f"no message {message_id} in mailbox {box.info.mailbox_id}")
    return box, stored, box.writer.log


def _opener(
    box: MailboxState, stored: StoredMessage, log: StoreLog, key: MailboxPrivateKey
) -> MessageOpener:
    """Read the message's commit record back and open its data key (in a worker thread,
    under the mailbox's io_lock)."""
    _header, body = log.read(stored.commit)
    event = decode_message_event(body)
    if not isinstance(event, MessageStored) or event.message_id != stored.message_id:
        raise LogCorrupt(log.directory, stored.commit.offset, "commit record mismatch")
    return MessageOpener(
        key,
        bytes.fromhex(box.info.mailbox_id),
        bytes.fromhex(stored.message_id),
        sealed_of(event),
    )
