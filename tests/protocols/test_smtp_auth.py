"""AUTH in the SMTP server machine (RFC 4954): PLAIN (RFC 4616) and LOGIN, under TLS only."""

from __future__ import annotations

import base64

import pytest

from gateway.protocols.smtp import (
    Authenticate,
    Event,
    LocalProtocolError,
    MailFrom,
    Reply,
    ServerConnection,
    format_reply,
    replies,
)

from .helpers import TLS, Mark, accept_all, drive, run_all_ways, settings

TLS_UP: list[bytes | Mark] = [b"EHLO c\r\nSTARTTLS\r\n", TLS, b"EHLO c\r\n"]


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{user}\0{password}")


def grant(event: Event) -> Reply:
    if isinstance(event, Authenticate):
        return replies.AUTH_OK if event.password == "secret" else replies.AUTH_FAILED
    return accept_all(event)


def auth_events(events: list[Event]) -> list[Authenticate]:
    return [e for e in events if isinstance(e, Authenticate)]


def test_auth_is_offered_only_under_tls() -> None:
    t = run_all_ways([*TLS_UP], settings(auth_offered=True))
    clear, secure = t.replies[1], t.replies[3]
    assert "AUTH PLAIN LOGIN" not in clear.lines and "STARTTLS" in clear.lines
    assert "AUTH PLAIN LOGIN" in secure.lines and "STARTTLS" not in secure.lines
    t = run_all_ways([b"EHLO c\r\n"], settings(tls_active=True))
    assert not any(line.startswith("AUTH") for line in t.replies[1].lines)


def test_auth_in_the_clear_is_refused_and_never_decided() -> None:
    t = run_all_ways(
        [b"EHLO c\r\nAUTH PLAIN " + plain("bob", "secret") + b"\r\nAUTH LOGIN\r\n"],
        settings(auth_offered=True),
        grant,
    )
    assert t.codes[-2:] == [538, 538]
    assert t.replies[-1] == replies.AUTH_NEEDS_TLS
    assert auth_events(t.events) == []


def test_auth_with_require_tls_gets_530_first() -> None:
    t = run_all_ways(
        [b"EHLO c\r\nAUTH PLAIN " + plain("bob", "secret") + b"\r\n"],
        settings(auth_offered=True, require_tls=True),
        grant,
    )
    assert t.codes[-1] == 530
    assert auth_events(t.events) == []


@pytest.mark.parametrize("authzid", ["", "bob"])
def test_plain_with_initial_response(authzid: str) -> None:
    t = run_all_ways(
        [*TLS_UP, b"AUTH PLAIN " + plain("bob", "secret", authzid) + b"\r\nMAIL FROM:<a@b>\r\n"],
        settings(auth_offered=True),
        grant,
    )
    assert auth_events(t.events) == [Authenticate("PLAIN", "bob", "secret")]
    assert t.codes[-2:] == [235, 250]


def test_plain_after_empty_challenge_and_a_failure() -> None:
    conn_settings = settings(auth_offered=True)
    t = run_all_ways(
        [
            *TLS_UP,
            b"AUTH PLAIN\r\n" + plain("bob", "wrong") + b"\r\n",
            b"auth plain\r\n" + plain("bob", "secret") + b"\r\nAUTH PLAIN =\r\n",
        ],
        conn_settings,
        grant,
    )
    assert [e.password for e in auth_events(t.events)] == ["wrong", "secret"]
    assert t.codes[-5:] == [334, 535, 334, 235, 503]  # then: already authenticated
    assert t.output.count(b"334 \r\n") == 2  # RFC 4954 §4: "334" SP, empty challenge
    conn = ServerConnection(conn_settings)
    drive(conn, [*TLS_UP, b"AUTH PLAIN " + plain("bob", "secret") + b"\r\n"], grant)
    assert conn.authenticated


