"""A full disk is a normal operating condition: the message that does not fit gets an error
and leaves nothing visible, everything acknowledged stays, and the log works again once
there is space. Uses a real, small tmpfs (root is needed to mount it; CI runs as root)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.events import Envelope, now
from gateway.log import LogWriteError
from gateway.services.archive import Archive, StoreConfig
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF


async def test_disk_full_refuses_the_message_and_keeps_everything_acknowledged(
    small_disk: Path,
) -> None:
    config = StoreConfig(kdf=FAST_KDF, segment_bytes=256 * 1024, compaction_grace=0)
    data = small_disk / "data"
    archive = await Archive.open(data, config)
    info, password = await archive.create_mailbox("x")
    box = info.mailbox_id
    stored: dict[str, bytes] = {}
    failures = 0
    for n in range(100):
        body = os.urandom(100_000) + b"%d" % n
        writer = archive.begin_message([box])
        try:
            await writer.write(body)
            ids = await writer.commit(Envelope(received_at=now(), origin="journal"))
        except LogWriteError:
            await writer.abort()
            failures += 1
            if failures >= 3:
                break
            continue
        stored[ids[box]] = body
    assert failures >= 3, "the disk never filled up"
    assert 10 < len(stored) < 40
    assert [m.message_id for m in archive.messages(box)] == list(stored)

    # Make room: expunge half, compact, drop the superseded files; then mail flows again.
    victims = list(stored)[: len(stored) // 2]
    await archive.expunge(box, victims)
    for victim in victims:
        del stored[victim]
    await archive.compact(box, min_gain=0.1)
    await archive.remove_retired(box)
    writer = archive.begin_message([box])
    await writer.write(b"after")
    stored.update(
        {
            v: b"after"
            for v in (await writer.commit(Envelope(received_at=now(), origin="journal"))).values()
        }
    )
    await archive.aclose()

    report = verify_data_dir(data, mailbox_id=box, password=password)
    assert report.ok, [str(p) for p in report.problems]
    archive = await Archive.open(data, config)
    try:
        assert [m.message_id for m in archive.messages(box)] == list(stored)
        key = await archive.unlock(box, password)
        for message_id, body in stored.items():
            assert b"".join([p async for p in archive.read_message(box, message_id, key)]) == body
    finally:
        await archive.aclose()
