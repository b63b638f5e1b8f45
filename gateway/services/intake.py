"""Message intake, the journal's half: one message's sealed chunks appended as they arrive,
then committed durably in all of its mailboxes or in none (SPEC.md 6.2). The sealing half is
``services.writer``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..events import MessageAbandoned, MessageAccepted, MessageStored, encode_event, now
from ..log import (
    AppendItem,
    Location,
    LogWriteError,
    LogWriter,
    RecordKind,
    StoreLog,
    encode_chunk_body,
)
from ._archive_commits import CopyCommit
from ._common import ArchiveError, MailboxState
from .message_index import StoredMessage
from .writer import SealedCopy

if TYPE_CHECKING:
    from .archive import Archive

__all__ = ["PendingMessage", "Target"]

logger = logging.getLogger("gateway.services.archive")


@dataclass(slots=True)
class Target:
    box: MailboxState
    writer: LogWriter[StoreLog]
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
        self._committing = False
        self._abandoned = False
        self._targets: dict[str, Target] = {}
        for box, message_id in zip(boxes, message_ids, strict=True):
            assert box.writer is not None
            self._targets[box.info.mailbox_id] = Target(
                box, box.writer, message_id, box.writer.epoch
            )
            # Compaction keeps every chunk from here on until this message is settled.
            box.inflight[id(self)] = (
                box.writer.log.next_seq,
                self._targets[box.info.mailbox_id].chunks,
            )

    async def append_chunks(self, mailbox_id: str, chunks: list[bytes]) -> None:
        target = self._target(mailbox_id)
        mid = bytes.fromhex(target.message_id)
        first = len(target.chunks)
        items: list[AppendItem] = [
            (RecordKind.CHUNK, encode_chunk_body(mid, first + i, ct)) for i, ct in enumerate(chunks)
        ]
        try:
            # The chunks are listed by the round that wrote them: a checkpoint between the
            # round and this task's turn finds them (SPEC.md 6.7).
            await target.writer.append(
                items, durable=False, epoch=target.epoch, on_written=target.chunks.extend
            )
        except BaseException:
            self._finish()
            raise

    async def abort(self) -> None:
        """Give the message up (its sealing side asked, or is gone): its chunks become
        orphans. A shared store's compaction cannot tell them from another node's message in
        flight, so there each mailbox's log is told which they are (``MessageAbandoned``,
        appended lazily; a store that refuses it leaves them orphans, logged)."""
        self._finish()
        if self._committing or self._abandoned or not self._archive.shared:
            # A commit that failed may yet be there (a COMMIT in doubt, SPEC.md 17.7): its
            # chunks are never named abandoned. A data folder's compaction knows this node's
            # messages in flight (SPEC.md 6.4).
            return
        self._abandoned = True
        for target in self._targets.values():
            if not target.chunks:
                continue
            event = MessageAbandoned(
                at=now(),
                message_id=target.message_id,
                chunk_seqs=tuple(location.seq for location in target.chunks),
            )
            try:
                await target.writer.append_lazily([(RecordKind.EVENT, encode_event(event))])
            except LogWriteError as exc:
                logger.warning(
                    "event=abandoned-message-not-recorded mailbox=%s chunks=%d reason=%r",
                    target.box.info.mailbox_id,
                    len(target.chunks),
                    str(exc),
                )

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

    async def commit(
        self, copies: Sequence[SealedCopy], accepted: MessageAccepted | None = None
    ) -> None:
        """Commit records in every mailbox, then one witness in the control log naming every
        copy: the commit point, in one round of the group commit. A crash before the witness
        leaves commit records that the next open rolls back in every mailbox, so a message
        is stored in all of its mailboxes or in none (SPEC.md 6.2).

        If any mailbox fails, the copies that did become durable are rolled back and
        LogWriteError is raised: the sender gets a temporary error and nothing is visible."""
        self._committing = True
        by_box = {copy.mailbox_id: copy for copy in copies}
        if set(by_box) != set(self._targets) or any(
            copy.message_id != self._target(copy.mailbox_id).message_id for copy in copies
        ):
            self._finish()
            raise ArchiveError("the sealed copies do not match the message begun")
        try:
            await self._archive.commit(
                [self._copy(t, by_box[mailbox_id]) for mailbox_id, t in self._targets.items()],
                also=() if accepted is None else (accepted,),
            )
        finally:
            self._finish()

    def _copy(self, target: Target, copy: SealedCopy) -> CopyCommit:
        """The copy's last records: its final chunk, if the sealer kept one back, and its
        commit record, built when its sequence number is known (in the writing thread)."""
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

        def stored(locations: list[Location]) -> StoredMessage:
            *finals, commit = locations
            return StoredMessage.of(commit.seq, commit, [*target.chunks, *finals], built[0])

        items.append((RecordKind.EVENT, commit_body))
        return CopyCommit(
            target.box,
            target.writer,
            target.message_id,
            copy.key_id,
            items,
            target.epoch,
            stored,
            self.source_key,
        )
