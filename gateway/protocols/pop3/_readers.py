"""Readers: bytes from a receive buffer to command lines (server) or replies (client).

Each reader consumes from the front of a ``bytearray`` and keeps only a few flags, so it gives
the same result however the input was split, down to one byte at a time.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final, Literal

from .._lines import CR, DOT, LF, TOO_LONG, LineSplitter, TooLong, ascii_upper
from ._events import (
    BODY_PIECE_SIZE,
    NEED_DATA,
    REPLY_LINE_LIMIT,
    BodyData,
    BodyEnd,
    CloseReason,
    ConnectionClosed,
    Continuation,
    Event,
    Reply,
    Sentinel,
)
from ._util import RemoteProtocolError

__all__ = [
    "TOO_LONG",
    "LineReader",
    "ReplyReader",
    "TooLong",
    "parse_capabilities",
    "parse_status_line",
    "parse_uidl_listing",
]

# RFC 1939 §7: "n uid", uid 1-70 octets 0x21-0x7E. The 70 is not enforced: a longer uid
# still names one message, and only its HMAC is kept (SPEC.md 5.5).
_NUMBER: Final = re.compile(rb"[0-9]{1,9}\Z")
_UID: Final = re.compile(rb"[\x21-\x7e]+\Z")


class LineReader(LineSplitter):
    """Lines of at most ``limit`` octets counting the line ending, returned without it (CRLF
    or a bare LF: command lines carry no content, so a lenient end is harmless); an overlong
    line is TOO_LONG once, then skipped (``protocols/_lines.py``)."""

    def read(self, buf: bytearray) -> bytes | Literal[TooLong.TOO_LONG] | None:
        line = self.take(buf)
        if line is None or line is TOO_LONG:
            return line
        return line[:-1] if line.endswith(b"\r") else line


def parse_status_line(line: bytes) -> Reply | Continuation:
    """``+OK [CODE] text``, ``-ERR [CODE] text`` or a ``+ challenge`` line."""
    try:
        text = line.decode()
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("status line is not UTF-8") from exc
    if text == "+" or text.startswith("+ "):
        return Continuation(text[2:])
    if text == "+OK" or text.startswith("+OK "):
        ok, rest = True, text[4:]
    elif text == "-ERR" or text.startswith("-ERR "):
        ok, rest = False, text[5:]
    else:
        raise RemoteProtocolError(f"status line {text[:40]!r} is neither +OK nor -ERR")
    if rest.startswith("["):
        end = rest.find("]")
        if end > 0:
            candidate = rest[1:end]
            try:
                reply = Reply(ok, rest[end + 1 :].lstrip(" "), candidate)
            except ValueError:
                pass  # not a response code: keep the bracket as text
            else:
                return reply
    try:
        return Reply(ok, rest)
    except ValueError as exc:
        raise RemoteProtocolError(str(exc)) from exc


class ReplyReader:
    """The client role's reader of a POP3 server's responses (a proxy's upstream side).

    The client says what it expects, in the order it sent the commands (pipelining, RFC 2449
    §6.6): ``expect(multiline=True)`` for CAPA, LIST/UIDL without argument, RETR and TOP,
    ``expect()`` otherwise; with nothing expected a single line is read (the greeting).
    ``next_event()`` returns a :class:`Reply`, then for a multi-line +OK the dot-unstuffed
    body as :class:`BodyData` pieces (each at most BODY_PIECE_SIZE octets, CRLFs kept) and
    a :class:`BodyEnd`; a ``+ `` line is a :class:`Continuation` and consumes no
    expectation. Clean EOF gives ConnectionClosed(EOF); EOF inside a response, an overlong or
    malformed status line raise RemoteProtocolError. Unstuffing follows RFC 1939 §3: at a
    line start (after LF) "." CRLF ends the response, any other "." is stripped.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._expect: deque[bool] = deque()
        self._lines = LineReader(REPLY_LINE_LIMIT)
        self._in_body = False
        self._line_start = True
        self._eof = False

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def expect(self, multiline: bool = False) -> None:
        self._expect.append(multiline)

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self._eof:
            raise RemoteProtocolError("data after EOF")
        else:
            self._buffer += data

    def next_event(self) -> Event | Reply | Literal[Sentinel.NEED_DATA]:
        event = self._body() if self._in_body else self._status()
        if event is None:
            if self._eof:
                if self._buffer or self._in_body:
                    raise RemoteProtocolError("connection closed inside a response")
                return ConnectionClosed(CloseReason.EOF)
            return NEED_DATA
        return event

    def _status(self) -> Event | Reply | None:
        line = self._lines.read(self._buffer)
        if line is None:
            return None
        if line is TOO_LONG:
            raise RemoteProtocolError(f"status line longer than {REPLY_LINE_LIMIT} octets")
        reply = parse_status_line(line)
        if isinstance(reply, Reply):
            multiline = self._expect.popleft() if self._expect else False
            if multiline and reply.ok:
                self._in_body, self._line_start = True, True
        return reply

    def _body(self) -> Event | None:
        buf = self._buffer
        if self._line_start:
            if not buf:
                return None
            if buf[0] == DOT:
                if len(buf) < 2 or (buf[1] == CR and len(buf) < 3):
                    return None
                if buf[1] == CR and buf[2] == LF:
                    del buf[:3]
                    self._in_body = False
                    return BodyEnd()
                del buf[:1]  # the stuffed (termination) octet
            self._line_start = False
        # Everything buffered (up to BODY_PIECE_SIZE) that needs no decision: up to the next
        # line that starts with "." (decided above on the next call), else the whole window,
        # remembering whether it ended a line.
        stop = min(len(buf), BODY_PIECE_SIZE)
        if stop == 0:
            return None
        cut = buf.find(b"\n.", 0, stop)
        if cut >= 0:
            n, self._line_start = cut + 1, True
        else:
            n, self._line_start = stop, buf[stop - 1] == LF
        piece = bytes(buf[:n])
        del buf[:n]
        return BodyData(piece)


def parse_uidl_listing(listing: bytes) -> dict[int, str]:
    """``n uid`` lines (RFC 1939 §7) to {n: uid}; a line of any other form is left out, so
    its message has no UIDL (and a proxy stores it without a key)."""
    uidls: dict[int, str] = {}
    for line in listing.split(b"\n"):
        fields = line.split()
        if len(fields) == 2 and _NUMBER.match(fields[0]) and _UID.match(fields[1]):
            uidls[int(fields[0])] = fields[1].decode("ascii")
    return uidls


def parse_capabilities(listing: bytes) -> dict[str, tuple[str, ...]]:
    """RFC 2449 §5: one capability a line (upper-cased in ASCII), its arguments after it."""
    capabilities: dict[str, tuple[str, ...]] = {}
    for line in listing.decode("utf-8", "replace").splitlines():
        if words := line.split():
            capabilities[ascii_upper(words[0])] = tuple(words[1:])
    return capabilities
