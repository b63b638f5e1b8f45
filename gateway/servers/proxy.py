"""What the two recording proxies share: from a parsed proxy login to a TLS connection with
the target and on to the upstream login (:func:`open_relay`), every refusal a
:class:`ProxyRefused` carrying the protocol's own reply (SPEC.md 15.1 to 15.4)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from ..config import Config, ListenerConfig, TLSMode
from ..events import MailboxStatus
from ..services.archive import ArchiveError
from ..services.routing import ProxyLogin, RoutingError, TargetPolicy
from ..store import StoreClient
from .upstream import UpstreamError, client_context, open_upstream

__all__ = [
    "RUN_SECONDS",
    "RUN_SIZE",
    "ProxyRefused",
    "Runs",
    "open_relay",
    "safe_text",
]


class _Upstream(Protocol):
    async def aclose(self) -> None: ...


U = TypeVar("U", bound=_Upstream)
R = TypeVar("R")

RUN_SIZE = 32 * 1024  # message octets relayed and stored in one write
RUN_SECONDS = 0.2  # ...or fewer, once the first of them has waited this long


class Runs:
    """Message content gathered into runs, so a relay writes once per run instead of once
    per TLS record: ``add`` returns a run once RUN_SIZE octets are held or the oldest has
    waited RUN_SECONDS (a slow sender is not held back), ``take`` whatever is held."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0
        self._since = 0.0

    def add(self, piece: bytes) -> bytes | None:
        now = trio.current_time()
        if not self._pieces:
            self._since = now
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size >= RUN_SIZE or now - self._since >= RUN_SECONDS:
            return self.take()
        return None

    def take(self) -> bytes:
        run = b"".join(self._pieces)
        self._pieces, self._size = [], 0
        return run


class ProxyRefused(Exception):
    """The proxy login cannot go on; ``reply`` (the protocol's own ``Reply``) is what the
    client gets, ``reason`` what the log and the audit record say (safe to show, never a
    password). Every one counts as a failed login."""

    def __init__(self, reply: Any, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


async def open_relay(
    config: Config,
    store: StoreClient,
    listener: ListenerConfig,
    login: ProxyLogin,
    *,
    default_ports: dict[TLSMode, int],
    start: Callable[..., Awaitable[U]],
    log_in: Callable[[U], Awaitable[R]],
    refused: Any,
    unavailable: Any,
) -> tuple[U, R]:
    """Check the gateway mailbox (it must exist and be active), connect to the target under
    the policy, hand the connection to ``start`` (the upstream class's ``start``: TLS,
    implicit when the client came in on an implicit-TLS listener, and greeting) and log in upstream
    (``log_in``): the upstream and its answer to the login, which the caller judges.

    A mailbox that cannot take copies is refused with ``refused`` (said like bad
    credentials); every way the target cannot be used before it judged the credentials with
    ``unavailable``: one reply for all, or the proxy would be a port scanner (open or closed,
    TLS or not); the reason says which (``denied``, ``temporary`` or ``permanent``: whether
    trying again may help). Raises ProxyRefused."""
    try:
        info = store.mailbox(login.mailbox_id)
    except ArchiveError:
        raise ProxyRefused(refused, "no such mailbox") from None
    if info.status != MailboxStatus.ACTIVE or store.damaged(info.mailbox_id):
        raise ProxyRefused(refused, "mailbox not active")
    proxy = config.proxy
    policy = TargetPolicy.build(proxy.allow, proxy.deny)
    try:
        tcp = await open_upstream(
            login.host,
            login.port or default_ports[listener.tls],
            policy,
            connect_timeout=proxy.connect_timeout,
        )
        context = client_context(proxy.ca_files, verify=login.host not in proxy.insecure_targets)
        upstream = await start(
            tcp,
            login.host,
            context,
            implicit_tls=listener.tls == TLSMode.IMPLICIT,
            io_timeout=proxy.upstream_timeout,
        )
    except RoutingError as exc:
        raise ProxyRefused(unavailable, f"denied: {exc}") from None
    except UpstreamError as exc:
        raise ProxyRefused(unavailable, _unavailable(exc)) from None
    try:
        reply = await log_in(upstream)
    except UpstreamError as exc:
        await upstream.aclose()
        raise ProxyRefused(unavailable, _unavailable(exc)) from None
    except BaseException:
        await upstream.aclose()
        raise
    return upstream, reply


def _unavailable(exc: UpstreamError) -> str:
    return f"{'temporary' if exc.temporary else 'permanent'}: {exc}"


def safe_text(text: str, limit: int = 400) -> str:
    """Text that fits one reply line: printable, at most ``limit`` octets of UTF-8."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    if len(clean.encode()) <= limit:
        return clean
    return clean.encode()[:limit].decode(errors="ignore")
