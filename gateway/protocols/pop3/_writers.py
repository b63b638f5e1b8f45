"""Writers: replies, dot-stuffed multi-line bodies and client commands to bytes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from .._dotstuff import DotStuffer
from ._events import (
    COMMAND_LINE_LIMIT,
    Capa,
    Dele,
    Event,
    List,
    Noop,
    Quit,
    Reply,
    Retr,
    Rset,
    StartTLS,
    Stat,
    Top,
    Uidl,
)

__all__ = ["DotStuffer", "client_command", "format_command", "format_reply"]

_DIGITS: Final = re.compile(r"[0-9]{1,9}\Z")  # a message number, as the server role reads it


def format_reply(reply: Reply) -> bytes:
    parts = ["+OK" if reply.ok else "-ERR"]
    if reply.code is not None:
        parts.append(f"[{reply.code}]")
    if reply.text:
        parts.append(reply.text)
    return " ".join(parts).encode() + b"\r\n"


def format_lines(lines: Iterable[str | bytes]) -> bytes:
    """A listing (LIST, UIDL, CAPA): lines without line ends, stuffed and CRLF-joined, with
    the terminating dot."""
    stuffer = DotStuffer()
    return stuff_lines(lines, stuffer) + stuffer.end()


def stuff_lines(lines: Iterable[str | bytes], stuffer: DotStuffer) -> bytes:
    """Lines of a listing through ``stuffer``, CRLF added to each (no terminating dot)."""
    out = bytearray()
    for line in lines:
        raw = line.encode() if isinstance(line, str) else line
        if b"\r" in raw or b"\n" in raw:
            raise ValueError(f"listing line {raw[:40]!r} holds CR or LF")
        out += stuffer.feed(raw + b"\r\n")
    return bytes(out)


def format_command(verb: str, *args: str) -> bytes:
    """A client command line; raises ValueError for CR/LF/NUL, spaces inside arguments
    (except in PASS's single argument) or a line over 255 octets (RFC 2449 §4)."""
    if not re.fullmatch(r"[A-Za-z]{3,4}", verb):
        raise ValueError(f"{verb!r} is not a POP3 keyword")
    for arg in args:
        if not arg or any(c in arg for c in "\r\n\0") or (" " in arg and verb.upper() != "PASS"):
            raise ValueError(f"bad argument to {verb.upper()}")  # never the value: a password
    line = " ".join((verb.upper(), *args)).encode() + b"\r\n"
    if len(line) > COMMAND_LINE_LIMIT:
        raise ValueError(f"command line of {len(line)} octets > {COMMAND_LINE_LIMIT}")
    return line


def client_command(verb: str, *args: str) -> Event:
    """The client-role command a user would type as words (``"RETR", "1"``); ValueError if
    it is none the client role sends that way."""
    verb = verb.upper()
    simple = {"STAT": Stat, "RSET": Rset, "NOOP": Noop, "QUIT": Quit, "CAPA": Capa}
    if verb in simple and not args:
        return simple[verb]()
    if verb == "STLS" and not args:
        return StartTLS()
    numbers = [_number(arg) for arg in args]
    if verb in ("LIST", "UIDL") and len(numbers) <= 1:
        msg = numbers[0] if numbers else None
        return List(msg) if verb == "LIST" else Uidl(msg)
    if verb in ("RETR", "DELE") and len(numbers) == 1:
        return Retr(numbers[0]) if verb == "RETR" else Dele(numbers[0])
    if verb == "TOP" and len(numbers) == 2:
        return Top(numbers[0], numbers[1])
    raise ValueError(f"{verb} with {len(args)} arguments is no client command")


def _number(arg: str) -> int:
    if not _DIGITS.match(arg):
        raise ValueError("a message number is 1 to 9 ASCII digits")
    return int(arg)
