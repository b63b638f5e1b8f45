"""Group commit: many trio tasks append to one log, one write and one fdatasync per batch.

Theory of operation
-------------------
An appender puts a ticket in the queue. If nobody is flushing, it becomes the leader: it takes
the whole queue as one batch, hands it to a worker thread (``SegmentLog.append``: one write,
one fdatasync), wakes every ticket of the batch and steps down. While a batch is on disk,
new tickets pile up and become the next batch, so under load the number of fsyncs per second
stays flat while the records per fsync grow (the classic group commit of databases).

A leader only ever flushes the batch holding its own ticket, then the next waiter takes over:
no session does other sessions' I/O for long. A cancelled appender leaves its ticket in the
batch; the record is still written (a client that gave up may find its message stored, never
a message half stored).

A batch that fails is undone on disk by ``SegmentLog`` and bumps :attr:`LogWriter.epoch`.
Multi-record writes (a message's chunks, then its commit record) pass the epoch they started
in; a commit whose earlier chunks were in a failed batch is refused instead of pointing at
records that are not there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from ._files import AppendItem, Location, LogWriteError
from ._segment_log import SegmentLog

__all__ = ["LogWriter", "StaleEpoch"]


# All logs share a few flush threads. The disk takes parallel fdatasyncs well, but dozens of
# threads fighting for the GIL (framing, hashing) cost more than they overlap.
_flush_threads = trio.CapacityLimiter(8)


class StaleEpoch(LogWriteError):
    """The records this commit depends on were lost in a failed batch."""


@dataclass(eq=False, slots=True)
class _Ticket:
    items: Sequence[AppendItem]
    durable: bool
    epoch: int | None
    finished: bool = False
    locations: list[Location] = field(default_factory=list)
    error: LogWriteError | None = None


class LogWriter:
    def __init__(self, log: SegmentLog) -> None:
        self.log = log
        self.epoch = 0
        self._queue: list[_Ticket] = []
        self._flushing = False
        self._flushed = trio.Event()
        self._batches = 0
        self._records = 0

    async def append(
        self, items: Sequence[AppendItem], *, durable: bool = True, epoch: int | None = None
    ) -> list[Location]:
        """Append records, contiguously and in order. Returns once they are written and, if
        ``durable``, fdatasynced. Raises LogWriteError (nothing of these records is visible),
        or StaleEpoch if ``epoch`` is given and a batch failed since."""
        ticket = _Ticket(items, durable, epoch)
        self._queue.append(ticket)
        try:
            while not ticket.finished:
                if self._flushing:
                    await self._flushed.wait()
                else:
                    await self._lead()
        except trio.Cancelled:
            # Not yet taken into a batch: withdraw it, so "cancelled" means "not written".
            if ticket in self._queue:
                self._queue.remove(ticket)
            raise
        if ticket.error is not None:
            raise ticket.error
        return ticket.locations

    async def _lead(self) -> None:
        self._flushing = True
        try:
            batch, self._queue = self._queue, []
            live = []
            for ticket in batch:
                if ticket.epoch is not None and ticket.epoch != self.epoch:
                    ticket.error = StaleEpoch("records of this message were lost in a failed write")
                    ticket.finished = True
                else:
                    live.append(ticket)
            if live:
                await self._write(live)
        finally:
            self._flushing = False
            self._flushed.set()
            self._flushed = trio.Event()

    async def _write(self, batch: list[_Ticket]) -> None:
        items = [item for ticket in batch for item in ticket.items]
        sync = any(ticket.durable for ticket in batch)
        try:
            locations = await trio.to_thread.run_sync(
                lambda: self.log.append(items, sync=sync), limiter=_flush_threads
            )
        except LogWriteError as exc:
            self.epoch += 1
            for ticket in batch:
                ticket.error = exc
                ticket.finished = True
            return
        start = 0
        for ticket in batch:
            ticket.locations = locations[start : start + len(ticket.items)]
            start += len(ticket.items)
            ticket.finished = True
        self._batches += 1
        self._records += len(items)

    def statistics(self) -> dict[str, int]:
        return {
            "batches": self._batches,
            "records": self._records,
            "queued": len(self._queue),
            "next_seq": self.log.next_seq,
        }
