"""The vocabulary of the POP3 machine: replies, events, sentinels and settings.

Server events come in three kinds:

* decisions, which pause the machine until the driver answers (``send()``, or for the
  multi-line ones ``send_lines``/``send_multiline``/``send_stream_*``): :class:`Login`,
  :class:`Stat`, :class:`List`, :class:`Uidl`, :class:`Retr`, :class:`Top`, :class:`Dele`,
  :class:`Rset`, :class:`Quit`;
* :class:`StartTLS`, which pauses it until ``tls_started()``;
* :class:`ConnectionClosed`, the last event, repeated forever.

The client role (``_client.py``) speaks the same vocabulary the other way, as h11 does: it
``send()``s :class:`Stat`, :class:`List`, :class:`Uidl`, :class:`Retr`, :class:`Top`,
:class:`Dele`, :class:`Rset`, :class:`Noop`, :class:`Quit`, :class:`StartTLS` and
:class:`Login` as commands, plus :class:`Capa` and :class:`FetchUidls`, which have no server
event, and gets back :class:`Reply`, :class:`BodyData` and :class:`BodyEnd` (a relayed
multi-line body), :class:`Capabilities`, :class:`UidlListing`, :class:`StartTLS` and
:class:`ConnectionClosed`. Its reply reader returns :class:`Reply`, :class:`Continuation`,
:class:`BodyData` and :class:`BodyEnd`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AUTH_LINE_LIMIT",
    "BODY_PIECE_SIZE",
    "CAPA_SIZE_LIMIT",
    "COMMAND_LINE_LIMIT",
    "DEFAULT_BAD_COMMAND_BUDGET",
    "NEED_DATA",
    "PAUSED",
    "REPLY_LINE_LIMIT",
    "UIDL_LISTING_LIMIT",
    "BodyData",
    "BodyEnd",
    "Capa",
    "Capabilities",
    "CloseReason",
    "ConnectionClosed",
    "Continuation",
    "Dele",
    "Event",
    "FetchUidls",
    "List",
    "Login",
    "Noop",
    "POP3Settings",
    "Quit",
    "Reply",
    "Retr",
    "Rset",
    "Sentinel",
    "StartTLS",
    "Stat",
    "Top",
    "Uidl",
    "UidlListing",
]

# RFC 2449 §4: a command line is at most 255 octets including the CRLF.
COMMAND_LINE_LIMIT: Final = 255
# RFC 2449 §4: a response's first line is at most 512 octets including the CRLF.
REPLY_LINE_LIMIT: Final = 512
# RFC 5034 §4 lifts the 255-octet limit for AUTH continuation lines; we still bound them.
# 2048 octets of base64 carry a 1536-octet PLAIN message: room for long tokens.
AUTH_LINE_LIMIT: Final = 2048
# aiosmtpd-style budget of refused commands before the machine closes the session.
DEFAULT_BAD_COMMAND_BUDGET: Final = 10
# Largest BodyData piece the client reader returns, so its buffer stays bounded.
BODY_PIECE_SIZE: Final = 65536
# Client role. RFC 2449 §5 sets no bound on a CAPA listing; real ones are a dozen short lines
# (Dovecot's is under 200 octets), so a larger one is refused rather than held.
CAPA_SIZE_LIMIT: Final = 64 * 1024
# Client role: a UIDL listing (RFC 1939 §7: "n uid" per message, uid 1-70 octets) is kept
# to map message numbers to UIDLs only up to this size (about 200,000 messages); a larger
# one is read to its end and dropped, and each message's UIDL asked with "UIDL n" instead.
UIDL_LISTING_LIMIT: Final = 8 * 1024 * 1024


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED

# RFC 2449 §8: resp-code = "[" resp-level *("/" resp-level) "]", resp-level = 1*<any CHAR
# except "]" and "/" and SP and CTLs> (we read schar as printable ASCII minus those).
_LEVEL = r"[!-.0-\\^-~]+"
RESP_CODE: Final = re.compile(rf"{_LEVEL}(?:/{_LEVEL})*\Z")


@dataclass(frozen=True, slots=True)
class Reply:
    """One status line (RFC 1939 §3): ``+OK`` or ``-ERR``, an optional RFC 2449 response
    code (``"AUTH"``, ``"IN-USE"``, ``"SYS/TEMP"``) written as ``[CODE]``, and a text. The
    same type is what ``send()`` takes and what the client reader returns."""

    ok: bool
    text: str = ""
    code: str | None = None

    def __post_init__(self) -> None:
        if self.code is not None and not RESP_CODE.match(self.code):
            raise ValueError(f"{self.code!r} is not an RFC 2449 response code")
        if any(c in self.text for c in "\r\n\0"):
            raise ValueError(f"reply text {self.text!r} holds CR, LF or NUL")
        length = (
            (3 if self.ok else 4)
            + (len(self.code) + 3 if self.code else 0)
            + (len(self.text.encode()) + 1 if self.text else 0)
            + 2
        )
        if length > REPLY_LINE_LIMIT:
            raise ValueError(f"reply line of {length} octets > {REPLY_LINE_LIMIT} (RFC 2449 §4)")


@dataclass(frozen=True, slots=True)
class POP3Settings:
    hostname: str
    tls_active: bool  # implicit TLS (port 995), or the driver already did the handshake
    stls_offered: bool  # offer STLS (RFC 2595) while in the clear
    bad_command_budget: int = DEFAULT_BAD_COMMAND_BUDGET
    max_line_length: int = COMMAND_LINE_LIMIT

    def __post_init__(self) -> None:
        if not 6 <= self.max_line_length <= AUTH_LINE_LIMIT:
            raise ValueError("max_line_length must be between 6 and AUTH_LINE_LIMIT")
        if self.bad_command_budget < 1:
            raise ValueError("bad_command_budget must be at least 1")
        if any(c in self.hostname for c in "\r\n\0"):
            raise ValueError("hostname holds CR, LF or NUL")


class CloseReason(enum.StrEnum):
    EOF = "eof"  # the client closed; in TRANSACTION no deletion is committed (RFC 1939 §6)
    QUIT = "quit"  # QUIT answered (by the machine in AUTHORIZATION, by the driver after UPDATE)
    TOO_MANY_ERRORS = "too_many_errors"  # bad command budget spent
    LOCAL = "local"  # the driver called close()


class Event:
    """Base of every event the machines return."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Login(Event):
    """Decision: credentials from USER+PASS or AUTH PLAIN (never in the clear). +OK moves
    to TRANSACTION; answer -ERR with code AUTH, IN-USE or SYS/TEMP otherwise."""

    username: str
    password: str
    mechanism: str  # "USER" or "PLAIN"


