"""The session core of the SMTP server: its state, the command interpreter and the replies.

:class:`Session` holds everything one SMTP session knows and interprets one command line at a
time (RFC 5321 §4.1 and the extensions the EHLO reply lists); ``_connection.ServerConnection``
adds the driver's API and the reading loop on top. The split is by size only: the two classes
are one machine, and nothing but ServerConnection subclasses Session.

Every command goes through the same gate (:meth:`Session._check`): unknown (500), refused
before TLS (530, RFC 3207 §4), not implemented (502), out of sequence (``TRANSITIONS`` in
``_state.py``). BDAT is read past the gate first, because its octets follow the command
whatever the answer: a refused chunk is still consumed (and discarded), or its content would
be read as commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from .._machine import ServerMachine
from .._sasl import (
    CANCEL,
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    SaslError,
    decode_login_field,
    decode_plain,
)
from . import _replies as R
from ._events import (
    NEED_DATA,
    PAUSED,
    AbortReason,
    Authenticate,
    BodyType,
    CloseReason,
    ConnectionClosed,
    Event,
    Hello,
    MailFrom,
    MessageAborted,
    Quit,
    Reply,
    Sentinel,
    StartData,
    StartTLS,
)
from ._readers import ChunkReader, DataReader, Line, LineReader
from ._settings import SMTPSettings
from ._state import (
    ALLOWED_BEFORE_STARTTLS,
    BUDGETED_CODES,
    FORBIDDEN_COMMANDS,
    KNOWN_COMMANDS,
    SEQUENCE_REPLIES,
    TRANSACTION_STATES,
    TRANSITIONS,
    UNIMPLEMENTED_COMMANDS,
    State,
)
from ._syntax import (
    CONTROL_CHARACTERS,
    ascii_upper,
    parse_bdat,
    parse_mail,
    parse_rcpt,
    split_command,
)
from ._util import LocalProtocolError, RemoteProtocolError
from ._writers import format_reply

__all__ = ["Session", "TLSInfo"]


@dataclass(frozen=True, slots=True)
class TLSInfo:
    version: str  # "TLSv1.3"
    cipher: str  # "TLS_AES_256_GCM_SHA384"


class Session(
    ServerMachine[State, Event, Reply, CloseReason, Literal[Sentinel.NEED_DATA, Sentinel.PAUSED]]
):
    _local_error = LocalProtocolError
    _TLS_HANDSHAKE = State.TLS_HANDSHAKE
    _CLOSED = State.CLOSED
    _EOF = CloseReason.EOF
    _LOCAL = CloseReason.LOCAL
    _NEED_DATA = NEED_DATA
    _PAUSED = PAUSED

    def __init__(self, config: SMTPSettings) -> None:
        super().__init__()  # buffers, events, the pending decision, EOF, budget, discards
        self.config: Final = config
        self._state = State.CONNECTED
        self._lines = LineReader(config.max_line_length)
        self._data = DataReader(reject_bare_lf=config.bare_newline == "reject")
        self._chunk = ChunkReader(0)
        self._chunk_last = False
        self._chunk_size = 0
        self._chunk_refusal: Reply | None = None  # a refused BDAT's reply, after its octets
        self._after_chunk = State.READY
        self._tls_active = config.tls_active
        self._tls: TLSInfo | None = None
        self._hello: Hello | None = None
        self._authenticated = False
        # The SASL exchange in progress: its mechanism and, for LOGIN, the username so far.
        self._sasl: Literal["PLAIN", "LOGIN"] = "PLAIN"
        self._sasl_username: str | None = None
        # The transaction: the accepted MailFrom (None once it ended or was aborted).
        self._mail: MailFrom | None = None
        self._recipients = 0
        self._size = 0

    # -- commands ----------------------------------------------------------------------------

    def _command(self, line: Line) -> None:
        if line.bare_lf and self.config.bare_newline == "reject":
            self._fatal(AbortReason.BARE_NEWLINE, CloseReason.BARE_NEWLINE, R.BARE_NEWLINE)
            return
        try:
            text = line.content.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse(R.BAD_CHARACTERS)
            return
        if CONTROL_CHARACTERS.search(text):
            self._refuse(R.BAD_CHARACTERS)
            return
        verb, argument = split_command(text)
        if verb in FORBIDDEN_COMMANDS:
            self._close(CloseReason.FORBIDDEN_COMMAND, R.CROSS_PROTOCOL)
        elif verb == "BDAT":
            self._bdat(argument)  # its octets follow whatever the answer: read them first
        elif (refusal := self._check(verb)) is not None:
            self._refuse(refusal)
        else:
            _HANDLERS[verb](self, verb, argument)

    def _check(self, verb: str) -> Reply | None:
        """The refusal of a command on the grounds every command shares, or None."""
        if verb not in KNOWN_COMMANDS and verb not in UNIMPLEMENTED_COMMANDS:
            return R.UNRECOGNIZED
        tls_missing = self.config.require_tls and not self._tls_active
        if tls_missing and verb not in ALLOWED_BEFORE_STARTTLS:
            return R.TLS_REQUIRED
        if verb in UNIMPLEMENTED_COMMANDS:
            in_transaction = verb == "AUTH" and self._state in TRANSACTION_STATES
            return R.IN_TRANSACTION if in_transaction else R.NOT_IMPLEMENTED
        if verb not in TRANSITIONS[self._state]:
            return SEQUENCE_REPLIES.get((self._state, verb), R.BAD_SEQUENCE)
        return None

    def _hello_command(self, verb: str, argument: str) -> None:
        if not argument:
            self._refuse(R.SYNTAX_EHLO if verb == "EHLO" else R.SYNTAX_HELO)
            return
        self._abort(AbortReason.RESET)  # RFC 5321 §4.1.4: EHLO/HELO imply RSET
        kind: Literal["EHLO", "HELO"] = "EHLO" if verb == "EHLO" else "HELO"
        self._hello = Hello(kind, argument)
        self._advance(verb)
        if kind == "EHLO":
            self._reply(R.ehlo(self.config.hostname, self._extensions()))
        else:
            self._reply(R.helo(self.config.hostname))
        self._events.append(self._hello)

    def _extensions(self) -> tuple[str, ...]:
        extensions: tuple[str, ...] = (
            "PIPELINING",  # RFC 2920
            f"SIZE {self.config.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "CHUNKING",  # RFC 3030
            "BINARYMIME",  # RFC 3030
            "SMTPUTF8",  # RFC 6531
            "ENHANCEDSTATUSCODES",  # RFC 2034
        )
        if self.config.auth_offered and self._tls_active:
            extensions += ("AUTH PLAIN LOGIN",)  # RFC 4954; never offered in the clear
        if self.config.starttls_offered and not self._tls_active:
            extensions += ("STARTTLS",)  # RFC 3207; never again once TLS is up
        return extensions

    def _esmtp(self) -> bool:
        return self._hello is not None and self._hello.kind == "EHLO"

    def _mail_command(self, _verb: str, argument: str) -> None:
        try:
            event = parse_mail(argument, esmtp=self._esmtp())
        except RemoteProtocolError as error:
            self._refuse(error.reply or R.SYNTAX_MAIL)
            return
        if event.size is not None and event.size > self.config.max_message_size:
            self._refuse(R.MESSAGE_TOO_BIG)  # RFC 1870 §6.2
            return
        self._decide(event, self._state)

    def _rcpt_command(self, _verb: str, argument: str) -> None:
        mail = self._mail
        assert mail is not None  # TRANSITIONS allows RCPT only inside a transaction
        try:
            event = parse_rcpt(argument, esmtp=self._esmtp(), smtputf8=mail.smtputf8)
        except RemoteProtocolError as error:
            self._refuse(error.reply or R.SYNTAX_RCPT)
            return
        if self._recipients >= self.config.max_recipients:
            self._refuse(R.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10
            return
        self._decide(event, self._state)

    def _data_command(self, _verb: str, argument: str) -> None:
        if argument:
            self._refuse(R.NO_ARGUMENTS)
        elif self._mail is not None and self._mail.body is BodyType.BINARY_MIME:
            self._refuse(R.BINARYMIME_NEEDS_BDAT)  # RFC 3030 §3: binary content needs BDAT
        else:
            self._advance("DATA")
            self._data = DataReader(reject_bare_lf=self.config.bare_newline == "reject")
            self._size = 0
            self._reply(R.START_MAIL_INPUT)
            self._events.append(StartData())

    def _bdat(self, argument: str) -> None:
        try:
            size, last = parse_bdat(argument)
        except RemoteProtocolError as error:
            # Without a size the octets cannot be skipped; they will read as commands and
            # spend the budget, which is what a desynchronized client deserves.
            self._refuse(error.reply or R.SYNTAX_BDAT)
            return
        refusal = self._check("BDAT")
        if refusal is None and not self._esmtp():
            refusal = R.EHLO_FIRST  # CHUNKING is only offered to EHLO
        self._chunk, self._chunk_last, self._chunk_size = ChunkReader(size), last, size
        self._after_chunk, self._chunk_refusal = self._state, refusal
        if refusal is None:
            if self._state is State.RCPT:
                self._size = 0
                self._events.append(StartData(chunked=True))
            if self._size + size > self.config.max_message_size:
                # The endless-BDAT defence: refuse before reading, then skip the octets.
                self._abort(AbortReason.SIZE_LIMIT)
                self._after_chunk, self._chunk_refusal = State.READY, R.MESSAGE_TOO_BIG
        self._state = State.BDAT  # the octets are read whatever the answer

    def _rset(self, _verb: str, argument: str) -> None:
        if argument:
            self._refuse(R.NO_ARGUMENTS)
            return
        self._abort(AbortReason.RESET)
        self._advance("RSET")
        self._reply(R.OK)

    def _simple(self, verb: str, argument: str) -> None:
        if verb == "VRFY" and not argument:
            self._refuse(R.SYNTAX_VRFY)
        else:
            self._reply({"NOOP": R.OK, "HELP": R.HELP, "VRFY": R.VRFY_CANNOT}[verb])

    def _quit(self, _verb: str, _argument: str) -> None:
        # RFC 5321 §4.1.1.10: QUIT takes no argument; one is ignored rather than refused,
        # since refusing it would keep alive a session the client wants closed.
        self._abort(AbortReason.CLOSED)
        self._reply(R.BYE)
        self._events.append(Quit())
        self._advance("QUIT")
        self._closed = ConnectionClosed(CloseReason.QUIT)
        del self._buffer[:]

    def _starttls(self, _verb: str, argument: str) -> None:
        if argument:
            self._refuse(R.NO_ARGUMENTS)  # RFC 3207 §4: 501, no parameters allowed
        elif self._tls_active:
            self._refuse(R.TLS_ACTIVE)
        elif not self.config.starttls_offered:
            self._refuse(R.NOT_IMPLEMENTED)
        elif not self._esmtp():
            self._refuse(R.EHLO_FIRST)
        else:
            # CVE-2011-0411: whatever followed STARTTLS came in the clear; drop it.
            self._discarded += len(self._buffer)
            del self._buffer[:]
            self._reply(R.READY_FOR_TLS)
            self._advance("STARTTLS")
            self._events.append(StartTLS())

    def _auth(self, _verb: str, argument: str) -> None:
        """RFC 4954 §4: AUTH mechanism [initial-response], PLAIN (RFC 4616) or LOGIN."""
        parts = argument.split(" ")
        if not self.config.auth_offered:
            self._refuse(R.NOT_IMPLEMENTED)
        elif not self._tls_active:
            self._refuse(R.AUTH_NEEDS_TLS)
        elif self._authenticated:
            self._refuse(R.ALREADY_AUTHENTICATED)
        elif not self._esmtp():
            self._refuse(R.EHLO_FIRST)
        elif not argument or len(parts) > 2:
            self._refuse(R.SYNTAX_AUTH)
        elif ascii_upper(parts[0]) not in ("PLAIN", "LOGIN"):
            self._refuse(R.AUTH_MECHANISM)
        else:
            self._sasl = "PLAIN" if ascii_upper(parts[0]) == "PLAIN" else "LOGIN"
            self._sasl_username = None
            if len(parts) == 2:
                self._sasl_response(parts[1].encode())
            else:
                first = "" if self._sasl == "PLAIN" else LOGIN_USERNAME_CHALLENGE
                self._challenge(first)

    def _challenge(self, challenge: str) -> None:
        self._state = State.AUTH
        self._reply(R.auth_challenge(challenge))

    def _sasl_response(self, response: bytes) -> None:
        """One response of the SASL exchange (the initial one, or a line after a 334)."""
        self._state = State.READY
        if response == CANCEL:
            self._refuse(R.AUTH_CANCELLED)
            return
        try:
            if self._sasl == "PLAIN":
                username, password = decode_plain(response)
            elif self._sasl_username is None:
                self._sasl_username = decode_login_field(response)
                self._challenge(LOGIN_PASSWORD_CHALLENGE)
                return
            else:
                username, password = self._sasl_username, decode_login_field(response)
        except SaslError as error:
            self._refuse(R.AUTH_FAILED if error.kind == "authzid" else R.AUTH_MALFORMED)
            return
        self._sasl_username = None
        self._decide(Authenticate(self._sasl, username, password), State.READY)

    # -- replies, decisions and endings -------------------------------------------------------

    def _advance(self, verb: str) -> None:
        """Take the transition the table gives a successful ``verb``."""
        self._state = TRANSITIONS[self._state][verb]

    def _reply(self, reply: Reply) -> None:
        self._outgoing += format_reply(reply)

    def _refuse(self, reply: Reply) -> None:
        """Queue an error reply, or close with 421 once the bad command budget is spent."""
        if reply.code in BUDGETED_CODES and self._spend():
            return
        self._reply(reply)

    def _spend(self) -> bool:
        """Spend one unit of the bad command budget; past it, close with 421 (True)."""
        self._errors += 1
        if self._errors > self.config.bad_command_budget:
            self._close(CloseReason.TOO_MANY_ERRORS, R.TOO_MANY_ERRORS)
            return True
        return False

    def _decide(self, event: Event, state: State) -> None:
        self._state = state
        self._pending = event
        self._events.append(event)

    def _abort(self, reason: AbortReason) -> None:
        """End the open transaction (if any) without a message."""
        if self._mail is not None:
            self._mail = None
            self._events.append(MessageAborted(reason))

    def _fatal(self, abort: AbortReason, close: CloseReason, reply: Reply | None) -> None:
        self._abort(abort)
        self._close(close, reply)

    def _close(self, reason: CloseReason, reply: Reply | None) -> None:
        self._abort(AbortReason.CLOSED)
        if reply is not None:
            self._reply(reply)
        self._state = State.CLOSED
        self._pending = None
        self._closed = ConnectionClosed(reason, reply)
        self._events.append(self._closed)
        self._discarded += len(self._buffer)
        del self._buffer[:]


_Handler = Callable[[Session, str, str], None]
_HANDLERS: Final[dict[str, _Handler]] = {
    "EHLO": Session._hello_command,
    "HELO": Session._hello_command,
    "MAIL": Session._mail_command,
    "RCPT": Session._rcpt_command,
    "DATA": Session._data_command,
    "RSET": Session._rset,
    "NOOP": Session._simple,
    "HELP": Session._simple,
    "VRFY": Session._simple,
    "QUIT": Session._quit,
    "STARTTLS": Session._starttls,
    "AUTH": Session._auth,
}
