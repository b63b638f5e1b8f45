"""Compliance replay: check every log of a data folder, read-only, safe while the gateway runs.

What is checked (SPEC.md, "gateway verify"):

* every record's framing and CRC, sequence continuity and the SHA-256 chain, across segments;
* every cut compaction made (a GAP record or a removed segment) against the chain value and
  the expunged message ids the control log recorded for it;
* the mailbox projection: each commit record names chunk records of its own message, in order,
  whose sizes add up; every key id a message was sealed with is one the control log issued;
  each mailbox's key file is the one the control log names; every mailbox folder belongs to a
  mailbox the control log created;
* the admin password's verifier is the one the control log names (by id);
* with a mailbox's password: every message opens, every chunk authenticates, and size and
  SHA-256 of the plaintext match the sealed envelope.

* each log's Merkle tree file against its records, and every signed checkpoint against it.

It changes nothing: a torn tail of a log being written is reported, not cut. This module runs
the replay (the control log, then each mailbox log against it); each log is read once by
``verify_reading``, recovery points are checked by ``verify_points``, tree files by
``verify_trees``, messages opened by ``verify_messages``; ``verify_report`` is what comes out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from .crypto import CryptoError, decode_key_file
from .events import (
    CheckpointSigned,
    LogCompacted,
    LogDamaged,
    MessageStored,
    decode_control_event,
    decode_message_event,
)
from .log import (
    ARCHIVE_FOLDER,
    BASE_FILE,
    RECOVERY_FILE,
    DataDir,
    LogRecord,
    RecordKind,
    StaleRecoveryPoint,
    decode_chunk_body,
    decode_gap,
    read_recovery_point,
)
from .services.admin_credentials import verifier_credential_id
from .services.archive import CONTROL_LOG_ID, wrap_id
from .services.projection import AdminState, ControlState, decode_control_state
from .verify_messages import acknowledged, open_every_message
from .verify_points import BaseCheck, ControlPointCheck, MailboxPointCheck, PointCheck
from .verify_reading import LogEnd, Reading, note_torn
from .verify_report import Problem, Progress, Report, print_report, progress_printer
from .verify_trees import SignedHead

__all__ = ["Problem", "Report", "print_report", "progress_printer", "verify_data_dir"]


def verify_data_dir(
    root: Path,
    *,
    mailbox_id: str | None = None,
    password: str | None = None,
    progress: Progress | None = None,
    fetch: Callable[[str], AbstractContextManager[object]] | None = None,
) -> Report:
    """``fetch``: puts a mailbox's log into the folder for as long as it is verified (a fleet
    store's, copied out one mailbox at a time, so the copy never holds more than one)."""
    fetched = fetch or (lambda _box_id: nullcontext())
    report = Report()
    data = DataDir(root)
    if not data.control_dir.is_dir():
        report.problems.append(Problem("control", "no control log", str(data.control_dir)))
        return report
    state, start = _control_start(report, data)
    start_ok = not report.problems
    # Per mailbox, the messages compactions before the base removed: their expunges were
    # archived with the history before it.
    archived = {
        box_id: {i for c in compactions for i in c.message_ids}
        for box_id, compactions in state.compactions.items()
    }
    base_check = BaseCheck(data.control_dir, CONTROL_LOG_ID) if start.seq else None
    point_check = ControlPointCheck(data.control_dir, CONTROL_LOG_ID)
    control = Reading(
        report, "control", data.control_dir, CONTROL_LOG_ID, None, progress, start.segment
    )
    signed: dict[str, list[SignedHead]] = {}  # by mailbox ("": the control log's)
    for record in control:
        if base_check is not None:
            base_check.see(record)
        point_check.see(record, state)
        if record.seq < start.seq:
            continue  # folded into the base already
        if record.kind == RecordKind.GAP:
            report.problems.append(
                Problem("control", "records missing from the control log", offset=record.seq)
            )
            continue
        try:
            event = decode_control_event(record.body)
        except Exception as exc:
            report.problems.append(
                Problem("control", f"record {record.seq}: undecodable event: {exc}")
            )
            continue
        if event is None:
            report.notes.append(f"control record {record.seq}: event type unknown to this version")
            continue
        if isinstance(event, LogDamaged):
            _report_damage(report, record.seq, event)
        if isinstance(event, CheckpointSigned):
            heads = signed.setdefault(event.mailbox_id, [])
            heads.append(SignedHead(event.size, event.root, record.seq))
        state.apply(event)
    if base_check is not None:  # the base is the state of the records it says
        _add_point_check(report, "control", data.control_dir, base_check.finish(), BASE_FILE)
    note_torn(report, "control", control.torn)
    control.check_tree(signed.get("", []))

    points = PointCheck()
    if start_ok and not control.failed:  # else that problem stands for its recovery point too
        points = point_check.finish(state)
        _add_point_check(report, "control", data.control_dir, points)

    on_disk = set(data.list_mailbox_ids())
    for gone in sorted(on_disk - set(state.mailboxes)):
        if gone in state.deleted:
            report.notes.append(f"{gone}: folder of a deleted mailbox still present")
        else:
            report.notes.append(f"{gone}: folder without a committed MailboxCreated (ignored)")
    report.mailboxes = len(state.mailboxes)
    report.cuts = {"control": {}} | {box: state.cuts.get(box, {}) for box in state.mailboxes}
    for box_id in sorted(state.mailboxes):
        if box_id not in on_disk:
            report.problems.append(Problem(box_id, "mailbox folder is missing"))
            continue
        with fetched(box_id):
            if not data.mailbox_log_dir(box_id).is_dir():
                report.problems.append(Problem(box_id, "mailbox log is missing"))
                continue
            _verify_mailbox(
                report,
                data,
                state,
                points.state,
                box_id,
                state.key_ids.get(box_id, set()),
                archived.get(box_id, set()),
                signed.get(box_id, []),
                progress,
            )

    _verify_admin(report, data, state.admin)
    if mailbox_id is not None:
        with fetched(mailbox_id):
            open_every_message(report, data, state, mailbox_id, password or "", progress)
    return report


