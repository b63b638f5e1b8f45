"""The recording POP3 proxy against a real upstream (a private Dovecot), with Python's poplib
and Debian's fetchmail as clients (SPEC.md 15.3)."""

from __future__ import annotations

import base64
import poplib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.config import ProxyConfig
from gateway.events import MailboxStatus
from gateway.servers.gateway import Gateway, Listening
from gateway.services.archive import Archive

from .gateway_helpers import make_config, stored_bodies
from .peers import fetchmail, open_private_dovecot
from .peers.dovecot import DovecotInstance, pop3_octets

pytestmark = pytest.mark.slow

MESSAGES = [
    b"Subject: one\r\n\r\nfirst\r\n",
    b"Subject: two\r\n\r\n.dotted line\r\n.\r\nafter a lone dot\r\n",
    b"Subject: three\r\nX-8bit: \xc3\xa9\r\n\r\n" + b"long " * 190 + b"\r\n",
]


LONG_PASSWORD = "long, with spaces " * 16  # too long for a PASS line (255 octets)


@dataclass
class Setup:
    gateway: Gateway
    archive: Archive
    dovecot: DovecotInstance
    ports: dict[str, int]
    cafile: str
    mailbox_id: str
    mailbox_password: str

    def login(self, user: str = "alice", port_kind: str = "pop3s") -> str:
        port = self.dovecot.pop3s_port if port_kind == "pop3s" else self.dovecot.pop3_port
        return f"{user}%{self.dovecot.host}:{port}%{self.mailbox_id}"

    def client(self, kind: str = "pop3s") -> poplib.POP3:
        context = ssl.create_default_context(cafile=self.cafile)
        if kind == "pop3s":
            return poplib.POP3_SSL("localhost", self.ports["pop3s"], context=context)
        client = poplib.POP3("localhost", self.ports["pop3"])
        client.stls(context)
        return client


@asynccontextmanager
async def proxy_setup(tmp_path: Path, **proxy: object) -> AsyncIterator[Setup]:
    users = {"alice": "upstream pass 1", "carol": LONG_PASSWORD}
    async with open_private_dovecot(tmp_path, users=users) as dovecot:
        for message in MESSAGES:
            dovecot.deliver("alice", message)
        config = make_config(tmp_path / "data")
        settings = {"allow": ("127.0.0.0/8",), "ca_files": (str(dovecot.ca_file),), **proxy}
        config = msgspec.structs.replace(config, proxy=msgspec.convert(settings, ProxyConfig))
        gateway = Gateway(config, environ={})
        async with trio.open_nursery() as nursery:
            listening: list[Listening] = await nursery.start(gateway.run)
            assert gateway.archive is not None
            info, password = await gateway.archive.create_mailbox("proxy copies")
            yield Setup(
                gateway,
                gateway.archive,
                dovecot,
                {item.name: item.port for item in listening},
                str(tmp_path / "data" / "tls" / "cert.pem"),
                info.mailbox_id,
                password,
            )
            gateway.request_shutdown()


def retr(client: poplib.POP3, n: int) -> bytes:
    _resp, lines, _octets = client.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


@pytest.mark.parametrize("kind", ["pop3s", "pop3"])
async def test_retrieved_messages_are_stored_once(tmp_path: Path, kind: str) -> None:
    async with proxy_setup(tmp_path) as setup:

        def session(delete: bool) -> list[bytes]:
            client = setup.client(kind)
            client.user(setup.login(port_kind=kind))
            client.pass_("upstream pass 1")
            count, _size = client.stat()
            _resp, uidls, _ = client.uidl()
            assert len(uidls) == count == 3
            got = [retr(client, n) for n in range(1, count + 1)]
            _resp, top, _ = client.top(1, 0)  # relayed, not stored
            assert top[0] == b"Subject: one"
            if delete:
                for n in range(1, count + 1):
                    client.dele(n)
            client.quit()
            return got

        first = await trio.to_thread.run_sync(session, False)
        with trio.fail_after(5):  # the session's audit record lands just after QUIT
            while setup.mailbox_id not in setup.archive.state.last_delivery:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert first == [pop3_octets(m) for m in MESSAGES]  # what Dovecot sends, unchanged
        key = await setup.archive.unlock(setup.mailbox_id, setup.mailbox_password)
        assert await stored_bodies(setup.archive, setup.mailbox_id, key) == first
        # Leave on server, retrieve again: relayed again, not stored again; then delete.
        assert await trio.to_thread.run_sync(session, True) == first
        assert len(setup.archive.messages(setup.mailbox_id)) == 3
        envelope = await setup.archive.read_envelope(
            setup.mailbox_id, setup.archive.messages(setup.mailbox_id)[0].message_id, key
        )
        assert envelope.origin == "pop3-proxy" and envelope.remote_user == "alice"
        port = setup.dovecot.pop3s_port if kind == "pop3s" else setup.dovecot.pop3_port
        assert envelope.target == f"127.0.0.2:{port}"
        assert envelope.upstream_uidl
        # Upstream deleted them only after QUIT (and after the copies were durable).
        assert not list((setup.dovecot.maildir("alice") / "cur").iterdir())
        assert not list((setup.dovecot.maildir("alice") / "new").iterdir())


