"""The audit feed: the control log's records, replayed from any sequence number, then live.

Theory of operation
-------------------
The hub is the control log's observer (``Archive.observe_control``): after every round of
the group commit it is handed the round's records with their chain values, in order, in the
trio thread, and fans them out to each subscription's bounded queue with ``send_nowait``. It
never waits: a subscription whose queue is full is dropped with a reason (its reader closes
the connection saying so), so a slow auditor can never hold up mail intake.

Only durable records go out: a record written without fsync (audit records that acknowledge
nothing, such as ``SmtpSessionEnded``) waits for the next round that syncs the control log,
and while anyone is subscribed :meth:`AuditHub.run` forces such a round within
``flush_after`` seconds. A remote auditor therefore never sees a record that a crash could
still take back (which would look like tampering when the sequence number is reused).

A subscriber first registers (so nothing published from then on is missed), then reads the
history below the registration point from the files (``Archive.read_control``, in a worker
thread, in batches), then drains its queue: every record exactly once, in order.
A subscriber that asks for a ``since`` beyond the log's end gets no history and waits: its
live part begins at ``since``, and the records before it are not offered (they were not asked
for: ``audit tail --follow --since N`` prints nothing before N).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from ..events import decode_control_event
from ..log import LogRecord, RecordKind
from .archive import Archive

__all__ = ["AuditHub", "AuditRecord", "Subscription"]

HISTORY_BATCH = 500


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    chain: bytes
    body: bytes  # the record body exactly as stored
    event: dict[str, Any] | None  # decoded; None for an event type this version does not know

    @classmethod
    def of(cls, record: LogRecord) -> AuditRecord:
        try:
            event = decode_control_event(record.body)
        except msgspec.DecodeError:
            event = None
        return cls(
            record.seq,
            record.chain,
            record.body,
            None if event is None else msgspec.to_builtins(event),
        )

    def matches(self, mailbox: str | None, types: frozenset[str]) -> bool:
        event = self.event
        if types and (event is None or event.get("type") not in types):
            return False
        if mailbox is None:
            return True
        if event is None:
            return False
        return (
            event.get("mailbox_id") == mailbox
            or mailbox in event.get("mailbox_ids", ())
            or event.get("log") == mailbox
        )


@dataclass(eq=False, slots=True)
class Subscription:
    id: int
    mailbox: str | None
    types: frozenset[str]
    start_seq: int  # live records begin here (none below it is offered); history is below
    send: trio.MemorySendChannel[AuditRecord]
    receive: trio.MemoryReceiveChannel[AuditRecord]
    dropped: str | None = None
    ended: bool = False  # unsubscribed: its reader stops at the next record
    finished: trio.Event = field(default_factory=trio.Event)  # dropped or unsubscribed

    def offer(self, record: AuditRecord) -> bool:
        """Queue a record if it matches; False if this drops the subscription."""
        if record.seq < self.start_seq:  # before a ``since`` beyond the end: not asked for
            return True
        if self.dropped is not None or not record.matches(self.mailbox, self.types):
            return True
        try:
            self.send.send_nowait(record)
        except trio.WouldBlock:
            self.dropped = (
                f"audit subscriber fell behind by more than "
                f"{self.send.statistics().max_buffer_size} records; "
                f"resubscribe from seq {record.seq}"
            )
            self.send.close()
            self.finished.set()
            return False
        except trio.BrokenResourceError:
            self.send.close()
        return True


@dataclass(eq=False, slots=True)
class AuditHub:
    archive: Archive
    queue_size: int = 10_000
    flush_after: float = 0.5
    next_seq: int = 0  # the first record not yet published
    dropped: int = 0  # subscriptions dropped for falling behind, since start
    _subscriptions: dict[int, Subscription] = field(default_factory=dict)
    _pending: list[LogRecord] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _flush_wanted: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.next_seq = self.archive.next_control_seq
        self.archive.observe_control(self._observe)

    def _observe(self, records: list[LogRecord], durable: bool) -> None:
        self._pending.extend(r for r in records if r.kind == RecordKind.EVENT)
        if records:
            self.next_seq = records[-1].seq + 1
        if not self._subscriptions:
            self._pending.clear()
            return
        if not durable:
            self._flush_wanted.set()
            return
        pending, self._pending = self._pending, []
        for record in pending:
            audit = AuditRecord.of(record)
            for subscription in self._subscriptions.values():
                if not subscription.offer(audit):
                    self.dropped += 1

    async def run(self) -> None:
        """While anyone listens, make written-but-not-synced records durable (and so
        published) within ``flush_after`` seconds."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            await trio.sleep(self.flush_after)
            if self._pending and self._subscriptions:
                await self.archive.sync_control()

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def subscribe(
        self, mailbox: str | None, types: frozenset[str], *, since: int | None = None
    ) -> Subscription:
        """Register a subscription. Its live part begins at the first record not yet
        published, or at ``since`` if that is further on (nothing before it is offered)."""
        send, receive = trio.open_memory_channel[AuditRecord](self.queue_size)
        # Records written but waiting for their fsync go to the live part, not the history.
        start = self._pending[0].seq if self._pending else self.next_seq
        if since is not None:
            start = max(start, since)
        subscription = Subscription(next(self._ids), mailbox, types, start, send, receive)
        self._subscriptions[subscription.id] = subscription
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription. Its reader is not cancelled (a send cut off halfway would break
        the connection's TLS stream): it sees ``ended`` or the closed queue and returns."""
        self._subscriptions.pop(subscription.id, None)
        subscription.ended = True
        subscription.send.close()
        subscription.finished.set()

    async def history(
        self, from_seq: int, until_seq: int
    ) -> AsyncGenerator[list[AuditRecord], None]:
        """The control log's event records from ``from_seq`` below ``until_seq``, read from
        the files in batches. Raises LogCorrupt if the log does not check out."""
        if from_seq >= until_seq:
            return  # nothing asked for is written yet (a ``since`` at or beyond the end)
        records = self.archive.read_control(from_seq)

        def next_batch() -> list[AuditRecord]:
            batch = []
            for record in records:
                if record.seq >= until_seq:
                    break
                if record.kind == RecordKind.EVENT:
                    batch.append(AuditRecord.of(record))
                    if len(batch) >= HISTORY_BATCH:
                        break
            return batch

        while batch := await trio.to_thread.run_sync(next_batch):
            yield batch
            if batch[-1].seq >= until_seq - 1:
                return
