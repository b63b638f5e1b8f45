"""``gateway verify`` on recovery points: each is checked against the log it was made from
(SPEC.md 6.7 and 8), after the log itself was read whole.

A recovery point that does not decode, whose checksum fails, whose chain value is not the
log's at its position, or whose state disagrees with the records before its position is a
problem. One the log outgrew (a segment it relied on rewritten or removed by a compaction
since, or the log cut back before its position) is a note: the next open reads that log
whole, and whatever the log lost is a problem of its own (the witnesses say).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .events import MessageStored
from .log import (
    BASE_FILE,
    RECOVERY_FILE,
    SEGMENT_HEADER_SIZE,
    Location,
    LogRecord,
    RecordKind,
    RecoveryPoint,
    StaleRecoveryPoint,
    check_position,
    choose_files,
    genesis_chain,
    read_recovery_point,
)
from .services.message_index import MessageIndex
from .services.projection import ControlState, decode_control_state

__all__ = ["BaseCheck", "ControlPointCheck", "MailboxPointCheck", "PointCheck"]

# What a saved control-log projection must agree on with the log read up to its position.
_COMPARED = (
    "mailboxes",
    "deleted",
    "cuts",
    "acknowledged",
    "anchors",
    "damage",
    "admin",
    "events",
    "truncations",
    "key_ids",
)


@dataclass(slots=True)
class PointCheck:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    state: ControlState | None = None  # the control log's saved state, when it checks out


class _Watch:
    """A recovery point (or base) read before its log is, checked against the files, then
    against the chain value of the record just before its position as the records go by."""

    def __init__(
        self,
        check: PointCheck,
        directory: Path,
        log_id: bytes,
        cuts: Mapping[int, int] | None,
        name: str = RECOVERY_FILE,
    ) -> None:
        self.check = check
        self.name = name
        self.point: RecoveryPoint | None = None
        self._at_header = False
        self.before: bytes | None = None  # the chain value of the record before the position
        try:
            point = read_recovery_point(directory, log_id, name=name)
        except StaleRecoveryPoint as exc:
            check.problems.append(f"{name}: {exc}")
            return
        if point is None:
            return
        try:
            check_position(point, choose_files(directory, cuts or {}).chosen)
        except StaleRecoveryPoint as exc:
            if exc.outgrown:  # what the log lost, if anything, the other checks say
                check.notes.append(f"recovery point: {exc}; the next open reads the log whole")
            else:
                check.problems.append(f"recovery point: {exc}")
            return
        self.point = point
        self._at_header = point.offset == SEGMENT_HEADER_SIZE
        if self._at_header:
            self.before = point.chain  # the segment header's chain value is its (checked)
        elif point.seq == 0:
            self.before = genesis_chain(log_id)

    def see(self, record: LogRecord) -> None:
        point = self.point
        if point is not None and record.seq == point.seq - 1 and not self._at_header:
            self.before = record.chain

    def verdict(self) -> RecoveryPoint | None:
        """The point, once every record was seen, if the log's chain value at its position is
        its own; else None (and why)."""
        point = self.point
        if point is not None and self.before != point.chain:
            self.check.problems.append(
                f"recovery point at record {point.seq}: the log's chain value there is another"
            )
            return None
        return point


class BaseCheck:
    """The control log's base (SPEC.md 6.8) against the records kept after it."""

    def __init__(self, directory: Path, log_id: bytes) -> None:
        self.result = PointCheck()
        self._watch = _Watch(self.result, directory, log_id, None, BASE_FILE)

    def see(self, record: LogRecord) -> None:
        self._watch.see(record)

    def finish(self) -> PointCheck:
        self._watch.verdict()
        return self.result


