"""The recording POP3 proxy: a client logged in as ``remote_user%target%mailbox_id`` talks to
its provider's POP3 server through the gateway, and every message it retrieves with RETR is
kept in the gateway mailbox (SPEC.md 15.3).

Theory of operation
-------------------
A POP3 session's login (``servers.pop3``) hands a proxy login to :func:`open_relay`, which
checks the gateway mailbox (it must exist and be active), connects upstream under the target
policy with TLS (implicit if the client came in on implicit TLS, STLS otherwise), and logs in
with the client's remote username and password. From then on the session's job is
:class:`POP3Proxy`: :class:`POP3Relay` answers the client's commands with the upstream's own
replies, and the session ends with ``Pop3ProxySessionEnded``.

The first RETR of a session asks the upstream for its UIDL listing; a message whose key
(target, remote user, UIDL) the mailbox already holds is relayed but not stored again.
Otherwise the response goes to the client and into a :class:`MessageWriter` as it arrives,
in runs (``proxy.Runs``: a large message streams through), and the copy is
committed (durable) before the terminating dot is sent. If storing fails, the client gets no
terminating dot: the connection ends, upstream gets no QUIT, and nothing is deleted there. A
client's QUIT goes upstream only after every copy of the session is durable (each was,
before its RETR ended). TOP output is relayed, never stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..config import Config, ListenerConfig, TLSMode
from ..events import Envelope, MessageRef, Pop3ProxySessionEnded, now
from ..log import LogWriteError
from ..protocols.pop3 import (
    UIDL_LISTING_LIMIT,
    ConnectionClosed,
    Dele,
    Event,
    List,
    Noop,
    Quit,
    Reply,
    Retr,
    Rset,
    ServerConnection,
    Stat,
    Top,
    Uidl,
)
from ..services.archive import ArchiveError
from ..services.routing import ProxyLogin
from ..services.source_keys import SourceKeys, legacy_source_key
from ..services.writer import MessageWriter
from ..store import StoreClient
from . import proxy
from .pop3_retrieval import closed, record, session_ended
from .proxy import ProxyRefused, Runs, safe_text
from .session import Hook, Session
from .upstream import POP3Upstream, UpstreamError

__all__ = [
    "RELAYED",
    "UIDL_LISTING_LIMIT",
    "POP3Proxy",
    "POP3Relay",
    "ProxyRefused",
    "StoreFailed",
    "open_relay",
]

logger = logging.getLogger("gateway.pop3")

RELAYED = (Stat, List, Uidl, Retr, Top, Dele, Rset, Noop, Quit)
UPSTREAM_FAILED = Reply(False, "upstream failed", "SYS/TEMP")
ARCHIVE_UNAVAILABLE = Reply(False, "archive mailbox unavailable, message not retrieved", "SYS/TEMP")
# One reply for every way the target cannot be used before it judged the credentials (see
# smtp_proxy.TARGET_UNAVAILABLE): the proxy must not tell open ports from closed ones.
TARGET_UNAVAILABLE = Reply(False, "proxy target unavailable", "SYS/TEMP")
DEFAULT_PORTS = {TLSMode.IMPLICIT: 995, TLSMode.STARTTLS: 110}


class StoreFailed(Exception):
    """A retrieved message could not be made durable: the session must end without the
    terminating dot (and without QUIT upstream)."""


async def batched(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body in :class:`Runs` (the last one whatever is left)."""
    runs = Runs()
    async for piece in body:
        if (run := runs.add(piece)) is not None:
            yield run
    if last := runs.take():
        yield last


def source_key(keys: SourceKeys, login: ProxyLogin, uidl: str) -> tuple[str, str]:
    """(the key a new copy is stored under: HMAC under the gateway's secret, the unkeyed key
    copies stored before the secret carry); see services.source_keys and SPEC.md 5.5."""
    keyed = keys.key(login.mailbox_id, login.target, login.remote_user, uidl)
    return keyed, legacy_source_key(login.target, login.remote_user, uidl)


