"""Backlog alarms and the free-space floor (SPEC.md 13.8): each crossing recorded once and
cleared once, a mailbox's own thresholds over the configuration's, and intake refused with
452 4.3.1 under the floor, by a real gateway to smtplib."""

from __future__ import annotations

import smtplib
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from gateway.config import AlarmSettings
from gateway.events import (
    Envelope,
    MailboxAlarmCleared,
    MailboxAlarmRaised,
    StoreSpaceLow,
    StoreSpaceRestored,
    decode_control_event,
    now,
)
from gateway.log import RecordKind
from gateway.services.alarms import Alarms
from gateway.services.archive import Archive, InsufficientStorage, StoreConfig
from gateway.services.metrics import Gauges, MailboxGauges, Metrics

from .conftest import FAST_KDF
from .test_workers import CONFIG, create_mailbox, serve

HOUR = 3600.0


async def store(archive: Archive, mailbox_id: str, body: bytes = b"Subject: x\r\n\r\nx\r\n") -> str:
    writer = archive.begin_message([mailbox_id])
    await writer.write(body)
    ids = await writer.commit(Envelope(received_at=now(), origin="journal"))
    return ids[mailbox_id]


def alarm_events(archive: Archive) -> list[tuple[str, str]]:
    found = []
    for record in archive.read_control():
        if record.kind != RecordKind.EVENT:
            continue
        event = decode_control_event(record.body)
        if isinstance(event, MailboxAlarmRaised):
            found.append(("raised", event.alarm))
        elif isinstance(event, MailboxAlarmCleared):
            found.append(("cleared", event.alarm))
        elif isinstance(event, StoreSpaceLow | StoreSpaceRestored):
            found.append((type(event).__name__, ""))
    return found


async def test_each_crossing_is_recorded_once_and_cleared_once(tmp_path: Path) -> None:
    archive = await Archive.open(tmp_path / "data", StoreConfig(kdf=FAST_KDF))
    try:
        info, _ = await archive.create_mailbox("legal")
        box = info.mailbox_id
        ids = [await store(archive, box) for _ in range(3)]
        settings = AlarmSettings(max_waiting_age=HOUR, max_waiting_bytes=0, expect_mail_every=0)
        alarms = Alarms(archive, settings, min_free_bytes=0)
        await alarms.check_mailboxes(now())
        assert alarm_events(archive) == []  # young enough
        later = now() + timedelta(hours=2)
        await alarms.check_mailboxes(later)
        await alarms.check_mailboxes(later)  # still up: not recorded again
        assert alarm_events(archive) == [("raised", "age")]
        assert archive.state.alarms[box] == {"age"}
        await archive.expunge(box, ids)  # the archive fetched everything
        await alarms.check_mailboxes(later)
        assert alarm_events(archive) == [("raised", "age"), ("cleared", "age")]
        assert archive.state.alarms[box] == set()
    finally:
        await archive.aclose()


async def test_size_and_quiet_alarms_and_a_mailboxs_own_thresholds(tmp_path: Path) -> None:
    archive = await Archive.open(tmp_path / "data", StoreConfig(kdf=FAST_KDF))
    try:
        info, _ = await archive.create_mailbox("journal")
        box = info.mailbox_id
        settings = AlarmSettings(max_waiting_age=0, max_waiting_bytes=100, expect_mail_every=HOUR)
        alarms = Alarms(archive, settings, min_free_bytes=0)
        await alarms.check_mailboxes(now() + timedelta(hours=2))  # created, never mailed
        assert alarm_events(archive) == [("raised", "quiet")]
        await store(archive, box, b"Subject: big\r\n\r\n" + b"x" * 500 + b"\r\n")
        await alarms.check_mailboxes(now())
        assert alarm_events(archive)[1:] == [("raised", "size"), ("cleared", "quiet")]
        # Its own threshold over the configuration's: 0 turns the size alarm off for it.
        await archive.update_mailbox(
            box, alarms={"max_waiting_bytes": 0, "expect_mail_every": None}
        )
        assert archive.mailbox(box).max_waiting_bytes == 0
        await alarms.check_mailboxes(now())
        assert alarm_events(archive)[-1] == ("cleared", "size")
        await alarms.check_mailboxes(now() + timedelta(hours=2))  # quiet follows the default
        assert alarm_events(archive)[-1] == ("raised", "quiet")
    finally:
        await archive.aclose()


async def test_under_the_free_space_floor_intake_refuses(tmp_path: Path) -> None:
    archive = await Archive.open(tmp_path / "data", StoreConfig(kdf=FAST_KDF))
    try:
        info, _ = await archive.create_mailbox("legal")
        settings = AlarmSettings()
        await Alarms(archive, settings, min_free_bytes=1 << 62).check_space()
        assert archive.state.store_space_low
        with pytest.raises(InsufficientStorage):
            archive.begin_message([info.mailbox_id])
        await Alarms(archive, settings, min_free_bytes=0).check_space()
        assert not archive.state.store_space_low
        await store(archive, info.mailbox_id)
        assert alarm_events(archive) == [("StoreSpaceLow", ""), ("StoreSpaceRestored", "")]
    finally:
        await archive.aclose()
    # The state survives a restart (it is the control log's).
    archive = await Archive.open(tmp_path / "data", StoreConfig(kdf=FAST_KDF))
    try:
        assert not archive.state.store_space_low
    finally:
        await archive.aclose()


@pytest.mark.slow
def test_a_gateway_under_its_floor_answers_452(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox_id, _password = trio.run(create_mailbox, tmp_path / "data")
    huge = CONFIG.replace("min_free_bytes = 0\n", "min_free_bytes = 4611686018427387904\n")
    monkeypatch.setattr("tests.test_workers.CONFIG", huge)
    with serve(tmp_path, workers=1) as served:
        served.wait_for_line(r"event=store-space-low")
        with smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=20) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail(
                    "a@example.com", [f"mbx-{mailbox_id}@localhost"], b"Subject: x\r\n\r\nx\r\n"
                )
            assert refused.value.smtp_code == 452
            assert "4.3.1" in str(refused.value)


def test_alarms_are_exported() -> None:
    gauges = Gauges(
        sessions_active=0,
        workers=1,
        workers_connected_total=1,
        store_bytes=1,
        store_free_bytes=1,
        certificate_expiry=None,
        store_space_low=True,
        mailboxes=[
            MailboxGauges(
                mailbox_id="ab" * 16,
                name="legal",
                status="active",
                messages=3,
                octets=300,
                oldest_age=7200.0,
                last_retrieval_age=None,
                damaged=False,
                alarms=frozenset({"age"}),
            )
        ],
    )
    text = Metrics({}).exposition(gauges).decode()
    assert f'gateway_mailbox_alarm{{alarm="age",mailbox="{"ab" * 16}"}} 1.0' in text
    assert f'gateway_mailbox_alarm{{alarm="quiet",mailbox="{"ab" * 16}"}} 0.0' in text
    assert "gateway_store_space_low 1.0" in text