class ControlPointCheck:
    """The control log's recovery point against its records, as verify folds them: the state
    it saved must be the fold of the records before its position."""

    def __init__(self, directory: Path, log_id: bytes) -> None:
        self.result = PointCheck()
        self._watch = _Watch(self.result, directory, log_id, None)
        self._saved: ControlState | None = None
        self._differ: list[str] | None = None
        if self._watch.point is not None:
            try:
                self._saved = decode_control_state(self._watch.point.state)
            except ValueError as exc:
                self.result.problems.append(f"recovery point: {exc}")
                self._watch.point = None

    def see(self, record: LogRecord, folded: ControlState) -> None:
        """Before ``record`` is folded into ``folded``."""
        self._watch.see(record)
        point = self._watch.point
        if point is not None and record.seq == point.seq:
            self._compare(folded)

    def finish(self, folded: ControlState) -> PointCheck:
        """Once every record was folded into ``folded``."""
        point = self._watch.point
        if point is not None and self._differ is None:
            self._compare(folded)  # the point is at the log's end
        if self._watch.verdict() is None or self._saved is None:
            return self.result
        if self._differ:
            self.result.problems.append(
                f"recovery point at record {point.seq if point else 0}: its saved state differs "
                f"from the log's ({', '.join(self._differ)})"
            )
            return self.result
        self.result.state = self._saved
        return self.result

    def _compare(self, folded: ControlState) -> None:
        saved = self._saved
        assert saved is not None
        self._differ = [n for n in _COMPARED if getattr(saved, n) != getattr(folded, n)]


class MailboxPointCheck:
    """A mailbox log's recovery point against its records as they go by, and what the control
    log's recovery point (``saved``) vouches for about this mailbox against the whole control
    log (``full``): every commit below its settled mark was witnessed or expunged. Holds the
    recovery point's index and the chunk records not yet claimed by a commit, no record."""

    def __init__(
        self,
        directory: Path,
        log_id: bytes,
        cuts: Mapping[int, int] | None,
        saved: ControlState | None,
        full: ControlState,
    ) -> None:
        self.result = PointCheck()
        box_id = log_id.hex()
        self._settled = -1
        if saved is not None and box_id in saved.settled:
            self._settled = saved.settled[box_id]
        self._witnessed = full.witnessed.get(box_id, {})
        self._expunged = full.expunged.get(box_id, set())
        self._vouched = full.settled.get(box_id, 0)  # by the base, when history was archived
        self._anchor = full.anchors.get(box_id, (-1, b""))[0]
        self._watch = _Watch(self.result, directory, log_id, cuts)
        self._index: MessageIndex | None = None
        if self._watch.point is not None:
            try:
                self._index = MessageIndex.restore(self._watch.point.state)
            except ValueError as exc:
                self.result.problems.append(f"recovery point: {exc}")
                self._watch.point = None
        self._chunks: dict[int, Location] = {}  # chunk records before the point, unclaimed
        self._pending = dict(self._index.pending_chunks) if self._index is not None else {}
        self._matched: set[int] = set()  # the commit seqs of the index's messages found
        self._misplaced: str | None = None

    def see(self, record: LogRecord, event: MessageStored | None) -> None:
        """Each record in order; ``event``: a commit record's, decoded."""
        self._watch.see(record)
        if (
            event is not None
            and max(self._anchor + 1, self._vouched) <= record.seq < self._settled
            and event.message_id not in self._witnessed
            and event.message_id not in self._expunged
        ):
            self.result.problems.append(
                f"the control log's recovery point calls record {record.seq} settled, "
                f"but message {event.message_id} was neither witnessed nor expunged"
            )
        point, index = self._watch.point, self._index
        if point is None or index is None or record.seq >= point.seq:
            return
        if record.kind == RecordKind.CHUNK:
            self._chunks[record.seq] = record.location
            pending = self._pending.pop(record.seq, None)
            if pending is not None and pending != record.location:
                self._pending[record.seq] = pending  # reported at the end
        elif event is not None:
            chunks = [self._chunks.pop(seq, None) for seq in event.chunk_seqs]
            message = index.get(event.message_id)
            if message is None or self._misplaced is not None:
                return
            if (
                message.seq != record.seq
                or message.commit != record.location
                or event.chunk_seqs != tuple(c.seq for c in message.chunks)
                or chunks != list(message.chunks)
            ):
                self._misplaced = message.message_id
                return
            self._matched.add(record.seq)

    def finish(self) -> PointCheck:
        if self._watch.verdict() is None or self._index is None:
            return self.result
        misplaced = self._misplaced
        if misplaced is None:
            misplaced = next(
                (m.message_id for m in self._index if m.seq not in self._matched), None
            )
        if misplaced is not None:
            message = self._index.get(misplaced)
            self.result.problems.append(
                f"recovery point: message {misplaced} is not where it says "
                f"(commit record {message.seq if message else '?'})"
            )
        if self._pending:
            first = min(self._pending)
            self.result.problems.append(
                f"recovery point: chunk record {first} is not where it says"
            )
        return self.result