async def open_relay(
    config: Config,
    store: StoreClient,
    listener: ListenerConfig,
    login: ProxyLogin,
    password: str,
    *,
    auth_failed: Reply,
) -> POP3Upstream:
    """Check the mailbox, connect and log in upstream. Raises ProxyRefused."""
    upstream, reply = await proxy.open_relay(
        config,
        store,
        listener,
        login,
        default_ports=DEFAULT_PORTS,
        start=POP3Upstream.start,
        log_in=lambda upstream: upstream.login(login.remote_user, password),
        refused=auth_failed,
        unavailable=TARGET_UNAVAILABLE,
    )
    if not reply.ok:
        await upstream.aclose()
        text = safe_text(f"upstream login failed: {reply.text}")
        raise ProxyRefused(Reply(False, text, "AUTH"), "upstream login failed")
    return upstream


@dataclass(eq=False)
class POP3Relay:
    conn: ServerConnection
    send: Callable[[bytes], Awaitable[None]]
    upstream: POP3Upstream
    store: StoreClient
    login: ProxyLogin
    client_address: str
    client_tls: str
    retrieved: int = 0
    stored: list[MessageRef] = field(default_factory=list)
    _uidl_map: dict[int, str] | None = field(default=None, init=False)  # None: not asked yet
    _uidl_each: bool = field(default=False, init=False)  # the listing was too large
    source_keys: SourceKeys = field(kw_only=True)

    async def handle(self, event: Event) -> None:
        """Answer one client command with the upstream's answer. Raises UpstreamError,
        StoreFailed."""
        conn, up = self.conn, self.upstream
        match event:
            case Stat():
                await self.send(conn.send(await up.command("STAT")))
            case List(msg=None):
                await self._multiline("LIST")
            case List(msg=int(msg)):
                await self.send(conn.send(await up.command("LIST", str(msg))))
            case Uidl(msg=None):
                await self._multiline("UIDL")
            case Uidl(msg=int(msg)):
                await self.send(conn.send(await up.command("UIDL", str(msg))))
            case Top(msg=msg, lines=lines):
                await self._multiline("TOP", str(msg), str(lines))
            case Dele(msg=msg):
                await self.send(conn.send(await up.command("DELE", str(msg))))
            case Rset():
                await self.send(conn.send(await up.command("RSET")))
            case Noop():
                await self.send(conn.send(await up.command("NOOP")))
            case Retr(msg=msg):
                await self._retrieve(msg)
            case Quit():
                # Every copy of this session was durable before its RETR ended.
                await self.send(conn.send(await up.command("QUIT")))

    async def _multiline(self, verb: str, *args: str) -> None:
        reply, body = await self.upstream.multiline(verb, *args)
        if not reply.ok:
            await self.send(self.conn.send(reply))
            return
        out = self.conn.send_stream_start(reply)
        async for data in batched(body):
            await self.send(out + self.conn.send_stream_data(data))
            out = b""
        await self.send(out + self.conn.send_stream_end())

    async def _retrieve(self, msg: int) -> None:
        up = self.upstream
        uidl = await self._uidl(msg)
        key, legacy = source_key(self.source_keys, self.login, uidl) if uidl else ("", "")
        mailbox_id = self.login.mailbox_id
        writer: MessageWriter | None = None
        if not (key and await self.store.has_source(mailbox_id, key, legacy)):
            try:  # before RETR goes upstream: a mailbox that cannot take it is refused
                writer = self.store.begin_message([mailbox_id], key)
            except ArchiveError as exc:
                logger.warning("event=pop3-proxy-archive-unavailable reason=%r", str(exc))
                await self.send(self.conn.send(ARCHIVE_UNAVAILABLE))
                return
        try:
            reply, body = await up.multiline("RETR", str(msg))
            if not reply.ok:
                await self.send(self.conn.send(reply))
                return
            self.retrieved += 1
            out = self.conn.send_stream_start(reply)
            async for data in batched(body):
                if writer is not None:
                    await writer.write(data)
                await self.send(out + self.conn.send_stream_data(data))
                out = b""
            if writer is not None:
                ids = await writer.commit(self._envelope(uidl))
                self.stored.append(MessageRef(ids[mailbox_id], writer.size))
                writer = None
        except (ArchiveError, LogWriteError, OSError) as exc:
            raise StoreFailed(str(exc)) from None
        finally:
            if writer is not None:
                await writer.abort()
        await self.send(out + self.conn.send_stream_end())

    async def _uidl(self, msg: int) -> str:
        """The upstream's unique id of message ``msg``, "" if it has none (then nothing is
        recognised as stored before). From the UIDL listing, asked for once per session at
        the first RETR (numbers and UIDLs do not change within a session, RFC 1939 §7); with
        ``UIDL n`` per message where the listing is too large to keep."""
        if self._uidl_map is None:
            # Over UIDL_LISTING_LIMIT (8 MiB, ~200,000 messages) a listing is not kept.
            listing = await self.upstream.uidls(limit=UIDL_LISTING_LIMIT)
            self._uidl_map, self._uidl_each = listing.uidls, not listing.complete
        if not self._uidl_each:
            return self._uidl_map.get(msg, "")
        return (await self.upstream.uidls(msg)).uidls.get(msg, "")

    def _envelope(self, uidl: str) -> Envelope:
        return Envelope(
            received_at=now(),
            origin="pop3-proxy",
            client_address=self.client_address,
            tls=self.client_tls,
            target=self.login.target,
            remote_user=self.login.remote_user,
            upstream_uidl=uidl,
        )