async def test_refusals(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:
        assert setup.gateway.pop3_server is not None
        setup.gateway.pop3_server.proxy_logins.by_address.max_failures = 100

        def attempt(user: str, password: str) -> str:
            client = setup.client()
            client.user(user)
            try:
                return client.pass_(password).decode()
            except poplib.error_proto as exc:
                return str(exc)
            finally:
                client.close()

        wrong = await trio.to_thread.run_sync(attempt, setup.login(), "wrong password")
        assert "[AUTH] upstream login failed" in wrong
        unknown = setup.login().rsplit("%", 1)[0] + "%" + "f" * 32
        assert "[AUTH] invalid credentials" in await trio.to_thread.run_sync(
            attempt, unknown, "upstream pass 1"
        )
        await setup.archive.update_mailbox(setup.mailbox_id, status=MailboxStatus.SUSPENDED)
        assert "[AUTH] invalid credentials" in await trio.to_thread.run_sync(
            attempt, setup.login(), "upstream pass 1"
        )
        await setup.archive.update_mailbox(setup.mailbox_id, status=MailboxStatus.ACTIVE)
        # Denied and closed look alike (the reason is in the Pop3Login record).
        denied = f"alice%10.1.2.3%{setup.mailbox_id}"
        assert "[SYS/TEMP] proxy target unavailable" in await trio.to_thread.run_sync(
            attempt, denied, "upstream pass 1"
        )
        closed = f"alice%127.0.0.2:1%{setup.mailbox_id}"
        assert "[SYS/TEMP] proxy target unavailable" in await trio.to_thread.run_sync(
            attempt, closed, "upstream pass 1"
        )
        assert setup.archive.messages(setup.mailbox_id) == []


async def test_a_password_too_long_for_pass_goes_upstream_by_sasl(tmp_path: Path) -> None:
    """The client logs in with AUTH PLAIN (its credentials do not fit USER/PASS lines); the
    proxy logs in upstream with AUTH PLAIN too, the response after Dovecot's "+" since it
    does not fit the command line either (RFC 5034 §4)."""
    async with proxy_setup(tmp_path) as setup:

        def session() -> list[bytes]:  # poplib has no AUTH: by hand
            login = setup.login("carol")
            response = base64.b64encode(f"\0{login}\0{LONG_PASSWORD}".encode())
            context = ssl.create_default_context(cafile=setup.cafile)
            with (
                socket.create_connection(("localhost", setup.ports["pop3s"]), 30) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
                tls.makefile("rb") as replies,
            ):
                answers = [replies.readline()]
                for line in (b"AUTH PLAIN", response, b"STAT", b"QUIT"):
                    tls.sendall(line + b"\r\n")
                    answers.append(replies.readline())
            return answers

        _greeting, challenge, reply, stat, _bye = await trio.to_thread.run_sync(session)
        assert challenge == b"+ \r\n"
        assert reply.startswith(b"+OK logged in to"), reply
        assert stat == b"+OK 0 0\r\n"


async def test_a_mailbox_suspended_since_login_refuses_retr(tmp_path: Path) -> None:
    """RETR is refused before it goes upstream; the session goes on, nothing is deleted."""
    async with proxy_setup(tmp_path) as setup:

        def login() -> poplib.POP3:
            client = setup.client()
            client.user(setup.login())
            client.pass_("upstream pass 1")
            return client

        client = await trio.to_thread.run_sync(login)
        await setup.archive.update_mailbox(setup.mailbox_id, status=MailboxStatus.SUSPENDED)

        def retrieve() -> tuple[str, tuple[int, int]]:
            try:
                client.retr(1)
            except poplib.error_proto as exc:
                refusal = str(exc)
            stat = client.stat()
            client.dele(1)
            client.quit()
            return refusal, stat

        refusal, stat = await trio.to_thread.run_sync(retrieve)
        assert "[SYS/TEMP] archive mailbox unavailable" in refusal
        assert stat[0] == len(MESSAGES)
        assert setup.archive.messages(setup.mailbox_id) == []


async def test_untrusted_upstream_certificate(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path, ca_files=()) as setup:

        def attempt() -> str:
            client = setup.client()
            client.user(setup.login())
            try:
                return client.pass_("upstream pass 1").decode()
            except poplib.error_proto as exc:
                return str(exc)
            finally:
                client.close()

        answer = await trio.to_thread.run_sync(attempt)
        assert answer == "b'-ERR [SYS/TEMP] proxy target unavailable'"


async def test_fetchmail_through_the_proxy(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:
        fetched = await trio.to_thread.run_sync(
            lambda: fetchmail(
                "127.0.0.1",
                setup.ports["pop3s"],
                user=setup.login(),
                password="upstream pass 1",
                ca_file=Path(setup.cafile),
                tmp_dir=tmp_path / "fetchmail",
                tls="implicit",
            )
        )
        assert fetched.messages == [pop3_octets(m) for m in MESSAGES], fetched.log[-2000:]
        key = await setup.archive.unlock(setup.mailbox_id, setup.mailbox_password)
        assert await stored_bodies(setup.archive, setup.mailbox_id, key) == fetched.messages
