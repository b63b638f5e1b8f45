"""The POP3 listener's sessions: retrieval, the projector the archive pulls from (RFC 1939,
RFC 2449, RFC 2595 STLS, RFC 5034 AUTH PLAIN), driven by the sans-IO machine.

Theory of operation
-------------------
The machine answers everything that needs no mailbox (and refuses credentials in the clear);
this driver decides the rest. A login names a mailbox by id or by its address in the
gateway's mail domain; the password opens its private key (Argon2id in a worker thread, at
most ``pop3.max_unlocks`` at once, in the order of ``services.throttle.UnlockQueue``: clients
that logged in to the mailbox from their address before go first). A failed login is answered
``failure_delay`` seconds after it arrived, whether the mailbox exists or not, and failures in
a row lock out the client address and the mailbox (``services.throttle.LoginGuard``: not for
the clients trusted for it) for a while; the reply never tells which part was wrong. Then the
maildrop is locked (one session per mailbox: a second gets ``[IN-USE]``) and the message list
is fixed: the mailbox as it was at login, less messages sealed to a key a reset retired (they
can never be read).

Sizes in STAT and LIST are the stored octet counts, which RETR sends exactly (before
dot-stuffing); UIDL is the message id. RETR and TOP decrypt piece by piece (at most 256 KiB)
and stream through the machine's dot-stuffer, so a session holds one piece at a time. DELE
only marks; QUIT in TRANSACTION appends ``MessagesExpunged`` and waits for it to be durable
before +OK (RFC 1939 §6); a session that ends any other way deletes nothing. Each login
attempt is a ``Pop3Login`` event, each session ends with ``Pop3SessionEnded`` (what was
retrieved and deleted, by id and size), but for a session that tried no login, once such
sessions come faster than the audit rate: it is counted in the listener's
``ConnectionsSummarized`` instead (``servers.limits``).
"""

from __future__ import annotations

import logging
import secrets
import time
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from ..config import Config, ListenerConfig, TLSMode
from ..crypto import CryptoError, MailboxPrivateKey
from ..events import Actor, MessageRef, Pop3Login, Pop3ProxySessionEnded, Pop3SessionEnded, now
from ..ids import InvalidId, parse_mailbox_id
from ..log import LogCorrupt, LogWriteError
from ..protocols.pop3 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Dele,
    Event,
    List,
    Login,
    Noop,
    POP3Settings,
    Quit,
    Reply,
    Retr,
    Rset,
    ServerConnection,
    StartTLS,
    Stat,
    Top,
    TopCutter,
    Uidl,
    replies,
)
from ..services.archive import ArchiveError
from ..services.routing import ProxyLogin, RoutingError, parse_proxy_login
from ..services.source_keys import SourceKeys
from ..services.throttle import LoginGuard, UnlockQueue
from ..store import MessageEntry, StoreClient
from ..tls import TLSContextHolder, describe_tls
from ..tlsstream import wrap_server
from .limits import AuditRate, TrafficTally
from .pop3_proxy import RELAYED, POP3Relay, ProxyRefused, StoreFailed, open_relay
from .timeouts import ReadTimer
from .upstream import UpstreamError

__all__ = ["POP3Server"]

logger = logging.getLogger("gateway.pop3")

RECEIVE_SIZE = 16 * 1024
HANDSHAKE_TIMEOUT = 30.0

LOGIN_FAILED = Reply(False, "invalid credentials", "AUTH")
THROTTLED = Reply(False, "too many failed logins, try again later", "AUTH")
IN_USE = Reply(False, "maildrop already locked by another session", "IN-USE")
UNAVAILABLE = Reply(False, "maildrop unavailable, try again later", "SYS/TEMP")
NO_SUCH_MESSAGE = Reply(False, "no such message")
DELETED = Reply(False, "message already deleted")
UNREADABLE = Reply(False, "message cannot be read; the gateway's log has the details", "SYS/PERM")
NOT_COMMITTED = Reply(False, "deletions could not be made durable; nothing was deleted", "SYS/TEMP")
TOO_MANY_SESSIONS = Reply(False, "too many connections, try again later", "SYS/TEMP")
TIMEOUT = Reply(False, "autologout: idle for too long")


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
        await _Session(self, stream, listener, peer).run()


