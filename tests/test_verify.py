"""gateway verify: the compliance replay, as an auditor runs it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from gateway.events import Envelope, LogDamaged, LogTailTruncated, decode_control_event, now
from gateway.log import RECOVERY_FILE, TREE_FILE, iter_log
from gateway.log._framing import Gap, encode_gap
from gateway.services.archive import CONTROL_LOG_ID, Archive, StoreConfig
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF

CONFIG = StoreConfig(kdf=FAST_KDF, segment_bytes=8 * 1024, compaction_grace=0)


async def build(data: Path, messages: int = 6) -> tuple[str, str, list[str]]:
    """A small data folder with a compaction cut in it and no superseded files left."""
    archive = await Archive.open(data, CONFIG)
    try:
        info, password = await archive.create_mailbox("audited")
        box = info.mailbox_id
        ids = []
        for n in range(messages):
            writer = archive.begin_message([box])
            await writer.write(b"message %d\r\n" % n * 200)
            ids.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[box])
        await archive.expunge(box, ids[:2])
        assert await archive.compact(box, min_gain=0.01) > 0
        await archive.remove_retired(box)
        return box, password, ids[2:]
    finally:
        await archive.aclose()


def data_files(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*") if p.is_file() and p.name != "gateway.lock")


def test_a_clean_folder_verifies_and_opens_every_message(tmp_path: Path) -> None:
    box, password, kept = trio.run(build, tmp_path / "data")
    report = verify_data_dir(tmp_path / "data", mailbox_id=box, password=password)
    assert report.ok, [str(p) for p in report.problems]
    assert report.messages == len(kept) == report.opened_messages


def test_each_mailbox_log_is_fetched_only_while_it_is_verified(tmp_path: Path) -> None:
    """``fetch`` (how ``verify --dsn`` copies a fleet store out one mailbox at a time): every
    mailbox's log is verified, and opened, inside its fetch, so the folder never holds more
    than one; without it the logs are missing and verify says so."""
    data = tmp_path / "data"
    boxes = [trio.run(build, data)[:2]]
    archive = trio.run(Archive.open, data, CONFIG)
    try:
        made = [trio.run(archive.create_mailbox, f"also {n}") for n in range(2)]
    finally:
        trio.run(archive.aclose)
    boxes += [(info.mailbox_id, password) for info, password in made]
    stash = tmp_path / "stash"
    for box, _password in boxes:
        shutil.move(data / "mailboxes" / box / "log", stash / box)
    missing = verify_data_dir(data)  # the logs are not there
    assert sorted(p.where for p in missing.problems) == sorted(b for b, _p in boxes)
    assert {p.reason for p in missing.problems} == {"mailbox log is missing"}

    fetched: list[str] = []
    present: list[int] = []

    @contextlib.contextmanager
    def fetch(box: str) -> Iterator[None]:
        fetched.append(box)
        shutil.copytree(stash / box, data / "mailboxes" / box / "log")
        present.append(len(list(data.glob("mailboxes/*/log"))))
        try:
            yield
        finally:
            shutil.rmtree(data / "mailboxes" / box / "log")

    box, password = boxes[0]
    report = verify_data_dir(data, mailbox_id=box, password=password, fetch=fetch)
    assert report.ok, [str(p) for p in report.problems]
    assert report.opened_messages == 4  # the first mailbox's messages, all opened
    assert sorted(fetched) == sorted([b for b, _p in boxes] + [box])
    assert present == [1] * len(fetched)


@pytest.mark.slow
def test_flipping_any_byte_anywhere_is_detected_and_located(tmp_path: Path) -> None:
    data = tmp_path / "data"
    trio.run(build, data)
    files = data_files(data)
    assert any(".g" in p.name for p in files), "the folder should hold a compacted segment"
    assert sum(p.name == RECOVERY_FILE for p in files) == 2, "control and mailbox recovery points"
    checked = 0
    for path in files:
        original = path.read_bytes()
        for offset in range(len(original)):
            damaged = bytearray(original)
            damaged[offset] ^= 0x01
            path.write_bytes(bytes(damaged))
            report = verify_data_dir(data)
            assert not report.ok, f"{path.name} offset {offset}: not detected"
            if path.name.endswith(".seg"):
                located = [p for p in report.problems if p.path == str(path)]
                assert located, f"{path.name} offset {offset}: {report.problems}"
                assert located[0].offset is not None and located[0].offset <= offset
            elif path.name == TREE_FILE:  # SPEC.md 8.1: the leaves and every hash above
                located = [p for p in report.problems if p.path == str(path)]
                assert located, f"{path} offset {offset}: {report.problems}"
                assert located[0].offset is not None and located[0].offset <= offset
            elif path.name == RECOVERY_FILE:  # SPEC.md 6.7: a recovery point, checksummed
                located = [p for p in report.problems if p.path == str(path)]
                assert located, f"{path} offset {offset}: {report.problems}"
            else:
                assert any("key file" in str(p) for p in report.problems), report.problems
            checked += 1
        path.write_bytes(original)
    assert checked > 5000
    assert verify_data_dir(data).ok


def test_a_forged_gap_is_not_confirmed(tmp_path: Path) -> None:
    """Someone who deletes a message's records and puts a GAP record with the right chain
    value in their place still fails verify: the control log never recorded that cut."""
    data = tmp_path / "data"
    box, _password, _kept = trio.run(build, data)
    log_dir = data / "mailboxes" / box / "log"
    records = list(iter_log(log_dir, bytes.fromhex(box)))
    victim = next(r for r in records if r.kind == 2 and r.location.offset > 0)
    path = next(log_dir.glob(f"{victim.location.segment:020d}*.seg"))
    raw = path.read_bytes()
    forged, _ = encode_gap(Gap(victim.seq, victim.seq), victim.chain)
    start, end = victim.location.offset, victim.location.offset + victim.location.size
    path.write_bytes(raw[:start] + forged + raw[end:])
    report = verify_data_dir(data)
    assert any("without a matching compaction" in str(p) for p in report.problems), report.problems


async def reopen_and_list(data: Path, box: str) -> list[str]:
    archive = await Archive.open(data, CONFIG)
    try:
        return [m.message_id for m in archive.messages(box)]
    finally:
        await archive.aclose()


def truncations(data: Path) -> list[LogTailTruncated]:
    events = [decode_control_event(r.body) for r in iter_log(data / "control", CONTROL_LOG_ID)]
    return [e for e in events if isinstance(e, LogTailTruncated)]


def damage_events(data: Path) -> list[LogDamaged]:
    events = [decode_control_event(r.body) for r in iter_log(data / "control", CONTROL_LOG_ID)]
    return [e for e in events if isinstance(e, LogDamaged)]


async def write_unfinished(data: Path, box: str) -> None:
    """A message whose first chunk is written but whose commit never comes (a crash)."""
    archive = await Archive.open(data, CONFIG)
    try:
        writer = archive.begin_message([box])
        await writer.write(os.urandom(300 * 1024))
        await writer.abort()
    finally:
        await archive.aclose()


def test_a_torn_unacknowledged_tail_is_a_note_for_verify_and_cut_on_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    box, _password, kept = trio.run(build, data)
    trio.run(write_unfinished, data, box)
    tail = sorted((data / "mailboxes" / box / "log").glob("*.seg"))[-1]
    whole = tail.read_bytes()
    tail.write_bytes(whole[:-30])  # the unfinished message's chunk cut short
    report = verify_data_dir(data)
    assert report.ok, report.problems
    assert any("partial record" in note for note in report.notes)
    assert trio.run(reopen_and_list, data, box) == kept
    (cut,) = truncations(data)
    assert cut.log == box and cut.dropped_bytes == len(whole) - 30 - cut.offset
    assert not damage_events(data)
    assert verify_data_dir(data).ok


def test_a_torn_acknowledged_record_is_damage_kept_aside_and_reported(tmp_path: Path) -> None:
    """Regression: cutting inside the newest commit (a message that got its 250) used to be
    a note for verify and a silent cut for the server."""
    data = tmp_path / "data"
    box, _password, kept = trio.run(build, data)
    tail = sorted((data / "mailboxes" / box / "log").glob("*.seg"))[-1]
    whole = tail.read_bytes()
    tail.write_bytes(whole[:-30])
    before = verify_data_dir(data)
    assert {p.path for p in before.problems} == {str(tail)}, before.problems
    assert any("witnessed" in p.reason for p in before.problems)
    assert any(kept[-1] in p.reason for p in before.problems)
    assert trio.run(reopen_and_list, data, box) == kept[:-1]
    assert not truncations(data)
    (damage,) = damage_events(data)
    assert damage.lost_message_ids == (kept[-1],)
    aside = data / damage.moved_to
    assert whole[damage.offset : len(whole) - 30] == aside.read_bytes()
    after = verify_data_dir(data)
    assert not after.ok
    assert any(kept[-1] in p.reason and damage.moved_to in p.reason for p in after.problems)


def test_a_garbage_tail_is_a_problem_for_verify_and_cut_on_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    box, _password, kept = trio.run(build, data)
    tail = sorted((data / "mailboxes" / box / "log").glob("*.seg"))[-1]
    size = tail.stat().st_size
    with open(tail, "ab") as f:
        f.write(b"\x17" * 1000)
    report = verify_data_dir(data)
    assert [(p.path, p.offset) for p in report.problems] == [(str(tail), size)]
    assert trio.run(reopen_and_list, data, box) == kept
    (cut,) = truncations(data)
    assert (cut.log, cut.offset, cut.dropped_bytes) == (box, size, 1000)
    assert verify_data_dir(data).ok


def test_an_unconfirmed_compaction_is_ignored_and_removed(tmp_path: Path) -> None:
    """A compacted file without its LogCompacted event (a crash between the two, or a copy
    that caught the file but not the event) must not count: the original holds everything."""
    data = tmp_path / "data"
    box, _password, kept = trio.run(build, data)
    log_dir = data / "mailboxes" / box / "log"
    tail = sorted(log_dir.glob("*.seg"))[-1]
    bogus = log_dir / (tail.name[:20] + ".g7.seg")
    bogus.write_bytes(tail.read_bytes()[:200])
    assert verify_data_dir(data).ok
    assert trio.run(reopen_and_list, data, box) == kept
    assert not bogus.exists()


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_cli_exit_codes_and_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    box, password, kept = trio.run(build, data)
    ok = run_cli("verify", "--data-dir", str(data))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == "OK"
    assert f"messages {len(kept)} " in ok.stdout

    opened = run_cli("verify", "--data-dir", str(data), "--mailbox", box, stdin=password + "\n")
    assert opened.returncode == 0, opened.stdout
    assert f"opened and authenticated {len(kept)} messages" in opened.stdout
    assert password not in opened.stdout + opened.stderr

    wrong = run_cli("verify", "--data-dir", str(data), "--mailbox", box, stdin="nope\n")
    assert wrong.returncode == 1
    assert "cannot open the key" in wrong.stdout

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    segment = sorted((copy / "control").glob("*.seg"))[0]
    raw = bytearray(segment.read_bytes())
    raw[300] ^= 0x20
    segment.write_bytes(bytes(raw))
    bad = run_cli("verify", "--data-dir", str(copy))
    assert bad.returncode == 1
    assert "PROBLEM: control:" in bad.stdout and str(segment) in bad.stdout
    assert bad.stdout.splitlines()[-1] == "FAILED: 1 problem(s)"

    usage = run_cli("verify", "--bogus")
    assert usage.returncode == 2


def test_serve_refuses_a_data_folder_in_use(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def hold_and_try() -> subprocess.CompletedProcess[str]:
        archive = await Archive.open(data, dataclasses.replace(CONFIG))
        try:
            return await trio.to_thread.run_sync(lambda: run_cli("serve", "--data-dir", str(data)))
        finally:
            await archive.aclose()

    result = trio.run(hold_and_try)
    assert result.returncode == 3
    assert "another gateway process" in result.stderr
