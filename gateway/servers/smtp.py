"""The SMTP listener's sessions: journal intake over RFC 5321, driven by the sans-IO machine,
and the recording SMTP proxy for sessions that authenticate with a proxy login.

Theory of operation
-------------------
A session feeds received bytes to :class:`gateway.protocols.smtp.ServerConnection` and writes
what it hands back; the only decisions made here are the ones the machine pauses for: whether
a recipient is a gateway mailbox (``services.journal``), and when a message may get its 250 —
only once it is durable in every accepting mailbox (``MessageWriter.commit``). Replies the
machine queues are written before the session waits for more input, so pipelined commands
(RFC 2920) cost one write per batch.

Timeouts follow RFC 5321 §4.5.3.2: ``command_timeout`` waiting for a command,
``data_timeout`` while message content streams in. Each stored message gets
``MessageAccepted``; refusals are counted, by stage and reply, into the session's one
``SmtpSessionEnded`` (a refused recipient also spends the machine's bad command budget, so a
client guessing recipients is cut off). A quiet session (no message, no AUTH) over the audit
rate is folded into the listener's ``ConnectionsSummarized`` instead (``servers.limits``).
None of them holds an address or a byte of content.

A session without AUTH is journal intake. AUTH (offered only under TLS) with a proxy login
``remote_user%target%mailbox_id`` turns the session into a recording proxy session
(``servers.smtp_proxy``) for the rest of its life: every AUTH attempt is an ``SmtpLogin``
event, answered (when it fails) ``smtp.auth_failure_delay`` after it arrived, and the
session ends with ``SmtpProxySessionEnded`` instead of ``SmtpSessionEnded``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter

import trio

from ..config import Config, ListenerConfig, TLSMode
from ..events import (
    Actor,
    Envelope,
    MessageAccepted,
    SmtpLogin,
    SmtpProxySessionEnded,
    SmtpSessionEnded,
    now,
)
from ..log import LogWriteError
from ..protocols.smtp import (
    NEED_DATA,
    PAUSED,
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
    ServerConnection,
    SMTPSettings,
    StartData,
    StartTLS,
    replies,
)
from ..services.archive import ArchiveError
from ..services.journal import check_recipient, received_header
from ..services.routing import RoutingError, parse_proxy_login
from ..services.throttle import LoginGuard
from ..services.writer import MessageWriter
from ..store import StoreClient
from ..tls import TLSContextHolder, describe_tls
from ..tlsstream import wrap_server
from .limits import AuditRate, TrafficTally, refusal_counts
from .smtp_proxy import UPSTREAM_LOST, ProxyRefused, SMTPRelay, open_relay
from .timeouts import ReadTimer
from .upstream import UpstreamError

__all__ = ["SMTPServer"]

logger = logging.getLogger("gateway.smtp")

RECEIVE_SIZE = 64 * 1024
HANDSHAKE_TIMEOUT = 30.0

TOO_MANY_SESSIONS = Reply(421, "4.7.0", ("Too many connections, try again later",))
THROTTLED = Reply(454, "4.7.0", ("Too many failed logins, try again later",))


class SMTPServer:
    def __init__(
        self,
        config: Config,
        store: StoreClient,
        tls: TLSContextHolder,
        *,
        tally: TrafficTally | None = None,
        quiet: AuditRate | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.tls = tls
        self.logins = LoginGuard(max_failures=config.smtp.max_auth_failures)  # proxy logins
        # Where quiet sessions over the audit rate are counted (the gateway's, shared).
        self.tally = tally if tally is not None else TrafficTally()
        self.quiet = quiet if quiet is not None else AuditRate()

    async def handle(self, stream: trio.abc.Stream, listener: ListenerConfig, peer: str) -> None:
        """One session; the gateway's accept loop counted it against the session limits
        already (and refused it with TOO_MANY_SESSIONS if over them)."""
        await _Session(self, stream, listener, peer, secrets.token_hex(6)).run()


class _Session:
    def __init__(
        self,
        server: SMTPServer,
        stream: trio.abc.Stream,
        listener: ListenerConfig,
        peer: str,
        session_id: str,
    ) -> None:
        self.server = server
        self.store = server.store
        self.config = server.config
        self.stream = stream
        self.listener = listener
        self.peer = peer
        self.session_id = session_id
        self.actor = Actor(kind="smtp", address=peer)
        self.tls = describe_tls(stream)
        self.helo = ""
        self.helo_kind = ""
        self.mail_from = ""
        self.smtputf8 = False
        self.recipients: list[str] = []  # accepted gateway mailbox ids, in order
        self.recipient_addresses: list[str] = []
        self.writer: MessageWriter | None = None
        self.writer_failed = False
        self.trace_octets = 0  # the Received: field's, which the size limit does not count
        self.relay: SMTPRelay | None = None
        self.in_data = False
        self.messages = 0
        self.bytes = 0
        self.rejected = 0
        self.refusals: Counter[tuple[str, int, str]] = Counter()  # (stage, code, enhanced)
        self.login_attempted = False
        self.outcome = "closed"
        self.started = time.monotonic()
        self.reads = ReadTimer()
        smtp = self.config.smtp
        self.conn = ServerConnection(
            SMTPSettings(
                hostname=self.config.hostname,
                max_message_size=smtp.max_message_size,
                max_recipients=smtp.max_recipients,
                tls_active=bool(self.tls),
                starttls_offered=listener.tls == TLSMode.STARTTLS and not self.tls,
                require_tls=smtp.require_tls and listener.tls == TLSMode.STARTTLS,
                auth_offered=True,
                bare_newline=smtp.bare_newline,
                bad_command_budget=smtp.bad_command_budget,
            )
        )

    async def run(self) -> None:
        try:
            await self.stream.send_all(self.conn.greeting())
            with self.reads.running():
                await self._loop()
        except trio.TooSlowError:
            self.outcome = "timeout"
            with trio.move_on_after(5):
                await self.stream.send_all(self.conn.close(replies.TIMEOUT))
        except trio.Cancelled:
            # Shutdown: the grace period is over. Say so, briefly, then let go.
            self.outcome = "shutdown"
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.send_all(self.conn.close(replies.SHUTTING_DOWN))
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.outcome = "dropped"
        finally:
            if self.writer is not None:
                await self.writer.abort()
            if self.relay is not None:
                await self.relay.aclose()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._audit_session()

    async def _loop(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            pending = conn.data_to_send()
            if event is NEED_DATA:
                if pending:
                    await self.stream.send_all(pending)
                timeout = (
                    self.config.smtp.data_timeout
                    if self.in_data
                    else self.config.smtp.command_timeout
                )
                conn.receive_data(await self.reads.receive(self.stream, RECEIVE_SIZE, timeout))
                continue
            if pending:
                await self.stream.send_all(pending)
            if event is PAUSED:  # pragma: no cover - every pause is answered below
                raise RuntimeError("SMTP machine paused with no decision pending")
            if self.relay is not None:
                if not await self._relay(event):
                    return
                continue
            match event:
                case Hello(kind=kind, domain=domain):
                    self.helo, self.helo_kind = domain, kind
                    self._reset_transaction()
                case MailFrom(address=address, smtputf8=smtputf8):
                    self._reset_transaction()
                    self.mail_from, self.smtputf8 = address, smtputf8
                    await self.stream.send_all(conn.send(replies.SENDER_OK))
                case RcptTo(address=address):
                    await self.stream.send_all(conn.send(await self._recipient(address)))
                case StartData():
                    await self._start_data()
                case BodyData(data=data):
                    await self._body(data)
                case MessageComplete():
                    await self.stream.send_all(conn.send(await self._complete()))
                case MessageAborted():
                    await self._abort()
                case StartTLS():
                    await self._start_tls()
                case Authenticate():
                    await self.stream.send_all(conn.send(await self._authenticate(event)))
                case Quit():
                    self.outcome = "quit"
                    return
                case ConnectionClosed(reason=reason):
                    self.outcome = str(reason)
                    return

    async def _relay(self, event: object) -> bool:
        """One event of a proxy session; False when the session is over."""
        relay, conn = self.relay, self.conn
        assert relay is not None
        try:
            match event:
                case Hello(domain=domain):
                    self.helo = relay.helo = domain
                case MailFrom():
                    await self.stream.send_all(conn.send(await relay.mail(event)))
                case RcptTo(address=address):
                    await self.stream.send_all(conn.send(await relay.rcpt(address)))
                case StartData(chunked=chunked):
                    self.in_data = True
                    await relay.start_content(bdat=chunked)
                case BodyData(data=data):
                    await relay.content(data)
                case MessageComplete():
                    self.in_data = False
                    await self.stream.send_all(conn.send(await relay.complete()))
                case MessageAborted(reason=reason):
                    self.in_data = False
                    await relay.abort(reason)
                case Quit():
                    self.outcome = "quit"
                    await relay.quit()
                    return False
                case ConnectionClosed(reason=reason):
                    self.outcome = str(reason)
                    return False
                case Authenticate():  # pragma: no cover - the machine refuses a second AUTH
                    raise RuntimeError("AUTH in an authenticated session")
        except UpstreamError as exc:
            self.outcome = "upstream-error"
            logger.info(
                "event=smtp-proxy-upstream-failed session=%s reason=%r", self.session_id, str(exc)
            )
            await self.stream.send_all(conn.close(UPSTREAM_LOST))
            return False
        return True

    async def _authenticate(self, event: Authenticate) -> Reply:
        """AUTH: a proxy login opens the relay; anything else fails like bad credentials."""
        server, delay = self.server, self.config.smtp.auth_failure_delay
        arrived = trio.current_time()
        self.login_attempted = True  # the session has an SmtpLogin: never folded away
        try:
            login = parse_proxy_login(event.username, domain=self.config.mail_domain)
        except RoutingError as exc:
            login, reason = None, f"malformed proxy login: {exc}"
        else:
            reason = "not a proxy login"
        if login is None:
            server.logins.failed(self.peer, "")
            await self._login_audit(event, "", "", False, reason)
            await trio.sleep_until(arrived + delay)
            return replies.AUTH_FAILED
        # The mailbox, however spelled, if it exists (else the address alone counts).
        key = login.mailbox_id if self._exists(login.mailbox_id) else ""
        if server.logins.locked(self.peer, key):
            await self._login_audit(event, login.mailbox_id, login.target, False, "throttled")
            await trio.sleep_until(arrived + delay)
            return THROTTLED
        try:
            upstream, reply = await open_relay(
                self.config, self.store, self.listener, login, event.password
            )
        except ProxyRefused as exc:
            # Every refusal counts and waits, a target that cannot be reached too: the proxy
            # is no faster a port scanner than a password guesser.
            server.logins.failed(self.peer, key)
            await trio.sleep_until(arrived + delay)
            await self._login_audit(
                event, login.mailbox_id, login.target, False, f"proxy: {exc.reason}"
            )
            refusal: Reply = exc.reply
            return refusal
        server.logins.succeeded(self.peer, login.mailbox_id)
        self.relay = SMTPRelay(upstream, self.store, login, self.peer, self.tls, self.helo)
        await self._login_audit(event, login.mailbox_id, login.target, True, "")
        return reply

    def _exists(self, mailbox_id: str) -> bool:
        try:
            self.store.mailbox(mailbox_id)
        except ArchiveError:
            return False
        return True

    async def _login_audit(
        self, event: Authenticate, mailbox_id: str, target: str, success: bool, reason: str
    ) -> None:
        logger.info(
            "event=smtp-login session=%s client=%s mailbox=%s target=%s success=%s reason=%r",
            self.session_id,
            self.peer,
            mailbox_id or "-",
            target or "-",
            success,
            reason,
        )
        await self.store.append_control(
            SmtpLogin(
                at=now(),
                actor=self.actor,
                session_id=self.session_id,
                client_address=self.peer,
                mailbox_id=mailbox_id,
                target=target,
                mechanism=event.mechanism,
                success=success,
                reason=reason,
            ),
            durable=False,
        )

    def _reset_transaction(self) -> None:
        self.mail_from, self.smtputf8 = "", False
        self.recipients, self.recipient_addresses = [], []

    async def _recipient(self, address: str) -> Reply:
        decision = check_recipient(self.store, self.config.mail_domain, address)
        if decision.accepted:
            assert decision.mailbox_id is not None
            if decision.mailbox_id not in self.recipients:
                self.recipients.append(decision.mailbox_id)
            self.recipient_addresses.append(address)
        else:
            self.rejected += 1
            logger.info(
                "event=smtp-rcpt-refused session=%s client=%s code=%d enhanced=%s",
                self.session_id,
                self.peer,
                decision.code,
                decision.enhanced,
            )
            self._refused("rcpt", decision.code, decision.enhanced)
        return Reply(decision.code, decision.enhanced, (decision.text,))

    async def _start_data(self) -> None:
        self.in_data = True
        self.writer_failed = False
        try:
            self.writer = self.store.begin_message(self.recipients)
        except ArchiveError:
            # A mailbox was suspended or deleted since RCPT: the content is read and dropped,
            # and the sender gets a temporary error at the end.
            self.writer = None
            self.writer_failed = True
            return
        header = received_header(
            helo=self.helo,
            client_address=self.peer,
            hostname=self.config.hostname,
            protocol=self._protocol(),
            session_id=self.session_id,
            tls=self.tls,
            recipient=self.recipient_addresses[0] if len(self.recipient_addresses) == 1 else None,
            when=now(),
        )
        self.trace_octets = len(header)
        await self._body(header)

    async def _body(self, data: bytes) -> None:
        if self.writer is None or self.writer_failed:
            return
        try:
            await self.writer.write(data, allowance=self.trace_octets)
        except (ArchiveError, LogWriteError) as exc:
            logger.warning("event=store-failed session=%s reason=%r", self.session_id, str(exc))
            self.writer_failed = True
            await self.writer.abort()
            self.writer = None

    async def _complete(self) -> Reply:
        self.in_data = False
        writer, self.writer = self.writer, None
        if writer is None:
            self.rejected += 1
            self._refused("data", 451, "4.3.0")
            return replies.LOCAL_ERROR
        size = writer.size
        try:
            ids = await writer.commit(self._envelope())
        except (LogWriteError, ArchiveError) as exc:
            logger.warning("event=store-failed session=%s reason=%r", self.session_id, str(exc))
            self.rejected += 1
            self._refused("data", 452, "4.3.1")
            return replies.INSUFFICIENT_STORAGE
        self.messages += 1
        self.bytes += size
        logger.info(
            "event=smtp-message-stored session=%s client=%s size=%d mailboxes=%d ids=%s",
            self.session_id,
            self.peer,
            size,
            len(ids),
            ",".join(ids.values()),
        )
        await self.store.append_control(
            MessageAccepted(
                at=now(),
                actor=self.actor,
                session_id=self.session_id,
                client_address=self.peer,
                mailbox_ids=tuple(ids),
                message_ids=tuple(ids.values()),
                size=size,
            ),
            durable=False,
            wait=False,  # nothing to wait for on the way to the 250
        )
        stored = ",".join(ids.values())
        return Reply(250, "2.0.0", (f"Ok: stored as {stored}",))

    async def _abort(self) -> None:
        self.in_data = False
        if self.writer is not None:
            await self.writer.abort()
            self.writer = None
        self._reset_transaction()

    async def _start_tls(self) -> None:
        ssl_stream = wrap_server(self.stream, self.server.tls.context)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await ssl_stream.do_handshake()
        self.stream = ssl_stream
        self.tls = describe_tls(ssl_stream)
        version, _, cipher = self.tls.partition(" ")
        self.conn.tls_started(version, cipher)
        self.helo = ""

    def _protocol(self) -> str:
        """The "with" keyword of the Received field (RFC 3848, RFC 6531 §3.7.3)."""
        if self.helo_kind == "HELO":
            return "SMTP"
        base = "UTF8SMTP" if self.smtputf8 else "ESMTP"
        return base + ("S" if self.tls else "")

    def _envelope(self) -> Envelope:
        return Envelope(
            received_at=now(),
            origin="journal",
            mail_from=self.mail_from,
            rcpt_to=tuple(self.recipient_addresses),
            client_address=self.peer,
            helo=self.helo,
            tls=self.tls,
        )

    def _refused(self, stage: str, code: int, enhanced: str) -> None:
        """Counted for the session's record: one record per refusal let a client grow the
        control log by 227 octets with each 40-octet RCPT line."""
        self.refusals[(stage, code, enhanced)] += 1

    async def _audit_session(self) -> None:
        seconds = time.monotonic() - self.started
        if self.relay is not None:
            await self._audit_proxy_session(self.relay, seconds)
            return
        server = self.server
        if not (self.messages or self.login_attempted) and not server.quiet.allow():
            server.tally.folded(self.listener.name, self.peer, self.refusals)
            return
        logger.info(
            "event=smtp-session session=%s listener=%s client=%s tls=%r messages=%d bytes=%d "
            "rejected=%d outcome=%s seconds=%.2f",
            self.session_id,
            self.listener.name,
            self.peer,
            self.tls,
            self.messages,
            self.bytes,
            self.rejected,
            self.outcome,
            seconds,
        )
        await self.store.append_control(
            SmtpSessionEnded(
                at=now(),
                actor=self.actor,
                session_id=self.session_id,
                listener=self.listener.name,
                client_address=self.peer,
                tls=self.tls,
                helo=self.helo[:255],
                messages=self.messages,
                bytes=self.bytes,
                rejected=self.rejected,
                outcome=self.outcome,
                seconds=round(seconds, 3),
                refusals=refusal_counts(self.refusals),
            ),
            durable=False,
        )

    async def _audit_proxy_session(self, relay: SMTPRelay, seconds: float) -> None:
        logger.info(
            "event=smtp-proxy-session session=%s listener=%s client=%s mailbox=%s target=%s "
            "relayed=%d stored=%d refused=%d unrecorded=%d outcome=%s seconds=%.2f",
            self.session_id,
            self.listener.name,
            self.peer,
            relay.login.mailbox_id,
            relay.target,
            relay.relayed,
            len(relay.stored),
            relay.refused,
            relay.unrecorded,
            self.outcome,
            seconds,
        )
        await self.store.append_control(
            SmtpProxySessionEnded(
                at=now(),
                actor=self.actor,
                session_id=self.session_id,
                listener=self.listener.name,
                client_address=self.peer,
                mailbox_id=relay.login.mailbox_id,
                target=relay.target,
                remote_user=relay.login.remote_user,
                client_tls=self.tls,
                upstream_tls=relay.upstream.tls,
                relayed=relay.relayed,
                refused=relay.refused,
                stored=tuple(relay.stored),
                unrecorded=relay.unrecorded,
                outcome=self.outcome,
                seconds=round(seconds, 3),
            ),
            durable=False,
        )
