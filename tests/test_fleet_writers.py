"""Writers (SPEC.md 17.5), on a real PostgreSQL: each journal process that appends to the
fleet store is one; it ends at a clean stop, or once a later process of its node started and
its lock is free, and then compaction drops the chunks it left that no commit names (a node
killed mid-message); `gateway store writers` lists them and `gateway store retire` ends those
of a node taken out of the fleet for good."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import trio

from gateway.events import MessageStored, decode_message_event
from gateway.fleet import FleetDataDir
from gateway.log import RecordKind
from gateway.services.archive import Archive

from .peers import PostgresServer
from .test_fleet_archive import CONFIG, read_all, store
from .test_fleet_nodes import assert_copy_verifies, mailbox_on_both, node

pytestmark = pytest.mark.slow


async def test_compaction_drops_what_a_killed_node_left_half_written(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """B is killed with a message half written: its connections end, and nothing says it
    gave the message up. Its chunks stay while b may only be cut off from the store (it
    could still commit the message); once b has started again (a later writer of its node,
    the old one's lock free), a's compaction drops them, and a's own messages stay whole."""
    async with node(postgres, tmp_path / "a") as a:
        b_data = await trio.to_thread.run_sync(
            functools.partial(
                FleetDataDir, tmp_path / "b", postgres.dsn, application_name="node-b", node="b"
            )
        )
        b = await Archive.open(b_data, CONFIG)
        try:
            box, password = await mailbox_on_both(b, a, "killed")
            dead = b.begin_message([box])
            await dead.write(b"Subject: cut\r\n\r\n" + os.urandom(300_000))
            await dead.prepare()
            assert postgres.terminate_backends("node-b") >= 1  # b is gone: killed
            bodies = await store(a, box, 60)  # several segments after its chunks
            orphans = await trio.to_thread.run_sync(unnamed_chunks, a, box)
            assert len(orphans) >= 2

            assert await a.compact(box, min_gain=0.0) == 0  # b may be alive, cut off
            assert await trio.to_thread.run_sync(unnamed_chunks, a, box) == orphans

            async with node(postgres, tmp_path / "b-again", name="b"):  # b starts again
                assert await a.compact(box, min_gain=0.0) > 300_000
            assert await trio.to_thread.run_sync(unnamed_chunks, a, box) == set()
            assert await a.lock_maildrop(box)
            assert await read_all(a, box, password) == bodies
            await a.unlock_maildrop(box)
        finally:
            await trio.to_thread.run_sync(b_data.unlock)
    await assert_copy_verifies(postgres, tmp_path / "copy")


def unnamed_chunks(archive: Archive, box: str) -> set[int]:
    """The seqs of a mailbox log's chunks that no commit record names."""
    chunks: set[int] = set()
    named: set[int] = set()
    for record in archive.data.records(box):
        if record.kind == RecordKind.CHUNK:
            chunks.add(record.seq)
        elif record.kind == RecordKind.EVENT:
            event = decode_message_event(record.body)
            if isinstance(event, MessageStored):
                named.update(event.chunk_seqs)
    return chunks - named


def test_a_writer_ends_once_a_later_one_of_its_node_started_and_it_is_gone(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node process's writer is ended only when both hold: a later writer of the same node
    started, and the old one's lock is free. Two live processes under one node name (a
    misconfiguration): the first, reconnecting after it was ended, refuses to append rather
    than commit messages whose chunks may be gone. A clean stop ends a writer at once."""
    folders = {name: tmp_path / name for name in ("x", "y", "z")}
    nodes = {"x": "same", "y": "same", "z": "other"}
    x, y, z = (
        FleetDataDir(folders[n], postgres.dsn, application_name=f"node-{n}", node=nodes[n])
        for n in ("x", "y", "z")
    )
    try:
        x.lock()
        z.lock()
        writers = [x.round.writer, z.round.writer]
        assert None not in writers and len(set(writers)) == 2
        assert z.ended_writers() == frozenset()
        y.lock()  # a later writer of x's node, while x runs
        assert y.ended_writers() == frozenset()  # x holds its lock
        assert postgres.terminate_backends("node-x") >= 1
        assert y.ended_writers() == {x.round.writer}  # z's and y's live on
        with pytest.raises(psycopg.OperationalError, match="restart this node"):
            x.round.begin()
        assert "event=fleet-writer-ended" in caplog.text
        ended_y = y.round.writer
        y.unlock()
        assert z.ended_writers() == {writers[0], ended_y}
    finally:
        for data in (x, y, z):
            data.unlock()


def test_writers_are_listed_and_a_node_gone_for_good_is_retired(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """gw-x runs; gw-y was killed (its connections ended, its writer not ended: no later
    writer of its node started). `retire` refuses a running node (exit 1) and ends the
    writers of one that is gone (exit 0), which `writers` then shows."""
    x, y = (
        FleetDataDir(tmp_path / n, postgres.dsn, application_name=f"node-{n}", node=f"gw-{n}")
        for n in ("x", "y")
    )
    try:
        x.lock()
        y.lock()
        assert postgres.terminate_backends("node-y") >= 1
        listed = store_command(postgres, "writers")
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert [line.split()[:3] for line in lines] == [
            [str(x.round.writer), "gw-x", "running"],
            [str(y.round.writer), "gw-y", "gone"],
        ]
        assert all(" ended -" in line for line in lines)

        refused = store_command(postgres, "retire", "gw-x")
        assert refused.returncode == 1
        assert f"writer {x.round.writer} of gw-x is running" in refused.stdout
        retired = store_command(postgres, "retire", "gw-y")
        assert retired.returncode == 0, retired.stdout + retired.stderr
        assert x.ended_writers() == {y.round.writer}
        states = [
            line.split()[2] for line in store_command(postgres, "writers").stdout.splitlines()
        ]
        assert states == ["running", "ended"]
    finally:
        x.unlock()
        y.unlock()


def store_command(postgres: PostgresServer, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "store", *argv, "--dsn", postgres.dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
