"""The archive service: mailboxes, keys, streaming messages in and out, expunge, compaction."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.config import Config
from gateway.crypto import MailboxPrivateKey, MessageCorrupt, WrongPassword
from gateway.events import Envelope, MailboxCreated, MailboxStatus, decode_control_event, now
from gateway.services.archive import (
    Archive,
    ArchiveError,
    MailboxUnavailable,
    NoSuchMailbox,
    StoreConfig,
    store_config,
)
from gateway.verify import verify_data_dir


def envelope(**kw: object) -> Envelope:
    return Envelope(received_at=now(), origin="journal", mail_from="a@example.com", **kw)  # type: ignore[arg-type]


async def store(
    archive: Archive, mailbox_ids: list[str], data: bytes, piece: int = 8192
) -> dict[str, str]:
    writer = archive.begin_message(mailbox_ids)
    for start in range(0, len(data), piece):
        await writer.write(data[start : start + piece])
    return await writer.commit(envelope(rcpt_to=tuple(mailbox_ids)))


async def read(archive: Archive, mailbox_id: str, message_id: str, key: MailboxPrivateKey) -> bytes:
    return b"".join([piece async for piece in archive.read_message(mailbox_id, message_id, key)])


async def test_messages_round_trip_and_survive_reopen(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    info, password = await archive.create_mailbox("Journal", "for tests")
    payloads = [b"", b"x", os.urandom(10_000), os.urandom(700_000), b"line\r\n" * 100_000]
    ids = [(await store(archive, [info.mailbox_id], p))[info.mailbox_id] for p in payloads]
    await archive.aclose()

    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        key = await archive.unlock(info.mailbox_id, password)
        listed = archive.messages(info.mailbox_id)
        assert [m.message_id for m in listed] == ids
        assert [m.size for m in listed] == [len(p) for p in payloads]
        for message_id, payload in zip(ids, payloads, strict=True):
            assert await read(archive, info.mailbox_id, message_id, key) == payload
        env = await archive.read_envelope(info.mailbox_id, ids[0], key)
        assert env.mail_from == "a@example.com"
        assert env.rcpt_to == (info.mailbox_id,)
    finally:
        await archive.aclose()
    assert verify_data_dir(tmp_path / "data", mailbox_id=info.mailbox_id, password=password).ok


async def test_prepared_messages_commit_later_or_vanish(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """prepare() writes the final chunk ahead of the commit record (the SMTP proxy's order),
    with other messages' records in between; the result reads and verifies like any other,
    and a prepared message that is aborted stays invisible."""
    archive = await Archive.open(tmp_path / "data", store_config)
    info, password = await archive.create_mailbox("prepared")
    box = info.mailbox_id
    payloads = [b"", b"small", os.urandom(70_000), os.urandom(600_000)]
    writers = []
    for payload in payloads:
        writer = archive.begin_message([box])
        await writer.write(payload)
        await writer.prepare()
        writers.append(writer)
    dropped = archive.begin_message([box])
    await dropped.write(b"never committed")
    await dropped.prepare()
    await store(archive, [box], b"in between")
    ids = [(await w.commit(envelope()))[box] for w in reversed(writers)]
    await dropped.abort()
    await archive.aclose()
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        key = await archive.unlock(box, password)
        assert len(archive.messages(box)) == 5
        for message_id, payload in zip(ids, reversed(payloads), strict=True):
            assert await read(archive, box, message_id, key) == payload
    finally:
        await archive.aclose()
    assert verify_data_dir(tmp_path / "data", mailbox_id=box, password=password).ok


async def test_one_message_to_several_mailboxes_is_sealed_per_mailbox(archive: Archive) -> None:
    a, pa = await archive.create_mailbox("a")
    b, pb = await archive.create_mailbox("b")
    ids = await store(archive, [a.mailbox_id, b.mailbox_id], b"hello")
    assert ids[a.mailbox_id] != ids[b.mailbox_id]
    key_a = await archive.unlock(a.mailbox_id, pa)
    key_b = await archive.unlock(b.mailbox_id, pb)
    assert await read(archive, a.mailbox_id, ids[a.mailbox_id], key_a) == b"hello"
    assert await read(archive, b.mailbox_id, ids[b.mailbox_id], key_b) == b"hello"
    with pytest.raises(MessageCorrupt):
        await read(archive, b.mailbox_id, ids[b.mailbox_id], key_a)


async def test_concurrent_appenders_lose_nothing_and_keep_order(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    boxes = [(await archive.create_mailbox(f"box {i}"))[0].mailbox_id for i in range(4)]
    sent: dict[tuple[str, int], list[bytes]] = {}

    async def sender(writer_no: int, mailbox_id: str) -> None:
        rng = random.Random(writer_no)
        for n in range(15):
            body = b"%d:%d:" % (writer_no, n) + rng.randbytes(rng.choice([10, 3000, 300_000]))
            await store(archive, [mailbox_id], body, piece=rng.choice([1000, 65536]))
            sent.setdefault((mailbox_id, writer_no), []).append(body)

    async with trio.open_nursery() as nursery:
        for w in range(16):
            nursery.start_soon(sender, w, boxes[w % 4] if w % 2 else boxes[0])
    # Group commit: concurrent commits to several mailboxes share rounds (and fdatasyncs).
    assert archive.commit_group.rounds < 16 * 15
    await archive.aclose()

    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        total = sum(len(archive.messages(mailbox_id)) for mailbox_id in boxes)
        assert total == 16 * 15
        assert sum(len(v) for v in sent.values()) == total
    finally:
        await archive.aclose()
    report = verify_data_dir(tmp_path / "data")
    assert report.ok, report.problems
    assert report.messages == 16 * 15


async def test_order_per_writer_is_kept(archive: Archive) -> None:
    info, password = await archive.create_mailbox("ordered")
    key = await archive.unlock(info.mailbox_id, password)

    async def sender(w: int) -> None:
        for n in range(10):
            await store(archive, [info.mailbox_id], b"%02d-%02d" % (w, n))

    async with trio.open_nursery() as nursery:
        for w in range(8):
            nursery.start_soon(sender, w)
    seen: dict[bytes, list[bytes]] = {}
    for message in archive.messages(info.mailbox_id):
        body = await read(archive, info.mailbox_id, message.message_id, key)
        seen.setdefault(body[:2], []).append(body)
    assert all(v == sorted(v) and len(v) == 10 for v in seen.values())
    assert len(seen) == 8


async def test_expunge_is_immediate_durable_and_compaction_reclaims(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    store_config = dataclasses.replace(store_config, compaction_grace=0)
    archive = await Archive.open(tmp_path / "data", store_config)
    info, password = await archive.create_mailbox("x")
    box = info.mailbox_id
    bodies = [os.urandom(50_000) for _ in range(40)]  # ~2 MB over 256 KiB segments
    ids = [(await store(archive, [box], b))[box] for b in bodies]
    gone = set(ids[:25]) | {ids[30]}
    assert await archive.expunge(box, sorted(gone)) == len(gone)
    assert not gone & {m.message_id for m in archive.messages(box)}
    log_dir = tmp_path / "data" / "mailboxes" / box / "log"
    before = sum(p.stat().st_size for p in log_dir.iterdir())
    reclaimed = await archive.compact(box)
    assert reclaimed > 0
    # Superseded files stay until their grace period is over (here: at once).
    assert sum(p.stat().st_size for p in log_dir.iterdir()) >= before
    assert await archive.remove_retired(box) > 0
    after = sum(p.stat().st_size for p in log_dir.iterdir())
    assert before - after == reclaimed
    key = await archive.unlock(box, password)
    for message_id, body in zip(ids, bodies, strict=True):
        if message_id not in gone:
            assert await read(archive, box, message_id, key) == body
    await archive.aclose()

    report = verify_data_dir(tmp_path / "data", mailbox_id=box, password=password)
    assert report.ok, report.problems
    assert report.messages == 40 - len(gone)
    assert report.opened_messages == 40 - len(gone)

    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        assert [m.message_id for m in archive.messages(box)] == [i for i in ids if i not in gone]
        key = await archive.unlock(box, password)
        for message_id, body in zip(ids, bodies, strict=True):
            if message_id not in gone:
                assert await read(archive, box, message_id, key) == body
        # A second pass finds nothing more to do.
        assert await archive.compact(box) == 0
    finally:
        await archive.aclose()


async def test_aborted_message_is_invisible_and_reclaimed(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    info, _ = await archive.create_mailbox("x")
    box = info.mailbox_id
    writer = archive.begin_message([box])
    await writer.write(os.urandom(600_000))
    await writer.abort()
    for _ in range(10):
        await store(archive, [box], os.urandom(40_000))
    assert len(archive.messages(box)) == 10
    await archive.aclose()
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        assert len(archive.messages(box)) == 10
        assert await archive.compact(box, min_gain=0.1) > 500_000
    finally:
        await archive.aclose()
    assert verify_data_dir(tmp_path / "data").ok


async def test_password_change_keeps_mail_reset_loses_it(archive: Archive) -> None:
    info, old = await archive.create_mailbox("x")
    box = info.mailbox_id
    message_id = (await store(archive, [box], b"kept"))[box]
    new = await archive.change_password(box, old, "correct horse battery staple")
    assert new == "correct horse battery staple"
    with pytest.raises(WrongPassword):
        await archive.unlock(box, old)
    key = await archive.unlock(box, new)
    assert await read(archive, box, message_id, key) == b"kept"
    with pytest.raises(WrongPassword):
        await archive.change_password(box, "not it", "whatever")

    reset, lost = await archive.reset_password(box)
    assert lost == 1
    new_key = await archive.unlock(box, reset)
    with pytest.raises(MessageCorrupt):
        await read(archive, box, message_id, new_key)
    later = (await store(archive, [box], b"after reset"))[box]
    assert await read(archive, box, later, new_key) == b"after reset"


async def test_maintenance_compacts_every_mailbox_and_deletes_expired_files(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    config = dataclasses.replace(store_config, compaction_grace=0)
    archive = await Archive.open(tmp_path / "data", config)
    try:
        boxes = [(await archive.create_mailbox(name))[0].mailbox_id for name in "ab"]
        for box in boxes:
            ids = [(await store(archive, [box], os.urandom(60_000)))[box] for _ in range(12)]
            await archive.expunge(box, ids[:9])
        reclaimed, deleted = await archive.maintain()
        assert reclaimed > 2 * 9 * 60_000 * 0.8
        assert deleted >= 2
        assert await archive.maintain() == (0, 0)
        assert all(len(archive.messages(box)) == 3 for box in boxes)
    finally:
        await archive.aclose()
    assert verify_data_dir(tmp_path / "data").ok


async def test_wrong_password_and_unknown_ids(archive: Archive) -> None:
    info, _ = await archive.create_mailbox("x")
    before = sorted(p.relative_to(archive.data.root) for p in archive.data.root.rglob("*"))
    with pytest.raises(WrongPassword):
        await archive.unlock(info.mailbox_id, "wrong")
    for bad in [
        "../" + info.mailbox_id,
        "0" * 32,
        "f" * 33,
        "x" * 10_000,
        info.mailbox_id + "/..",
        "",
    ]:
        with pytest.raises(NoSuchMailbox):
            await archive.unlock(bad, "pw")
        with pytest.raises(NoSuchMailbox):
            archive.begin_message([bad])
    after = sorted(p.relative_to(archive.data.root) for p in archive.data.root.rglob("*"))
    assert after == before  # nothing written, nothing created
    assert archive.mailbox(info.mailbox_id.upper()).mailbox_id == info.mailbox_id
    assert archive.mailbox(f"MBX-{info.mailbox_id}@example.org").mailbox_id == info.mailbox_id


async def test_suspend_and_delete_rules(archive: Archive) -> None:
    info, _ = await archive.create_mailbox("x")
    box = info.mailbox_id
    await store(archive, [box], b"one")
    with pytest.raises(ArchiveError, match="suspended"):
        await archive.delete_mailbox(box)
    await archive.update_mailbox(box, status=MailboxStatus.SUSPENDED)
    with pytest.raises(MailboxUnavailable):
        archive.begin_message([box])
    with pytest.raises(ArchiveError, match="holds 1 messages"):
        await archive.delete_mailbox(box)
    assert await archive.delete_mailbox(box, purge=True) == 1
    with pytest.raises(NoSuchMailbox):
        archive.mailbox(box)
    assert not (archive.data.mailboxes_dir / box).exists()


async def test_corrupted_key_file_marks_mailbox_damaged(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    info, password = await archive.create_mailbox("x")
    await archive.aclose()
    key_path = tmp_path / "data" / "mailboxes" / info.mailbox_id / "key"
    raw = bytearray(key_path.read_bytes())
    raw[100] ^= 0x40
    key_path.write_bytes(bytes(raw))
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        assert archive.damaged(info.mailbox_id) is not None
        with pytest.raises(MailboxUnavailable):
            archive.begin_message([info.mailbox_id])
        with pytest.raises(MailboxUnavailable):
            await archive.unlock(info.mailbox_id, password)
    finally:
        await archive.aclose()
    report = verify_data_dir(tmp_path / "data")
    assert not report.ok
    assert any("key file" in str(p) for p in report.problems)


async def test_verify_locates_a_flipped_byte_in_a_mailbox_log(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    info, _ = await archive.create_mailbox("x")
    for _ in range(3):
        await store(archive, [info.mailbox_id], os.urandom(1000))
    await archive.aclose()
    seg = next((tmp_path / "data" / "mailboxes" / info.mailbox_id / "log").glob("*.seg"))
    raw = bytearray(seg.read_bytes())
    raw[200] ^= 1
    seg.write_bytes(bytes(raw))
    report = verify_data_dir(tmp_path / "data")
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.where == info.mailbox_id and problem.path == str(seg)
    assert problem.offset is not None and problem.offset <= 200


async def test_control_log_and_storage_through_the_facade(archive: Archive) -> None:
    """What the audit feed and the admin status read, through the archive's public names."""
    seen: list[tuple[list[int], bool]] = []
    archive.observe_control(
        lambda records, durable: seen.append(([r.seq for r in records], durable))
    )
    first = archive.next_control_seq
    info, _password = await archive.create_mailbox("Journal")
    await archive.sync_control()
    assert archive.next_control_seq > first
    assert any(first in seqs and durable for seqs, durable in seen)
    records = await trio.to_thread.run_sync(lambda: list(archive.read_control(first)))
    assert [r.seq for r in records] == list(range(first, archive.next_control_seq))
    event = decode_control_event(records[0].body)
    assert isinstance(event, MailboxCreated) and event.mailbox_id == info.mailbox_id
    usage = await archive.storage_usage()
    assert usage.used_bytes > 0 and usage.free_bytes > 0


def test_store_config_follows_the_configuration() -> None:
    config = msgspec.convert(
        {"smtp": {"max_message_size": 1 << 20}, "store": {"segment_bytes": 1 << 22}}, Config
    )
    settings = store_config(config)
    assert (settings.segment_bytes, settings.max_message_bytes) == (1 << 22, 1 << 20)
    assert settings.kdf == config.store.kdf.params()
