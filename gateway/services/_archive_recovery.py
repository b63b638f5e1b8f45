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

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from ..crypto import KeyFileCorrupt, MailboxPublicKey
from ..events import (
    ROLLED_BACK,
    CommitWitness,
    LogDamaged,
    LogTailTruncated,
    MessageLogAnchored,
    MessagesCommitted,
    decode_control_event,
    now,
)
from ..log import (
    BASE_FILE,
    RECOVERY_FILE,
    DataDir,
    LogCorrupt,
    LogRecord,
    LogWriter,
    Opened,
    RecordKind,
    Recovery,
    RecoveryPoint,
    StaleRecoveryPoint,
    StoreLog,
)
from ._archive_core import ArchiveCore, logger
from ._archive_keys import checked_public_key, settle_staged_key
from ._common import ArchiveError, MailboxState, StoreConfig
from .message_index import MessageIndex, StoredMessage
from .projection import ControlState, MailboxInfo, decode_control_state

__all__ = ["mailbox_public_key", "open_core", "open_mailbox", "open_mailboxes"]

_OPENING = 4  # mailboxes opened at once


async def open_core(data: DataDir, config: StoreConfig) -> ArchiveCore:
    """Lock the data folder (made if need be), replay the control log (from its recovery
    point where it has a good one, SPEC.md 6.7) and read every mailbox's key; the mailbox
    logs are opened by :func:`open_mailboxes`. Raises DataDirLocked, or LogCorrupt for a
    control log that does not check out."""
    await trio.to_thread.run_sync(data.lock)
    try:
        starts = _control_starts(data)
        while True:  # the last start (the first record) raises rather than stop
            state, point = await trio.to_thread.run_sync(next, starts)  # reads a file
            try:
                log, records, recovery = await trio.to_thread.run_sync(
                    partial(data.open_control_log, segment_bytes=config.segment_bytes, resume=point)
                )
                break
            except StaleRecoveryPoint as exc:
                _unused("control", exc)
        _warn_without_tree("control", log)
        core = ArchiveCore(data, config, LogWriter(log))
        core.state = state
        for record in records:
            if record.kind == RecordKind.EVENT:
                event = decode_control_event(record.body)
                if event is not None:
                    core.state.apply(event)
        core.control_cut = recovery is not None
        if recovery is not None:
            await _note_recovery(core, "control", recovery)
        infos = list(core.state.mailboxes.values())
        keys = await trio.to_thread.run_sync(_public_keys, data, infos)
        for info, key in zip(infos, keys, strict=True):
            box = core.boxes[info.mailbox_id] = MailboxState(info=info, index=MessageIndex())
            if isinstance(key, str):
                core.mark_damaged(box, key)
                box.opened.set()
            else:
                box.public_key = key
                core.to_open.append(info.mailbox_id)
    except BaseException:
        data.unlock()
        raise
    return core


async def open_mailboxes(core: ArchiveCore) -> None:
    """Open every mailbox log not open yet, a few at a time, those asked for
    (``ArchiveCore.opened``) first; returns when all are. Each one's open runs to its end even
    when this is cancelled: a log half opened must not be served nor checkpointed."""
    started = trio.current_time()
    taken: set[str] = set()

    async def runner() -> None:
        while core.to_open:
            mailbox_id = core.to_open.popleft()
            box = core.boxes.get(mailbox_id)
            if box is None or box.opened.is_set() or mailbox_id in taken:
                continue  # deleted, or asked for while it was being opened
            taken.add(mailbox_id)
            with trio.CancelScope(shield=True):
                try:
                    await open_mailbox(core, box)
                finally:
                    box.opened.set()

    async with trio.open_nursery() as nursery:
        for _ in range(_OPENING):
            nursery.start_soon(runner)
    logger.info(
        "event=mailboxes-opened count=%d seconds=%.2f", len(taken), trio.current_time() - started
    )


def _public_keys(data: DataDir, infos: list[MailboxInfo]) -> list[MailboxPublicKey | str]:
    """Each mailbox's public key (a key change cut short settled first), or why its key file
    cannot be used: all a protocol worker needs to seal mail to it."""
    return [mailbox_public_key(data, info) for info in infos]


def mailbox_public_key(data: DataDir, info: MailboxInfo) -> MailboxPublicKey | str:
    """One mailbox's public key, or why its key file cannot be used (blocking)."""
    try:
        settle_staged_key(data, info)
        return checked_public_key(data, info)
    except FileNotFoundError as exc:
        return f"missing file {Path(exc.filename or '').name!s}"
    except (KeyFileCorrupt, ArchiveError) as exc:
        return str(exc)


def _control_starts(data: DataDir) -> Iterator[tuple[ControlState, RecoveryPoint | None]]:
    """Where the control log may be read from, best first: its recovery point, its base
    (where its history starts when older segments were archived, SPEC.md 6.8), its first
    record. Each with the projection saved there."""
    for name in (RECOVERY_FILE, BASE_FILE):
        try:
            point = data.read_point(None, name)
            if point is not None:
                yield decode_control_state(point.state), point
        except (StaleRecoveryPoint, ValueError) as exc:
            _unused("control", exc)
    yield ControlState(), None


def _unused(log: str, why: Exception) -> None:
    logger.warning(
        "event=recovery-point-unused log=%s reason=%r; reading the log whole", log, str(why)
    )


def _saved_index(core: ArchiveCore, mailbox_id: str) -> tuple[MessageIndex, RecoveryPoint | None]:
    expunged = core.state.expunged.get(mailbox_id, ())
    try:
        point = core.data.read_point(mailbox_id)
        if point is not None:
            return MessageIndex.restore(point.state, expunged), point
    except (StaleRecoveryPoint, ValueError) as exc:
        _unused(mailbox_id, exc)
    return MessageIndex(expunged), None


