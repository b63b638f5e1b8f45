"""STLS injection, credentials in the clear, CAPA before and after TLS."""

from __future__ import annotations

import pytest

from gateway.protocols.pop3 import (
    CloseReason,
    ConnectionClosed,
    Login,
    ServerConnection,
    StartTLS,
    State,
)

from .pop3_helpers import EOF, TLS, run_all_ways, settings

GREETING = b"+OK pop.test POP3 ready\r\n"
CAPA_CLEAR = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
    b"AUTH-RESP-CODE\r\nSTLS\r\n.\r\n"
)
CAPA_TLS = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
    b"AUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
)
TLS_REQUIRED = b"-ERR [AUTH] TLS required: use STLS first\r\n"


def test_stls_injection_pipelined_user_never_seen() -> None:
    t = run_all_ways([b"STLS\r\nUSER x\r\nPASS secret\r\n", TLS, b"PASS secret\r\nCAPA\r\n"])
    assert t.events == [StartTLS()]  # no Login: USER x was dropped with the cleartext
    assert bytes(t.output) == GREETING + b"+OK Begin TLS negotiation\r\n" + (
        b"-ERR send USER first\r\n" + CAPA_TLS
    )


def test_bytes_during_handshake_are_dropped() -> None:
    conn = ServerConnection(settings())
    conn.greeting()
    conn.receive_data(b"STLS\r\n")
    assert conn.next_event() == StartTLS()
    conn.receive_data(b"USER x\r\n")
    assert conn.statistics().discarded == 8
    conn.tls_started()
    assert conn.state is State.AUTHORIZATION
    assert conn.tls_active
    assert conn.statistics().buffered == 0


def test_eof_during_handshake_closes() -> None:
    t = run_all_ways([b"STLS\r\n", EOF])
    assert t.events == [StartTLS(), ConnectionClosed(CloseReason.EOF)]


@pytest.mark.parametrize(
    "line",
    [b"USER alice", b"PASS secret", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH PLAIN",
     b"APOP alice 0123456789abcdef"],
)  # fmt: skip
@pytest.mark.parametrize("stls_offered", [True, False])
def test_credentials_refused_in_the_clear(line: bytes, stls_offered: bool) -> None:
    t = run_all_ways([line + b"\r\n"], settings(stls_offered=stls_offered))
    assert t.events == []
    assert bytes(t.output) == GREETING + TLS_REQUIRED


def test_user_pass_in_the_clear_never_logs_in() -> None:
    t = run_all_ways([b"USER alice\r\nPASS secret\r\nSTAT\r\n"])
    assert bytes(t.output) == GREETING + TLS_REQUIRED * 2 + (
        b"-ERR command not valid in this state\r\n"
    )


def test_capa_before_and_after_tls() -> None:
    t = run_all_ways([b"CAPA\r\nSTLS\r\n", TLS, b"CAPA\r\nSTLS\r\nUSER a\r\nPASS secret\r\n"])
    assert t.events == [StartTLS(), Login("a", "secret", "USER")]
    assert bytes(t.output) == GREETING + CAPA_CLEAR + b"+OK Begin TLS negotiation\r\n" + (
        CAPA_TLS + b"-ERR STLS not available\r\n+OK send PASS\r\n+OK logged in\r\n"
    )


def test_capa_without_stls_offered_and_in_transaction() -> None:
    clear = run_all_ways([b"CAPA\r\nSTLS\r\n"], settings(stls_offered=False))
    assert b"STLS\r\n" not in clear.output.split(b".\r\n")[0]
    assert clear.output.endswith(b"-ERR STLS not available\r\n")
    tls = run_all_ways([b"USER a\r\nPASS secret\r\nCAPA\r\nSTLS\r\n"], settings(tls_active=True))
    assert bytes(tls.output).endswith(CAPA_TLS + b"-ERR command not valid in this state\r\n")


def test_apop_with_tls_is_unsupported() -> None:
    t = run_all_ways([b"APOP a b\r\n"], settings(tls_active=True))
    assert t.output.endswith(b"-ERR APOP not supported\r\n")


def test_control_characters_in_credentials_refused() -> None:
    t = run_all_ways([b"USER a\x00b\r\nUSER a\r\nPASS x\x01y\r\n"], settings(tls_active=True))
    assert t.events == []
    assert bytes(t.output).endswith(b"-ERR syntax error\r\n+OK send PASS\r\n-ERR syntax error\r\n")
