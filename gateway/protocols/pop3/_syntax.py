"""The syntax of POP3 command lines (RFC 1939 §3, §7): the verb, message numbers and text
arguments, as ``smtp/_syntax.py`` is SMTP's. Each parser returns a value or raises
RemoteProtocolError carrying the ``-ERR`` that answers it."""

from __future__ import annotations

import re
from typing import Final

from . import _replies as R
from ._util import RemoteProtocolError

__all__ = ["command_verb", "one_number", "optional_number", "parse_number", "parse_text"]

# Message numbers and TOP's line count: ASCII digits only, no sign, at most 9 digits (below
# 2**31, so any store can take them); message numbers are at least 1.
_NUMBER: Final = re.compile(rb"[0-9]{1,9}\Z")
_KEYWORD: Final = re.compile(rb"[A-Za-z]{3,4}\Z")
# Usernames: printable, no controls or spaces. Passwords: anything but controls (RFC 1939
# §7 lets a password hold spaces: PASS takes the rest of the line).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def command_verb(raw: bytes) -> str:
    """The keyword upper-cased, or "" if ``raw`` is none (3 or 4 ASCII letters)."""
    return raw.decode("ascii").upper() if _KEYWORD.match(raw) else ""


def parse_number(raw: bytes, *, minimum: int = 1) -> int:
    if not _NUMBER.match(raw) or int(raw) < minimum:
        raise RemoteProtocolError("bad number", R.BAD_MESSAGE_NUMBER)
    return int(raw)


def optional_number(args: list[bytes]) -> int | None:
    if len(args) > 1:
        raise RemoteProtocolError("at most one argument", R.SYNTAX)
    return parse_number(args[0]) if args else None


def one_number(args: list[bytes]) -> int:
    if len(args) != 1:
        raise RemoteProtocolError("one argument", R.SYNTAX)
    return parse_number(args[0])


def parse_text(raw: bytes, *, spaces: bool) -> str:
    """A username (``spaces`` False) or a password: UTF-8, not empty, no control."""
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("not UTF-8", R.SYNTAX) from exc
    if not text or _CONTROL.search(text) or (not spaces and " " in text):
        raise RemoteProtocolError("bad argument", R.SYNTAX)
    return text
