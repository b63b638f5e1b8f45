"""Whole POP3 sessions through the server machine, every input fed three ways."""

from __future__ import annotations

import base64

import pytest

from gateway.protocols.pop3 import (
    CloseReason,
    ConnectionClosed,
    Dele,
    List,
    LocalProtocolError,
    Login,
    Noop,
    Quit,
    Reply,
    Retr,
    Rset,
    ServerConnection,
    StartTLS,
    Stat,
    State,
    Top,
    Uidl,
)

from .pop3_helpers import EOF, TLS, drive, run_all_ways, settings

GREETING = b"+OK pop.test POP3 ready\r\n"
TLS_ON = settings(tls_active=True, stls_offered=False)


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def test_stls_then_user_pass_full_session() -> None:
    t = run_all_ways(
        [
            b"CAPA\r\nSTLS\r\n",
            TLS,
            b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 1\r\n",
            b"RETR 1\r\nTOP 2 1\r\nDELE 1\r\nRSET\r\nDELE 2\r\nNOOP\r\nQUIT\r\n",
        ]
    )
    assert t.events == [
        StartTLS(),
        Login("alice", "secret", "USER"),
        Stat(),
        List(None),
        List(2),
        Uidl(None),
        Uidl(1),
        Retr(1),
        Top(2, 1),
        Dele(1),
        Rset(),
        Dele(2),
        Noop(),
        Quit(),
        ConnectionClosed(CloseReason.QUIT, Reply(True)),
    ]
    out = bytes(t.output)
    assert out.startswith(GREETING + b"+OK Capability list follows\r\n")
    assert b"+OK Begin TLS negotiation\r\n+OK send PASS\r\n+OK logged in\r\n" in out
    assert (
        b"+OK 2 73\r\n+OK\r\n1 34\r\n2 39\r\n.\r\n+OK 2 39\r\n"
        b"+OK\r\n1 u1\r\n2 u2\r\n.\r\n+OK 1 u1\r\n" in out
    )
    # RETR 1: the ".dot line" is stuffed; TOP 2 1: headers, blank line, one body line.
    assert b"+OK message follows\r\nSubject: one\r\n\r\nhello\r\n..dot line\r\n.\r\n" in out
    assert b"+OK message follows\r\nSubject: two\r\nX: y\r\n\r\nbody\r\n.\r\n" in out
    assert out.endswith(b"+OK\r\n+OK\r\n+OK\r\n+OK\r\n+OK\r\n")


def test_retr_without_final_crlf_gets_one() -> None:
    t = run_all_ways([b"USER a\r\nPASS secret\r\nRETR 2\r\n"], TLS_ON)
    assert bytes(t.output).endswith(b"\r\n...two\r\nlast\r\n.\r\n")


@pytest.mark.parametrize("authzid", ["", "bob"])
def test_auth_plain_initial_response(authzid: str) -> None:
    t = run_all_ways([b"AUTH PLAIN " + plain(authzid, "bob", "secret") + b"\r\nSTAT\r\n"], TLS_ON)
    assert t.events == [Login("bob", "secret", "PLAIN"), Stat()]
    assert bytes(t.output) == GREETING + b"+OK logged in\r\n+OK 2 73\r\n"


def test_auth_plain_continuation_round() -> None:
    t = run_all_ways([b"auth plain\r\n", plain("", "bob", "pass word") + b"\r\n"], TLS_ON)
    assert t.events == [Login("bob", "pass word", "PLAIN")]
    assert bytes(t.output) == GREETING + b"+ \r\n-ERR [AUTH] invalid credentials\r\n"
    assert t.events and t.closed is None


def test_auth_plain_cancel_and_malformed() -> None:
    t = run_all_ways(
        [
            b"AUTH PLAIN\r\n*\r\nAUTH PLAIN ####\r\nAUTH PLAIN =\r\n",
            b"AUTH PLAIN " + plain("eve", "bob", "x") + b"\r\nAUTH CRAM-MD5\r\nAUTH\r\n",
        ],
        TLS_ON,
    )
    assert t.events == []
    assert bytes(t.output) == GREETING + (
        b"+ \r\n-ERR [AUTH] authentication cancelled\r\n"
        b"-ERR [AUTH] malformed AUTH PLAIN response\r\n"
        b"-ERR [AUTH] malformed AUTH PLAIN response\r\n"
        b"-ERR [AUTH] authorization identity refused\r\n"
        b"-ERR unsupported SASL mechanism\r\n-ERR syntax error\r\n"
    )


def test_failed_login_stays_in_authorization() -> None:
    conn = ServerConnection(TLS_ON)
    t = drive(conn, [b"USER a\r\nPASS wrong\r\nSTAT\r\nPASS secret\r\nQUIT\r\n"])
    assert t.events == [
        Login("a", "wrong", "USER"),
        ConnectionClosed(CloseReason.QUIT, Reply(True, "pop.test POP3 closing")),
    ]
    assert bytes(t.output) == GREETING + (
        b"+OK send PASS\r\n-ERR [AUTH] invalid credentials\r\n"
        b"-ERR command not valid in this state\r\n-ERR send USER first\r\n"
        b"+OK pop.test POP3 closing\r\n"
    )
    assert conn.state is State.CLOSED


