"""Readers: bytes from a receive buffer to lines, message content or replies.

Each reader consumes from the front of a ``bytearray`` it is given (``del buf[:n]`` is cheap
at the front of a CPython bytearray) and keeps only a few flags of its own, so it gives the
same result however the input was split, down to one byte at a time. The connection swaps
readers as its state changes, as h11 does (``READERS`` there, ``_reader_for_state`` here).

* :class:`LineReader`: command lines (server) and reply lines (client), bounded.
* :class:`DataReader`: DATA content, dot-unstuffed, ending only at CRLF "." CRLF.
* :class:`ChunkReader`: BDAT octets, counted.
* :class:`ReplyReader`: the client role's reader of a server's replies.
"""

from __future__ import annotations

import enum
import re
from typing import Final, Literal, NamedTuple

from .._lines import CR, DOT, LF, TOO_LONG, LineSplitter, TooLong
from . import _replies as R
from ._events import NEED_DATA, CloseReason, ConnectionClosed, Reply, Sentinel
from ._settings import BODY_PIECE_SIZE, REPLY_LINE_LIMIT, REPLY_LINES_LIMIT, REPLY_SIZE_LIMIT
from ._util import LocalProtocolError, RemoteProtocolError

__all__ = ["TOO_LONG", "ChunkReader", "DataReader", "Line", "LineReader", "ReplyReader"]

_BARE_LF: Final = re.compile(rb"(?<!\r)\n")


class Line(NamedTuple):
    content: bytes  # without its line ending
    bare_lf: bool  # ended by LF alone, not CRLF


class LineReader(LineSplitter):
    """Lines of at most ``limit`` octets counting the line ending (RFC 5321 §4.5.3.1.4
    counts the CRLF), each with whether a bare LF ended it; an overlong line is TOO_LONG
    once, then skipped (``protocols/_lines.py``)."""

    def read(self, buf: bytearray) -> Line | Literal[TooLong.TOO_LONG] | None:
        line = self.take(buf)
        if line is None or line is TOO_LONG:
            return line
        if line.endswith(b"\r"):
            return Line(line[:-1], bare_lf=False)
        return Line(line, bare_lf=True)


class _LineStart(enum.Enum):
    NONE = "NONE"  # inside a line
    STRICT = "STRICT"  # after CRLF, or at the start of the content
    LOOSE = "LOOSE"  # after a bare LF (normalize mode only)


class DataReader:
    """DATA content (RFC 5321 §4.1.1.4, transparency §4.5.2).

    The content ends ONLY at CRLF "." CRLF, where the first CRLF may be the one that ended the
    DATA command. Every other spelling (``LF.LF``, ``LF.CRLF``, ``CRLF.LF``, ``CR.CR``,
    ``CR.CRLF``...) is content: an end-of-data that a relay upstream does not see as one is how
    SMTP smuggling (SEC Consult, 2023) injects a second message.

    A line starting with "." and holding more than the dot loses that dot (§4.5.2). A line that
    is only "." but is not the end (it follows a bare LF, or a bare LF ends it) keeps its dot:
    §4.5.2 removes a dot only from lines with other characters, and keeping it means the
    stored message shows what was sent.

    A bare LF is, in "normalize" mode (Postfix's ``smtpd_forbid_bare_newline = normalize``), a
    line end: CRLF is stored in its place and the next line is a line start for
    dot-unstuffing (a ``..x`` after a bare LF becomes ``.x``, as a client that ends lines with
    LF and stuffs dots meant). In "reject" mode it raises the 521 error. A bare CR is content,
    byte for byte.

    Lines of any length stream through; between calls the reader keeps one flag and leaves at
    most two undecided octets (a lone CR, or a "." or ".\r" at a line start) in the buffer.
    """

    def __init__(self, *, reject_bare_lf: bool) -> None:
        self._reject = reject_bare_lf
        self._start = _LineStart.STRICT

    def read(self, buf: bytearray, limit: int = BODY_PIECE_SIZE) -> tuple[bytes, bool]:
        """Consume about ``limit`` octets at most; return the content they hold and whether
        the end-of-data line was consumed (then nothing after it is touched)."""
        parts: list[bytes] = []
        pos = 0
        size = len(buf)
        stop = min(size, limit)
        ended = False
        while pos < stop:
            if self._start is not _LineStart.NONE:
                if buf[pos] != DOT:
                    self._start = _LineStart.NONE
                    continue
                if pos + 1 >= size:
                    break  # a lone "." so far: wait for what follows
                after = buf[pos + 1]
                if after == CR:
                    if pos + 2 >= size:
                        break
                    if buf[pos + 2] == LF:  # the line is "." CRLF
                        pos += 3
                        if self._start is _LineStart.STRICT:
                            ended = True
                            break
                        parts.append(b".\r\n")  # after a bare LF: content, dot kept
                        self._start = _LineStart.STRICT
                        continue
                elif after == LF:  # "." bare-LF: never the end
                    if self._reject:
                        if parts:
                            break  # hand over what came before; fail on the next call
                        raise RemoteProtocolError("bare LF in DATA", R.BARE_NEWLINE)
                    parts.append(b".\r\n")
                    pos += 2
                    self._start = _LineStart.LOOSE
                    continue
                pos += 1  # a stuffed dot: drop it, the rest of the line is content
                self._start = _LineStart.NONE
                continue
            # Inside a line: take everything up to the next line that starts with ".", or
            # to the last line end in the window. A CR at the very end may begin a CRLF.
            cut = buf.find(b"\n.", pos, stop)
            if cut < 0:
                cut = buf.rfind(b"\n", pos, stop)
            if cut >= 0:
                end = cut + 1
            else:
                end = stop - 1 if buf[stop - 1] == CR else stop
                if end <= pos:
                    break
            piece = bytes(buf[pos:end])
            if piece.count(b"\n") != piece.count(b"\r\n"):
                if self._reject:
                    # Hand over the content before the bare LF (as a byte-by-byte feed
                    # would have), fail when it is reached.
                    bare = _BARE_LF.search(piece)
                    assert bare is not None
                    if bare.start() == 0 and not parts:
                        raise RemoteProtocolError("bare LF in DATA", R.BARE_NEWLINE)
                    parts.append(piece[: bare.start()])
                    pos += bare.start()
                    break
                piece = _BARE_LF.sub(b"\r\n", piece)
            parts.append(piece)
            if buf[end - 1] == LF:
                crlf = end - 2 >= pos and buf[end - 2] == CR
                self._start = _LineStart.STRICT if crlf else _LineStart.LOOSE
            pos = end
        del buf[:pos]
        return b"".join(parts), ended


