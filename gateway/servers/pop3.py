"""The POP3 listener's sessions: retrieval, the projector the archive pulls from (RFC 1939,
RFC 2449, RFC 2595 STLS, RFC 5034 AUTH PLAIN), and the recording POP3 proxy.

Theory of operation
-------------------
Each connection is one :class:`~.session.Session` driving the sans-IO
``protocols.pop3.ServerConnection``, which answers everything that needs no mailbox (and
refuses credentials in the clear). Until a login succeeds the session's job is
:class:`Authorization`, here. A login names a mailbox by id or by its address in the
gateway's mail domain; the password opens its private key (Argon2id in a worker thread, at
most ``pop3.max_unlocks`` at once, in the order of ``services.throttle.UnlockQueue``: clients
that logged in to the mailbox from their address before go first). A failed login is answered
``failure_delay`` seconds after it arrived, whether the mailbox exists or not, and failures in
a row lock out the client address and the mailbox (``services.throttle.LoginGuard``: not for
the clients trusted for it) for a while; the reply never tells which part was wrong. Then the
maildrop is locked (one session per mailbox: a second gets ``[IN-USE]``) and the session's job
is retrieval (``servers.pop3_retrieval``). A proxy login ``remote_user%target%mailbox_id``
makes it the recording proxy (``servers.pop3_proxy``) instead, with login counts of its own.

Each login attempt is a ``Pop3Login`` event, each session ends with ``Pop3SessionEnded`` (or
``Pop3ProxySessionEnded``), but for a session that tried no login, once such sessions come
faster than the audit rate: it is counted in the listener's ``ConnectionsSummarized`` instead
(``servers.limits``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..config import Config, ListenerConfig, TLSMode
from ..crypto import CryptoError, MailboxPrivateKey
from ..events import Pop3Login, now
from ..ids import InvalidId, parse_mailbox_id
from ..protocols.pop3 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Login,
    POP3Settings,
    Reply,
    ServerConnection,
    StartTLS,
    replies,
)
from ..services.archive import ArchiveError
from ..services.routing import ProxyLogin, RoutingError, parse_proxy_login
from ..services.source_keys import SourceKeys
from ..services.throttle import LoginGuard, UnlockQueue
from ..store import StoreClient
from ..tls import TLSContextHolder, describe_tls
from .limits import AuditRate, TrafficTally
from .pop3_proxy import POP3Proxy, POP3Relay, ProxyRefused, open_relay
from .pop3_retrieval import Retrieval, closed, record, retrieval_ended
from .session import Hook, Session, Wire

__all__ = ["POP3Server"]

logger = logging.getLogger("gateway.pop3")

RECEIVE_SIZE = 16 * 1024

LOGIN_FAILED = Reply(False, "invalid credentials", "AUTH")
THROTTLED = Reply(False, "too many failed logins, try again later", "AUTH")
IN_USE = Reply(False, "maildrop already locked by another session", "IN-USE")
UNAVAILABLE = Reply(False, "maildrop unavailable, try again later", "SYS/TEMP")
TOO_MANY_SESSIONS = Reply(False, "too many connections, try again later", "SYS/TEMP")
TIMEOUT = Reply(False, "autologout: idle for too long")

POP3 = Wire(
    kind="pop3",
    need_data=NEED_DATA,
    paused=PAUSED,
    receive_size=RECEIVE_SIZE,
    timeout=TIMEOUT,
    shutting_down=replies.SHUTTING_DOWN,
    streaming=lambda conn: bool(conn.streaming),  # a half-sent response cannot take a -ERR
)


@dataclass(eq=False)
class POP3Server:
    config: Config
    store: StoreClient
    tls: TLSContextHolder
    source_keys: SourceKeys = field(kw_only=True)  # the POP3 proxy's dedupe keys (SPEC.md 5.5)
    # Where quiet sessions over the audit rate are counted (the gateway's, shared).
    tally: TrafficTally = field(default_factory=TrafficTally, kw_only=True)
    quiet: AuditRate = field(default_factory=AuditRate, kw_only=True)

    def __post_init__(self) -> None:
        pop3 = self.config.pop3
        self.logins = LoginGuard(max_failures=pop3.max_failures)  # retrieval logins
        self.proxy_logins = LoginGuard(max_failures=pop3.max_failures)  # POP3 proxy logins
        self.unlocks = UnlockQueue(pop3.max_unlocks)

    async def handle(self, stream: trio.abc.Stream, listener: ListenerConfig, peer: str) -> None:
        """One session; the gateway's accept loop counted it against the session limits
        already (and refused it with TOO_MANY_SESSIONS if over them)."""
        pop3 = self.config.pop3
        tls = describe_tls(stream)
        conn = ServerConnection(
            POP3Settings(
                hostname=self.config.hostname,
                tls_active=bool(tls),
                stls_offered=listener.tls == TLSMode.STARTTLS and not tls,
                bad_command_budget=pop3.bad_command_budget,
            )
        )
        session = Session(
            POP3, conn, stream, listener, peer, tls, self.tls, read_timeout=pop3.idle_timeout
        )
        await session.run(Authorization(self, session))


class Authorization:
    """The job of a POP3 session until a login succeeds (RFC 1939 AUTHORIZATION)."""

    def __init__(self, server: POP3Server, session: Session) -> None:
        self.server = server
        self.session = session
        self.store = server.store
        self.config = server.config
        self.peer = session.peer
        self.login_attempted = False  # a Pop3Login was written: the session is never folded
        self.hooks: dict[type, Hook] = {
            StartTLS: self._start_tls,
            Login: self._login,
            ConnectionClosed: self._closed,
        }

    async def _start_tls(self, event: StartTLS) -> None:
        await self.session.start_tls()
        self.session.conn.tls_started()

    async def _closed(self, event: ConnectionClosed) -> bool:
        return closed(self.session, event)

    async def _login(self, event: Login) -> None:
        session = self.session
        await session.send(session.conn.send(await self._log_in(event)))

    async def _log_in(self, event: Login) -> Reply:
        server, logins = self.server, self.server.logins
        arrived = trio.current_time()
        self.login_attempted = True
        domain = self.config.mail_domain
        try:
            proxy = parse_proxy_login(event.username, domain=domain)
        except RoutingError as exc:
            server.proxy_logins.failed(self.peer, "")
            await self._login_audit(event, "", False, f"malformed proxy login: {exc}")
            await trio.sleep_until(arrived + self.config.pop3.failure_delay)
            return LOGIN_FAILED
        if proxy is not None:
            return await self._proxy_login(event, proxy, arrived)
        try:
            # The mailbox, however spelled (id or address, any case): the throttles' key.
            mailbox_id = parse_mailbox_id(event.username.strip(), domain=domain)
        except InvalidId:
            mailbox_id = ""
        counted = self._counted(mailbox_id)
        if logins.locked(self.peer, counted):
            await self._login_audit(event, mailbox_id, False, "throttled")
            await trio.sleep_until(arrived + self.config.pop3.failure_delay)
            return THROTTLED
        trusted = logins.trusted(self.peer, counted)
        if counted:
            key, reason = await self._unlock(counted, event.password, trusted=trusted)
        else:  # no such mailbox: said the same way, and no unlock queued
            key, reason = None, "wrong credentials" if mailbox_id else "not a mailbox id"
        if key is None:
            logins.failed(self.peer, counted)
            await self._login_audit(event, mailbox_id, False, reason)
            await trio.sleep_until(arrived + self.config.pop3.failure_delay)
            return UNAVAILABLE if reason == "mailbox damaged" else LOGIN_FAILED
        logins.succeeded(self.peer, mailbox_id)
        if not await self.store.lock_maildrop(mailbox_id):  # across every worker
            await self._login_audit(event, mailbox_id, False, "in use")
            return IN_USE
        # Locked: from here on the retrieval job unlocks it when the session ends.
        retrieval = Retrieval(server, self.session, mailbox_id, key)
        self.session.switch(retrieval)
        current = self.store.mailbox(mailbox_id).key_id
        retrieval.maildrop = await self.store.maildrop(mailbox_id, current)
        await self._login_audit(event, mailbox_id, True, "")
        count, size = len(retrieval.maildrop), retrieval.maildrop.total_bytes
        return Reply(True, f"maildrop has {count} messages ({size} octets)")

    async def _proxy_login(self, event: Login, proxy: ProxyLogin, arrived: float) -> Reply:
        logins = self.server.proxy_logins
        counted = self._counted(proxy.mailbox_id)
        if logins.locked(self.peer, counted):
            await self._login_audit(event, proxy.mailbox_id, False, "throttled")
            await trio.sleep_until(arrived + self.config.pop3.failure_delay)
            return THROTTLED
        try:
            upstream = await open_relay(
                self.config,
                self.store,
                self.session.listener,
                proxy,
                event.password,
                auth_failed=LOGIN_FAILED,
            )
        except ProxyRefused as exc:
            # Every refusal counts and waits, a target that cannot be reached too: the proxy
            # is no faster a port scanner than a password guesser.
            logins.failed(self.peer, counted)
            await self._login_audit(event, proxy.mailbox_id, False, f"proxy: {exc.reason}")
            await trio.sleep_until(arrived + self.config.pop3.failure_delay)
            refusal: Reply = exc.reply
            return refusal
        logins.succeeded(self.peer, proxy.mailbox_id)
        session = self.session
        relay = POP3Relay(
            session.conn,
            session.send,
            upstream,
            self.store,
            proxy,
            self.peer,
            session.tls,
            source_keys=self.server.source_keys,
        )
        session.switch(POP3Proxy(self.store, session, relay))
        await self._login_audit(event, proxy.mailbox_id, True, f"proxy to {proxy.target}")
        return Reply(True, f"logged in to {proxy.target}")

    def _counted(self, mailbox_id: str) -> str:
        """The throttles' key for a login naming ``mailbox_id``: the id if the mailbox
        exists, else "" (counted against the address only, so guessing ids cannot grow the
        throttle)."""
        if not mailbox_id:
            return ""
        try:
            self.store.mailbox(mailbox_id)
        except ArchiveError:
            return ""
        return mailbox_id

    async def _unlock(
        self, mailbox_id: str, password: str, *, trusted: bool
    ) -> tuple[MailboxPrivateKey | None, str]:
        try:
            async with self.server.unlocks.slot(trusted=trusted):
                key = await self.store.unlock(mailbox_id, password)
        except CryptoError:  # WrongPassword, or a key file that does not check out
            return None, "wrong credentials"
        except ValueError:  # a password the KDF refuses (over 1024 bytes)
            return None, "wrong credentials"
        except ArchiveError as exc:
            if "damaged" in str(exc):
                logger.error(
                    "event=pop3-mailbox-damaged mailbox=%s reason=%r", mailbox_id, str(exc)
                )
                return None, "mailbox damaged"
            return None, "wrong credentials"  # no such mailbox: said the same way
        return key, ""

    async def _login_audit(self, event: Login, mailbox_id: str, success: bool, reason: str) -> None:
        logger.info(
            "event=pop3-login session=%s client=%s mailbox=%s success=%s reason=%r",
            self.session.session_id,
            self.peer,
            mailbox_id or "-",
            success,
            reason,
        )
        await record(
            self.store,
            Pop3Login(
                at=now(),
                actor=self.session.actor,
                session_id=self.session.session_id,
                client_address=self.peer,
                mailbox_id=mailbox_id,
                mechanism=event.mechanism,
                success=success,
                reason=reason,
            ),
        )

    async def close(self) -> None:
        pass

    async def audit(self, seconds: float) -> None:
        server, session = self.server, self.session
        if not self.login_attempted and not server.quiet.allow():
            # No login tried: nothing to audit but that it happened, which the listener's
            # ConnectionsSummarized counts once such sessions come faster than the rate.
            server.tally.folded(session.listener.name, session.peer, {})
            return
        await retrieval_ended(self.store, session, "", (), (), seconds)
