"""Settings of one server session, and every limit with its reason.

The driver builds :class:`SMTPSettings` from the configuration (``gateway.config.SMTPConfig``
and the host name); the machine never reads configuration files itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "BDAT_SIZE_DIGITS",
    "BODY_PIECE_SIZE",
    "COMMAND_LINE_LIMIT",
    "DEFAULT_BAD_COMMAND_BUDGET",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_RECIPIENTS",
    "DOMAIN_LIMIT",
    "LOCAL_PART_LIMIT",
    "PATH_LIMIT",
    "REPLY_LINES_LIMIT",
    "REPLY_LINE_LIMIT",
    "REPLY_SIZE_LIMIT",
    "RFC_COMMAND_LINE_LIMIT",
    "RFC_TEXT_LINE_LIMIT",
    "SMTPSettings",
]

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. ESMTP parameters
# (RFC 5321 §4.5.3.1.4 itself allows extensions to raise it) and SMTPUTF8 addresses go past
# it in practice, so the default accepts 4096 (Postfix: line_length_limit = 2048). Never less
# than the RFC's 512.
RFC_COMMAND_LINE_LIMIT: Final = 512
COMMAND_LINE_LIMIT: Final = 4096
_MAX_COMMAND_LINE_LIMIT: Final = 65536

# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets with its CRLF. Real mail breaks this
# (long HTML lines, unfolded headers), and refusing it loses mail, so it is NOT enforced: the
# DATA reader streams any line length with a carry-over of at most two octets.
RFC_TEXT_LINE_LIMIT: Final = 1000

# BodyData pieces hold the content of at most this many received octets (a piece can be up to
# twice this long after bare-LF normalization adds CRs). Matches the intake's seal threshold.
BODY_PIECE_SIZE: Final = 64 * 1024

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets including "<", ">" and any route.
PATH_LIMIT: Final = 256
# RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
DOMAIN_LIMIT: Final = 255
# RFC 5321 §4.5.3.1.1 says 64 octets, but SRS, VERP and BATV addresses exceed it and Postfix
# enforces nothing; the local part is accepted up to what PATH_LIMIT leaves. Kept for reference.
LOCAL_PART_LIMIT: Final = 64

# RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients; a journal target needs
# few, so 1000 bounds the envelope (and its log record) generously.
DEFAULT_MAX_RECIPIENTS: Final = 1000
# aiosmtpd and Postfix (smtpd_hard_error_limit = 20) both close after about this many errors.
DEFAULT_BAD_COMMAND_BUDGET: Final = 20
DEFAULT_MAX_MESSAGE_SIZE: Final = 100 * 1024 * 1024

# RFC 3030 §2: chunk-size is 1*DIGIT. Twenty digits hold any 64-bit size; more is nonsense.
BDAT_SIZE_DIGITS: Final = 20

# Client role. RFC 5321 §4.5.3.1.5 allows 512 octets a reply line; foreign servers send longer
# (long EHLO keywords, verbose 5xx texts). A multi-line reply of more lines than an EHLO list
# could ever have is an attack or a desynchronized stream: REPLY_LINES_LIMIT is also the bound
# on EHLO lines (one per extension, RFC 5321 §4.1.1.1; real servers list 10 to 20). A whole
# reply is bounded apart from its lines (RFC 5321 sets no limit; Postfix's longest EHLO answer
# is under 400 octets), so the reader never holds more than REPLY_SIZE_LIMIT of reply text.
REPLY_LINE_LIMIT: Final = 4096
REPLY_LINES_LIMIT: Final = 100
REPLY_SIZE_LIMIT: Final = 64 * 1024

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?\Z|\[[0-9A-Fa-f:.]+\]\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class SMTPSettings:
    """One server session's settings.

    ``tls_active``: the session runs on TLS from the first byte (SMTPS, RFC 8314).
    ``starttls_offered``: EHLO advertises STARTTLS while the session is in the clear.
    ``require_tls``: commands other than EHLO, STARTTLS, NOOP and QUIT get 530 5.7.0 while
    the session is in the clear (RFC 3207 §4).
    ``auth_offered``: AUTH PLAIN and LOGIN (RFC 4954) are offered and taken once TLS is up,
    never in the clear (538 5.7.11 before).
    ``bare_newline``: what a bare LF means (see the DATA reader): "normalize" treats it as a
    line end and stores CRLF, "reject" answers 521 5.5.2 and closes.
    """

    hostname: str
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    tls_active: bool = False
    starttls_offered: bool = False
    require_tls: bool = False
    auth_offered: bool = False
    bare_newline: Literal["normalize", "reject"] = "normalize"
    bad_command_budget: int = DEFAULT_BAD_COMMAND_BUDGET
    max_line_length: int = COMMAND_LINE_LIMIT

    def __post_init__(self) -> None:
        if not _HOSTNAME.match(self.hostname) or len(self.hostname) > DOMAIN_LIMIT:
            raise ValueError(f"{self.hostname!r} is not a host name or address literal")
        if self.max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        if self.max_recipients < 1:
            raise ValueError("max_recipients must be positive")
        if self.bad_command_budget < 0:
            raise ValueError("bad_command_budget must not be negative")
        if not RFC_COMMAND_LINE_LIMIT <= self.max_line_length <= _MAX_COMMAND_LINE_LIMIT:
            raise ValueError(
                f"max_line_length must be {RFC_COMMAND_LINE_LIMIT}-{_MAX_COMMAND_LINE_LIMIT}"
            )
        if self.bare_newline not in ("normalize", "reject"):
            raise ValueError("bare_newline is 'normalize' or 'reject'")
        if self.require_tls and not (self.tls_active or self.starttls_offered):
            raise ValueError("require_tls needs TLS: set tls_active or starttls_offered")
        if self.auth_offered and not (self.tls_active or self.starttls_offered):
            raise ValueError("auth_offered needs TLS: set tls_active or starttls_offered")
