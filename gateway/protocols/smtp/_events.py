"""The vocabulary of the SMTP machine: replies, events and the two sentinels.

Events are frozen value objects so tests can say ``assert events == [...]``. They are protocol
events, never written to a log (the recorded events are the msgspec Structs of
``gateway.events``), so plain frozen dataclasses are enough.

Events come in three kinds:

* decisions, which pause the machine until the driver answers with ``send(reply)``:
  :class:`Authenticate`, :class:`MailFrom`, :class:`RcptTo`, :class:`MessageComplete`;
* :class:`StartTLS`, which pauses it until the driver calls ``tls_started()``;
* information, already answered by the machine itself: :class:`Hello`, :class:`StartData`,
  :class:`BodyData`, :class:`MessageAborted`, :class:`Quit`, :class:`ConnectionClosed`.

The client role (``_client.py``) speaks the same vocabulary the other way, as h11 does: it
``send()``s :class:`Hello`, :class:`StartTLS`, :class:`Authenticate`, :class:`MailFrom`,
:class:`RcptTo`, :class:`StartData`, :class:`BodyData` and :class:`Quit` as commands, plus the
two that have no server event (:class:`Reset`, :class:`EndOfMessage`), and gets back
:class:`Reply`, :class:`StartTLS` (the 220 to STARTTLS: run the handshake) and
:class:`ConnectionClosed`.

Every :class:`MailFrom` the driver accepts is followed by exactly one :class:`MessageComplete`
or :class:`MessageAborted`, so a driver can tie its per-message resources to that pair.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AbortReason",
    "Authenticate",
    "BodyData",
    "BodyType",
    "CloseReason",
    "ConnectionClosed",
    "EndOfMessage",
    "Event",
    "Hello",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "Quit",
    "RcptTo",
    "Reply",
    "Reset",
    "Sentinel",
    "StartData",
    "StartTLS",
]


class Sentinel(enum.Enum):
    """What ``next_event()`` returns when it has no event: ``NEED_DATA`` (feed more bytes) or
    ``PAUSED`` (answer the pending decision, or finish the TLS handshake, first)."""

    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED

# RFC 3463 §2: class.subject.detail, class 2, 4 or 5, subject and detail up to three digits.
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply (RFC 5321 §4.2): a three-digit code, an RFC 3463 enhanced status code
    (``"2.1.5"``, or None: greetings, EHLO answers, 354 and most foreign servers' replies
    carry none) and one text per line. The writer repeats the enhanced code on every line
    (RFC 2034 §3). The same type is what ``send()`` takes and what the reply reader of the
    client role returns."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code {self.code} is not 2xx-5xx (RFC 5321 §4.2)")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced):
                raise ValueError(f"{self.enhanced!r} is not an RFC 3463 status code")
            if self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")
        if not self.lines:
            raise ValueError("a reply has at least one line")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"reply text {line!r} holds a line break")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300


class BodyType(enum.StrEnum):
    """MAIL FROM ``BODY=`` (RFC 6152 §2, RFC 3030 §3)."""

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"
    BINARY_MIME = "BINARYMIME"


class AbortReason(enum.StrEnum):
    SIZE_LIMIT = "size_limit"  # over max_message_size; the machine answers 552 5.3.4
    BARE_NEWLINE = "bare_newline"  # bare LF in reject mode; a ConnectionClosed follows
    RESET = "reset"  # RSET, EHLO or HELO ended the transaction
    CLOSED = "closed"  # QUIT, EOF or a closing error ended the session mid-transaction


class CloseReason(enum.StrEnum):
    EOF = "eof"  # the client closed its side
    QUIT = "quit"  # after Quit; the 221 is already queued
    TOO_MANY_ERRORS = "too_many_errors"  # bad command budget spent: 421 4.7.0
    BARE_NEWLINE = "bare_newline"  # bare LF in reject mode: 521 5.5.2 (as Postfix)
    FORBIDDEN_COMMAND = "forbidden_command"  # an HTTP request line: 421 4.7.0
    LOCAL = "local"  # the driver closed: close() or a 421 reply to a decision


class Event:
    """Base of every event the server machine returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """EHLO or HELO, already answered with 250. ``domain`` is the client's argument as sent
    (it feeds the Received header; it is never trusted)."""

    kind: Literal["EHLO", "HELO"]
    domain: str


@dataclass(frozen=True, slots=True)
class Authenticate(Event):
    """Decision: AUTH (RFC 4954) with its SASL exchange done, under TLS only. Reply 235 to
    accept the credentials, 535 to refuse them, 454 for a temporary failure (or another
    4xx/5xx). The password never shows in a repr."""

    mechanism: Literal["PLAIN", "LOGIN"]
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """Decision: MAIL FROM (RFC 5321 §4.1.1.2). ``address`` is "" for the null sender.
    Parameters are already validated; SIZE above the limit never gets here."""

    address: str
    size: int | None = None
    body: BodyType | None = None
    smtputf8: bool = False


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """Decision: RCPT TO (RFC 5321 §4.1.1.3), with any source route already dropped."""

    address: str


@dataclass(frozen=True, slots=True)
class StartData(Event):
    """The message content begins: DATA answered with 354, or (``chunked``) the first BDAT
    chunk."""

    chunked: bool = False


@dataclass(frozen=True, slots=True)
class BodyData(Event):
    """A piece of the message content, dot-unstuffed (DATA) or raw (BDAT)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageComplete(Event):
    """Decision: the content ended (CRLF.CRLF, or the end of ``BDAT n LAST``). Reply 250
    once the message is durable, or 451/452/554."""


@dataclass(frozen=True, slots=True)
class MessageAborted(Event):
    """The open transaction ended without a message: drop what was received for it."""

    reason: AbortReason


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """The 220 is queued: write it, run the TLS handshake, then call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT; the 221 is queued. Write it and close."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session is over. ``reply`` (if any) is already queued in ``data_to_send()``; it is
    here for the log. ``next_event()`` keeps returning this event."""

    reason: CloseReason
    reply: Reply | None = None


# -- client-role commands with no server event ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """Client role: RSET (RFC 5321 §4.1.1.5), which ends any transaction. (The server role
    answers RSET by itself: a transaction it ends comes out as MessageAborted(RESET).)"""


@dataclass(frozen=True, slots=True)
class EndOfMessage(Event):
    """Client role: the last of the content and its end, in one write: for DATA ``data``
    dot-stuffed and CRLF "." CRLF, for BDAT one ``BDAT n LAST`` chunk (RFC 3030 §2). The reply
    is the server's verdict on the message."""

    data: bytes = b""
