"""The SMTP listener end to end: Python's smtplib against a running gateway, every message
read back from the log and compared byte for byte."""

from __future__ import annotations

import smtplib
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.config import ListenerConfig, Protocol
from gateway.events import MailboxStatus
from gateway.servers.gateway import Gateway, Listening, StartupError

from .gateway_helpers import Running, make_config, stored_bodies, strip_received

MESSAGE = (
    b"From: a@example.com\r\nTo: journal\r\nSubject: test\r\n\r\n"
    b"line one\r\n.leading dot\r\n8-bit \xc3\xa9\xff\r\n" + b"x" * 3000 + b"\r\n"
)


async def test_smtplib_plain_starttls_and_smtps(running: Running) -> None:
    info, password = await running.archive.create_mailbox("journal")
    address = f"mbx-{info.mailbox_id}@localhost"

    def deliver() -> None:
        with smtplib.SMTP("127.0.0.1", running.ports["smtp"]) as client:
            client.ehlo("sender.example")
            assert client.has_extn("starttls") and client.has_extn("pipelining")
            assert client.has_extn("chunking") and client.has_extn("smtputf8")
            client.sendmail("a@example.com", [address], MESSAGE)
            client.starttls(context=running.context())
            client.ehlo("sender.example")
            assert not client.has_extn("starttls")
            client.sendmail("a@example.com", [address.upper()], MESSAGE)
        with smtplib.SMTP_SSL(
            "127.0.0.1", running.ports["smtps"], context=running.context()
        ) as client:
            client.ehlo("sender.example")
            assert not client.has_extn("starttls")
            client.sendmail("", [address], MESSAGE)

    await trio.to_thread.run_sync(deliver)
    key = await running.archive.unlock(info.mailbox_id, password)
    bodies = await stored_bodies(running.archive, info.mailbox_id, key)
    assert [strip_received(b) for b in bodies] == [MESSAGE] * 3
    assert b"with ESMTP id" in bodies[0]
    assert b"with ESMTPS id" in bodies[1] and b"TLSv1.3" in bodies[1]
    assert b"with ESMTPS id" in bodies[2]
    envelope = await running.archive.read_envelope(
        info.mailbox_id, running.archive.messages(info.mailbox_id)[1].message_id, key
    )
    assert envelope.mail_from == "a@example.com"
    assert envelope.tls.startswith("TLSv1.3")


async def test_recipient_decisions(running: Running) -> None:
    active, _ = await running.archive.create_mailbox("active")
    suspended, _ = await running.archive.create_mailbox("suspended")
    await running.archive.update_mailbox(suspended.mailbox_id, status=MailboxStatus.SUSPENDED)

    def talk() -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", running.ports["smtp"]) as client:
            client.ehlo("x")
            client.mail("a@example.com")
            return [
                client.rcpt(f"mbx-{active.mailbox_id}@localhost"),
                client.rcpt(f"mbx-{suspended.mailbox_id}@localhost"),
                client.rcpt(f"mbx-{'0' * 31}1@localhost"),
                client.rcpt(f"mbx-{active.mailbox_id}@elsewhere.example"),
                client.rcpt("postmaster@localhost"),
            ]

    replies = await trio.to_thread.run_sync(talk)
    assert [code for code, _ in replies] == [250, 450, 550, 550, 550]
    assert replies[1][1].startswith(b"4.2.1")
    assert replies[2][1].startswith(b"5.1.1")


async def test_one_message_to_two_mailboxes_is_stored_in_both(running: Running) -> None:
    a, pa = await running.archive.create_mailbox("a")
    b, pb = await running.archive.create_mailbox("b")

    def deliver() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", running.ports["smtp"]) as client:
            return client.sendmail(
                "a@example.com",
                [
                    f"mbx-{a.mailbox_id}@localhost",
                    f"mbx-{b.mailbox_id}@localhost",
                    "nobody@localhost",
                ],
                MESSAGE,
            )

    refused = await trio.to_thread.run_sync(deliver)
    assert list(refused) == ["nobody@localhost"]
    for box, password in ((a, pa), (b, pb)):
        key = await running.archive.unlock(box.mailbox_id, password)
        [stored] = await stored_bodies(running.archive, box.mailbox_id, key)
        assert strip_received(stored) == MESSAGE
        assert b"\tfor <" not in stored  # two recipients: no "for" clause


