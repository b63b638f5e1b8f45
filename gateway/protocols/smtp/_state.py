"""States of a server session and the transition table, as data (h11's ``_state.py``).

A session is in exactly one :class:`State`. In the command states a line reader runs; in
``DATA`` the dot-unstuffing reader and in ``BDAT`` the counted reader (``_readers.py``).

``TRANSITIONS[state]`` lists the commands that are in sequence in that state and the state a
*successful* command leads to. MAIL and RCPT succeed only when the driver answers 2xx; a
command missing from the row gets ``SEQUENCE_REPLIES.get((state, verb), BAD_SEQUENCE)``
(RFC 5321 §4.1.4 and §3.3 for the order of commands, RFC 3030 §2 for BDAT, RFC 3207 §4.2
for STARTTLS).

The client role has its own table at the end (h11 keeps both roles in one ``_state.py``):
``CLIENT_COMMANDS[state]`` are the commands its ``send()`` takes, ``CLIENT_TRANSITIONS`` where
the reply to each leads.
"""

from __future__ import annotations

import enum
from typing import Final

from . import _replies as R
from ._events import (
    Authenticate,
    BodyData,
    EndOfMessage,
    Event,
    Hello,
    MailFrom,
    MessageComplete,
    Quit,
    RcptTo,
    Reply,
    Reset,
    StartData,
    StartTLS,
)

__all__ = [
    "ALLOWED_BEFORE_STARTTLS",
    "BUDGETED_CODES",
    "CLIENT_COMMANDS",
    "CLIENT_TRANSITIONS",
    "COMMAND_STATES",
    "DECISION_SUCCESS",
    "FORBIDDEN_COMMANDS",
    "KNOWN_COMMANDS",
    "MUST_SUCCEED",
    "SEQUENCE_REPLIES",
    "TRANSACTION_STATES",
    "TRANSITIONS",
    "UNIMPLEMENTED_COMMANDS",
    "ClientState",
    "Greeting",
    "State",
]


class State(enum.Enum):
    CONNECTED = "CONNECTED"  # the greeting is not sent yet
    GREETED = "GREETED"  # waiting for EHLO/HELO
    READY = "READY"  # EHLO/HELO done, no transaction
    MAIL = "MAIL"  # sender accepted, no recipient yet
    RCPT = "RCPT"  # at least one recipient accepted
    DATA = "DATA"  # reading DATA content up to CRLF.CRLF
    BDAT = "BDAT"  # reading the octets of one BDAT chunk
    CHUNKED = "CHUNKED"  # between BDAT chunks: the content has begun
    AUTH = "AUTH"  # 334 sent to AUTH: reading the client's SASL response line
    TLS_HANDSHAKE = "TLS_HANDSHAKE"  # 220 sent to STARTTLS, waiting for tls_started()
    CLOSED = "CLOSED"


S = State

# States that read command lines.
COMMAND_STATES: Final = frozenset({S.GREETED, S.READY, S.MAIL, S.RCPT, S.CHUNKED})
# States with an open transaction (a MailFrom the driver accepted).
TRANSACTION_STATES: Final = frozenset({S.MAIL, S.RCPT, S.DATA, S.BDAT, S.CHUNKED})

# Commands every command state takes, and where they lead. EHLO/HELO and RSET end a
# transaction (RFC 5321 §4.1.4, §4.1.1.5); RSET before any hello leaves the session un-greeted.
_ANYWHERE: Final[dict[str, State]] = {
    "EHLO": S.READY,
    "HELO": S.READY,
    "RSET": S.READY,
    "NOOP": S.READY,  # NOOP, HELP and VRFY stay where they are (see below)
    "HELP": S.READY,
    "VRFY": S.READY,
    "QUIT": S.CLOSED,
}


def _row(state: State, extra: dict[str, State]) -> dict[str, State]:
    row = dict(_ANYWHERE)
    for stay in ("NOOP", "HELP", "VRFY"):
        row[stay] = state
    if state is S.GREETED:
        row["RSET"] = S.GREETED
    row.update(extra)
    return row


