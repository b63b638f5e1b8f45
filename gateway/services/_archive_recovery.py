"""Opening a data folder: the control log replayed, then every mailbox log checked against it.

Theory of operation
-------------------
The control log is replayed into the :class:`ControlState` (a torn tail is cut and recorded,
``LogTailTruncated``). Each mailbox is then opened against the control log's witness of what
was acknowledged (SPEC.md 6.3): a key change cut short is settled, the key file must be the
one the log names, damage at the end of its log is moved aside and recorded (``LogDamaged``,
naming the acknowledged messages it lost), commits that were never witnessed are rolled back,
and a log that predates witnesses is anchored (``MessageLogAnchored``). A mailbox that cannot
be opened at all is flagged damaged: it takes no mail and serves none, and the others carry on.
"""

from __future__ import annotations

from pathlib import Path

import trio

from ..crypto import KeyFileCorrupt
from ..events import (
    ROLLED_BACK,
    CommitWitness,
    LogDamaged,
    LogTailTruncated,
    MessageLogAnchored,
    MessagesCommitted,
    MessageStored,
    decode_control_event,
    decode_message_event,
    now,
)
from ..log import DataDir, LogCorrupt, LogRecord, LogWriter, RecordKind, Recovery, SegmentLog
from ._archive_core import ArchiveCore, logger
from ._archive_keys import checked_public_key, settle_staged_key
from ._common import CONTROL_LOG_ID, ArchiveError, MailboxState, StoreConfig
from .projection import MailboxInfo, MessageIndex, StoredMessage

__all__ = ["open_core"]


async def open_core(root: Path, config: StoreConfig) -> ArchiveCore:
    """Lock the data folder (made if need be), replay the control log and open every
    mailbox. Raises DataDirLocked, or LogCorrupt for a control log that does not check out."""
    data = DataDir(root)
    await trio.to_thread.run_sync(data.lock)
    try:
        log, records, recovery = await trio.to_thread.run_sync(
            _open_or_create, data.control_dir, CONTROL_LOG_ID, config.segment_bytes
        )
        core = ArchiveCore(data, config, LogWriter(log))
        for record in records:
            if record.kind == RecordKind.EVENT:
                event = decode_control_event(record.body)
                if event is not None:
                    core.state.apply(event)
        if recovery is not None:
            await _note_recovery(core, "control", recovery)
        for info in list(core.state.mailboxes.values()):
            await _open_mailbox(core, info, control_cut=recovery is not None)
    except BaseException:
        data.unlock()
        raise
    return core


async def _open_mailbox(core: ArchiveCore, info: MailboxInfo, *, control_cut: bool) -> None:
    mailbox_id = info.mailbox_id
    state = core.state
    index = MessageIndex(expunged=set(state.expunged.get(mailbox_id, ())))
    box = MailboxState(info=info, index=index)
    core.boxes[mailbox_id] = box
    witnesses = state.witnessed.get(mailbox_id)
    try:
        await settle_staged_key(core, info)
        box.public_key = await checked_public_key(core, info)
        log, records, recovery = await trio.to_thread.run_sync(
            lambda: SegmentLog.open(
                core.data.mailbox_log_dir(mailbox_id),
                bytes.fromhex(mailbox_id),
                segment_bytes=core.config.segment_bytes,
                cuts=state.cuts.get(mailbox_id, {}),
                acknowledged=state.acknowledged.get(mailbox_id),
            )
        )
    except FileNotFoundError as exc:
        core.mark_damaged(box, f"missing file {Path(exc.filename or '').name!s}")
        return
    except (LogCorrupt, KeyFileCorrupt, ArchiveError) as exc:
        core.mark_damaged(box, str(exc))
        return
    box.writer = LogWriter(log, core.commit_group)
    _fold_messages(index, records)
    if recovery is not None and recovery.damage:
        await _note_damage(core, box, recovery)
    elif recovery is not None:
        await _note_recovery(core, mailbox_id, recovery)
    if witnesses is None:
        await core.append_control(
            MessageLogAnchored(
                at=now(), mailbox_id=mailbox_id, seq=log.next_seq - 1, chain=log.chain
            )
        )
        return
    unwitnessed = [m for m in index.messages.values() if m.message_id not in witnesses]
    if not unwitnessed:
        return
    if control_cut:
        # The control log lost its own tail: a witness may have been in it. Keeping
        # a message twice is better than losing one that was acknowledged.
        await _witness_now(core, box, unwitnessed, records)
    else:
        await core.expunge_ids(box, [m.message_id for m in unwitnessed], ROLLED_BACK)


async def _note_damage(core: ArchiveCore, box: MailboxState, recovery: Recovery) -> None:
    mailbox_id = box.info.mailbox_id
    witnesses = core.state.witnessed.get(mailbox_id, {})
    lost = tuple(
        sorted(
            m
            for m, (seq, _chain) in witnesses.items()
            if seq >= recovery.first_lost_seq and m not in box.index.expunged
        )
    )
    moved = ""
    if recovery.moved_to is not None:
        moved = str(recovery.moved_to.relative_to(core.data.root))
    logger.error(
        "event=log-damaged mailbox=%s segment=%s offset=%d lost_messages=%d moved_to=%s reason=%r",
        mailbox_id,
        recovery.path.name,
        recovery.offset,
        len(lost),
        moved or "-",
        recovery.damage,
    )
    await core.append_control(
        LogDamaged(
            at=now(),
            mailbox_id=mailbox_id,
            segment=recovery.path.name,
            offset=recovery.offset,
            dropped_bytes=recovery.dropped_bytes,
            first_lost_seq=recovery.first_lost_seq,
            chain=recovery.chain,
            lost_message_ids=lost,
            moved_to=moved,
            reason=recovery.damage,
        )
    )


async def _witness_now(
    core: ArchiveCore, box: MailboxState, messages: list[StoredMessage], records: list[LogRecord]
) -> None:
    chains = {r.seq: r.chain for r in records if r.kind == RecordKind.EVENT}
    await core.append_control(
        MessagesCommitted(
            at=now(),
            commits=tuple(
                CommitWitness(box.info.mailbox_id, m.message_id, m.seq, chains[m.seq])
                for m in messages
            ),
        )
    )


async def _note_recovery(core: ArchiveCore, log: str, recovery: Recovery) -> None:
    core.recoveries.append(recovery)
    await core.append_control(
        LogTailTruncated(
            at=now(),
            log=log,
            segment=recovery.path.name,
            offset=recovery.offset,
            dropped_bytes=recovery.dropped_bytes,
        )
    )


def _fold_messages(index: MessageIndex, records: list[LogRecord]) -> None:
    for record in records:
        if record.kind == RecordKind.CHUNK:
            index.add_chunk(record.seq, record.location)
        elif record.kind == RecordKind.EVENT:
            event = decode_message_event(record.body)
            if isinstance(event, MessageStored):
                index.add_commit(record.seq, record.location, event)


def _open_or_create(
    directory: Path, log_id: bytes, segment_bytes: int
) -> tuple[SegmentLog, list[LogRecord], Recovery | None]:
    if not directory.exists():
        return SegmentLog.create(directory, log_id, segment_bytes=segment_bytes), [], None
    return SegmentLog.open(directory, log_id, segment_bytes=segment_bytes)
