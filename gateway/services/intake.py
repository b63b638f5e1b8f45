"""Message intake: one message on its way into one or more mailboxes, streamed and sealed as
it arrives, then committed durably in all of them or in none (SPEC.md 6.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ..crypto import MailboxPublicKey, MessageSealer
from ..events import Envelope, MessageStored, encode_envelope, encode_event, now
from ..ids import new_message_id
from ..log import AppendItem, Location, LogWriteError, LogWriter, RecordKind, encode_chunk_body
from ._common import (
    MAX_ENVELOPE_BYTES,
    ArchiveError,
    MailboxState,
    MessageTooLarge,
    WitnessedCopy,
)
from .projection import StoredMessage

if TYPE_CHECKING:
    from .archive import Archive

__all__ = ["MessageWriter", "Target"]

# Sealing a piece this large or larger goes to a worker thread; smaller pieces are cheaper to
# seal on the loop than to hand over.
THREAD_THRESHOLD = 64 * 1024


@dataclass(slots=True)
class Target:
    box: MailboxState
    writer: LogWriter
    public_key: MailboxPublicKey
    sealer: MessageSealer | None = None
    message_id: str = ""
    epoch: int = 0
    chunks: list[Location] = field(default_factory=list)
    prepared: bool = False  # the final chunk is written: only the commit record is left


class MessageWriter:
    """One message on its way into one or more mailboxes. Feed it with :meth:`write`, then
    :meth:`commit` (durable in every mailbox, or an exception and visible in none).

    :meth:`prepare` (optional, before commit) writes everything but the commit record, so
    that what can still fail afterwards is one small record: the SMTP proxy prepares before
    the target may accept the message, and commits after."""

    def __init__(self, archive: Archive, targets: list[Target], source_key: str = "") -> None:
        self._archive = archive
        self._targets = targets
        self.source_key = source_key
        self.size = 0
        self._done = False
        forge = archive.key_forge
        for target in targets:
            mailbox_bytes = bytes.fromhex(target.box.info.mailbox_id)
            prepared = forge.take(target.public_key, mailbox_bytes) if forge else None
            target.message_id = prepared.message_id.hex() if prepared else new_message_id()
            target.epoch = target.writer.epoch
            target.box.inflight[id(self)] = target.writer.log.next_seq
            target.sealer = MessageSealer(
                target.public_key,
                mailbox_bytes,
                bytes.fromhex(target.message_id),
                prepared=prepared,
            )

    @property
    def mailbox_ids(self) -> list[str]:
        return [t.box.info.mailbox_id for t in self._targets]

    async def write(self, data: bytes, *, allowance: int = 0) -> None:
        """``allowance``: octets written that the limit does not count (the trace field the
        SMTP server prepends): the limit applies to what the client sent (SPEC.md 12.2)."""
        if self._done:
            raise RuntimeError("message already committed or aborted")
        self.size += len(data)
        if self.size > self._archive.config.max_message_bytes + allowance:
            self._finish()
            raise MessageTooLarge(
                f"message exceeds the maximum of {self._archive.config.max_message_bytes} octets"
            )
        for target in self._targets:
            sealer = target.sealer
            assert sealer is not None
            if len(data) >= THREAD_THRESHOLD:
                chunks = await trio.to_thread.run_sync(sealer.feed, data)
            else:
                chunks = sealer.feed(data)
            if chunks:
                await self._append_chunks(target, chunks)

    async def _append_chunks(self, target: Target, chunks: list[bytes]) -> None:
        mid = bytes.fromhex(target.message_id)
        first = len(target.chunks)
        items: list[AppendItem] = [
            (RecordKind.CHUNK, encode_chunk_body(mid, first + i, ct)) for i, ct in enumerate(chunks)
        ]
        target.chunks.extend(await target.writer.append(items, durable=False, epoch=target.epoch))

    async def prepare(self) -> None:
        """Seal and write the final chunk in every mailbox (not yet durable, not yet
        visible). Raises LogWriteError (then the message can only be aborted)."""
        if self._done:
            raise RuntimeError("message already committed or aborted")
        try:
            for target in self._targets:
                if target.prepared:
                    continue
                sealer = target.sealer
                assert sealer is not None
                if self.size >= THREAD_THRESHOLD:
                    last = await trio.to_thread.run_sync(sealer.finish_content)
                else:
                    last = sealer.finish_content()
                await self._append_chunks(target, [last])
                target.prepared = True
        except BaseException:
            self._finish()
            raise

    async def commit(self, envelope: Envelope) -> dict[str, str]:
        """Make the message durable in every mailbox; returns mailbox id -> message id.

        If any mailbox fails, the copies that did become durable are expunged again and
        LogWriteError is raised: the sender gets a temporary error and nothing is visible.
        """
        if self._done:
            raise RuntimeError("message already committed or aborted")
        meta = encode_envelope(envelope)
        if len(meta) > MAX_ENVELOPE_BYTES:
            self._finish()
            raise ArchiveError(f"envelope metadata exceeds {MAX_ENVELOPE_BYTES} octets")
        try:
            return await self._commit(meta)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        for target in self._targets:
            target.box.inflight.pop(id(self), None)

    async def _commit(self, meta: bytes) -> dict[str, str]:
        """Commit records in every mailbox (in parallel), then one witness in the control
        log naming every copy: the commit point. A crash before the witness leaves commit
        records that the next open rolls back in every mailbox, so a message is stored in
        all of its mailboxes or in none (SPEC.md 6.2)."""
        copies: dict[str, tuple[StoredMessage, bytes]] = {}
        failures: list[BaseException] = []

        async def commit_one(target: Target) -> None:
            try:
                copies[target.box.info.mailbox_id] = await self._commit_one(target, meta)
            except LogWriteError as exc:
                failures.append(exc)

        if len(self._targets) == 1:
            await commit_one(self._targets[0])  # the common case: no task to spawn
        else:
            async with trio.open_nursery() as nursery:
                for target in self._targets:
                    nursery.start_soon(commit_one, target)
        witnessed = [
            WitnessedCopy(t.box, *copies[t.box.info.mailbox_id], self.source_key)
            for t in self._targets
            if t.box.info.mailbox_id in copies
        ]
        if failures:
            await self._archive.roll_back(witnessed)
            raise LogWriteError(f"message not stored: {failures[0]}") from failures[0]
        await self._archive.witness(witnessed)
        return {t.box.info.mailbox_id: t.message_id for t in self._targets}

    async def _commit_one(self, target: Target, meta: bytes) -> tuple[StoredMessage, bytes]:
        sealer = target.sealer
        assert sealer is not None
        items: list[AppendItem] = []
        if target.prepared:
            sealed = sealer.seal_envelope(meta)
        else:
            if self.size >= THREAD_THRESHOLD:
                last, sealed = await trio.to_thread.run_sync(sealer.finish, meta)
            else:
                last, sealed = sealer.finish(meta)
            mid = bytes.fromhex(target.message_id)
            items.append((RecordKind.CHUNK, encode_chunk_body(mid, len(target.chunks), last)))
        earlier = tuple(location.seq for location in target.chunks)
        built: list[MessageStored] = []

        def commit_body(seq: int) -> bytes:
            # Unprepared, the final chunk and this record are appended together, so the
            # final chunk is the record just before this one.
            final = () if target.prepared else (seq - 1,)
            event = MessageStored(
                at=now(),
                message_id=target.message_id,
                size=sealed.size,
                sealed_size=sealed.sealed_size,
                key_id=sealed.key_id.hex(),
                wrapped_key=sealed.wrapped_key,
                envelope=sealed.envelope,
                chunk_seqs=(*earlier, *final),
                source_key=self.source_key,
            )
            built.append(event)
            return encode_event(event)

        items.append((RecordKind.EVENT, commit_body))
        locations, chains = await target.writer.append_chained(
            items, durable=True, epoch=target.epoch
        )
        *finals, commit = locations
        chunks = [*target.chunks, *finals]
        return StoredMessage.of(commit.seq, commit, chunks, built[0]), chains[-1]

    async def abort(self) -> None:
        """Give the message up; its chunks already written become orphans for compaction."""
        self._finish()
