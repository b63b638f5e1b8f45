"""The peers work before the gateway is involved: swaks, private Postfix instances and
smtp-source each deliver to a tiny SMTP sink written here (ESMTP, PIPELINING, STARTTLS and
implicit TLS with a trustme CA), and the sink records every message's bytes. Private Dovecot
instances serve Maildirs over POP3 to poplib and fetchmail, byte for byte. A private Postfix
submission server takes mail from smtplib and swaks after STARTTLS or implicit TLS and AUTH
(PLAIN, LOGIN: SASL through Dovecot) and files it, byte for byte, in a Maildir."""

from __future__ import annotations

import base64
import functools
import poplib
import re
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest
import trio
import trustme

from . import (
    DovecotError,
    DovecotInstance,
    PostfixError,
    SubmissionInstance,
    fetchmail,
    free_port,
    open_private_dovecot,
    open_private_postfix,
    open_private_submission,
    pop3_octets,
    private_dovecot,
    private_postfix,
    private_submission,
    require,
    smtp_source,
    swaks,
)

pytestmark = pytest.mark.slow

MAX_LINE = 64 * 1024  # generous: the sink only needs to be strict about CRLF "." CRLF
SESSION_TIMEOUT = 60.0
EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 0")


@dataclass(frozen=True)
class Received:
    helo: bytes
    sender: bytes
    recipients: tuple[bytes, ...]
    data: bytes  # dot-unstuffed, up to and including the CRLF before "."
    tls: bool
    session: int


