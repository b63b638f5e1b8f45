"""The recording SMTP proxy (SPEC.md 15.4) with smtplib as the client and a small scripted
target, for the relay's logic and every refusal; tests/test_smtp_proxy_postfix.py runs the
same paths against a real Postfix submission server.

The scripted target is the gateway's own SMTP server machine in a trio driver of the test's,
with a trustme certificate: it accepts ``alice``/``upstream pw``, refuses recipients that
start with ``refuse``, refuses content holding ``REJECT``, and records what it was sent.
"""

from __future__ import annotations

import base64
import os
import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
import trustme

from gateway.config import ProxyConfig
from gateway.events import MailboxStatus
from gateway.log import iter_log
from gateway.protocols.smtp import (
    NEED_DATA,
    Authenticate,
    BodyData,
    ConnectionClosed,
    MailFrom,
    MessageComplete,
    Quit,
    RcptTo,
    Reply,
    ServerConnection,
    SMTPSettings,
    StartData,
    StartTLS,
    replies,
)
from gateway.servers.gateway import Gateway, Listening
from gateway.services._common import CONTROL_LOG_ID
from gateway.services.archive import Archive

from .gateway_helpers import make_config, stored_bodies

PASSWORD = "upstream pw"


@dataclass
class Target:
    """What the scripted target saw."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    plain: bytearray = field(default_factory=bytearray)  # every byte received in the clear
    sessions: int = 0
    rewrite: dict[bytes, bytes] = field(default_factory=dict)  # edits to what it sends
    final_delay: float = 0.0  # seconds before its reply to the end of a message
    receiving: bytearray | None = None  # the content of the message under way
    abandoned: list[bytes] = field(default_factory=list)  # content of messages never ended


async def serve_target(
    target: Target, context: ssl.SSLContext, implicit: bool, stream: trio.SocketStream
) -> None:
    target.sessions += 1
    conn = ServerConnection(
        SMTPSettings(
            hostname="target.test",
            tls_active=implicit,
            starttls_offered=not implicit,
            auth_offered=True,
        )
    )
    io: trio.abc.Stream = stream
    if implicit:
        io = trio.SSLStream(stream, context, server_side=True)
        await io.do_handshake()
        conn.tls_started("TLSv1.3", "x")
    await io.send_all(conn.greeting())
    mail, content = "", bytearray()
    rcpts: list[str] = []
    while True:
        event = conn.next_event()
        if out := conn.data_to_send():
            for old, new in target.rewrite.items():
                out = out.replace(old, new)
            await io.send_all(out)
        reply: Reply | None = None
        match event:
            case _ if event is NEED_DATA:
                try:
                    data = await io.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if io is stream:
                    target.plain += data
                conn.receive_data(bytes(data))
            case StartTLS():
                io = trio.SSLStream(stream, context, server_side=True)
                await io.do_handshake()
                conn.tls_started("TLSv1.3", "x")
            case Authenticate(username=user, password=password):
                target.logins.append((user, password))
                ok = (user, password) == ("alice", PASSWORD)
                reply = replies.AUTH_OK if ok else Reply(535, "5.7.8", ("target says no",))
            case MailFrom(address=address):
                mail, rcpts = address, []
                reply = replies.SENDER_OK
            case RcptTo(address=address):
                refuse = address.startswith("refuse")
                reply = replies.UNKNOWN_RECIPIENT if refuse else replies.RECIPIENT_OK
                if not refuse:
                    rcpts.append(address)
            case StartData():
                content = target.receiving = bytearray()
            case BodyData(data=data):
                content += data
            case MessageComplete():
                target.receiving = None
                await trio.sleep(target.final_delay)
                if b"REJECT" in content:
                    reply = Reply(554, "5.7.1", ("target rejects this content",))
                else:
                    target.messages.append((mail, rcpts, bytes(content)))
                    reply = Reply(250, "2.0.0", (f"Ok: queued as T{len(target.messages)}",))
            case Quit() | ConnectionClosed():
                if target.receiving is not None:
                    target.abandoned.append(bytes(target.receiving))
                    target.receiving = None
                await io.aclose()
                return
        if reply is not None:
            await io.send_all(conn.send(reply))


@dataclass
class Setup:
    archive: Archive
    ports: dict[str, int]
    cafile: str
    mailbox_id: str
    mailbox_password: str
    target: Target
    target_ports: dict[str, int]  # "starttls", "implicit"

    def login(self, listener: str = "smtps", user: str = "alice") -> str:
        kind = "implicit" if listener == "smtps" else "starttls"
        return f"{user}%127.0.0.1:{self.target_ports[kind]}%{self.mailbox_id}"

    def client(self, listener: str = "smtps") -> smtplib.SMTP:
        context = ssl.create_default_context(cafile=self.cafile)
        if listener == "smtps":
            return smtplib.SMTP_SSL("localhost", self.ports["smtps"], context=context, timeout=30)
        client = smtplib.SMTP("localhost", self.ports["smtp"], timeout=30)
        client.starttls(context=context)
        return client

    def try_login(
        self, user: str, password: str = PASSWORD, listener: str = "smtps"
    ) -> tuple[int, bytes]:
        """(235, b"") or the refusal's code and text; blocking (call from a thread)."""
        client = self.client(listener)
        try:
            client.login(user, password)
        except smtplib.SMTPException as exc:
            error = getattr(exc, "smtp_error", str(exc))
            return getattr(exc, "smtp_code", -1), error if isinstance(
                error, bytes
            ) else error.encode()
        finally:
            client.close()
        return 235, b""

    def logged_in(self, listener: str = "smtps") -> smtplib.SMTP:
        client = self.client(listener)
        client.login(self.login(listener), PASSWORD)
        return client

    def control(self) -> list[dict[str, object]]:
        records = iter_log(self.archive.data.control_dir, CONTROL_LOG_ID)
        return [msgspec.msgpack.decode(r.body) for r in records]

    def control_raw(self) -> bytes:
        return b"".join(r.body for r in iter_log(self.archive.data.control_dir, CONTROL_LOG_ID))

    async def stored(self) -> list[bytes]:
        key = await self.archive.unlock(self.mailbox_id, self.mailbox_password)
        return await stored_bodies(self.archive, self.mailbox_id, key)

    async def session_ended(self, count: int = 1) -> list[dict[str, object]]:
        with trio.fail_after(5):  # the audit record lands just after the session
            while True:
                ended = [e for e in self.control() if e["type"] == "SmtpProxySessionEnded"]
                if len(ended) >= count:
                    return ended
                await trio.sleep(0.01)


