"""Command arguments: paths, addresses and ESMTP parameters (RFC 5321 §4.1.2, RFC 6531 §3.3).

Each ``parse_*`` function takes a command's argument as text (the line was already decoded as
strict UTF-8 and checked for control characters) and returns the event or values it means, or
raises :class:`RemoteProtocolError` carrying the reply that refuses it. Both roles use these:
the server to read its client, the coming proxy to read the client it fronts.

Addresses are returned as the mailbox text the client sent (quoted local parts keep their
quotes, case is kept), with a source route (``@a,@b:``) dropped as RFC 5321 §4.1.1.3 and
Appendix C allow. The grammar admits UTF-8 everywhere RFC 6531 does; whether the transaction
may use it (SMTPUTF8 on MAIL) is checked after the syntax.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from .._lines import ascii_upper
from . import _replies as R
from ._events import BodyType, MailFrom, RcptTo, Reply
from ._settings import BDAT_SIZE_DIGITS, DOMAIN_LIMIT, PATH_LIMIT
from ._util import RemoteProtocolError

__all__ = [
    "CONTROL_CHARACTERS",
    "ascii_upper",
    "parse_bdat",
    "parse_mail",
    "parse_rcpt",
    "split_command",
]

# C0, DEL and C1 controls have no place in a command (CR and LF end it); refusing them keeps
# the EHLO name and addresses safe to put in a Received header or a log line.
CONTROL_CHARACTERS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

_UTF8: Final = "\u00a0-\U0010ffff"  # RFC 6531 UTF8-non-ascii, controls already refused
_ATEXT: Final = rf"[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~{_UTF8}]"
_DOT_STRING: Final = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
# qtextSMTP is %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP is "\" %d32-126.
_QUOTED: Final = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_UTF8}]|\\[\x20-\x7e])*"'
_LETDIG: Final = rf"[A-Za-z0-9{_UTF8}]"
_LABEL: Final = rf"{_LETDIG}(?:[A-Za-z0-9\-{_UTF8}]*{_LETDIG})?"
_DOMAIN: Final = rf"{_LABEL}(?:\.{_LABEL})*"
_MAILBOX: Final = re.compile(rf"({_DOT_STRING}|{_QUOTED})@({_DOMAIN}|\[[^\[\]\\]+\])\Z")
_ROUTE: Final = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*\Z")
# RFC 5321 §4.1.3: General-address-literal = Standardized-tag ":" 1*dcontent.
_GENERAL_LITERAL: Final = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+\Z")
# RFC 5321 §4.1.2: esmtp-keyword and esmtp-value (RFC 6531 §3.3 adds UTF-8 to the value).
_PARAM: Final = re.compile(rf"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e{_UTF8}]+))?\Z")
_DIGITS: Final = re.compile(rf"[0-9]{{1,{BDAT_SIZE_DIGITS}}}\Z")


def split_command(line: str) -> tuple[str, str]:
    """``"mail FROM:<a@b>"`` -> ``("MAIL", "FROM:<a@b>")``. Trailing blanks are dropped:
    enough clients send them that refusing them helps nobody. A verb with a non-ASCII
    character is returned as it is: no command has one."""
    verb, _, argument = line.rstrip(" \t").partition(" ")
    return ascii_upper(verb), argument


def parse_mail(argument: str, *, esmtp: bool) -> MailFrom:
    """MAIL FROM:<reverse-path> [parameters] (RFC 5321 §4.1.1.2). Non-ASCII addresses
    without SMTPUTF8 get 553 5.6.7; the SIZE limit is the caller's to check."""
    path, rest = _split_path(argument, "FROM:", R.SYNTAX_MAIL)
    address = _parse_path(path, R.BAD_SENDER, R.SENDER_PATH_TOO_LONG, null_ok=True)
    size: int | None = None
    body: BodyType | None = None
    smtputf8 = False
    for key, value in _parse_parameters(rest, esmtp=esmtp):
        if key == "SIZE":  # RFC 1870 §3
            if value is None or not _DIGITS.match(value):
                raise RemoteProtocolError(f"SIZE={value}", R.BAD_SIZE)
            size = int(value)
        elif key == "BODY":  # RFC 6152 §2, RFC 3030 §3
            try:
                body = BodyType(ascii_upper(value or ""))
            except ValueError:
                raise RemoteProtocolError(f"BODY={value}", R.BAD_BODY) from None
        elif key == "SMTPUTF8" and value is None:  # RFC 6531 §3.4: no value
            smtputf8 = True
        elif key == "SMTPUTF8":
            raise RemoteProtocolError("SMTPUTF8 takes no value", R.BAD_PARAMETER)
        else:
            raise RemoteProtocolError(f"MAIL parameter {key}", R.UNSUPPORTED_PARAMETER)
    if not smtputf8 and not address.isascii():
        raise RemoteProtocolError("non-ASCII sender without SMTPUTF8", R.NON_ASCII_ADDRESS)
    return MailFrom(address, size=size, body=body, smtputf8=smtputf8)


