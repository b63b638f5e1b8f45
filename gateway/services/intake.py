"""Message intake, the journal's half: one message's sealed chunks appended as they arrive,
then committed durably in all of its mailboxes or in none (SPEC.md 6.2). The sealing half is
``services.writer``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ..events import MessageStored, encode_event, now
from ..log import AppendItem, Location, LogWriteError, LogWriter, RecordKind, encode_chunk_body
from ._common import ArchiveError, MailboxState, WitnessedCopy
from .projection import StoredMessage
from .writer import SealedCopy

if TYPE_CHECKING:
    from .archive import Archive

__all__ = ["PendingMessage", "Target"]


@dataclass(slots=True)
class Target:
    box: MailboxState
    writer: LogWriter
    message_id: str
    epoch: int
    chunks: list[Location] = field(default_factory=list)


class PendingMessage:
    """The journal's half of one message on its way into one or more mailboxes (an
    ``IntakeSink``): it frames and appends the sealed chunks it is given, then commits every
    copy and witnesses them. Every record is built here from sealed bytes; a sealing side
    (a protocol worker) can name no record of its own."""

    def __init__(
        self,
        archive: Archive,
        boxes: Sequence[MailboxState],
        message_ids: Sequence[str],
        source_key: str = "",
    ) -> None:
        self._archive = archive
        self.source_key = source_key
        self._done = False
        self._targets: dict[str, Target] = {}
        for box, message_id in zip(boxes, message_ids, strict=True):
            assert box.writer is not None
            self._targets[box.info.mailbox_id] = Target(
                box, box.writer, message_id, box.writer.epoch
            )
            # Compaction keeps every chunk from here on until this message is settled.
            box.inflight[id(self)] = box.writer.log.next_seq

    async def append_chunks(self, mailbox_id: str, chunks: list[bytes]) -> None:
        target = self._target(mailbox_id)
        mid = bytes.fromhex(target.message_id)
        first = len(target.chunks)
        items: list[AppendItem] = [
            (RecordKind.CHUNK, encode_chunk_body(mid, first + i, ct)) for i, ct in enumerate(chunks)
        ]
        try:
            target.chunks.extend(
                await target.writer.append(items, durable=False, epoch=target.epoch)
            )
        except BaseException:
            self._finish()
            raise

    async def abort(self) -> None:
        self._finish()

    def discard(self) -> None:
        """:meth:`abort`, for a sealing side that is gone (its connection ended)."""
        self._finish()

    def _target(self, mailbox_id: str) -> Target:
        if self._done:
            raise ArchiveError("message already committed or aborted")
        target = self._targets.get(mailbox_id)
        if target is None:
            raise ArchiveError(f"the message does not go to mailbox {mailbox_id}")
        return target

    def _finish(self) -> None:
        self._done = True
        for target in self._targets.values():
            target.box.inflight.pop(id(self), None)

    async def commit(self, copies: Sequence[SealedCopy]) -> None:
        """Commit records in every mailbox (in parallel), then one witness in the control
        log naming every copy: the commit point. A crash before the witness leaves commit
        records that the next open rolls back in every mailbox, so a message is stored in
        all of its mailboxes or in none (SPEC.md 6.2).

        If any mailbox fails, the copies that did become durable are rolled back and
        LogWriteError is raised: the sender gets a temporary error and nothing is visible."""
        by_box = {copy.mailbox_id: copy for copy in copies}
        if set(by_box) != set(self._targets) or any(
            copy.message_id != self._target(copy.mailbox_id).message_id for copy in copies
        ):
            self._finish()
            raise ArchiveError("the sealed copies do not match the message begun")
        try:
            await self._commit(by_box)
        finally:
            self._finish()

    async def _commit(self, copies: dict[str, SealedCopy]) -> None:
        committed: dict[str, tuple[StoredMessage, bytes]] = {}
        failures: list[BaseException] = []

        async def commit_one(target: Target) -> None:
            try:
                mailbox_id = target.box.info.mailbox_id
                committed[mailbox_id] = await self._commit_one(target, copies[mailbox_id])
            except LogWriteError as exc:
                failures.append(exc)

        targets = list(self._targets.values())
        if len(targets) == 1:
            await commit_one(targets[0])  # the common case: no task to spawn
        else:
            async with trio.open_nursery() as nursery:
                for target in targets:
                    nursery.start_soon(commit_one, target)
        witnessed = [
            WitnessedCopy(t.box, *committed[t.box.info.mailbox_id], self.source_key)
            for t in targets
            if t.box.info.mailbox_id in committed
        ]
        if failures:
            await self._archive.roll_back(witnessed)
            raise LogWriteError(f"message not stored: {failures[0]}") from failures[0]
        await self._archive.witness(witnessed)

    async def _commit_one(self, target: Target, copy: SealedCopy) -> tuple[StoredMessage, bytes]:
        items: list[AppendItem] = []
        if copy.last_chunk is not None:
            mid = bytes.fromhex(target.message_id)
            items.append(
                (RecordKind.CHUNK, encode_chunk_body(mid, len(target.chunks), copy.last_chunk))
            )
        earlier = tuple(location.seq for location in target.chunks)
        built: list[MessageStored] = []

        def commit_body(seq: int) -> bytes:
            # With a last chunk, it and this record are appended together, so the final
            # chunk is the record just before this one.
            final = () if copy.last_chunk is None else (seq - 1,)
            event = MessageStored(
                at=now(),
                message_id=target.message_id,
                size=copy.size,
                sealed_size=copy.sealed_size,
                key_id=copy.key_id,
                wrapped_key=copy.wrapped_key,
                envelope=copy.envelope,
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
