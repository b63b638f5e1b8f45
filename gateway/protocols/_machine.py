"""The scaffolding every protocol machine shares: one implementation of the h11 surface.

Each SMTP and POP3 machine is a subclass that keeps only what is its protocol's: its states,
its commands and replies, its reading steps. What is the same for all of them lives here:

* :class:`ServerMachine`: the server role's buffers and bookkeeping: ``receive_data()``
  (``b""`` is EOF; bytes during a TLS handshake or after the end are counted and dropped,
  the CVE-2011-0411 rule), ``next_event()`` (queued events first, then the close, then
  PAUSED while a decision or a handshake is open, else the subclass's ``_step()`` until an
  event or NEED_DATA), ``data_to_send()`` and the tail of ``close()``;
* :class:`ClientMachine`: the client role's lock-step bookkeeping: ``receive_data()``,
  reading the reply reader (its errors and the server's close turned into the machine's
  end), ``send()``'s checks against the state's command table, the refusal of bytes that
  came in the clear with a TLS upgrade's answer (the response-injection twin of
  CVE-2011-0411) and ``tls_started()`` for implicit TLS and after STARTTLS/STLS.

The subclasses say which of their states, error classes and words these are as class
attributes (data, as h11 keeps its tables), and fill in the hooks that raise
NotImplementedError here.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["ClientMachine", "ServerMachine"]


EventT = TypeVar("EventT")
ReplyT = TypeVar("ReplyT")
ReasonT = TypeVar("ReasonT")
SentinelT = TypeVar("SentinelT")
StateT = TypeVar("StateT", bound=enum.Enum)
ReaderT = TypeVar("ReaderT", bound="_ReplyReader")


class ServerMachine(Generic[StateT, EventT, ReplyT, ReasonT, SentinelT]):
    """The server role's scaffolding; see the module docstring. A subclass sets the class
    attributes and ``_state``, and implements the hooks (``_greeted``, ``_step``,
    ``_close``)."""

    _local_error: ClassVar[type[LocalProtocolError[Any]]]
    _state: StateT
    _TLS_HANDSHAKE: StateT  # the upgrade answered: the driver runs the handshake
    _CLOSED: StateT
    _EOF: ReasonT  # the CloseReason of the client's close
    _LOCAL: ReasonT  # the CloseReason of close()
    # The protocol's own sentinels. Each protocol keeps its own Sentinel type (a driver's type
    # checker then catches an SMTP sentinel tested against a POP3 machine's events).
    _NEED_DATA: SentinelT
    _PAUSED: SentinelT

    def __init__(self) -> None:
        self._buffer = bytearray()  # received, not yet read
        self._outgoing = bytearray()  # replies queued for data_to_send()
        self._events: deque[EventT] = deque()  # decided, not yet returned
        self._pending: EventT | None = None  # the decision send() must answer
        self._closed: EventT | None = None  # the ConnectionClosed, once the session is over
        self._eof = False
        self._errors = 0  # spent bad command budget
        self._discarded = 0  # octets dropped

    # -- hooks --------------------------------------------------------------------------------

    def _greeted(self) -> bool:
        """The greeting was sent (``next_event()`` refuses to run before)."""
        raise NotImplementedError

    def _paused(self) -> bool:
        """Nothing more is read until the driver answers."""
        return self._pending is not None or self._state is self._TLS_HANDSHAKE

    def _step(self) -> bool:
        """Make progress on the buffered input; False when more input is needed."""
        raise NotImplementedError

    def _close(self, reason: ReasonT, reply: ReplyT | None) -> None:
        """End the session: queue ``reply``, record and queue the ConnectionClosed."""
        raise NotImplementedError

    # -- the driver's API ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer received bytes; ``b""`` means the client closed its side."""
        if self._eof:
            if data:
                raise self._local_error("received data after EOF")
            return
        if not data:
            self._eof = True
        elif self._state is self._TLS_HANDSHAKE or self._state is self._CLOSED:
            self._discarded += len(data)  # cleartext after STARTTLS/STLS, or a dead session
        else:
            self._buffer += data

    def next_event(self) -> EventT | SentinelT:
        if not self._greeted():
            raise self._local_error("send greeting() first")
        if self._events:
            return self._events.popleft()
        if self._closed is not None:
            return self._closed
        if self._state is self._TLS_HANDSHAKE and self._eof:
            self._close(self._EOF, None)
            return self._events.popleft()
        if self._paused():
            return self._PAUSED
        while not self._events and self._step():
            pass
        return self._events.popleft() if self._events else self._NEED_DATA

    def data_to_send(self) -> bytes:
        out = bytes(self._outgoing)
        del self._outgoing[:]
        return out

    # -- for the subclasses -----------------------------------------------------------------

    def _decision(self, *, busy: bool = False) -> EventT:
        """The decision ``send()`` answers (still pending: the caller clears ``_pending``
        once the reply is known to fit); LocalProtocolError if there is none, or the machine
        is ``busy`` answering one."""
        event = self._pending
        if event is None or self._closed is not None or busy:
            raise self._local_error("no decision is waiting for a reply")
        if self._events:
            raise self._local_error("next_event() has not returned the decision yet")
        return event

    def _close_locally(self, reply: ReplyT) -> bytes:
        """The tail of ``close()``: drop what was decided, close with ``reply`` (once)."""
        if self._closed is None:
            self._events.clear()
            self._pending = None
            self._close(self._LOCAL, reply)
        return self.data_to_send()

    def _no_line(self) -> bool:
        """No whole input is buffered: at EOF the session ends (True), else wait (False)."""
        if self._eof:
            self._close(self._EOF, None)
            return True
        return False