@asynccontextmanager
async def proxy_setup(
    tmp_path: Path, data: Path | None = None, **proxy: object
) -> AsyncIterator[Setup]:
    ca = trustme.CA()
    cafile = tmp_path / "target-ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    target = Target()
    data = data or tmp_path / "data"
    config = make_config(data)
    store = msgspec.structs.replace(config.store, segment_bytes=256 * 1024)
    config = msgspec.structs.replace(config, store=store)
    settings = {"allow": ("127.0.0.0/8",), "ca_files": (str(cafile),), **proxy}
    config = msgspec.structs.replace(config, proxy=msgspec.convert(settings, ProxyConfig))
    gateway = Gateway(config, environ={})
    async with trio.open_nursery() as nursery:
        target_ports = {}
        for kind in ("starttls", "implicit"):
            handler = partial(serve_target, target, server_context, kind == "implicit")
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            target_ports[kind] = listeners[0].socket.getsockname()[1]
        listening: list[Listening] = await nursery.start(gateway.run)
        assert gateway.archive is not None
        info, password = await gateway.archive.create_mailbox("sent mail")
        yield Setup(
            gateway.archive,
            {item.name: item.port for item in listening},
            str(data / "tls" / "cert.pem"),
            info.mailbox_id,
            password,
            target,
            target_ports,
        )
        gateway.request_shutdown()
        nursery.cancel_scope.cancel()


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: "
        + subject.encode()
        + (b"\r\n\r\n" + body)
    )


