"""``gateway verify --mailbox ID``: every message of a mailbox opened with its password
(SPEC.md 8): every chunk authenticated, size and SHA-256 checked; and which commit records
count as stored messages."""

from __future__ import annotations

from .crypto import CryptoError, MessageOpener, decode_key_file, unlock
from .events import MessageStored, decode_message_event
from .ids import InvalidId, parse_mailbox_id
from .log import DataDir, LogCorrupt, RecordKind, decode_chunk_body, iter_log
from .services.archive import sealed_of
from .services.projection import ControlState
from .verify_report import Problem, Progress, Report

__all__ = ["acknowledged", "open_every_message"]


def acknowledged(state: ControlState, box_id: str, seq: int, message_id: str) -> bool:
    """Whether a commit record counts as a stored message: witnessed, or part of a log that
    predates witnesses (up to its anchor, or wholly when never anchored)."""
    witnesses = state.witnessed.get(box_id)
    if witnesses is None or message_id in witnesses or seq < state.settled.get(box_id, 0):
        return True
    anchor = state.anchors.get(box_id)
    return anchor is not None and seq <= anchor[0]


def open_every_message(
    report: Report,
    data: DataDir,
    state: ControlState,
    mailbox_id: str,
    password: str,
    progress: Progress | None,
) -> None:
    try:
        box_id = parse_mailbox_id(mailbox_id)
    except InvalidId as exc:
        report.problems.append(Problem(mailbox_id, str(exc)))
        return
    if box_id not in state.mailboxes:
        report.problems.append(Problem(box_id, "no such mailbox"))
        return
    box_bytes = bytes.fromhex(box_id)
    try:
        key = unlock(decode_key_file(data.read_key_file(box_id)), box_bytes, password)
    except (CryptoError, OSError) as exc:
        report.problems.append(Problem(box_id, f"cannot open the key: {exc}"))
        return
    expunged = state.expunged.get(box_id, set())
    bodies: dict[int, bytes] = {}
    try:
        records = iter_log(
            data.mailbox_log_dir(box_id), box_bytes, cuts=state.cuts.get(box_id), keep_bodies=True
        )
        for record in records:
            if record.kind == RecordKind.CHUNK:
                bodies[record.seq] = record.body
                continue
            if record.kind != RecordKind.EVENT:
                continue
            event = decode_message_event(record.body)
            if not isinstance(event, MessageStored):
                continue
            parts = [bodies.pop(seq, b"") for seq in event.chunk_seqs]
            if not acknowledged(state, box_id, record.seq, event.message_id):
                continue  # never acknowledged: noted by the log check, never opened
            if event.message_id in expunged or event.key_id != key.key_id.hex():
                if event.key_id != key.key_id.hex() and event.message_id not in expunged:
                    report.notes.append(
                        f"{box_id}: message {event.message_id} is sealed to a retired key (reset)"
                    )
                continue
            try:
                opener = MessageOpener(
                    key, box_bytes, bytes.fromhex(event.message_id), sealed_of(event)
                )
                opener.meta()
                for part in parts:
                    opener.open_chunk(bytes(decode_chunk_body(part)[2]))
                opener.finish()
            except CryptoError as exc:
                report.problems.append(Problem(box_id, f"message {event.message_id}: {exc}"))
                continue
            report.opened_messages += 1
            if progress is not None:
                progress(f"{box_id} opened", report.opened_messages)
    except LogCorrupt as exc:
        report.problems.append(Problem(box_id, exc.reason, str(exc.path), exc.offset))
    except OSError as exc:  # no log folder (the mailbox check reports it), or unreadable
        report.problems.append(Problem(box_id, f"the log cannot be read: {exc}"))
