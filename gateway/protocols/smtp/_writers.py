"""Writers: replies (server role) and commands and DATA content (client role) to bytes.

The server machine formats every reply it queues with :func:`format_reply`. The command
helpers and :class:`DotStuffer` are for the coming proxy's client machine (and for the tests,
which use them to speak to the server machine as a real client would).
"""

from __future__ import annotations

import re
from typing import Final

from ._events import BodyType, Reply

__all__ = [
    "DotStuffer",
    "format_bdat",
    "format_command",
    "format_mail",
    "format_rcpt",
    "format_reply",
]

_BARE_LF: Final = re.compile(rb"(?<!\r)\n")


def format_reply(reply: Reply) -> bytes:
    """RFC 5321 §4.2: ``code-text`` for every line but the last, ``code text`` for the last;
    the enhanced code opens every line (RFC 2034 §3)."""
    out: list[str] = []
    last = len(reply.lines) - 1
    for i, line in enumerate(reply.lines):
        text = f"{reply.enhanced} {line}" if reply.enhanced and line else reply.enhanced or line
        if i < last:
            out.append(f"{reply.code}-{text}\r\n")
        elif text:
            out.append(f"{reply.code} {text}\r\n")
        else:
            out.append(f"{reply.code}\r\n")  # textstring is 1*char: no SP before nothing
    return "".join(out).encode()


def format_command(verb: str, argument: str = "") -> bytes:
    """One command line. Refuses line breaks, which would smuggle a second command."""
    line = f"{verb} {argument}" if argument else verb
    if "\r" in line or "\n" in line:
        raise ValueError(f"line break in SMTP command {line[:80]!r}")
    return line.encode() + b"\r\n"


def format_mail(
    address: str, *, size: int | None = None, body: BodyType | None = None, smtputf8: bool = False
) -> bytes:
    params = []
    if size is not None:
        params.append(f"SIZE={size}")
    if body is not None:
        params.append(f"BODY={body}")
    if smtputf8:
        params.append("SMTPUTF8")
    return format_command("MAIL", " ".join([f"FROM:<{address}>", *params]))


def format_rcpt(address: str) -> bytes:
    return format_command("RCPT", f"TO:<{address}>")


def format_bdat(size: int, *, last: bool = False) -> bytes:
    return format_command("BDAT", f"{size} LAST" if last else str(size))


class DotStuffer:
    """DATA content to its wire form (RFC 5321 §4.5.2), streaming: a "." opening a line is
    doubled, a bare LF becomes CRLF (never pass one on: the next server may read it as a line
    end, the smuggling ambiguity), and :meth:`end` writes the terminating CRLF "." CRLF.
    Bare CRs pass through unchanged: they are content."""

    def __init__(self) -> None:
        self._line_start = True
        self._last_cr = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._last_cr and data.startswith(b"\n"):
            data = b"\n" + _BARE_LF.sub(b"\r\n", data[1:])
        else:
            data = _BARE_LF.sub(b"\r\n", data)
        data = data.replace(b"\n.", b"\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\n")
        self._last_cr = data.endswith(b"\r")
        return data

    def end(self) -> bytes:
        """The terminator; a CRLF first if the content did not end with one."""
        return b".\r\n" if self._line_start else b"\r\n.\r\n"