class _ReplyReader(Protocol):
    @property
    def buffered(self) -> int: ...

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> Any: ...


class ClientMachine(Generic[StateT, EventT, ReaderT]):
    """The client role's scaffolding; see the module docstring. A subclass sets the class
    attributes and the reply reader (``_new_reader``); its ``next_event()`` loops on
    ``_read()`` and answers each reply."""

    _local_error: ClassVar[type[LocalProtocolError[Any]]]
    _remote_error: ClassVar[type[RemoteProtocolError[Any]]]
    _GREETING: StateT  # connected, the greeting not read yet
    _TLS_HANDSHAKE: StateT  # the upgrade answered: the driver runs the handshake
    _CLOSED: StateT
    _COMMANDS: Mapping[StateT, frozenset[type[Any]]]  # what send() takes in each state
    _TLS_COMMAND: ClassVar[str]  # "STARTTLS" or "STLS", as messages name it
    _ANSWER: ClassVar[str]  # "reply" or "response", as messages name it

    def __init__(self, pending: EventT) -> None:
        self._reader = self._new_reader()
        self._state = self._GREETING
        self._pending: EventT | None = pending  # the command whose answer is due
        self._tls = False
        self._received = False  # any byte received: implicit TLS must start before
        self._outgoing = bytearray()  # what the machine sends by itself (SASL)

    # -- hooks --------------------------------------------------------------------------------

    def _new_reader(self) -> ReaderT:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop the secrets of an exchange in progress (the session failed)."""

    def _offers_tls(self) -> bool:
        """The server offers STARTTLS/STLS (or LocalProtocolError: it is not known yet)."""
        raise NotImplementedError

    def _tls_reset(self) -> None:
        """TLS is up after the upgrade: forget what was learnt in the clear, move on."""
        raise NotImplementedError

    # -- what the driver reads ------------------------------------------------------------

    @property
    def state(self) -> StateT:
        return self._state

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def reply_due(self) -> bool:
        """An answer is due before the next command (``next_event()`` will return it)."""
        return self._pending is not None

    @property
    def buffered(self) -> int:
        return self._reader.buffered

    # -- bytes in ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer what the server sent; ``b""`` means it closed its side."""
        if data:
            self._received = True
        try:
            self._reader.receive_data(data)
        except RemoteProtocolError as exc:
            raise self._fail(f"broke the protocol: {exc}") from None

    def _fail(self, message: str, *, temporary: bool = True) -> RemoteProtocolError[Any]:
        """The session is over by the server's fault: the error to raise."""
        self._state = self._CLOSED
        self._forget()
        return self._remote_error(message, temporary=temporary)

    def _read(self) -> Any:
        """The reply reader's next event (the subclass annotates what its reader gives); a
        reader's RemoteProtocolError ends the session."""
        try:
            return self._reader.next_event()
        except RemoteProtocolError as exc:
            raise self._fail(f"broke the protocol: {exc}") from None

    def _closed_by_server(self) -> None:
        """The reader saw the server close: the machine is CLOSED; RemoteProtocolError if an
        answer was due."""
        self._state = self._CLOSED
        if self._pending is not None:
            raise self._remote_error("closed the connection")

    def _check_cleartext(self) -> None:
        """RFC 3207 §5, RFC 2595 §4: nothing may come with the upgrade's answer."""
        if self._reader.buffered:
            raise self._fail(f"sent data after its {self._TLS_COMMAND} reply")

    # -- bytes out --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """What the machine sent by itself (SASL responses); write it after every
        ``next_event()``."""
        if not self._outgoing:
            return b""
        out = bytes(self._outgoing)
        del self._outgoing[:]
        return out

    def _check_send(self, command: object) -> None:
        """``send()``'s checks: LocalProtocolError (nothing changes) where ``command`` is not
        one of this state's or an answer is due."""
        state = self._state
        if type(command) not in self._COMMANDS[state]:
            raise self._local_error(f"{type(command).__name__} cannot be sent in {state.name}")
        if self._pending is not None:
            raise self._local_error(f"the {self._ANSWER} to {type(self._pending).__name__} is due")

    def _check_upgrade(self) -> None:
        """STARTTLS/STLS may be sent: not under TLS (LocalProtocolError), and offered (else
        RemoteProtocolError, not temporary: no credential will cross a link in the clear)."""
        if self._tls:
            raise self._local_error("TLS is already active")
        if not self._offers_tls():
            raise self._remote_error(
                f"does not offer {self._TLS_COMMAND}; the password is not sent in the clear",
                temporary=False,
            )

    # -- TLS --------------------------------------------------------------------------------

    def tls_started(self) -> None:
        """The TLS handshake is done: for implicit TLS before any byte was received, or
        after the upgrade's answer. Everything learnt in the clear is forgotten (RFC 3207
        §4.2, RFC 2595 §4)."""
        if self._state is self._GREETING and not self._received and not self._tls:
            self._tls = True
            return
        if self._state is not self._TLS_HANDSHAKE:
            raise self._local_error(f"no {self._TLS_COMMAND} is waiting for its handshake")
        self._check_cleartext()
        self._reader = self._new_reader()
        self._tls = True
        self._tls_reset()
