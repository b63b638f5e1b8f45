"""One driver for every SMTP and POP3 session, whatever its job.

Theory of operation
-------------------
As hypercorn drives any protocol through one wrapper, :class:`Session` does a connection's
I/O for both sans-IO server machines (``protocols.smtp.ServerConnection``,
``protocols.pop3.ServerConnection``): it writes the greeting, reads with the session's one
:class:`~.timeouts.ReadTimer`, feeds the machine, writes what it queued before every wait
(so pipelined commands cost one write per batch), runs the STARTTLS/STLS handshake, and
ends the session the same way for both: ``timeout`` (the protocol's timeout reply),
``shutdown`` (its shutting-down reply, unless a multi-line response is half sent),
``dropped``, or what the job said. Then the job lets go of what it holds and writes the
session's audit record, shielded.

As aiosmtpd puts policy behind handler hooks, every decision is a :class:`Job`'s: a table
from event type to a coroutine (``hooks``), which answers through the machine and returns
True when the session is over. A session starts with one job and may hand over to another
once (:meth:`Session.switch`): SMTP journal intake to the SMTP relay after a proxy AUTH, POP3
authorization to retrieval or to the POP3 relay after a login. The hot path (a read, an event)
looks one hook up by the event's type and awaits it: no scope, lock or allocation of its own.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ..config import ListenerConfig
from ..events import Actor
from ..tls import TLSContextHolder, describe_tls
from ..tlsstream import wrap_server
from .timeouts import ReadTimer

__all__ = ["HANDSHAKE_TIMEOUT", "Hook", "Job", "Machine", "Session", "Wire"]

HANDSHAKE_TIMEOUT = 30.0  # STARTTLS / STLS: the client's handshake

# A job's answer to one event: True ends the session (the job set its outcome).
Hook = Callable[[Any], Awaitable["bool | None"]]


class Machine(Protocol):
    """What the driver needs of a server machine (both protocols' ``ServerConnection``)."""

    def greeting(self) -> bytes: ...
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> object: ...
    def data_to_send(self) -> bytes: ...
    def close(self, reply: Any) -> bytes: ...


class Job(Protocol):
    """One job of a session: the hooks that answer its events, what it lets go of when the
    session ends, and the session's audit record."""

    hooks: dict[type, Hook]

    async def close(self) -> None:
        """The session is over (before the audit): let go of writers, locks, upstreams."""

    async def audit(self, seconds: float) -> None:
        """The session's record (shielded, at most 5 s)."""


@dataclass(frozen=True)
class Wire:
    """What differs between the protocols at the driver's level."""

    kind: str  # the actor kind of the session's records: "smtp", "pop3"
    need_data: object  # the machine's NEED_DATA and PAUSED sentinels
    paused: object
    receive_size: int  # octets asked of one read
    timeout: Any  # the reply a session gets when a read timed out...
    shutting_down: Any  # ...and when the gateway stops
    streaming: Callable[[Any], bool]  # mid multi-line response: nothing else may go


class Session:
    """One connection; the gateway's accept loop counted it against the session limits
    already. ``outcome``, ``tls``, ``stream`` and ``read_timeout`` belong to the jobs too."""

    def __init__(
        self,
        wire: Wire,
        conn: Any,
        stream: trio.abc.Stream,
        listener: ListenerConfig,
        peer: str,
        tls: str,
        tls_context: TLSContextHolder,
        *,
        read_timeout: float,
    ) -> None:
        self.wire = wire
        self.conn = conn
        self.stream = stream
        self.listener = listener
        self.peer = peer
        self.tls = tls  # describe_tls of the stream: "" in the clear
        self.tls_context = tls_context
        self.read_timeout = read_timeout  # for the next read; a job may change it
        self.session_id = secrets.token_hex(6)
        self.actor = Actor(kind=wire.kind, address=peer)
        self.outcome = "closed"
        self.started = time.monotonic()
        self.reads = ReadTimer()
        self.job: Job
        self.hooks: dict[type, Hook]

    def switch(self, job: Job) -> None:
        """From now on ``job`` answers the events, lets go and audits."""
        self.job, self.hooks = job, job.hooks

    async def run(self, job: Job) -> None:
        self.switch(job)
        wire = self.wire
        try:
            await self.stream.send_all(self.conn.greeting())
            with self.reads.running():
                await self._loop()
        except trio.TooSlowError:
            self.outcome = "timeout"
            with trio.move_on_after(5):
                await self.stream.send_all(self.conn.close(wire.timeout))
        except trio.Cancelled:
            # Shutdown: the grace period is over. Say so, briefly, then let go.
            self.outcome = "shutdown"
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                if not wire.streaming(self.conn):
                    await self.stream.send_all(self.conn.close(wire.shutting_down))
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.outcome = "dropped"
        finally:
            await self.job.close()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.job.audit(time.monotonic() - self.started)

    async def _loop(self) -> None:
        conn, wire, reads = self.conn, self.wire, self.reads
        need_data, size = wire.need_data, wire.receive_size
        while True:
            event = conn.next_event()
            pending = conn.data_to_send()
            if pending:
                await self.stream.send_all(pending)
            if event is need_data:
                conn.receive_data(await reads.receive(self.stream, size, self.read_timeout))
                continue
            hook = self.hooks.get(type(event))
            if hook is None:
                hook = self._hook(event)
                if hook is None:
                    continue
            if await hook(event):
                return

    def _hook(self, event: object) -> Hook | None:
        """The hook of an event type the table does not name itself (a subclass of one it
        does); None for an event the job does not act on."""
        if event is self.wire.paused:  # pragma: no cover - every pause has a hook
            raise RuntimeError(f"{self.wire.kind} machine paused with no decision pending")
        for cls in type(event).__mro__[1:]:
            if (hook := self.hooks.get(cls)) is not None:
                return hook
        return None

    async def send(self, data: bytes) -> None:
        if data:
            await self.stream.send_all(data)

    async def start_tls(self) -> None:
        """STARTTLS / STLS: the handshake (the caller tells the machine); the session's
        stream and ``tls`` are the TLS ones from here on."""
        ssl_stream = wrap_server(self.stream, self.tls_context.context)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await ssl_stream.do_handshake()
        self.stream = ssl_stream
        self.tls = describe_tls(ssl_stream)
