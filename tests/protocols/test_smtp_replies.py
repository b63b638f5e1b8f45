"""Sanity of the reply catalogue (aiosmtpd's ``testing/statuscodes.py`` check, extended)."""

from __future__ import annotations

import re

import pytest

from gateway.protocols.smtp import Reply, format_reply, replies
from gateway.protocols.smtp._replies import __all__ as catalogue_names
from gateway.protocols.smtp._state import BUDGETED_CODES

from .helpers import parse_replies

CONSTANTS = {
    name: value for name in catalogue_names if isinstance(value := getattr(replies, name), Reply)
}
BUILT = {
    "greeting": replies.greeting("mx.test"),
    "ehlo": replies.ehlo("mx.test", ("PIPELINING", "SIZE 10")),
    "helo": replies.helo("mx.test"),
    "chunk_received": replies.chunk_received(123),
    "message_accepted": replies.message_accepted("0123abcd"),
    "auth_challenge": replies.auth_challenge("VXNlcm5hbWU6"),
}
ALL = {**CONSTANTS, **BUILT}
# RFC 2034 §3: no enhanced code on the greeting and the EHLO/HELO answer; 354 has none either
# (it is not a completion reply).
WITHOUT_ENHANCED = {"START_MAIL_INPUT", "greeting", "ehlo", "helo", "auth_challenge"}


def test_catalogue_is_complete() -> None:
    functions = {name for name in catalogue_names if callable(getattr(replies, name))}
    assert functions == set(BUILT)
    assert len(CONSTANTS) + len(functions) == len(catalogue_names)
    assert len(CONSTANTS) > 40


@pytest.mark.parametrize("name", sorted(ALL))
def test_reply_is_sane(name: str) -> None:
    reply = ALL[name]
    assert 200 <= reply.code <= 599
    # RFC 5321 §4.2: second digit 0-5; RFC 4954's 334 challenge is the exception.
    assert str(reply.code)[1] in ("3" if reply.code == 334 else "012345")
    if name in WITHOUT_ENHANCED:
        assert reply.enhanced is None
    else:
        assert reply.enhanced is not None
        cls, subject, detail = reply.enhanced.split(".")
        assert cls == str(reply.code)[0]  # RFC 3463 §2: the class matches the code's
        assert 0 <= int(subject) <= 7 and 0 <= int(detail) <= 999
    for line in reply.lines:
        assert line.isascii() and line.isprintable()
        assert not line.endswith((" ", "\r", "\n"))
        assert line
    wire = format_reply(reply)
    assert wire.endswith(b"\r\n") and wire.count(b"\r\n") == len(reply.lines)
    # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
    assert all(len(line) + 2 <= 512 for line in wire.split(b"\r\n"))
    assert parse_replies(wire) == [reply]


def test_names_match_the_codes() -> None:
    # The constant's name must not lie about its class: *_OK is 2xx, refusals 4xx/5xx.
    for name, reply in CONSTANTS.items():
        if name.endswith("_OK") or name == "OK":
            assert reply.code // 100 == 2, name
        if re.match(r"(BAD|SYNTAX|NO_|UNSUPPORTED|NOT_|TOO_MANY|NON_)", name):
            assert reply.code >= 400, name


def test_closing_replies_are_421_or_521() -> None:
    for reply in (replies.TOO_MANY_ERRORS, replies.CROSS_PROTOCOL, replies.SHUTTING_DOWN):
        assert reply.code == 421
    assert replies.TIMEOUT.code == 421
    assert replies.BARE_NEWLINE.code == 521


def test_budgeted_codes_are_permanent_syntax_errors() -> None:
    assert all(500 <= code < 600 for code in BUDGETED_CODES)


def test_reply_validation() -> None:
    for code, enhanced, lines in [
        (199, None, ("x",)),
        (600, None, ("x",)),
        (250, "5.0.0", ("x",)),
        (250, "2.0", ("x",)),
        (250, None, ()),
        (250, None, ("a\r\nb",)),
    ]:
        with pytest.raises(ValueError):  # noqa: PT011 - each has its own message
            Reply(code, enhanced, lines)
