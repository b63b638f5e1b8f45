"""``gateway verify`` on recovery points: each is checked against the log it was made from
(SPEC.md 6.7 and 8), after the log itself was read whole.

A recovery point that does not decode, whose checksum fails, whose chain value is not the
log's at its position, or whose state disagrees with the records before its position is a
problem. One the log outgrew (a segment it relied on rewritten or removed by a compaction
since, or the log cut back before its position) is a note: the next open reads that log
whole, and whatever the log lost is a problem of its own (the witnesses say).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .events import MessageStored, decode_control_event, decode_message_event
from .log import (
    BASE_FILE,
    RECOVERY_FILE,
    SEGMENT_HEADER_SIZE,
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

__all__ = ["PointCheck", "check_base", "check_control_point", "check_mailbox_point"]

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


def _point(
    check: PointCheck,
    directory: Path,
    log_id: bytes,
    records: Sequence[LogRecord],
    cuts: Mapping[int, int] | None,
    name: str = RECOVERY_FILE,
) -> RecoveryPoint | None:
    """The recovery point (or base) if it matches the log up to its position, else None
    (and why)."""
    try:
        point = read_recovery_point(directory, log_id, name=name)
    except StaleRecoveryPoint as exc:
        check.problems.append(f"{name}: {exc}")
        return None
    if point is None:
        return None
    chosen = choose_files(directory, cuts or {}).chosen
    try:
        check_position(point, chosen)
    except StaleRecoveryPoint as exc:
        if exc.outgrown:  # what the log lost, if anything, the other checks say
            check.notes.append(f"recovery point: {exc}; the next open reads the log whole")
        else:
            check.problems.append(f"recovery point: {exc}")
        return None
    if point.offset == SEGMENT_HEADER_SIZE:
        return point  # the segment header's chain value is its (checked above)
    before = next((r for r in reversed(records) if r.seq < point.seq), None)
    expected = genesis_chain(log_id) if point.seq == 0 else None
    if before is not None and before.seq == point.seq - 1:
        expected = before.chain
    if expected is None or expected != point.chain:
        check.problems.append(
            f"recovery point at record {point.seq}: the log's chain value there is another"
        )
        return None
    return point


def check_base(
    directory: Path, log_id: bytes, records: Sequence[LogRecord], check: PointCheck
) -> RecoveryPoint | None:
    """The control log's base (SPEC.md 6.8) against the records kept after it."""
    return _point(check, directory, log_id, records, None, BASE_FILE)


def check_control_point(
    directory: Path,
    log_id: bytes,
    records: Sequence[LogRecord],
    start: ControlState,
    start_seq: int,
) -> PointCheck:
    """The control log's recovery point against its records (all of them from ``start_seq``,
    read by verify; ``start``: the state before them, its base's or an empty one)."""
    check = PointCheck()
    point = _point(check, directory, log_id, records, None)
    if point is None:
        return check
    try:
        saved = decode_control_state(point.state)
    except ValueError as exc:
        check.problems.append(f"recovery point: {exc}")
        return check
    folded = start
    for record in records:
        if record.seq >= point.seq:
            break
        if (
            record.seq >= start_seq
            and record.kind == RecordKind.EVENT
            and (event := decode_control_event(record.body))
        ):
            folded.apply(event)
    differ = [name for name in _COMPARED if getattr(saved, name) != getattr(folded, name)]
    if differ:
        check.problems.append(
            f"recovery point at record {point.seq}: its saved state differs from the log's "
            f"({', '.join(differ)})"
        )
        return check
    check.state = saved
    return check


def check_mailbox_point(
    directory: Path,
    log_id: bytes,
    records: Sequence[LogRecord],
    cuts: Mapping[int, int] | None,
    saved: ControlState | None,
    full: ControlState,
) -> PointCheck:
    """A mailbox log's recovery point against its records, and what the control log's
    recovery point (``saved``) vouches for about this mailbox against the whole control log
    (``full``): every commit below its settled mark was witnessed or expunged."""
    check = PointCheck()
    box_id = log_id.hex()
    by_seq = {r.seq: r for r in records}
    if saved is not None and box_id in saved.settled:
        settled = saved.settled[box_id]
        witnessed = full.witnessed.get(box_id, {})
        expunged = full.expunged.get(box_id, set())
        vouched = full.settled.get(box_id, 0)  # by the base, when history was archived
        for record in records:
            if record.seq >= settled:
                break
            if record.kind != RecordKind.EVENT or record.seq < vouched:
                continue
            event = decode_message_event(record.body)
            if (
                isinstance(event, MessageStored)
                and event.message_id not in witnessed
                and event.message_id not in expunged
                and record.seq > full.anchors.get(box_id, (-1, b""))[0]
            ):
                check.problems.append(
                    f"the control log's recovery point calls record {record.seq} settled, "
                    f"but message {event.message_id} was neither witnessed nor expunged"
                )
    point = _point(check, directory, log_id, records, cuts)
    if point is None:
        return check
    try:
        index = MessageIndex.restore(point.state)
    except ValueError as exc:
        check.problems.append(f"recovery point: {exc}")
        return check
    for message in index:
        commit = by_seq.get(message.seq)
        event = None
        if commit is not None and commit.kind == RecordKind.EVENT:
            event = decode_message_event(commit.body)
        if (
            commit is None
            or message.seq >= point.seq
            or not isinstance(event, MessageStored)
            or event.message_id != message.message_id
            or commit.location != message.commit
            or event.chunk_seqs != tuple(c.seq for c in message.chunks)
            or any(by_seq.get(c.seq) is None or by_seq[c.seq].location != c for c in message.chunks)
        ):
            check.problems.append(
                f"recovery point: message {message.message_id} is not where it says "
                f"(commit record {message.seq})"
            )
            break
    for chunk in index.pending_chunks.values():
        found = by_seq.get(chunk.seq)
        if found is None or found.kind != RecordKind.CHUNK or found.location != chunk:
            check.problems.append(f"recovery point: chunk record {chunk.seq} is not where it says")
            break
    return check
