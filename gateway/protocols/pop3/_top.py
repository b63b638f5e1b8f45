"""TOP (RFC 1939 §7): the header, the blank line after it, and the first ``lines`` lines of
the body, cut from a message that arrives in pieces. Pure and bounded: it never holds a line,
only whether the current line is empty so far."""

from __future__ import annotations

__all__ = ["TopCutter"]

_EMPTY, _CR, _TEXT = 0, 1, 2  # what the current line holds so far: nothing, "\r", more


class TopCutter:
    """Feed the message's pieces in order; each call returns the part of that piece TOP
    sends. After the cut, ``done`` is true and every further piece gives ``b""``. A message
    with no blank line is all header and is sent whole."""

    def __init__(self, lines: int) -> None:
        if lines < 0:
            raise ValueError("lines must be 0 or more")
        self.lines = lines
        self.done = False
        self._in_header = True
        self._body_lines = 0
        self._line = _EMPTY

    def feed(self, piece: bytes) -> bytes:
        if self.done:
            return b""
        start = 0
        while True:
            end = piece.find(b"\n", start)
            if end < 0:
                self._extend(piece[start:])
                return piece
            blank = self._blank_with(piece[start:end])
            self._line = _EMPTY
            if self._in_header:
                if blank:
                    self._in_header = False
                    if self.lines == 0:
                        return self._cut(piece, end)
            else:
                self._body_lines += 1
                if self._body_lines >= self.lines:
                    return self._cut(piece, end)
            start = end + 1

    def _cut(self, piece: bytes, end: int) -> bytes:
        self.done = True
        return piece[: end + 1]

    def _blank_with(self, rest: bytes) -> bool:
        if self._line == _TEXT:
            return False
        if self._line == _CR:
            return rest == b""
        return rest in (b"", b"\r")

    def _extend(self, rest: bytes) -> None:
        if not rest or self._line == _TEXT:
            return
        self._line = _CR if self._line == _EMPTY and rest == b"\r" else _TEXT
