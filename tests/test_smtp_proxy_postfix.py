"""The recording SMTP proxy against a real target: a private Postfix submission server with
SASL through Dovecot (tests/peers/submission.py), over STARTTLS and implicit TLS, with
smtplib and swaks as clients (SPEC.md 15.4)."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.config import ProxyConfig
from gateway.servers.gateway import Gateway, Listening
from gateway.services.archive import Archive

from .gateway_helpers import make_config, stored_bodies
from .peers import open_private_submission, swaks
from .peers.submission import SubmissionInstance

pytestmark = pytest.mark.slow

PASSWORD = "submission pass 1"
MESSAGES = [
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: one\r\n\r\nfirst\r\n",
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: two\r\n\r\n"
    b".dotted line\r\n.\r\nafter a lone dot\r\n..two dots\r\n",
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: three\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Grüße, ça va\r\n".encode()
    + b"long line " * 90
    + b"\r\n",
]


@dataclass
class Setup:
    archive: Archive
    ports: dict[str, int]
    cafile: str
    mailbox_id: str
    mailbox_password: str
    target: SubmissionInstance

    def login(self, listener: str = "smtps", user: str = "alice") -> str:
        port = self.target.smtps_port if listener == "smtps" else self.target.port
        return f"{user}%{self.target.host}:{port}%{self.mailbox_id}"

    def client(self, listener: str = "smtps") -> smtplib.SMTP:
        context = ssl.create_default_context(cafile=self.cafile)
        if listener == "smtps":
            return smtplib.SMTP_SSL("localhost", self.ports["smtps"], context=context, timeout=60)
        client = smtplib.SMTP("localhost", self.ports["smtp"], timeout=60)
        client.starttls(context=context)
        return client

    async def stored(self) -> list[bytes]:
        key = await self.archive.unlock(self.mailbox_id, self.mailbox_password)
        return await stored_bodies(self.archive, self.mailbox_id, key)


@asynccontextmanager
async def proxy_setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with open_private_submission(
        tmp_path,
        users={"alice": PASSWORD},
        settings={
            "message_size_limit": "1000000",
            # Postfix refuses DATA itself for this sender (after the gateway's own 354).
            "smtpd_data_restrictions": (
                "check_sender_access inline:{ refused@example.org=REJECT }"
            ),
        },
    ) as target:
        config = make_config(tmp_path / "data")
        settings = {"allow": ("127.0.0.0/8",), "ca_files": (str(target.ca_file),)}
        config = msgspec.structs.replace(config, proxy=msgspec.convert(settings, ProxyConfig))
        gateway = Gateway(config, environ={})
        async with trio.open_nursery() as nursery:
            listening: list[Listening] = await nursery.start(gateway.run)
            assert gateway.archive is not None
            info, password = await gateway.archive.create_mailbox("sent via proxy")
            yield Setup(
                gateway.archive,
                {item.name: item.port for item in listening},
                str(tmp_path / "data" / "tls" / "cert.pem"),
                info.mailbox_id,
                password,
                target,
            )
            gateway.request_shutdown()


@pytest.mark.parametrize("listener", ["smtps", "smtp"])
async def test_sent_mail_arrives_at_postfix_and_is_archived(tmp_path: Path, listener: str) -> None:
    async with proxy_setup(tmp_path) as setup:

        def session() -> tuple[tuple[int, bytes | str], tuple[int, bytes]]:
            client = setup.client(listener)
            client.login(setup.login(listener), PASSWORD)
            try:  # Postfix refuses DATA: its reply comes after the content, then RSET
                big = MESSAGES[0] + (b"z" * 78 + b"\r\n") * 600  # over one 32 KiB run
                client.sendmail("refused@example.org", ["bob@example.net"], big)
            except smtplib.SMTPDataError as exc:
                data_refusal = (exc.smtp_code, exc.smtp_error)
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGES[0])
            client.sendmail(
                "alice@example.org", ["bob@example.net", "carol@example.com"], MESSAGES[1]
            )
            client.sendmail("alice@example.org", ["bob@example.net"], MESSAGES[2])
            try:  # over Postfix's message_size_limit: its own refusal, at MAIL (SIZE=)
                client.sendmail("alice@example.org", ["bob@example.net"], b"x" * 1_200_000)
            except smtplib.SMTPSenderRefused as exc:
                refusal = (exc.smtp_code, exc.smtp_error)
            client.quit()
            return data_refusal, refusal

        data_refusal, refusal = await trio.to_thread.run_sync(session)
        assert data_refusal[0] == 554 and b"Sender address rejected" in data_refusal[1]
        assert refusal == (552, b"5.3.4 Message size exceeds fixed limit")
        await trio.to_thread.run_sync(setup.target.wait_for_delivered, 4)
        deliveries = setup.target.deliveries()
        by_recipient = sorted((d.recipient, d.payload) for d in deliveries)
        assert by_recipient == sorted(
            [
                ("bob@example.net", MESSAGES[0]),
                ("bob@example.net", MESSAGES[1]),
                ("carol@example.com", MESSAGES[1]),
                ("bob@example.net", MESSAGES[2]),
            ]
        )
        assert {d.sender for d in deliveries} == {"alice@example.org"}
        assert await setup.stored() == MESSAGES  # each once, byte for byte
        key = await setup.archive.unlock(setup.mailbox_id, setup.mailbox_password)
        stored = setup.archive.messages(setup.mailbox_id)
        envelope = await setup.archive.read_envelope(setup.mailbox_id, stored[1].message_id, key)
        assert envelope.rcpt_to == ("bob@example.net", "carol@example.com")
        queue_ids = {d.queue_id for d in deliveries}
        assert envelope.upstream_reply.startswith("250 ")
        assert any(queue_id in envelope.upstream_reply for queue_id in queue_ids)


async def test_swaks_with_auth_login_and_a_wrong_password(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:
        result = await trio.to_thread.run_sync(
            lambda: swaks(
                "127.0.0.1",
                setup.ports["smtp"],
                to="dave@example.net",
                data=MESSAGES[0],
                sender="alice@example.org",
                tls=True,
                tls_verify=Path(setup.cafile),
                auth=(setup.login("smtp"), PASSWORD),
                extra=["--auth", "LOGIN"],
            )
        )
        assert "~> AUTH LOGIN" in result.stdout and "<~  235 " in result.stdout
        await trio.to_thread.run_sync(setup.target.wait_for_delivered, 1)
        assert setup.target.delivered_payloads() == [MESSAGES[0]]
        assert await setup.stored() == [MESSAGES[0]]

        def wrong() -> tuple[int, bytes]:
            client = setup.client()
            try:
                client.login(setup.login(), "not the password")
            except smtplib.SMTPAuthenticationError as exc:
                error = exc.smtp_error
                return exc.smtp_code, error if isinstance(error, bytes) else error.encode()
            finally:
                client.close()
            return 235, b""

        code, text = await trio.to_thread.run_sync(wrong)
        assert code == 535 and text.startswith(b"5.7.8 ")  # Postfix's own refusal
        assert len(setup.archive.messages(setup.mailbox_id)) == 1
