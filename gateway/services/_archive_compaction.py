"""Compaction: reclaiming the bytes of expunged messages, and of messages whose commit never
came, from a mailbox's sealed segments (SPEC.md 6.4).

Theory of operation
-------------------
A segment (never the one being written) is planned in a worker thread: which records stay
(those of served messages, and every chunk from the first sequence number a message still
being written may use) and which go. It is rewritten when at least ``min_gain`` of it can
go, removed when all of it can. Each cut is recorded in the control log (``LogCompacted``,
with the chain values) before the segment file is replaced, so verify can follow the chain
across it; the replaced file stays for ``StoreConfig.compaction_grace`` (a hot copy or a
protocol worker may still be reading it) and is deleted by a later pass.
"""

from __future__ import annotations

import trio

from ..events import (
    CompactionGap,
    LogCompacted,
    MessageAbandoned,
    MessageStored,
    decode_message_event,
    now,
)
from ..log import (
    FramingError,
    LogCorrupt,
    LogRecord,
    LogWriteError,
    RecordKind,
    StoreLog,
    decode_chunk_body,
)
from ._archive_core import ArchiveCore
from ._common import MailboxState, NoSuchMailbox

__all__ = ["compact", "maintain", "remove_retired"]


async def compact(
    core: ArchiveCore, mailbox_id: str, *, min_gain: float, ended: frozenset[int] | None = None
) -> int:
    """``ended``: on a shared store, the node processes that had ended before this call
    (read here when not given)."""
    box = await core.opened(mailbox_id)
    if box.writer is None:
        return 0
    log = box.writer.log
    reclaimed = 0
    async with box.lock:
        named: dict[int, bytes] | None = None
        if core.data.shared:
            # The node processes that had ended before the catch-up: every commit of theirs
            # is in it. Then what other nodes appended (their segments too) is folded: the
            # log's segments are what this node has read of them.
            if ended is None:
                ended = await trio.to_thread.run_sync(core.data.ended_writers)
            await box.writer.catch_up()
            if len(log.segments) > 1:
                # Other nodes' messages in flight are not known here: only the chunks named
                # by an expunged message's commit record or by a MessageAbandoned, and those
                # of ended node processes, can go (SPEC.md 17.5), wherever that record is.
                named = await trio.to_thread.run_sync(
                    _named_chunks, core, box, log.segments[0], ended
                )
        for segment in log.segments[:-1]:
            reclaimed += await _compact_segment(core, box, log, segment, min_gain, named)
    return reclaimed


async def remove_retired(core: ArchiveCore, mailbox_id: str) -> int:
    box = await core.opened(mailbox_id)
    if box.writer is None:
        return 0
    log = box.writer.log
    cuts = dict(core.state.cuts.get(box.info.mailbox_id, {}))
    removed = await trio.to_thread.run_sync(log.remove_retired, cuts, core.config.compaction_grace)
    return len(removed)


async def maintain(core: ArchiveCore) -> tuple[int, int]:
    reclaimed = deleted = 0
    # Once for the pass: read before any of its catch-ups, it holds for every mailbox.
    ended = await trio.to_thread.run_sync(core.data.ended_writers) if core.data.shared else None
    for info in list(core.state.mailboxes.values()):
        box = core.boxes.get(info.mailbox_id)
        if box is None or not box.opened.is_set():
            continue  # not open yet: the next pass
        try:
            reclaimed += await compact(core, info.mailbox_id, min_gain=0.5, ended=ended)
            deleted += await remove_retired(core, info.mailbox_id)
        except (NoSuchMailbox, LogCorrupt, LogWriteError, OSError):
            continue
    return reclaimed, deleted


async def _compact_segment(
    core: ArchiveCore,
    box: MailboxState,
    log: StoreLog,
    segment: int,
    min_gain: float,
    named: dict[int, bytes] | None,
) -> int:
    """Compact one sealed segment; ``named``: on a shared store, the chunks that may go
    (with their messages' ids), else None."""
    live = box.index.live_seqs()
    # Chunks of messages still being written have no commit yet: keep everything from
    # the first sequence number any of them may have used.
    inflight_from = min((first for first, _chunks in box.inflight.values()), default=None)
    expunged = box.index.expunged
    dropped_ids: set[str] = set()
    following = log.segments[log.segments.index(segment) + 1 :]

    def keep(record: LogRecord) -> bool:
        if record.seq in live:
            return True
        if record.kind == RecordKind.CHUNK:
            if named is not None:
                # ... and only if the chunk is that message's (its body says whose it is).
                try:
                    return decode_chunk_body(record.body)[0] != named.get(record.seq)
                except FramingError:
                    return True  # not a chunk of anyone's: verify reports it
            return inflight_from is not None and record.seq >= inflight_from
        event = decode_message_event(record.body)
        if isinstance(event, MessageStored) and event.message_id in expunged:
            dropped_ids.add(event.message_id)
            return False
        if isinstance(event, MessageAbandoned):
            # It goes with its chunks: when they are all in this segment (they are before
            # it), this cut takes them too.
            return not all(segment <= seq < following[0] for seq in event.chunk_seqs)
        return True  # an event this version does not know: never drop it

    try:
        plan = await trio.to_thread.run_sync(log.plan_compaction, segment, keep)
    except LogWriteError:
        # No room for the compacted copy (a full disk): removals need none, so carry on
        # with the other segments.
        return 0
    if plan is None:
        return 0
    if plan.new_path is not None and plan.dropped_bytes < min_gain * plan.bytes_before:
        await trio.to_thread.run_sync(log.discard_compaction, plan)
        return 0
    try:
        await core.append_control(
            LogCompacted(
                at=now(),
                mailbox_id=box.info.mailbox_id,
                segment=segment,
                generation=plan.generation,
                gaps=tuple(CompactionGap(g.first_seq, g.last_seq, c) for g, c in plan.gaps),
                removed_segment=plan.new_path is None,
                message_ids=tuple(sorted(dropped_ids)),
                bytes_before=plan.bytes_before,
                bytes_after=plan.bytes_after,
            )
        )
    except BaseException:
        await trio.to_thread.run_sync(log.discard_compaction, plan)
        raise
    async with box.io_lock:
        await trio.to_thread.run_sync(log.apply_compaction, plan)
        box.index.relocate(plan.moved)
        box.recovery_due = True  # its recovery point names the segment's old generation
    box.index.forget_expunged(dropped_ids)
    for gap, _chain in plan.gaps:
        for seq in range(gap.first_seq, gap.last_seq + 1):
            box.index.pending_chunks.pop(seq, None)
    return plan.bytes_before - plan.bytes_after


def _named_chunks(
    core: ArchiveCore, box: MailboxState, start: int, ended: frozenset[int]
) -> dict[int, bytes]:
    """The chunks that can go on a shared store, each with its message's id: those the
    commit records of expunged messages name and those a ``MessageAbandoned`` names, read
    from seq ``start`` to the log's end (chunks come without their bodies: one pass over
    the events, cheaper than the segments' own reading), and those the ``ended`` writers
    wrote (a served message's chunks among them stay: they are live)."""
    expunged = box.index.expunged
    named = core.data.chunks_written_by(box.info.mailbox_id, start, ended)
    for record in core.data.records(box.info.mailbox_id, from_seq=start, chunk_bodies=False):
        if record.kind == RecordKind.EVENT:
            event = decode_message_event(record.body)
            if isinstance(event, MessageAbandoned) or (
                isinstance(event, MessageStored) and event.message_id in expunged
            ):
                mid = bytes.fromhex(event.message_id)
                named.update(dict.fromkeys(event.chunk_seqs, mid))
    return named
