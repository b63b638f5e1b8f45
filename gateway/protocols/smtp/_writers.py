"""Writers: replies (server role) and commands and DATA content (client role) to bytes.

The server machine formats every reply it queues with :func:`format_reply`. The command
helpers and :class:`DotStuffer` are the client machine's (``_client.py``), and the tests use
them to speak to the server machine as a real client would.
"""

from __future__ import annotations

from .._dotstuff import DotStuffer
from ._events import BodyType, Reply

__all__ = [
    "DotStuffer",
    "format_bdat",
    "format_command",
    "format_mail",
    "format_rcpt",
    "format_reply",
]


def format_reply(reply: Reply) -> bytes:
    """RFC 5321 §4.2: ``code-text`` for every line but the last, ``code text`` for the last;
    the enhanced code opens every line (RFC 2034 §3)."""
    out: list[str] = []
    last = len(reply.lines) - 1
    for i, line in enumerate(reply.lines):
        text = f"{reply.enhanced} {line}" if reply.enhanced and line else reply.enhanced or line
        if i < last:
            out.append(f"{reply.code}-{text}\r\n")
        elif text or reply.code == 334:  # RFC 4954 §4: "334" SP [base64], always the SP
            out.append(f"{reply.code} {text}\r\n")
        else:
            out.append(f"{reply.code}\r\n")  # textstring is 1*char: no SP before nothing
    return "".join(out).encode()


def format_command(verb: str, argument: str = "") -> bytes:
    """One command line. Refuses line breaks, which would smuggle a second command."""
    line = f"{verb} {argument}" if argument else verb
    if "\r" in line or "\n" in line:
        raise ValueError(f"line break in SMTP command {verb}")  # never the argument
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
