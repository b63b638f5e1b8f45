"""TOP that sends the whole message is a retrieval (SPEC.md 14): fetchmail downloads with
``TOP n 99999999``, and its downloads must show in ``Pop3SessionEnded.retrieved`` and the
mailbox's last retrieval like RETR's. A TOP that cut the body is a peek, not a retrieval."""

from __future__ import annotations

import poplib
import smtplib
import ssl
from pathlib import Path

import pytest
import trio

from gateway.events import MessageRef, Pop3SessionEnded, decode_control_event
from gateway.log import iter_log
from gateway.servers.gateway import Gateway, Listening
from gateway.services._common import CONTROL_LOG_ID

from .gateway_helpers import Running, make_config, strip_received
from .peers import fetchmail

BODIES = [
    b"Subject: one\r\n\r\nfirst line\r\nsecond line\r\n",
    b"Subject: two\r\n\r\nonly line\r\n",
    b"Subject: three\r\n\r\na\r\nb\r\nc\r\n",
    b"Subject: four, no final line end\r\n\r\na\r\nb",
]


async def test_a_top_that_sends_the_whole_message_is_a_retrieval(tmp_path: Path) -> None:
    gateway = Gateway(make_config(tmp_path / "data"), environ={})
    async with trio.open_nursery() as nursery:
        listening: list[Listening] = await nursery.start(gateway.run)
        ports = {item.name: item.port for item in listening}
        archive = gateway.archive
        assert archive is not None
        info, password = await archive.create_mailbox("fetched with TOP")
        address = f"mbx-{info.mailbox_id}@localhost"

        def deliver() -> None:
            with smtplib.SMTP("127.0.0.1", ports["smtp"]) as client:
                for body in BODIES:
                    client.sendmail("journal@example.org", [address], body)

        await trio.to_thread.run_sync(deliver)
        stored = archive.messages(info.mailbox_id)
        cafile = tmp_path / "data" / "tls" / "cert.pem"

        def fetch() -> list[bytes]:
            context = ssl.create_default_context(cafile=str(cafile))
            client = poplib.POP3_SSL("localhost", ports["pop3s"], context=context)
            client.user(info.mailbox_id)
            client.pass_(password)
            got = []
            for n, lines in [(1, 99_999_999), (2, 1), (3, 2), (4, 5)]:
                _resp, top, _octets = client.top(n, lines)
                got.append(b"".join(line + b"\r\n" for line in top))
            client.top(1, 0)  # a peek at a message already retrieved: counted once
            client.quit()
            return got

        got = await trio.to_thread.run_sync(fetch)
        assert strip_received(got[0]) == BODIES[0]  # all of it
        assert strip_received(got[1]) == BODIES[1]  # one body line of one: all of it
        assert strip_received(got[2]) == b"Subject: three\r\n\r\na\r\nb\r\n"  # cut
        assert strip_received(got[3]) == BODIES[3] + b"\r\n"  # smtplib ended it
        with trio.fail_after(5):  # the session's end is recorded just after its last line
            while info.mailbox_id not in archive.state.last_retrieval:  # noqa: ASYNC110
                await trio.sleep(0.01)
        gateway.request_shutdown()
    ended = [
        event
        for record in iter_log(tmp_path / "data" / "control", CONTROL_LOG_ID)
        if isinstance(event := decode_control_event(record.body), Pop3SessionEnded)
    ]
    assert [event.retrieved for event in ended] == [
        tuple(MessageRef(stored[n].message_id, stored[n].size) for n in (0, 1, 3))
    ]


@pytest.mark.slow
async def test_fetchmail_downloads_with_top_are_retrievals(
    running: Running, tmp_path: Path
) -> None:
    """Debian's fetchmail in its usual setting (new messages only, deleted once delivered)
    downloads every message with TOP n 99999999, so that a download cut short leaves it
    unread on servers that mark RETR as read; each counts as retrieved, and the mailbox's
    last retrieval (the console's "Retrieved") is set."""
    info, password = await running.archive.create_mailbox("fetchmail")
    address = f"mbx-{info.mailbox_id}@localhost"

    def deliver() -> None:
        with smtplib.SMTP("127.0.0.1", running.port("smtp")) as client:
            for body in BODIES[:3]:
                client.sendmail("journal@example.org", [address], body)

    await trio.to_thread.run_sync(deliver)
    stored = running.archive.messages(info.mailbox_id)
    fetched = await trio.to_thread.run_sync(
        lambda: fetchmail(
            "127.0.0.1",
            running.port("pop3s"),
            user=info.mailbox_id,
            password=password,
            ca_file=running.cafile,
            tmp_dir=tmp_path,
            fetchall=False,
        )
    )
    assert [strip_received(m) for m in fetched.messages] == BODIES[:3], fetched.log[-2000:]
    assert "POP3> TOP 1 99999999" in fetched.log
    assert "RETR" not in fetched.log
    with trio.fail_after(5):  # the session's end is recorded just after its last line
        while info.mailbox_id not in running.archive.state.last_retrieval:  # noqa: ASYNC110
            await trio.sleep(0.01)
    [ended] = [
        event
        for record in iter_log(running.archive.data.control_dir, CONTROL_LOG_ID)
        if isinstance(event := decode_control_event(record.body), Pop3SessionEnded)
    ]
    assert ended.retrieved == tuple(MessageRef(m.message_id, m.size) for m in stored)
    assert ended.deleted == ended.retrieved
    assert running.archive.messages(info.mailbox_id) == []