@dataclass
class Sink:
    """Accepts any mail on 127.0.0.1, on a plain port (STARTTLS offered) and an implicit-TLS
    port: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. Not a model of a good server (the
    gateway's SMTP machine is that); just enough to see what a peer sends."""

    ssl_context: ssl.SSLContext
    messages: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sessions: int = 0
    port: int = 0
    smtps_port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        plain = await trio.open_tcp_listeners(0, host="127.0.0.1")
        implicit = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(plain[0].socket.getsockname()[1])
        self.smtps_port = int(implicit[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self.handle, plain)
            nursery.start_soon(
                trio.serve_listeners, functools.partial(self.handle, implicit_tls=True), implicit
            )
            task_status.started()

    async def handle(self, stream: trio.SocketStream, *, implicit_tls: bool = False) -> None:
        self.sessions += 1
        session = Session(self, stream, self.sessions)
        try:
            with trio.fail_after(SESSION_TIMEOUT):
                if implicit_tls:
                    await session.start_tls()
                await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: its finished messages are already recorded
        except Exception as exc:
            self.errors.append(f"session {session.number}: {exc!r}")
        finally:
            await trio.aclose_forcefully(session.stream)


class Session:
    def __init__(self, sink: Sink, stream: trio.SocketStream, number: int) -> None:
        self.sink = sink
        self.stream: trio.abc.Stream = stream
        self.number = number
        self.buffer = bytearray()
        self.tls = False
        self.helo = b""

    async def start_tls(self) -> None:
        tls_stream = trio.SSLStream(self.stream, self.sink.ssl_context, server_side=True)
        await tls_stream.do_handshake()
        self.stream, self.tls, self.helo = tls_stream, True, b""

    async def line(self) -> bytes | None:
        """One line without its CRLF, or None at EOF."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_LINE:
                raise ValueError("line too long")
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def reply(self, code: int, *lines: str) -> None:
        text = "".join(f"{code}{'-' * (n < len(lines) - 1) or ' '}{line}\r\n"
                       for n, line in enumerate(lines))  # fmt: skip
        await self.stream.send_all(text.encode())

    async def run(self) -> None:
        await self.reply(220, "sink.test ESMTP test sink")
        sender: bytes | None = None
        recipients: list[bytes] = []
        while (line := await self.line()) is not None:
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.helo, sender, recipients = line[5:], None, []
                starttls = () if self.tls else ("STARTTLS",)
                await self.reply(250, "sink.test", *EXTENSIONS, *starttls)
            elif verb == b"HELO":
                self.helo, sender, recipients = line[5:], None, []
                await self.reply(250, "sink.test")
            elif line.upper() == b"STARTTLS" and not self.tls:
                if self.buffer:
                    # RFC 3207 §4.2: nothing may follow STARTTLS before the handshake.
                    await self.reply(554, "5.5.1 commands pipelined after STARTTLS")
                    return
                await self.reply(220, "2.0.0 go ahead")
                await self.start_tls()
                sender, recipients = None, []
            elif verb == b"MAIL":
                sender, recipients = line[10:].split(b" ")[0], []
                await self.reply(250, "2.1.0 ok")
            elif verb == b"RCPT":
                if sender is None:
                    await self.reply(503, "5.5.1 MAIL first")
                    continue
                recipients.append(line[8:].split(b" ")[0])
                await self.reply(250, "2.1.5 ok")
            elif verb == b"DATA":
                if sender is None or not recipients:
                    await self.reply(503, "5.5.1 no valid recipients")
                    continue
                await self.reply(354, "end with <CRLF>.<CRLF>")
                data = bytearray()
                while (body_line := await self.line()) != b".":
                    if body_line is None:
                        return
                    data += (body_line[1:] if body_line.startswith(b".") else body_line) + b"\r\n"
                self.sink.messages.append(
                    Received(
                        self.helo, sender, tuple(recipients), bytes(data), self.tls, self.number
                    )
                )
                sender, recipients = None, []
                await self.reply(250, f"2.0.0 ok {len(self.sink.messages)}")
            elif verb in (b"RSET", b"NOOP"):
                sender, recipients = (None, []) if verb == b"RSET" else (sender, recipients)
                await self.reply(250, "2.0.0 ok")
            elif verb == b"QUIT":
                await self.reply(221, "2.0.0 bye")
                return
            else:
                await self.reply(502, "5.5.2 not implemented")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    # Postfix's smtp client reads smtp_tls_CAfile before it drops privileges, so the file
    # may sit in pytest's 0700 tmp_path.
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def sink(ca: trustme.CA, nursery: trio.Nursery) -> Sink:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost", "sink.test").configure_cert(context)
    sink = Sink(context)
    await nursery.start(sink.serve)
    return sink


def split_received(message: bytes) -> tuple[list[bytes], bytes]:
    """(the Received: fields at the top, each with its continuation lines; the rest)."""
    fields: list[bytes] = []
    while message.startswith(b"Received:"):
        end = 0
        while True:
            end = message.index(b"\r\n", end) + 2
            if message[end : end + 1] not in (b" ", b"\t"):
                break
        fields.append(message[:end])
        message = message[end:]
    return fields, message


def test_require_fails_never_skips() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"install\.sh"):
        require("no-such-peer-tool")


async def test_swaks_starttls_smtps_and_pipelining(sink: Sink, ca_file: Path) -> None:
    body = b"Subject: swaks\r\n\r\nfirst line\r\n.leading dot\r\n8-bit \xc3\xa9\r\n"
    send = functools.partial(swaks, "127.0.0.1", data=body)
    runs: list[Callable[[], subprocess.CompletedProcess[str]]] = [
        functools.partial(send, sink.port, to="tls@example.com", tls=True, tls_verify=ca_file),
        functools.partial(send, sink.port, to="pipeline@example.com", pipeline=True),
        functools.partial(send, sink.port, to="both@example.com", tls=True, pipeline=True),
        functools.partial(
            send, sink.smtps_port, to="smtps@example.com", tls_on_connect=True, tls_verify=ca_file
        ),
        # raw: the caller stuffs dots and ends the data, and swaks sends exactly that.
        functools.partial(
            swaks,
            "127.0.0.1",
            sink.port,
            to="raw@example.com",
            data=body.replace(b"\r\n.", b"\r\n..") + b".\r\n",
            raw=True,
        ),
    ]
    for run in runs:
        done = await trio.to_thread.run_sync(run)
        assert "250 2.0.0 ok" in done.stdout, done.stdout
    assert sink.errors == []
    assert [(m.recipients, m.tls) for m in sink.messages] == [
        ((b"<tls@example.com>",), True),
        ((b"<pipeline@example.com>",), False),
        ((b"<both@example.com>",), True),
        ((b"<smtps@example.com>",), True),
        ((b"<raw@example.com>",), False),
    ]
    assert {m.data for m in sink.messages} == {body}
    assert {m.helo for m in sink.messages} == {b"swaks.test"}


async def test_postfix_relays_over_starttls_byte_exact(
    sink: Sink, ca_file: Path, tmp_path: Path
) -> None:
    originals = [
        (
            f"From: user{n}@example.com\r\nTo: journal@example.net\r\nSubject: relay {n}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='example.com')}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"8-bit body {n} \u00e9\u00e8\r\n.leading dot\r\n..two dots\r\n"
            + ("x" * 76 + "\r\n") * (n * 7)
        ).encode()
        for n in range(20)
    ]  # fmt: skip
    # A message with only a Subject: nothing is added to it either.
    originals[0] = b"Subject: bare\r\n\r\nbody\r\n"
    async with open_private_postfix(
        tmp_path, relay_port=sink.port, tls="encrypt", ca_file=ca_file
    ) as postfix:
        for n, original in enumerate(originals):
            await trio.to_thread.run_sync(
                postfix.send, f"sender{n}@example.com", [f"rcpt{n}@example.net"], original
            )
        await trio.to_thread.run_sync(postfix.wait_until_queue_empty, 30.0)
        assert postfix.queue_ids_deferred() == []
        log = postfix.log_text()
    assert postfix.processes() == []
    # encrypt needs no trusted certificate, but with smtp_tls_CAfile the sink's is one.
    assert "Trusted TLS connection established to 127.0.0.1" in log, log[-3000:]
    assert sink.errors == []
    assert len(sink.messages) == 20
    assert all(m.tls for m in sink.messages)
    relayed = {}
    for message in sink.messages:
        received, rest = split_received(message.data)
        # Postfix adds its Received: field and nothing else.
        assert len(received) == 1, message.data[:500]
        assert b"(Postfix) with ESMTP id" in received[0]
        relayed[message.sender] = (message.recipients, rest)
    assert relayed == {
        f"<sender{n}@example.com>".encode(): ((f"<rcpt{n}@example.net>".encode(),), original)
        for n, original in enumerate(originals)
    }


async def test_two_instances_defer_then_deliver(sink: Sink, ca_file: Path, tmp_path: Path) -> None:
    """Two private instances side by side: "front" takes a message through sendmail(1) while
    its next hop, "back", is down (deferred, and the error says why), then "back" comes up
    on that port and the message goes front -> back -> sink."""
    message = (
        "From: local@example.com\r\nTo: far@example.net\r\nSubject: chained\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='example.com')}\r\n\r\n"
        "through two instances\r\n"
    ).encode()
    back_port = free_port()

    def scenario() -> tuple[list[int], str]:
        with private_postfix(tmp_path, name="front", relay_port=back_port, tls="may") as front:
            front.sendmail("local@example.com", ["far@example.net"], message)
            # Wait for the deferral in the log, not in the deferred queue: with a 1 s queue
            # run, qmgr may scan the deferred queue while the smtp client still holds the
            # file's lock, and then parks it in the incoming queue for 60 s.
            refused = (
                f"status=deferred (connect to 127.0.0.1[127.0.0.1]:{back_port}: Connection refused)"
            )
            deadline = time.monotonic() + 30
            while refused not in front.log_text():
                assert time.monotonic() < deadline, front.log_text()
                time.sleep(0.05)
            with pytest.raises(PostfixError, match="Connection refused"):
                front.wait_until_queue_empty(0.2)
            with private_postfix(
                tmp_path,
                name="back",
                listen_port=back_port,
                relay_port=sink.port,
                tls="encrypt",
                ca_file=ca_file,
            ) as back:
                front.flush()
                front.wait_until_queue_empty(20)
                back.wait_until_queue_empty(20)
                log = back.log_text()
            assert back.processes() == []  # stopped, and front still runs
            assert front.processes() != []
        return front.processes() + back.processes(), log

    left, back_log = await trio.to_thread.run_sync(scenario)
    assert left == []
    assert f" postfix-peer-{back_port}/smtpd[" in back_log  # its own syslog_name
    assert sink.errors == []
    [relayed] = sink.messages
    assert relayed.tls
    received, rest = split_received(relayed.data)
    # back's smtpd, front's smtpd-less pickup ("from userid 0") and nothing else.
    assert [r.split(b"\r\n")[0] for r in received] == [
        b"Received: from peer-%d.postfix.test (localhost [127.0.0.1])" % _front_port(received),
        b"Received: by peer-%d.postfix.test (Postfix, from userid 0)" % _front_port(received),
    ]
    assert rest == message


def _front_port(received: list[bytes]) -> int:
    return int(received[1].split(b"peer-")[1].split(b".")[0])


async def test_postfix_start_failure_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])

        def start() -> None:
            with private_postfix(tmp_path, listen_port=port, relay_port=port):
                pass

        with pytest.raises(PostfixError, match="Address already in use"):
            await trio.to_thread.run_sync(start)


async def test_smtp_source_200_messages_over_5_sessions(sink: Sink) -> None:
    done = await trio.to_thread.run_sync(
        functools.partial(
            smtp_source,
            "127.0.0.1",
            sink.port,
            sessions=5,
            messages=200,
            size=300,
            sender="load@example.com",
            to="sink@example.net",
            subject="peers load",
        )
    )
    assert sink.errors == []
    assert len(sink.messages) == 200, done.stdout + done.stderr
    assert sink.sessions == 5  # -d: each session keeps its connection
    for message in sink.messages:
        assert message.sender == b"<load@example.com>"
        assert message.recipients == (b"<sink@example.net>",)
        assert b"Subject: peers load\r\n" in message.data
        assert len(message.data.split(b"\r\n\r\n", 1)[1]) >= 300


# -- Dovecot and fetchmail ----------------------------------------------------------------


def mail_for_pop3(count: int, tag: str) -> list[bytes]:
    """CRLF messages with 8-bit text, lines that need dot-stuffing (a lone "." among them)
    and sizes from 300 octets to about 15 KB. Lines stay under poplib's 2,048-octet limit."""
    return [
        (
            f"From: sender{n}@example.com\r\nTo: archive@example.net\r\nSubject: {tag} {n}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='example.com')}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"8-bit body {n} \u00e9\u00e8\r\n.leading dot\r\n..two dots\r\n.\r\n"
            + ("x" * 76 + "\r\n") * (n * 13)
            + "y" * 1500 + "\r\n"
        ).encode()
        for n in range(count)
    ]  # fmt: skip


def retrieve_and_delete(client: poplib.POP3) -> tuple[list[bytes], list[int]]:
    """RETR and DELE every message, then QUIT: (the messages, dot-unstuffed, each line with
    its CRLF; the LIST sizes)."""
    count, _ = client.stat()
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    messages = []
    for number in range(1, count + 1):
        _, lines, _ = client.retr(number)
        messages.append(b"".join(line + b"\r\n" for line in lines))
        client.dele(number)
    assert client.quit().startswith(b"+OK")
    return messages, sizes


def client_context(dovecot: DovecotInstance) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(dovecot.ca_file))


