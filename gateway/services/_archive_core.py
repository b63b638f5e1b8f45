"""What every part of the archive works on: the data folder, the control log and its
projection, and the live state of each open mailbox.

Theory of operation
-------------------
:class:`ArchiveCore` is the archive's shared state and the few operations every part of it
needs: find a mailbox, append a control event (durable before the state changes, so the state
is always a projection of what is on disk), tell listeners a mailbox changed, flag a mailbox
damaged, and expunge. The parts that use it (``_archive_recovery``, ``_archive_keys``,
``_archive_reads``, ``_archive_compaction``) are functions over it; :class:`archive.Archive`
is the facade the rest of the gateway calls.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import trio

from ..events import (
    SYSTEM,
    Actor,
    ControlEvent,
    LogCompacted,
    LogDamaged,
    MailboxCreated,
    MailboxDeleted,
    MailboxKeyReset,
    MailboxKeyRewrapped,
    MailboxUpdated,
    MessagesCommitted,
    MessagesExpunged,
    decode_control_event,
    encode_event,
    now,
)
from ..log import AppendItem, DataDir, LogRecord, LogWriter, RecordKind, Recovery, StoreLog
from ._common import MailboxState, MailboxUnavailable, StoreConfig, find_mailbox
from .projection import ControlState

__all__ = ["ArchiveCore"]

logger = logging.getLogger("gateway.services.archive")

# Control events after which the journal pushes the mailbox's view to the protocol workers.
_MAILBOX_CHANGES = (
    MailboxCreated,
    MailboxUpdated,
    MailboxKeyRewrapped,
    MailboxKeyReset,
    MailboxDeleted,
    LogDamaged,
)
# Control events of another node's that change more than the state (``_archive_shared``).
_ELSEWHERE = (
    MailboxCreated,
    MailboxDeleted,
    MailboxKeyRewrapped,
    MailboxKeyReset,
    MessagesCommitted,
    LogCompacted,
)


class ArchiveCore:
    def __init__(self, data: DataDir, config: StoreConfig, control: LogWriter[StoreLog]) -> None:
        self.data = data
        self.config = config
        self.control = control
        # Every round of control records is folded into the state by the round itself, in
        # log order, before any appender resumes: the state is always the projection of the
        # log up to its end (a recovery point takes both at once, SPEC.md 6.7).
        control.observer = self._written
        # Other nodes' control records (a fleet store, SPEC.md 17.5): folded the same way,
        # before this node's own of the same round; what they change beyond the state
        # waits in ``others`` for ``_archive_shared`` (it needs I/O).
        control.on_foreign = self._written_elsewhere
        self.others: list[ControlEvent] = []
        self.others_waiting = trio.Event()
        self.settling = trio.Lock()  # one task settles them at a time
        # Told every round of control records after that (the audit feed).
        self.control_observers: list[Callable[[list[LogRecord], bool], None]] = []
        # One group commit for every log of this archive (SPEC.md 6.1).
        self.commit_group = control.group
        self.state = ControlState()
        self.boxes: dict[str, MailboxState] = {}
        # Mailboxes not opened yet, in the order they are opened; one asked for goes first
        # (``_archive_recovery.open_mailboxes``).
        self.to_open: deque[str] = deque()
        # Whether the control log lost a torn tail at this open (6.3: commits not witnessed
        # are witnessed then, not rolled back).
        self.control_cut = False
        self.recoveries: list[Recovery] = []
        # The control log's bytes written when its recovery point was made (SPEC.md 6.7).
        self.control_recovery_written = 0
        # Told the id of every mailbox whose state changed (created, updated, new key,
        # damaged, deleted): the journal pushes it to the protocol workers. Must not block.
        self.mailbox_listeners: list[Callable[[str], None]] = []

    def box(self, mailbox_id: str) -> MailboxState:
        """A mailbox's live state, by its id in any accepted spelling, open or not (its info
        and public key are there from the start). Raises NoSuchMailbox."""
        return find_mailbox(self.boxes, mailbox_id)

    def open_box(self, mailbox_id: str) -> MailboxState:
        """A mailbox whose log is open (or that was found damaged). Raises NoSuchMailbox, or
        MailboxUnavailable while it is still being opened (:meth:`opened` waits instead)."""
        box = self.box(mailbox_id)
        if not box.opened.is_set():
            raise MailboxUnavailable(f"mailbox {box.info.mailbox_id} is being opened")
        return box

    async def opened(self, mailbox_id: str) -> MailboxState:
        """A mailbox once its log is open (or it was found damaged); one not opened yet
        is opened next. Raises NoSuchMailbox."""
        box = self.box(mailbox_id)
        if not box.opened.is_set():
            self.to_open.appendleft(box.info.mailbox_id)
            await box.opened.wait()
        return box

    def attach_log(self, box: MailboxState, log: StoreLog) -> LogWriter[StoreLog]:
        """The mailbox's log, appended through the archive's group commit; records other
        nodes commit to it are folded into its index (a fleet store)."""
        writer = box.writer = LogWriter(log, self.commit_group)
        writer.on_foreign = box.index.fold  # the index is in place before its log
        return writer

    def close(self) -> None:
        """Close every log and release the data folder."""
        for box in self.boxes.values():
            if box.writer is not None:
                box.writer.log.close()
        self.control.log.close()
        self.data.unlock()

    async def append_control(
        self, event: ControlEvent | Sequence[ControlEvent], *, durable: bool = True
    ) -> None:
        """``Archive.append_control``: folded into the state by :meth:`_written`."""
        events = event if isinstance(event, Sequence) else [event]
        items: list[AppendItem] = [(RecordKind.EVENT, encode_event(e)) for e in events]
        if durable:
            await self.control.append(items)
        else:
            await self.control.append_lazily(items)

    def _written(self, records: list[LogRecord], durable: bool) -> None:
        self._fold(records, durable)

    def _fold(self, records: list[LogRecord], durable: bool) -> list[ControlEvent]:
        events = []
        for record in records:
            if record.kind == RecordKind.EVENT and (event := decode_control_event(record.body)):
                events.append(event)
                self.state.apply(event)
                if isinstance(event, MessagesExpunged) and (
                    box := self.boxes.get(event.mailbox_id)
                ):
                    box.index.expunge(event.message_ids)  # with the record, not after it
                    box.recovery_due = True
                if isinstance(event, _MAILBOX_CHANGES) and event.mailbox_id in self.boxes:
                    self.notify(event.mailbox_id)  # a new one: once it is in place
        for observer in self.control_observers:
            observer(records, durable)
        return events

    def _written_elsewhere(self, records: list[LogRecord]) -> None:
        """Records another node committed (durable, as everything it commits)."""
        events = self._fold(records, True)
        self.others += [e for e in events if isinstance(e, _ELSEWHERE)]
        if self.others:
            self.others_waiting.set()

    def notify(self, mailbox_id: str) -> None:
        for listener in self.mailbox_listeners:
            listener(mailbox_id)

    def mark_damaged(self, box: MailboxState, why: str) -> MailboxState:
        """Take the mailbox out of service (no mail in, none served) until it is repaired."""
        box.damaged = why
        logger.error("event=mailbox-damaged mailbox=%s reason=%r", box.info.mailbox_id, why)
        self.notify(box.info.mailbox_id)
        return box

    @staticmethod
    def unavailable(box: MailboxState) -> MailboxUnavailable:
        """The error for a damaged mailbox asked to serve."""
        return MailboxUnavailable(f"mailbox {box.info.mailbox_id} is damaged: {box.damaged}")

    async def expunge_ids(
        self, box: MailboxState, message_ids: list[str], reason: str = "", actor: Actor = SYSTEM
    ) -> int:
        """Expunge these messages of the mailbox: durable in the control log, then no longer
        served. Returns how many."""
        if not message_ids:
            return 0
        ids = tuple(message_ids)
        size = sum(m.size for i in ids if (m := box.index.get(i)) is not None)
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
        return len(ids)
