"""Group commit: many trio tasks append to many logs; one hand-off to a worker thread, one
write per log and one fdatasync per log per round.

Theory of operation
-------------------
An appender puts a ticket in its log's queue and marks the log dirty in the shared
:class:`CommitGroup`. If nobody is flushing, it becomes the leader: it takes every dirty log's
queue, hands the round to a worker thread (each log's batch written with one ``writev``, then
every log holding a durable record fdatasynced, in parallel), wakes every ticket of the round
and steps down. While a round is on disk, new tickets pile up and become the next round, so
under load the number of fsyncs per second stays flat while the records per fsync grow (the
classic group commit of databases), across mailboxes as well as within one. What a round does
in its worker thread is ``_commit_round``.

A record may depend on records of other logs (a message's witness in the control log on its
commit records in the mailbox logs, SPEC.md 6.2): :meth:`CommitGroup.append_then` queues them
together and the round writes them in two phases, in the same worker thread: first every log's
ordinary batch, fdatasynced; then the dependent records, built from the chain values just
written (so they can name them) and fdatasynced in turn. A dependent record is never written
unless every record it depends on is durable, and costs no thread hand-off of its own.

**A shared store** (the fleet store, SPEC.md 17.5) differs in three ways the writer handles
without knowing which store it drives. A log's appends open a transaction that every log of
the round shares (``uncommitted``): the round reserves its logs in log-id order first (two
nodes lock them in one order, so their rounds never deadlock), and a round with dependents
commits once, after the dependents are appended, so nothing of it (a message's commit records
without their witness) is ever visible to another node alone. Other nodes append to the same
logs: the records they committed come back with an append (``foreign``), and
:meth:`LogWriter.catch_up` fetches them when this node is idle; :attr:`LogWriter.on_foreign`
folds them, always before this node's own records of the round.

A record that acknowledges nothing (an audit record) may be appended *lazily*: it does not
start a round of its own but rides with the next one somebody else leads, and leads one itself
only if none came within :data:`LINGER` seconds. Under load that takes most audit records out
of the rounds (each round costs a thread hand-off); when idle they reach the disk a few
milliseconds later.

A leader flushes one round, then the next waiter takes over: no session does other sessions'
I/O for long. A cancelled appender whose ticket is still queued withdraws it; once taken into
a round, the record is written (a client that gave up may find its message stored, never a
message half stored).

A batch that fails is undone on disk by ``SegmentLog`` and bumps :attr:`LogWriter.epoch`.
Multi-record writes (a message's chunks, then its commit record) pass the epoch they started
in; a commit whose earlier chunks were in a failed batch is refused instead of pointing at
records that are not there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

from ..threads import ThreadPool
from ._commit_round import AppendLog, Dependent, RoundResult, Ticket, Written, write_round
from ._files import AppendItem, Location, LogRecord, LogWriteError

__all__ = ["LINGER", "CommitGroup", "LogWriter", "Observer", "StaleEpoch"]


L = TypeVar("L", bound=AppendLog)

LINGER = 0.005  # seconds a lazy append waits for a round to ride with before leading one

# Told of every round of records written to a log, in order, with each record's chain value,
# and whether the round ended with an fdatasync of that log (``durable``). Runs in the trio
# thread: it must not block.
Observer = Callable[[list[LogRecord], bool], None]


class StaleEpoch(LogWriteError):
    """The records this commit depends on were lost in a failed batch."""


class CommitGroup:
    """Group commit across logs: one leader at a time writes every log's queued records and
    fdatasyncs the logs that need it, all in one worker thread, then steps down.

    Sharing one group between a gateway's logs (the control log and every mailbox) means a
    burst of deliveries to many mailboxes costs one thread hand-off per round, not one per
    message; the fdatasyncs of a round run back to back in that thread.
    """

    def __init__(self) -> None:
        self._dirty: dict[LogWriter[Any], None] = {}
        self._flushing = False
        self._flushed = trio.Event()
        self._thread = ThreadPool("gateway-commit", 1)  # a round at a time
        self.rounds = 0
        # Told after every round that wrote something: its seconds from leading to done, and
        # the seconds of its fdatasyncs (the metrics, SPEC.md 13.7). Must not block.
        self.on_round: Callable[[float, float], None] | None = None
        # Why the last round that wrote something failed for a log; None once one succeeded
        # for every log in it (readiness, SPEC.md 13.7).
        self.last_error: str | None = None

    async def wait_for(self, writer: LogWriter[Any], ticket: Ticket, *, lazy: bool = False) -> None:
        self._dirty[writer] = None
        if lazy:
            with trio.move_on_after(LINGER):
                while not ticket.finished:
                    await self._flushed.wait()
        while not ticket.finished:
            if self._flushing:
                await self._flushed.wait()
            else:
                await self._lead()

    async def append_then(
        self,
        first: Sequence[tuple[LogWriter[Any], Sequence[AppendItem], int | None]],
        then: LogWriter[Any],
        build: Dependent,
    ) -> tuple[list[Written | LogWriteError], Written | LogWriteError]:
        """Append each of ``first`` durably (a writer, its records and the epoch they
        depend on, as :meth:`LogWriter.append`), then, in the same round and only if all of
        them are durable, the records ``build`` makes from where they went, durably to
        ``then``. Returns each one's outcome: where its records went, or why they were not
        written (the dependent's when any of ``first`` failed)."""
        tickets = [Ticket(items, True, epoch) for _writer, items, epoch in first]
        final = Ticket((), True, None, after=tickets, build=build)
        queued = [*zip([w for w, _i, _e in first], tickets, strict=True), (then, final)]
        for writer, ticket in queued:
            writer.enqueue(ticket)
            self._dirty[writer] = None
        try:
            await self.wait_for(then, final)
        except trio.Cancelled:
            for writer, ticket in queued:
                writer.withdraw(ticket)
            raise
        return [t.error or (t.locations, t.chains) for t in tickets], final.error or (
            final.locations,
            final.chains,
        )

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """While this is held no round runs, so every log's end stays where it is (and
        appenders queue): for a snapshot of logs and of what was folded from them."""
        while self._flushing:
            await self._flushed.wait()
        self._flushing = True
        try:
            yield
        finally:
            self._flushing = False
            self._flushed.set()
            self._flushed = trio.Event()

    async def _lead(self) -> None:
        self._flushing = True
        try:
            work = []
            for writer in self._dirty:
                live = writer.take_batch()
                if live:
                    work.append((writer, live))
            self._dirty.clear()
            if work:
                started = time.perf_counter()
                done, synced_s = await self._thread.run(write_round, work)
                failed = [r.error for _w, _t, r in done if r.error is not None]
                self.last_error = str(failed[0]) if failed else None
                for writer, tickets, result in done:
                    writer.finish_batch(tickets, result)
                for _writer, tickets in work:
                    for ticket in tickets:
                        ticket.finished = True  # dependents refused before their phase
                self.rounds += 1
                if self.on_round is not None:
                    self.on_round(time.perf_counter() - started, synced_s)
        finally:
            self._flushing = False
            self._flushed.set()
            self._flushed = trio.Event()


class LogWriter(Generic[L]):
    """The async face of one log: appends from many tasks, committed in groups."""

    def __init__(self, log: L, group: CommitGroup | None = None) -> None:
        self.log = log
        self.group = group if group is not None else CommitGroup()
        self.epoch = 0
        self.observer: Observer | None = None
        # Told the records other writers committed to this log (a shared store), in order,
        # always before the observer hears of this writer's next ones. Runs in the trio
        # thread: it must not block.
        self.on_foreign: Callable[[list[LogRecord]], None] | None = None
        self._queue: list[Ticket] = []
        self._batches = 0
        self._records = 0

    async def append(
        self,
        items: Sequence[AppendItem],
        *,
        durable: bool = True,
        epoch: int | None = None,
        on_written: Callable[[list[Location]], None] | None = None,
    ) -> list[Location]:
        """Append records, contiguously and in order. Returns once they are written and, if
        ``durable``, fdatasynced. Raises LogWriteError (nothing of these records is visible),
        or StaleEpoch if ``epoch`` is given and a batch failed since. ``on_written`` is told
        where they went by the round itself, before this returns or any appender resumes:
        what it records is in step with the log's end at every round (a recovery point)."""
        locations, _chains = await self.append_chained(
            items, durable=durable, epoch=epoch, on_written=on_written
        )
        return locations

    async def append_lazily(self, items: Sequence[AppendItem]) -> None:
        """Append records that acknowledge nothing (not durable), riding with the next round
        another appender leads; returns once they are written, at most about :data:`LINGER`
        seconds later than :meth:`append` would."""
        await self.append_chained(items, durable=False, lazy=True)

    async def append_chained(
        self,
        items: Sequence[AppendItem],
        *,
        durable: bool = True,
        epoch: int | None = None,
        lazy: bool = False,
        on_written: Callable[[list[Location]], None] | None = None,
    ) -> tuple[list[Location], list[bytes]]:
        """:meth:`append`, also returning each record's chain value."""
        ticket = Ticket(items, durable, epoch, on_written=on_written)
        self.enqueue(ticket)
        try:
            await self.group.wait_for(self, ticket, lazy=lazy and not durable)
        except trio.Cancelled:
            self.withdraw(ticket)
            raise
        if ticket.error is not None:
            raise ticket.error
        return ticket.locations, ticket.chains

    def enqueue(self, ticket: Ticket) -> None:
        self._queue.append(ticket)

    def withdraw(self, ticket: Ticket) -> None:
        """Not yet taken into a batch: withdraw it, so "cancelled" means "not written"."""
        if ticket in self._queue:
            self._queue.remove(ticket)

    def take_batch(self) -> list[Ticket]:
        """The queued tickets to write now; those whose epoch is stale fail at once."""
        batch, self._queue = self._queue, []
        live = []
        for ticket in batch:
            if ticket.epoch is not None and ticket.epoch != self.epoch:
                ticket.error = StaleEpoch("records of this message were lost in a failed write")
                ticket.finished = True
            else:
                live.append(ticket)
        return live

    async def catch_up(self) -> int:
        """Fold the records other writers committed to this log since it last looked (a
        shared store), while no round runs; returns how many."""
        async with self.group.held():
            records = await trio.to_thread.run_sync(self.log.catch_up)
            self._fold_foreign(records)
        return len(records)

    def _fold_foreign(self, records: list[LogRecord]) -> None:
        if records and self.on_foreign is not None:
            self.on_foreign(records)

    def finish_batch(self, batch: list[Ticket], result: RoundResult) -> None:
        self._fold_foreign(result.foreign)
        if result.error is not None:
            self.epoch += 1
            for ticket in batch:
                ticket.error = result.error
                ticket.finished = True
            return
        start = 0
        records: list[LogRecord] = []
        for ticket in batch:
            end = start + len(ticket.items)
            ticket.locations = result.locations[start:end]
            ticket.chains = result.chains[start:end]
            if ticket.on_written is not None:
                ticket.on_written(ticket.locations)
            if self.observer is not None:
                for (kind, body), location, chain in zip(
                    ticket.items, ticket.locations, ticket.chains, strict=True
                ):
                    assert not callable(body), "observed logs append plain bodies"
                    records.append(LogRecord(location.seq, kind, body, chain, location))
            start = end
            ticket.finished = True
        self._batches += 1
        self._records += start
        if self.observer is not None and (records or result.synced):
            self.observer(records, result.synced)

    def statistics(self) -> dict[str, int]:
        return {
            "batches": self._batches,
            "records": self._records,
            "queued": len(self._queue),
            "next_seq": self.log.next_seq,
        }