def test_dovecot_stls_and_pop3s_retrieve_and_delete(tmp_path: Path) -> None:
    """poplib over STLS (credentials refused before it) and over implicit TLS; every message
    comes back as pop3_octets says: unchanged for CRLF mail, bare LF as CRLF, a final line
    end added; LIST counts the octets RETR sends; QUIT removes the files."""
    users = {"alice": "alice password", "bob": "bob password"}
    originals = mail_for_pop3(8, "pop3")
    odd = [b"Subject: bare LF\n\nline\nline\r\n", b"Subject: no final line end\r\n\r\nlast"]
    with private_dovecot(tmp_path, users=users) as dovecot:
        for message in [*originals, *odd]:
            dovecot.deliver("alice", message)
        for message in originals:
            dovecot.deliver("bob", message)
        # Maildir stores LF line ends.
        assert [p.read_bytes() for p in dovecot.stored("alice")] == [
            m.replace(b"\r\n", b"\n") for m in [*originals, *odd]
        ]

        plain = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=30)
        assert "STLS" in plain.capa()
        assert "USER" not in plain.capa()
        assert not plain.capa().get("SASL")  # no mechanism offered before TLS
        refused = r"^b'-ERR \[AUTH\] Plaintext authentication disallowed on non-secure"
        with pytest.raises(poplib.error_proto, match=refused):
            plain.user("alice")
        with pytest.raises(poplib.error_proto, match=refused):
            plain.pass_(users["alice"])
        plain.stls(client_context(dovecot))
        assert "USER" in plain.capa()
        assert plain.capa()["SASL"] == ["PLAIN"]
        plain.user("alice")
        assert plain.pass_(users["alice"]).startswith(b"+OK")
        got, sizes = retrieve_and_delete(plain)
        assert got[:8] == originals  # byte for byte
        assert got[8:] == [b"Subject: bare LF\r\n\r\nline\r\nline\r\n", odd[1] + b"\r\n"]
        assert got == [pop3_octets(m) for m in [*originals, *odd]]
        assert sizes == [len(m) for m in got[:-1]] + [len(got[-1]) - 2]
        assert dovecot.stored("alice") == []

        implicit = poplib.POP3_SSL(
            dovecot.host, dovecot.pop3s_port, context=client_context(dovecot), timeout=30
        )
        implicit.user("bob")
        implicit.pass_(users["bob"])
        got, _ = retrieve_and_delete(implicit)
        assert got == originals
        assert dovecot.stored("bob") == []
        dovecot.wait_for_log("del=10/10")
        log = dovecot.wait_for_log("del=8/8")
    assert dovecot.processes() == []
    assert "Login failed: Plaintext authentication disabled" in log
    assert "Login: user=<alice>, method=PLAIN" in log and ", TLS, session=" in log
    assert re.search(r"pop3\(alice\).*del=10/10", log)
    assert re.search(r"pop3\(bob\).*del=8/8", log)


