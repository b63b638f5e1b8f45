"""Writers: replies, dot-stuffed multi-line bodies and client commands to bytes."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .._dotstuff import DotStuffer
from ._events import COMMAND_LINE_LIMIT, Reply

__all__ = ["DotStuffer", "format_command", "format_reply"]


def format_reply(reply: Reply) -> bytes:
    parts = ["+OK" if reply.ok else "-ERR"]
    if reply.code is not None:
        parts.append(f"[{reply.code}]")
    if reply.text:
        parts.append(reply.text)
    return " ".join(parts).encode() + b"\r\n"


def format_lines(lines: Iterable[str | bytes]) -> bytes:
    """A listing (LIST, UIDL, CAPA): lines without line ends, stuffed and CRLF-joined."""
    stuffer = DotStuffer()
    out = bytearray()
    for line in lines:
        raw = line.encode() if isinstance(line, str) else line
        if b"\r" in raw or b"\n" in raw:
            raise ValueError(f"listing line {raw[:40]!r} holds CR or LF")
        out += stuffer.feed(raw + b"\r\n")
    out += stuffer.end()
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