def test_login_exchange_with_and_without_initial_response() -> None:
    t = run_all_ways(
        [
            *TLS_UP,
            b"AUTH LOGIN\r\n" + b64("bob") + b"\r\n" + b64("wrong") + b"\r\n",
            b"AUTH LOGIN " + b64("bob") + b"\r\n" + b64("secret") + b"\r\n",
        ],
        settings(auth_offered=True),
        grant,
    )
    assert auth_events(t.events) == [
        Authenticate("LOGIN", "bob", "wrong"),
        Authenticate("LOGIN", "bob", "secret"),
    ]
    assert b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8" in t.output
    assert t.output.endswith(b"334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n")


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        (b"AUTH PLAIN\r\n*\r\n", replies.AUTH_CANCELLED),
        (b"AUTH LOGIN\r\n" + b64("bob") + b"\r\n*\r\n", replies.AUTH_CANCELLED),
        (b"AUTH PLAIN ####\r\n", replies.AUTH_MALFORMED),
        (b"AUTH PLAIN\r\nnot base64!\r\n", replies.AUTH_MALFORMED),
        (b"AUTH PLAIN " + b64("bob\0secret") + b"\r\n", replies.AUTH_MALFORMED),
        (b"AUTH PLAIN " + plain("bob", "") + b"\r\n", replies.AUTH_MALFORMED),
        (b"AUTH PLAIN " + plain("bob", "se\ncret") + b"\r\n", replies.AUTH_MALFORMED),
        (b"AUTH PLAIN " + plain("bob", "secret", "eve") + b"\r\n", replies.AUTH_FAILED),
        (b"AUTH CRAM-MD5\r\n", replies.AUTH_MECHANISM),
        (b"AUTH\r\n", replies.SYNTAX_AUTH),
        (b"AUTH PLAIN a b\r\n", replies.SYNTAX_AUTH),
        (b"AUTH PLAIN\r\n" + b"A" * 5000 + b"\r\n", replies.AUTH_LINE_TOO_LONG),
    ],
)
def test_bad_exchanges_are_refused_and_the_session_goes_on(lines: bytes, reply: Reply) -> None:
    t = run_all_ways([*TLS_UP, lines + b"NOOP\r\n"], settings(auth_offered=True), grant)
    assert auth_events(t.events) == []
    assert t.replies[-2:] == [reply, replies.OK]


def test_auth_out_of_sequence() -> None:
    t = run_all_ways(
        [b"AUTH PLAIN\r\nEHLO c\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN\r\n"],
        settings(auth_offered=True, tls_active=True, starttls_offered=False),
        grant,
    )
    assert t.replies[1] == replies.EHLO_FIRST
    assert t.replies[-1] == replies.IN_TRANSACTION


def test_auth_not_offered_is_not_implemented() -> None:
    t = run_all_ways([*TLS_UP, b"AUTH PLAIN " + plain("bob", "secret") + b"\r\n"], settings())
    assert t.replies[-1] == replies.NOT_IMPLEMENTED


def test_eof_inside_the_exchange_closes() -> None:
    t = run_all_ways([*TLS_UP, b"AUTH LOGIN\r\n" + b64("bob")], settings(auth_offered=True))
    assert t.codes[-1] == 334
    conn = ServerConnection(settings(auth_offered=True))
    drive(conn, [*TLS_UP, b"AUTH LOGIN\r\n"])
    conn.receive_data(b"")
    assert type(conn.next_event()).__name__ == "ConnectionClosed"


def test_the_password_is_not_in_the_repr_and_235_only_answers_auth() -> None:
    assert "secret" not in repr(Authenticate("PLAIN", "bob", "secret"))
    conn = ServerConnection(settings(tls_active=True, starttls_offered=False, auth_offered=True))
    conn.greeting()
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b>\r\n")
    while not isinstance(conn.next_event(), MailFrom):
        pass
    with pytest.raises(LocalProtocolError):
        conn.send(replies.AUTH_OK)


def test_settings_refuse_auth_without_tls() -> None:
    with pytest.raises(ValueError, match="auth_offered needs TLS"):
        settings(auth_offered=True, starttls_offered=False)
    assert format_reply(replies.auth_challenge("")) == b"334 \r\n"
