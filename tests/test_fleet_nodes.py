"""Several nodes on one fleet store (SPEC.md 17.5), in process, on a real PostgreSQL: a
mailbox made on one is served by the other; both store into one mailbox at once and its chain
stays one line; what one expunges the other stops serving; both fold the control log in its
one order; a maildrop locked on one is refused on the other, and stays locked when the
connection holding the lock is lost; a node opened while the others work rolls nothing of
theirs back; and the store, copied out, verifies."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from gateway.events import (
    Envelope,
    MessageAbandoned,
    MessagesExpunged,
    decode_control_event,
    decode_message_event,
    now,
)
from gateway.fleet import FleetDataDir
from gateway.log import CONTROL_LOG_ID, LogRecord, LogWriteError, RecordKind
from gateway.services.archive import Archive
from gateway.verify import verify_data_dir

from .peers import PostgresServer
from .test_fleet_archive import CONFIG, copied_out, read_all, store
from .test_journal_protocol import worker

pytestmark = pytest.mark.slow


@asynccontextmanager
async def node(postgres: PostgresServer, folder: Path, *, name: str = "") -> AsyncIterator[Archive]:
    """A node (named after its folder): its archive on the fleet store, following the
    other nodes."""
    data = await trio.to_thread.run_sync(
        functools.partial(FleetDataDir, folder, postgres.dsn, node=name or folder.name)
    )
    archive = await Archive.open(data, CONFIG)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(archive.follow_others)
            yield archive
            nursery.cancel_scope.cancel()
    finally:
        await archive.aclose()


def seqs_seen(archive: Archive) -> list[int]:
    """The control records the node folds from now on (its own and the others'), by seq."""
    seen: list[int] = []

    def observe(records: list[LogRecord], _durable: bool) -> None:
        seen.extend(r.seq for r in records)

    archive.observe_control(observe)
    return seen


class Told:
    """The mailboxes a node told its listeners changed (adopted, for one another node made)."""

    def __init__(self, archive: Archive) -> None:
        self.ids: set[str] = set()
        self.changed = trio.Event()
        archive.mailbox_listeners.append(self._told)

    def _told(self, mailbox_id: str) -> None:
        self.ids.add(mailbox_id)
        self.changed.set()

    async def wait(self, mailbox_id: str) -> None:
        with trio.fail_after(10):
            while mailbox_id not in self.ids:
                self.changed = trio.Event()
                await self.changed.wait()


async def mailbox_on_both(a: Archive, b: Archive, name: str) -> tuple[str, str]:
    """A mailbox made on a, once b has adopted it: its id and password."""
    told_b = Told(b)
    info, password = await a.create_mailbox(name)
    await told_b.wait(info.mailbox_id)  # b folded the control log and opened it
    return info.mailbox_id, password


async def assert_copy_verifies(postgres: PostgresServer, folder: Path) -> None:
    """One chain per log: the store, copied out, verifies as a data folder."""
    copy = await trio.to_thread.run_sync(copied_out, postgres.dsn, folder)
    report = await trio.to_thread.run_sync(verify_data_dir, copy.root)
    assert report.ok, [str(p) for p in report.problems]


async def test_two_nodes_share_one_store(postgres: PostgresServer, tmp_path: Path) -> None:
    async with (
        node(postgres, tmp_path / "a") as a,
        node(postgres, tmp_path / "b") as b,
    ):
        seen_a, seen_b = seqs_seen(a), seqs_seen(b)
        box, password = await mailbox_on_both(a, b, "shared")
        await b.opened(box)

        # Both store into the one mailbox at once.
        async with trio.open_nursery() as nursery:
            stored: list[dict[str, bytes]] = []

            async def into(archive: Archive) -> None:
                stored.append(await store(archive, box, 40))

            nursery.start_soon(into, a)
            nursery.start_soon(into, b)
        bodies = stored[0] | stored[1]
        assert len(bodies) == 80

        # A maildrop: b locks it (and catches up), a is refused until b lets go.
        assert await b.lock_maildrop(box)
        assert not await a.lock_maildrop(box)
        assert await read_all(b, box, password) == bodies
        expunged = sorted(bodies)[:30]
        assert await b.expunge(box, expunged) == 30
        await b.unlock_maildrop(box)
        assert await a.lock_maildrop(box)
        remaining = {m: body for m, body in bodies.items() if m not in expunged}
        assert await read_all(a, box, password) == remaining
        await a.unlock_maildrop(box)

        # A third node opened while the two work rolls back nothing of theirs.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store, a, box, 20)
            async with node(postgres, tmp_path / "c") as c:
                await c.opened(box)
                assert await c.lock_maildrop(box)
                served = await read_all(c, box, password)
                assert set(remaining) <= set(served)
                await c.unlock_maildrop(box)

        # Both nodes folded every control record, in the log's one order.
        await a.sync_control()
        await b.catch_up()
        assert a.next_control_seq == b.next_control_seq
        end = a.next_control_seq
        assert seen_a == sorted(seen_a) and seen_b == sorted(seen_b)
        assert seen_a[-1] == end - 1 and seen_b[-1] == end - 1
        assert set(seen_a) == set(range(seen_a[0], end))
        assert set(seen_b) == set(range(seen_b[0], end))

    # Nothing was rolled back: every expunge is the one b asked for.
    data = await trio.to_thread.run_sync(FleetDataDir, tmp_path / "d", postgres.dsn)
    try:
        reasons = [
            event.reason
            for record in await trio.to_thread.run_sync(lambda: list(data.records(None)))
            if record.kind == RecordKind.EVENT
            and isinstance(event := decode_control_event(record.body), MessagesExpunged)
        ]
        assert reasons == [""]
    finally:
        data.unlock()

    await assert_copy_verifies(postgres, tmp_path / "copy")


async def test_compaction_spares_what_another_node_is_writing(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """A compacts while b has a message half written into the same mailbox: what the
    expunged messages held goes, b's chunks stay, and b's commit serves the whole message."""
    async with (
        node(postgres, tmp_path / "a") as a,
        node(postgres, tmp_path / "b") as b,
    ):
        box, password = await mailbox_on_both(a, b, "compacted")
        body = b"Subject: long\r\n\r\n" + os.urandom(300_000)
        writer = b.begin_message([box])
        await writer.write(body)
        await writer.prepare()  # every chunk in the log, no commit yet

        bodies = await store(a, box, 60)  # a's messages after b's chunks, several segments
        await a.expunge(box, list(bodies))
        reclaimed = await a.compact(box, min_gain=0.0)
        assert reclaimed > 100_000

        message_id = (await writer.commit(Envelope(received_at=now(), origin="journal")))[box]
        assert await b.lock_maildrop(box)
        assert await read_all(b, box, password) == {message_id: body}
        await b.unlock_maildrop(box)
        assert await a.lock_maildrop(box)
        assert await read_all(a, box, password) == {message_id: body}
        await a.unlock_maildrop(box)

    await assert_copy_verifies(postgres, tmp_path / "copy")


async def test_compaction_drops_what_another_node_gave_up(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """B gives a half-written message up (its client went away): its log names the chunks
    abandoned, and a's compaction drops them, which it could not tell from a message in
    flight otherwise; a message b is still writing is spared, and served whole after."""
    async with (
        node(postgres, tmp_path / "a") as a,
        node(postgres, tmp_path / "b") as b,
    ):
        box, password = await mailbox_on_both(a, b, "abandoned")
        given_up = b.begin_message([box])
        await given_up.write(b"Subject: gone\r\n\r\n" + os.urandom(300_000))
        await given_up.prepare()
        await given_up.abort()
        body = b"Subject: kept\r\n\r\n" + os.urandom(100_000)
        writing = b.begin_message([box])
        await writing.write(body)
        await writing.prepare()
        await store(a, box, 60)  # several segments after them

        records = await trio.to_thread.run_sync(lambda: list(a.data.records(box)))
        events = [decode_message_event(r.body) for r in records if r.kind == RecordKind.EVENT]
        (abandoned,) = [e for e in events if isinstance(e, MessageAbandoned)]
        assert len(abandoned.chunk_seqs) >= 2
        reclaimed = await a.compact(box, min_gain=0.0)
        assert reclaimed > 300_000
        left = await trio.to_thread.run_sync(lambda: list(a.data.records(box)))
        kept_seqs = {r.seq for r in left if r.kind != RecordKind.GAP}
        assert not kept_seqs & set(abandoned.chunk_seqs)

        message_id = (await writing.commit(Envelope(received_at=now(), origin="journal")))[box]
        assert await b.lock_maildrop(box)
        assert (await read_all(b, box, password))[message_id] == body
        await b.unlock_maildrop(box)

    await assert_copy_verifies(postgres, tmp_path / "copy")


def test_maildrop_locks_are_taken_again_after_their_connection_is_lost(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node whose connection of maildrop locks the server ended takes its locks again
    (within its follower's next wait), so another node still finds them taken; one another
    node took in between is lost, and logged."""
    a = FleetDataDir(tmp_path / "a", postgres.dsn, application_name="node-a")
    b = FleetDataDir(tmp_path / "b", postgres.dsn, application_name="node-b")
    kept, taken = "11" * 16, "22" * 16
    try:
        assert a.lock_maildrop(kept) and a.lock_maildrop(taken)
        assert not b.lock_maildrop(kept)
        assert postgres.terminate_backends("node-a") >= 1
        assert b.lock_maildrop(taken)  # a's lock went with its connection
        a.wait_for_others(0.1)
        assert not b.lock_maildrop(kept)  # taken again by a
        assert "event=fleet-maildrop-lock-lost mailbox=" + taken in caplog.text
        assert a.holds_maildrop(kept) and not a.holds_maildrop(taken)
        assert postgres.terminate_backends("node-a") >= 1
        assert a.holds_maildrop(kept)  # asking finds the connection lost, and takes it again
        assert not b.lock_maildrop(kept)
        a.unlock_maildrop(kept)
        assert b.lock_maildrop(kept)
    finally:
        a.unlock()
        b.unlock()


def test_a_follower_reads_the_control_log_anew_whenever_it_listens_anew(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """What was committed before the follower's LISTEN sent it no notice: its first wait, and
    the first on a new connection after one was lost, report the control log as moved, so
    the node reads it (a node starting while another made a mailbox missed the mailbox)."""
    data = FleetDataDir(tmp_path / "b", postgres.dsn, application_name="node-b")
    moved = {CONTROL_LOG_ID: 1 << 62}
    try:
        assert data.wait_for_others(0.1) == moved
        assert data.wait_for_others(0.1) == {}
        assert postgres.terminate_backends("node-b") >= 1
        assert data.wait_for_others(0.1) == moved  # lost
        assert data.wait_for_others(0.1) == moved  # listening anew
        assert data.wait_for_others(0.1) == {}
    finally:
        data.unlock()


async def test_a_session_whose_maildrop_lock_was_lost_expunges_nothing(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """A worker's expunge (a POP3 QUIT) under a maildrop lock that another node took while the
    node's connection holding it was lost is refused, so two sessions never both delete."""
    data = await trio.to_thread.run_sync(
        functools.partial(FleetDataDir, tmp_path / "a", postgres.dsn, application_name="node-a")
    )
    archive = await Archive.open(data, CONFIG)
    other = await trio.to_thread.run_sync(
        functools.partial(FleetDataDir, tmp_path / "b", postgres.dsn, application_name="node-b")
    )
    try:
        info, _ = await archive.create_mailbox("lost lock")
        box = info.mailbox_id
        stored = await store(archive, box, 3)
        async with worker(archive, tmp_path / "worker") as client:
            assert await client.lock_maildrop(box)
            assert postgres.terminate_backends("node-a") >= 1
            assert other.lock_maildrop(box)  # a's lock went with its connection
            with pytest.raises(LogWriteError, match="no longer holds its maildrop lock"):
                await client.expunge(box, list(stored))
            assert len(archive.messages(box)) == 3
            other.unlock_maildrop(box)
            await client.unlock_maildrop(box)
            assert await client.lock_maildrop(box)
            assert await client.expunge(box, list(stored)) == 3
    finally:
        await archive.aclose()
        other.unlock()
