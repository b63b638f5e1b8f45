"""The archive: mailboxes, their keys and their message logs, behind one async API.

Theory of operation
-------------------
The control log is replayed into a :class:`ControlState` on open; each mailbox's message log
into a :class:`MessageIndex`. Every change goes through here and is an event appended (and
made durable) *before* the in-memory state changes, so the state is always a projection of
what is on disk. Blocking work (files, fsync, Argon2id, sealing of large pieces) runs in
worker threads; the trio loop only routes.

A message is written as it arrives: its sealed chunks go to the mailbox log as they fill (no
fsync of their own), and :meth:`MessageWriter.commit` appends the commit record and waits for
the fdatasync that makes the whole message durable. A message whose commit never became
durable is invisible: its chunks are orphans that compaction reclaims.

Key changes are two-phase: the new key file is staged beside the old one (durable), the
control event is appended, then the staged file is renamed over the old one. A crash in
between is resolved on open by the control log: the staged file is taken if its wrap id is
the one the log names, dropped otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path

import trio

from ..crypto import (
    KeyFile,
    KeyFileCorrupt,
    MailboxPrivateKey,
    MailboxPublicKey,
    MessageOpener,
    SealedMessage,
    create_mailbox_key,
    decode_key_file,
    encode_key_file,
    generate_password,
    rewrap,
    unlock,
)
from ..events import (
    ROLLED_BACK,
    SYSTEM,
    Actor,
    CommitWitness,
    CompactionGap,
    ControlEvent,
    Envelope,
    LogCompacted,
    LogDamaged,
    LogTailTruncated,
    MailboxCreated,
    MailboxDeleted,
    MailboxKeyReset,
    MailboxKeyRewrapped,
    MailboxStatus,
    MailboxUpdated,
    MessageLogAnchored,
    MessagesCommitted,
    MessagesExpunged,
    MessageStored,
    decode_control_event,
    decode_envelope,
    decode_message_event,
    encode_event,
    now,
)
from ..ids import new_mailbox_id, new_message_id, parse_message_id
from ..log import (
    DataDir,
    Location,
    LogCorrupt,
    LogRecord,
    LogWriteError,
    LogWriter,
    RecordKind,
    Recovery,
    SegmentLog,
    decode_chunk_body,
)
from ._common import (
    CONTROL_LOG_ID,
    ArchiveError,
    InvalidValue,
    MailboxState,
    MailboxStateConflict,
    MailboxUnavailable,
    MessageTooLarge,
    NoSuchMailbox,
    StoreConfig,
    WitnessedCopy,
    find_mailbox,
    wrap_id,
)
from .intake import PendingMessage
from .keyforge import KeyForge
from .projection import ControlState, MailboxInfo, MessageIndex, StoredMessage
from .writer import MessageWriter, SealTarget

logger = logging.getLogger(__name__)

__all__ = [
    "CONTROL_LOG_ID",
    "Archive",
    "ArchiveError",
    "InvalidValue",
    "MailboxStateConflict",
    "MailboxUnavailable",
    "MessageTooLarge",
    "MessageWriter",
    "NoSuchMailbox",
    "StoreConfig",
    "find_mailbox",
    "sealed_of",
    "wrap_id",
]


class Archive:
    def __init__(self, data: DataDir, config: StoreConfig, control: LogWriter) -> None:
        self.data = data
        self.config = config
        self.control = control
        # One group commit for every log of this archive (SPEC.md 6.1).
        self.commit_group = control.group
        self.state = ControlState()
        self._mailboxes: dict[str, MailboxState] = {}
        # Set by whoever runs a KeyForge next to the archive (the server, the benchmark).
        self.key_forge: KeyForge | None = None
        self.recoveries: list[Recovery] = []
        # Told the id of every mailbox whose state changed (created, updated, new key,
        # damaged, deleted): the journal pushes it to the protocol workers. Must not block.
        self.mailbox_listeners: list[Callable[[str], None]] = []

    # -- open and close ------------------------------------------------------------------------

    @classmethod
    async def open(cls, root: Path, config: StoreConfig | None = None) -> Archive:
        config = config or StoreConfig()
        data = DataDir(root)
        await trio.to_thread.run_sync(data.lock)
        try:
            log, records, recovery = await trio.to_thread.run_sync(
                _open_or_create, data.control_dir, CONTROL_LOG_ID, config.segment_bytes
            )
            archive = cls(data, config, LogWriter(log))
            for record in records:
                if record.kind == RecordKind.EVENT:
                    event = decode_control_event(record.body)
                    if event is not None:
                        archive.state.apply(event)
            if recovery is not None:
                await archive._note_recovery("control", recovery)
            for info in list(archive.state.mailboxes.values()):
                await archive._open_mailbox(info, control_cut=recovery is not None)
        except BaseException:
            data.unlock()
            raise
        return archive

    async def aclose(self) -> None:
        for box in self._mailboxes.values():
            if box.writer is not None:
                box.writer.log.close()
        self.control.log.close()
        self.data.unlock()

    async def _open_mailbox(self, info: MailboxInfo, *, control_cut: bool) -> MailboxState:
        """Open one mailbox log against the control log's witness of what was acknowledged
        (SPEC.md 6.3): damage at its end is moved aside and recorded, commits that were
        never witnessed are rolled back, a log that predates witnesses is anchored."""
        mailbox_id = info.mailbox_id
        index = MessageIndex(expunged=set(self.state.expunged.get(mailbox_id, ())))
        box = MailboxState(info=info, index=index)
        self._mailboxes[mailbox_id] = box
        witnesses = self.state.witnessed.get(mailbox_id)
        try:
            await self._settle_staged_key(info)
            box.public_key = await self._checked_public_key(info)
            log, records, recovery = await trio.to_thread.run_sync(
                lambda: SegmentLog.open(
                    self.data.mailbox_log_dir(mailbox_id),
                    bytes.fromhex(mailbox_id),
                    segment_bytes=self.config.segment_bytes,
                    cuts=self.state.cuts.get(mailbox_id, {}),
                    acknowledged=self.state.acknowledged.get(mailbox_id),
                )
            )
        except FileNotFoundError as exc:
            return self._mark_damaged(box, f"missing file {Path(exc.filename or '').name!s}")
        except (LogCorrupt, KeyFileCorrupt, ArchiveError) as exc:
            return self._mark_damaged(box, str(exc))
        box.writer = LogWriter(log, self.commit_group)
        _fold_messages(index, records)
        if recovery is not None and recovery.damage:
            await self._note_damage(box, recovery)
        elif recovery is not None:
            await self._note_recovery(mailbox_id, recovery)
        if witnesses is None:
            await self.append_control(
                MessageLogAnchored(
                    at=now(), mailbox_id=mailbox_id, seq=log.next_seq - 1, chain=log.chain
                )
            )
            return box
        unwitnessed = [m for m in index.messages.values() if m.message_id not in witnesses]
        if not unwitnessed:
            return box
        if control_cut:
            # The control log lost its own tail: a witness may have been in it. Keeping
            # a message twice is better than losing one that was acknowledged.
            await self._witness_now(box, unwitnessed, records)
        else:
            await self._expunge_ids(box, [m.message_id for m in unwitnessed], ROLLED_BACK)
        return box

    async def _checked_public_key(self, info: MailboxInfo) -> MailboxPublicKey:
        """The mailbox's public key, from a key file that must be the one the control log
        names: a swapped file would seal new mail to someone else's key."""
        key_bytes = await trio.to_thread.run_sync(self.data.read_key_file, info.mailbox_id)
        key = decode_key_file(key_bytes)
        if key.key_id.hex() != info.key_id or wrap_id(key_bytes) != info.wrap_id:
            raise ArchiveError("key file is not the one the control log names")
        return MailboxPublicKey.from_key_file(key)

    def _mark_damaged(self, box: MailboxState, why: str) -> MailboxState:
        box.damaged = why
        logger.error("event=mailbox-damaged mailbox=%s reason=%r", box.info.mailbox_id, why)
        self._notify(box.info.mailbox_id)
        return box

    def _notify(self, mailbox_id: str) -> None:
        for listener in self.mailbox_listeners:
            listener(mailbox_id)

    async def _note_damage(self, box: MailboxState, recovery: Recovery) -> None:
        mailbox_id = box.info.mailbox_id
        witnesses = self.state.witnessed.get(mailbox_id, {})
        lost = tuple(
            sorted(
                m
                for m, (seq, _chain) in witnesses.items()
                if seq >= recovery.first_lost_seq and m not in box.index.expunged
            )
        )
        moved = ""
        if recovery.moved_to is not None:
            moved = str(recovery.moved_to.relative_to(self.data.root))
        logger.error(
            "event=log-damaged mailbox=%s segment=%s offset=%d lost_messages=%d moved_to=%s "
            "reason=%r",
            mailbox_id,
            recovery.path.name,
            recovery.offset,
            len(lost),
            moved or "-",
            recovery.damage,
        )
        await self.append_control(
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
        self, box: MailboxState, messages: list[StoredMessage], records: list[LogRecord]
    ) -> None:
        chains = {r.seq: r.chain for r in records if r.kind == RecordKind.EVENT}
        await self.append_control(
            MessagesCommitted(
                at=now(),
                commits=tuple(
                    CommitWitness(box.info.mailbox_id, m.message_id, m.seq, chains[m.seq])
                    for m in messages
                ),
            )
        )

    async def _settle_staged_key(self, info: MailboxInfo) -> None:
        staged = await trio.to_thread.run_sync(self.data.staged_key_file, info.mailbox_id)
        if staged is None:
            return
        if wrap_id(staged) == info.wrap_id:
            await trio.to_thread.run_sync(self.data.commit_key_file, info.mailbox_id)
        else:
            await trio.to_thread.run_sync(self.data.discard_staged_key_file, info.mailbox_id)

    async def _note_recovery(self, log: str, recovery: Recovery) -> None:
        self.recoveries.append(recovery)
        await self.append_control(
            LogTailTruncated(
                at=now(),
                log=log,
                segment=recovery.path.name,
                offset=recovery.offset,
                dropped_bytes=recovery.dropped_bytes,
            )
        )

    # -- the control log -----------------------------------------------------------------------

    async def append_control(self, event: ControlEvent, *, durable: bool = True) -> None:
        """Append an event to the control log and fold it into the state. ``durable=False``
        (audit records that acknowledge nothing) returns once written; the next durable
        round of the group commit makes it durable with everything else."""
        await self.control.append([(RecordKind.EVENT, encode_event(event))], durable=durable)
        self.state.apply(event)
        if isinstance(event, _MAILBOX_CHANGES):
            self._notify(event.mailbox_id)

    # -- mailboxes -----------------------------------------------------------------------------

    def mailboxes(self) -> list[MailboxInfo]:
        return sorted(self.state.mailboxes.values(), key=lambda m: m.created_at)

    def mailbox(self, mailbox_id: str) -> MailboxInfo:
        return self._box(mailbox_id).info

    def damaged(self, mailbox_id: str) -> str | None:
        """Why the mailbox cannot take mail or be served, if it cannot."""
        return self._box(mailbox_id).damaged

    def damage_report(self, mailbox_id: str) -> str | None:
        """Why the mailbox is flagged damaged: it cannot be served, or damage found at its
        log's end lost acknowledged messages (``LogDamaged``, kept on record for good)."""
        box = self._box(mailbox_id)
        if box.damaged is not None:
            return box.damaged
        found = self.state.damage.get(box.info.mailbox_id)
        if not found:
            return None
        lost = sum(len(d.lost_message_ids) for d in found)
        return (
            f"damage found at the end of its log {len(found)} time(s), {lost} acknowledged "
            f"message(s) lost; the bytes are kept in {found[-1].moved_to or '(nothing left)'}"
        )

    def public_key(self, mailbox_id: str) -> MailboxPublicKey | None:
        """The key new mail for the mailbox is sealed to (None while it is damaged)."""
        return self._box(mailbox_id).public_key

    async def key_file(self, mailbox_id: str) -> bytes:
        """The mailbox's key file, checked against the control log (for a login elsewhere:
        the password never comes here). Raises MailboxUnavailable when it is damaged."""
        box = self._box(mailbox_id)
        await self._read_key(box)
        return await trio.to_thread.run_sync(self.data.read_key_file, box.info.mailbox_id)

    def record_file(self, mailbox_id: str, location: Location) -> str:
        """The name of the segment file that holds a record, in the mailbox's log folder."""
        box = self._box(mailbox_id)
        if box.writer is None:
            raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is damaged: {box.damaged}")
        return box.writer.log.file_name(location.segment)

    def _box(self, mailbox_id: str) -> MailboxState:
        return find_mailbox(self._mailboxes, mailbox_id)

    async def create_mailbox(
        self,
        name: str,
        description: str = "",
        *,
        password: str | None = None,
        actor: Actor = SYSTEM,
    ) -> tuple[MailboxInfo, str]:
        """Create a mailbox with a fresh key pair. Returns it and its password (generated
        unless given): the only time the password exists outside the caller's hands."""
        name, description = (
            _check_text("name", name, 200),
            _check_text("description", description, 2000),
        )
        password = password if password is not None else generate_password()
        mailbox_id = new_mailbox_id()
        key = await trio.to_thread.run_sync(
            create_mailbox_key, bytes.fromhex(mailbox_id), password, self.config.kdf
        )
        key_bytes = encode_key_file(key)
        log = await trio.to_thread.run_sync(
            lambda: self.data.create_mailbox(
                mailbox_id,
                key_bytes,
                bytes.fromhex(mailbox_id),
                segment_bytes=self.config.segment_bytes,
            )
        )
        event = MailboxCreated(
            at=now(),
            actor=actor,
            mailbox_id=mailbox_id,
            name=name,
            description=description,
            key_id=key.key_id.hex(),
            wrap_id=wrap_id(key_bytes),
            witnessed=True,
        )
        await self.append_control(event)
        info = self.state.mailboxes[mailbox_id]
        self._mailboxes[mailbox_id] = MailboxState(
            info=info,
            index=MessageIndex(),
            writer=LogWriter(log, self.commit_group),
            public_key=MailboxPublicKey.from_key_file(key),
        )
        self._notify(mailbox_id)
        return info, password

    async def update_mailbox(
        self,
        mailbox_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        status: MailboxStatus | None = None,
        actor: Actor = SYSTEM,
    ) -> MailboxInfo:
        box = self._box(mailbox_id)
        info = box.info
        event = MailboxUpdated(
            at=now(),
            actor=actor,
            mailbox_id=info.mailbox_id,
            name=info.name if name is None else _check_text("name", name, 200),
            description=info.description
            if description is None
            else _check_text("description", description, 2000),
            status=info.status if status is None else MailboxStatus(status),
        )
        await self.append_control(event)
        return info

    async def change_password(
        self,
        mailbox_id: str,
        old_password: str,
        new_password: str | None = None,
        *,
        actor: Actor = SYSTEM,
    ) -> str:
        """Re-wrap the private key under a new password; every message stays readable.
        Raises crypto.WrongPassword if the old password is wrong."""
        box = self._box(mailbox_id)
        new_password = new_password if new_password is not None else generate_password()
        async with box.lock:
            key = await self._read_key(box)
            new_key = await trio.to_thread.run_sync(
                lambda: rewrap(
                    key,
                    bytes.fromhex(box.info.mailbox_id),
                    old_password,
                    new_password,
                    self.config.kdf,
                )
            )
            key_bytes = encode_key_file(new_key)
            await self._replace_key(
                box,
                key_bytes,
                MailboxKeyRewrapped(
                    at=now(),
                    actor=actor,
                    mailbox_id=box.info.mailbox_id,
                    key_id=new_key.key_id.hex(),
                    wrap_id=wrap_id(key_bytes),
                ),
            )
        return new_password

    async def reset_password(
        self, mailbox_id: str, new_password: str | None = None, *, actor: Actor = SYSTEM
    ) -> tuple[str, int]:
        """A new key pair under a new password, for when the old password is lost. Every
        message stored so far becomes unreadable, forever; returns (password, how many)."""
        box = self._box(mailbox_id)
        new_password = new_password if new_password is not None else generate_password()
        async with box.lock:
            mailbox_bytes = bytes.fromhex(box.info.mailbox_id)
            key = await trio.to_thread.run_sync(
                create_mailbox_key, mailbox_bytes, new_password, self.config.kdf
            )
            key_bytes = encode_key_file(key)
            new_key_id = key.key_id.hex()
            # Messages sealed to the old key that are past their witness are counted below;
            # those not yet there are refused at it (SPEC.md 6.5).
            box.resetting = True
            try:
                while box.witnessing:
                    await box.witnesses_idle.wait()
                lost = [m for m in box.index.messages.values() if m.key_id != new_key_id]
                await self._replace_key(
                    box,
                    key_bytes,
                    MailboxKeyReset(
                        at=now(),
                        actor=actor,
                        mailbox_id=box.info.mailbox_id,
                        old_key_id=box.info.key_id,
                        key_id=new_key_id,
                        wrap_id=wrap_id(key_bytes),
                        unreadable_messages=len(lost),
                        unreadable_bytes=sum(m.size for m in lost),
                    ),
                )
                box.public_key = MailboxPublicKey.from_key_file(key)
            finally:
                box.resetting = False
            self._notify(box.info.mailbox_id)
        return new_password, len(lost)

    async def _read_key(self, box: MailboxState) -> KeyFile:
        if box.damaged is not None:
            raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is damaged: {box.damaged}")
        key_bytes = await trio.to_thread.run_sync(self.data.read_key_file, box.info.mailbox_id)
        key = decode_key_file(key_bytes)
        if wrap_id(key_bytes) != box.info.wrap_id:
            self._mark_damaged(box, "key file is not the one the control log names")
            raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is damaged: {box.damaged}")
        return key

    async def _replace_key(self, box: MailboxState, key_bytes: bytes, event: ControlEvent) -> None:
        mailbox_id = box.info.mailbox_id
        await trio.to_thread.run_sync(self.data.stage_key_file, mailbox_id, key_bytes)
        try:
            await self.append_control(event)
        except BaseException:
            await trio.to_thread.run_sync(self.data.discard_staged_key_file, mailbox_id)
            raise
        await trio.to_thread.run_sync(self.data.commit_key_file, mailbox_id)

    async def delete_mailbox(
        self, mailbox_id: str, *, purge: bool = False, actor: Actor = SYSTEM
    ) -> int:
        """Delete a suspended mailbox. Refuses while messages remain unless ``purge``."""
        box = self._box(mailbox_id)
        async with box.lock:
            info = box.info
            if info.status != MailboxStatus.SUSPENDED:
                raise MailboxStateConflict("a mailbox must be suspended before it can be deleted")
            remaining = list(box.index.messages)
            if remaining and not purge:
                raise MailboxStateConflict(
                    f"mailbox still holds {len(remaining)} messages; "
                    "delete with purge to discard them"
                )
            await self.append_control(
                MailboxDeleted(
                    at=now(),
                    actor=actor,
                    mailbox_id=info.mailbox_id,
                    purged_messages=len(remaining),
                )
            )
            del self._mailboxes[info.mailbox_id]
            if box.writer is not None:
                box.writer.log.close()
            await trio.to_thread.run_sync(self.data.remove_mailbox, info.mailbox_id)
        return len(remaining)

    async def unlock(
        self, mailbox_id: str, password: str, *, limiter: trio.CapacityLimiter | None = None
    ) -> MailboxPrivateKey:
        """Open the mailbox's private key (Argon2id in a worker thread, at most as many at
        once as ``limiter`` allows). Raises crypto.WrongPassword."""
        box = self._box(mailbox_id)
        key = await self._read_key(box)
        return await trio.to_thread.run_sync(
            unlock, key, bytes.fromhex(box.info.mailbox_id), password, limiter=limiter
        )

    # -- messages ------------------------------------------------------------------------------

    def messages(self, mailbox_id: str) -> list[StoredMessage]:
        """The mailbox's messages now, oldest first."""
        return sorted(self._box(mailbox_id).index.messages.values(), key=lambda m: m.seq)

    def has_source(self, mailbox_id: str, source_key: str) -> bool:
        """Whether the proxy already stored the upstream message with this key."""
        return source_key in self._box(mailbox_id).index.sources

    def begin_message(self, mailbox_ids: Sequence[str], source_key: str = "") -> MessageWriter:
        """Start writing one message to one or more mailboxes (sealed once per mailbox, in
        this process); ``source_key`` marks a proxy copy (see ``MessageStored.source_key``)."""
        boxes = self.accepting(mailbox_ids)
        forge = self.key_forge
        targets = []
        for box in boxes:
            assert box.public_key is not None
            mailbox_bytes = bytes.fromhex(box.info.mailbox_id)
            prepared = forge.take(box.public_key, mailbox_bytes) if forge else None
            message_id = prepared.message_id.hex() if prepared else new_message_id()
            targets.append(SealTarget(box.info.mailbox_id, box.public_key, message_id, prepared))
        pending = self.begin_pending(
            [b.info.mailbox_id for b in boxes], [t.message_id for t in targets], source_key
        )
        return MessageWriter(
            targets, pending, max_bytes=self.config.max_message_bytes, source_key=source_key
        )

    def accepting(self, mailbox_ids: Sequence[str]) -> list[MailboxState]:
        """The mailboxes a message may go to, each once. Raises MailboxUnavailable for a
        suspended or damaged one, NoSuchMailbox, or ArchiveError for none at all."""
        boxes: dict[str, MailboxState] = {}
        for mailbox_id in mailbox_ids:
            box = self._box(mailbox_id)
            if box.info.status != MailboxStatus.ACTIVE:
                raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is suspended")
            if box.writer is None or box.public_key is None:
                raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is damaged: {box.damaged}")
            boxes.setdefault(box.info.mailbox_id, box)
        if not boxes:
            raise ArchiveError("a message needs at least one mailbox")
        return list(boxes.values())

    def begin_pending(
        self, mailbox_ids: Sequence[str], message_ids: Sequence[str], source_key: str = ""
    ) -> PendingMessage:
        """The journal's half of a message whose sealing happens elsewhere (a protocol
        worker): one message id per mailbox, chosen by the sealing side."""
        boxes = self.accepting(mailbox_ids)
        if len(boxes) != len(message_ids) or len(set(message_ids)) != len(message_ids):
            raise ArchiveError("one distinct message id per mailbox")
        for message_id in message_ids:
            parse_message_id(message_id)
        return PendingMessage(self, boxes, message_ids, source_key)

    async def witness(self, copies: Sequence[WitnessedCopy]) -> None:
        """The commit point of a message (SPEC.md 6.2): its commit records are durable in
        every mailbox; append their witness to the control log, durably, then serve them.
        A mailbox whose key was reset meanwhile refuses (the copy is sealed to the retired
        key): every copy is rolled back and MailboxUnavailable raised."""
        for copy in copies:
            box = copy.box
            if box.resetting or copy.stored.key_id != box.info.key_id:
                await self.roll_back(copies)
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
            await self.append_control(event)
        except LogWriteError:
            await self.roll_back(copies)
            raise
        finally:
            for copy in copies:
                copy.box.witnessing -= 1
                if copy.box.witnessing == 0:
                    copy.box.witnesses_idle.set()
                    copy.box.witnesses_idle = trio.Event()
        for copy in copies:
            copy.box.index.messages[copy.stored.message_id] = copy.stored
            if copy.source_key:
                copy.box.index.sources.add(copy.source_key)

    async def roll_back(self, copies: Sequence[WitnessedCopy]) -> None:
        """Expunge commit records that will never be witnessed (best effort: a copy left
        unrolled is rolled back when the log is next opened)."""
        for copy in copies:
            try:
                await self._expunge_ids(copy.box, [copy.stored.message_id], ROLLED_BACK)
            except LogWriteError:
                continue

    async def expunge(
        self, mailbox_id: str, message_ids: Sequence[str], *, actor: Actor = SYSTEM
    ) -> int:
        """Delete messages: durable before this returns, not served from then on."""
        box = self._box(mailbox_id)
        present = [m for m in dict.fromkeys(message_ids) if m in box.index.messages]
        return await self._expunge_ids(box, present, actor=actor)

    async def _expunge_ids(
        self, box: MailboxState, message_ids: list[str], reason: str = "", actor: Actor = SYSTEM
    ) -> int:
        if not message_ids:
            return 0
        ids = tuple(message_ids)
        size = sum(m.size for i in ids if (m := box.index.messages.get(i)) is not None)
        await self.append_control(
            MessagesExpunged(
                at=now(),
                actor=actor,
                mailbox_id=box.info.mailbox_id,
                message_ids=ids,
                bytes=size,
                reason=reason,
            )
        )
        box.index.expunge(ids)
        return len(ids)

    async def read_message(
        self, mailbox_id: str, message_id: str, key: MailboxPrivateKey
    ) -> AsyncGenerator[bytes, None]:
        """Decrypt one message piece by piece (each at most 256 KiB). Raises
        crypto.MessageCorrupt on any tampering, LogCorrupt on a damaged record."""
        box, stored, log = self._stored(mailbox_id, message_id)
        mid = bytes.fromhex(stored.message_id)

        def open_one(opener: MessageOpener, location: Location, index: int) -> bytes:
            _header, body = log.read(location)
            chunk_mid, chunk_index, ciphertext = decode_chunk_body(body)
            if chunk_mid != mid or chunk_index != index:
                raise LogCorrupt(log.directory, location.offset, "chunk record mismatch")
            return opener.open_chunk(bytes(ciphertext))

        def open_first() -> tuple[MessageOpener, bytes | None]:
            # The commit record, the data key (HPKE) and the first chunk in one hand-off to
            # a worker thread: a message under 256 KiB costs one.
            opener = self._opener_sync(box, stored, log, key)
            first = open_one(opener, stored.chunks[0], 0) if stored.chunks else None
            return opener, first

        async with box.io_lock:
            opener, piece = await trio.to_thread.run_sync(open_first)
        if piece is not None:
            yield piece
        for index in range(1, len(stored.chunks)):
            # Locations are looked up afresh for every chunk: compaction may have moved them.
            async with box.io_lock:
                piece = await trio.to_thread.run_sync(open_one, opener, stored.chunks[index], index)
            yield piece
        opener.finish()

    async def read_envelope(
        self, mailbox_id: str, message_id: str, key: MailboxPrivateKey
    ) -> Envelope:
        box, stored, log = self._stored(mailbox_id, message_id)
        opener = await self._opener(box, stored, log, key)
        return decode_envelope(opener.meta())

    def _stored(
        self, mailbox_id: str, message_id: str
    ) -> tuple[MailboxState, StoredMessage, SegmentLog]:
        box = self._box(mailbox_id)
        stored = box.index.messages.get(message_id)
        if stored is None or box.writer is None:
            raise ArchiveError(f"no message {message_id} in mailbox {box.info.mailbox_id}")
        return box, stored, box.writer.log

    async def _opener(
        self, box: MailboxState, stored: StoredMessage, log: SegmentLog, key: MailboxPrivateKey
    ) -> MessageOpener:
        async with box.io_lock:
            return await trio.to_thread.run_sync(self._opener_sync, box, stored, log, key)

    @staticmethod
    def _opener_sync(
        box: MailboxState, stored: StoredMessage, log: SegmentLog, key: MailboxPrivateKey
    ) -> MessageOpener:
        """Read the message's commit record back and open its data key (in a worker
        thread, under the mailbox's io_lock)."""
        _header, body = log.read(stored.commit)
        event = decode_message_event(body)
        if not isinstance(event, MessageStored) or event.message_id != stored.message_id:
            raise LogCorrupt(log.directory, stored.commit.offset, "commit record mismatch")
        return MessageOpener(
            key,
            bytes.fromhex(box.info.mailbox_id),
            bytes.fromhex(stored.message_id),
            sealed_of(event),
        )

    # -- compaction ----------------------------------------------------------------------------

    async def compact(self, mailbox_id: str, *, min_gain: float = 0.5) -> int:
        """Reclaim the bytes of expunged messages, and of messages whose commit never came,
        from the mailbox's sealed segments. A segment is rewritten when at least ``min_gain``
        of it can go, removed when all of it can. Returns the bytes reclaimed.

        Each cut is recorded in the control log (LogCompacted, with the chain values) before
        the segment file is replaced, so verify can follow the chain across it.
        """
        box = self._box(mailbox_id)
        if box.writer is None:
            return 0
        log = box.writer.log
        reclaimed = 0
        async with box.lock:
            for segment in log.segments[:-1]:
                reclaimed += await self._compact_segment(box, log, segment, min_gain)
        return reclaimed

    async def _compact_segment(
        self, box: MailboxState, log: SegmentLog, segment: int, min_gain: float
    ) -> int:
        live: set[int] = set()
        for message in box.index.messages.values():
            live.add(message.seq)
            live.update(location.seq for location in message.chunks)
        # Chunks of messages still being written have no commit yet: keep everything from
        # the first sequence number any of them may have used.
        inflight_from = min(box.inflight.values(), default=None)
        expunged = box.index.expunged
        dropped_ids: set[str] = set()

        def keep(record: LogRecord) -> bool:
            if record.seq in live:
                return True
            if record.kind == RecordKind.CHUNK:
                return inflight_from is not None and record.seq >= inflight_from
            event = decode_message_event(record.body)
            if isinstance(event, MessageStored) and event.message_id in expunged:
                dropped_ids.add(event.message_id)
                return False
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
            await self.append_control(
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
            for message in box.index.messages.values():
                message.commit = plan.moved.get(message.seq, message.commit)
                message.chunks = [plan.moved.get(c.seq, c) for c in message.chunks]
        for gap, _chain in plan.gaps:
            for seq in range(gap.first_seq, gap.last_seq + 1):
                box.index.pending_chunks.pop(seq, None)
        return plan.bytes_before - plan.bytes_after

    async def maintain(self) -> tuple[int, int]:
        """One pass of housekeeping over every mailbox: compaction, then deletion of the
        segment files whose grace period is over. Returns (bytes reclaimed, files deleted).
        A mailbox that fails is skipped; the next pass tries again."""
        reclaimed = deleted = 0
        for info in list(self.state.mailboxes.values()):
            try:
                reclaimed += await self.compact(info.mailbox_id)
                deleted += await self.remove_retired(info.mailbox_id)
            except (NoSuchMailbox, LogCorrupt, LogWriteError, OSError):
                continue
        return reclaimed, deleted

    async def remove_retired(self, mailbox_id: str) -> int:
        """Delete segment files superseded by compaction once their grace period is over
        (``StoreConfig.compaction_grace``). Returns how many went."""
        box = self._box(mailbox_id)
        if box.writer is None:
            return 0
        log = box.writer.log
        cuts = dict(self.state.cuts.get(box.info.mailbox_id, {}))
        removed = await trio.to_thread.run_sync(
            log.remove_retired, cuts, self.config.compaction_grace
        )
        return len(removed)


_MAILBOX_CHANGES = (
    MailboxCreated,
    MailboxUpdated,
    MailboxKeyRewrapped,
    MailboxKeyReset,
    MailboxDeleted,
    LogDamaged,
)


def sealed_of(event: MessageStored) -> SealedMessage:
    return SealedMessage(
        key_id=bytes.fromhex(event.key_id),
        wrapped_key=event.wrapped_key,
        envelope=event.envelope,
        chunk_count=len(event.chunk_seqs),
        size=event.size,
        sealed_size=event.sealed_size,
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


def _check_text(what: str, value: str, limit: int) -> str:
    """A mailbox name or description (SPEC.md 10): no controls (C0, DEL, C1), no line or
    paragraph separators, no bidirectional formatting controls, which would let it forge
    lines and cells wherever it is shown; a description may hold tabs and newlines."""
    from .._text import first_unsafe  # noqa: PLC0415 - kept beside its one use

    if not isinstance(value, str) or len(value) > limit:
        raise InvalidValue(f"{what} must be text of at most {limit} characters")
    bad = first_unsafe(value, allowed="\t\n" if what == "description" else "")
    if bad is not None:
        raise InvalidValue(
            f"{what} must not contain control, line-separator or bidirectional formatting "
            f"characters (U+{ord(bad):04X})"
        )
    return value
