"""The control log's witness of every commit (SPEC.md 6.2, 6.3, 8): what was acknowledged is
never cut, never forged, and the server and verify agree on every tampering.

Regression tests for issue 12 items 1-4, 16, 19, 20 and 22: before the witness, a damaged or
truncated end of a mailbox log was cut silently, a message appended with a recomputed chain
was served as genuine, and a two-recipient message could survive a crash in one mailbox.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from gateway.crypto import MailboxPublicKey, MessageSealer, decode_key_file
from gateway.events import (
    ROLLED_BACK,
    Envelope,
    LogDamaged,
    MessagesCommitted,
    MessagesExpunged,
    MessageStored,
    decode_control_event,
    encode_envelope,
    encode_event,
    now,
)
from gateway.log import RecordKind, SegmentLog, encode_chunk_body, iter_log, remove_recovery_point
from gateway.services.archive import (
    CONTROL_LOG_ID,
    Archive,
    MailboxUnavailable,
    StoreConfig,
)
from gateway.services.projection import ControlState
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF
from .test_verify import build as build_verified

CONFIG = StoreConfig(kdf=FAST_KDF, segment_bytes=8 * 1024, compaction_grace=0)


def control_events(data: Path) -> list[object]:
    return [decode_control_event(r.body) for r in iter_log(data / "control", CONTROL_LOG_ID)]


def mailbox_records(data: Path, box: str) -> list[tuple[Path, int, int]]:
    """(segment file, offset, size) of every record of the mailbox log, in order."""
    log_dir = data / "mailboxes" / box / "log"
    out = []
    for record in iter_log(log_dir, bytes.fromhex(box)):
        if record.location.size == 0:
            continue  # a removed segment, yielded as a GAP of no bytes
        path = next(log_dir.glob(f"{record.location.segment:020d}*.seg"))
        out.append((path, record.location.offset, record.location.size))
    return out


def without_recovery_points(data: Path) -> None:
    """The server then reads every log whole, as after a crash that caught none: with one,
    it takes the records before it on trust, and verify alone reads them (SPEC.md 6.7,
    tests/test_recovery_points.py)."""
    for log_dir in [data / "control", *data.glob("mailboxes/*/log")]:
        remove_recovery_point(log_dir)


async def build(data: Path, messages: int) -> tuple[str, str, list[str]]:
    """tests/test_verify.build, then no recovery point: every test here tampers with records
    and wants the server to read them."""
    built = await build_verified(data, messages)
    without_recovery_points(data)
    return built


class Snapshot:
    """Every file of a data folder, to put it back exactly after each tampering, without
    recovery points (see :func:`without_recovery_points`)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        without_recovery_points(data)
        self.files = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}

    def restore(self) -> None:
        for path in sorted(self.data.rglob("*"), reverse=True):
            if path.is_file() and path not in self.files:
                path.unlink()
            elif path.is_dir() and path.name == "damaged":
                shutil.rmtree(path)
        for path, raw in self.files.items():
            if not path.exists() or path.read_bytes() != raw:
                path.write_bytes(raw)


async def server_view(data: Path, box: str) -> tuple[bool, set[str], set[str]]:
    """Open the folder as the server does: (the mailbox is sound, the messages it serves,
    the acknowledged messages it recorded as lost)."""
    archive = await Archive.open(data, CONFIG)
    try:
        damages = archive.state.damage.get(box, [])
        lost = {m for d in damages for m in d.lost_message_ids}
        readable = archive.damaged(box) is None
        sound = readable and not damages
        served = {m.message_id for m in archive.messages(box)} if readable else set()
        return sound, served, lost
    finally:
        await archive.aclose()


@contextmanager
def tampered(snapshot: Snapshot) -> Iterator[None]:
    try:
        yield
    finally:
        snapshot.restore()


