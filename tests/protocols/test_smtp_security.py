"""Security regression tests, each named after the attack it covers."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from gateway.protocols.smtp import (
    AbortReason,
    BodyData,
    CloseReason,
    ConnectionClosed,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    RcptTo,
    Reply,
    ServerConnection,
    StartData,
    StartTLS,
    replies,
)

from .helpers import TLS, accept_all, drive, run_all_ways, settings

EHLO = b"EHLO client.test\r\n"
ENVELOPE = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\nDATA\r\n"
SMUGGLED = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@mx.test>\r\nDATA\r\nforged\r\n"

# Every end-of-data spelling but CRLF.CRLF that some server accepted: aiosmtpd's
# test_smtpsmuggling.py (LF.CRLF) and the SEC Consult 2023 paper (LF.LF, CR.CR, CRLF.LF,
# LF.CR, CR.LF, CRLF NUL.CRLF, ...).
FAKE_ENDS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n .\r\n",
]


@pytest.mark.parametrize("fake_end", FAKE_ENDS, ids=repr)
@pytest.mark.parametrize("mode", ["normalize", "reject"])
def test_smtp_smuggling_fake_end_of_data(fake_end: bytes, mode: str) -> None:
    t = run_all_ways(
        [EHLO, ENVELOPE, b"Subject: one\r\n\r\nbody" + fake_end + SMUGGLED + b"\r\n.\r\n"],
        settings(bare_newline=mode),
    )
    # Never a second transaction: the smuggled commands are content or the session closed.
    assert [e for e in t.events if isinstance(e, MailFrom)] == [MailFrom("a@example.org")]
    assert not any(isinstance(e, RcptTo) and e.address.startswith("victim") for e in t.events)
    if mode == "reject" and b"\n" in fake_end.replace(b"\r\n", b""):
        assert t.merged[-2:] == [
            MessageAborted(AbortReason.BARE_NEWLINE),
            ConnectionClosed(CloseReason.BARE_NEWLINE, replies.BARE_NEWLINE),
        ]
    else:
        assert t.kinds()[-1] == "MessageComplete"
        assert b"MAIL FROM:<evil@attacker.example>" in t.body


def test_smtp_smuggling_aiosmtpd_case() -> None:
    # aiosmtpd's test_smtpsmuggling.py: "Testing\n.\r\nNO SMUGGLING" must stay in the message.
    message = (
        b"From: Anne Person <anne@example.com>\r\nTo: Bart Person <bart@example.com>\r\n"
        b"Subject: A test\r\nMessage-ID: <ant>\r\n\r\nTesting\n.\r\nNO SMUGGLING\r\n.\r\n"
    )
    t = run_all_ways([b"HELO example.com\r\n", ENVELOPE, message])
    assert t.body.endswith(b"Testing\r\n.\r\nNO SMUGGLING\r\n")
    assert t.codes[-1] == 250


def test_smtp_smuggling_dot_lines_after_bare_lf_keep_their_meaning() -> None:
    # normalize: after a bare LF a "." line is content (dot kept), a ".." line is unstuffed.
    t = run_all_ways([EHLO, ENVELOPE, b"a\n.\nb\n..c\r\n.\r\n"])
    assert t.body == b"a\r\n.\r\nb\r\n.c\r\n"


def test_starttls_command_injection() -> None:
    # CVE-2011-0411: a man in the middle appends a command to the cleartext STARTTLS packet.
    conn = ServerConnection(settings())
    t = drive(
        conn,
        [
            EHLO,
            b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\n",
            b"RCPT TO:<victim@mx.test>\r\n",  # still in the clear, before the handshake
            TLS,
            b"EHLO client.test\r\nMAIL FROM:<good@example.org>\r\n",
        ],
    )
    assert t.merged == [
        Hello("EHLO", "client.test"),
        StartTLS(),
        Hello("EHLO", "client.test"),
        MailFrom("good@example.org"),
    ]
    assert t.codes == [220, 250, 220, 250, 250]  # nothing answers the injected commands
    assert conn.statistics().discarded == len(
        b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@mx.test>\r\n"
    )


def test_starttls_command_injection_all_splittings() -> None:
    t = run_all_ways(
        [EHLO + b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\n", TLS, b"NOOP\r\n"]
    )
    assert not any(isinstance(e, MailFrom) for e in t.events)
    assert t.codes == [220, 250, 220, 250]


def _slices(total: int, piece: bytes) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


def test_huge_line() -> None:
    conn = ServerConnection(settings())
    script = [EHLO, *_slices(20 * 1024 * 1024, b"A" * 65536), b"\r\nNOOP\r\n"]
    t = drive(conn, script)
    assert t.replies[2:] == [replies.LINE_TOO_LONG, replies.OK]
    assert t.max_buffered < conn.config.max_line_length
    assert conn.statistics().errors == 1


def test_size_limit_keeps_buffers_small_on_data() -> None:
    # 50 MiB past a 1 MiB limit: nothing past the limit is handed over or held.
    conn = ServerConnection(settings(max_message_size=1024 * 1024))
    line = b"x" * 1022 + b"\r\n"
    script = [EHLO, ENVELOPE, *_slices(51 * 1024 * 1024, line * 64), b".\r\nNOOP\r\n"]
    t = drive(conn, script)
    assert t.max_buffered <= 2
    assert len(t.body) == 1024 * 1024
    assert t.merged[-1] == MessageAborted(AbortReason.SIZE_LIMIT)
    assert t.replies[-2:] == [replies.MESSAGE_TOO_BIG, replies.OK]
    assert conn.statistics().discarded >= 50 * 1024 * 1024


def test_endless_bdat() -> None:
    # Chunk after chunk past the limit: each is consumed without being kept, the first one
    # over gets 552, the rest 503, and none of them is read as commands.
    conn = ServerConnection(settings(max_message_size=1024 * 1024, bad_command_budget=3))
    chunk = b"BDAT 1048576\r\n" + (b"MAIL FROM:<x@y.z>\r\n" * 60000)[:1048576]
    script = [EHLO, b"MAIL FROM:<a@example.org>\r\nRCPT TO:<j@mx.test>\r\n"]
    script += [chunk[i : i + 65536] for _ in range(50) for i in range(0, len(chunk), 65536)]
    t = drive(conn, script)
    assert t.max_buffered == 0
    assert t.merged[2:] == [
        RcptTo("j@mx.test"),
        StartData(chunked=True),
        BodyData(chunk[14:]),
        MessageAborted(AbortReason.SIZE_LIMIT),
    ]
    assert (
        t.replies[4:]
        == [replies.chunk_received(1048576), replies.MESSAGE_TOO_BIG] + [replies.NEED_MAIL] * 48
    )
    assert conn.statistics().discarded == 49 * 1048576


# Unicode case mappings that land on ASCII letters: dotless i (U+0131) -> I, long s (U+017F)
# -> S, the ligature U+FB06 -> ST. Each line must read as what an ASCII-only peer (Postfix,
# the target behind the proxy) reads: junk, never the command or keyword it resembles.
UNICODE_CASE_SMUGGLING = [
    ("ma\u0131l FROM:<a@example.org>".encode(), replies.UNRECOGNIZED),
    ("\u017ftarttls".encode(), replies.UNRECOGNIZED),
    ("\ufb06arttls".encode(), replies.UNRECOGNIZED),
    ("qu\u0131t".encode(), replies.UNRECOGNIZED),
    ("MAIL FROM:<a@example.org> BODY=8b\u0131tm\u0131me".encode(), replies.BAD_BODY),
    ("AUTH pla\u0131n".encode(), replies.AUTH_MECHANISM),
    ("AUTH log\u0131n".encode(), replies.AUTH_MECHANISM),
]


@pytest.mark.parametrize(("line", "reply"), UNICODE_CASE_SMUGGLING, ids=repr)
def test_unicode_case_mapping_command_smuggling(line: bytes, reply: object) -> None:
    config = settings(tls_active=True, starttls_offered=False, auth_offered=True)
    t = run_all_ways([EHLO, line + b"\r\n", b"NOOP\r\n"], config)
    assert t.replies[-2:] == [reply, replies.OK]
    assert not any(isinstance(e, MailFrom | StartTLS) for e in t.events)


def test_unicode_case_mapping_bdat_last_smuggling() -> None:
    # LAST with a long s (U+017F) is not LAST: the BDAT is refused, and nothing is content.
    conn = ServerConnection(settings())
    t = drive(
        conn, [EHLO, ENVELOPE.replace(b"DATA\r\n", "BDAT 3 la\u017ft\r\n".encode()), b"NOOP\r\n"]
    )
    assert t.replies[-2:] == [replies.SYNTAX_BDAT, replies.OK]
    assert not any(isinstance(e, StartData) for e in t.events)


def _refuse_recipients(event: Event) -> Reply:
    return replies.UNKNOWN_RECIPIENT if isinstance(event, RcptTo) else accept_all(event)


def test_refused_recipient_flood_spends_the_bad_command_budget() -> None:
    """One connection sent 20,000 refused RCPTs: none counted against the budget, and the
    session stayed open. A recipient refused with 5xx now spends a unit."""
    flood = b"MAIL FROM:<a@example.org>\r\n" + b"RCPT TO:<nobody@mx.test>\r\n" * 100
    t = run_all_ways(
        [EHLO, flood], settings(bad_command_budget=20), _refuse_recipients, bytewise=False
    )
    assert t.codes == [220, 250, 250] + [550] * 20 + [421]
    assert t.replies[-1] == replies.TOO_MANY_ERRORS
    assert t.merged[-1] == ConnectionClosed(CloseReason.TOO_MANY_ERRORS, replies.TOO_MANY_ERRORS)
    assert sum(isinstance(e, RcptTo) for e in t.events) == 21


def test_refused_recipients_of_an_authenticated_session_are_its_targets_business() -> None:
    # A proxy session relays its target's refusals: the budget is for guessers, not users.
    config = settings(tls_active=True, starttls_offered=False, auth_offered=True)
    auth = b"AUTH PLAIN " + base64.b64encode(b"\0user\0password") + b"\r\n"
    flood = b"MAIL FROM:<a@example.org>\r\n" + b"RCPT TO:<nobody@mx.test>\r\n" * 30
    t = run_all_ways([EHLO, auth, flood, b"NOOP\r\n"], config, _refuse_recipients, bytewise=False)
    assert t.codes == [220, 250, 235, 250] + [550] * 30 + [250]
