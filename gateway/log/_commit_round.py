"""What one group-commit round does, in its worker thread (``gateway.log._writer`` leads
the rounds from the trio side).

Theory of operation
-------------------
:func:`write_round` takes every log's queued tickets. It reserves the logs in log-id order
(a shared store's row locks, taken in one order by every node), writes each log's ordinary
batch and makes durable the ones that need it, then builds the dependent records (a message's
witness) from the chain values just written and writes them likewise; a dependent is never
written unless everything it depends on is durable. On a shared store the logs of the round
share one transaction (``AppendLog.uncommitted``): it is committed once, after the dependents,
and each log hears how it ended. The fdatasyncs of several logs run in parallel threads.
Nothing here touches what the trio thread changes, except the tickets handed over.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._files import AppendItem, Location, LogRecord, LogWriteError

if TYPE_CHECKING:
    from ._writer import LogWriter

__all__ = ["AppendLog", "Dependent", "RoundResult", "Ticket", "Written", "write_round"]


class AppendLog(Protocol):
    """What the group commit needs of a log: a segment log, or the fleet store's row log
    (which other nodes append to as well)."""

    @property
    def log_id(self) -> bytes: ...

    @property
    def next_seq(self) -> int: ...

    @property
    def uncommitted(self) -> bool:
        """Records appended that only :meth:`sync` makes durable and visible (a row log's
        open transaction, which every log of the round shares); a segment log's are written
        already: False."""

    def reserve(self) -> None:
        """A round is about to append to this log: take what the appends will hold until
        the round ends (a row log's lock). Called for every log of a round in log-id order
        before any append, so two nodes' rounds take their locks in one order."""

    def append(
        self,
        items: Sequence[AppendItem],
        *,
        sync: bool = True,
        chains: list[bytes] | None = None,
        foreign: list[LogRecord] | None = None,
    ) -> list[Location]:
        """Append after every record committed so far; the records other writers committed
        since this one last looked go into ``foreign`` (in order, to fold first)."""

    def sync(self) -> None: ...

    def catch_up(self) -> list[LogRecord]:
        """The records other writers committed since this one last looked (it follows them
        from here on); never called while a round has appended and not synced."""


# Where an append's records went and each one's chain value.
Written = tuple[list[Location], list[bytes]]
# Builds the records that depend on others from where those went; runs in the worker thread
# that writes them, so it must be quick and touch nothing the trio thread changes.
Dependent = Callable[[list[Written]], Sequence[AppendItem]]


@dataclass(eq=False, slots=True)
class Ticket:
    """One appender's records, queued for a round."""

    items: Sequence[AppendItem]
    durable: bool
    epoch: int | None
    finished: bool = False
    locations: list[Location] = field(default_factory=list)
    chains: list[bytes] = field(default_factory=list)
    error: LogWriteError | None = None
    after: list[Ticket] | None = None  # tickets that must be durable first (same round)
    build: Dependent | None = None  # makes ``items`` from theirs, in the worker thread
    # Told where the records went by the round itself, before any appender resumes.
    on_written: Callable[[list[Location]], None] | None = None


@dataclass(slots=True)
class RoundResult:
    locations: list[Location]
    chains: list[bytes]  # each record's chain value (witnesses and the audit feed need them)
    foreign: list[LogRecord] = field(default_factory=list)  # other writers', before these
    synced: bool = False
    error: LogWriteError | None = None


Batch = tuple["LogWriter[Any]", list[Ticket]]
_NOT_WRITTEN = LogWriteError("a record it depends on was not written")


def write_round(
    work: list[Batch],
) -> tuple[list[tuple[LogWriter[Any], list[Ticket], RoundResult]], float]:
    """In a worker thread: every log's ordinary batch, written and made durable where that
    is needed; then the records that depend on them, likewise. Also the seconds spent in
    fdatasync."""
    synced = [0.0]
    for log in sorted({id(w.log): w.log for w, _ts in work}.values(), key=lambda log: log.log_id):
        log.reserve()
    work = sorted(work, key=lambda batch: batch[0].log.log_id)
    first = [(w, [t for t in ts if t.after is None]) for w, ts in work]
    first = [(w, ts) for w, ts in first if ts]
    # A shared store commits the round once, with its dependents (see the module's notes).
    defer = any(t.after is not None for _w, ts in work for t in ts)
    results = _write_phase(first, synced, defer=defer)
    done = [(w, ts, r) for (w, ts), r in zip(first, results, strict=True)]
    deferred = [i for i, (w, _ts, r) in enumerate(done) if r.error is None and w.log.uncommitted]
    written: dict[int, Written | LogWriteError] = {}
    for _writer, tickets, result in done:
        start = 0
        for ticket in tickets:
            end = start + len(ticket.items)
            written[id(ticket)] = result.error or (
                result.locations[start:end],
                result.chains[start:end],
            )
            start = end
    second: list[Batch] = []
    for writer, tickets in work:
        ready = []
        for ticket in tickets:
            if ticket.after is None or ticket.build is None:
                continue
            deps = [written.get(id(t)) or t.error or _NOT_WRITTEN for t in ticket.after]
            failed = [d for d in deps if isinstance(d, LogWriteError)]
            if failed:
                ticket.error = failed[0]
                continue
            try:
                ticket.items = ticket.build([d for d in deps if not isinstance(d, LogWriteError)])
            except Exception as exc:  # a record that cannot be built is not written
                ticket.error = LogWriteError(f"a dependent record could not be built: {exc!r}")
                continue
            ready.append(ticket)
        if ready:
            second.append((writer, ready))
    phase = _write_phase(second, synced, defer=False)
    done += [(w, ts, r) for (w, ts), r in zip(second, phase, strict=True)]
    # Committed with the dependents just now (or rolled back with them): each one hears how.
    _sync_batches([(w, ts) for w, ts, _r in done], [r for _w, _ts, r in done], deferred, synced)
    return done, synced[0]


def _write_phase(work: list[Batch], synced: list[float], *, defer: bool) -> list[RoundResult]:
    """Write every log's batch, then make the ones that need it durable (adding the seconds
    that took to ``synced[0]``); with ``defer``, not those in a shared store's transaction
    (the caller commits them after the dependents)."""
    results: list[RoundResult] = []
    for writer, tickets in work:
        items = [item for ticket in tickets for item in ticket.items]
        result = RoundResult([], [])
        try:
            result.locations = writer.log.append(
                items, sync=False, chains=result.chains, foreign=result.foreign
            )
        except LogWriteError as exc:
            result = RoundResult([], [], error=exc)
        results.append(result)
    due = [
        i
        for i, (writer, tickets) in enumerate(work)
        if results[i].error is None
        and (writer.log.uncommitted or any(ticket.durable for ticket in tickets))
        and not (defer and writer.log.uncommitted)
    ]
    _sync_batches(work, results, due, synced)
    return results


def _sync_batches(
    work: list[Batch], results: list[RoundResult], due: list[int], synced: list[float]
) -> None:
    """Sync the logs of batches ``due`` (in parallel); a batch whose sync fails gets its
    error instead of its places."""
    started = time.perf_counter()
    if len(due) == 1:
        errors = [_sync(work[due[0]][0].log)]
    else:
        # fdatasync releases the GIL and the disk overlaps them well: one per thread.
        errors = list(_fsync_pool.map(lambda i: _sync(work[i][0].log), due))
    if due:
        synced[0] += time.perf_counter() - started
    for i, error in zip(due, errors, strict=True):
        if error is None:
            results[i].synced = True
        else:
            results[i] = RoundResult([], [], error=error)


def _sync(log: AppendLog) -> LogWriteError | None:
    try:
        log.sync()
    except LogWriteError as exc:
        return exc
    return None


_fsync_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="gateway-fsync")