def _add_point_check(
    report: Report, where: str, log_dir: Path, check: PointCheck, name: str = RECOVERY_FILE
) -> None:
    path = str(log_dir / name)
    report.problems.extend(Problem(where, problem, path) for problem in check.problems)
    report.notes.extend(f"{where}: {note}" for note in check.notes)


def _verify_admin(report: Report, data: DataDir, admin: AdminState) -> None:
    """The admin password's verifier is the one the control log names. Only its id is read
    and reported: never the hash, the token key, a digest or a token."""
    if not admin.credential_id:
        return  # no account, or one still in an earlier version's credentials file
    # Read twice: a password change renames password.new over password meanwhile.
    for _ in range(2):
        for raw in (data.read_admin_password(), data.staged_admin_password()):
            if raw is not None and verifier_credential_id(raw) == admin.credential_id:
                return
    report.problems.append(
        Problem(
            "admin",
            f"the admin password's verifier {admin.credential_id}, which the control log "
            "names, is not there (SPEC.md 13.2: missing, the next start sets a new admin "
            "password and ends every API token and session; another, it refuses to start)",
            str(data.admin_password_path),
        )
    )


@dataclass(frozen=True, slots=True)
class _Start:
    """Where the control log's history starts: its first record, or its base (SPEC.md 6.8)."""

    seq: int = 0  # the first record not folded into the starting state
    segment: int = 0  # the first segment file kept


def _control_start(report: Report, data: DataDir) -> tuple[ControlState, _Start]:
    """The control log's starting state: empty, or its base's when older history was
    archived (noted, with where the history kept starts)."""
    try:
        base = read_recovery_point(data.control_dir, CONTROL_LOG_ID, name=BASE_FILE)
        if base is None:
            return ControlState(), _Start()
        state = decode_control_state(base.state)
    except (StaleRecoveryPoint, ValueError) as exc:
        report.problems.append(
            Problem("control", f"base: {exc}", str(data.control_dir / BASE_FILE))
        )
        return ControlState(), _Start()
    archived = len(list((data.control_dir / ARCHIVE_FOLDER).glob("*.seg")))
    report.notes.append(
        f"control: history before record {base.segment} was archived ({archived} segment "
        f"file(s) in control/{ARCHIVE_FOLDER}/); verified from its base at record {base.seq}"
    )
    return state, _Start(base.seq, base.segment)


