"""Every reply the SMTP server sends, as named constants (aiosmtpd's ``statuscodes.py`` idea).

The machine answers with the constants in the first groups by itself; the driver answers
decisions with the ones marked "driver". Enhanced status codes follow RFC 3463 and are sent on
every reply but the greeting, the EHLO/HELO answer and 354 (RFC 2034 §3). Texts stay ASCII and
short; the code, not the text, is the contract (SPEC.md section 12 lists them all).

Replies that carry a value (the host name, a queue id, a chunk size) are built by the
functions at the end, so the sanity test can still check them.
"""

from __future__ import annotations

from typing import Final

from ._events import Reply

__all__ = [
    "ACCESS_DENIED",
    "ALREADY_AUTHENTICATED",
    "AUTH_CANCELLED",
    "AUTH_FAILED",
    "AUTH_LINE_TOO_LONG",
    "AUTH_MALFORMED",
    "AUTH_MECHANISM",
    "AUTH_NEEDS_TLS",
    "AUTH_OK",
    "AUTH_TEMPORARY",
    "BAD_BODY",
    "BAD_CHARACTERS",
    "BAD_PARAMETER",
    "BAD_RECIPIENT",
    "BAD_SENDER",
    "BAD_SEQUENCE",
    "BAD_SIZE",
    "BARE_NEWLINE",
    "BINARYMIME_NEEDS_BDAT",
    "BYE",
    "CROSS_PROTOCOL",
    "DATA_AFTER_BDAT",
    "DUPLICATE_PARAMETER",
    "EHLO_FIRST",
    "HELLO_FIRST",
    "HELP",
    "INSUFFICIENT_STORAGE",
    "IN_TRANSACTION",
    "LINE_TOO_LONG",
    "LOCAL_ERROR",
    "MAILBOX_TEMPORARILY_UNAVAILABLE",
    "MESSAGE_TOO_BIG",
    "NEED_MAIL",
    "NESTED_MAIL",
    "NON_ASCII_ADDRESS",
    "NOT_IMPLEMENTED",
    "NO_ARGUMENTS",
    "NO_VALID_RECIPIENTS",
    "OK",
    "READY_FOR_TLS",
    "RECIPIENT_OK",
    "RECIPIENT_PATH_TOO_LONG",
    "SENDER_OK",
    "SENDER_PATH_TOO_LONG",
    "SHUTTING_DOWN",
    "START_MAIL_INPUT",
    "SYNTAX_AUTH",
    "SYNTAX_BDAT",
    "SYNTAX_EHLO",
    "SYNTAX_HELO",
    "SYNTAX_MAIL",
    "SYNTAX_RCPT",
    "SYNTAX_VRFY",
    "TIMEOUT",
    "TLS_ACTIVE",
    "TLS_REQUIRED",
    "TOO_MANY_ERRORS",
    "TOO_MANY_RECIPIENTS",
    "TRANSACTION_FAILED",
    "UNKNOWN_RECIPIENT",
    "UNRECOGNIZED",
    "UNSUPPORTED_PARAMETER",
    "VRFY_CANNOT",
    "auth_challenge",
    "chunk_received",
    "ehlo",
    "greeting",
    "helo",
    "message_accepted",
]


def _r(code: int, enhanced: str | None, text: str) -> Reply:
    return Reply(code, enhanced, (text,))