TRANSITIONS: Final[dict[State, dict[str, State]]] = {
    S.CONNECTED: {},
    S.GREETED: _row(S.GREETED, {}),
    S.READY: _row(S.READY, {"MAIL": S.MAIL, "STARTTLS": S.TLS_HANDSHAKE, "AUTH": S.READY}),
    S.MAIL: _row(S.MAIL, {"RCPT": S.RCPT}),
    S.RCPT: _row(S.RCPT, {"RCPT": S.RCPT, "DATA": S.DATA, "BDAT": S.BDAT}),
    S.DATA: {},
    S.BDAT: {},
    S.CHUNKED: _row(S.CHUNKED, {"BDAT": S.BDAT}),
    S.AUTH: {},
    S.TLS_HANDSHAKE: {},
    S.CLOSED: {},
}

# The reply to a command that is out of sequence, where a more telling one than the generic
# R.BAD_SEQUENCE exists.
SEQUENCE_REPLIES: Final[dict[tuple[State, str], Reply]] = {
    (S.GREETED, "MAIL"): R.HELLO_FIRST,
    (S.GREETED, "RCPT"): R.HELLO_FIRST,
    (S.GREETED, "DATA"): R.HELLO_FIRST,
    (S.GREETED, "BDAT"): R.HELLO_FIRST,
    (S.GREETED, "STARTTLS"): R.EHLO_FIRST,
    (S.GREETED, "AUTH"): R.EHLO_FIRST,
    (S.READY, "RCPT"): R.NEED_MAIL,
    (S.READY, "DATA"): R.NEED_MAIL,
    (S.READY, "BDAT"): R.NEED_MAIL,
    (S.MAIL, "MAIL"): R.NESTED_MAIL,
    (S.RCPT, "MAIL"): R.NESTED_MAIL,
    (S.CHUNKED, "MAIL"): R.NESTED_MAIL,
    # RFC 5321 §3.3: DATA with no accepted recipient may get 503 or 554; 554 says why.
    (S.MAIL, "DATA"): R.NO_VALID_RECIPIENTS,
    (S.MAIL, "BDAT"): R.NO_VALID_RECIPIENTS,
    (S.CHUNKED, "DATA"): R.DATA_AFTER_BDAT,
    (S.CHUNKED, "RCPT"): R.IN_TRANSACTION,
    (S.MAIL, "STARTTLS"): R.IN_TRANSACTION,
    (S.RCPT, "STARTTLS"): R.IN_TRANSACTION,
    (S.CHUNKED, "STARTTLS"): R.IN_TRANSACTION,
    # RFC 4954 §4: AUTH is not permitted during a mail transaction.
    (S.MAIL, "AUTH"): R.IN_TRANSACTION,
    (S.RCPT, "AUTH"): R.IN_TRANSACTION,
    (S.CHUNKED, "AUTH"): R.IN_TRANSACTION,
}

