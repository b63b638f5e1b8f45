"""Whole sessions through the server machine, each run whole, byte by byte and split."""

from __future__ import annotations

import pytest

from gateway.protocols.smtp import (
    NEED_DATA,
    PAUSED,
    AbortReason,
    BodyData,
    BodyType,
    CloseReason,
    ConnectionClosed,
    Event,
    Hello,
    LocalProtocolError,
    MailFrom,
    MessageAborted,
    MessageComplete,
    Quit,
    RcptTo,
    Reply,
    ServerConnection,
    StartData,
    StartTLS,
    State,
    replies,
)

from .helpers import EOF, TLS, accept_all, drive, run_all_ways, settings

EHLO = b"EHLO client.test\r\n"


def test_greeting_and_ehlo_lists_exactly_the_extensions() -> None:
    t = run_all_ways([EHLO, b"QUIT\r\n"])
    greeting, ehlo, bye = t.replies
    assert greeting == Reply(220, None, ("mx.test ESMTP ready",))
    assert ehlo.lines == (
        "mx.test",
        "PIPELINING",
        "SIZE 104857600",
        "8BITMIME",
        "CHUNKING",
        "BINARYMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    )
    assert bye == replies.BYE
    assert t.merged == [
        Hello("EHLO", "client.test"),
        Quit(),
        ConnectionClosed(CloseReason.QUIT),
    ]


def test_ehlo_hides_starttls_when_not_offered_or_tls_active() -> None:
    for config in (settings(starttls_offered=False), settings(tls_active=True)):
        t = run_all_ways([EHLO], config)
        assert "STARTTLS" not in t.replies[1].lines


def test_full_session() -> None:
    t = run_all_ways(
        [
            EHLO,
            b"MAIL FROM:<alice@example.org>\r\n",
            b"RCPT TO:<journal@mx.test>\r\n",
            b"DATA\r\n",
            b"Subject: hi\r\n\r\nbody\r\n..leading dot\r\n.\r\n",
            b"QUIT\r\n",
        ]
    )
    assert t.merged == [
        Hello("EHLO", "client.test"),
        MailFrom("alice@example.org"),
        RcptTo("journal@mx.test"),
        StartData(),
        BodyData(b"Subject: hi\r\n\r\nbody\r\n.leading dot\r\n"),
        MessageComplete(),
        Quit(),
        ConnectionClosed(CloseReason.QUIT),
    ]
    assert t.codes == [220, 250, 250, 250, 354, 250, 221]
    assert t.replies[-2].lines == ("Ok: queued as q1",)


def test_pipelined_batch_replies_in_order() -> None:
    batch = (
        b"MAIL FROM:<a@example.org> SIZE=40\r\n"
        b"RCPT TO:<bad@mx.test>\r\n"
        b"RCPT TO:<good@mx.test>\r\n"
        b"NOOP\r\n"
        b"DATA\r\n"
    )

    def policy(event: Event) -> Reply:
        if isinstance(event, RcptTo) and event.address.startswith("bad"):
            return replies.UNKNOWN_RECIPIENT
        return accept_all(event)

    t = run_all_ways([EHLO, batch, b"x\r\n.\r\n"], policy=policy)
    assert t.codes == [220, 250, 250, 550, 250, 250, 354, 250]
    assert t.kinds() == [
        "Hello",
        "MailFrom",
        "RcptTo",
        "RcptTo",
        "StartData",
        "BodyData",
        "MessageComplete",
    ]


def test_pipelining_after_refused_mail_is_not_budgeted() -> None:
    def refuse_mail(event: Event) -> Reply:
        return replies.ACCESS_DENIED if isinstance(event, MailFrom) else accept_all(event)

    rcpts = b"".join(b"RCPT TO:<r%d@mx.test>\r\n" % i for i in range(30))
    t = run_all_ways(
        [EHLO, b"MAIL FROM:<a@b.example>\r\n" + rcpts + b"DATA\r\nNOOP\r\n"],
        settings(bad_command_budget=5),
        refuse_mail,
        bytewise=False,
    )
    assert t.codes == [220, 250, 550] + [503] * 30 + [503, 250]
    assert t.replies[3] == replies.NEED_MAIL


def test_rset_mid_transaction_and_several_messages() -> None:
    t = run_all_ways(
        [
            EHLO,
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\nRSET\r\n",
            b"RCPT TO:<j@mx.test>\r\n",  # the transaction is gone: 503
            b"MAIL FROM:<b@example.org>\r\nRCPT TO:<j@mx.test>\r\nDATA\r\n",
            b"one\r\n.\r\n",
            b"MAIL FROM:<>\r\nRCPT TO:<k@mx.test>\r\nDATA\r\n",
            b"two\r\n.\r\n",
        ]
    )
    assert t.kinds() == [
        "Hello",
        "MailFrom",
        "RcptTo",
        "MessageAborted",
        "MailFrom",
        "RcptTo",
        "StartData",
        "BodyData",
        "MessageComplete",
        "MailFrom",
        "RcptTo",
        "StartData",
        "BodyData",
        "MessageComplete",
    ]
    assert MessageAborted(AbortReason.RESET) in t.events
    assert MailFrom("") in t.events  # the null sender
    assert t.body == b"one\r\ntwo\r\n"
    assert t.codes[1:6] == [250, 250, 250, 250, 503]


def test_helo_only_session() -> None:
    t = run_all_ways(
        [
            b"HELO old.client\r\n",
            b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n",  # no extension after HELO: 555
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\n",
            b"BDAT 3 LAST\r\nabc",  # CHUNKING is EHLO-only: the octets are skipped
            b"STARTTLS\r\n",
            b"DATA\r\nhi\r\n.\r\n",
        ]
    )
    assert t.replies[1] == Reply(250, None, ("mx.test",))
    assert t.replies[2] == replies.UNSUPPORTED_PARAMETER
    assert t.replies[5] == replies.EHLO_FIRST
    assert t.replies[6] == replies.IN_TRANSACTION
    assert t.codes[7:] == [354, 250]
    assert t.events[0] == Hello("HELO", "old.client")
    assert t.body == b"hi\r\n"


def test_bdat_chunks() -> None:
    t = run_all_ways(
        [
            EHLO,
            b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\nRCPT TO:<j@mx.test>\r\n",
            b"BDAT 5\r\n\x00\r\n.\n",
            b"BDAT 4\r\nQUIT",  # commands inside a chunk are content
            b"BDAT 3 LAST\r\n\xff\xfe\r",
            b"NOOP\r\n",
        ]
    )
    assert t.kinds() == [
        "Hello",
        "MailFrom",
        "RcptTo",
        "StartData",
        "BodyData",
        "MessageComplete",
    ]
    assert t.body == b"\x00\r\n.\nQUIT\xff\xfe\r"
    assert t.replies[4] == replies.chunk_received(5)
    assert t.replies[5] == replies.chunk_received(4)
    assert t.codes[6:] == [250, 250]


def test_bdat_0_last_and_empty_data() -> None:
    t = run_all_ways(
        [
            EHLO,
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\nBDAT 0 LAST\r\n",
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\nDATA\r\n.\r\n",
        ]
    )
    assert t.kinds().count("MessageComplete") == 2
    assert t.body == b""


def test_binarymime_requires_bdat_and_data_after_bdat_is_refused() -> None:
    t = run_all_ways(
        [
            EHLO,
            b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\nRCPT TO:<j@mx.test>\r\nDATA\r\n",
            b"BDAT 2\r\nab",
            b"DATA\r\n",
            b"BDAT 1 LAST\r\nc",
        ]
    )
    assert t.events[1] == MailFrom("a@example.org", body=BodyType.BINARY_MIME)
    assert t.replies[4] == replies.BINARYMIME_NEEDS_BDAT
    assert t.replies[6] == replies.DATA_AFTER_BDAT
    assert t.body == b"abc"


def test_data_needs_a_recipient() -> None:
    t = run_all_ways([EHLO, b"DATA\r\nMAIL FROM:<a@example.org>\r\nDATA\r\nBDAT 1\r\nx"])
    assert t.replies[2:] == [
        replies.NEED_MAIL,
        replies.SENDER_OK,
        replies.NO_VALID_RECIPIENTS,
        replies.NO_VALID_RECIPIENTS,
    ]


def test_size_parameter_over_the_limit_is_552() -> None:
    t = run_all_ways(
        [EHLO, b"MAIL FROM:<a@example.org> SIZE=1001\r\n"], settings(max_message_size=1000)
    )
    assert t.replies[2] == replies.MESSAGE_TOO_BIG
    assert t.kinds() == ["Hello"]


def test_size_exceeded_on_data() -> None:
    config = settings(max_message_size=100)
    t = run_all_ways(
        [
            EHLO,
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\nDATA\r\n",
            b"x" * 98 + b"\r\n" + b"y" * 500 + b"\r\n.\r\n",
            b"NOOP\r\n",
        ],
        config,
    )
    assert t.merged[-2:] == [BodyData(b"x" * 98 + b"\r\n"), MessageAborted(AbortReason.SIZE_LIMIT)]
    assert t.replies[-2:] == [replies.MESSAGE_TOO_BIG, replies.OK]


def test_size_exceeded_on_bdat() -> None:
    config = settings(max_message_size=100)
    t = run_all_ways(
        [
            EHLO,
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\n",
            b"BDAT 60\r\n" + b"a" * 60,
            b"BDAT 60\r\n" + b"b" * 60,  # 120 > 100: skipped, then 552
            b"BDAT 10 LAST\r\n" + b"c" * 10,  # the transaction is over: 503, skipped
            b"NOOP\r\n",
        ],
        config,
    )
    assert t.merged[-2:] == [BodyData(b"a" * 60), MessageAborted(AbortReason.SIZE_LIMIT)]
    assert t.replies[-3:] == [replies.MESSAGE_TOO_BIG, replies.NEED_MAIL, replies.OK]


def test_smtputf8() -> None:
    t = run_all_ways(
        [
            EHLO,
            "MAIL FROM:<jörg@bücher.example>\r\n".encode(),  # no SMTPUTF8: 553
            "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode(),
            "RCPT TO:<日本@例え.jp>\r\n".encode(),
        ]
    )
    assert t.replies[2] == replies.NON_ASCII_ADDRESS
    assert t.events[1:] == [
        MailFrom("jörg@bücher.example", smtputf8=True),
        RcptTo("日本@例え.jp"),
    ]


def test_non_ascii_recipient_needs_smtputf8_on_mail() -> None:
    t = run_all_ways([EHLO, b"MAIL FROM:<a@example.org>\r\n", "RCPT TO:<ü@x.de>\r\n".encode()])
    assert t.replies[-1] == replies.NON_ASCII_ADDRESS


def test_recipient_limit() -> None:
    rcpts = b"".join(b"RCPT TO:<r%d@mx.test>\r\n" % i for i in range(1001))
    t = run_all_ways(
        [EHLO, b"MAIL FROM:<a@example.org>\r\n", rcpts, b"DATA\r\n.\r\n"], bytewise=False
    )
    assert t.kinds().count("RcptTo") == 1000
    assert t.replies[-3] == replies.TOO_MANY_RECIPIENTS
    assert t.codes[-2:] == [354, 250]


def test_require_tls() -> None:
    t = run_all_ways(
        [
            b"HELO x\r\nEHLO client\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\nAUTH PLAIN\r\n",
            b"STARTTLS\r\n",
            TLS,
            EHLO,
            b"MAIL FROM:<a@example.org>\r\n",
        ],
        settings(require_tls=True),
    )
    assert t.replies[1] == replies.TLS_REQUIRED
    assert t.replies[3:7] == [
        replies.TLS_REQUIRED,
        replies.OK,
        replies.TLS_REQUIRED,
        replies.READY_FOR_TLS,
    ]
    assert "STARTTLS" not in t.replies[7].lines
    assert t.events[-1] == MailFrom("a@example.org")


def test_starttls_resets_the_session() -> None:
    conn = ServerConnection(settings())
    t = drive(
        conn,
        [
            EHLO,
            b"STARTTLS\r\n",
            TLS,
            b"MAIL FROM:<a@example.org>\r\n",  # EHLO again first
            b"EHLO again\r\nSTARTTLS\r\n",
        ],
    )
    assert t.kinds() == ["Hello", "StartTLS", "Hello"]
    assert t.replies[3:] == [replies.HELLO_FIRST, t.replies[4], replies.TLS_ACTIVE]
    assert conn.tls is not None and conn.tls.version == "TLSv1.3"
    assert conn.hello == Hello("EHLO", "again")


def test_starttls_refusals() -> None:
    t = run_all_ways([b"STARTTLS\r\nEHLO c\r\nSTARTTLS now\r\n"], settings(starttls_offered=False))
    assert t.replies[1] == replies.EHLO_FIRST
    assert t.replies[3] == replies.NO_ARGUMENTS
    t = run_all_ways([EHLO, b"STARTTLS\r\n"], settings(starttls_offered=False))
    assert t.replies[2] == replies.NOT_IMPLEMENTED


def test_bad_command_budget() -> None:
    t = run_all_ways([EHLO, b"FOO\r\n" * 3, b"NOOP\r\n"], settings(bad_command_budget=2))
    assert t.replies[2:] == [replies.UNRECOGNIZED, replies.UNRECOGNIZED, replies.TOO_MANY_ERRORS]
    assert t.events[-1] == ConnectionClosed(CloseReason.TOO_MANY_ERRORS, replies.TOO_MANY_ERRORS)


def test_budget_exhausted_mid_transaction_aborts_it() -> None:
    t = run_all_ways(
        [EHLO, b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:bad\r\n"], settings(bad_command_budget=0)
    )
    assert t.merged[-2:] == [
        MessageAborted(AbortReason.CLOSED),
        ConnectionClosed(CloseReason.TOO_MANY_ERRORS, replies.TOO_MANY_ERRORS),
    ]


def test_line_too_long() -> None:
    config = settings(max_line_length=512)
    t = run_all_ways([EHLO, b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n"], config)
    assert t.replies[2:] == [replies.LINE_TOO_LONG, replies.OK]
    exactly = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(exactly) == 512
    t = run_all_ways([exactly, b"NOOP " + b"x" * (512 - 6) + b"\r\n"], config)
    assert t.replies[1:] == [replies.OK, replies.LINE_TOO_LONG]


def test_eof_mid_data() -> None:
    t = run_all_ways(
        [EHLO, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\nDATA\r\nabc\r\n.", EOF]
    )
    assert t.merged[-3:] == [
        BodyData(b"abc\r\n"),
        MessageAborted(AbortReason.CLOSED),
        ConnectionClosed(CloseReason.EOF),
    ]


def test_eof_mid_bdat_chunk_and_between_chunks() -> None:
    start = [EHLO, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\n"]
    for tail in (b"BDAT 10\r\nabc", b"BDAT 3\r\nabc"):
        t = run_all_ways([*start, tail, EOF])
        assert t.merged[-3:] == [
            BodyData(b"abc"),
            MessageAborted(AbortReason.CLOSED),
            ConnectionClosed(CloseReason.EOF),
        ]


def test_quit_mid_transaction_and_eof_when_idle() -> None:
    t = run_all_ways([EHLO, b"MAIL FROM:<a@example.org>\r\nQUIT\r\nNOOP\r\n"])
    assert t.merged[-3:] == [
        MessageAborted(AbortReason.CLOSED),
        Quit(),
        ConnectionClosed(CloseReason.QUIT),
    ]
    assert t.codes[-1] == 221
    t = run_all_ways([EHLO, b"NOOP", EOF])
    assert t.merged[-1] == ConnectionClosed(CloseReason.EOF)


def test_simple_commands() -> None:
    t = run_all_ways(
        [
            b"NOOP\r\nHELP\r\nVRFY\r\nVRFY postmaster\r\nRSET\r\nEXPN list\r\nAUTH LOGIN\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            EHLO,
            b"mail from:<a@example.org>\r\nAUTH PLAIN\r\nETRN x\r\nDATA x\r\nRSET x\r\n",
        ]
    )
    assert t.replies[1:] == [
        replies.OK,
        replies.HELP,
        replies.SYNTAX_VRFY,
        replies.VRFY_CANNOT,
        replies.OK,
        replies.NOT_IMPLEMENTED,
        replies.EHLO_FIRST,  # AUTH is known; before EHLO it is out of sequence
        replies.HELLO_FIRST,
        t.replies[9],  # EHLO
        replies.SENDER_OK,
        replies.IN_TRANSACTION,
        replies.NOT_IMPLEMENTED,
        replies.NO_VALID_RECIPIENTS,  # the sequence is judged before the arguments
        replies.NO_ARGUMENTS,
    ]


def test_bad_characters_and_http_request() -> None:
    t = run_all_ways([b"NO\x00OP\r\n", b"NOOP \xff\r\n", b"NOOP\rX\r\n", b"NOOP\r\n"])
    assert t.replies[1:] == [replies.BAD_CHARACTERS] * 3 + [replies.OK]
    t = run_all_ways([b"POST / HTTP/1.1\r\nHost: x\r\n\r\nMAIL FROM:<a@b.c>\r\n"])
    assert t.replies[1:] == [replies.CROSS_PROTOCOL]
    assert t.merged == [ConnectionClosed(CloseReason.FORBIDDEN_COMMAND, replies.CROSS_PROTOCOL)]


def test_bare_lf_commands() -> None:
    t = run_all_ways([b"EHLO x\nNOOP\n"])
    assert t.codes == [220, 250, 250]
    t = run_all_ways([b"EHLO x\r\nNOOP\n"], settings(bare_newline="reject"))
    assert t.replies[-1] == replies.BARE_NEWLINE
    assert t.merged[-1] == ConnectionClosed(CloseReason.BARE_NEWLINE, replies.BARE_NEWLINE)


# -- the driver's contract ----------------------------------------------------------------


def _at_mail_decision() -> ServerConnection:
    conn = ServerConnection(settings())
    conn.greeting()
    conn.receive_data(EHLO + b"MAIL FROM:<a@example.org>\r\n")
    assert isinstance(conn.next_event(), Hello)
    return conn


def test_illegal_driver_calls_leave_the_state_unchanged() -> None:
    conn = ServerConnection(settings())
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.greeting()
    with pytest.raises(LocalProtocolError):
        conn.greeting()
    with pytest.raises(LocalProtocolError):
        conn.send(replies.OK)
    with pytest.raises(LocalProtocolError):
        conn.tls_started("TLSv1.3", "x")
    conn = _at_mail_decision()
    with pytest.raises(LocalProtocolError):
        conn.send(replies.SENDER_OK)  # the decision has not been returned yet
    assert isinstance(conn.next_event(), MailFrom)
    assert conn.next_event() is PAUSED
    before = conn.statistics()
    for bad in (replies.START_MAIL_INPUT, replies.BYE, replies.VRFY_CANNOT, replies.HELP):
        with pytest.raises(LocalProtocolError):
            conn.send(bad)
    assert conn.statistics() == before
    assert conn.state is State.READY
    assert conn.send(replies.SENDER_OK).endswith(b"\r\n250 2.1.0 Ok\r\n")
    assert conn.statistics().state is State.MAIL  # (a fresh read: mypy narrowed .state)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


def test_send_returns_queued_replies_first() -> None:
    conn = ServerConnection(settings())
    conn.greeting()
    conn.receive_data(EHLO + b"MAIL FROM:<a@example.org>\r\n")
    conn.next_event()
    conn.next_event()
    # The driver forgot data_to_send(): send() still keeps the order.
    out = conn.send(replies.SENDER_OK)
    assert out.startswith(b"250-mx.test\r\n")
    assert out.endswith(b"250 2.1.0 Ok\r\n")


def test_a_421_decision_closes() -> None:
    conn = _at_mail_decision()
    conn.next_event()
    conn.send(replies.SENDER_OK)
    conn.receive_data(b"RCPT TO:<j@mx.test>\r\n")
    assert isinstance(conn.next_event(), RcptTo)
    assert conn.send(replies.SHUTTING_DOWN).startswith(b"421 4.3.2")
    assert conn.next_event() == MessageAborted(AbortReason.CLOSED)
    closed = ConnectionClosed(CloseReason.LOCAL, replies.SHUTTING_DOWN)
    assert conn.next_event() == closed
    assert conn.next_event() == closed  # and stays closed
    conn.receive_data(b"NOOP\r\n")  # ignored
    assert conn.next_event() == closed


def test_close_from_the_gateway() -> None:
    conn = ServerConnection(settings())
    assert conn.close(replies.TIMEOUT) == b"421 4.4.2 Timeout, closing connection\r\n"
    with pytest.raises(LocalProtocolError):
        conn.close(replies.OK)
    conn = _at_mail_decision()
    out = conn.close()
    assert out.startswith(b"250-mx.test\r\n")
    assert out.endswith(b"\r\n421 4.3.2 Service shutting down, closing connection\r\n")
    assert conn.next_event() == ConnectionClosed(CloseReason.LOCAL, replies.SHUTTING_DOWN)


def test_implicit_tls_records_the_cipher() -> None:
    conn = ServerConnection(settings(tls_active=True))
    conn.tls_started("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    conn.greeting()
    conn.receive_data(b"STARTTLS\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"503 5.5.1 Send EHLO first\r\n"
    assert conn.tls is not None and conn.tls.cipher == "TLS_AES_256_GCM_SHA384"


def test_eof_during_tls_handshake() -> None:
    conn = ServerConnection(settings())
    conn.greeting()
    conn.receive_data(EHLO + b"STARTTLS\r\n")
    assert isinstance(conn.next_event(), Hello)
    assert conn.next_event() == StartTLS()
    assert conn.next_event() is PAUSED
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(CloseReason.EOF)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="host"):
        settings(hostname="bad host")
    with pytest.raises(ValueError, match="max_line_length"):
        settings(max_line_length=100)
    with pytest.raises(ValueError, match="require_tls"):
        settings(require_tls=True, starttls_offered=False)
    with pytest.raises(ValueError, match="bare_newline"):
        settings(bare_newline="maybe")
