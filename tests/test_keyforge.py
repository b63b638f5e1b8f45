"""The key forge: prepared message keys from a child process, transparently."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio
import trio.lowlevel

from gateway.events import Envelope, now
from gateway.services.archive import Archive, StoreConfig
from gateway.services.keyforge import KeyForge
from gateway.verify import verify_data_dir


async def store_many(archive: Archive, box: str, count: int) -> dict[str, bytes]:
    stored = {}
    for n in range(count):
        body = b"message %d " % n + os.urandom(n % 700)
        writer = archive.begin_message([box])
        await writer.write(body)
        stored[(await writer.commit(Envelope(received_at=now(), origin="journal")))[box]] = body
        await trio.lowlevel.checkpoint()  # let the forge refill, as a real intake would
    return stored


async def test_prepared_keys_seal_messages_that_open(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        info, password = await archive.create_mailbox("x")
        box = info.mailbox_id
        forge = KeyForge(batch=8)
        async with trio.open_nursery() as nursery:
            await nursery.start(forge.run)
            archive.key_forge = forge
            stored = await store_many(archive, box, 20)  # primes the pool
            with trio.fail_after(10):
                while forge.statistics()["pooled"] < 8:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            stored |= await store_many(archive, box, 100)
            assert forge.served > 50
            # A reset makes a new key: the old pool is dropped, the new key gets its own.
            password, _lost = await archive.reset_password(box)
            fresh = await store_many(archive, box, 30)
            nursery.cancel_scope.cancel()
        key = await archive.unlock(box, password)
        for message_id, body in fresh.items():
            assert b"".join([p async for p in archive.read_message(box, message_id, key)]) == body
    finally:
        await archive.aclose()
    report = verify_data_dir(tmp_path / "data", mailbox_id=box, password=password)
    assert report.ok, report.problems
    assert report.opened_messages == len(fresh)
    assert report.messages == len(stored) + len(fresh)


async def test_a_killed_forge_restarts_and_intake_never_waits(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        info, password = await archive.create_mailbox("x")
        box = info.mailbox_id
        forge = KeyForge(batch=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(forge.run)
            archive.key_forge = forge
            stored = await store_many(archive, box, 10)
            assert forge.pid is not None
            os.kill(forge.pid, signal.SIGKILL)
            with trio.fail_after(10):
                stored |= await store_many(archive, box, 40)  # inline while it is down
                while forge.restarts == 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            stored |= await store_many(archive, box, 40)
            nursery.cancel_scope.cancel()
        assert forge.missed > 0
        key = await archive.unlock(box, password)
        for message_id, body in stored.items():
            assert b"".join([p async for p in archive.read_message(box, message_id, key)]) == body
    finally:
        await archive.aclose()


async def test_a_forge_full_of_idle_pools_still_serves_a_new_mailbox(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Regression: pools were never let go, so once mailboxes that stopped receiving held
    the whole capacity, every later mailbox sealed inline. The least recently used go."""
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        boxes = [(await archive.create_mailbox(f"m{n}"))[0].mailbox_id for n in range(6)]
        forge = KeyForge(batch=4, capacity=12)  # room for three mailboxes' batches
        async with trio.open_nursery() as nursery:
            await nursery.start(forge.run)
            archive.key_forge = forge
            for box in boxes:
                await store_many(archive, box, 3)
                with trio.fail_after(10):
                    while forge.statistics()["pooled"] == 0:  # noqa: ASYNC110
                        await trio.sleep(0.01)
            served = forge.served
            await store_many(archive, boxes[-1], 3)
            assert forge.served > served, "the newest mailbox got no prepared key"
            assert forge.statistics()["pooled"] <= forge.capacity
            nursery.cancel_scope.cancel()
    finally:
        await archive.aclose()
