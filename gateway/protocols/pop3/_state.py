"""States of a POP3 server session and the commands allowed in each, as data.

RFC 1939 §3: AUTHORIZATION, then TRANSACTION once a Login is accepted, then UPDATE after
QUIT in TRANSACTION. TLS_HANDSHAKE is the pause after STLS's +OK (RFC 2595 §4), CLOSED the
end. A known command missing from ``ALLOWED[state]`` gets ``-ERR`` "not valid in this state".

The client role has its own table at the end: ``CLIENT_COMMANDS[state]`` are the commands its
``send()`` takes, ``CLIENT_SUCCESS_TRANSITIONS`` where a +OK to each leads.
"""

from __future__ import annotations

import enum
from typing import Final

from ._events import (
    Capa,
    Dele,
    Event,
    FetchUidls,
    List,
    Login,
    Noop,
    Quit,
    Retr,
    Rset,
    StartTLS,
    Stat,
    Top,
    Uidl,
)

__all__ = [
    "ALLOWED",
    "CLIENT_COMMANDS",
    "CLIENT_SUCCESS_TRANSITIONS",
    "CREDENTIAL_COMMANDS",
    "KNOWN_COMMANDS",
    "NO_ARGUMENT_COMMANDS",
    "SUCCESS_TRANSITIONS",
    "ClientState",
    "Greeting",
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
    """Whether a +OK to ``event`` (a server event, or a client command) is a multi-line
    response (RFC 1939 §5, RFC 2449 §5 for CAPA)."""
    if isinstance(event, Retr | Top | Capa):
        return True
    return isinstance(event, List | Uidl | FetchUidls) and event.msg is None


# -- the client role (``_client.py``) ----------------------------------------------------------


class ClientState(enum.Enum):
    """Where a client session is, as the replies it has read have settled it (lock-step:
    one command at a time, its whole response read before the next)."""

    GREETING = "GREETING"  # connected: the greeting is due (RFC 1939 §4)
    AUTHORIZATION = "AUTHORIZATION"
    TLS_HANDSHAKE = "TLS_HANDSHAKE"  # STLS answered +OK: handshake, then tls_started()
    TRANSACTION = "TRANSACTION"  # logged in
    CLOSED = "CLOSED"  # QUIT answered, the server closed, or it broke the protocol


class Greeting(Event):
    """The status line the client waits for before sending anything; no command."""

    __slots__ = ()


CS = ClientState

# The commands ``send()`` takes in each state; any other raises LocalProtocolError.
CLIENT_COMMANDS: Final[dict[ClientState, frozenset[type[Event]]]] = {
    CS.GREETING: frozenset(),
    CS.AUTHORIZATION: frozenset({Capa, StartTLS, Login, Quit}),
    CS.TRANSACTION: frozenset(
        {Capa, Stat, List, Uidl, FetchUidls, Retr, Top, Dele, Rset, Noop, Quit}
    ),
    CS.TLS_HANDSHAKE: frozenset(),
    CS.CLOSED: frozenset(),
}
# Where a +OK leads; -ERR stays, except QUIT (closes either way, RFC 1939 §6). A -ERR to the
# greeting or to STLS ends the session (the client machine raises).
CLIENT_SUCCESS_TRANSITIONS: Final[dict[type[Event], ClientState]] = {
    Greeting: CS.AUTHORIZATION,
    StartTLS: CS.TLS_HANDSHAKE,
    Login: CS.TRANSACTION,
    Quit: CS.CLOSED,
}