def _verify_mailbox(
    report: Report,
    data: DataDir,
    state: ControlState,
    saved: ControlState | None,
    box_id: str,
    issued_keys: set[str],
    archived_expunges: set[str],
    signed: list[SignedHead],
    progress: Progress | None,
) -> None:
    info = state.mailboxes[box_id]
    try:
        key_bytes = data.read_key_file(box_id)
        key = decode_key_file(key_bytes)
        if wrap_id(key_bytes) != info.wrap_id:
            report.problems.append(Problem(box_id, "key file is not the one the control log names"))
        if key.key_id.hex() != info.key_id:
            report.problems.append(Problem(box_id, "key file holds another key pair"))
    except FileNotFoundError:
        report.problems.append(Problem(box_id, "key file is missing"))
    except CryptoError as exc:
        report.problems.append(Problem(box_id, f"key file: {exc}"))

    cuts: dict[int, list[tuple[int, bytes, LogCompacted]]] = {}
    for compaction in state.compactions.get(box_id, []):
        for cut in compaction.gaps:
            cuts.setdefault(cut.first_seq, []).append((cut.last_seq, cut.chain, compaction))
    removed_ids: set[str] = set()
    expunged = state.expunged.get(box_id, set())
    mid_bytes_to_chunks: dict[int, tuple[bytes, int, int]] = {}
    log_dir, log_id = data.mailbox_log_dir(box_id), bytes.fromhex(box_id)
    point_check = MailboxPointCheck(log_dir, log_id, state.cuts.get(box_id), saved, state)
    reading = Reading(report, box_id, log_dir, log_id, state.cuts.get(box_id), progress)
    commits: dict[int, tuple[str, bytes]] = {}  # seq -> message id, chain
    for record in reading:
        if record.kind != RecordKind.EVENT:
            point_check.see(record, None)
        if record.kind == RecordKind.GAP:
            gap = decode_gap(record.body)
            confirmed = _confirm_gap(cuts, gap.first_seq, gap.last_seq, record.chain)
            if confirmed is None:
                report.problems.append(
                    Problem(
                        box_id,
                        f"records {gap.first_seq}..{gap.last_seq} removed without a matching "
                        "compaction in the control log",
                        offset=record.location.offset,
                    )
                )
            else:
                for compaction in confirmed:
                    removed_ids.update(compaction.message_ids)
        elif record.kind == RecordKind.CHUNK:
            mid, index, ciphertext = decode_chunk_body(record.body)
            mid_bytes_to_chunks[record.seq] = (mid, index, len(ciphertext))
        else:
            try:
                event = decode_message_event(record.body)
            except Exception as exc:
                point_check.see(record, None)
                report.problems.append(Problem(box_id, f"record {record.seq}: undecodable: {exc}"))
                continue
            if not isinstance(event, MessageStored):
                point_check.see(record, None)
                continue
            point_check.see(record, event)
            commits[record.seq] = (event.message_id, record.chain)
            if event.message_id in expunged:
                # Compaction may already have taken its chunks (confirmed above, by gap).
                for seq in event.chunk_seqs:
                    mid_bytes_to_chunks.pop(seq, None)
                continue
            _check_commit(report, box_id, record, event, mid_bytes_to_chunks, issued_keys)
            if acknowledged(state, box_id, record.seq, event.message_id):
                report.messages += 1
                report.message_bytes += event.size
    readable = not reading.failed
    if readable:
        _add_point_check(report, box_id, log_dir, point_check.finish())
        reading.check_tree(signed)
    unexpunged = removed_ids - expunged - archived_expunges
    if unexpunged:
        report.problems.append(
            Problem(
                box_id, f"compaction removed {len(unexpunged)} messages that were never expunged"
            )
        )
    witnesses = state.witnessed.get(box_id)
    if witnesses is None:
        note_torn(report, box_id, reading.torn)
        report.notes.append(
            f"{box_id}: its log predates commit witnesses and was never opened by a gateway "
            "that has them: its messages are checked by chain only"
        )
        return
    if not readable:
        return  # the log could not be read to its end; that problem stands for the rest
    ends = LogEnd.of(reading.last, reading.torn, log_dir)
    _check_witnesses(report, box_id, state, witnesses, commits, expunged, removed_ids, ends)