@dataclass(slots=True)
class _MailboxFiles:
    index: MessageIndex
    point: RecoveryPoint | None
    log: StoreLog
    records: list[LogRecord]
    recovery: Recovery | None


def _open_files(core: ArchiveCore, mailbox_id: str) -> _MailboxFiles:
    """Everything opening a mailbox log does on disk, in one worker thread: its recovery
    point read, its log opened from it (or whole, when it does not match)."""
    state = core.state
    index, point = _saved_index(core, mailbox_id)

    def open_log(resume: RecoveryPoint | None) -> Opened:
        return core.data.open_mailbox_log(
            mailbox_id,
            segment_bytes=core.config.segment_bytes,
            cuts=state.cuts.get(mailbox_id, {}),
            acknowledged=state.acknowledged.get(mailbox_id),
            resume=resume,
        )

    try:
        opened = open_log(point)
    except StaleRecoveryPoint as exc:
        _unused(mailbox_id, exc)
        index, point = MessageIndex(state.expunged.get(mailbox_id, ())), None
        opened = open_log(None)
    return _MailboxFiles(index, point, *opened)


async def open_mailbox(core: ArchiveCore, box: MailboxState) -> None:
    """Open one mailbox's log against the control log (6.3). Its index and writer are in
    place before anything it appends (a rollback's expunge folds into the index)."""
    mailbox_id = box.info.mailbox_id
    state = core.state
    witnesses = state.witnessed.get(mailbox_id)
    try:
        files = await trio.to_thread.run_sync(_open_files, core, mailbox_id)
    except FileNotFoundError as exc:
        core.mark_damaged(box, f"missing file {Path(exc.filename or '').name!s}")
        return
    except (LogCorrupt, ArchiveError) as exc:
        core.mark_damaged(box, str(exc))
        return
    index, point, log, records, recovery = (
        files.index,
        files.point,
        files.log,
        files.records,
        files.recovery,
    )
    box.index = index
    writer = core.attach_log(box, log)
    _warn_without_tree(mailbox_id, log)
    if point is not None:
        box.recovery_seq, box.recovery_size = point.seq, len(point.state)
    index.fold(records)
    if recovery is not None and recovery.damage:
        await _note_damage(core, box, recovery)
    elif recovery is not None:
        await _note_recovery(core, mailbox_id, recovery)
    if core.data.shared:
        # A fleet store commits a message's records and its witness in one transaction
        # (SPEC.md 17.6): no commit there lacks a witness, and none is judged. (This node's
        # view of the witnesses may lack those of commits it had not folded when a recovery
        # point was made.) The log is read to its end, and the control log after it.
        await writer.catch_up()
        await core.control.catch_up()
    elif witnesses is None:
        await core.append_control(
            MessageLogAnchored(
                at=now(), mailbox_id=mailbox_id, seq=log.next_seq - 1, chain=log.chain
            )
        )
    else:
        await _settle_tail(core, box, point, records, witnesses)
    # Its index knows its witnesses and expunged ids from here on.
    state.forget_messages(mailbox_id)


async def _settle_tail(
    core: ArchiveCore,
    box: MailboxState,
    point: RecoveryPoint | None,
    records: list[LogRecord],
    witnesses: dict[str, tuple[int, bytes]],
) -> None:
    """Roll back (or, after the control log lost its tail, witness) the commits no witness
    names. Only those read from the log now can be unwitnessed: a recovery point holds
    witnessed ones only. Below ``settled`` (the control log's recovery point) every commit not
    expunged was witnessed; from there on the witnesses say."""
    settled = core.state.settled.get(box.info.mailbox_id, 0)
    unwitnessed = [
        m
        for m in box.index.after((point.seq if point is not None else 0) - 1)
        if m.seq >= settled and m.message_id not in witnesses
    ]
    if not unwitnessed:
        return
    if core.control_cut:
        # The control log lost its own tail: a witness may have been in it. Keeping
        # a message twice is better than losing one that was acknowledged.
        await _witness_now(core, box, unwitnessed, records)
    else:
        await core.expunge_ids(box, [m.message_id for m in unwitnessed], ROLLED_BACK)


async def _note_damage(core: ArchiveCore, box: MailboxState, recovery: Recovery) -> None:
    mailbox_id = box.info.mailbox_id
    witnesses = core.state.witnessed.get(mailbox_id, {})
    if recovery.first_lost_seq < core.state.settled.get(mailbox_id, 0):
        # The control log's recovery point vouches for those commits without naming them:
        # the lost ones are named from the whole control log.
        witnesses = await trio.to_thread.run_sync(_every_witness, core, mailbox_id)
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


def _every_witness(core: ArchiveCore, mailbox_id: str) -> dict[str, tuple[int, bytes]]:
    """Every witness of a mailbox's commits the control log holds, read from its files (from
    its base when older history was archived: those before it are not named, 6.8)."""
    state, start = ControlState(), 0
    base = core.data.read_point(None, BASE_FILE)
    if base is not None:
        state, start = decode_control_state(base.state), base.seq
    for record in core.data.records(None, from_seq=start):
        if record.kind == RecordKind.EVENT:
            event = decode_control_event(record.body)
            if event is not None:
                state.apply(event)
    return state.witnessed.get(mailbox_id, {})


def _warn_without_tree(where: str, log: StoreLog) -> None:
    if log.tree_missing:
        logger.warning(
            "event=tree-unknown log=%s reason=%r (no checkpoint of it is signed)",
            where,
            log.tree_missing,
        )