async def test_fetchmail_fetches_all_and_deletes(tmp_path: Path) -> None:
    """fetchmail over STLS delivers every message byte for byte and deletes it; with
    implicit TLS, ``keep`` and its defaults it adds a Received: field, qualifies a bare To:
    and strips CRs; a poll of an empty mailbox exits 1."""
    users = {"alice": "alice password", "bob": "bob password"}
    async with open_private_dovecot(tmp_path, users=users) as dovecot:
        originals = mail_for_pop3(12, "fetchmail")
        for message in originals:
            dovecot.deliver("alice", message)
        run = functools.partial(
            fetchmail, dovecot.host, ca_file=dovecot.ca_file, tmp_dir=tmp_path / "fetchmail"
        )
        fetched = await trio.to_thread.run_sync(
            functools.partial(
                run, dovecot.pop3_port, user="alice", password=users["alice"], tls="starttls"
            )
        )
        assert "upgrade to TLS succeeded" in fetched.log, fetched.log
        assert fetched.status == 0
        assert fetched.messages == originals
        assert dovecot.stored("alice") == []

        empty = await trio.to_thread.run_sync(
            functools.partial(run, dovecot.pop3s_port, user="alice", password=users["alice"])
        )
        assert (empty.status, empty.messages) == (1, [])

        plain = [b"Subject: one\r\nTo: bob\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
        for message in plain:
            dovecot.deliver("bob", message)
        kept = await trio.to_thread.run_sync(
            functools.partial(
                run, dovecot.pop3s_port, user="bob", password=users["bob"], keep=True, exact=False
            )
        )
        assert len(dovecot.stored("bob")) == 2
        expected = [
            plain[0].replace(b"To: bob", f"To: bob@{dovecot.host}".encode()),
            plain[1],
        ]
        for got, original in zip(kept.messages, expected, strict=True):
            received = got.split(b"\n")[:3]
            assert received[0] == f"Received: from {dovecot.host} [{dovecot.host}]".encode()
            assert received[1].startswith(b"\tby ") and b"with POP3 (fetchmail-" in received[1]
            assert received[2].startswith(b"\tfor <") and b"(single-drop)" in received[2]
            assert b"\n".join(got.split(b"\n")[3:]) == original.replace(b"\r\n", b"\n")

        again = await trio.to_thread.run_sync(
            functools.partial(run, dovecot.pop3s_port, user="bob", password=users["bob"])
        )
        assert again.messages == plain
        assert dovecot.stored("bob") == []
        dovecot.wait_for_log("del=12/12")
        log = dovecot.wait_for_log("del=2/2")
    assert re.search(r"pop3\(alice\).*del=12/12", log)
    assert re.search(r"pop3\(bob\).*retr=2/\d+, del=0/2", log)  # the kept run


def test_two_dovecot_instances_side_by_side(tmp_path: Path, ca: trustme.CA) -> None:
    """Two instances from one CA in one tmp_path: each serves its own users and Maildirs,
    and stopping one leaves the other serving."""
    with private_dovecot(tmp_path, name="one", ca=ca, users={"alice": "password one"}) as one:
        with private_dovecot(
            tmp_path,
            name="two",
            ca=ca,
            users={"alice": "password two"},
            settings={"auth_failure_delay": "0"},  # a failed login is answered after 2 s
        ) as two:
            assert {one.pop3_port, one.pop3s_port}.isdisjoint({two.pop3_port, two.pop3s_port})
            assert one.ca_file.read_bytes() == two.ca_file.read_bytes()
            one.deliver("alice", b"Subject: for one\r\n\r\n1\r\n")
            two.deliver("alice", b"Subject: for two\r\n\r\n2\r\n")
            client = poplib.POP3_SSL(two.host, two.pop3s_port, context=client_context(two))
            client.user("alice")
            client.pass_("password two")
            assert retrieve_and_delete(client)[0] == [b"Subject: for two\r\n\r\n2\r\n"]
            # Last: a failure makes this instance's anvil delay the next login from the
            # address by seconds (auth penalty). Instance one's anvil knows nothing of it.
            wrong = poplib.POP3_SSL(two.host, two.pop3s_port, context=client_context(two))
            wrong.user("alice")
            with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Authentication failed"):
                wrong.pass_("password one")
            wrong.close()
            assert set(one.processes()).isdisjoint(two.processes())
            assert len(one.stored("alice")) == 1
        assert two.processes() == []
        assert one.processes() != []
        client = poplib.POP3_SSL(one.host, one.pop3s_port, context=client_context(one))
        client.user("alice")
        client.pass_("password one")
        assert retrieve_and_delete(client)[0] == [b"Subject: for one\r\n\r\n1\r\n"]
    assert one.processes() == []
    # Each kept its log in tmp_path, for a post-mortem.
    assert "Login: user=<alice>" in (tmp_path / "one" / "dovecot.log").read_text()
    assert "Login: user=<alice>" in (tmp_path / "two" / "dovecot.log").read_text()


def test_dovecot_start_failure_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with (
            pytest.raises(DovecotError, match="Address already in use"),
            private_dovecot(tmp_path, pop3_port=port),
        ):
            pass


# -- Postfix submission with SASL through Dovecot ------------------------------------------


def mail_for_submission(count: int, tag: str) -> list[bytes]:
    """CRLF messages Postfix must not touch: no Date, Message-ID or To in some, an
    unqualified address, odd header spelling, 8-bit text, dot lines, a 5,000-octet line."""
    messages = [
        (
            f"From: sender{n}@example.com\r\nTo: archive@example.net\r\nSubject: {tag} {n}\r\n"
            f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='example.com')}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"8-bit body {n} \u00e9\u00e8\r\n.leading dot\r\n..two dots\r\n.\r\n"
            + ("x" * 76 + "\r\n") * (n * 11)
        ).encode()
        for n in range(count)
    ]  # fmt: skip
    messages[0] = b"subject:   bare, no Date, no Message-ID\r\nTo: bob\r\n\r\nbody\r\n"
    messages[-1] = b"Subject: long line\r\n\r\n" + b"y" * 5000 + b"\r\n\xff\xfe raw 8-bit\r\n"
    return messages


