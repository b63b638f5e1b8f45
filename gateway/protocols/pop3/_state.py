"""States of a POP3 server session and the commands allowed in each, as data.

RFC 1939 §3: AUTHORIZATION, then TRANSACTION once a Login is accepted, then UPDATE after
QUIT in TRANSACTION. TLS_HANDSHAKE is the pause after STLS's +OK (RFC 2595 §4), CLOSED the
end. A known command missing from ``ALLOWED[state]`` gets ``-ERR`` "not valid in this state".
"""

from __future__ import annotations

import enum
from typing import Final

from ._events import Event, List, Login, Quit, Retr, Top, Uidl

__all__ = [
    "ALLOWED",
    "CREDENTIAL_COMMANDS",
    "KNOWN_COMMANDS",
    "NO_ARGUMENT_COMMANDS",
    "SUCCESS_TRANSITIONS",
    "State",
    "needs_multiline",
]


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"  # QUIT in TRANSACTION: waiting for the driver to commit deletions
    TLS_HANDSHAKE = "TLS_HANDSHAKE"  # STLS answered, waiting for tls_started()
    CLOSED = "CLOSED"


S = State

ALLOWED: Final[dict[State, frozenset[str]]] = {
    S.AUTHORIZATION: frozenset({"CAPA", "QUIT", "STLS", "USER", "PASS", "AUTH"}),
    S.TRANSACTION: frozenset(
        {"CAPA", "QUIT", "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP"}
    ),
    S.UPDATE: frozenset(),
    S.TLS_HANDSHAKE: frozenset(),
    S.CLOSED: frozenset(),
}
# APOP is known (so it gets "not supported", not "unknown"), never allowed: it needs the
# plaintext password on the server and we never take credentials in the clear anyway.
KNOWN_COMMANDS: Final = frozenset[str]().union(*ALLOWED.values(), {"APOP"})
# Refused with -ERR [AUTH] until TLS is active: no credentials are ever read in the clear.
CREDENTIAL_COMMANDS: Final = frozenset({"USER", "PASS", "AUTH", "APOP"})
NO_ARGUMENT_COMMANDS: Final = frozenset({"CAPA", "QUIT", "STLS", "NOOP", "STAT", "RSET"})

# Where a decision answered +OK leads; any -ERR leaves the state as it was, except Quit,
# which closes either way (RFC 1939 §6).
SUCCESS_TRANSITIONS: Final[dict[type[Event], State]] = {
    Login: S.TRANSACTION,
    Quit: S.CLOSED,
}


def needs_multiline(event: Event) -> bool:
    """Whether a +OK to ``event`` is a multi-line response (RFC 1939 §5)."""
    if isinstance(event, Retr | Top):
        return True
    return isinstance(event, List | Uidl) and event.msg is None
