"""The commit point of a message: which mailboxes may take it, its witness, its roll-back.

Theory of operation
-------------------
A message's commit records (built by :class:`intake.PendingMessage`) are made durable in each
of its mailboxes, then their witness (``MessagesCommitted``, SPEC.md 6.2) in the control log,
both in one round of the group commit (``CommitGroup.append_then``: the witness is built in
the round's thread from the chain values just written). The message exists once the witness
is durable, and only then is it served. A copy whose witness will never come (another copy's
append failed) is rolled back: expunged, with reason ``ROLLED_BACK``; a copy sealed to a key
being reset is refused before anything is written. A roll-back that cannot be written is done
on the next open instead, since recovery rolls back every commit the control log does not
witness.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from ..events import (
    ROLLED_BACK,
    CommitWitness,
    ControlEvent,
    MailboxStatus,
    MessagesCommitted,
    encode_event,
    now,
)
from ..log import AppendItem, Location, LogWriteError, LogWriter, RecordKind, StoreLog, Written
from ._archive_core import ArchiveCore
from ._common import (
    ArchiveError,
    InsufficientStorage,
    MailboxState,
    MailboxUnavailable,
    WitnessedCopy,
)
from .message_index import StoredMessage

__all__ = ["CopyCommit", "accepting", "commit", "roll_back"]


def accepting(core: ArchiveCore, mailbox_ids: Sequence[str]) -> list[MailboxState]:
    if core.state.store_space_low:
        raise InsufficientStorage("the data folder's file system is under its free-space floor")
    boxes: dict[str, MailboxState] = {}
    for mailbox_id in mailbox_ids:
        box = core.open_box(mailbox_id)
        if box.info.status != MailboxStatus.ACTIVE:
            raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is suspended")
        if box.writer is None or box.public_key is None:
            raise core.unavailable(box)
        boxes.setdefault(box.info.mailbox_id, box)
    if not boxes:
        raise ArchiveError("a message needs at least one mailbox")
    return list(boxes.values())


@dataclass(slots=True)
class CopyCommit:
    """One mailbox's copy of a message, ready to commit: its last records (ending with its
    commit record), the epoch its earlier chunks were written in, and how its index entry
    is made from where those records went."""

    box: MailboxState
    writer: LogWriter[StoreLog]
    message_id: str
    key_id: str
    items: Sequence[AppendItem]
    epoch: int
    stored: Callable[[list[Location]], StoredMessage]
    source_key: str = ""


async def commit(
    core: ArchiveCore, copies: Sequence[CopyCommit], also: Sequence[ControlEvent] = ()
) -> None:
    """Each copy's commit records, durable in its mailbox, then their witness, durable in
    the control log, in one round of the group commit; then the copies are served. A copy
    sealed to a key that is being reset is refused before anything is written; if any
    append fails, the copies that did become durable are rolled back and LogWriteError (or
    MailboxUnavailable) is raised."""
    for copy in copies:
        box = copy.box
        if box.resetting or copy.key_id != box.info.key_id:
            raise MailboxUnavailable(
                f"mailbox {box.info.mailbox_id}: its key was reset while the message "
                "was on its way; try again"
            )
    after = [(RecordKind.EVENT, encode_event(event)) for event in also]

    def witness(written: list[Written]) -> list[AppendItem]:
        # In the round's worker thread, once every commit record is durable.
        event = MessagesCommitted(
            at=now(),
            commits=tuple(
                CommitWitness(c.box.info.mailbox_id, c.message_id, locations[-1].seq, chains[-1])
                for c, (locations, chains) in zip(copies, written, strict=True)
            ),
        )
        return [(RecordKind.EVENT, encode_event(event)), *after]

    for copy in copies:
        copy.box.witnessing += 1
    settled = False
    try:
        # Shielded: once queued, the round decides; a cancelled caller must not leave a
        # witnessed message out of the index, nor a failed one not rolled back.
        with trio.CancelScope(shield=True):
            outcomes, witnessed = await core.commit_group.append_then(
                [(copy.writer, copy.items, copy.epoch) for copy in copies],
                core.control,
                witness,
            )
            durable = [
                WitnessedCopy(c.box, c.stored(o[0]), o[1][-1], c.source_key)
                for c, o in zip(copies, outcomes, strict=True)
                if not isinstance(o, LogWriteError)
            ]
            if isinstance(witnessed, LogWriteError):
                await roll_back(core, durable)
                settled = True
                raise LogWriteError(f"message not stored: {witnessed}") from witnessed
        for done in durable:
            done.box.index.add(done.stored, done.source_key)
        settled = True
    finally:
        if not settled:
            # Something unforeseen: the commit records may be neither witnessed nor
            # rolled back until the next open does it.
            for copy in copies:
                copy.box.unsettled = True
        # Settled (served, or rolled back): a key reset waits for the witnesses in flight
        # (SPEC.md 6.5), a checkpoint for every commit of the mailbox to settle (6.7).
        for copy in copies:
            copy.box.witnessing -= 1
            if copy.box.witnessing == 0:
                copy.box.witnesses_idle.set()
                copy.box.witnesses_idle = trio.Event()


async def roll_back(core: ArchiveCore, copies: Sequence[WitnessedCopy]) -> None:
    for copy in copies:
        try:
            await core.expunge_ids(copy.box, [copy.stored.message_id], ROLLED_BACK)
        except LogWriteError:
            # Its commit record stays unwitnessed and not expunged until the next open
            # rolls it back: no recovery point may call this mailbox settled (SPEC.md 6.7).
            copy.box.unsettled = True
            continue
