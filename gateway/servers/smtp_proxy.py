"""The recording SMTP proxy: a client that authenticates as ``remote_user%target%mailbox_id``
sends its mail through the gateway to its provider's submission server, and every message
the provider accepts is kept in the gateway mailbox (SPEC.md 15.4).

Theory of operation
-------------------
Journal intake (``servers.smtp_journal``) hands every AUTH to :func:`authenticate`. A proxy
login goes to :func:`open_relay`, which checks the gateway mailbox, connects to the target
under the policy with TLS (implicit if the client came in on implicit TLS, STARTTLS
otherwise: refused, password unsent, if the target offers none), and authenticates there
with the client's remote username and password. Every AUTH attempt is an ``SmtpLogin``
event, answered (when it fails) ``smtp.auth_failure_delay`` after it arrived. A login the
target accepts hands the session over to :class:`SMTPProxy` for the rest of its life: its
transactions go through :class:`~.smtp_relay.SMTPRelay`, and the session ends with
``SmtpProxySessionEnded`` instead of ``SmtpSessionEnded``.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Final

import trio

from ..config import Config, ListenerConfig, TLSMode
from ..events import SmtpLogin, SmtpProxySessionEnded, now
from ..protocols.smtp import (
    Authenticate,
    BodyData,
    ConnectionClosed,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    Quit,
    RcptTo,
    Reply,
    StartData,
    replies,
)
from ..services.archive import ArchiveError
from ..services.routing import ProxyLogin, RoutingError, parse_proxy_login
from ..store import StoreClient
from . import proxy
from .proxy import ProxyRefused
from .session import Hook, Session
from .smtp_relay import SMTPRelay
from .upstream import SMTPUpstream, UpstreamError

if TYPE_CHECKING:
    from .smtp import SMTPServer

__all__ = ["DEFAULT_PORTS", "ProxyRefused", "SMTPProxy", "SMTPRelay", "authenticate", "open_relay"]

logger = logging.getLogger("gateway.smtp")

# RFC 8314 §3.3 (submissions on 465, implicit TLS) and RFC 6409 (submission on 587, where
# AUTH belongs); a target on port 25 is named with ":25".
DEFAULT_PORTS: Final = {TLSMode.IMPLICIT: 465, TLSMode.STARTTLS: 587}

# One reply for every way the target cannot be used before it judged the credentials:
# denied by the policy, unresolvable, closed, filtered, not TLS, an untrusted certificate, no
# STARTTLS or AUTH, a broken login exchange. Telling them apart would make the proxy a port
# scanner (open or closed, TLS or not); the reason is in the log and the SmtpLogin record.
TARGET_UNAVAILABLE: Final = Reply(454, "4.7.0", ("Proxy target unavailable",))
UPSTREAM_LOST: Final = Reply(421, "4.4.2", ("Connection to the target lost, closing connection",))
THROTTLED: Final = Reply(454, "4.7.0", ("Too many failed logins, try again later",))


async def open_relay(
    config: Config,
    store: StoreClient,
    listener: ListenerConfig,
    login: ProxyLogin,
    password: str,
) -> tuple[SMTPUpstream, Reply]:
    """Check the mailbox, connect and authenticate upstream: the session and the upstream's
    235. Raises ProxyRefused."""
    upstream, reply = await proxy.open_relay(
        config,
        store,
        listener,
        login,
        default_ports=DEFAULT_PORTS,
        start=functools.partial(
            SMTPUpstream.start,
            final_timeout=config.proxy.final_reply_timeout,
            helo=config.hostname,
        ),
        log_in=lambda upstream: upstream.authenticate(login.remote_user, password),
        refused=replies.AUTH_FAILED,
        unavailable=TARGET_UNAVAILABLE,
    )
    if reply.code != 235:
        await upstream.quit()
        if not 400 <= reply.code <= 599:
            reply = replies.AUTH_FAILED
        # The provider's own refusal (535 5.7.8, 454 4.7.0...) reaches the client.
        raise ProxyRefused(reply, "upstream login failed")
    return upstream, reply


async def authenticate(
    server: SMTPServer, session: Session, event: Authenticate, helo: str
) -> Reply:
    """AUTH: a proxy login opens the relay (and hands ``session`` over to it); anything else
    fails like bad credentials. The reply to the AUTH."""
    store, config = server.store, server.config
    peer, delay = session.peer, config.smtp.auth_failure_delay
    arrived = trio.current_time()
    try:
        login = parse_proxy_login(event.username, domain=config.mail_domain)
    except RoutingError as exc:
        login, reason = None, f"malformed proxy login: {exc}"
    else:
        reason = "not a proxy login"
    if login is None:
        server.logins.failed(peer, "")
        await _login_audit(store, session, event, "", "", False, reason)
        await trio.sleep_until(arrived + delay)
        return replies.AUTH_FAILED
    # The mailbox, however spelled, if it exists (else the address alone counts).
    key = login.mailbox_id if _exists(store, login.mailbox_id) else ""
    if server.logins.locked(peer, key):
        await _login_audit(
            store, session, event, login.mailbox_id, login.target, False, "throttled"
        )
        await trio.sleep_until(arrived + delay)
        return THROTTLED
    try:
        upstream, reply = await open_relay(config, store, session.listener, login, event.password)
    except ProxyRefused as exc:
        # Every refusal counts and waits, a target that cannot be reached too: the proxy
        # is no faster a port scanner than a password guesser.
        server.logins.failed(peer, key)
        await trio.sleep_until(arrived + delay)
        reason = f"proxy: {exc.reason}"
        await _login_audit(store, session, event, login.mailbox_id, login.target, False, reason)
        refusal: Reply = exc.reply
        return refusal
    server.logins.succeeded(peer, login.mailbox_id)
    relay = SMTPRelay(upstream, store, login, peer, session.tls, helo)
    session.switch(SMTPProxy(server, session, relay))
    await _login_audit(store, session, event, login.mailbox_id, login.target, True, "")
    return reply


def _exists(store: StoreClient, mailbox_id: str) -> bool:
    try:
        store.mailbox(mailbox_id)
    except ArchiveError:
        return False
    return True


async def _login_audit(
    store: StoreClient,
    session: Session,
    event: Authenticate,
    mailbox_id: str,
    target: str,
    success: bool,
    reason: str,
) -> None:
    logger.info(
        "event=smtp-login session=%s client=%s mailbox=%s target=%s success=%s reason=%r",
        session.session_id,
        session.peer,
        mailbox_id or "-",
        target or "-",
        success,
        reason,
    )
    await store.append_control(
        SmtpLogin(
            at=now(),
            actor=session.actor,
            session_id=session.session_id,
            client_address=session.peer,
            mailbox_id=mailbox_id,
            target=target,
            mechanism=event.mechanism,
            success=success,
            reason=reason,
        ),
        durable=False,
    )


class SMTPProxy:
    """The job of an SMTP session after a proxy login: every event through the relay."""

    def __init__(self, server: SMTPServer, session: Session, relay: SMTPRelay) -> None:
        self.store = server.store
        self.timeouts = server.config.smtp
        self.session = session
        self.relay = relay
        step = self._step
        self.hooks: dict[type, Hook] = {
            cls: step
            for cls in (
                Hello,
                MailFrom,
                RcptTo,
                StartData,
                BodyData,
                MessageComplete,
                MessageAborted,
                Quit,
                ConnectionClosed,
                Authenticate,
            )
        }

    async def _step(self, event: object) -> bool:
        """One event of a proxy session; True when the session is over."""
        session, relay = self.session, self.relay
        conn = session.conn
        try:
            match event:
                case Hello(domain=domain):
                    relay.helo = domain
                case MailFrom():
                    await session.stream.send_all(conn.send(await relay.mail(event)))
                case RcptTo(address=address):
                    await session.stream.send_all(conn.send(await relay.rcpt(address)))
                case StartData(chunked=chunked):
                    session.read_timeout = self.timeouts.data_timeout
                    await relay.start_content(bdat=chunked)
                case BodyData(data=data):
                    await relay.content(data)
                case MessageComplete():
                    session.read_timeout = self.timeouts.command_timeout
                    await session.stream.send_all(conn.send(await relay.complete()))
                case MessageAborted(reason=reason):
                    session.read_timeout = self.timeouts.command_timeout
                    await relay.abort(reason)
                case Quit():
                    session.outcome = "quit"
                    await relay.quit()
                    return True
                case ConnectionClosed(reason=reason):
                    session.outcome = str(reason)
                    return True
                case Authenticate():  # pragma: no cover - the machine refuses a second AUTH
                    raise RuntimeError("AUTH in an authenticated session")
        except UpstreamError as exc:
            session.outcome = "upstream-error"
            logger.info(
                "event=smtp-proxy-upstream-failed session=%s reason=%r",
                session.session_id,
                str(exc),
            )
            await session.stream.send_all(conn.close(UPSTREAM_LOST))
            return True
        return False

    async def close(self) -> None:
        await self.relay.aclose()

    async def audit(self, seconds: float) -> None:
        session, relay = self.session, self.relay
        logger.info(
            "event=smtp-proxy-session session=%s listener=%s client=%s mailbox=%s target=%s "
            "relayed=%d stored=%d refused=%d unrecorded=%d outcome=%s seconds=%.2f",
            session.session_id,
            session.listener.name,
            session.peer,
            relay.login.mailbox_id,
            relay.target,
            relay.relayed,
            len(relay.stored),
            relay.refused,
            relay.unrecorded,
            session.outcome,
            seconds,
        )
        await self.store.append_control(
            SmtpProxySessionEnded(
                at=now(),
                actor=session.actor,
                session_id=session.session_id,
                listener=session.listener.name,
                client_address=session.peer,
                mailbox_id=relay.login.mailbox_id,
                target=relay.target,
                remote_user=relay.login.remote_user,
                client_tls=session.tls,
                upstream_tls=relay.upstream.tls,
                relayed=relay.relayed,
                refused=relay.refused,
                stored=tuple(relay.stored),
                unrecorded=relay.unrecorded,
                outcome=session.outcome,
                seconds=round(seconds, 3),
            ),
            durable=False,
        )
