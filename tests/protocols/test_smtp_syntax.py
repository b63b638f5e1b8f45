"""Paths, addresses and parameters of MAIL, RCPT and BDAT (RFC 5321 §4.1.2, RFC 6531)."""

from __future__ import annotations

import pytest

from gateway.protocols.smtp import BodyType, MailFrom, RcptTo, RemoteProtocolError, Reply, replies
from gateway.protocols.smtp._syntax import parse_bdat, parse_mail, parse_rcpt, split_command

MAIL_OK = [
    ("FROM:<a@example.org>", MailFrom("a@example.org")),
    ("from:<a@example.org>", MailFrom("a@example.org")),
    ("FROM: <a@example.org>", MailFrom("a@example.org")),  # a space after the colon
    ("FROM:<>", MailFrom("")),
    ("FROM:<@relay.example,@b.example:a@example.org>", MailFrom("a@example.org")),
    ('FROM:<"john doe"@example.org>', MailFrom('"john doe"@example.org')),
    ('FROM:<"a>b\\"c"@example.org>', MailFrom('"a>b\\"c"@example.org')),
    ("FROM:<a@[192.0.2.1]>", MailFrom("a@[192.0.2.1]")),
    ("FROM:<a@[IPv6:2001:db8::1]>", MailFrom("a@[IPv6:2001:db8::1]")),
    ("FROM:<a@[x-tag:a>b]>", MailFrom("a@[x-tag:a>b]")),
    ("FROM:<a.b+c@sub.example.org> SIZE=100", MailFrom("a.b+c@sub.example.org", size=100)),
    ("FROM:<a@b.example> body=8bitmime", MailFrom("a@b.example", body=BodyType.EIGHT_BIT_MIME)),
    (
        "FROM:<a@b.example> BODY=7BIT  SIZE=0",
        MailFrom("a@b.example", size=0, body=BodyType.SEVEN_BIT),
    ),
    ("FROM:<ü@bücher.example> SMTPUTF8", MailFrom("ü@bücher.example", smtputf8=True)),
    ("FROM:<" + "l" * 200 + "@example.org>", MailFrom("l" * 200 + "@example.org")),
]

MAIL_BAD = [
    ("<a@example.org>", replies.SYNTAX_MAIL),
    ("FROM:a@example.org", replies.SYNTAX_MAIL),
    ("FROM:<a@example.org", replies.SYNTAX_MAIL),
    ("FROM:<a@example.org>SIZE=1", replies.SYNTAX_MAIL),
    ("FROM:<a@example.org> SIZE", replies.BAD_SIZE),
    ("FROM:<a@example.org> SIZE=1e5", replies.BAD_SIZE),
    ("FROM:<a@example.org> SIZE=" + "9" * 21, replies.BAD_SIZE),
    ("FROM:<a@example.org> BODY=9BIT", replies.BAD_BODY),
    ("FROM:<a@example.org> SMTPUTF8=yes", replies.BAD_PARAMETER),
    ("FROM:<a@example.org> =x", replies.BAD_PARAMETER),
    ("FROM:<a@example.org> SIZE=1 SIZE=2", replies.DUPLICATE_PARAMETER),
    ("FROM:<a@example.org> RET=HDRS", replies.UNSUPPORTED_PARAMETER),
    ("FROM:<a>", replies.BAD_SENDER),
    ("FROM:<a@>", replies.BAD_SENDER),
    ("FROM:<@example.org>", replies.BAD_SENDER),
    ("FROM:<a..b@example.org>", replies.BAD_SENDER),
    ("FROM:<.a@example.org>", replies.BAD_SENDER),
    ("FROM:<a b@example.org>", replies.BAD_SENDER),
    ("FROM:<a@-example.org>", replies.BAD_SENDER),
    ("FROM:<a@example..org>", replies.BAD_SENDER),
    ("FROM:<a@exa_mple.org>", replies.BAD_SENDER),
    ("FROM:<a@[300.1.1.1]>", replies.BAD_SENDER),
    ("FROM:<a@[IPv6:zz]>", replies.BAD_SENDER),
    ("FROM:<@relay.example:>", replies.BAD_SENDER),
    ("FROM:<@relay.example a@example.org>", replies.BAD_SENDER),
    ("FROM:<a@" + "x" * 64 + ".example>", replies.BAD_SENDER),
    ("FROM:<" + "l" * 250 + "@example.org>", replies.SENDER_PATH_TOO_LONG),
    ("FROM:<ü@example.org>", replies.NON_ASCII_ADDRESS),
]


@pytest.mark.parametrize(("argument", "event"), MAIL_OK)
def test_mail(argument: str, event: MailFrom) -> None:
    assert parse_mail(argument, esmtp=True) == event


@pytest.mark.parametrize(("argument", "reply"), MAIL_BAD)
def test_mail_refused(argument: str, reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_mail(argument, esmtp=True)
    assert info.value.reply == reply


def test_parameters_after_helo_are_unsupported() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_mail("FROM:<a@b.example> SIZE=10", esmtp=False)
    assert info.value.reply == replies.UNSUPPORTED_PARAMETER
    assert parse_mail("FROM:<a@b.example>", esmtp=False) == MailFrom("a@b.example")


@pytest.mark.parametrize(
    ("argument", "event"),
    [
        ("TO:<j@mx.test>", RcptTo("j@mx.test")),
        ("to: <j@mx.test>", RcptTo("j@mx.test")),
        ("TO:<Postmaster>", RcptTo("Postmaster")),
        ("TO:<@a.example:j@mx.test>", RcptTo("j@mx.test")),
    ],
)
def test_rcpt(argument: str, event: RcptTo) -> None:
    assert parse_rcpt(argument, esmtp=True, smtputf8=False) == event


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        ("TO:<>", replies.BAD_RECIPIENT),
        ("FROM:<j@mx.test>", replies.SYNTAX_RCPT),
        ("TO:<j@mx.test> NOTIFY=NEVER", replies.UNSUPPORTED_PARAMETER),
        ("TO:<jörg@mx.test>", replies.NON_ASCII_ADDRESS),
        ("TO:<" + "j" * 260 + "@mx.test>", replies.RECIPIENT_PATH_TOO_LONG),
    ],
)
def test_rcpt_refused(argument: str, reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_rcpt(argument, esmtp=True, smtputf8=False)
    assert info.value.reply == reply


def test_rcpt_utf8_with_smtputf8() -> None:
    assert parse_rcpt("TO:<jörg@mx.test>", esmtp=True, smtputf8=True) == RcptTo("jörg@mx.test")


@pytest.mark.parametrize(
    ("argument", "expected"),
    [("0", (0, False)), ("10 LAST", (10, True)), ("7 last", (7, True))],
)
def test_bdat(argument: str, expected: tuple[int, bool]) -> None:
    assert parse_bdat(argument) == expected


@pytest.mark.parametrize("argument", ["", "x", "-1", "1 FIRST", "1 LAST x", "1  LAST", "9" * 21])
def test_bdat_refused(argument: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_bdat(argument)
    assert info.value.reply == replies.SYNTAX_BDAT


def test_split_command() -> None:
    assert split_command("mail FROM:<a@b>  ") == ("MAIL", "FROM:<a@b>")
    assert split_command("QUIT") == ("QUIT", "")
