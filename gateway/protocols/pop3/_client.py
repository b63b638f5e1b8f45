"""The client side of one POP3 session (the recording proxy's upstream), as a sans-IO machine.

Theory of operation
-------------------
The driver connects (and, for implicit TLS, runs the handshake and calls ``tls_started()``),
then loops as with h11: ``receive_data(bytes)`` when the machine needs data (``b""`` at EOF),
``next_event()`` for what the bytes mean, and after every ``next_event()`` it writes
``data_to_send()``, where the machine puts what it sends by itself inside a login (PASS after
USER's +OK, AUTH PLAIN after a refused USER, the PLAIN response after "+", "*"). Commands go
out as ``send(command) -> bytes``, taking the server machine's own event types (:class:`Stat`,
:class:`List`, :class:`Uidl`, :class:`Retr`, :class:`Top`, :class:`Dele`, :class:`Rset`,
:class:`Noop`, :class:`Quit`, :class:`StartTLS`, :class:`Login`) plus :class:`Capa` and
:class:`FetchUidls`.

One command at a time (``reply_due``): ``send()`` refuses the next while a response is
being read. What ``next_event()`` returns for each:

* a single-line command: its :class:`Reply`;
* a relayed multi-line command (LIST, UIDL, RETR, TOP): the status :class:`Reply`, then for
  +OK the body, dot-unstuffed, as :class:`BodyData` pieces and a :class:`BodyEnd`. A piece is
  everything buffered up to the next line that starts with "." (which needs a decision), at
  most BODY_PIECE_SIZE octets: whole receive buffers, not lines, so a message costs a few
  calls per TLS record however many lines it has (RFC 1939 §3's unstuffing, in
  ``ReplyReader``);
* :class:`Capa`: one :class:`Capabilities` (the listing bounded by CAPA_SIZE_LIMIT);
* :class:`FetchUidls`: one :class:`UidlListing` (the listing kept up to its ``limit``,
  read to its end either way; ``UIDL n`` parsed from the status line);
* :class:`StartTLS`: the event :class:`StartTLS` for +OK: run the handshake, then
  ``tls_started()``;
* :class:`Login`: the final reply of the exchange. With mechanism "USER": USER/PASS where
  the credentials fit the lines (no space in the username, no line break, 255 octets, RFC
  2449 §4) and the server takes USER, else AUTH PLAIN (RFC 5034); "PLAIN": AUTH PLAIN only.
  The PLAIN response goes on the AUTH line where that fits 255 octets, else after the
  server's "+" (RFC 5034 §4); a "+" where none belongs is cancelled with "*".

The rules the machine keeps, so no driver has to: a greeting must be +OK; STLS only where the
last CAPA listed it (otherwise RemoteProtocolError, not temporary: no credential will cross a
link in the clear); bytes that arrive with STLS's +OK or before ``tls_started()`` were sent in
the clear and are refused (RFC 2595 §4 and the response-injection twin of CVE-2011-0411);
credentials only under TLS; the capabilities learnt in the clear are forgotten once TLS is up
(RFC 2595 §4). Every error the server causes is a RemoteProtocolError with ``temporary``;
the machine is then CLOSED. Buffers: one read plus less than one status line (REPLY_LINE_LIMIT)
or one body piece; CAPA and UIDL listings no more than their limits.
"""

from __future__ import annotations

from typing import Literal