class ChunkReader:
    """The octets of one BDAT chunk (RFC 3030 §2): exactly ``size`` of them, any values."""

    def __init__(self, size: int) -> None:
        self.remaining = size

    def read(self, buf: bytearray, limit: int = BODY_PIECE_SIZE) -> bytes:
        take = min(len(buf), self.remaining, limit)
        data = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        return data


# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39, then "-" (more lines follow), SP or
# nothing. RFC 2034 §3: an enhanced code may open the text.
_REPLY_LINE: Final = re.compile(r"([2-5][0-5][0-9])(?:([ -])(.*))?\Z", re.DOTALL)
_ENHANCED_PREFIX: Final = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |\Z)")


class ReplyReader:
    """Client role: a server's bytes to :class:`Reply` events; the client machine
    (``_client.py``) wraps it as the server machine wraps the command reader.

    ``next_event()`` returns a Reply, NEED_DATA, or ``ConnectionClosed(EOF)`` once the server
    closed between replies; a malformed or oversized reply raises RemoteProtocolError. After
    the 220 that answers STARTTLS, :attr:`buffered` must be 0: bytes that arrived with it
    were sent in the clear and must not be read as coming from the TLS session (the
    response-injection twin of CVE-2011-0411; the client machine refuses them)."""

    def __init__(
        self,
        *,
        max_line_length: int = REPLY_LINE_LIMIT,
        max_lines: int = REPLY_LINES_LIMIT,
        max_size: int = REPLY_SIZE_LIMIT,
    ) -> None:
        self._buffer = bytearray()
        self._reader = LineReader(max_line_length)
        self._max_lines = max_lines
        self._max_size = max_size
        self._code: int | None = None
        self._texts: list[str] = []
        self._size = 0
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        if self._eof and data:
            raise LocalProtocolError("received data after EOF")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def discard_buffered(self) -> int:
        count = len(self._buffer)
        del self._buffer[:]
        return count

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_event(self) -> Reply | ConnectionClosed | Literal[Sentinel.NEED_DATA]:
        while True:
            line = self._reader.read(self._buffer)
            if line is TOO_LONG:
                raise RemoteProtocolError("reply line too long")
            if line is None:
                if not self._eof:
                    return NEED_DATA
                if self._buffer or self._texts:
                    raise RemoteProtocolError("connection closed inside a reply")
                return ConnectionClosed(CloseReason.EOF)
            self._size += len(line.content) + 2
            reply = self._add(line.content.decode("utf-8", "replace"))
            if reply is not None:
                return reply

    def _add(self, text: str) -> Reply | None:
        match = _REPLY_LINE.match(text)
        if match is None or "\r" in text:
            raise RemoteProtocolError(f"malformed reply line {text[:80]!r}")
        code = int(match.group(1))
        if self._code is not None and code != self._code:
            raise RemoteProtocolError(f"reply code changed from {self._code} to {code}")
        self._code = code
        self._texts.append(match.group(3) or "")
        if match.group(2) == "-":
            if len(self._texts) >= self._max_lines:
                raise RemoteProtocolError("reply has too many lines")
            if self._size > self._max_size:
                raise RemoteProtocolError("reply too large")
            return None
        texts, self._texts, self._code, self._size = self._texts, [], None, 0
        enhanced: str | None = None
        prefix = _ENHANCED_PREFIX.match(texts[0])
        if prefix is not None and prefix.group(1)[0] == str(code)[0]:
            enhanced = prefix.group(1)
            texts = [_strip_enhanced(t, enhanced) for t in texts]
        return Reply(code, enhanced, tuple(texts))


def _strip_enhanced(text: str, enhanced: str) -> str:
    if text == enhanced:
        return ""
    if text.startswith(enhanced + " "):
        return text[len(enhanced) + 1 :]
    return text