class POP3Proxy:
    """The job of a POP3 session after a proxy login: every command through the relay."""

    def __init__(self, store: StoreClient, session: Session, relay: POP3Relay) -> None:
        self.store = store
        self.session = session
        self.relay = relay
        self.hooks: dict[type, Hook] = dict.fromkeys(RELAYED, self._step)
        self.hooks[ConnectionClosed] = self._closed

    async def _step(self, event: Event) -> bool:
        """One command through the proxy; True when the session is over."""
        session = self.session
        try:
            await self.relay.handle(event)
        except UpstreamError as exc:
            session.outcome = "upstream-error"
            logger.info(
                "event=pop3-proxy-upstream-failed session=%s reason=%r",
                session.session_id,
                str(exc),
            )
            if not session.conn.streaming:
                await session.send(session.conn.close(UPSTREAM_FAILED))
            return True
        except StoreFailed as exc:
            # No terminating dot: the client knows the message did not arrive whole.
            session.outcome = "store-failed"
            logger.error(
                "event=pop3-proxy-store-failed session=%s mailbox=%s reason=%r",
                session.session_id,
                self.relay.login.mailbox_id,
                str(exc),
            )
            return True
        if isinstance(event, Quit):
            session.outcome = "quit"
            return True
        return False

    async def _closed(self, event: ConnectionClosed) -> bool:
        return closed(self.session, event)

    async def close(self) -> None:
        # Without the client's QUIT, upstream gets none either: nothing is deleted.
        await self.relay.upstream.aclose()

    async def audit(self, seconds: float) -> None:
        session, relay, login = self.session, self.relay, self.relay.login
        seconds = round(seconds, 3)
        session_ended(session, login.mailbox_id, 0, 0, seconds)
        await record(
            self.store,
            Pop3ProxySessionEnded(
                at=now(),
                actor=session.actor,
                session_id=session.session_id,
                listener=session.listener.name,
                client_address=session.peer,
                mailbox_id=login.mailbox_id,
                target=login.target,
                remote_user=login.remote_user,
                client_tls=session.tls,
                upstream_tls=relay.upstream.tls,
                retrieved=relay.retrieved,
                stored=tuple(relay.stored),
                outcome=session.outcome,
                seconds=seconds,
            ),
        )
