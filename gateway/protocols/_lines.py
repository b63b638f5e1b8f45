"""The bounded line splitter under both protocols' line readers (commands, replies, status
lines, SASL responses): one rule for how long a line may be and what happens past it; and
:func:`ascii_upper`, one rule for how a keyword in a line is compared.

It consumes from the front of a ``bytearray`` it is given (``del buf[:n]`` is cheap at the
front of a CPython bytearray) and keeps one flag of its own, so it gives the same result
however the input was split, down to one byte at a time. What a line ending means is the
protocol's: SMTP's reader reports a bare LF (RFC 5321 §2.3.8; Postfix may refuse it), POP3's
takes it as a line end (command lines carry no content, so a lenient end is harmless).
"""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = ["CR", "DOT", "LF", "TOO_LONG", "LineSplitter", "TooLong", "ascii_upper"]

CR: Final = 0x0D
LF: Final = 0x0A
DOT: Final = 0x2E


def ascii_upper(text: str) -> str:
    """``text`` upper-cased if it is ASCII, else unchanged (so it matches no keyword).

    Commands, keywords, capability and mechanism names are ASCII (RFC 5321 §2.4: verbs and
    argument keywords are case-insensitive in ASCII only; RFC 2449 §5 for POP3 capabilities).
    ``str.upper`` follows Unicode: "MAIL" with a dotless i (U+0131) becomes "MAIL",
    "STARTTLS" with a long s (U+017F) "STARTTLS", and the ligature U+FB06 becomes "ST". A
    server that reads a command its peers read as junk is where smuggling starts.
    """
    return text.upper() if text.isascii() else text


class TooLong(enum.Enum):
    TOO_LONG = "TOO_LONG"


TOO_LONG: Final = TooLong.TOO_LONG


class LineSplitter:
    """Lines of at most ``limit`` octets counting the line ending (RFC 5321 §4.5.3.1.4 and
    RFC 2449 §4 both count the CRLF). A longer line is reported once as TOO_LONG as soon as
    ``limit`` octets without LF are buffered, then skipped up to its LF without being
    buffered. ``limit`` may change between reads (a POP3 SASL response may be longer)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._skipping = False

    def take(self, buf: bytearray) -> bytes | Literal[TooLong.TOO_LONG] | None:
        """The next line without its LF (a CR before the LF is kept: the caller decides what
        it means), TOO_LONG, or None when no whole line is buffered."""
        if self._skipping:
            end = buf.find(b"\n")
            if end < 0:
                del buf[:]
                return None
            del buf[: end + 1]
            self._skipping = False
        end = buf.find(b"\n", 0, self.limit)
        if end < 0:
            if len(buf) < self.limit:
                return None
            end = buf.find(b"\n", self.limit)
            if end < 0:
                del buf[:]
                self._skipping = True
            else:
                del buf[: end + 1]
            return TOO_LONG
        line = bytes(buf[:end])
        del buf[: end + 1]
        return line
