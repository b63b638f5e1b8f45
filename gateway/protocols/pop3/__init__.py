"""POP3 (RFC 1939, RFC 2449 CAPA and response codes, RFC 2595 STLS, RFC 5034 AUTH PLAIN) as
a sans-IO state machine, in the manner of h11 and of the SMTP machine beside it.

The server role is :class:`ServerConnection` (theory of operation in ``_connection.py``).
The client role has the reply reader (:class:`ReplyReader`) and command writers, for the
POP3 proxy to build on.

Modules: ``_events`` (replies, events, sentinels, settings and limits), ``_state`` (states
and allowed commands as data), ``_readers`` (lines and replies), ``_writers`` (replies,
dot-stuffing, commands), ``_replies`` (the machine's own replies), ``_util`` (errors) and
``_connection`` (the server machine).
"""

from __future__ import annotations

from .._sasl import plain_response as auth_plain_response
from . import _replies as replies
from ._connection import ConnectionStatistics, ServerConnection, parse_number
from ._events import (
    AUTH_LINE_LIMIT,
    BODY_PIECE_SIZE,
    COMMAND_LINE_LIMIT,
    DEFAULT_BAD_COMMAND_BUDGET,
    NEED_DATA,
    PAUSED,
    REPLY_LINE_LIMIT,
    BodyData,
    BodyEnd,
    CloseReason,
    ConnectionClosed,
    Continuation,
    Dele,
    Event,
    List,
    Login,
    Noop,
    POP3Settings,
    Quit,
    Reply,
    Retr,
    Rset,
    Sentinel,
    StartTLS,
    Stat,
    Top,
    Uidl,
)
from ._readers import LineReader, ReplyReader, parse_status_line
from ._state import ALLOWED, State
from ._top import TopCutter
from ._util import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._writers import DotStuffer, format_command, format_lines, format_reply

__all__ = [
    "ALLOWED",
    "AUTH_LINE_LIMIT",
    "BODY_PIECE_SIZE",
    "COMMAND_LINE_LIMIT",
    "DEFAULT_BAD_COMMAND_BUDGET",
    "NEED_DATA",
    "PAUSED",
    "REPLY_LINE_LIMIT",
    "BodyData",
    "BodyEnd",
    "CloseReason",
    "ConnectionClosed",
    "ConnectionStatistics",
    "Continuation",
    "Dele",
    "DotStuffer",
    "Event",
    "LineReader",
    "List",
    "LocalProtocolError",
    "Login",
    "Noop",
    "POP3Settings",
    "ProtocolError",
    "Quit",
    "RemoteProtocolError",
    "Reply",
    "ReplyReader",
    "Retr",
    "Rset",
    "Sentinel",
    "ServerConnection",
    "StartTLS",
    "Stat",
    "State",
    "Top",
    "TopCutter",
    "Uidl",
    "auth_plain_response",
    "format_command",
    "format_lines",
    "format_reply",
    "parse_number",
    "parse_status_line",
    "replies",
]
