"""Writers: replies, dot-stuffed multi-line bodies and client commands to bytes."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Final

from ._events import COMMAND_LINE_LIMIT, Reply

__all__ = ["DotStuffer", "auth_plain_response", "format_command", "format_reply"]

_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
_LF_DOT: Final = re.compile(rb"\n\.")


def format_reply(reply: Reply) -> bytes:
    parts = ["+OK" if reply.ok else "-ERR"]
    if reply.code is not None:
        parts.append(f"[{reply.code}]")
    if reply.text:
        parts.append(reply.text)
    return " ".join(parts).encode() + b"\r\n"


class DotStuffer:
    """Stream a stored message as the body of a multi-line response (RFC 1939 §3), chunk
    by chunk, holding two flags across chunks and nothing else.

    Every line starting with "." gets another ".". A bare LF in stored content (it should
    hold CRLF only) is written as CRLF: a POP3 body is CRLF lines, and a client that takes a
    bare LF as a line end must not be able to read a "." line the stuffer did not see as
    one. A bare CR is passed through. ``end()`` adds CRLF if the content did not end with a
    line end (content of zero octets stays empty), then the "." CRLF terminator.
    """

    def __init__(self) -> None:
        self._line_start = True  # the last octet written was LF (or nothing was written)
        self._cr = False  # the last input octet was CR: an LF next is not bare
        self._ended = False

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            raise ValueError("the body has ended")
        if not chunk:
            return b""
        # Stored mail is CRLF throughout and few lines start with ".": count first (C
        # speed) and run the regular expressions only where they have work to do.
        data = b"\r" + chunk if self._cr else chunk
        if data.count(b"\n") != data.count(b"\r\n"):
            data = _BARE_LF.sub(b"\r\n", data)
        if self._cr:
            data = data[1:]
        self._cr = chunk.endswith(b"\r")
        if b"\n." in data:
            data = _LF_DOT.sub(b"\n..", data)
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\n")
        return data

    def end(self) -> bytes:
        if self._ended:
            raise ValueError("the body has ended")
        self._ended = True
        return b".\r\n" if self._line_start else b"\r\n.\r\n"


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
            raise ValueError(f"bad argument {arg!r}")
    line = " ".join((verb.upper(), *args)).encode() + b"\r\n"
    if len(line) > COMMAND_LINE_LIMIT:
        raise ValueError(f"command line of {len(line)} octets > {COMMAND_LINE_LIMIT}")
    return line


def auth_plain_response(username: str, password: str, authzid: str = "") -> str:
    """The base64 PLAIN message (RFC 4616): ``format_command("AUTH", "PLAIN", r)`` or, if
    that is too long, ``AUTH PLAIN`` then ``r`` CRLF after the ``+`` (RFC 5034 §4)."""
    raw = f"{authzid}\0{username}\0{password}".encode()
    return base64.b64encode(raw).decode() if raw else "="
