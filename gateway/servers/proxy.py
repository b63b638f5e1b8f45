"""What the two recording proxies share: from a parsed proxy login to a TLS connection with
the target, every refusal a :class:`TargetRefused` whose ``kind`` each protocol turns into
its own reply (SPEC.md 15.1 and 15.2)."""

from __future__ import annotations

import enum
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..config import Config
from ..events import MailboxStatus
from ..services.archive import ArchiveError
from ..services.routing import ProxyLogin, RoutingError, TargetPolicy
from ..store import StoreClient
from .upstream import UpstreamError, client_context, open_upstream

__all__ = [
    "RUN_SECONDS",
    "RUN_SIZE",
    "Refusal",
    "Runs",
    "TargetRefused",
    "reach_target",
    "safe_text",
]

U = TypeVar("U")

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


class Refusal(enum.StrEnum):
    MAILBOX = "mailbox"  # no such gateway mailbox, or not active: said like bad credentials
    DENIED = "denied"  # the target policy refuses every address of the target
    TEMPORARY = "temporary"  # cannot resolve, connect, handshake, or lost: try later
    PERMANENT = "permanent"  # untrusted certificate, no STARTTLS/STLS: trying again won't help


class TargetRefused(Exception):
    """The proxy cannot reach the target. ``reason`` is for the log and the audit record and
    safe to show the client (never a password)."""

    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


async def reach_target(
    config: Config,
    store: StoreClient,
    login: ProxyLogin,
    *,
    default_port: int,
    start: Callable[[trio.SocketStream, ssl.SSLContext], Awaitable[U]],
) -> U:
    """Check the gateway mailbox (it must exist and be active), connect to the target under
    the policy and hand the connection to ``start`` (the protocol's TLS and greeting), whose
    UpstreamError becomes a TargetRefused too."""
    try:
        info = store.mailbox(login.mailbox_id)
    except ArchiveError:
        raise TargetRefused(Refusal.MAILBOX, "no such mailbox") from None
    if info.status != MailboxStatus.ACTIVE or store.damaged(info.mailbox_id):
        raise TargetRefused(Refusal.MAILBOX, "mailbox not active")
    proxy = config.proxy
    policy = TargetPolicy.build(proxy.allow, proxy.deny)
    try:
        tcp = await open_upstream(
            login.host, login.port or default_port, policy, connect_timeout=proxy.connect_timeout
        )
        context = client_context(proxy.ca_files, verify=login.host not in proxy.insecure_targets)
        return await start(tcp, context)
    except RoutingError as exc:
        raise TargetRefused(Refusal.DENIED, str(exc)) from None
    except UpstreamError as exc:
        kind = Refusal.TEMPORARY if exc.temporary else Refusal.PERMANENT
        raise TargetRefused(kind, str(exc)) from None


def safe_text(text: str, limit: int = 400) -> str:
    """Text that fits one reply line: printable, at most ``limit`` octets of UTF-8."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    if len(clean.encode()) <= limit:
        return clean
    return clean.encode()[:limit].decode(errors="ignore")