async def agree(data: Path, box: str, kept: list[str], what: str) -> None:
    """Verify before the server opens the folder, the server, and verify after it agree:
    all three see the damage. Nothing acknowledged disappears without being named."""
    before = verify_data_dir(data)
    sound, served, lost = await server_view(data, box)
    after = verify_data_dir(data)
    assert not before.ok, f"{what}: verify before the server saw nothing"
    assert not sound, f"{what}: the server saw nothing"
    assert not after.ok, f"{what}: verify after the server saw nothing"
    if served or lost:
        assert set(kept) <= served | lost, f"{what}: acknowledged messages vanished"


@pytest.mark.slow
async def test_every_tampering_of_the_last_three_records_is_seen_by_server_and_verify(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    box, _password, kept = await trio.to_thread.run_sync(lambda: trio.run(build, data, 12))
    snapshot = Snapshot(data)
    last_three = mailbox_records(data, box)[-3:]
    path = last_three[0][0]
    assert all(p == path for p, _o, _s in last_three), "the last three share a segment"
    start = last_three[0][1]
    end = last_three[-1][1] + last_three[-1][2]
    assert end == path.stat().st_size
    checked = 0
    for offset in range(start, end):
        with tampered(snapshot):
            raw = bytearray(snapshot.files[path])
            raw[offset] ^= 0x01
            path.write_bytes(bytes(raw))
            await agree(data, box, kept, f"byte {offset} flipped")
        with tampered(snapshot):
            path.write_bytes(snapshot.files[path][:offset])
            await agree(data, box, kept, f"truncated at {offset}")
        checked += 1
    assert checked == end - start > 500


async def test_deleting_any_segment_is_seen_by_server_and_verify(tmp_path: Path) -> None:
    data = tmp_path / "data"
    box, _password, kept = await trio.to_thread.run_sync(lambda: trio.run(build, data, 12))
    snapshot = Snapshot(data)
    segments = sorted((data / "mailboxes" / box / "log").glob("*.seg"))
    assert len(segments) >= 3
    for segment in segments:
        with tampered(snapshot):
            segment.unlink()
            await agree(data, box, kept, f"{segment.name} deleted")


async def test_truncating_at_a_record_boundary_loses_nothing_silently(tmp_path: Path) -> None:
    """Regression (item 3): removing the last message's chunk and commit records used to
    pass both verify and the server, though the control log had accepted the message."""
    data = tmp_path / "data"
    box, _password, kept = await trio.to_thread.run_sync(lambda: trio.run(build, data, 12))
    path, offset, _size = mailbox_records(data, box)[-2]  # the last message's chunk
    path.write_bytes(path.read_bytes()[:offset])
    before = verify_data_dir(data)
    assert any(kept[-1] in p.reason for p in before.problems), before.problems
    sound, _served, lost = await server_view(data, box)
    assert not sound and lost == {kept[-1]}
    after = verify_data_dir(data)
    assert any(kept[-1] in p.reason for p in after.problems), after.problems


def forge(data: Path, box: str, content: bytes) -> str:
    """What someone who can write the data folder can do: seal a message with the public
    key (as SPEC 5 intends) and append it with a correctly recomputed chain."""
    mailbox = bytes.fromhex(box)
    key = decode_key_file((data / "mailboxes" / box / "key").read_bytes())
    message_id = os.urandom(16)
    sealer = MessageSealer(MailboxPublicKey.from_key_file(key), mailbox, message_id)
    chunks = sealer.feed(content)
    last, sealed = sealer.finish(encode_envelope(Envelope(received_at=now(), origin="journal")))
    chunks.append(last)
    state = ControlState()
    for event in control_events(data):
        state.apply(event)  # type: ignore[arg-type]
    log, _records, _recovery = SegmentLog.open(
        data / "mailboxes" / box / "log", mailbox, cuts=state.cuts.get(box)
    )
    try:
        first = log.next_seq
        items: list[tuple[RecordKind, bytes]] = [
            (RecordKind.CHUNK, encode_chunk_body(message_id, i, c)) for i, c in enumerate(chunks)
        ]
        items.append(
            (
                RecordKind.EVENT,
                encode_event(
                    MessageStored(
                        at=now(),
                        message_id=message_id.hex(),
                        size=sealed.size,
                        sealed_size=sealed.sealed_size,
                        key_id=sealed.key_id.hex(),
                        wrapped_key=sealed.wrapped_key,
                        envelope=sealed.envelope,
                        chunk_seqs=tuple(range(first, first + len(chunks))),
                    )
                ),
            )
        )
        log.append(items)
    finally:
        log.close()
    return message_id.hex()


async def test_a_forged_message_is_never_served_nor_counted_as_acknowledged(
    tmp_path: Path,
) -> None:
    """Regression (item 19): a message sealed with the public key and appended with a
    recomputed chain was reported opened and authenticated, and served as genuine."""
    data = tmp_path / "data"
    box, password, kept = await trio.to_thread.run_sync(lambda: trio.run(build, data, 12))
    forged = forge(data, box, b"Subject: wire the money\r\n\r\nnow\r\n")
    report = verify_data_dir(data, mailbox_id=box, password=password)
    assert report.opened_messages == len(kept), "the forgery must not count as opened"
    assert any(forged in note and "no commit witness" in note for note in report.notes)
    sound, served, _lost = await server_view(data, box)
    assert sound and served == set(kept)
    rolled = [
        e
        for e in control_events(data)
        if isinstance(e, MessagesExpunged) and forged in e.message_ids
    ]
    assert [e.reason for e in rolled] == [ROLLED_BACK]
    assert verify_data_dir(data, mailbox_id=box, password=password).ok


async def test_a_message_forged_before_the_last_witness_breaks_its_chain(tmp_path: Path) -> None:
    """Rewriting the log to slip a message in before acknowledged ones changes every chain
    value after it: the witnessed ones no longer match, for verify and for the server."""
    data = tmp_path / "data"
    box, _password, kept = await trio.to_thread.run_sync(lambda: trio.run(build, data, 12))
    path, offset, _size = mailbox_records(data, box)[-2]
    tail = path.read_bytes()
    path.write_bytes(tail[:offset])  # drop the last message ...
    forge(data, box, b"forged\r\n")  # ... put a forgery in its place (chain recomputed)
    report = verify_data_dir(data)
    assert not report.ok
    sound, served, _lost = await server_view(data, box)
    assert not sound and kept[-1] not in served


async def test_a_message_to_two_mailboxes_is_stored_in_both_or_neither(
    tmp_path: Path,
) -> None:
    """Regression (item 16): a crash after the commit records and before the witness leaves
    both copies to be rolled back on open; a copy is never left in one mailbox only."""
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    a, _ = await archive.create_mailbox("a")
    b, _ = await archive.create_mailbox("b")
    boxes = [a.mailbox_id, b.mailbox_id]
    writer = archive.begin_message(boxes)
    await writer.write(b"Subject: both or none\r\n\r\nbody\r\n")

    class Crash(Exception):
        pass

    def crash_at_witness(*_args: object, **_kwargs: object) -> None:
        raise Crash  # the process dies here: nothing after this runs

    # The witness is the one record of the round for the control log, written once both
    # commit records are durable.
    archive.control.log.append = crash_at_witness  # type: ignore[method-assign,assignment]
    with pytest.raises(Crash):
        await writer.commit(Envelope(received_at=now(), origin="journal"))
    await archive.aclose()  # closes the files, as the dying process would

    reopened = await Archive.open(data, CONFIG)
    try:
        assert [reopened.messages(box_id) for box_id in boxes] == [[], []]
    finally:
        await reopened.aclose()
    rolled = [e for e in control_events(data) if isinstance(e, MessagesExpunged)]
    assert sorted(e.mailbox_id for e in rolled) == sorted(boxes)
    assert {e.reason for e in rolled} == {ROLLED_BACK}
    assert verify_data_dir(data).ok


async def test_a_witnessed_message_survives_in_every_mailbox(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    a, _ = await archive.create_mailbox("a")
    b, _ = await archive.create_mailbox("b")
    writer = archive.begin_message([a.mailbox_id, b.mailbox_id])
    await writer.write(b"x\r\n")
    ids = await writer.commit(Envelope(received_at=now(), origin="journal"))
    await archive.aclose()
    (witness,) = [e for e in control_events(data) if isinstance(e, MessagesCommitted)]
    assert {(c.mailbox_id, c.message_id) for c in witness.commits} == set(ids.items())
    reopened = await Archive.open(data, CONFIG)
    try:
        for box_id, message_id in ids.items():
            assert [m.message_id for m in reopened.messages(box_id)] == [message_id]
    finally:
        await reopened.aclose()
    assert verify_data_dir(data).ok


async def test_a_swapped_key_file_is_refused(tmp_path: Path) -> None:
    """Regression (item 20): a key file replaced by one for the attacker's own key pair was
    used to seal new mail."""
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    victim, _ = await archive.create_mailbox("victim")
    other, _ = await archive.create_mailbox("attacker's own")
    await archive.aclose()
    theirs = (data / "mailboxes" / other.mailbox_id / "key").read_bytes()
    (data / "mailboxes" / victim.mailbox_id / "key").write_bytes(theirs)
    reopened = await Archive.open(data, CONFIG)
    try:
        assert "key file" in (reopened.damaged(victim.mailbox_id) or "")
        with pytest.raises(MailboxUnavailable):
            reopened.begin_message([victim.mailbox_id])
    finally:
        await reopened.aclose()


async def test_a_message_in_flight_during_a_reset_is_refused_not_sealed_to_the_old_key(
    tmp_path: Path,
) -> None:
    """Regression (item 22): a message sealed before a reset and committed after it was
    kept, hidden from POP3, and readable with the retired key and the old password."""
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    try:
        info, _ = await archive.create_mailbox("reset meanwhile")
        box = info.mailbox_id
        writer = archive.begin_message([box])
        await writer.write(b"Subject: in flight\r\n\r\nbody\r\n")
        await archive.reset_password(box)
        with pytest.raises(MailboxUnavailable):
            await writer.commit(Envelope(received_at=now(), origin="journal"))
        assert archive.messages(box) == []
    finally:
        await archive.aclose()
    # Refused before its commit record was written: nothing stored, nothing to roll back.
    assert not [e for e in control_events(data) if isinstance(e, MessagesExpunged)]
    assert verify_data_dir(data).ok


async def test_damage_found_on_open_is_recorded_once_with_what_was_lost(tmp_path: Path) -> None:
    data = tmp_path / "data"
    box, _password, kept = await trio.to_thread.run_sync(lambda: trio.run(build, data, 12))
    path, offset, _size = mailbox_records(data, box)[-1]
    raw = bytearray(path.read_bytes())
    raw[offset + 30] ^= 0xFF
    path.write_bytes(bytes(raw))
    for _ in range(2):  # a second start finds a sound log and records nothing more
        sound, _served, lost = await server_view(data, box)
        assert not sound and lost == {kept[-1]}
    (damage,) = [e for e in control_events(data) if isinstance(e, LogDamaged)]
    assert damage.moved_to.startswith(f"mailboxes/{box}/log/damaged/")
    assert (data / damage.moved_to).read_bytes() == bytes(raw[offset:])
    assert oct((data / damage.moved_to).stat().st_mode & 0o777) == oct(0o600)
    archive = await Archive.open(data, CONFIG)
    try:  # the mailbox goes on taking mail after its end was moved aside, flagged
        assert "1 acknowledged message(s) lost" in (archive.damage_report(box) or "")
        writer = archive.begin_message([box])
        await writer.write(b"after the damage\r\n")
        await writer.commit(Envelope(received_at=now(), origin="journal"))
    finally:
        await archive.aclose()
    report = verify_data_dir(data)
    assert len(report.problems) == 1 and kept[-1] in report.problems[0].reason