@dataclass(frozen=True, slots=True)
class Stat(Event):
    """Decision: STAT; answer ``+OK nn mm``."""


@dataclass(frozen=True, slots=True)
class List(Event):
    """Decision: LIST. ``msg`` None wants a multi-line listing (``send_lines``)."""

    msg: int | None


@dataclass(frozen=True, slots=True)
class Uidl(Event):
    """Decision: UIDL (RFC 1939 §7). ``msg`` None wants a multi-line listing."""

    msg: int | None


@dataclass(frozen=True, slots=True)
class Retr(Event):
    """Decision: RETR; +OK only multi-line (``send_stream_*`` or ``send_multiline``)."""

    msg: int


@dataclass(frozen=True, slots=True)
class Top(Event):
    """Decision: TOP (RFC 1939 §7): the headers, the blank line and ``lines`` body lines."""

    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Dele(Event):
    """Decision: DELE: mark the message deleted (committed only by Quit)."""

    msg: int


@dataclass(frozen=True, slots=True)
class Rset(Event):
    """Decision: RSET: unmark every deleted message."""


@dataclass(frozen=True, slots=True)
class Noop(Event):
    """Decision: NOOP in TRANSACTION: answer +OK (a proxy relays it, keeping the upstream
    session from timing out)."""


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """Decision: QUIT in TRANSACTION; the session is in UPDATE (RFC 1939 §6). Commit the
    deletions, then answer +OK (or -ERR if some were not removed); the machine closes."""


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STLS answered +OK: write it, run the handshake, then call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session is over; ``reply`` (if any) is already queued in ``data_to_send()``."""

    reason: CloseReason
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class Continuation(Event):
    """Client role: a ``+ `` SASL challenge line (RFC 5034 §4); ``text`` is the base64."""

    text: str


@dataclass(frozen=True, slots=True)
class BodyData(Event):
    """Client role: a piece of a multi-line response, dot-unstuffed, CRLFs kept."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd(Event):
    """Client role: the ``.`` CRLF that ends a multi-line response."""


# -- client-role commands and events with no server counterpart ------------------------------


@dataclass(frozen=True, slots=True)
class Capa(Event):
    """Client role: CAPA (RFC 2449 §5); the answer is one :class:`Capabilities` event."""


@dataclass(frozen=True, slots=True)
class FetchUidls(Event):
    """Client role: UIDL for the client itself, parsed (where :class:`Uidl` relays the
    listing as a body): ``msg`` None asks for the listing, kept up to ``limit`` octets;
    ``msg`` n sends ``UIDL n``. The answer is one :class:`UidlListing` event."""

    msg: int | None = None
    limit: int = UIDL_LISTING_LIMIT


@dataclass(frozen=True, slots=True)
class Capabilities(Event):
    """Client role: the answer to CAPA. ``capabilities`` maps each (upper-cased) capability
    to its arguments; empty when the server answered -ERR (RFC 2449 §5: a server without
    CAPA)."""

    reply: Reply
    capabilities: dict[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class UidlListing(Event):
    """Client role: the answer to :class:`FetchUidls`: message number -> UIDL, for the
    lines of the form ``n uid`` (RFC 1939 §7; any other line is left out, so its message has
    no UIDL). ``complete`` is False when a listing over its limit was read and dropped."""

    reply: Reply
    uidls: dict[int, str]
    complete: bool = True
