"""A store other nodes append to as well (fleet mode, SPEC.md 17.5): what this node does with
what they commit.

Theory of operation
-------------------
Other nodes' control records are folded into the state as this node meets them: with its own
appends (``LogWriter.on_foreign``), or in :func:`follow`, when the store says the control log
moved. Either way they are folded in the control log's one order, before this node's own
records after them, so the audit feed of every node carries every node's events in that order.

What they change beyond the state needs I/O, and :func:`settle` does it, event by event:

- a mailbox created elsewhere: its key read, its log opened, served from then on;
- one deleted elsewhere: dropped;
- a key changed elsewhere: the public key read again (a change the other node has not finished
  is finished from its staged key file, as an open would);
- messages committed elsewhere: the mailbox's log caught up, so its index serves them (once
  for a run of such events, however many name it);
- a compaction made elsewhere: the log caught up first (so no commit record of a message it
  removed is folded as live), then the ids it removed forgotten.

A POP3 maildrop is locked across nodes (``DataDir.lock_maildrop``) and its mailbox caught up
before the session lists it, so a message another node acknowledged a moment ago is there.
"""

from __future__ import annotations

import trio

from ..events import (
    ControlEvent,
    LogCompacted,
    MailboxCreated,
    MailboxDeleted,
    MailboxKeyReset,
    MailboxKeyRewrapped,
    MessagesCommitted,
)
from ..log import LogWriteError
from ._archive_core import ArchiveCore, logger
from ._archive_recovery import mailbox_public_key, open_mailbox
from ._common import MailboxState
from .message_index import MessageIndex

__all__ = [
    "catch_up",
    "follow",
    "holds_maildrop",
    "housekeeping",
    "lock_maildrop",
    "unlock_maildrop",
]

FOLLOW_WAIT = 1.0  # seconds a wait for another node's commit lasts before it is asked again
# Seconds the follower lets other nodes' commits gather before it reads them: under load one
# read takes in many rounds, not one each (a maildrop's login catches up itself, at once).
FOLLOW_GATHER = 0.05


async def follow(core: ArchiveCore) -> None:
    """Fold what other nodes commit as they commit it, and settle what it changes; runs
    until cancelled. A store that cannot be read is asked again a moment later."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_settle_forever, core)
        control = core.control
        while True:
            moved = await trio.to_thread.run_sync(core.data.wait_for_others, FOLLOW_WAIT)
            seq = moved.get(control.log.log_id)
            if seq is not None and seq > control.log.next_seq:
                await trio.sleep(FOLLOW_GATHER)
                try:
                    await control.catch_up()
                except LogWriteError as exc:
                    logger.warning("event=fleet-follow-failed reason=%r", str(exc))
                    await trio.sleep(FOLLOW_WAIT)


async def catch_up(core: ArchiveCore, box: MailboxState | None = None) -> None:
    """Fold every record other nodes committed to the control log (and settle what that
    changes) and, with ``box``, to that mailbox's log: then this node knows what they know."""
    if not core.data.shared:
        return
    await core.control.catch_up()
    await settle(core)
    if box is not None:
        await _catch_up_box(box)


async def lock_maildrop(core: ArchiveCore, mailbox_id: str) -> bool:
    """Lock a maildrop against other nodes and catch its mailbox up; False when another
    node holds it. Raises LogWriteError when the store cannot be asked."""
    if not core.data.shared:
        return True  # this node is the only one
    box = await core.opened(mailbox_id)
    if not await trio.to_thread.run_sync(core.data.lock_maildrop, box.info.mailbox_id):
        return False
    try:
        await catch_up(core, box)
    except BaseException:
        with trio.CancelScope(shield=True):
            await unlock_maildrop(core, box.info.mailbox_id)
        raise
    return True


async def unlock_maildrop(core: ArchiveCore, mailbox_id: str) -> None:
    if core.data.shared:
        await trio.to_thread.run_sync(core.data.unlock_maildrop, mailbox_id)