def ehlo_keywords(client: smtplib.SMTP) -> set[str]:
    code, _ = client.ehlo()
    assert code == 250
    return {keyword.upper() for keyword in client.esmtp_features}


def test_submission_starttls_auth_plain_and_login_byte_exact(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """smtplib over STARTTLS: no AUTH offered and nothing accepted before it; after it,
    MAIL but no RCPT without AUTH; AUTH PLAIN (alice) and AUTH LOGIN (bob, the classic
    challenge dialogue), each forced; every message filed once per recipient, byte for
    byte once Postfix's four fields are off."""
    users = {"alice": "alice password", "bob": "bob password"}
    originals = mail_for_submission(6, "submission")
    with private_submission(tmp_path, users=users, ca=ca) as sub:
        assert sub.host == "127.0.0.2"
        assert ca.cert_pem.bytes() == sub.ca_file.read_bytes()
        context = sub.ssl_context()
        client = smtplib.SMTP(sub.host, sub.port, timeout=30)
        before = ehlo_keywords(client)
        assert {"STARTTLS", "PIPELINING", "8BITMIME", "SIZE", "CHUNKING", "SMTPUTF8"} <= before
        assert "AUTH" not in before
        plain = base64.b64encode(b"\0alice\0" + users["alice"].encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {plain}") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        assert client.docmd("MAIL", "FROM:<alice@example.com>")[0] == 530
        client.starttls(context=context)
        after = ehlo_keywords(client)
        assert "STARTTLS" not in after
        assert {"PIPELINING", "8BITMIME", "SIZE", "CHUNKING", "SMTPUTF8"} <= after
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        # TLS but no AUTH: the sender is taken, no recipient, whatever the domain.
        assert client.docmd("MAIL", "FROM:<alice@example.com>")[0] == 250
        code, reply = client.docmd("RCPT", "TO:<stranger@example.org>")
        assert (code, reply) == (
            554,
            b"5.7.1 <stranger@example.org>: Recipient address rejected: Access denied",
        )
        client.rset()
        client.user, client.password = "alice", users["alice"]
        assert client.auth("PLAIN", client.auth_plain)[0] == 235
        for n, message in enumerate(originals[:4]):
            assert client.sendmail(f"alice{n}@example.com", [f"rcpt{n}@example.net"], message) == {}
        client.quit()

        client = smtplib.SMTP(sub.host, sub.port, timeout=30)
        client.starttls(context=context)
        client.user, client.password = "bob", users["bob"]
        assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235
        for n, message in enumerate(originals[4:], start=4):
            assert client.sendmail(f"bob{n}@example.com", [f"rcpt{n}@example.org"], message) == {}
        client.quit()

        sub.wait_for_delivered(len(originals), 30)
        assert sub.delivered_payloads() == originals  # byte for byte, in delivery order
        deliveries = sub.deliveries()
        assert [(d.sender, d.recipient, d.original_recipient) for d in deliveries] == [
            (f"{'alice' if n < 4 else 'bob'}{n}@example.com",) + (f"rcpt{n}@example.{tld}",) * 2
            for n, tld in enumerate(["net"] * 4 + ["org"] * 2)
        ]
        first = sub.delivered()[0]
        assert first.startswith(b"Return-Path: <alice0@example.com>\nX-Original-To: ")
        assert b"\r" not in first  # Maildir: LF line ends
        assert all(b"(Postfix) with ESMTPSA id" in d.received for d in deliveries)
        log = sub.log_text()
        assert sub.queue() == []
    assert sub.processes() == []
    assert "sasl_method=PLAIN, sasl_username=alice" in log
    assert "sasl_method=LOGIN, sasl_username=bob" in log
    assert "message-id=<>" in log  # the bare message got none
    assert "Recipient address rejected: Access denied" in log
    # The logs stay in tmp_path, for a post-mortem; nothing is left under /tmp.
    assert (
        "status=sent (delivered to maildir)"
        in (tmp_path / "submission" / "postfix" / "maillog").read_text()
    )
    assert (tmp_path / "submission" / "dovecot" / "dovecot.log").exists()
    assert not (tmp_path / "submission").is_symlink()


def bdat(client: smtplib.SMTP, sender: str, recipient: str, chunks: list[bytes]) -> int:
    """One message in BDAT chunks (CHUNKING, RFC 3030): the reply code to the last."""
    assert client.mail(sender)[0] == 250
    assert client.rcpt(recipient)[0] == 250
    code = 0
    for n, chunk in enumerate(chunks):
        last = " LAST" if n == len(chunks) - 1 else ""
        client.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
        code, _ = client.getreply()
    return code


async def test_submission_smtps_bdat_swaks_and_pop3(tmp_path: Path) -> None:
    """SMTPS with smtplib's own choice of mechanism (two recipients: two deliveries),
    BDAT in two chunks, SMTPUTF8 addresses, swaks --auth over STARTTLS and SMTPS; the
    Dovecot that checks the passwords serves POP3 as well."""
    async with open_private_submission(tmp_path, users={"carol": "carol password"}) as sub:

        def smtps() -> None:
            with smtplib.SMTP_SSL(
                sub.host, sub.smtps_port, context=sub.ssl_context(), timeout=30
            ) as client:
                assert "AUTH" in ehlo_keywords(client)
                client.login("carol", "carol password")
                assert client.sendmail("carol@example.com", ["a@example.net", "b@example.org"],
                                       implicit) == {}  # fmt: skip
                assert bdat(client, "carol@example.com", "chunks@example.net", chunks) == 250
                client.sendmail("j\u00fcrgen@example.com", ["zo\u00eb@example.net"], utf8,
                                mail_options=["SMTPUTF8"])  # fmt: skip

        implicit = b"Subject: implicit TLS\r\n\r\n8-bit \xc3\xa9\r\n"
        chunks = [b"Subject: BDAT\r\n\r\nfirst chunk\r\n.not stuffed", b"\r\nsecond\r\n"]
        utf8 = "Subject: SMTPUTF8 \u00e9\r\nFrom: j\u00fcrgen@example.com\r\n\r\nx\r\n".encode()
        await trio.to_thread.run_sync(smtps)
        swaked = b"Subject: swaks\r\n\r\nfrom swaks\r\n.leading dot\r\n"
        send = functools.partial(
            swaks,
            sub.host,
            sender="swaks@example.com",
            data=swaked,
            tls_verify=sub.ca_file,
            auth=("carol", "carol password"),
        )
        for run in (
            functools.partial(send, sub.port, to="starttls@example.net", tls=True),
            functools.partial(send, sub.smtps_port, to="smtps@example.net", tls_on_connect=True),
        ):
            done = await trio.to_thread.run_sync(run)
            assert "<~  235 2.7.0 Authentication successful" in done.stdout, done.stdout
        await trio.to_thread.run_sync(sub.wait_for_delivered, 6, 30.0)
        deliveries = sub.deliveries()
        # One message's copies come in the order they were filed: any.
        assert {(d.recipient, d.payload) for d in deliveries[:2]} == {
            ("a@example.net", implicit),
            ("b@example.org", implicit),
        }
        assert deliveries[0].queue_id == deliveries[1].queue_id
        assert [(d.recipient, d.payload) for d in deliveries[2:]] == [
            ("chunks@example.net", b"".join(chunks)),
            ("zo\u00eb@example.net", utf8),
            ("starttls@example.net", swaked),
            ("smtps@example.net", swaked),
        ]
        assert deliveries[3].sender == "j\u00fcrgen@example.com"
        pop3 = poplib.POP3_SSL(
            sub.dovecot.host, sub.dovecot.pop3s_port, context=sub.ssl_context(), timeout=30
        )
        pop3.user("carol")
        assert pop3.pass_("carol password").startswith(b"+OK")
        assert pop3.stat() == (0, 0)
        pop3.quit()
        log = sub.log_text()
    assert sub.processes() == []
    assert "with ESMTPSA" in deliveries[0].received.decode()
    assert "with UTF8SMTPSA" in deliveries[3].received.decode()
    assert log.count("sasl_username=carol") == 5  # smtpd logs it with each message's client=


def wrong_login(
    sub: SubmissionInstance, mechanism: str, user: str, password: str, source: str
) -> None:
    """A failing AUTH over SMTPS from ``source``: Dovecot's anvil then delays the next AUTH
    from that address by 4 s (auth penalty), and only from that address."""
    with smtplib.SMTP_SSL(
        sub.host,
        sub.smtps_port,
        context=sub.ssl_context(),
        timeout=30,
        source_address=(source, 0),
    ) as client:
        client.ehlo()
        client.user, client.password = user, password
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth(mechanism, authobject)
        assert refused.value.smtp_code == 535
        error = refused.value.smtp_error
        assert isinstance(error, bytes) and error.startswith(b"5.7.8 Error: authentication failed")
        # Unauthenticated over implicit TLS: no recipient either.
        assert client.mail("x@example.com")[0] == 250
        assert client.rcpt("far@example.org")[0] == 554


def test_submission_refuses_wrong_passwords(tmp_path: Path) -> None:
    """535 for a wrong password (PLAIN) and an unknown user (LOGIN), answered at once
    (``auth_failure_delay = 0``); each from an address of its own, so that no login waits
    out Dovecot's auth penalty."""
    with private_submission(tmp_path) as sub:
        started = time.monotonic()
        wrong_login(sub, "PLAIN", "alice", "wrong", "127.0.0.3")
        first = time.monotonic() - started
        started = time.monotonic()
        sub.send("alice@example.com", ["rcpt@example.net"], b"Subject: ok\r\n\r\nok\r\n")
        # From 127.0.0.1: no penalty from 127.0.0.3's failure.
        assert time.monotonic() - started < 2, sub.log_text()
        wrong_login(sub, "LOGIN", "nosuchuser", "password", "127.0.0.4")
        assert sub.wait_for_delivered(1)
        deadline = time.monotonic() + 10
        while True:  # postfix logs through its own daemon: the line may come a moment later
            dovecot_log = sub.dovecot.log_text()
            log = sub.log_text()
            if "SASL LOGIN authentication failed" in log or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert first < 2  # auth_failure_delay = 0 (failures are flushed every 0.5 s)
    assert "SASL PLAIN authentication failed" in log
    assert "SASL LOGIN authentication failed" in log
    assert "passwd-file(alice,127.0.0.3): Password mismatch" in dovecot_log
    assert "passwd-file(nosuchuser,127.0.0.4): unknown user" in dovecot_log


async def test_submission_discard_empties_the_queue(tmp_path: Path) -> None:
    """deliver="discard": 40 messages over 4 connections are accepted, queued and thrown
    away; nothing reaches the Maildir."""
    async with open_private_submission(tmp_path, deliver="discard") as sub:

        def submit(session: int) -> None:
            with smtplib.SMTP(sub.host, sub.port, timeout=30) as client:
                client.starttls(context=sub.ssl_context())
                client.login("alice", "password")
                for n in range(10):
                    message = f"Subject: load {session}.{n}\r\n\r\n".encode() + b"z" * 2000
                    assert client.sendmail("load@example.com", ["sink@example.net"], message) == {}

        async with trio.open_nursery() as nursery:
            for session in range(4):
                nursery.start_soon(trio.to_thread.run_sync, submit, session)
        await trio.to_thread.run_sync(sub.wait_until_queue_empty, 30.0)
        await trio.to_thread.run_sync(sub.wait_for_sent, 40, 10.0)
        assert sub.delivered() == []
        log = sub.log_text()
    assert log.count("status=sent (discarded)") == 40