def test_pipelined_replies_in_order_and_machine_answers() -> None:
    t = run_all_ways(
        [
            b"USER a\r\nPASS secret\r\nNOOP\r\nSTAT\r\nFOO\r\n",
            b"RETR 0\r\nRETR 9\r\nDELE +1\r\nQUIT\r\n",
        ],
        TLS_ON,
    )
    assert t.kinds() == ["Login", "Noop", "Stat", "Retr", "Quit", "ConnectionClosed"]
    assert bytes(t.output) == GREETING + (
        b"+OK send PASS\r\n+OK logged in\r\n+OK\r\n+OK 2 73\r\n-ERR unknown command\r\n"
        b"-ERR invalid message number\r\n-ERR no such message\r\n"
        b"-ERR invalid message number\r\n+OK\r\n"
    )


@pytest.mark.parametrize(
    "line",
    [b"RETR", b"RETR 1 2", b"RETR -1", b"RETR 1x", b"RETR 1234567890", b"TOP 1", b"TOP 1 -1",
     b"LIST 1 2", b"STAT 1", b"RETR \xd9\xa1"],
)  # fmt: skip
def test_bad_arguments_refused_by_the_machine(line: bytes) -> None:
    t = run_all_ways([b"USER a\r\nPASS secret\r\n" + line + b"\r\n"], TLS_ON)
    assert t.events == [Login("a", "secret", "USER")]
    assert bytes(t.output).split(b"\r\n")[-2] in (
        b"-ERR syntax error",
        b"-ERR invalid message number",
    )


def test_top_zero_lines_and_leading_zeroes() -> None:
    t = run_all_ways([b"USER a\r\nPASS secret\r\nTOP 01 0\r\n"], TLS_ON)
    assert t.events[-1] == Top(1, 0)


def test_quit_in_transaction_error_reply_still_closes() -> None:
    conn = ServerConnection(TLS_ON)
    conn.greeting()
    conn.receive_data(b"USER a\r\nPASS secret\r\nQUIT\r\nNOOP\r\n")
    assert conn.next_event() == Login("a", "secret", "USER")
    conn.send(Reply(True))
    assert conn.next_event() == Quit()
    assert conn.state is State.UPDATE
    reply = Reply(False, "some deleted messages not removed")
    assert conn.send(reply) == b"-ERR some deleted messages not removed\r\n"
    assert conn.next_event() == ConnectionClosed(CloseReason.QUIT, reply)
    assert conn.next_event() == ConnectionClosed(CloseReason.QUIT, reply)
    assert conn.data_to_send() == b""


def test_eof_in_transaction_and_mid_line() -> None:
    t = run_all_ways([b"USER a\r\nPASS secret\r\nDELE 1\r\nSTA", EOF], TLS_ON)
    assert t.events[-1] == ConnectionClosed(CloseReason.EOF)
    assert t.kinds() == ["Login", "Dele", "ConnectionClosed"]


def test_bad_command_budget_closes() -> None:
    t = run_all_ways([b"X\r\n" * 3 + b"NOOP\r\n"], settings(bad_command_budget=3))
    assert t.events == [
        ConnectionClosed(CloseReason.TOO_MANY_ERRORS, Reply(False, "too many errors, closing"))
    ]
    assert bytes(t.output) == GREETING + b"-ERR unknown command\r\n" * 2 + (
        b"-ERR too many errors, closing\r\n"
    )


def test_line_too_long_refused_and_skipped() -> None:
    t = run_all_ways([b"NOOP " + b"x" * 600 + b"\r\nCAPA x\r\nQUIT\r\n"])
    assert bytes(t.output) == GREETING + (
        b"-ERR line too long\r\n-ERR syntax error\r\n+OK pop.test POP3 closing\r\n"
    )
    # 255 octets including CRLF is still a line; 256 is not.
    ok = run_all_ways([b"USER " + b"u" * 248 + b"\r\n"], TLS_ON)
    assert ok.output.endswith(b"+OK send PASS\r\n")
    bad = run_all_ways([b"USER " + b"u" * 249 + b"\r\n"], TLS_ON)
    assert bad.output.endswith(b"-ERR line too long\r\n")


def test_driver_contract_errors() -> None:
    conn = ServerConnection(TLS_ON)
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.greeting()
    with pytest.raises(LocalProtocolError):
        conn.greeting()
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(True))
    conn.receive_data(b"USER a\r\nPASS secret\r\nRETR 1\r\nSTAT\r\n")
    conn.next_event()
    conn.send(Reply(True))
    assert conn.next_event() == Retr(1)
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(True, "single line"))  # +OK to RETR is multi-line
    with pytest.raises(LocalProtocolError):
        conn.send_stream_data(b"x")
    conn.send_stream_start(Reply(True))
    with pytest.raises(LocalProtocolError):
        conn.send(Reply(False))
    assert conn.next_event() is not Stat()
    assert conn.send_stream_end() == b".\r\n"
    assert conn.next_event() == Stat()
    with pytest.raises(LocalProtocolError):
        conn.send_lines(Reply(True), ["1 2"])  # STAT is single-line
    assert conn.send(Reply(True, "0 0")) == b"+OK 0 0\r\n"


def test_send_multiline_and_close() -> None:
    conn = ServerConnection(TLS_ON)
    conn.greeting()
    conn.receive_data(b"USER a\r\nPASS secret\r\nRETR 1\r\nNOOP\r\n")
    conn.next_event()
    conn.send(Reply(True))
    conn.next_event()
    assert conn.send_multiline(Reply(True), b".\r\n") == b"+OK\r\n..\r\n.\r\n"
    assert conn.close() == b"-ERR [SYS/TEMP] server shutting down\r\n"
    assert conn.next_event() == ConnectionClosed(
        CloseReason.LOCAL, Reply(False, "server shutting down", "SYS/TEMP")
    )