async def housekeeping(core: ArchiveCore) -> bool:
    """Whether this node runs the periodic passes (compaction, alarms, signed checkpoints)
    now: always on a data folder, one node at a time on a fleet store. Raises LogWriteError."""
    if not core.data.shared:
        return True
    return await trio.to_thread.run_sync(core.data.housekeeping)


async def holds_maildrop(core: ArchiveCore, mailbox_id: str) -> bool:
    """Whether this node still holds a maildrop it locked: False once another node took it
    while this node's connection holding it was lost. Raises LogWriteError."""
    if not core.data.shared:
        return True
    return await trio.to_thread.run_sync(core.data.holds_maildrop, mailbox_id)


async def settle(core: ArchiveCore) -> None:
    """Do what other nodes' control events folded so far change beyond the state, in
    order, one task at a time; an event is done with once settled (one the store failed
    stays first)."""
    async with core.settling:
        while core.others:
            # A run of commits: each mailbox they name is caught up once for all of them.
            run = 0
            while run < len(core.others) and isinstance(core.others[run], MessagesCommitted):
                run += 1
            if run:
                committed = [e for e in core.others[:run] if isinstance(e, MessagesCommitted)]
                for mailbox_id in dict.fromkeys(
                    commit.mailbox_id for event in committed for commit in event.commits
                ):
                    if (box := core.boxes.get(mailbox_id)) is not None:
                        await _catch_up_box(box)
                del core.others[:run]
            else:
                await _settle_one(core, core.others[0])
                core.others.pop(0)


async def _settle_forever(core: ArchiveCore) -> None:
    while True:
        await core.others_waiting.wait()
        core.others_waiting = trio.Event()
        try:
            await settle(core)
        except LogWriteError as exc:
            logger.warning("event=fleet-follow-failed reason=%r", str(exc))
            await trio.sleep(FOLLOW_WAIT)
            core.others_waiting.set()


async def _settle_one(core: ArchiveCore, event: ControlEvent) -> None:
    match event:
        case MailboxCreated():
            if event.mailbox_id not in core.boxes and event.mailbox_id in core.state.mailboxes:
                await _adopt(core, event.mailbox_id)
        case MailboxDeleted():
            if core.boxes.pop(event.mailbox_id, None) is not None:
                core.notify(event.mailbox_id)
        case MailboxKeyReset() | MailboxKeyRewrapped():
            box = core.boxes.get(event.mailbox_id)
            if box is not None and box.damaged is None:
                key = await trio.to_thread.run_sync(mailbox_public_key, core.data, box.info)
                if isinstance(key, str):
                    core.mark_damaged(box, key)
                else:
                    box.public_key = key
                    core.notify(event.mailbox_id)
        case LogCompacted():
            box = core.boxes.get(event.mailbox_id)
            if box is not None:
                await _catch_up_box(box)
                box.index.forget_expunged(event.message_ids)
                for gap in event.gaps:
                    for seq in range(gap.first_seq, gap.last_seq + 1):
                        box.index.pending_chunks.pop(seq, None)


async def _adopt(core: ArchiveCore, mailbox_id: str) -> None:
    """A mailbox another node created: served here too from now on."""
    info = core.state.mailboxes[mailbox_id]
    key = await trio.to_thread.run_sync(mailbox_public_key, core.data, info)
    box = core.boxes[mailbox_id] = MailboxState(info=info, index=MessageIndex())
    try:
        if isinstance(key, str):
            core.mark_damaged(box, key)
        else:
            box.public_key = key
            await open_mailbox(core, box)
    finally:
        box.opened.set()
    core.notify(mailbox_id)


async def _catch_up_box(box: MailboxState) -> None:
    """Fold what other nodes committed to an open mailbox's log (one being opened reads it
    all anyway)."""
    if box.opened.is_set() and box.writer is not None and box.damaged is None:
        await box.writer.catch_up()
