"""After a password reset, the messages sealed to the retired key are unreadable by anyone:
POP3 leaves them out, and the admin API, the command line and the console count them apart
(readable and unreadable, messages and bytes) and can remove them (SPEC.md 13.3, 13.6)."""

from __future__ import annotations

import json
import poplib
import smtplib
import ssl

import trio

from gateway.client import TrustSettings, connect
from gateway.events import MessagesExpunged, decode_control_event
from gateway.log import iter_log
from gateway.protocols import admin as api
from gateway.services._common import CONTROL_LOG_ID

from .gateway_helpers import Running
from .test_cli_admin import cli


def deliver(port: int, address: str, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        for n in range(count):
            client.sendmail("journal@example.org", [address], b"Subject: %d\r\n\r\nbody\r\n" % n)


def pop3_stat(running: Running, mailbox_id: str, password: str) -> tuple[int, int]:
    context = ssl.create_default_context(cafile=str(running.cafile))
    client = poplib.POP3_SSL("localhost", running.port("pop3s"), context=context)
    try:
        client.user(mailbox_id)
        client.pass_(password)
        return client.stat()
    finally:
        client.quit()


async def test_unreadable_messages_are_counted_apart_and_can_be_purged(
    running: Running,
) -> None:
    archive = running.archive
    info, _password = await archive.create_mailbox("reset later")
    address = f"mbx-{info.mailbox_id}@localhost"
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, 4)
    lost = archive.messages(info.mailbox_id)
    lost_bytes = sum(m.size for m in lost)
    password, count = await archive.reset_password(info.mailbox_id)
    assert count == 4
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, 1)
    [kept] = [m for m in archive.messages(info.mailbox_id) if m not in lost]

    # POP3 serves the one readable message; the admin view says the same, the 4 apart.
    assert await trio.to_thread.run_sync(pop3_stat, running, info.mailbox_id, password) == (
        1,
        kept.size,
    )
    trust = TrustSettings(cafile=str(running.cafile))
    async with connect(running.admin_url, trust) as client:
        await client.request(api.Login(password=running.admin_password))
        got = await client.request(api.MailboxGet(mailbox=info.mailbox_id))
        assert isinstance(got, api.Mailbox)
        view = got.mailbox
        assert (view.messages, view.bytes) == (1, kept.size)
        assert (view.unreadable_messages, view.unreadable_bytes) == (4, lost_bytes)

        purged = await client.request(api.MailboxPurgeUnreadable(mailbox=address))
        assert isinstance(purged, api.MailboxUnreadablePurged)
        assert (purged.purged_messages, purged.purged_bytes) == (4, lost_bytes)
        assert (purged.mailbox.messages, purged.mailbox.unreadable_messages) == (1, 0)
        again = await client.request(api.MailboxPurgeUnreadable(mailbox=info.mailbox_id))
        assert isinstance(again, api.MailboxUnreadablePurged)
        assert (again.purged_messages, again.purged_bytes) == (0, 0)

    assert archive.messages(info.mailbox_id) == [kept]
    expunged = [
        event
        for record in iter_log(archive.data.control_dir, CONTROL_LOG_ID)
        if isinstance(event := decode_control_event(record.body), MessagesExpunged)
    ]
    assert len(expunged) == 1
    assert set(expunged[0].message_ids) == {m.message_id for m in lost}
    assert expunged[0].bytes == lost_bytes
    assert (expunged[0].actor.kind, expunged[0].actor.address) == ("admin", "127.0.0.1")


async def test_the_command_line_shows_and_purges_unreadable_messages(running: Running) -> None:
    archive = running.archive
    info, _password = await archive.create_mailbox("reset later")
    address = f"mbx-{info.mailbox_id}@localhost"
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, 2)
    lost_bytes = sum(m.size for m in archive.messages(info.mailbox_id))
    await archive.reset_password(info.mailbox_id)

    code, out, err = await cli(running, "mailbox", "show", info.mailbox_id, "--json")
    assert code == 0, err
    view = json.loads(out)["mailbox"]
    assert (view["messages"], view["bytes"]) == (0, 0)
    assert (view["unreadable_messages"], view["unreadable_bytes"]) == (2, lost_bytes)
    code, out, err = await cli(running, "mailbox", "list")
    assert code == 0, err
    assert f"2 ({lost_bytes} bytes)" in out  # the table's unreadable column

    code, out, err = await cli(running, "mailbox", "purge-unreadable", info.mailbox_id)
    assert code == 0, err
    assert f"purged 2 unreadable messages ({lost_bytes} bytes)" in out
    assert archive.messages(info.mailbox_id) == []
    code, out, err = await cli(running, "mailbox", "purge-unreadable", info.mailbox_id, "--json")
    assert code == 0, err
    assert json.loads(out)["purged_messages"] == 0
