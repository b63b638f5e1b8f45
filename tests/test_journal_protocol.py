"""The journal protocol between a worker and the journal (gateway/store, SPEC.md 16.2),
over a socket pair: what must not depend on everything fitting in one frame."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from gateway.events import (
    Actor,
    Envelope,
    MailboxCreated,
    MessageAccepted,
    MessagesCommitted,
    decode_control_event,
    now,
)
from gateway.log import LogWriteError
from gateway.services.archive import Archive, ArchiveError
from gateway.store import StoreClient
from gateway.store import _client as client_module
from gateway.store import _journal as journal_module
from gateway.store import _wire as wire_module
from gateway.store._journal import Journal


@asynccontextmanager
async def worker(archive: Archive, data: Path) -> AsyncIterator[StoreClient]:
    """A StoreClient against a Journal over a socket pair, as a protocol worker runs."""
    async with trio.open_nursery() as nursery:
        journal_end, worker_end = trio.socket.socketpair()
        nursery.start_soon(Journal(archive).serve, trio.SocketStream(journal_end))
        client = StoreClient(trio.SocketStream(worker_end), data, "worker-test")
        await client.connect()
        nursery.start_soon(client.run)
        yield client
        nursery.cancel_scope.cancel()


async def test_a_worker_is_welcomed_with_every_mailbox_over_several_frames(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: one welcome frame held the views of at most ~2,800 mailboxes (4 MiB);
    past that no worker could connect."""
    monkeypatch.setattr(journal_module, "WELCOME_PAGE", 2)
    made = [(await archive.create_mailbox(f"tenant {n}"))[0].mailbox_id for n in range(5)]
    async with worker(archive, tmp_path / "data") as client:
        assert sorted(m.mailbox_id for m in client.mailboxes()) == sorted(made)
        writer = client.begin_message([made[-1]])
        await writer.write(b"Subject: to the last one\r\n\r\nhello\r\n")
        await writer.commit(Envelope(received_at=now(), origin="journal"))
        current = client.mailbox(made[-1]).key_id
        assert len(await client.maildrop(made[-1], current)) == 1


