"""A server serves before its mailbox logs are open (SPEC.md 6.3): a mailbox is opened in the
background, or first when a request needs it; until then its messages are not served (not
served as none), and a checkpoint meanwhile keeps what vouches for its commits."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from gateway.events import GatewayStarted, now
from gateway.services import _archive_checkpoint, _archive_recovery
from gateway.services.archive import Archive, MailboxUnavailable

from .test_recovery_points import CONFIG, fill, served, store


def is_open(archive: Archive, mailbox_id: str) -> bool:
    try:
        archive.messages(mailbox_id)
    except MailboxUnavailable:
        return False
    return True


async def test_a_mailbox_asked_for_is_opened_first_and_the_others_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    try:
        boxes = []
        for n in range(6):
            info, _ = await archive.create_mailbox(f"box{n}")
            boxes.append(info.mailbox_id)
            await store(archive, info.mailbox_id, 2, size=500)
    finally:
        await archive.aclose()
    monkeypatch.setattr(_archive_recovery, "_OPENING", 1)
    archive = await Archive.open(data, CONFIG, mailboxes_later=True)
    try:
        last = boxes[-1]
        assert archive.mailbox(last).name == "box5"  # known before it is open
        assert archive.public_key(last) is not None  # and mail can be sealed to it
        with pytest.raises(MailboxUnavailable, match="being opened"):
            archive.messages(last)
        with pytest.raises(MailboxUnavailable, match="being opened"):
            archive.begin_message([last])
        others_open: list[bool] = []

        async def ask() -> None:
            await archive.opened(last)
            others_open.extend(is_open(archive, b) for b in boxes[:-1])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(archive.open_mailboxes)
        # Asked for while none was open: it went first, one at a time.
        assert others_open == [False] * 5
        for box in boxes:
            assert len(archive.messages(box)) == 2
    finally:
        await archive.aclose()


async def test_a_checkpoint_before_the_mailboxes_open_keeps_what_vouches_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit after a mailbox's own recovery point but witnessed before the control log's
    is vouched for by the control log's ``settled`` seq alone: a checkpoint made while that
    mailbox is not open yet must carry the seq on, or the next open would roll it back."""
    data = tmp_path / "data"
    ids, _ = await fill(data, 3)
    box = next(iter(ids))
    archive = await Archive.open(data, CONFIG)
    try:
        ids[box] += await store(archive, box, 4)
        with monkeypatch.context() as patch:
            patch.setattr(_archive_checkpoint, "_due", lambda box, everything: False)
            assert await archive.checkpoint(everything=True) == 1  # the control log's alone
    finally:
        await archive.aclose(checkpoint=False)
    archive = await Archive.open(data, CONFIG, mailboxes_later=True)
    try:
        await archive.append_control(GatewayStarted(at=now(), version="test"))
        assert await archive.checkpoint(everything=True) == 1  # no mailbox is open
    finally:
        await archive.aclose()
    got, _read = await served(data)
    assert got == ids
