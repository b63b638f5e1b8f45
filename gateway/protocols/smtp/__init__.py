"""SMTP (RFC 5321 and its extensions) as a sans-IO state machine, in the manner of h11.

The server role is :class:`ServerConnection`; see ``_connection.py`` for its theory of
operation and SPEC.md section 12 for the replies and limits. The client role (the recording
proxy's upstream side, SPEC.md 15.2) is :class:`ClientConnection`, built on the reply reader
(:class:`ReplyReader`) and the command writers, speaking the same events the other way; see
``_client.py``.

Modules, h11's split: ``_events`` (replies, events, sentinels), ``_state`` (states and the
transition table as data), ``_readers`` (bytes to lines, content and replies), ``_writers``
(replies, commands and content to bytes), ``_syntax`` (addresses and parameters),
``_replies`` (the reply catalogue), ``_settings`` (settings and limits), ``_util`` (errors),
``_session`` (session state and the command interpreter), ``_connection`` (the server
machine's API and reading loop) and ``_client`` (the client machine). The pieces both
protocols share are in ``gateway/protocols``: ``_machine`` (the scaffolding of the server and
client machines), ``_lines`` (the bounded line splitter), ``_errors``, ``_dotstuff``, ``_sasl``.
"""

from __future__ import annotations

from . import _replies as replies
from ._client import ClientConnection
from ._connection import ConnectionStatistics, ServerConnection
from ._events import (
    NEED_DATA,
    PAUSED,
    AbortReason,
    Authenticate,
    BodyData,
    BodyType,
    CloseReason,
    ConnectionClosed,
    EndOfMessage,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    Quit,
    RcptTo,
    Reply,
    Reset,
    Sentinel,
    StartData,
    StartTLS,
)
from ._readers import ReplyReader
from ._session import TLSInfo
from ._settings import (
    BODY_PIECE_SIZE,
    COMMAND_LINE_LIMIT,
    DEFAULT_BAD_COMMAND_BUDGET,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_RECIPIENTS,
    DOMAIN_LIMIT,
    PATH_LIMIT,
    REPLY_LINE_LIMIT,
    REPLY_LINES_LIMIT,
    REPLY_SIZE_LIMIT,
    SMTPSettings,
)
from ._state import ClientState, State
from ._util import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._writers import (
    DotStuffer,
    format_bdat,
    format_command,
    format_mail,
    format_rcpt,
    format_reply,
)

__all__ = [
    "BODY_PIECE_SIZE",
    "COMMAND_LINE_LIMIT",
    "DEFAULT_BAD_COMMAND_BUDGET",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_RECIPIENTS",
    "DOMAIN_LIMIT",
    "NEED_DATA",
    "PATH_LIMIT",
    "PAUSED",
    "REPLY_LINES_LIMIT",
    "REPLY_LINE_LIMIT",
    "REPLY_SIZE_LIMIT",
    "AbortReason",
    "Authenticate",
    "BodyData",
    "BodyType",
    "ClientConnection",
    "ClientState",
    "CloseReason",
    "ConnectionClosed",
    "ConnectionStatistics",
    "DotStuffer",
    "EndOfMessage",
    "Event",
    "Hello",
    "LocalProtocolError",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "RemoteProtocolError",
    "Reply",
    "ReplyReader",
    "Reset",
    "SMTPSettings",
    "Sentinel",
    "ServerConnection",
    "StartData",
    "StartTLS",
    "State",
    "TLSInfo",
    "format_bdat",
    "format_command",
    "format_mail",
    "format_rcpt",
    "format_reply",
    "replies",
]
