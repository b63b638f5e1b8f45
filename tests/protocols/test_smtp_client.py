"""The SMTP client machine (the recording proxy's upstream side), byte by byte: every script
runs whole, one byte at a time, at random splits and with the replies ahead of the commands
(client_helpers.run_all_ways)."""

from __future__ import annotations

import pytest

from gateway.protocols._sasl import plain_response
from gateway.protocols.smtp import (
    REPLY_LINES_LIMIT,
    REPLY_SIZE_LIMIT,
    Authenticate,
    BodyData,
    BodyType,
    ClientConnection,
    ClientState,
    CloseReason,
    ConnectionClosed,
    EndOfMessage,
    Hello,
    LocalProtocolError,
    MailFrom,
    Quit,
    RcptTo,
    RemoteProtocolError,
    Reply,
    Reset,
    StartData,
    StartTLS,
    format_reply,
)

from .client_helpers import EOF, TLS, Send, Step, drive, raises_all_ways, run_all_ways, whole

GREETING = b"220 mx.example ESMTP\r\n"
EHLO = Send(Hello("EHLO", "gw.test"))
PLAIN_EHLO = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"
TLS_EHLO = (
    b"250-mx.example\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-auth plain LOGIN\r\n"
    b"250-CHUNKING\r\n250 SMTPUTF8\r\n"
)
OK = b"250 2.0.0 OK\r\n"


def login_prefix() -> list[Step]:
    """Greeting, EHLO, STARTTLS, the handshake, EHLO again."""
    return [GREETING, EHLO, PLAIN_EHLO, Send(StartTLS()), b"220 2.0.0 Ready\r\n", TLS, EHLO]


def transaction_prefix() -> list[Step]:
    return [
        TLS,
        GREETING,
        EHLO,
        TLS_EHLO,
        Send(MailFrom("a@example.org", size=10, body=BodyType.EIGHT_BIT_MIME)),
        OK,
        Send(RcptTo("b@example.net")),
        OK,
    ]


def test_starttls_session_with_data() -> None:
    script: list[Step] = [
        *login_prefix(),
        TLS_EHLO,
        Send(Authenticate("PLAIN", "alice", "secret")),
        b"235 2.7.0 Authentication successful\r\n",
        Send(MailFrom("a@example.org", size=10, body=BodyType.EIGHT_BIT_MIME)),
        OK,
        Send(RcptTo("b@example.net")),
        b"251 2.1.5 will forward\r\n",
        Send(StartData()),
        b"354 go ahead\r\n",
        Send(BodyData(b"Subject: x\r\n\r\n.dot\r\n")),
        Send(BodyData(b".")),
        Send(EndOfMessage(b"still a dot line")),
        b"250 2.0.0 Ok: queued as 4F\r\n",
        Send(Quit()),
        b"221 2.0.0 Bye\r\n",
        EOF,
    ]
    transcript = run_all_ways(ClientConnection, script)
    tls_ehlo = ("mx.example", "SIZE 1000", "8BITMIME", "auth plain LOGIN", "CHUNKING", "SMTPUTF8")
    assert transcript.events == [
        Reply(220, None, ("mx.example ESMTP",)),
        Reply(250, None, ("mx.example", "PIPELINING", "SIZE 1000", "STARTTLS")),
        StartTLS(),
        Reply(250, None, tls_ehlo),
        Reply(235, "2.7.0", ("Authentication successful",)),
        Reply(250, "2.0.0", ("OK",)),
        Reply(251, "2.1.5", ("will forward",)),
        Reply(354, None, ("go ahead",)),
        Reply(250, "2.0.0", ("Ok: queued as 4F",)),
        Reply(221, "2.0.0", ("Bye",)),
        ConnectionClosed(CloseReason.QUIT),
    ]
    assert bytes(transcript.output) == (
        b"EHLO gw.test\r\nSTARTTLS\r\nEHLO gw.test\r\n"
        b"AUTH PLAIN " + plain_response("alice", "secret").encode() + b"\r\n"
        b"MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.net>\r\nDATA\r\n"
        b"Subject: x\r\n\r\n..dot\r\n..still a dot line\r\n.\r\nQUIT\r\n"
    )