from .._machine import ClientMachine
from .._sasl import CANCEL, plain_response
from ._events import (
    CAPA_SIZE_LIMIT,
    COMMAND_LINE_LIMIT,
    NEED_DATA,
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
from ._readers import ReplyReader, parse_capabilities, parse_uidl_listing
from ._state import (
    CLIENT_COMMANDS,
    CLIENT_SUCCESS_TRANSITIONS,
    ClientState,
    Greeting,
    needs_multiline,
)
from ._util import LocalProtocolError, RemoteProtocolError
from ._writers import format_command

__all__ = ["ClientConnection", "ClientEvent"]

ClientEvent = Reply | BodyData | BodyEnd | Capabilities | UidlListing | StartTLS | ConnectionClosed


class ClientConnection(ClientMachine[ClientState, Event, ReplyReader]):
    """One POP3 client session; see the module docstring."""

    _local_error = LocalProtocolError
    _remote_error = RemoteProtocolError
    _GREETING = ClientState.GREETING
    _TLS_HANDSHAKE = ClientState.TLS_HANDSHAKE
    _CLOSED = ClientState.CLOSED
    _COMMANDS = CLIENT_COMMANDS
    _TLS_COMMAND = "STLS"
    _ANSWER = "response"

    def __init__(self) -> None:
        # The reader, the state, TLS, what was received and what goes out by itself: the
        # scaffolding's (``protocols/_machine.py``). The greeting is the first response due.
        super().__init__(Greeting())
        self._relaying = False  # inside a relayed multi-line body
        self._collect: list[bytes] | None = None  # a CAPA or UIDL listing being read
        self._collected = 0  # its octets so far (kept or not)
        self._status: Reply | None = None  # the status line of the listing
        self._capabilities: dict[str, tuple[str, ...]] | None = None
        self._login_step = ""  # "USER", "PASS", "PLAIN", "PLAIN+" (response after "+"), "*"
        self._pass_line = b""
        self._plain = ""
        self._closed = CloseReason.EOF

    def _new_reader(self) -> ReplyReader:
        return ReplyReader()

    # -- what the driver reads ------------------------------------------------------------

    @property
    def capabilities(self) -> dict[str, tuple[str, ...]] | None:
        """From the last CAPA in this TLS state; None if none was asked."""
        return None if self._capabilities is None else dict(self._capabilities)

    # -- bytes in ---------------------------------------------------------------------------

    def next_event(self) -> ClientEvent | Literal[Sentinel.NEED_DATA]:
        if self._relaying:  # the hot path: a message body on its way through
            event: Event | Reply | Literal[Sentinel.NEED_DATA] = self._read()
            if type(event) is BodyEnd:
                self._relaying = False
                self._pending = None
            return event  # type: ignore[return-value] # BodyData, BodyEnd or NEED_DATA
        while True:
            if self._state is ClientState.CLOSED:
                return ConnectionClosed(self._closed)
            event = self._read()
            if event is NEED_DATA:
                return NEED_DATA
            if isinstance(event, ConnectionClosed):
                self._closed_by_server()
                return event
            if isinstance(event, Continuation):
                self._continuation()
                continue
            if isinstance(event, BodyData):
                self._take(event.data)
                continue
            if isinstance(event, BodyEnd):
                return self._listing()
            assert isinstance(event, Reply)
            answer = self._answer(event)
            if answer is not None:
                return answer

    def _answer(self, reply: Reply) -> ClientEvent | None:
        command = self._pending
        if command is None:
            raise self._fail("sent a response to no command")
        if isinstance(command, Login):
            return self._login_reply(reply)
        if reply.ok and needs_multiline(command):
            if isinstance(command, Capa | FetchUidls):
                self._collect, self._collected, self._status = [], 0, reply
                return None
            self._relaying = True  # the body follows; the command is done at its BodyEnd
            return reply
        self._pending = None
        if isinstance(command, Capa):
            self._capabilities = {}  # -ERR: a server without CAPA (RFC 2449 §5)
            return Capabilities(reply, {})
        if isinstance(command, FetchUidls):
            uidls: dict[int, str] = {}
            if reply.ok and command.msg is not None:
                found = parse_uidl_listing(reply.text.encode()).get(command.msg)
                uidls = {command.msg: found} if found is not None else {}
            return UidlListing(reply, uidls)
        if not reply.ok:
            if isinstance(command, Greeting):
                raise self._fail(f"refused the session: {reply.text}")
            if isinstance(command, StartTLS):
                raise self._fail(f"refused STLS: {reply.text}")
            if isinstance(command, Quit):
                self._state, self._closed = ClientState.CLOSED, CloseReason.QUIT
            return reply
        to = CLIENT_SUCCESS_TRANSITIONS.get(type(command))
        if to is not None:
            self._state = to
        if isinstance(command, Quit):
            self._closed = CloseReason.QUIT
        elif isinstance(command, StartTLS):
            self._check_cleartext()
            return StartTLS()
        return reply

    def _take(self, data: bytes) -> None:
        """A piece of a CAPA or UIDL listing: kept while the listing fits its limit."""
        command, pieces = self._pending, self._collect
        assert pieces is not None
        self._collected += len(data)
        limit = command.limit if isinstance(command, FetchUidls) else CAPA_SIZE_LIMIT
        if self._collected <= limit:
            pieces.append(data)
            return
        if isinstance(command, Capa):
            raise self._fail(f"broke the protocol: a CAPA listing over {limit} octets")
        pieces.clear()  # a UIDL listing over its limit: read to its end, kept not at all

    def _listing(self) -> Capabilities | UidlListing:
        command, pieces, reply = self._pending, self._collect, self._status
        assert pieces is not None
        assert reply is not None
        self._pending, self._collect, self._status = None, None, None
        if isinstance(command, Capa):
            self._capabilities = parse_capabilities(b"".join(pieces))
            return Capabilities(reply, dict(self._capabilities))
        assert isinstance(command, FetchUidls)
        if self._collected > command.limit:
            return UidlListing(reply, {}, complete=False)
        return UidlListing(reply, parse_uidl_listing(b"".join(pieces)))

    # -- the login exchange -------------------------------------------------------------------

    def _login_reply(self, reply: Reply) -> Reply | None:
        if self._login_step == "USER":
            if reply.ok:
                self._login_step = "PASS"
                self._queue(self._pass_line)
            else:  # a server that refuses USER may still take AUTH PLAIN
                self._queue(self._auth_plain())
            return None
        self._pending = None
        self._end_login()
        if reply.ok:
            self._state = ClientState.TRANSACTION
        return reply

    def _continuation(self) -> None:
        step = self._login_step
        if not isinstance(self._pending, Login) or step not in ("PLAIN", "PLAIN+"):
            raise self._fail("sent an unexpected continuation")
        if step == "PLAIN+":
            self._outgoing += self._plain.encode() + b"\r\n"
            self._login_step = "PLAIN"
        else:  # a challenge where none belongs: cancel, the final reply follows
            self._outgoing += CANCEL + b"\r\n"
            self._login_step = "*"

    def _queue(self, line: bytes) -> None:
        self._reader.expect()
        self._outgoing += line

    def _auth_plain(self) -> bytes:
        """AUTH PLAIN, the response on the line where it fits (RFC 5034 §4); sets the step."""
        line = f"AUTH PLAIN {self._plain}\r\n".encode()
        if len(line) <= COMMAND_LINE_LIMIT:
            self._login_step = "PLAIN"
            return line
        self._login_step = "PLAIN+"
        return b"AUTH PLAIN\r\n"

    def _end_login(self) -> None:
        self._pass_line, self._plain, self._login_step = b"", "", ""  # not kept past it

    _forget = _end_login  # the session failed: the same

    # -- bytes out --------------------------------------------------------------------------

    def send(self, command: Event) -> bytes:
        """The bytes of ``command``. Raises LocalProtocolError where the command cannot be
        sent now (nothing changes), RemoteProtocolError where the server cannot take it."""
        self._check_send(command)
        if isinstance(command, Login):
            data = self._login(command)
        else:
            try:
                data = self._format(command)
            except ValueError as exc:
                raise LocalProtocolError(str(exc)) from None
            self._reader.expect(multiline=needs_multiline(command))
        self._pending = command
        return data

    def _format(self, command: Event) -> bytes:
        match command:
            case Stat() | Rset() | Noop() | Quit() | Capa():
                return format_command(type(command).__name__.upper())
            case StartTLS():
                self._check_upgrade()
                return format_command("STLS")
            case List(msg=msg) | Uidl(msg=msg) | FetchUidls(msg=msg):
                verb = "LIST" if isinstance(command, List) else "UIDL"
                return format_command(verb) if msg is None else format_command(verb, str(msg))
            case Retr(msg=msg) | Dele(msg=msg):
                return format_command(type(command).__name__.upper(), str(msg))
            case Top(msg=msg, lines=lines):
                return format_command("TOP", str(msg), str(lines))
        raise LocalProtocolError(f"{type(command).__name__} is no client command")

    def _login(self, command: Login) -> bytes:
        if not self._tls:
            raise LocalProtocolError("credentials are never sent without TLS")
        if command.mechanism not in ("USER", "PLAIN"):
            raise LocalProtocolError(f"no login mechanism {command.mechanism!r}")
        self._plain = plain_response(command.username, command.password)
        self._reader.expect()
        if command.mechanism == "USER":
            try:
                user = format_command("USER", command.username)
                self._pass_line = format_command("PASS", command.password)
            except ValueError:  # SASL carries them whatever they hold
                pass
            else:
                self._login_step = "USER"
                return user
        return self._auth_plain()

    # -- TLS (``tls_started()`` is the scaffolding's) ----------------------------------------

    def _offers_tls(self) -> bool:
        if self._capabilities is None:
            raise LocalProtocolError("STLS only after CAPA listed it")
        return "STLS" in self._capabilities

    def _tls_reset(self) -> None:
        """RFC 2595 §4: the capabilities learnt in the clear are forgotten."""
        self._capabilities = None
        self._state = ClientState.AUTHORIZATION