# -- positive, sent by the machine ---------------------------------------------------------
OK: Final = _r(250, "2.0.0", "Ok")  # NOOP, RSET
HELP: Final = _r(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY QUIT")
# RFC 5321 §3.5.3: 252 when the server will not verify but would accept the message.
VRFY_CANNOT: Final = _r(252, "2.5.0", "Cannot VRFY user, but will accept message")
BYE: Final = _r(221, "2.0.0", "Bye")
READY_FOR_TLS: Final = _r(220, "2.0.0", "Ready to start TLS")  # RFC 3207 §4
START_MAIL_INPUT: Final = _r(354, None, "End data with <CR><LF>.<CR><LF>")  # RFC 5321 §4.3.2

# -- positive, sent by the driver -----------------------------------------------------------
SENDER_OK: Final = _r(250, "2.1.0", "Ok")
RECIPIENT_OK: Final = _r(250, "2.1.5", "Ok")
AUTH_OK: Final = _r(235, "2.7.0", "Authentication successful")  # RFC 4954 §6

# -- AUTH (RFC 4954 §4 and §6) ----------------------------------------------------------------
AUTH_TEMPORARY: Final = _r(454, "4.7.0", "Temporary authentication failure")  # driver
AUTH_FAILED: Final = _r(535, "5.7.8", "Authentication credentials invalid")  # driver
AUTH_NEEDS_TLS: Final = _r(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_MECHANISM: Final = _r(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED: Final = _r(501, "5.0.0", "Authentication cancelled")
AUTH_MALFORMED: Final = _r(501, "5.5.2", "Cannot decode response")
AUTH_LINE_TOO_LONG: Final = _r(500, "5.5.6", "Authentication exchange line is too long")
ALREADY_AUTHENTICATED: Final = _r(503, "5.5.1", "Already authenticated")
SYNTAX_AUTH: Final = _r(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")

# -- transient (4xx) ------------------------------------------------------------------------
SHUTTING_DOWN: Final = _r(421, "4.3.2", "Service shutting down, closing connection")  # driver
TIMEOUT: Final = _r(421, "4.4.2", "Timeout, closing connection")  # driver (§4.5.3.2)
TOO_MANY_ERRORS: Final = _r(421, "4.7.0", "Too many errors, closing connection")
CROSS_PROTOCOL: Final = _r(421, "4.7.0", "This is an SMTP server, closing connection")
MAILBOX_TEMPORARILY_UNAVAILABLE: Final = _r(450, "4.2.1", "Mailbox temporarily unavailable")
LOCAL_ERROR: Final = _r(451, "4.3.0", "Local error in processing")  # driver
INSUFFICIENT_STORAGE: Final = _r(452, "4.3.1", "Insufficient system storage")  # driver
TOO_MANY_RECIPIENTS: Final = _r(452, "4.5.3", "Too many recipients")  # RFC 5321 §4.5.3.1.10

# -- permanent (5xx): syntax --------------------------------------------------------------
UNRECOGNIZED: Final = _r(500, "5.5.2", "Command not recognized")
LINE_TOO_LONG: Final = _r(500, "5.5.2", "Line too long")  # RFC 5321 §4.5.3.1.10
BAD_CHARACTERS: Final = _r(500, "5.5.2", "Invalid characters in command")
SYNTAX_EHLO: Final = _r(501, "5.5.4", "Syntax: EHLO <domain>")
SYNTAX_HELO: Final = _r(501, "5.5.4", "Syntax: HELO <domain>")
SYNTAX_MAIL: Final = _r(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
SYNTAX_RCPT: Final = _r(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_BDAT: Final = _r(501, "5.5.4", "Syntax: BDAT <size> [LAST]")
SYNTAX_VRFY: Final = _r(501, "5.5.4", "Syntax: VRFY <address>")
NO_ARGUMENTS: Final = _r(501, "5.5.4", "No arguments allowed")
BAD_SENDER: Final = _r(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT: Final = _r(501, "5.1.3", "Bad recipient address syntax")
SENDER_PATH_TOO_LONG: Final = _r(501, "5.1.7", "Path too long")  # RFC 5321 §4.5.3.1.3
RECIPIENT_PATH_TOO_LONG: Final = _r(501, "5.1.3", "Path too long")
BAD_PARAMETER: Final = _r(501, "5.5.4", "Bad parameter syntax")
DUPLICATE_PARAMETER: Final = _r(501, "5.5.4", "Duplicate parameter")
BAD_SIZE: Final = _r(501, "5.5.4", "Bad SIZE parameter")
BAD_BODY: Final = _r(501, "5.5.4", "Bad BODY parameter")
NOT_IMPLEMENTED: Final = _r(502, "5.5.1", "Command not implemented")
# RFC 5321 §4.1.1.11: parameters not recognized or not implemented.
UNSUPPORTED_PARAMETER: Final = _r(555, "5.5.4", "Unsupported parameter")
NON_ASCII_ADDRESS: Final = _r(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")  # RFC 6531

# -- permanent (5xx): sequence and policy ---------------------------------------------------
BAD_SEQUENCE: Final = _r(503, "5.5.1", "Bad sequence of commands")
HELLO_FIRST: Final = _r(503, "5.5.1", "Send HELO/EHLO first")
EHLO_FIRST: Final = _r(503, "5.5.1", "Send EHLO first")
NESTED_MAIL: Final = _r(503, "5.5.1", "Sender already given")
NEED_MAIL: Final = _r(503, "5.5.1", "Need MAIL command")
DATA_AFTER_BDAT: Final = _r(503, "5.5.1", "DATA not allowed after BDAT")  # RFC 3030 §2
BINARYMIME_NEEDS_BDAT: Final = _r(503, "5.5.1", "BODY=BINARYMIME requires BDAT")  # RFC 3030 §3
IN_TRANSACTION: Final = _r(503, "5.5.1", "Not allowed during a mail transaction")
TLS_ACTIVE: Final = _r(503, "5.5.1", "TLS already active")
TLS_REQUIRED: Final = _r(530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 §4
NO_VALID_RECIPIENTS: Final = _r(554, "5.5.1", "No valid recipients")  # RFC 5321 §3.3
MESSAGE_TOO_BIG: Final = _r(552, "5.3.4", "Message size exceeds fixed limit")  # RFC 1870 §6
# Postfix's reply for smtpd_forbid_bare_newline = reject; the connection is closed after it.
BARE_NEWLINE: Final = _r(521, "5.5.2", "Bare <LF> received, closing connection")

# -- permanent (5xx), sent by the driver -----------------------------------------------------
UNKNOWN_RECIPIENT: Final = _r(550, "5.1.1", "No such mailbox")
ACCESS_DENIED: Final = _r(550, "5.7.1", "Access denied")
TRANSACTION_FAILED: Final = _r(554, "5.3.0", "Transaction failed")


def greeting(hostname: str) -> Reply:
    """RFC 5321 §4.2: the greeting names the server; no enhanced code (RFC 2034 §3)."""
    return Reply(220, None, (f"{hostname} ESMTP ready",))


def ehlo(hostname: str, extensions: tuple[str, ...]) -> Reply:
    """RFC 5321 §4.1.1.1: the first line names the server, one extension per line after."""
    return Reply(250, None, (hostname, *extensions))


def helo(hostname: str) -> Reply:
    return Reply(250, None, (hostname,))


def auth_challenge(challenge: str) -> Reply:
    """RFC 4954 §4: "334" SP base64 challenge (empty for PLAIN), no enhanced code."""
    return Reply(334, None, (challenge,))


def chunk_received(size: int) -> Reply:
    """RFC 3030 §2: the answer to a BDAT chunk that is not the last."""
    return Reply(250, "2.0.0", (f"{size} octets received",))


def message_accepted(queue_id: str) -> Reply:
    """Driver: the message is durable."""
    return Reply(250, "2.0.0", (f"Ok: queued as {queue_id}",))