async def test_a_message_to_many_mailboxes_is_not_held_to_one_frame(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a commit carried every copy's final chunk (a sealed 256 KiB at most), so an
    incompressible message to enough mailboxes made a request over 4 MiB, refused at once. Here
    frames are cut to 128 KiB and the message goes to three mailboxes."""
    monkeypatch.setattr(wire_module, "MAX_FRAME", 128 * 1024)
    monkeypatch.setattr(client_module, "APPEND_BYTES", 64 * 1024)
    body = b"Subject: noise\r\n\r\n" + base64.b64encode(os.urandom(60_000)) + b"\r\n"
    made = [(await archive.create_mailbox(f"copy {n}"))[0] for n in range(3)]
    async with worker(archive, tmp_path / "data") as client:
        writer = client.begin_message([m.mailbox_id for m in made])
        await writer.write(body)
        await writer.commit(Envelope(received_at=now(), origin="journal"))
    for info in made:
        (stored,) = archive.messages(info.mailbox_id)
        assert stored.size == len(body)


async def test_a_large_write_goes_to_the_journal_in_frames_it_can_hold(
    archive: Archive, tmp_path: Path
) -> None:
    """A write of 6 MiB seals into 24 chunks at once: more than one frame of 4 MiB."""
    body = b"Subject: big\r\n\r\n" + base64.b64encode(os.urandom(4_500_000)) + b"\r\n"
    info, _ = await archive.create_mailbox("big")
    async with worker(archive, tmp_path / "data") as client:
        writer = client.begin_message([info.mailbox_id])
        await writer.write(body)
        await writer.commit(Envelope(received_at=now(), origin="journal"))
    (stored,) = archive.messages(info.mailbox_id)
    assert stored.size == len(body)


async def test_expunging_many_messages_goes_in_batches(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "EXPUNGE_BATCH", 2)
    info, _ = await archive.create_mailbox("many")
    async with worker(archive, tmp_path / "data") as client:
        for n in range(5):
            writer = client.begin_message([info.mailbox_id])
            await writer.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
            await writer.commit(Envelope(received_at=now(), origin="journal"))
        key_id = client.mailbox(info.mailbox_id).key_id
        listed = await client.maildrop(info.mailbox_id, key_id)
        ids = [listed.message_id(n) for n in range(1, len(listed) + 1)]
        assert await client.lock_maildrop(info.mailbox_id)
        assert await client.expunge(info.mailbox_id, ids) == 5
        assert len(await client.maildrop(info.mailbox_id, key_id)) == 0


async def test_a_worker_expunges_only_from_a_maildrop_it_holds(
    archive: Archive, tmp_path: Path
) -> None:
    """An expunge is a POP3 session's UPDATE: refused (LogWriteError, so the session answers
    QUIT with -ERR and deletes nothing) unless that worker holds the maildrop lock."""
    info, _ = await archive.create_mailbox("held")
    async with worker(archive, tmp_path / "a") as holder, worker(archive, tmp_path / "b") as other:
        writer = holder.begin_message([info.mailbox_id])
        await writer.write(b"Subject: kept\r\n\r\nbody\r\n")
        await writer.commit(Envelope(received_at=now(), origin="journal"))
        key_id = holder.mailbox(info.mailbox_id).key_id
        listed = await holder.maildrop(info.mailbox_id, key_id)
        ids = [listed.message_id(1)]
        with pytest.raises(LogWriteError, match="no longer holds its maildrop lock"):
            await holder.expunge(info.mailbox_id, ids)  # never locked
        assert await holder.lock_maildrop(info.mailbox_id)
        with pytest.raises(LogWriteError, match="no longer holds its maildrop lock"):
            await other.expunge(info.mailbox_id, ids)  # another worker's lock
        await holder.unlock_maildrop(info.mailbox_id)
        with pytest.raises(LogWriteError, match="no longer holds its maildrop lock"):
            await holder.expunge(info.mailbox_id, ids)  # let go
        assert [m.message_id for m in archive.messages(info.mailbox_id)] == ids
        assert await other.lock_maildrop(info.mailbox_id)
        assert await other.expunge(info.mailbox_id, ids) == 1
        assert archive.messages(info.mailbox_id) == []


def accepted_for(message_ids: dict[str, str], size: int) -> MessageAccepted:
    return MessageAccepted(
        at=now(),
        actor=Actor(kind="smtp", name="127.0.0.1"),
        session_id="s1",
        client_address="127.0.0.1",
        mailbox_ids=tuple(message_ids),
        message_ids=tuple(message_ids.values()),
        size=size,
    )


async def test_the_acceptance_is_written_with_the_witness(archive: Archive, tmp_path: Path) -> None:
    info, _ = await archive.create_mailbox("audited")
    async with worker(archive, tmp_path / "data") as client:
        writer = client.begin_message([info.mailbox_id])
        await writer.write(b"Subject: audited\r\n\r\nbody\r\n")
        accepted = accepted_for(writer.message_ids, writer.size)
        await writer.commit(Envelope(received_at=now(), origin="journal"), accepted=accepted)
    events = [decode_control_event(r.body) for r in archive.read_control()]
    events = [e for e in events if not isinstance(e, MailboxCreated)]
    witness, acceptance = events[-2:]
    assert isinstance(witness, MessagesCommitted) and acceptance == accepted


async def test_a_commit_carries_the_acceptance_of_its_own_message_only(
    archive: Archive, tmp_path: Path
) -> None:
    info, _ = await archive.create_mailbox("audited")
    async with worker(archive, tmp_path / "data") as client:
        writer = client.begin_message([info.mailbox_id])
        await writer.write(b"Subject: audited\r\n\r\nbody\r\n")
        forged = accepted_for({info.mailbox_id: "0" * 32}, writer.size)
        with pytest.raises(ArchiveError, match="its own message only"):
            await writer.commit(Envelope(received_at=now(), origin="journal"), accepted=forged)
    assert archive.messages(info.mailbox_id) == []
