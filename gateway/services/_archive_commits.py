"""The commit point of a message: which mailboxes may take it, its witness, its roll-back.

Theory of operation
-------------------
A message's commit records are made durable in each of its mailboxes by
:class:`intake.PendingMessage`; it exists once the control log holds their witness
(``MessagesCommitted``, SPEC.md 6.2), appended durably here, and only then is it served. A
copy whose witness will never come (a failed append, a key reset on the way) is rolled back:
expunged, with reason ``ROLLED_BACK``. A roll-back that cannot be written is done on the next
open instead, since recovery rolls back every commit the control log does not witness.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from ..events import ROLLED_BACK, CommitWitness, MailboxStatus, MessagesCommitted, now
from ..log import LogWriteError
from ._archive_core import ArchiveCore
from ._common import ArchiveError, MailboxState, MailboxUnavailable, WitnessedCopy

__all__ = ["accepting", "roll_back", "witness"]


def accepting(core: ArchiveCore, mailbox_ids: Sequence[str]) -> list[MailboxState]:
    boxes: dict[str, MailboxState] = {}
    for mailbox_id in mailbox_ids:
        box = core.box(mailbox_id)
        if box.info.status != MailboxStatus.ACTIVE:
            raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is suspended")
        if box.writer is None or box.public_key is None:
            raise core.unavailable(box)
        boxes.setdefault(box.info.mailbox_id, box)
    if not boxes:
        raise ArchiveError("a message needs at least one mailbox")
    return list(boxes.values())


async def witness(core: ArchiveCore, copies: Sequence[WitnessedCopy]) -> None:
    for copy in copies:
        box = copy.box
        if box.resetting or copy.stored.key_id != box.info.key_id:
            await roll_back(core, copies)
            raise MailboxUnavailable(
                f"mailbox {box.info.mailbox_id}: its key was reset while the message "
                "was on its way; try again"
            )
    event = MessagesCommitted(
        at=now(),
        commits=tuple(
            CommitWitness(c.box.info.mailbox_id, c.stored.message_id, c.stored.seq, c.chain)
            for c in copies
        ),
    )
    for copy in copies:
        copy.box.witnessing += 1
    try:
        await core.append_control(event)
    except LogWriteError:
        await roll_back(core, copies)
        raise
    finally:
        # A key reset waits for the witnesses in flight (SPEC.md 6.5).
        for copy in copies:
            copy.box.witnessing -= 1
            if copy.box.witnessing == 0:
                copy.box.witnesses_idle.set()
                copy.box.witnesses_idle = trio.Event()
    for copy in copies:
        copy.box.index.messages[copy.stored.message_id] = copy.stored
        if copy.source_key:
            copy.box.index.sources.add(copy.source_key)


async def roll_back(core: ArchiveCore, copies: Sequence[WitnessedCopy]) -> None:
    for copy in copies:
        try:
            await core.expunge_ids(copy.box, [copy.stored.message_id], ROLLED_BACK)
        except LogWriteError:
            continue