def parse_rcpt(argument: str, *, esmtp: bool, smtputf8: bool) -> RcptTo:
    """RCPT TO:<forward-path> (RFC 5321 §4.1.1.3). No parameter is offered (no DSN), so any
    is 555; ``<Postmaster>`` without a domain is valid."""
    path, rest = _split_path(argument, "TO:", R.SYNTAX_RCPT)
    if ascii_upper(path) == "<POSTMASTER>":
        address = path[1:-1]
    else:
        address = _parse_path(path, R.BAD_RECIPIENT, R.RECIPIENT_PATH_TOO_LONG, null_ok=False)
    for key, _value in _parse_parameters(rest, esmtp=esmtp):
        raise RemoteProtocolError(f"RCPT parameter {key}", R.UNSUPPORTED_PARAMETER)
    if not smtputf8 and not address.isascii():
        raise RemoteProtocolError("non-ASCII recipient without SMTPUTF8", R.NON_ASCII_ADDRESS)
    return RcptTo(address)


def parse_bdat(argument: str) -> tuple[int, bool]:
    """BDAT chunk-size [LAST] (RFC 3030 §2): the size and whether it is the last chunk."""
    words = argument.split(" ")
    if not 1 <= len(words) <= 2 or not _DIGITS.match(words[0]):
        raise RemoteProtocolError(f"BDAT {argument}", R.SYNTAX_BDAT)
    if len(words) == 2 and ascii_upper(words[1]) != "LAST":
        raise RemoteProtocolError(f"BDAT {argument}", R.SYNTAX_BDAT)
    return int(words[0]), len(words) == 2


def _split_path(argument: str, keyword: str, syntax: Reply) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into the path (with its brackets) and the rest. A ">"
    inside a quoted local part or an address literal does not end the path."""
    if ascii_upper(argument[: len(keyword)]) != keyword:
        raise RemoteProtocolError(f"expected {keyword}", syntax)
    # RFC 5321 has no space after the colon; many clients send one (Postfix accepts it too).
    text = argument[len(keyword) :].lstrip(" ")
    if not text.startswith("<"):
        raise RemoteProtocolError("path without angle brackets", syntax)
    quoted = literal = False
    i = 1
    while i < len(text):
        char = text[i]
        if quoted and char == "\\":
            i += 1  # the escaped character is content
        elif char == '"' and not literal:
            quoted = not quoted
        elif char == "[" and not quoted:
            literal = True
        elif char == "]" and not quoted:
            literal = False
        elif char == ">" and not quoted and not literal:
            rest = text[i + 1 :]
            if rest and not rest.startswith(" "):
                raise RemoteProtocolError("junk after the path", syntax)
            return text[: i + 1], rest
        i += 1
    raise RemoteProtocolError("path not closed", syntax)


def _parse_path(path: str, bad: Reply, too_long: Reply, *, null_ok: bool) -> str:
    if len(path.encode()) > PATH_LIMIT:
        raise RemoteProtocolError("path too long", too_long)
    inner = path[1:-1]
    if not inner:
        if null_ok:
            return ""  # the null reverse-path (RFC 5321 §4.5.5)
        raise RemoteProtocolError("null forward-path", bad)
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon or not _ROUTE.match(route):
            raise RemoteProtocolError("bad source route", bad)
    match = _MAILBOX.match(inner)
    if match is None or not _valid_domain(match.group(2)):
        raise RemoteProtocolError(f"bad address {inner!r}", bad)
    return inner


def _valid_domain(domain: str) -> bool:
    if domain.startswith("["):
        literal = domain[1:-1]
        try:
            if ascii_upper(literal[:5]) == "IPV6:":
                ipaddress.IPv6Address(literal[5:])
            elif _GENERAL_LITERAL.match(literal):
                return True
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            return False
        return True
    if len(domain.encode()) > DOMAIN_LIMIT:
        return False
    # RFC 1035 §2.3.4: 63 octets a label. A U-label's limit applies to its A-label form,
    # which only IDNA can compute; its UTF-8 length is a close enough bound.
    return all(len(label.encode()) <= 63 for label in domain.split("."))


def _parse_parameters(rest: str, *, esmtp: bool) -> list[tuple[str, str | None]]:
    """RFC 5321 §4.1.2 Mail-parameters, keys upper-cased. After HELO no extension was
    negotiated, so every parameter is unsupported (555, RFC 5321 §4.1.1.11)."""
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for word in rest.split(" "):
        if not word:
            continue  # runs of spaces: lenient, as for the space after the colon
        match = _PARAM.match(word)
        if match is None:
            raise RemoteProtocolError(f"bad parameter {word!r}", R.BAD_PARAMETER)
        key = match.group(1).upper()  # _PARAM admits ASCII keywords only
        if not esmtp:
            raise RemoteProtocolError(f"parameter {key} after HELO", R.UNSUPPORTED_PARAMETER)
        if key in seen:
            raise RemoteProtocolError(f"duplicate {key}", R.DUPLICATE_PARAMETER)
        seen.add(key)
        params.append((key, match.group(2)))
    return params