@pytest.mark.parametrize("listener", ["smtps", "smtp"])
async def test_relayed_messages_are_stored_and_refusals_pass_through(
    tmp_path: Path, listener: str
) -> None:
    first = message("one", b".a dotted line\r\n.\r\nmore\r\n")
    second = message("two", b".dotted, 150 KiB in all\r\n" * 6400)  # several runs upstream
    async with proxy_setup(tmp_path) as setup:

        def session() -> tuple[object, object, object]:
            client = setup.logged_in(listener)
            refused = client.sendmail("a@example.org", ["b@example.net", "refuse@x.test"], first)
            client.sendmail("a@example.org", ["c@example.net"], second)
            try:
                client.sendmail("a@example.org", ["b@example.net"], message("REJECT"))
            except smtplib.SMTPDataError as exc:
                rejected: object = (exc.smtp_code, exc.smtp_error)
            try:
                client.sendmail("a@example.org", ["refuse@x.test"], second)
            except smtplib.SMTPRecipientsRefused as exc:
                no_rcpt: object = exc.recipients
            client.quit()
            return refused, rejected, no_rcpt

        refused, rejected, no_rcpt = await trio.to_thread.run_sync(session)
        assert refused == {"refuse@x.test": (550, b"5.1.1 No such mailbox")}
        assert rejected == (554, b"5.7.1 target rejects this content")  # the target's own
        assert no_rcpt == {"refuse@x.test": (550, b"5.1.1 No such mailbox")}
        assert setup.target.messages == [
            ("a@example.org", ["b@example.net"], first),
            ("a@example.org", ["c@example.net"], second),
        ]
        assert setup.target.logins == [("alice", PASSWORD)]
        assert await setup.stored() == [first, second]  # byte for byte, nothing added
        key = await setup.archive.unlock(setup.mailbox_id, setup.mailbox_password)
        stored = setup.archive.messages(setup.mailbox_id)
        envelope = await setup.archive.read_envelope(setup.mailbox_id, stored[0].message_id, key)
        assert envelope.origin == "smtp-proxy" and envelope.remote_user == "alice"
        assert envelope.rcpt_to == ("b@example.net",)  # what the target accepted
        assert envelope.upstream_reply == "250 Ok: queued as T1"
        ended = (await setup.session_ended())[0]
        assert ended["relayed"] == 2 and ended["refused"] == 1 and ended["outcome"] == "quit"
        stored_refs = ended["stored"]
        assert isinstance(stored_refs, list)
        assert [ref["size"] for ref in stored_refs] == [len(first), len(second)]
        assert str(ended["upstream_tls"]).startswith("TLSv1.")
        assert PASSWORD.encode() not in setup.control_raw()