async def test_size_limit_and_many_messages_per_session(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    gateway = Gateway(make_config(tmp_path / "data", max_message_size=100_000))
    listening: list[Listening] = await nursery.start(gateway.run)
    assert gateway.archive is not None
    info, password = await gateway.archive.create_mailbox("x")
    port = next(item.port for item in listening if item.name == "smtp")
    address = f"mbx-{info.mailbox_id}@localhost"

    def deliver() -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", port) as client:
            for n in range(5):
                client.sendmail("a@b.c", [address], b"Subject: %d\r\n\r\nbody\r\n" % n)
            try:  # smtplib declares SIZE= on MAIL: refused up front
                client.sendmail("a@b.c", [address], b"x" * 200_000)
            except smtplib.SMTPSenderRefused as exc:
                codes.append(exc.smtp_code)
            # Without SIZE=, the limit is enforced while the data streams in.
            assert client.mail("a@b.c")[0] == 250
            assert client.rcpt(address)[0] == 250
            codes.append(client.data(b"y" * 300_000)[0])
            client.sendmail("a@b.c", [address], b"Subject: after\r\n\r\nstill fine\r\n")
        return codes

    assert await trio.to_thread.run_sync(deliver) == [552, 552]
    key = await gateway.archive.unlock(info.mailbox_id, password)
    bodies = [strip_received(b) for b in await stored_bodies(gateway.archive, info.mailbox_id, key)]
    assert len(bodies) == 6
    assert bodies[-1].endswith(b"still fine\r\n")
    gateway.request_shutdown()


async def test_a_listener_that_cannot_bind_names_its_address(tmp_path: Path) -> None:
    with trio.socket.socket() as blocker:
        await blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        config = msgspec.structs.replace(
            make_config(tmp_path / "data"),
            listeners=(ListenerConfig(name="smtp", protocol=Protocol.SMTP, port=port),),
        )
        with pytest.RaisesGroup(
            pytest.RaisesExc(StartupError, match=f"127.0.0.1:{port}"), flatten_subgroups=True
        ):
            await Gateway(config).run()


async def test_smtputf8_bdat_binary_and_pipelining(running: Running) -> None:
    info, password = await running.archive.create_mailbox("x")
    address = f"mbx-{info.mailbox_id}@localhost".encode()
    binary = bytes(range(256)) * 40 + b"\r\n.\r\n\n.\n" + bytes(range(255, -1, -1))

    def utf8() -> None:
        with smtplib.SMTP("127.0.0.1", running.ports["smtp"]) as client:
            client.sendmail(
                "jöran@exämple.de",
                [address.decode()],
                "Subject: grüße\r\n\r\nÜnïcödé body\r\n".encode(),
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )

    await trio.to_thread.run_sync(utf8)

    stream = await trio.open_tcp_stream("127.0.0.1", running.ports["smtp"])
    script = (
        b"EHLO pipeliner\r\n"
        b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\n"
        b"RCPT TO:<" + address + b">\r\n"
        b"BDAT %d\r\n"
        % 100
        + binary[:100]
        + b"BDAT %d LAST\r\n" % (len(binary) - 100)
        + binary[100:]
        + b"QUIT\r\n"
    )
    await stream.send_all(script)  # everything in one write: PIPELINING and CHUNKING
    received = b""
    while b"221 " not in received:
        more = await stream.receive_some(4096)
        if not more:
            break
        received += more
    await stream.aclose()
    codes = [line[:3] for line in received.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220", b"250", b"250", b"250", b"250", b"250", b"221"], received

    key = await running.archive.unlock(info.mailbox_id, password)
    first, second = [
        strip_received(b) for b in await stored_bodies(running.archive, info.mailbox_id, key)
    ]
    assert first == "Subject: grüße\r\n\r\nÜnïcödé body\r\n".encode()
    assert second == binary
    envelope = await running.archive.read_envelope(
        info.mailbox_id, running.archive.messages(info.mailbox_id)[0].message_id, key
    )
    assert envelope.mail_from == "jöran@exämple.de"
    [raw] = [b for b in await stored_bodies(running.archive, info.mailbox_id, key)][:1]
    assert b"with UTF8SMTP id" in raw


async def test_many_recipients_and_the_limit(tmp_path: Path, nursery: trio.Nursery) -> None:
    # 75 unknown recipients: more refusals than the default bad command budget allows.
    config = make_config(tmp_path / "data", max_recipients=100, bad_command_budget=100)
    gateway = Gateway(config)
    listening: list[Listening] = await nursery.start(gateway.run)
    assert gateway.archive is not None
    port = next(item.port for item in listening if item.name == "smtp")
    boxes = [(await gateway.archive.create_mailbox(f"b{n}"))[0].mailbox_id for n in range(5)]
    # 100 recipients: every mailbox five times over in varied case, and unknown addresses.
    recipients = [
        f"MBX-{boxes[n % 5]}@LOCALHOST" if n % 2 else f"mbx-{boxes[n % 5]}@localhost"
        for n in range(25)
    ]
    recipients += [f"nobody{n}@localhost" for n in range(75)]

    def deliver() -> tuple[dict[str, tuple[int, bytes]], int]:
        with smtplib.SMTP("127.0.0.1", port) as client:
            refused = client.sendmail("a@b.c", recipients, MESSAGE)
            client.mail("a@b.c")
            codes = [client.rcpt(f"mbx-{boxes[0]}@localhost")[0] for _ in range(101)]
            client.rset()
            return refused, codes.count(452)

    refused, over = await trio.to_thread.run_sync(deliver)
    assert len(refused) == 75
    assert over == 1  # the 101st recipient: 452 4.5.3
    for box in boxes:  # stored once per mailbox however often it was named
        assert len(gateway.archive.messages(box)) == 1
    gateway.request_shutdown()
