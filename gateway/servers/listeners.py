"""Listening sockets and their accept loops, for whichever process serves them (SPEC.md 12.1,
16): bound here, or inherited from the supervisor that bound them once for every worker.

Connections count against their protocol's limits (``servers.limits``) from the moment they
are accepted, before any TLS handshake: one over a limit is answered at once (a plain
listener's protocol reply; nothing on an implicit-TLS listener, which has no reply before its
handshake) and closed, and only counted (``ConnectionsSummarized``, once a minute at most).
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio

from ..config import ListenerConfig, Protocol, TLSMode
from ..protocols import pop3 as pop3_protocol
from ..protocols import smtp as smtp_protocol
from ..tls import TLSContextHolder
from ..tlsstream import wrap_server
from .limits import SessionLimiter, TrafficTally
from .load import DEFER, DEFER_MAX, WorkerLoads
from .pop3 import TOO_MANY_SESSIONS as POP3_TOO_MANY_SESSIONS
from .smtp import TOO_MANY_SESSIONS as SMTP_TOO_MANY_SESSIONS

__all__ = ["DESCRIPTORS_PER_CONNECTION", "Acceptor", "Handler"]

logger = logging.getLogger("gateway")

# A TLS handshake on the implicit-TLS ports must finish within this; a client that opens a
# connection and says nothing must not hold a session slot for long.
HANDSHAKE_TIMEOUT = 30.0
# The refusal of a connection over the limits is written within this, or not at all.
REFUSAL_TIMEOUT = 1.0
# Descriptors a connection may take: the client's, and an upstream's for a proxy session.
DESCRIPTORS_PER_CONNECTION = {Protocol.SMTP: 2, Protocol.POP3: 2, Protocol.ADMIN: 1}
# What a plain listener says to a connection over the limits before closing it.
BUSY_REPLY = {
    Protocol.SMTP: smtp_protocol.format_reply(SMTP_TOO_MANY_SESSIONS),
    Protocol.POP3: pop3_protocol.format_reply(POP3_TOO_MANY_SESSIONS),
}

Handler = Callable[[trio.abc.Stream, ListenerConfig, str], Awaitable[None]]


@dataclass(eq=False)
class Acceptor:
    """The accept loops of one process: limits from accept, implicit TLS handshakes, one
    task per session in ``sessions``."""

    limiters: Mapping[Protocol, SessionLimiter]
    tally: TrafficTally
    tls: Callable[[], TLSContextHolder]
    trusted: dict[Protocol, Callable[[str], bool]] = field(default_factory=dict)
    # The sessions of every worker accepting on the same sockets: a busier one defers.
    loads: WorkerLoads | None = None

    @property
    def sessions_active(self) -> int:
        return sum(
            limiter.active
            for protocol, limiter in self.limiters.items()
            if protocol != Protocol.ADMIN
        )

    async def accept(
        self,
        listener: trio.SocketListener,
        cfg: ListenerConfig,
        handler: Handler,
        sessions: trio.Nursery,
    ) -> None:
        limiter = self.limiters[cfg.protocol]
        trusted = self.trusted.get(cfg.protocol, _nobody)
        busy = BUSY_REPLY.get(cfg.protocol, b"") if cfg.tls != TLSMode.IMPLICIT else b""
        self._publish()  # serving from now on
        deferred = 0.0
        while True:
            if (
                self.loads is not None
                and deferred < DEFER_MAX
                and self.loads.busier(self.sessions_active)
            ):
                # Another worker serves fewer sessions: once a connection waits, leave it to
                # that one a moment, and look again (servers/load.py).
                await trio.lowlevel.wait_readable(listener.socket)
                await trio.sleep(DEFER)
                deferred += DEFER
                continue
            deferred = 0.0
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: wait rather than spin (trio's serve_listeners does too).
                    logger.error("event=accept-failed reason=%r", os.strerror(exc.errno))
                    await trio.sleep(0.1)
                    continue
                raise
            peer = _peer_address(stream)
            # Counted from accept, before any handshake: an idle connection holds a slot.
            if not limiter.try_acquire(peer, trusted=trusted(peer)):
                self.tally.refused(cfg.name, peer)
                await _refuse(stream, busy)
                continue
            self._publish()
            sessions.start_soon(self._session, stream, cfg, handler, peer, limiter)

    def _publish(self) -> None:
        if self.loads is not None:
            self.loads.publish(self.sessions_active)

    async def _session(
        self,
        stream: trio.SocketStream,
        cfg: ListenerConfig,
        handler: Handler,
        peer: str,
        limiter: SessionLimiter,
    ) -> None:
        wrapped: trio.abc.Stream = stream
        try:
            if cfg.tls == TLSMode.IMPLICIT:
                ssl_stream = wrap_server(stream, self.tls().context)
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    await ssl_stream.do_handshake()
                    wrapped = ssl_stream
                if wrapped is stream:
                    return
            await handler(wrapped, cfg, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # A client that simply goes away is no news (a browser closes the spare
            # connections it opened for a page, a health check connects and leaves): DEBUG.
            # What else cut a session short (a failed handshake, say) stays INFO.
            logger.log(
                logging.DEBUG if _went_away(exc) else logging.INFO,
                "event=session-dropped listener=%s client=%s reason=%r",
                cfg.name,
                peer,
                str(exc),
            )
        except Exception:
            # One bad session never takes the server down.
            logger.exception("event=session-failed listener=%s client=%s", cfg.name, peer)
        finally:
            limiter.release(peer)
            self._publish()
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await trio.aclose_forcefully(wrapped)


def _nobody(_peer: str) -> bool:
    return False


# How a peer's leaving shows: a TCP close without TLS close_notify (a ragged EOF), a reset,
# a write to a connection it closed.
_GONE = (ssl.SSLEOFError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def _went_away(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it: the stream errors wrap the socket's and the
    TLS library's) is only the client ending its connection, or says nothing at all."""
    if not str(exc):
        return True
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; never follow a cycle
        if seen is None:
            break
        if isinstance(seen, _GONE):
            return True
        seen = seen.__cause__
    return False


async def _refuse(stream: trio.SocketStream, reply: bytes) -> None:
    """Say ``reply`` (if any) and close. A fresh socket's send buffer is empty, so this does
    not block the accept loop; it is bounded all the same."""
    try:
        if reply:
            with trio.move_on_after(REFUSAL_TIMEOUT):
                await stream.send_all(reply)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


def _peer_address(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "unknown"
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