def _check_witnesses(
    report: Report,
    box_id: str,
    state: ControlState,
    witnesses: Mapping[str, tuple[int, bytes]],
    commits: Mapping[int, tuple[str, bytes]],
    expunged: set[str],
    removed_ids: set[str],
    end: LogEnd,
) -> None:
    """Both directions (SPEC.md 8): every acknowledged message is in its log or was expunged
    by record, and every message in the log was acknowledged."""
    ack_seq = state.acknowledged.get(box_id, (-1, b""))[0]
    if end.torn is not None and end.next_seq <= ack_seq:
        report.problems.append(
            Problem(
                box_id,
                f"the log ends inside record {end.next_seq}, which the control log witnessed "
                "as acknowledged",
                end.path,
                end.offset,
            )
        )
    else:
        note_torn(report, box_id, end.torn)
    missing: list[str] = []
    for message_id, (seq, chain) in witnesses.items():
        found = commits.get(seq)
        if found is not None:
            # A witness a base vouches for carries no chain value (SPEC.md 6.8).
            if found[0] != message_id or (chain and found[1] != chain):
                report.problems.append(
                    Problem(
                        box_id,
                        f"record {seq} is not the commit of message {message_id} the control "
                        "log witnessed",
                    )
                )
        elif not (message_id in expunged and message_id in removed_ids):
            missing.append(message_id)
    if missing:
        report.problems.append(
            Problem(
                box_id,
                f"{len(missing)} acknowledged message(s) missing from the log, which ends "
                f"before record {end.next_seq}: {', '.join(sorted(missing))}",
                end.path,
                end.offset,
            )
        )
    anchor = state.anchors.get(box_id)
    if anchor is not None and anchor[0] in commits and commits[anchor[0]][1] != anchor[1]:
        report.problems.append(
            Problem(box_id, f"record {anchor[0]} is not the one the log was anchored at")
        )
    anchor_seq = anchor[0] if anchor is not None else -1
    settled = state.settled.get(box_id, 0)  # a base vouches for the commits before it
    witnessed_ids = set(witnesses)
    for seq, (message_id, _chain) in sorted(commits.items()):
        if seq <= anchor_seq or seq < settled:
            continue
        if message_id in witnessed_ids or message_id in expunged:
            continue
        report.notes.append(
            f"{box_id}: message {message_id} (record {seq}) has no commit witness: never "
            "acknowledged (a commit in progress, or a crash before its witness); the gateway "
            "rolls it back when it next opens the log"
        )


def _report_damage(report: Report, control_seq: int, event: LogDamaged) -> None:
    kept = f"; the damaged bytes are kept in {event.moved_to}" if event.moved_to else ""
    lost = ", ".join(event.lost_message_ids) or "none"
    report.problems.append(
        Problem(
            event.mailbox_id,
            f"damage found when the gateway opened the log (control record {control_seq}: "
            f"{event.reason}); acknowledged messages lost: {lost}{kept}",
            event.segment,
            event.offset,
        )
    )


def _confirm_gap(
    cuts: dict[int, list[tuple[int, bytes, LogCompacted]]], first: int, last: int, chain: bytes
) -> list[LogCompacted] | None:
    """The compactions whose cuts, end to end, cover exactly first..last and end on ``chain``.
    Several cuts line up where neighbouring segments were removed one by one."""
    covering: list[LogCompacted] = []
    position = first
    while True:
        step = None
        for cut_last, cut_chain, compaction in cuts.get(position, []):
            if cut_last == last and cut_chain == chain:
                return [*covering, compaction]
            if cut_last < last and (step is None or cut_last > step[0]):
                step = (cut_last, compaction)
        if step is None:
            return None
        covering.append(step[1])
        position = step[0] + 1


def _check_commit(
    report: Report,
    box_id: str,
    record: LogRecord,
    event: MessageStored,
    chunks: dict[int, tuple[bytes, int, int]],
    issued_keys: set[str],
) -> None:
    mid = bytes.fromhex(event.message_id)
    sealed = 0
    for index, seq in enumerate(event.chunk_seqs):
        chunk = chunks.pop(seq, None)
        if chunk is None or chunk[0] != mid or chunk[1] != index:
            report.problems.append(
                Problem(
                    box_id,
                    f"message {event.message_id}: chunk {index} (record {seq}) missing or foreign",
                    offset=record.location.offset,
                )
            )
            return
        sealed += chunk[2]
    if sealed != event.sealed_size:
        report.problems.append(
            Problem(box_id, f"message {event.message_id}: sealed size does not add up")
        )
    if event.key_id not in issued_keys:
        report.problems.append(
            Problem(
                box_id, f"message {event.message_id}: sealed to a key the control log never issued"
            )
        )
