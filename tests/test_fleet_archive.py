"""The archive on the fleet store (SPEC.md 17.6), in process, on a real PostgreSQL: messages
stored through the group commit, read back, expunged and compacted; the archive reopened from
the rows (and from a recovery point kept in the store); checkpoints signed; and the store,
copied out into a data folder, verifies as one."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
import trio

from gateway.events import Envelope, now
from gateway.fleet import FleetDataDir, copy_out
from gateway.log import DataDir
from gateway.services.archive import Archive, StoreConfig
from gateway.services.tree_heads import CheckpointSigner, control_origin
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF
from .peers import PostgresServer

pytestmark = pytest.mark.slow

CONFIG = StoreConfig(kdf=FAST_KDF, segment_bytes=32 * 1024)


async def store(archive: Archive, box: str, count: int) -> dict[str, bytes]:
    bodies: dict[str, bytes] = {}

    async def one(n: int) -> None:
        body = b"Subject: %d\r\n\r\n" % n + os.urandom(3000)
        writer = archive.begin_message([box])
        await writer.write(body)
        bodies[(await writer.commit(Envelope(received_at=now(), origin="journal")))[box]] = body

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(one, n)
    return bodies


def copied_out(dsn: str, folder: Path) -> DataDir:
    """The fleet store copied into a new data folder (blocking)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        data = DataDir(folder)
        copy_out(conn, data, lambda where, count: None)
        return data


async def read_all(archive: Archive, box: str, password: str) -> dict[str, bytes]:
    key = await archive.unlock(box, password)
    return {
        m.message_id: b"".join([p async for p in archive.read_message(box, m.message_id, key)])
        for m in archive.messages(box)
    }


async def test_the_archive_runs_on_the_fleet_store(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    def node() -> FleetDataDir:
        return FleetDataDir(tmp_path / "node", postgres.dsn)

    archive = await Archive.open(await trio.to_thread.run_sync(node), CONFIG)
    try:
        info, password = await archive.create_mailbox("fleet")
        box = info.mailbox_id
        bodies = await store(archive, box, 40)
        assert await read_all(archive, box, password) == bodies
        gone = sorted(bodies)[:25]
        await archive.expunge(box, gone)
        for message_id in gone:
            del bodies[message_id]
        assert await archive.compact(box, min_gain=0.01) > 0
        assert await read_all(archive, box, password) == bodies
        signer = await CheckpointSigner.open(archive, control_origin("fleet.example"))
        assert await signer.sign() is not None
        assert await archive.checkpoint(everything=True) > 0  # recovery points, in the store
    finally:
        await archive.aclose()

    with psycopg.connect(postgres.dsn) as conn:
        kept = conn.execute("SELECT count(*) FROM gateway_files WHERE name LIKE 'recovery/%'")
        assert (kept.fetchone() or (0,))[0] == 2  # the control log's and the mailbox's

    archive = await Archive.open(await trio.to_thread.run_sync(node), CONFIG)
    try:
        assert await read_all(archive, box, password) == bodies
        more = await store(archive, box, 5)
        bodies |= more
        assert await read_all(archive, box, password) == bodies
    finally:
        await archive.aclose()

    data = await trio.to_thread.run_sync(copied_out, postgres.dsn, tmp_path / "copy")
    report = await trio.to_thread.run_sync(verify_data_dir, data.root)
    assert report.ok, [str(p) for p in report.problems]
    assert report.messages == len(bodies)
