"""The replies the machine sends by itself (SPEC's replies table is this module)."""

from __future__ import annotations

from typing import Final

from ._events import Reply

OK: Final = Reply(True)
USER_OK: Final = Reply(True, "send PASS")
STLS_OK: Final = Reply(True, "Begin TLS negotiation")
CAPA_OK: Final = Reply(True, "Capability list follows")
UNKNOWN_COMMAND: Final = Reply(False, "unknown command")
WRONG_STATE: Final = Reply(False, "command not valid in this state")
SYNTAX: Final = Reply(False, "syntax error")
BAD_MESSAGE_NUMBER: Final = Reply(False, "invalid message number")
LINE_TOO_LONG: Final = Reply(False, "line too long")
TLS_REQUIRED: Final = Reply(False, "TLS required: use STLS first", "AUTH")
STLS_UNAVAILABLE: Final = Reply(False, "STLS not available")
APOP_UNSUPPORTED: Final = Reply(False, "APOP not supported")
USER_FIRST: Final = Reply(False, "send USER first")
MECHANISM_UNSUPPORTED: Final = Reply(False, "unsupported SASL mechanism")
AUTH_MALFORMED: Final = Reply(False, "malformed AUTH PLAIN response", "AUTH")
AUTHZ_REFUSED: Final = Reply(False, "authorization identity refused", "AUTH")
AUTH_CANCELLED: Final = Reply(False, "authentication cancelled", "AUTH")
TOO_MANY_ERRORS: Final = Reply(False, "too many errors, closing")
SHUTTING_DOWN: Final = Reply(False, "server shutting down", "SYS/TEMP")

CHALLENGE: Final = b"+ \r\n"  # RFC 5034 §4: the empty PLAIN challenge


def greeting(hostname: str) -> Reply:
    return Reply(True, f"{hostname} POP3 ready")


def closing(hostname: str) -> Reply:
    return Reply(True, f"{hostname} POP3 closing")


def capabilities(*, stls: bool, credentials: bool) -> list[str]:
    """RFC 2449 §5 (the same list in both states: in TRANSACTION TLS is always active)."""
    caps = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
    if stls:
        caps.append("STLS")
    if credentials:
        caps += ["USER", "SASL PLAIN"]
    return caps
