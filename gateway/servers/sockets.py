"""Listening sockets bound (by the supervisor, or a process that serves alone) or inherited as
descriptors from the supervisor that bound them once for every worker (SPEC.md 16.1). Apart
from ``listeners`` (their accept loops) so the supervisor, which only binds, starts without
the protocol code."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from ..config import ListenerConfig, Protocol, TLSMode

__all__ = ["Bound", "Listening", "StartupError", "adopt", "bind"]

logger = logging.getLogger("gateway")


class StartupError(Exception):
    """Start-up cannot go on; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Listening:
    name: str
    protocol: Protocol
    address: str
    port: int
    tls: TLSMode


@dataclass(slots=True)
class Bound:
    """One configured listener and its sockets (one per address family it resolved to)."""

    config: ListenerConfig
    sockets: list[trio.SocketListener]

    def listening(self) -> list[Listening]:
        cfg = self.config
        return [
            Listening(cfg.name, cfg.protocol, str(host), int(port), cfg.tls)
            for sock in self.sockets
            for host, port in [sock.socket.getsockname()[:2]]
        ]

    def announce(self) -> list[Listening]:
        """Log where it listens (tests and the benchmarks read these lines); return it."""
        items = self.listening()
        for item in items:
            logger.info(
                "event=listening name=%s protocol=%s address=%s port=%d tls=%s",
                item.name,
                item.protocol,
                item.address,
                item.port,
                item.tls,
            )
        return items

    def close(self) -> None:
        for sock in self.sockets:
            sock.socket.close()


async def bind(listeners: Sequence[ListenerConfig]) -> list[Bound]:
    """Bind every listener; a listener that cannot bind stops start-up, naming its address."""
    bound: list[Bound] = []
    try:
        for listener in listeners:
            try:
                sockets = await trio.open_tcp_listeners(
                    listener.port, host=listener.address, backlog=None
                )
            except OSError as exc:
                raise StartupError(
                    f"listener {listener.name}: cannot listen on {listener.address}:"
                    f"{listener.port}: {exc.strerror or exc}"
                ) from None
            bound.append(Bound(listener, sockets))
    except BaseException:
        for item in bound:
            item.close()
        raise
    return bound


def adopt(listener: ListenerConfig, fds: Sequence[int]) -> Bound:
    """A listener whose sockets were bound by the supervisor and inherited as descriptors."""
    sockets = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd))) for fd in fds
    ]
    return Bound(listener, sockets)
