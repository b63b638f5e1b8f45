"""The client side of one SMTP session (the recording proxy's upstream), as a sans-IO machine.

Theory of operation
-------------------
The driver connects (and, for implicit TLS, runs the handshake and calls ``tls_started()``),
then loops as with h11: ``receive_data(bytes)`` when the machine needs data (``b""`` at EOF),
``next_event()`` for what the bytes mean, and after every ``next_event()`` it writes
``data_to_send()``, where the machine puts what it answers by itself (the SASL responses after
a 334). Commands go out as ``send(command) -> bytes``, taking the same event types the server
machine produces (:class:`Hello`, :class:`StartTLS`, :class:`Authenticate`,
:class:`MailFrom`, :class:`RcptTo`, :class:`StartData`, :class:`BodyData`, :class:`Quit`) plus
:class:`Reset` and :class:`EndOfMessage`.

The session is lock-step: ``send()`` refuses a command while the reply to the previous one is
due (``reply_due``), except content pieces inside DATA, which get no reply. ``next_event()``
returns that reply as a :class:`Reply`; the 220 to STARTTLS as :class:`StartTLS` (run the
handshake, then ``tls_started()``; EHLO again, RFC 3207 §4.2); ``ConnectionClosed(EOF)`` if
the server closed with nothing due. Which commands each state takes and where each reply leads
is data (``CLIENT_COMMANDS`` and ``CLIENT_TRANSITIONS`` in ``_state.py``).

What the machine decides, so no driver has to:

* the greeting must be 220, the answer to EHLO 250 and to STARTTLS 220, else the session
  cannot go on (RemoteProtocolError, ``temporary`` False for a 5xx greeting);
* the EHLO keywords (:attr:`extensions`), forgotten when TLS starts;
* STARTTLS only where offered (otherwise RemoteProtocolError, not temporary: no credential
  will cross a link in the clear); bytes that arrive with its 220, or before ``tls_started()``,
  were sent in the clear and are refused (RFC 3207 §5, the response-injection twin of
  CVE-2011-0411);
* AUTH only under TLS, PLAIN where offered, else LOGIN (:meth:`choose_mechanism`): PLAIN with
  the initial response where the line fits 512 octets, else after the 334 (RFC 4954 §4);
  LOGIN's username and password each after a 334; a 334 beyond those is cancelled with "*";
* MAIL parameters only where the extension is offered (RFC 5321 §2.2.1), BDAT only with
  CHUNKING (RFC 3030);
* DATA content dot-stuffed (RFC 5321 §4.5.2, by the shared :class:`DotStuffer`), BDAT content
  framed as counted chunks, each answered.

Every error the server causes is a RemoteProtocolError carrying ``temporary``; afterwards the
machine is CLOSED. Buffers are bounded as the server machine's: one read plus less than one
reply (REPLY_LINE_LIMIT a line, REPLY_LINES_LIMIT lines, REPLY_SIZE_LIMIT a reply).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from .._dotstuff import DotStuffer
from .._lines import ascii_upper
from .._machine import ClientMachine
from .._sasl import CANCEL, encode, plain_response
from ._events import (
    NEED_DATA,
    Authenticate,
    BodyData,
    BodyType,
    CloseReason,
    ConnectionClosed,
    EndOfMessage,
    Event,
    Hello,
    MailFrom,
    Quit,
    RcptTo,
    Reply,
    Reset,
    Sentinel,
    StartData,
    StartTLS,
)
from ._readers import ReplyReader
from ._settings import RFC_COMMAND_LINE_LIMIT
from ._state import CLIENT_COMMANDS, CLIENT_TRANSITIONS, MUST_SUCCEED, ClientState, Greeting
from ._util import LocalProtocolError, RemoteProtocolError
from ._writers import format_bdat, format_command, format_mail, format_rcpt

__all__ = ["ClientConnection", "ClientEvent", "keyword"]

ClientEvent = Reply | StartTLS | ConnectionClosed


# An EHLO keyword or SASL mechanism name, upper-cased in ASCII only (RFC 5321 §2.4: keywords
# are case-insensitive; a non-ASCII word is no keyword and stays as it is).
keyword = ascii_upper


class ClientConnection(ClientMachine[ClientState, Event, ReplyReader]):
    """One SMTP client session; see the module docstring."""

    _local_error = LocalProtocolError
    _remote_error = RemoteProtocolError
    _GREETING = ClientState.GREETING
    _TLS_HANDSHAKE = ClientState.TLS_HANDSHAKE
    _CLOSED = ClientState.CLOSED
    _COMMANDS = CLIENT_COMMANDS
    _TLS_COMMAND = "STARTTLS"
    _ANSWER = "reply"

    def __init__(self) -> None:
        # The reader, the state, TLS, what was received and what goes out by itself: the
        # scaffolding's (``protocols/_machine.py``). The greeting is the first reply due.
        super().__init__(Greeting())
        self._extensions: dict[str, str] = {}
        self._authenticated = False
        self._sasl: deque[bytes] = deque()  # responses for the coming 334s
        self._cancelled = False  # "*" sent: only the final reply may come
        self._stuffer: DotStuffer | None = None
        self._closed = CloseReason.EOF  # why the session ended, once CLOSED

    def _new_reader(self) -> ReplyReader:
        return ReplyReader()

    # -- what the driver reads ------------------------------------------------------------

    @property
    def extensions(self) -> dict[str, str]:
        """The EHLO keywords (upper-cased) and their parameters, from the last EHLO."""
        return dict(self._extensions)

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    def offers(self, name: str) -> bool:
        return keyword(name) in self._extensions

    def choose_mechanism(self) -> Literal["PLAIN", "LOGIN"]:
        """PLAIN if the server lists it, else LOGIN (RFC 4954; LOGIN is the deployed
        draft). Raises RemoteProtocolError (not temporary) if it lists neither."""
        mechanisms = {keyword(m) for m in self._extensions.get("AUTH", "").split()}
        if "PLAIN" in mechanisms:
            return "PLAIN"
        if "LOGIN" in mechanisms:
            return "LOGIN"
        raise RemoteProtocolError("offers neither AUTH PLAIN nor AUTH LOGIN", temporary=False)

    # -- bytes in ---------------------------------------------------------------------------

    def next_event(self) -> ClientEvent | Literal[Sentinel.NEED_DATA]:
        while True:
            if self._state is ClientState.CLOSED:
                return ConnectionClosed(self._closed)
            event: Reply | ConnectionClosed | Literal[Sentinel.NEED_DATA] = self._read()
            if event is NEED_DATA:
                return NEED_DATA
            if isinstance(event, ConnectionClosed):
                self._closed_by_server()
                return event
            answer = self._answer(event)
            if answer is not None:
                return answer

    def _answer(self, reply: Reply) -> ClientEvent | None:
        command = self._pending
        if command is None:
            raise self._fail(f"sent a reply to no command: {reply.code}")
        if reply.code == 334 and isinstance(command, Authenticate):
            self._challenge()
            return None
        self._pending = None
        success, to, failed = CLIENT_TRANSITIONS[type(command)]
        if reply.code not in success:
            text = MUST_SUCCEED.get(type(command))
            if text is not None:
                temporary = reply.code < 500 or not isinstance(command, Greeting)
                raise self._fail(f"{text}: {reply.code} {reply.text}", temporary=temporary)
            if failed is not None:
                self._state = failed
            self._end_auth()
            return reply
        self._state = to
        if isinstance(command, Quit):
            self._closed = CloseReason.QUIT
        elif isinstance(command, Hello):
            self._extensions = _parse_ehlo(reply) if command.kind == "EHLO" else {}
        elif isinstance(command, Authenticate):
            self._authenticated = True
            self._end_auth()
        elif isinstance(command, StartTLS):
            self._check_cleartext()
            return StartTLS()
        return reply

    def _challenge(self) -> None:
        """A 334 inside AUTH: the next response, or "*" once there is none (a challenge
        where none belongs); a server that challenges after "*" is out of step."""
        if self._cancelled:
            raise self._fail("broke the protocol: a challenge after the cancel")
        if self._sasl:
            self._outgoing += self._sasl.popleft()
        else:
            self._outgoing += CANCEL + b"\r\n"
            self._cancelled = True

    def _end_auth(self) -> None:
        self._sasl.clear()  # the password is not kept past its exchange
        self._cancelled = False

    _forget = _end_auth  # the session failed: the same

    # -- bytes out --------------------------------------------------------------------------

    def send(self, command: Event) -> bytes:
        """The bytes of ``command``. Raises LocalProtocolError where the command cannot be
        sent now (nothing changes), RemoteProtocolError where the server cannot take it."""
        self._check_send(command)
        state = self._state
        try:
            data = self._format(command)
        except ValueError as exc:
            raise LocalProtocolError(str(exc)) from None
        if isinstance(command, BodyData) and (state is ClientState.DATA or not command.data):
            return data  # DATA content (or an empty piece): no reply
        if isinstance(command, StartData) and command.chunked:
            self._state = ClientState.BDAT
            return data
        self._pending = command
        return data

    def _format(self, command: Event) -> bytes:
        match command:
            case Hello(kind=kind, domain=domain):
                return format_command(kind, domain)
            case StartTLS():
                self._check_upgrade()
                return format_command("STARTTLS")
            case Authenticate():
                return self._auth(command)
            case MailFrom():
                self._check_mail(command)
                return format_mail(
                    command.address, size=command.size, body=command.body, smtputf8=command.smtputf8
                )
            case RcptTo(address=address):
                return format_rcpt(address)
            case StartData(chunked=chunked):
                if not chunked:
                    self._stuffer = DotStuffer()
                    return format_command("DATA")
                if not self.offers("CHUNKING"):
                    raise LocalProtocolError("BDAT without CHUNKING (RFC 3030)")
                self._stuffer = None
                return b""
            case BodyData(data=data):
                if self._stuffer is not None:
                    return self._stuffer.feed(data)
                return format_bdat(len(data)) + data if data else b""
            case EndOfMessage(data=data):
                if self._stuffer is not None:
                    stuffer, self._stuffer = self._stuffer, None
                    return stuffer.feed(data) + stuffer.end()
                return format_bdat(len(data), last=True) + data
            case Reset():
                return format_command("RSET")
            case Quit():
                return format_command("QUIT")
        raise LocalProtocolError(f"{type(command).__name__} is no client command")

    def _auth(self, command: Authenticate) -> bytes:
        if not self._tls:
            raise LocalProtocolError("credentials are never sent without TLS")
        if self._authenticated:
            raise LocalProtocolError("already authenticated (RFC 4954 §4)")
        offered = {keyword(m) for m in self._extensions.get("AUTH", "").split()}
        if command.mechanism not in offered:
            raise LocalProtocolError(f"the server does not offer AUTH {command.mechanism}")
        if command.mechanism == "LOGIN":
            responses = [encode(command.username), encode(command.password)]
            line = format_command("AUTH", "LOGIN")
        else:
            response = plain_response(command.username, command.password)
            line = format_command("AUTH", f"PLAIN {response}")
            responses = []
            if len(line) > RFC_COMMAND_LINE_LIMIT:  # RFC 4954 §4: then after the 334
                line, responses = format_command("AUTH", "PLAIN"), [response]
        self._sasl = deque(format_command(r) for r in responses)
        self._cancelled = False
        return line

    def _check_mail(self, command: MailFrom) -> None:
        """RFC 5321 §2.2.1: no parameter of an extension the server did not offer."""
        if command.size is not None and not self.offers("SIZE"):
            raise LocalProtocolError("SIZE= without SIZE (RFC 1870)")
        if command.smtputf8 and not self.offers("SMTPUTF8"):
            raise LocalProtocolError("SMTPUTF8 without SMTPUTF8 (RFC 6531)")
        binary = self.offers("BINARYMIME")
        if command.body is BodyType.BINARY_MIME and not (binary and self.offers("CHUNKING")):
            raise LocalProtocolError("BODY=BINARYMIME without BINARYMIME and CHUNKING")
        if command.body is not None and not (binary or self.offers("8BITMIME")):
            raise LocalProtocolError("BODY= without 8BITMIME (RFC 6152)")

    # -- TLS (``tls_started()`` is the scaffolding's) ----------------------------------------

    def _offers_tls(self) -> bool:
        return self.offers("STARTTLS")

    def _tls_reset(self) -> None:
        """RFC 3207 §4.2: the EHLO keywords learnt in the clear are forgotten; EHLO again."""
        self._extensions = {}
        self._state = ClientState.HELLO


def _parse_ehlo(reply: Reply) -> dict[str, str]:
    """RFC 5321 §4.1.1.1: after the domain line, one ``keyword [params]`` per line."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        name, _, params = line.partition(" ")
        if name:
            extensions[keyword(name)] = params
    return extensions