class _Session:
    def __init__(
        self, server: POP3Server, stream: trio.abc.Stream, listener: ListenerConfig, peer: str
    ) -> None:
        self.server = server
        self.store = server.store
        self.config = server.config
        self.stream = stream
        self.listener = listener
        self.peer = peer
        self.session_id = secrets.token_hex(6)
        self.actor = Actor(kind="pop3", address=peer)
        self.tls = describe_tls(stream)
        self.mailbox_id = ""
        self.key: MailboxPrivateKey | None = None
        self.messages: list[MessageEntry] = []
        self.deleted: set[int] = set()  # message numbers marked by DELE
        self.retrieved: list[MessageRef] = []
        self.expunged: list[MessageRef] = []
        self.proxy: ProxyLogin | None = None
        self.relay: POP3Relay | None = None
        self.outcome = "closed"
        self.login_attempted = False  # a Pop3Login was written: the session is never folded
        self.started = time.monotonic()
        self.reads = ReadTimer()
        self.conn = ServerConnection(
            POP3Settings(
                hostname=self.config.hostname,
                tls_active=bool(self.tls),
                stls_offered=listener.tls == TLSMode.STARTTLS and not self.tls,
                bad_command_budget=self.config.pop3.bad_command_budget,
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
                await self.stream.send_all(self.conn.close(TIMEOUT))
        except trio.Cancelled:
            self.outcome = "shutdown"
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                if not self.conn.streaming:
                    await self.stream.send_all(self.conn.close(replies.SHUTTING_DOWN))
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.outcome = "dropped"
        finally:
            if self.mailbox_id and self.key is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self.store.unlock_maildrop(self.mailbox_id)
            if self.relay is not None:
                # Without the client's QUIT, upstream gets none either: nothing is deleted.
                await self.relay.upstream.aclose()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._audit_session()

    async def _loop(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            pending = conn.data_to_send()
            if pending:
                await self.stream.send_all(pending)
            if event is NEED_DATA:
                timeout = self.config.pop3.idle_timeout
                conn.receive_data(await self.reads.receive(self.stream, RECEIVE_SIZE, timeout))
                continue
            if event is PAUSED:  # pragma: no cover - every pause is answered below
                raise RuntimeError("POP3 machine paused with no decision pending")
            if self.relay is not None and isinstance(event, RELAYED):
                if not await self._relay(event):
                    return
                continue
            match event:
                case StartTLS():
                    await self._start_tls()
                case Login():
                    await self._send(conn.send(await self._login(event)))
                case Stat():
                    count, size = self._totals()
                    await self._send(conn.send(Reply(True, f"{count} {size}")))
                case List(msg=None):
                    count, size = self._totals()
                    lines = [f"{n} {m.size}" for n, m in self._live()]
                    reply = Reply(True, f"{count} messages ({size} octets)")
                    await self._send(conn.send_lines(reply, lines))
                case List(msg=int(msg)):
                    found = self._message(msg)
                    reply = (
                        found if isinstance(found, Reply) else Reply(True, f"{msg} {found.size}")
                    )
                    await self._send(conn.send(reply))
                case Uidl(msg=None):
                    lines = [f"{n} {m.message_id}" for n, m in self._live()]
                    await self._send(conn.send_lines(Reply(True), lines))
                case Uidl(msg=int(msg)):
                    found = self._message(msg)
                    reply = (
                        found
                        if isinstance(found, Reply)
                        else Reply(True, f"{msg} {found.message_id}")
                    )
                    await self._send(conn.send(reply))
                case Retr(msg=msg):
                    await self._retrieve(msg, None)
                case Top(msg=msg, lines=lines):
                    await self._retrieve(msg, lines)
                case Dele(msg=msg):
                    found = self._message(msg)
                    if not isinstance(found, Reply):
                        self.deleted.add(msg)
                        found = Reply(True, f"message {msg} deleted")
                    await self._send(conn.send(found))
                case Noop():
                    await self._send(conn.send(Reply(True)))
                case Rset():
                    self.deleted.clear()
                    count, size = self._totals()
                    await self._send(conn.send(Reply(True, f"{count} messages ({size} octets)")))
                case Quit():
                    self.outcome = "quit"
                    await self._send(conn.send(await self._update()))
                    return
                case ConnectionClosed(reason=reason):
                    if self.outcome == "closed":
                        self.outcome = str(reason)
                    return

    async def _send(self, data: bytes) -> None:
        if data:
            await self.stream.send_all(data)

    async def _start_tls(self) -> None:
        ssl_stream = wrap_server(self.stream, self.server.tls.context)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await ssl_stream.do_handshake()
        self.stream = ssl_stream
        self.tls = describe_tls(ssl_stream)
        self.conn.tls_started()

    async def _relay(self, event: Event) -> bool:
        """One command through the proxy; False when the session is over."""
        assert self.relay is not None
        try:
            await self.relay.handle(event)
        except UpstreamError as exc:
            self.outcome = "upstream-error"
            logger.info(
                "event=pop3-proxy-upstream-failed session=%s reason=%r", self.session_id, str(exc)
            )
            if not self.conn.streaming:
                await self._send(self.conn.close(Reply(False, "upstream failed", "SYS/TEMP")))
            return False
        except StoreFailed as exc:
            # No terminating dot: the client knows the message did not arrive whole.
            self.outcome = "store-failed"
            logger.error(
                "event=pop3-proxy-store-failed session=%s mailbox=%s reason=%r",
                self.session_id,
                self.mailbox_id,
                str(exc),
            )
            return False
        if isinstance(event, Quit):
            self.outcome = "quit"
            return False
        return True

    # -- login ---------------------------------------------------------------------------------

    async def _login(self, event: Login) -> Reply:
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
        self.mailbox_id, self.key = mailbox_id, key
        current = self.store.mailbox(mailbox_id).key_id
        listed = await self.store.messages(mailbox_id)
        self.messages = [m for m in listed if m.key_id == current]
        await self._login_audit(event, mailbox_id, True, "")
        count, size = self._totals()
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
                self.listener,
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
        self.proxy, self.mailbox_id = proxy, proxy.mailbox_id
        self.relay = POP3Relay(
            self.conn,
            self._send,
            upstream,
            self.store,
            proxy,
            self.peer,
            self.tls,
            source_keys=self.server.source_keys,
        )
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
            self.session_id,
            self.peer,
            mailbox_id or "-",
            success,
            reason,
        )
        await self._append(
            Pop3Login(
                at=now(),
                actor=self.actor,
                session_id=self.session_id,
                client_address=self.peer,
                mailbox_id=mailbox_id,
                mechanism=event.mechanism,
                success=success,
                reason=reason,
            )
        )

    # -- the maildrop ----------------------------------------------------------------------------

    def _live(self) -> list[tuple[int, MessageEntry]]:
        return [(n, m) for n, m in enumerate(self.messages, 1) if n not in self.deleted]

    def _totals(self) -> tuple[int, int]:
        live = self._live()
        return len(live), sum(m.size for _n, m in live)

    def _message(self, msg: int) -> MessageEntry | Reply:
        if not 1 <= msg <= len(self.messages):
            return NO_SUCH_MESSAGE
        if msg in self.deleted:
            return DELETED
        return self.messages[msg - 1]

    async def _retrieve(self, msg: int, top: int | None) -> None:
        found = self._message(msg)
        if isinstance(found, Reply):
            await self._send(self.conn.send(found))
            return
        assert self.key is not None
        cutter = TopCutter(top) if top is not None else None
        pieces = self.store.read_message(self.mailbox_id, found.message_id, self.key)
        async with aclosing(pieces):
            try:
                first = await anext(pieces, b"")
            except (CryptoError, LogCorrupt, ArchiveError, OSError) as exc:
                logger.error(
                    "event=pop3-unreadable session=%s mailbox=%s message=%s reason=%r",
                    self.session_id,
                    self.mailbox_id,
                    found.message_id,
                    str(exc),
                )
                await self._send(self.conn.send(UNREADABLE))
                return
            # One write per piece: the status line goes with the first, the terminating
            # dot with the last (a message under 256 KiB is a single write).
            out = self.conn.send_stream_start(Reply(True, f"{found.size} octets"))
            piece: bytes | None = first
            sent = 0
            while piece is not None:
                if cutter is not None:
                    piece = cutter.feed(piece)
                sent += len(piece)
                out += self.conn.send_stream_data(piece)
                if cutter is not None and cutter.done:
                    break
                # A failure from here on cannot be an -ERR any more (the +OK is out): it
                # ends the session, without the terminating dot, so the client knows.
                piece = await anext(pieces, None)
                if piece is not None:
                    await self._send(out)
                    out = b""
            await self._send(out + self.conn.send_stream_end())
        # A TOP that sent all of it is a retrieval too: fetchmail downloads with TOP n 99999999.
        if top is None or sent == found.size:
            self.retrieved.append(MessageRef(found.message_id, found.size))

    async def _update(self) -> Reply:
        """QUIT in TRANSACTION: the marked messages go, durably, before +OK."""
        marked = [self.messages[n - 1] for n in sorted(self.deleted)]
        if marked:
            try:
                await self.store.expunge(
                    self.mailbox_id, [m.message_id for m in marked], actor=self.actor
                )
            except (LogWriteError, ArchiveError, OSError) as exc:
                logger.error(
                    "event=pop3-expunge-failed session=%s mailbox=%s reason=%r",
                    self.session_id,
                    self.mailbox_id,
                    str(exc),
                )
                return NOT_COMMITTED
            self.expunged = [MessageRef(m.message_id, m.size) for m in marked]
        count = len(self.messages) - len(marked)
        return Reply(True, f"{self.config.hostname} POP3 closing ({count} messages left)")

    # -- audit ---------------------------------------------------------------------------------

    async def _audit_session(self) -> None:
        seconds = round(time.monotonic() - self.started, 3)
        server = self.server
        if not self.login_attempted and not server.quiet.allow():
            # No login tried: nothing to audit but that it happened, which the listener's
            # ConnectionsSummarized counts once such sessions come faster than the rate.
            server.tally.folded(self.listener.name, self.peer, {})
            return
        logger.info(
            "event=pop3-session-ended session=%s client=%s mailbox=%s retrieved=%d deleted=%d "
            "outcome=%s seconds=%.3f",
            self.session_id,
            self.peer,
            self.mailbox_id or "-",
            len(self.retrieved),
            len(self.expunged),
            self.outcome,
            seconds,
        )
        if self.relay is not None and self.proxy is not None:
            await self._append(
                Pop3ProxySessionEnded(
                    at=now(),
                    actor=self.actor,
                    session_id=self.session_id,
                    listener=self.listener.name,
                    client_address=self.peer,
                    mailbox_id=self.mailbox_id,
                    target=self.proxy.target,
                    remote_user=self.proxy.remote_user,
                    client_tls=self.tls,
                    upstream_tls=self.relay.upstream.tls,
                    retrieved=self.relay.retrieved,
                    stored=tuple(self.relay.stored),
                    outcome=self.outcome,
                    seconds=seconds,
                )
            )
            return
        await self._append(
            Pop3SessionEnded(
                at=now(),
                actor=self.actor,
                session_id=self.session_id,
                listener=self.listener.name,
                client_address=self.peer,
                tls=self.tls,
                mailbox_id=self.mailbox_id,
                retrieved=tuple(self.retrieved),
                deleted=tuple(self.expunged),
                outcome=self.outcome,
                seconds=seconds,
            )
        )

    async def _append(self, event: Pop3Login | Pop3SessionEnded | Pop3ProxySessionEnded) -> None:
        try:
            await self.store.append_control(event, durable=False)
        except LogWriteError as exc:
            logger.error("event=audit-write-failed reason=%r", str(exc))