async def test_login_bdat_rset_and_pipelining(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:

        def login_session() -> list[tuple[int, bytes]]:
            client = setup.client("smtp")
            client.ehlo()
            client.user, client.password = setup.login("smtp"), PASSWORD
            code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            assert code == 235
            # A pipelined batch (RFC 2920): a transaction, RSET, another, DATA.
            client.send(
                b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.net>\r\nRSET\r\n"
                b"MAIL FROM:<p@example.org>\r\nRCPT TO:<q@example.net>\r\n"
                b"RCPT TO:<refuse@x.test>\r\nDATA\r\n"
            )
            answers = [client.getreply() for _ in range(7)]
            client.send(b"Subject: piped\r\n\r\n..dot\r\n.\r\n")
            answers.append(client.getreply())
            # BDAT (RFC 3030), which smtplib does not speak: by hand.
            client.send(b"MAIL FROM:<b@example.org>\r\nRCPT TO:<c@example.net>\r\n")
            answers += [client.getreply() for _ in range(2)]
            client.send(b"BDAT 13\r\nSubject: bd\r\nBDAT 8 LAST\r\n\r\nbody\r\n")
            answers += [client.getreply() for _ in range(2)]
            client.quit()
            return answers

        answers = await trio.to_thread.run_sync(login_session)
        assert [code for code, _ in answers[:8]] == [250, 250, 250, 250, 250, 550, 354, 250]
        assert [code for code, _ in answers[8:]] == [250, 250, 250, 250]
        assert answers[7][1] == b"2.0.0 Ok: queued as T1"
        assert setup.target.messages == [
            ("p@example.org", ["q@example.net"], b"Subject: piped\r\n\r\n.dot\r\n"),
            ("b@example.org", ["c@example.net"], b"Subject: bd\r\n\r\nbody\r\n"),
        ]
        assert await setup.stored() == [m[2] for m in setup.target.messages]


async def test_bdat_to_a_target_without_chunking(tmp_path: Path) -> None:
    """BDAT goes upstream as DATA; a BDAT transaction reset half way cuts the upstream
    connection rather than let the partial message end as a whole one."""
    async with proxy_setup(tmp_path) as setup:
        setup.target.rewrite = {b"250-CHUNKING\r\n": b""}

        def session() -> list[tuple[int, bytes]]:
            client = setup.logged_in()
            client.send(b"MAIL FROM:<b@example.org>\r\nRCPT TO:<c@example.net>\r\n")
            answers = [client.getreply() for _ in range(2)]
            body = b"Subject: bd\r\n\r\n.dot\r\n" + b"x" * 40_000 + b"\r\n"
            client.send(b"BDAT 17\r\n" + body[:17] + b"BDAT %d LAST\r\n" % (len(body) - 17))
            client.send(body[17:])
            answers += [client.getreply() for _ in range(2)]
            client.send(b"MAIL FROM:<b@example.org>\r\nRCPT TO:<c@example.net>\r\n")
            answers += [client.getreply() for _ in range(2)]
            client.send(b"BDAT 14\r\nSubject: hal\r\nRSET\r\nMAIL FROM:<b@example.org>\r\n")
            answers += [client.getreply() for _ in range(3)]
            client.close()
            return answers

        answers = await trio.to_thread.run_sync(session)
        assert [code for code, _ in answers] == [250, 250, 250, 250, 250, 250, 250, 250, 421]
        assert b"cut to abandon a message" in answers[-1][1]
        body = b"Subject: bd\r\n\r\n.dot\r\n" + b"x" * 40_000 + b"\r\n"
        assert setup.target.messages == [("b@example.org", ["c@example.net"], body)]
        assert await setup.stored() == [body]
        assert setup.target.abandoned == [b""]  # cut: RSET did not become content

        def quit_half_way() -> tuple[int, bytes]:
            client = setup.logged_in()
            client.send(b"MAIL FROM:<b@example.org>\r\nRCPT TO:<c@example.net>\r\n")
            client.send(b"BDAT 14\r\nSubject: bye\r\n")
            [client.getreply() for _ in range(3)]
            return client.quit()

        assert (await trio.to_thread.run_sync(quit_half_way))[0] == 221
        with trio.fail_after(5):
            while len(setup.target.abandoned) < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert setup.target.abandoned[1] == b""  # cut: QUIT did not become content


async def test_wrong_password_unknown_mailbox_and_plain_logins(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:
        attempt = setup.try_login
        wrong = await trio.to_thread.run_sync(attempt, setup.login(), "wrong")
        assert wrong == (535, b"5.7.8 target says no")  # the target's own refusal
        unknown = setup.login().rsplit("%", 1)[0] + "%" + "f" * 32
        assert await trio.to_thread.run_sync(attempt, unknown, PASSWORD) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
        await setup.archive.update_mailbox(setup.mailbox_id, status=MailboxStatus.SUSPENDED)
        assert (await trio.to_thread.run_sync(attempt, setup.login(), PASSWORD))[0] == 535
        await setup.archive.update_mailbox(setup.mailbox_id, status=MailboxStatus.ACTIVE)
        bare = await trio.to_thread.run_sync(attempt, setup.mailbox_id, PASSWORD)
        assert bare == (535, b"5.7.8 Authentication credentials invalid")
        assert await trio.to_thread.run_sync(attempt, "a%%b", PASSWORD) == bare
        # smtplib tries PLAIN, then LOGIN; nothing but the wrong password got that far.
        assert setup.target.logins == [("alice", "wrong")] * 2
        logins = [e for e in setup.control() if e["type"] == "SmtpLogin"]
        assert [e["mechanism"] for e in logins] == ["PLAIN", "LOGIN"] * 5
        assert not any(e["success"] for e in logins)
        assert "wrong" not in setup.control_raw().decode("latin-1").split("SmtpLogin")[1]


UNAVAILABLE = (454, b"4.7.0 Proxy target unavailable")


async def test_proxy_as_a_port_scanner_gets_one_reply_and_is_throttled(tmp_path: Path) -> None:
    """Proxy logins to denied or unreachable targets were answered at once, never throttled,
    and the reply told a closed port from an open one. Now every target failure gets the same
    reply after the failure delay and counts as a failed login; the reason is audited."""
    async with proxy_setup(tmp_path) as setup:
        with trio.socket.socket() as probe:  # a port nobody listens on
            await probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        targets = {
            "10.1.2.3": "denied",  # the policy refuses it
            "[::127.0.0.1]": "denied",  # IPv4-compatible loopback
            f"127.0.0.1:{closed}": "cannot connect",  # closed
            f"127.0.0.1:{setup.ports['smtps']}": "not trusted",  # open, TLS, unknown CA
            f"127.0.0.1:{setup.target_ports['starttls']}": "TLS handshake",  # open, no TLS
        }
        for target in targets:
            reply = await trio.to_thread.run_sync(
                setup.try_login, f"alice%{target}%{setup.mailbox_id}"
            )
            assert reply == UNAVAILABLE, target
        reasons = [e["reason"] for e in setup.control() if e["type"] == "SmtpLogin"]
        # smtplib tries PLAIN then LOGIN: each target twice.
        for reason, expected in zip(reasons[::2], targets.values(), strict=True):
            assert expected in str(reason), reason
        assert setup.target.logins == []
        # Ten failures from this address (make_config: max_auth_failures 10): locked out.
        reply = await trio.to_thread.run_sync(setup.try_login, setup.login())
        assert reply == (454, b"4.7.0 Too many failed logins, try again later")


async def test_slow_content_is_not_held_back(tmp_path: Path) -> None:
    """Content goes upstream in 32 KiB runs, but none waits longer than proxy.RUN_SECONDS once
    more arrives: a slow client's first kilobytes reach the target before its last."""
    async with proxy_setup(tmp_path) as setup:
        client = await trio.to_thread.run_sync(setup.logged_in)
        head = b"Subject: slow\r\n\r\n" + b"x" * 1000 + b"\r\n"
        await trio.to_thread.run_sync(client.mail, "a@example.org")
        await trio.to_thread.run_sync(client.rcpt, "b@example.net")
        await trio.to_thread.run_sync(client.docmd, "DATA")
        await trio.to_thread.run_sync(client.send, head)
        await trio.sleep(0.3)  # longer than proxy.RUN_SECONDS
        await trio.to_thread.run_sync(client.send, b"more\r\n")
        with trio.fail_after(5):
            while (  # noqa: ASYNC110
                setup.target.receiving is None or len(setup.target.receiving) < len(head)
            ):
                await trio.sleep(0.01)
        await trio.to_thread.run_sync(client.send, b".\r\n")
        code, _ = await trio.to_thread.run_sync(client.getreply)
        assert code == 250
        await trio.to_thread.run_sync(client.quit)
        assert await setup.stored() == [head + b"more\r\n"]


async def test_the_reply_to_the_end_of_a_message_is_waited_for(tmp_path: Path) -> None:
    """RFC 5321 §4.5.3.2.6: the target's verdict on a message is waited for longer than any
    other reply (proxy.final_reply_timeout); if it never comes, the message may have been
    delivered without a copy, and the session's audit record counts it as unrecorded."""
    async with proxy_setup(tmp_path, upstream_timeout=0.3, final_reply_timeout=1.5) as setup:
        setup.target.final_delay = 0.8  # longer than upstream_timeout

        def slow() -> None:
            client = setup.logged_in()
            client.sendmail("a@example.org", ["b@example.net"], message("slow"))
            client.quit()

        await trio.to_thread.run_sync(slow)
        assert await setup.stored() == [message("slow")]
        setup.target.final_delay = 3.0  # longer than final_reply_timeout

        def silent() -> tuple[int, bytes]:
            client = setup.logged_in()
            try:
                client.sendmail("a@example.org", ["b@example.net"], message("silent"))
            except smtplib.SMTPServerDisconnected:
                return -1, b""
            except smtplib.SMTPDataError as exc:
                error = exc.smtp_error
                return exc.smtp_code, error if isinstance(error, bytes) else error.encode()
            finally:
                client.close()
            return 250, b""

        assert await trio.to_thread.run_sync(silent) == (
            421,
            b"4.4.2 Connection to the target lost, closing connection",
        )
        ended = await setup.session_ended(2)
        assert [(e["relayed"], e["unrecorded"]) for e in ended] == [(1, 0), (0, 1)]
        assert ended[1]["outcome"] == "upstream-error"
        assert await setup.stored() == [message("slow")]


async def test_target_with_no_usable_auth_mechanism(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:
        setup.target.rewrite = {b"AUTH PLAIN LOGIN\r\n": b"AUTH CRAM-MD5\r\n"}

        assert await trio.to_thread.run_sync(setup.try_login, setup.login()) == UNAVAILABLE
        assert setup.target.logins == []
        reasons = {e["reason"] for e in setup.control() if e["type"] == "SmtpLogin"}
        assert reasons == {"proxy: permanent: 127.0.0.1 offers neither AUTH PLAIN nor AUTH LOGIN"}


async def test_target_without_starttls_never_gets_the_password(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    received = bytearray()

    async def fake(stream: trio.SocketStream) -> None:
        await stream.send_all(b"220 fake ESMTP\r\n")
        while data := await stream.receive_some(1024):
            received.extend(data)
            if data.upper().startswith(b"EHLO"):
                await stream.send_all(b"250-fake\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n")
            elif data.strip():
                await stream.send_all(b"502 5.5.1 no\r\n")

    listeners = await nursery.start(partial(trio.serve_tcp, fake, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with proxy_setup(tmp_path) as setup:
        login = f"alice%127.0.0.1:{port}%{setup.mailbox_id}"
        reply = await trio.to_thread.run_sync(setup.try_login, login, PASSWORD, "smtp")
        assert reply == UNAVAILABLE
        reasons = {e["reason"] for e in setup.control() if e["type"] == "SmtpLogin"}
        assert all("does not offer STARTTLS" in str(reason) for reason in reasons)
        await trio.sleep(0.1)
        assert bytes(received).startswith(b"EHLO ")
        assert b"AUTH" not in bytes(received) and PASSWORD.encode() not in bytes(received)


async def test_auth_before_tls_is_refused(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:

        def attempt() -> tuple[dict[str, str], tuple[int, bytes]]:
            client = smtplib.SMTP("localhost", setup.ports["smtp"], timeout=30)
            client.ehlo()
            features = dict(client.esmtp_features)
            response = base64.b64encode(f"\0{setup.login('smtp')}\0{PASSWORD}".encode())
            answer = client.docmd("AUTH", "PLAIN " + response.decode())
            client.quit()
            return features, answer

        features, answer = await trio.to_thread.run_sync(attempt)
        assert "auth" not in features and "starttls" in features
        assert answer == (538, b"5.7.11 Encryption required for requested authentication mechanism")
        assert setup.target.sessions == 0
        assert not [e for e in setup.control() if e["type"] == "SmtpLogin"]


async def test_journal_delivery_without_auth_still_works(tmp_path: Path) -> None:
    async with proxy_setup(tmp_path) as setup:

        def deliver() -> None:
            client = setup.client()
            client.sendmail("j@example.org", [f"mbx-{setup.mailbox_id}@localhost"], b"x\r\n")
            client.quit()

        await trio.to_thread.run_sync(deliver)
        assert len(await setup.stored()) == 1
        assert setup.target.sessions == 0


async def test_a_full_disk_never_acknowledges_a_message_without_its_copy(
    tmp_path: Path, small_disk: Path
) -> None:
    """On a 3 MiB tmpfs, incompressible 100 kB messages until storing fails three times:
    every 250 has its copy; a 421 (cut while streaming) never reached the target; a 451
    (the commit failed after the target's 250) did, and is counted as unrecorded."""
    async with proxy_setup(tmp_path, data=small_disk / "data") as setup:

        def send_all() -> list[tuple[bytes, int]]:
            outcomes: list[tuple[bytes, int]] = []
            client: smtplib.SMTP | None = None
            for n in range(80):
                body = b"Subject: %d\r\n\r\n" % n + base64.encodebytes(os.urandom(75_000))
                body = body.replace(b"\n", b"\r\n")
                try:
                    if client is None:
                        client = setup.logged_in()
                    client.sendmail("a@example.org", ["b@example.net"], body)
                    code = 250
                except smtplib.SMTPDataError as exc:
                    code = exc.smtp_code
                except (smtplib.SMTPServerDisconnected, smtplib.SMTPAuthenticationError) as exc:
                    code = getattr(exc, "smtp_code", 421)
                    client = None
                if code == 421:
                    client = None
                outcomes.append((body, code))
                if sum(c != 250 for _b, c in outcomes) >= 3:
                    break
            if client is not None:
                client.close()
            return outcomes

        outcomes = await trio.to_thread.run_sync(send_all)
        codes = [code for _body, code in outcomes]
        assert codes.count(250) >= 5 and len(codes) > codes.count(250), codes
        assert set(codes) <= {250, 421, 451}, codes
        accepted = [body for body, code in outcomes if code == 250]
        assert await setup.stored() == accepted
        at_target = [m[2] for m in setup.target.messages]
        assert at_target == [body for body, code in outcomes if code in (250, 451)]