def test_extensions_are_forgotten_when_tls_starts() -> None:
    conn = ClientConnection()
    drive(conn, whole([GREETING, EHLO, PLAIN_EHLO, Send(StartTLS()), b"220 go\r\n"]))
    assert conn.offers("starttls")
    assert conn.extensions == {"PIPELINING": "", "SIZE": "1000", "STARTTLS": ""}
    conn.tls_started()
    assert conn.state is ClientState.HELLO
    assert conn.extensions == {}
    assert conn.tls_active


def test_auth_login_answers_both_challenges() -> None:
    conn = ClientConnection()
    script: list[Step] = [
        TLS,
        GREETING,
        EHLO,
        b"250-mx\r\n250 AUTH LOGIN\r\n",
    ]
    drive(conn, whole(script))
    assert conn.choose_mechanism() == "LOGIN"
    transcript = run_all_ways(
        ClientConnection,
        [
            *script,
            Send(Authenticate("LOGIN", "alice", "secret")),
            b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n",
        ],
        trailing=False,
    )
    assert transcript.events[-1] == Reply(235, "2.7.0", ("ok",))
    assert transcript.output.endswith(b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n")


def test_a_challenge_where_none_belongs_is_cancelled() -> None:
    script: list[Step] = [
        TLS,
        GREETING,
        EHLO,
        b"250-mx\r\n250 AUTH PLAIN\r\n",
        Send(Authenticate("PLAIN", "alice", "secret")),
        b"334 \r\n",
        b"501 5.7.0 cancelled\r\n",
    ]
    transcript = run_all_ways(ClientConnection, script)
    assert transcript.events[-1] == Reply(501, "5.7.0", ("cancelled",))
    assert transcript.output.endswith(b"\r\n*\r\n")
    # Challenging again after the "*" is out of step.
    raises_all_ways(
        ClientConnection,
        [*script[:-1], b"334 \r\n"],
        RemoteProtocolError,
        "a challenge after the cancel",
    )


def test_long_plain_response_goes_after_the_334() -> None:
    """RFC 4954 §4: an initial response that makes the AUTH line longer than 512 octets is
    sent after the server's empty challenge instead."""
    password = "p" * 400
    response = plain_response("alice", password).encode()
    transcript = run_all_ways(
        ClientConnection,
        [
            TLS,
            GREETING,
            EHLO,
            b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n",
            Send(Authenticate("PLAIN", "alice", password)),
            b"334 \r\n",
            b"235 ok\r\n",
        ],
    )
    assert transcript.output.endswith(b"AUTH PLAIN\r\n" + response + b"\r\n")
    assert transcript.events[-1] == Reply(235, None, ("ok",))


def test_bdat_chunks_and_a_refused_chunk() -> None:
    script: list[Step] = [
        *transaction_prefix(),
        Send(StartData(chunked=True)),
        Send(BodyData(b"hello")),
        b"250 2.0.0 5 octets\r\n",
        Send(BodyData(b"")),  # nothing to send: no chunk, no reply
        Send(EndOfMessage(b".x\r\n")),
        b"250 2.0.0 queued\r\n",
        Send(MailFrom("c@example.org")),
        OK,
        Send(RcptTo("d@example.net")),
        OK,
        Send(StartData(chunked=True)),
        Send(BodyData(b"abc")),
        b"552 5.3.4 too big\r\n",
        Send(Reset()),
        OK,
    ]
    transcript = run_all_ways(ClientConnection, script)
    assert transcript.output.endswith(
        b"BDAT 5\r\nhelloBDAT 4 LAST\r\n.x\r\n"
        b"MAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.net>\r\nBDAT 3\r\nabcRSET\r\n"
    )
    assert Reply(552, "5.3.4", ("too big",)) in transcript.events
    conn = ClientConnection()
    drive(conn, whole(script[:-2]))
    assert conn.state is ClientState.FAILED  # RFC 3030 §2: no more chunks
    with pytest.raises(LocalProtocolError):
        conn.send(BodyData(b"more"))


def test_refused_data_and_mail_leave_the_state() -> None:
    conn = ClientConnection()
    drive(conn, whole([*transaction_prefix(), Send(StartData()), b"554 5.5.1 no\r\n"]))
    assert conn.state.name == "RCPT"
    drive(conn, whole([Send(Reset()), OK, Send(MailFrom("x@y.z")), b"451 later\r\n"]))
    assert conn.state.name == "READY"


@pytest.mark.parametrize(
    ("script", "match", "temporary"),
    [
        ([b"554 5.3.2 no service\r\n"], "refused the session: 554", False),
        ([b"421 4.3.2 busy\r\n"], "refused the session: 421", True),
        ([GREETING, EHLO, b"502 5.5.1 no EHLO\r\n"], "refused EHLO: 502", True),
        (
            [GREETING, EHLO, PLAIN_EHLO, Send(StartTLS()), b"454 4.7.0 no TLS\r\n"],
            "refused STARTTLS: 454",
            True,
        ),
        ([GREETING, EHLO, b"250-mx\r\n250 SIZE\r\n", Send(StartTLS())], "does not offer", False),
        ([b"220-a\r\n221 b\r\n"], "broke the protocol: reply code changed", True),
        ([b"hello\r\n"], "broke the protocol: malformed reply line", True),
        ([b"220 " + b"x" * 5000 + b"\r\n"], "broke the protocol: reply line too long", True),
        ([b"220-x\r\n" * REPLY_LINES_LIMIT], "broke the protocol: reply has too many lines", True),
        (
            [b"220-" + b"x" * 3000 + b"\r\n"] * (REPLY_SIZE_LIMIT // 3000 + 1),
            "broke the protocol: reply too large",
            True,
        ),
        ([b"220 hi\r\n", EHLO, EOF], "closed the connection", True),
        ([b"220 hi\r\n250-partial\r\n", EOF], "broke the protocol: connection closed", True),
    ],
    ids=lambda v: repr(v)[:40] if not isinstance(v, bool) else str(v),
)
def test_remote_errors_say_what_to_do(script: list[Step], match: str, temporary: bool) -> None:
    errors = raises_all_ways(ClientConnection, script, RemoteProtocolError, match)
    assert {getattr(e, "temporary", None) for e in errors} == {temporary}


def test_response_injection_after_starttls() -> None:
    """RFC 3207 §5: bytes that came with the 220, or before the handshake, were sent in the
    clear; they are refused whenever they arrive."""
    script: list[Step] = [
        GREETING,
        EHLO,
        PLAIN_EHLO,
        Send(StartTLS()),
        b"220 Ready\r\n250 injected\r\n",
        TLS,
    ]
    raises_all_ways(ClientConnection, script, RemoteProtocolError, "sent data after its STARTTLS")


def test_no_auth_mechanism_is_permanent() -> None:
    conn = ClientConnection()
    drive(conn, whole([TLS, GREETING, EHLO, b"250-mx\r\n250 AUTH CRAM-MD5 XOAUTH2\r\n"]))
    with pytest.raises(RemoteProtocolError, match="neither AUTH PLAIN nor AUTH LOGIN") as info:
        conn.choose_mechanism()
    assert not info.value.temporary


def test_idle_eof_and_an_unsolicited_reply() -> None:
    conn = ClientConnection()
    transcript = drive(conn, whole([TLS, GREETING, EHLO, OK, EOF]))
    assert transcript.events[-1] == ConnectionClosed(CloseReason.EOF)
    conn = ClientConnection()
    drive(conn, whole([TLS, GREETING, EHLO, OK, b"421 4.4.2 idle timeout\r\n"]))
    with pytest.raises(RemoteProtocolError, match="a reply to no command"):
        conn.next_event()
    assert conn.state is ClientState.CLOSED


@pytest.mark.parametrize(
    ("prefix", "command", "match"),
    [
        ([], Hello("EHLO", "x"), "cannot be sent in GREETING"),
        ([GREETING], MailFrom("a@b.c"), "cannot be sent in HELLO"),
        ([GREETING, EHLO], Hello("EHLO", "x"), "is due"),
        ([GREETING, EHLO, PLAIN_EHLO], Authenticate("PLAIN", "a", "b"), "without TLS"),
        ([TLS, GREETING, EHLO, TLS_EHLO], StartTLS(), "already active"),
        ([TLS, GREETING, EHLO, b"250 mx\r\n"], MailFrom("a@b.c", size=5), "SIZE"),
        ([TLS, GREETING, EHLO, b"250 mx\r\n"], MailFrom("a@b.c", smtputf8=True), "SMTPUTF8"),
        ([TLS, GREETING, EHLO, b"250 mx\r\n"], MailFrom("a", body=BodyType.SEVEN_BIT), "8BIT"),
        (
            [TLS, GREETING, EHLO, b"250-mx\r\n250 8BITMIME\r\n"],
            MailFrom("a", body=BodyType.BINARY_MIME),
            "BINARYMIME",
        ),
        ([TLS, GREETING, EHLO, TLS_EHLO], Authenticate("LOGIN", "a\r\n", "b"), ""),
        ([TLS, GREETING, EHLO, b"250 mx\r\n"], Authenticate("PLAIN", "a", "b"), "does not offer"),
        ([TLS, GREETING, EHLO, TLS_EHLO], MailFrom("a@b.c>\r\nDATA"), "line break"),
        ([TLS, GREETING, EHLO, TLS_EHLO], Quit(), ""),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_local_errors_change_nothing(prefix: list[Step], command: object, match: str) -> None:
    conn = ClientConnection()
    drive(conn, whole(prefix))
    before = (conn.state, conn.reply_due, conn.extensions, conn.authenticated)
    if match == "":  # legal: check it works instead
        assert conn.send(command)  # type: ignore[arg-type]
        return
    with pytest.raises(LocalProtocolError, match=match):
        conn.send(command)  # type: ignore[arg-type]
    assert (conn.state, conn.reply_due, conn.extensions, conn.authenticated) == before


def test_chunked_without_chunking_and_quit_inside_data() -> None:
    conn = ClientConnection()
    drive(conn, whole([TLS, GREETING, EHLO, b"250 mx\r\n", Send(MailFrom("a")), OK]))
    drive(conn, whole([Send(RcptTo("b")), OK]))
    with pytest.raises(LocalProtocolError, match="CHUNKING"):
        conn.send(StartData(chunked=True))
    drive(conn, whole([Send(StartData()), b"354 go\r\n"]))
    with pytest.raises(LocalProtocolError, match="cannot be sent in DATA"):
        conn.send(Quit())  # it would be read as content
    assert conn.send(EndOfMessage()) == b".\r\n"


def test_tls_started_only_where_it_belongs() -> None:
    conn = ClientConnection()
    conn.receive_data(GREETING)
    with pytest.raises(LocalProtocolError):
        conn.tls_started()  # implicit TLS starts before the first byte
    conn = ClientConnection()
    conn.tls_started()
    with pytest.raises(LocalProtocolError):
        conn.tls_started()


def test_reply_catalogue_round_trips_through_the_client() -> None:
    """The server machine's replies, as its writer formats them, read back by the client."""
    reply = Reply(250, None, ("mx.test", "AUTH PLAIN LOGIN", "STARTTLS"))
    conn = ClientConnection()
    transcript = drive(conn, whole([GREETING, EHLO, format_reply(reply)]))
    assert transcript.events[-1] == reply
    assert conn.choose_mechanism() == "PLAIN"