KNOWN_COMMANDS: Final = frozenset(
    {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP"}
    | {"STARTTLS", "AUTH"}
)
# Recognized but never implemented: 502 5.5.1.
UNIMPLEMENTED_COMMANDS: Final = frozenset(
    {"EXPN", "ETRN", "TURN", "ATRN", "SEND", "SOML", "SAML", "BURL"}
)
# An HTTP request line means a browser (or a proxy) was made to talk to this port: the
# cross-protocol attack Postfix's smtpd_forbidden_commands defends. The session is closed
# before the request's body can be read as SMTP commands.
FORBIDDEN_COMMANDS: Final = frozenset(
    {"GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"}
)

# RFC 3207 §4: with TLS required, a server SHOULD answer every command but these with 530.
ALLOWED_BEFORE_STARTTLS: Final = frozenset({"EHLO", "STARTTLS", "NOOP", "QUIT"})

# Replies that spend the bad command budget: malformed or unknown commands. Sequence errors
# (503, 554) and 530 do not: a correct pipelining client gets a run of them after a single
# rejected MAIL or RCPT (RFC 2920 §3.1), and must not be disconnected for that.
BUDGETED_CODES: Final = frozenset({500, 501, 502, 553, 555})

# The 2xx codes each decision may be answered with; any 4xx or 5xx refuses it (a 421 also
# closes the session). 251 is RFC 5321 §3.4's "will forward".
DECISION_SUCCESS: Final[dict[type[Event], frozenset[int]]] = {
    Authenticate: frozenset({235}),  # RFC 4954 §6
    MailFrom: frozenset({250}),
    RcptTo: frozenset({250, 251}),
    MessageComplete: frozenset({250}),
}


# -- the client role (``_client.py``) ----------------------------------------------------------


class ClientState(enum.Enum):
    """Where a client session is, as the replies it has read have settled it. The client is
    lock-step: a command is sent only once the reply to the one before it was read (DATA
    content, which gets no reply per piece, excepted)."""

    GREETING = "GREETING"  # connected: the server's greeting is due (RFC 5321 §3.1)
    HELLO = "HELLO"  # greeted, or TLS just started (RFC 3207 §4.2): EHLO next
    READY = "READY"  # EHLO answered, no transaction
    MAIL = "MAIL"  # MAIL FROM accepted
    RCPT = "RCPT"  # at least one RCPT TO accepted
    DATA = "DATA"  # DATA answered 354: content, dot-stuffed, until EndOfMessage
    BDAT = "BDAT"  # content as BDAT chunks (RFC 3030)
    FAILED = "FAILED"  # a BDAT chunk refused: no more chunks (RFC 3030 §2), RSET or QUIT
    TLS_HANDSHAKE = "TLS_HANDSHAKE"  # 220 to STARTTLS read: handshake, then tls_started()
    CLOSED = "CLOSED"  # QUIT answered, the server closed, or it broke the protocol


class Greeting(Event):
    """The reply the client waits for before sending anything; not a command it sends."""

    __slots__ = ()


C = ClientState

# The commands ``send()`` takes in each state; any other raises LocalProtocolError.
CLIENT_COMMANDS: Final[dict[ClientState, frozenset[type[Event]]]] = {
    C.GREETING: frozenset(),
    C.HELLO: frozenset({Hello, Quit}),
    C.READY: frozenset({Hello, StartTLS, Authenticate, MailFrom, Reset, Quit}),
    C.MAIL: frozenset({RcptTo, Reset, Quit}),
    C.RCPT: frozenset({RcptTo, StartData, Reset, Quit}),
    # QUIT or RSET inside DATA content would be read as content: the only way out is the end.
    C.DATA: frozenset({BodyData, EndOfMessage}),
    C.BDAT: frozenset({BodyData, EndOfMessage, Reset, Quit}),
    C.FAILED: frozenset({Reset, Quit}),
    C.TLS_HANDSHAKE: frozenset(),
    C.CLOSED: frozenset(),
}

_ANY: Final = frozenset(range(200, 600))

# The reply to a command: (the codes that are success, the state success leads to, the
# state a failure leads to or None to stay). RFC 5321 §4.1.1.4: the reply to the end of
# the content ends the transaction whatever it says; RFC 3030 §2: after a refused chunk no
# more chunks are sent. A BodyData gets a reply only as a BDAT chunk.
CLIENT_TRANSITIONS: Final[
    dict[type[Event], tuple[frozenset[int], ClientState, ClientState | None]]
] = {
    Greeting: (frozenset({220}), C.HELLO, None),
    Hello: (frozenset({250}), C.READY, None),
    StartTLS: (frozenset({220}), C.TLS_HANDSHAKE, None),
    Authenticate: (frozenset({235}), C.READY, None),  # RFC 4954 §6
    MailFrom: (frozenset({250}), C.MAIL, None),
    RcptTo: (frozenset({250, 251}), C.RCPT, None),
    StartData: (frozenset({354}), C.DATA, None),
    BodyData: (frozenset({250}), C.BDAT, C.FAILED),
    EndOfMessage: (_ANY, C.READY, None),
    Reset: (_ANY, C.READY, None),
    Quit: (_ANY, C.CLOSED, None),
}

# Replies without which the session cannot go on: a refusal raises RemoteProtocolError with
# this text; ``temporary`` is False only for a 5xx greeting (RFC 5321 §3.1: 554, no service).
MUST_SUCCEED: Final[dict[type[Event], str]] = {
    Greeting: "refused the session",
    Hello: "refused EHLO",
    StartTLS: "refused STARTTLS",
}
