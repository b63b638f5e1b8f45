"""Checkpoints: recovery points for the logs that moved on since their last one (SPEC.md 6.7).

Theory of operation
-------------------
A checkpoint holds the commit group (no round runs, so no log's end moves), makes the logs it
covers durable, and takes in one step, with no await between, each chosen mailbox's index
(with the chunks of messages still being written), the control-log projection and every log's
position. The files are written after the group is let go: the mailboxes' first, the control
log's last, so a crash between them leaves mailbox recovery points newer than the control
log's, which the open accepts (the reverse it would not: 6.7).

The control log's recovery point carries, per mailbox, the seq that mailbox's own recovery
point covers, the expunged ids whose records are still in its log, and the witnesses of the
messages committed after that seq (none, usually: the checkpoint made a recovery point for
every mailbox that moved). That is everything the next open needs to take the mailboxes'
recovery points as they are and check only the records after them.

A mailbox is due when its log grew by ``RECOVERY_BYTES`` (or twice its last recovery point's
size, for a huge index) since its recovery point, when it has none, or when its index changed
without the log growing (an expunge, a compaction); the control log when it grew by
``RECOVERY_BYTES`` or a mailbox was due. ``everything`` (a clean shutdown) makes one for every
log that moved at all.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import trio

from ..log import LogWriteError, RecoveryPoint, StoreLog
from ._archive_core import ArchiveCore
from ._common import MailboxState
from .projection import ControlState, encode_control_state

__all__ = ["RECOVERY_BYTES", "checkpoint"]

logger = logging.getLogger("gateway.services.archive")

RECOVERY_BYTES = 8 << 20
_WRITERS = 8  # recovery point files written at once


def _settled(box: MailboxState) -> bool:
    """Every commit record in the mailbox's log is witnessed or rolled back and expunged."""
    return box.witnessing == 0 and not box.unsettled


def _due(box: MailboxState, everything: bool) -> bool:
    if not box.opened.is_set() or box.writer is None or box.damaged is not None:
        return False
    if not _settled(box):
        return False
    log = box.writer.log
    if box.recovery_seq < 0 or box.recovery_due:
        return True
    grown = log.written - box.recovery_written
    if everything:
        return grown > 0 or log.next_seq != box.recovery_seq
    return grown >= max(RECOVERY_BYTES, 2 * box.recovery_size)


async def checkpoint(core: ArchiveCore, *, everything: bool = False) -> int:
    """Make recovery points for the logs that are due; returns how many were written."""
    boxes = [box for box in list(core.boxes.values()) if _due(box, everything)]
    control = core.control.log
    control_grown = control.written - core.control_recovery_written
    if not boxes and control_grown < (1 if everything else RECOVERY_BYTES):
        return 0
    async with core.commit_group.held():
        logs = [box.writer.log for box in boxes if box.writer is not None] + [control]
        try:
            await trio.to_thread.run_sync(_sync_all, logs)
        except LogWriteError as exc:
            logger.warning("event=checkpoint-skipped reason=%r", str(exc))
            return 0
        # From here to the end of the block nothing awaits: one instant of every log.
        points: list[tuple[MailboxState, RecoveryPoint, int]] = []
        for box in boxes:
            if box.writer is None or box.damaged is not None or not _settled(box):
                continue  # changed while the logs were synced
            pending = [c for _first, chunks in box.inflight.values() for c in chunks]
            log = box.writer.log
            points.append((box, log.recovery_point(box.index.snapshot(pending)), log.written))
        control_point = control.recovery_point(encode_control_state(_saved_state(core)))
        control_written = control.written
    written = 0
    limiter = trio.CapacityLimiter(_WRITERS)

    async def save(box: MailboxState, point: RecoveryPoint, at_bytes: int) -> None:
        nonlocal written
        assert box.writer is not None
        try:
            size = await trio.to_thread.run_sync(
                box.writer.log.save_recovery_point, point, limiter=limiter
            )
        except OSError as exc:
            # Its older recovery point (or none) stands; the control log's does not
            # depend on it.
            logger.warning(
                "event=recovery-point-failed mailbox=%s reason=%r", box.info.mailbox_id, str(exc)
            )
            return
        box.recovery_seq, box.recovery_written, box.recovery_size = point.seq, at_bytes, size
        box.recovery_due = False
        written += 1

    async with trio.open_nursery() as nursery:  # the disk overlaps their fsyncs well
        for box, point, at_bytes in points:
            nursery.start_soon(save, box, point, at_bytes)
    try:
        await trio.to_thread.run_sync(control.save_recovery_point, control_point)
    except OSError as exc:
        logger.warning("event=recovery-point-failed log=control reason=%r", str(exc))
        return written
    core.control_recovery_written = control_written
    if core.config.control_history_bytes:
        await _archive_history(core, control_point)
    return written + 1


async def _archive_history(core: ArchiveCore, point: RecoveryPoint) -> None:
    """Move the control segments the recovery point just saved makes unneeded to start
    with, beyond the history kept, into control/archive/ (SPEC.md 6.8)."""
    control = core.control.log
    async with core.commit_group.held():  # no round may roll a segment meanwhile
        try:
            moved = await trio.to_thread.run_sync(
                control.archive_history, point, core.config.control_history_bytes
            )
        except OSError as exc:
            logger.warning("event=control-archive-failed reason=%r", str(exc))
            return
    if moved:
        logger.info(
            "event=control-archived segments=%d history_from=%d",
            len(moved),
            control.segments[0],
        )


def _sync_all(logs: list[StoreLog]) -> None:
    """fdatasync every log, several at a time (fdatasync lets go of the GIL)."""
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="gateway-checkpoint") as pool:
        list(pool.map(lambda log: log.sync(), logs))


def _saved_state(core: ArchiveCore) -> ControlState:
    """The control-log projection as its recovery point carries it: per open mailbox, the
    seq below which every commit record is settled, the expunged ids still in its log, and
    the witnesses of the commits from that seq on (none, unless some were in flight)."""
    live = core.state
    saved = dataclasses.replace(live, witnessed={}, expunged={}, settled={}, indexed=set())
    for mailbox_id, box in core.boxes.items():
        if mailbox_id not in live.indexed:
            # Not open yet, or damaged: the state still keeps what it was opened with (its
            # settled seq, the witnesses after it, its expunged ids), and that goes along.
            if mailbox_id in live.witnessed:
                saved.witnessed[mailbox_id] = dict(live.witnessed[mailbox_id])
            saved.expunged[mailbox_id] = set(live.expunged.get(mailbox_id, ()))
            if mailbox_id in live.settled:
                saved.settled[mailbox_id] = live.settled[mailbox_id]
            continue
        assert box.writer is not None
        if box.index.expunged:
            saved.expunged[mailbox_id] = set(box.index.expunged)
        settled = box.writer.log.next_seq if _settled(box) else max(box.recovery_seq, 0)
        saved.settled[mailbox_id] = settled
        if mailbox_id in live.witnessed:
            saved.witnessed[mailbox_id] = {
                m.message_id: (m.seq, b"") for m in box.index.after(settled - 1)
            }
    return saved
