"""The server side of one POP3 session, as a sans-IO state machine.

Theory of operation
-------------------
The driver writes ``greeting()``, then loops: ``receive_data(bytes)`` when the machine needs
data (``b""`` at EOF), ``next_event()``, and after every call it writes ``data_to_send()``.
The machine answers by itself everything that needs no mailbox: syntax errors, unknown and
out-of-state commands, CAPA, USER, QUIT in AUTHORIZATION, STLS, AUTH's ``+`` challenge,
and credentials in the clear. Decisions come out as events and PAUSE the machine until the
driver answers with ``send(reply)`` or, for a multi-line +OK (RETR, TOP, LIST and UIDL
without argument), ``send_lines``/``send_multiline``/``send_stream_start`` ...
``send_stream_data`` ... ``send_stream_end``. Commands are read one at a time and nothing
after a paused command is looked at, so pipelined commands (RFC 2449 §6.6) are answered in
order; every ``send*`` returns the queued replies first.

Buffers are bounded if the driver reads only on NEED_DATA: one read plus less than one
command line (an overlong line is refused at ``max_line_length`` octets and skipped to its
LF without being buffered); a body is streamed without being held.

After STLS's +OK (RFC 2595 §4) every byte already received and every byte received until
``tls_started()`` is dropped, so cleartext pipelined after STLS is never read as a command of
the TLS session (the CVE-2011-0411 injection). USER, PASS, AUTH and APOP are refused with
``-ERR [AUTH]`` until TLS is active, without looking at their arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .._machine import ServerMachine
from .._sasl import CANCEL, SaslError, decode_plain
from . import _replies as R
from ._events import (
    AUTH_LINE_LIMIT,
    NEED_DATA,
    PAUSED,
    CloseReason,
    ConnectionClosed,
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
from ._readers import TOO_LONG, LineReader, TooLong
from ._state import (
    ALLOWED,
    CREDENTIAL_COMMANDS,
    KNOWN_COMMANDS,
    NO_ARGUMENT_COMMANDS,
    SUCCESS_TRANSITIONS,
    State,
    needs_multiline,
)
from ._syntax import command_verb, one_number, optional_number, parse_number, parse_text
from ._util import LocalProtocolError, RemoteProtocolError
from ._writers import DotStuffer, format_lines, format_reply, stuff_lines

__all__ = ["ConnectionStatistics", "ServerConnection"]

NextSentinel = Literal[Sentinel.NEED_DATA, Sentinel.PAUSED]


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    state: State
    buffered: int  # received octets not yet consumed
    outgoing: int  # reply octets not yet taken
    errors: int  # spent bad command budget
    discarded: int  # octets dropped after STLS or after the end


class ServerConnection(ServerMachine[State, Event, Reply, CloseReason, NextSentinel]):
    """One POP3 server session; see the module docstring."""

    _local_error = LocalProtocolError
    _TLS_HANDSHAKE = State.TLS_HANDSHAKE
    _CLOSED = State.CLOSED
    _EOF = CloseReason.EOF
    _LOCAL = CloseReason.LOCAL
    _NEED_DATA = NEED_DATA
    _PAUSED = PAUSED

    def __init__(self, settings: POP3Settings) -> None:
        super().__init__()  # buffers, events, the pending decision, EOF, budget, discards
        self.settings = settings
        self._state = State.AUTHORIZATION
        self._greeting_sent = False
        self._tls_active = settings.tls_active
        self._lines = LineReader(settings.max_line_length)
        self._stuffer: DotStuffer | None = None
        self._user: str | None = None
        self._auth_waiting = False  # "+ " sent, the PLAIN response line is next

    # -- the driver's API ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            self._state, len(self._buffer), len(self._outgoing), self._errors, self._discarded
        )

    def greeting(self) -> bytes:
        if self._greeting_sent:
            raise LocalProtocolError("the greeting was already sent")
        self._greeting_sent = True
        return format_reply(R.greeting(self.settings.hostname))

    # -- the scaffolding's hooks (``protocols/_machine.py``) ----------------------------------

    def _greeted(self) -> bool:
        return self._greeting_sent

    def _paused(self) -> bool:
        return self._stuffer is not None or super()._paused()

    def send(self, reply: Reply) -> bytes:
        """Answer the pending decision with one status line."""
        event = self._take_pending(multiline=False, ok=reply.ok)
        self._outgoing += format_reply(reply)
        self._settle(event, reply)
        return self.data_to_send()

    def send_lines(self, reply: Reply, lines: Iterable[str | bytes]) -> bytes:
        """A multi-line +OK of short lines (LIST, UIDL): stuffed, CRLF added to each."""
        body = format_lines(lines)  # may raise ValueError before anything changed
        event = self._take_pending(multiline=True, ok=reply.ok)
        self._outgoing += format_reply(reply) + body
        self._settle(event, reply)
        return self.data_to_send()

    def send_multiline(self, reply: Reply, content: bytes) -> bytes:
        """A multi-line +OK with ``content`` (stored octets) as its body."""
        return (
            self.send_stream_start(reply)
            + self.send_stream_data(content)
            + (self.send_stream_end())
        )

    def send_stream_start(self, reply: Reply) -> bytes:
        """Begin a multi-line +OK; then ``send_stream_data`` per chunk and ``send_stream_end``.
        The machine stays paused until the end."""
        event = self._take_pending(multiline=True, ok=reply.ok)
        self._pending = event  # still answering it
        self._stuffer = DotStuffer()
        self._outgoing += format_reply(reply)
        return self.data_to_send()

    def send_stream_data(self, chunk: bytes) -> bytes:
        if self._stuffer is None:
            raise LocalProtocolError("no multi-line response is being streamed")
        return self._stuffer.feed(chunk)

    def send_lines_more(self, lines: Iterable[str | bytes]) -> bytes:
        """More short lines of a multi-line +OK begun with ``send_stream_start`` (a LIST or
        UIDL of a huge maildrop, in batches): stuffed, CRLF added to each."""
        if self._stuffer is None:
            raise LocalProtocolError("no multi-line response is being streamed")
        return stuff_lines(lines, self._stuffer)

    def send_stream_end(self) -> bytes:
        if self._stuffer is None or self._pending is None:
            raise LocalProtocolError("no multi-line response is being streamed")
        out = self._stuffer.end()
        self._stuffer = self._pending = None
        return out

    @property
    def streaming(self) -> bool:
        """A multi-line response is being streamed (``close()`` must wait for its end)."""
        return self._stuffer is not None

    def tls_started(self) -> None:
        """The TLS handshake after STLS is done; the session is back in AUTHORIZATION."""
        if self._state is not State.TLS_HANDSHAKE or self._events:
            raise LocalProtocolError("no STLS is waiting for its handshake")
        self._tls_active = True
        self._lines = LineReader(self.settings.max_line_length)
        self._state = State.AUTHORIZATION

    def close(self, reply: Reply = R.SHUTTING_DOWN) -> bytes:
        """Close from the gateway's side: queued replies, then ``reply`` (an -ERR).
        ``next_event()`` then returns ConnectionClosed(LOCAL). Not while streaming."""
        if reply.ok:
            raise LocalProtocolError("a closing reply is -ERR")
        if self._stuffer is not None:
            raise LocalProtocolError("finish the multi-line response first")
        return self._close_locally(reply)

    # -- answering ----------------------------------------------------------------------------

    def _take_pending(self, *, multiline: bool, ok: bool) -> Event:
        event = self._decision(busy=self._stuffer is not None)
        if multiline and not (ok and needs_multiline(event)):
            raise LocalProtocolError(f"{type(event).__name__} takes no multi-line answer")
        if not multiline and ok and needs_multiline(event):
            raise LocalProtocolError(f"+OK to {type(event).__name__} is multi-line")
        self._pending = None
        return event

    def _settle(self, event: Event, reply: Reply) -> None:
        if isinstance(event, Quit):  # RFC 1939 §6: the session ends whatever the reply
            self._close(CloseReason.QUIT, reply, queue=False)
        elif reply.ok and type(event) in SUCCESS_TRANSITIONS:
            self._state = SUCCESS_TRANSITIONS[type(event)]

    def _reply(self, reply: Reply) -> None:
        self._outgoing += format_reply(reply)

    def _close(self, reason: CloseReason, reply: Reply | None, *, queue: bool = True) -> None:
        if reply is not None and queue:
            self._reply(reply)
        self._state = State.CLOSED
        self._closed = ConnectionClosed(reason, reply)
        self._discarded += len(self._buffer)
        del self._buffer[:]
        self._events.append(self._closed)

    def _refuse(self, reply: Reply) -> None:
        """A refused command: -ERR, or the close once the budget is spent."""
        self._errors += 1
        if self._errors >= self.settings.bad_command_budget:
            self._close(CloseReason.TOO_MANY_ERRORS, R.TOO_MANY_ERRORS)
        else:
            self._reply(reply)

    def _decide(self, event: Event) -> None:
        self._pending = event
        self._events.append(event)

    # -- reading ------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Read one line and act on it; False when more input is needed."""
        limit = AUTH_LINE_LIMIT if self._auth_waiting else self.settings.max_line_length
        self._lines.limit = limit
        line = self._lines.read(self._buffer)
        if line is None:
            return self._no_line()
        try:
            self._line(line)
        except RemoteProtocolError as exc:
            self._refuse(exc.reply or R.SYNTAX)
        return True

    def _line(self, line: bytes | Literal[TooLong.TOO_LONG]) -> None:
        if line is TOO_LONG:
            self._auth_waiting = False
            raise RemoteProtocolError("line too long", R.LINE_TOO_LONG)
        if not self._auth_waiting:
            self._command(line)
            return
        self._auth_waiting = False
        if line == CANCEL:
            raise RemoteProtocolError("cancelled", R.AUTH_CANCELLED)
        self._plain(line)

    def _command(self, line: bytes) -> None:
        raw_verb, _, rest = line.partition(b" ")
        verb = command_verb(raw_verb)
        if verb not in KNOWN_COMMANDS:
            raise RemoteProtocolError("unknown command", R.UNKNOWN_COMMAND)
        if verb in CREDENTIAL_COMMANDS and not self._tls_active:
            raise RemoteProtocolError("credentials in the clear", R.TLS_REQUIRED)
        if verb not in ALLOWED[self._state]:
            reply = R.APOP_UNSUPPORTED if verb == "APOP" else R.WRONG_STATE
            raise RemoteProtocolError("not in this state", reply)
        if verb == "PASS":  # the whole rest of the line (RFC 1939 §7)
            self._pass(rest)
            return
        args = rest.split()
        if verb in NO_ARGUMENT_COMMANDS and args:
            raise RemoteProtocolError("no argument expected", R.SYNTAX)
        handler = getattr(self, f"_do_{verb.lower()}")
        handler(args)

    # one method per command, given the space-separated arguments

    def _do_capa(self, args: list[bytes]) -> None:
        stls = self.settings.stls_offered and not self._tls_active
        caps = R.capabilities(stls=stls, credentials=self._tls_active)
        self._outgoing += format_reply(R.CAPA_OK) + format_lines(caps)

    def _do_noop(self, args: list[bytes]) -> None:
        self._decide(Noop())

    def _do_quit(self, args: list[bytes]) -> None:
        if self._state is State.AUTHORIZATION:
            self._close(CloseReason.QUIT, R.closing(self.settings.hostname))
        else:
            self._state = State.UPDATE
            self._decide(Quit())

    def _do_stls(self, args: list[bytes]) -> None:
        if self._tls_active or not self.settings.stls_offered:
            raise RemoteProtocolError("no STLS", R.STLS_UNAVAILABLE)
        self._reply(R.STLS_OK)
        self._state = State.TLS_HANDSHAKE
        self._discarded += len(self._buffer)
        del self._buffer[:]
        self._user = None
        self._events.append(StartTLS())

    def _do_user(self, args: list[bytes]) -> None:
        if len(args) != 1:
            raise RemoteProtocolError("USER takes one argument", R.SYNTAX)
        self._user = parse_text(args[0], spaces=False)
        self._reply(R.USER_OK)

    def _pass(self, rest: bytes) -> None:
        user, self._user = self._user, None
        if user is None:
            raise RemoteProtocolError("PASS without USER", R.USER_FIRST)
        self._decide(Login(user, parse_text(rest, spaces=True), "USER"))

    def _do_auth(self, args: list[bytes]) -> None:
        self._user = None
        if not 1 <= len(args) <= 2:
            raise RemoteProtocolError("AUTH takes one or two arguments", R.SYNTAX)
        if args[0].upper() != b"PLAIN":
            raise RemoteProtocolError("mechanism", R.MECHANISM_UNSUPPORTED)
        if len(args) == 2:
            self._plain(args[1])
        else:
            self._outgoing += R.CHALLENGE
            self._auth_waiting = True

    def _plain(self, response: bytes) -> None:
        try:
            authcid, password = decode_plain(response)
        except SaslError as exc:
            reply = R.AUTHZ_REFUSED if exc.kind == "authzid" else R.AUTH_MALFORMED
            raise RemoteProtocolError(str(exc), reply) from exc
        self._decide(Login(authcid, password, "PLAIN"))

    def _do_stat(self, args: list[bytes]) -> None:
        self._decide(Stat())

    def _do_rset(self, args: list[bytes]) -> None:
        self._decide(Rset())

    def _do_list(self, args: list[bytes]) -> None:
        self._decide(List(optional_number(args)))

    def _do_uidl(self, args: list[bytes]) -> None:
        self._decide(Uidl(optional_number(args)))

    def _do_retr(self, args: list[bytes]) -> None:
        self._decide(Retr(one_number(args)))

    def _do_dele(self, args: list[bytes]) -> None:
        self._decide(Dele(one_number(args)))

    def _do_top(self, args: list[bytes]) -> None:
        if len(args) != 2:
            raise RemoteProtocolError("TOP takes two arguments", R.SYNTAX)
        msg = parse_number(args[0])
        self._decide(Top(msg, parse_number(args[1], minimum=0)))
