"""The server side of one SMTP session, as a sans-IO state machine.

Theory of operation
-------------------
The driver writes ``greeting()``, then loops: ``receive_data(bytes)`` when the machine needs
data (``b""`` at EOF), ``next_event()`` for what the bytes mean, and after every call it
writes ``data_to_send()``. The machine answers on its own everything that needs no decision
from the gateway (syntax and sequence errors, EHLO/HELO, NOOP, RSET, HELP, VRFY, QUIT, 354,
BDAT chunks, STARTTLS's 220, the size limit, the recipient limit) and queues those replies in
order. What the gateway must decide (MAIL, RCPT, the end of a message) comes out as an event,
and the machine then PAUSES: ``next_event()`` returns PAUSED until ``send(reply)`` answers
it. Commands are read one at a time and nothing after a paused command is looked at, so the
replies to a pipelined batch (RFC 2920) come out in order, and a command's effect (MAIL
refused, recipients counted) is settled before the next command is judged.

``send()`` returns everything queued before the reply followed by the reply, so replies can
never be reordered. Buffers are bounded if the driver only reads when it gets NEED_DATA: the
receive buffer then holds one read plus less than one command line, DATA leaves at most two
octets behind, BDAT none, and every BodyData piece covers at most BODY_PIECE_SIZE octets.

After STARTTLS (RFC 3207 §4.2) the machine drops every byte it has already received and every
byte received until ``tls_started()``: bytes that came in the clear must never be read as
commands of the TLS session (the command injection of CVE-2011-0411). ``tls_started()`` sends
the session back to just after the greeting; the client must EHLO again.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _replies as R
from ._events import (
    AbortReason,
    Authenticate,
    BodyData,
    CloseReason,
    Hello,
    MailFrom,
    MessageComplete,
    RcptTo,
    Reply,
)
from ._readers import TOO_LONG, LineReader
from ._session import Session, TLSInfo
from ._state import COMMAND_STATES, DECISION_SUCCESS, State
from ._util import LocalProtocolError, RemoteProtocolError
from ._writers import format_reply

__all__ = ["ConnectionStatistics", "ServerConnection"]


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    state: State
    buffered: int  # received octets not yet consumed
    outgoing: int  # reply octets not yet taken by data_to_send()
    events: int  # events decided but not yet returned
    errors: int  # spent bad command budget
    discarded: int  # octets dropped: after STARTTLS, oversized or refused content


class ServerConnection(Session):
    """One SMTP server session; see the module docstring."""

    # -- the driver's API ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def hello(self) -> Hello | None:
        return self._hello

    @property
    def tls(self) -> TLSInfo | None:
        return self._tls

    @property
    def authenticated(self) -> bool:
        """An AUTH was answered 235 in this session."""
        return self._authenticated

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            self._state,
            len(self._buffer),
            len(self._outgoing),
            len(self._events),
            self._errors,
            self._discarded,
        )

    def greeting(self) -> bytes:
        """The 220 greeting (RFC 5321 §4.2); the driver writes it before anything else."""
        if self._state is not State.CONNECTED:
            raise LocalProtocolError("the greeting was already sent")
        self._state = State.GREETED
        return format_reply(R.greeting(self.config.hostname))

    # -- the scaffolding's hooks (``protocols/_machine.py``) ----------------------------------

    def _greeted(self) -> bool:
        return self._state is not State.CONNECTED

    def send(self, reply: Reply) -> bytes:
        """Answer the pending decision; returns the queued replies followed by this one."""
        event = self._decision()
        success = DECISION_SUCCESS[type(event)]
        if reply.code not in success and not 400 <= reply.code <= 599:
            raise LocalProtocolError(f"{reply.code} cannot answer {type(event).__name__}")
        self._pending = None
        accepted = reply.code in success
        if isinstance(event, MailFrom) and accepted:
            self._mail, self._recipients, self._size = event, 0, 0
            self._advance("MAIL")
        elif isinstance(event, RcptTo) and accepted:
            self._recipients += 1
            self._advance("RCPT")
        elif isinstance(event, MessageComplete):
            self._mail = None  # RFC 5321 §4.1.1.4: the transaction ends, whatever the reply
        elif isinstance(event, Authenticate) and accepted:
            self._authenticated = True
        if reply.code == 421:  # RFC 5321 §3.8: the server closes after a 421
            self._close(CloseReason.LOCAL, reply)
        elif isinstance(event, RcptTo) and reply.code >= 500 and not self._authenticated:
            # A recipient refused for good spends the budget like a bad command: a client
            # that tries recipient after recipient is guessing (Postfix counts them too).
            # An authenticated (proxy) session's refusals are its target's business.
            if not self._spend():
                self._reply(reply)
        else:
            self._reply(reply)
        return self.data_to_send()

    def tls_started(self, version: str, cipher: str) -> None:
        """The TLS handshake is done: after STARTTLS, or (in CONNECTED) for implicit TLS."""
        if self._state is State.CONNECTED:
            self._tls, self._tls_active = TLSInfo(version, cipher), True
            return
        if self._state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("no STARTTLS is waiting for its handshake")
        # RFC 3207 §4.2: forget everything learnt from the client in the clear.
        self._tls, self._tls_active = TLSInfo(version, cipher), True
        self._hello = None
        self._authenticated = False
        self._lines = LineReader(self.config.max_line_length)
        self._state = State.GREETED

    def close(self, reply: Reply = R.SHUTTING_DOWN) -> bytes:
        """Close from the gateway's side (shutdown, timeout): the queued replies, then
        ``reply``. ``next_event()`` then returns ConnectionClosed(LOCAL)."""
        if not 400 <= reply.code <= 599:
            raise LocalProtocolError("a closing reply is 4xx or 5xx")
        return self._close_locally(reply)

    # -- reading -----------------------------------------------------------------------------

    def _step(self) -> bool:
        """Make progress on the buffered input; False when more input is needed."""
        if self._state in COMMAND_STATES:
            line = self._lines.read(self._buffer)
            if line is None:
                return self._no_line()
            if line is TOO_LONG:
                self._refuse(R.LINE_TOO_LONG)
            else:
                self._command(line)
            return True
        if self._state is State.AUTH:
            return self._read_sasl()
        if self._state is State.DATA:
            return self._read_data()
        if self._state is State.BDAT:
            return self._read_chunk()
        return False

    def _read_sasl(self) -> bool:
        line = self._lines.read(self._buffer)
        if line is None:
            return self._no_line()
        if line is TOO_LONG:
            self._state = State.READY
            self._refuse(R.AUTH_LINE_TOO_LONG)  # RFC 4954 §4: 500 5.5.6
        else:
            self._sasl_response(line.content)
        return True

    def _read_data(self) -> bool:
        before = len(self._buffer)
        try:
            content, ended = self._data.read(self._buffer)
        except RemoteProtocolError as error:
            self._fatal(AbortReason.BARE_NEWLINE, CloseReason.BARE_NEWLINE, error.reply)
            return True
        if content:
            self._take_content(content)
        if ended:
            if self._mail is None:  # the size limit aborted it: answer now it is consumed
                self._state = State.READY
                self._reply(R.MESSAGE_TOO_BIG)
            else:
                self._decide(MessageComplete(), State.READY)
        elif len(self._buffer) == before:
            return self._no_line()
        return True

    def _read_chunk(self) -> bool:
        if self._chunk.remaining:
            data = self._chunk.read(self._buffer)
            if not data:
                return self._no_line()
            if self._chunk_refusal is None:
                self._take_content(data)
            else:
                self._discarded += len(data)
            if self._chunk.remaining:
                return True
        refusal, self._chunk_refusal = self._chunk_refusal, None
        if refusal is not None:
            self._state = self._after_chunk
            self._refuse(refusal)
        elif self._chunk_last:
            self._decide(MessageComplete(), State.READY)
        else:
            self._state = State.CHUNKED
            self._reply(R.chunk_received(self._chunk_size))
        return True

    def _take_content(self, content: bytes) -> None:
        if self._mail is None:
            self._discarded += len(content)
            return
        room = self.config.max_message_size - self._size
        self._size += len(content)
        if len(content) <= room:
            self._events.append(BodyData(content))
            return
        # Over the limit: hand over what fits (so the events do not depend on how the input
        # was split), abort, and keep consuming to the end of the content, then 552.
        if room > 0:
            self._events.append(BodyData(content[:room]))
        self._abort(AbortReason.SIZE_LIMIT)
        self._discarded += len(content) - room
