"""POP3 (RFC 1939, RFC 2449 CAPA and response codes, RFC 2595 STLS, RFC 5034 AUTH PLAIN) as
a sans-IO state machine, in the manner of h11 and of the SMTP machine beside it.

The server role is :class:`ServerConnection` (theory of operation in ``_connection.py``).
The client role (the recording proxy's upstream side, SPEC.md 15.2) is
:class:`ClientConnection` (``_client.py``), built on the reply reader (:class:`ReplyReader`)
and the command writers, speaking the same events the other way.

Modules: ``_events`` (replies, events, sentinels, settings and limits), ``_state`` (states
and allowed commands as data), ``_readers`` (lines and replies), ``_writers`` (replies,
dot-stuffing, commands), ``_replies`` (the machine's own replies), ``_util`` (errors),
``_syntax`` (command arguments), ``_connection`` (the server machine) and ``_client`` (the
client machine); the pieces both protocols share are in ``gateway/protocols`` (``_machine``,
``_lines``, ``_errors``, ``_dotstuff``, ``_sasl``).
"""

from __future__ import annotations

from .._sasl import plain_response as auth_plain_response
from . import _replies as replies
from ._client import ClientConnection
from ._connection import ConnectionStatistics, ServerConnection
from ._events import (
    AUTH_LINE_LIMIT,
    BODY_PIECE_SIZE,
    CAPA_SIZE_LIMIT,
    COMMAND_LINE_LIMIT,
    DEFAULT_BAD_COMMAND_BUDGET,
    NEED_DATA,
    PAUSED,
    REPLY_LINE_LIMIT,
    UIDL_LISTING_LIMIT,
    BodyData,
    BodyEnd,
    Capa,
    Capabilities,
    CloseReason,
    ConnectionClosed,
    Continuation,
    Dele,
    Event,
    FetchUidls,
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
    UidlListing,
)
from ._readers import (
    LineReader,
    ReplyReader,
    parse_capabilities,
    parse_status_line,
    parse_uidl_listing,
)
from ._state import ALLOWED, ClientState, State
from ._syntax import parse_number
from ._top import TopCutter
from ._util import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._writers import DotStuffer, client_command, format_command, format_lines, format_reply

__all__ = [
    "ALLOWED",
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
    "ClientConnection",
    "ClientState",
    "CloseReason",
    "ConnectionClosed",
    "ConnectionStatistics",
    "Continuation",
    "Dele",
    "DotStuffer",
    "Event",
    "FetchUidls",
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
    "UidlListing",
    "auth_plain_response",
    "client_command",
    "format_command",
    "format_lines",
    "format_reply",
    "parse_capabilities",
    "parse_number",
    "parse_status_line",
    "parse_uidl_listing",
    "replies",
]
