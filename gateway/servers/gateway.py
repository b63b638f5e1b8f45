"""The gateway process: the archive, the key forge, maintenance and every listener, in one
trio nursery.

Theory of operation
-------------------
:meth:`Gateway.run` opens the data folder (recovering it), loads or makes the certificate,
binds every configured listener (a listener that cannot bind stops start-up with a message
naming its address), then tells systemd READY=1 and serves. Sessions run in their own
nursery so that shutdown can stop accepting first: on :meth:`request_shutdown` (SIGTERM,
SIGINT) the listening sockets close, sessions get ``shutdown_grace`` seconds to finish, the
rest are cancelled, and ``GatewayStopped`` is appended to the control log before the process
exits 0. :meth:`request_reload` (SIGHUP) loads the certificate again; sessions keep theirs.

Connections count against their protocol's limits (``servers.limits``) from the moment they
are accepted, before any TLS handshake: one over a limit is answered at once (a plain
listener's protocol reply; nothing on an implicit-TLS listener, which has no reply before its
handshake) and closed, and only counted (``ConnectionsSummarized``, once a minute at most).
The limits are lowered at start-up if together they would not fit the process's descriptors.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from .. import __version__
from ..config import Config, ListenerConfig, Protocol, TLSMode
from ..events import AdminAccountCreated, GatewayStarted, GatewayStopped, now
from ..log import LogWriteError
from ..protocols import pop3 as pop3_protocol
from ..protocols import smtp as smtp_protocol
from ..services.accounts import Accounts
from ..services.admin import AdminService
from ..services.archive import Archive
from ..services.audit import AuditHub
from ..services.keyforge import KeyForge
from ..services.source_keys import SourceKeyError, SourceKeys, load_source_keys
from ..store import Journal, StoreClient
from ..tls import TLSContextHolder, make_self_signed
from .admin import AdminServer
from .limits import (
    FD_RESERVE,
    SUMMARY_INTERVAL,
    TRUSTED_RESERVE,
    AuditRate,
    SessionLimiter,
    TrafficTally,
    descriptor_limit,
    descriptors_in_use,
    fit_to_descriptors,
)
from .notify import SystemdNotifier
from .pop3 import TOO_MANY_SESSIONS as POP3_TOO_MANY_SESSIONS
from .pop3 import POP3Server
from .smtp import TOO_MANY_SESSIONS as SMTP_TOO_MANY_SESSIONS
from .smtp import SMTPServer

__all__ = ["Gateway", "Listening", "SessionLimiter", "StartupError"]

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


class StartupError(Exception):
    """Start-up cannot go on; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Listening:
    name: str
    protocol: Protocol
    address: str
    port: int
    tls: TLSMode


Handler = Callable[[trio.abc.Stream, ListenerConfig, str], Awaitable[None]]


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        announce_admin_password: Callable[[str], None] | None = None,
    ) -> None:
        """``environ`` (default: the process's) may hold GATEWAY_ADMIN_PASSWORD for the first
        start; ``announce_admin_password`` is handed a generated first admin password, once
        (the command line prints it; it is never logged)."""
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.announce_admin_password = announce_admin_password
        self.archive: Archive | None = None
        self.journal: Journal | None = None
        self.store: StoreClient | None = None  # the protocol servers' view of the archive
        self.accounts: Accounts | None = None
        self.hub: AuditHub | None = None
        self.pop3_server: POP3Server | None = None
        self.tls: TLSContextHolder | None = None
        self.source_keys: SourceKeys | None = None  # the POP3 proxy's (SPEC.md 5.5)
        self.limiter = SessionLimiter(config.smtp.max_sessions, config.smtp.max_sessions_per_client)
        self.pop3_limiter = SessionLimiter(
            config.pop3.max_sessions,
            config.pop3.max_sessions_per_client,
            reserve=min(
                max(1, int(config.pop3.max_sessions * TRUSTED_RESERVE)),
                config.pop3.max_sessions - 1,
            ),
        )
        # The admin listener: its websocket connections (admin.max_connections) and as many
        # again for the console's page loads; one address may take half.
        admin = config.admin.max_connections
        self.admin_limiter = SessionLimiter(2 * admin, admin)
        self.limiters = {
            Protocol.SMTP: self.limiter,
            Protocol.POP3: self.pop3_limiter,
            Protocol.ADMIN: self.admin_limiter,
        }
        self.tally = TrafficTally()
        # Whether a client address may use its protocol's reserve of sessions.
        self.trusted: dict[Protocol, Callable[[str], bool]] = {}
        self.quiet = AuditRate()  # quiet sessions' own records, SMTP and POP3 together
        self.listening: list[Listening] = []
        self.notifier = SystemdNotifier.from_environment()
        self._stop = trio.Event()
        self._reload_requested = trio.Event()
        self.started_at = now()

    @property
    def sessions_active(self) -> int:
        return self.limiter.active + self.pop3_limiter.active

    def request_shutdown(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[Listening]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        archive = await Archive.open(Path(config.data_dir), config.store_config())
        self.archive = archive
        try:
            self.tls = await trio.to_thread.run_sync(self._load_tls, archive)
            try:
                self.source_keys = await trio.to_thread.run_sync(
                    load_source_keys, config.source_key_path()
                )
            except SourceKeyError as exc:
                raise StartupError(str(exc)) from None
            hub = self.hub = AuditHub(archive, queue_size=config.admin.audit_queue)
            await archive.append_control(GatewayStarted(at=now(), version=__version__))
            self.accounts = await self._load_accounts(archive)
            async with trio.open_nursery() as nursery:
                forge = KeyForge()
                await nursery.start(forge.run)
                archive.key_forge = forge
                self.store = await self._connect_worker(nursery, archive)
                self.store.key_forge = forge
                nursery.start_soon(self._maintenance, archive)
                nursery.start_soon(self.notifier.watchdog)
                nursery.start_soon(hub.run)
                nursery.start_soon(self._summaries, archive)
                self._fit_descriptors()
                await self._serve(hub, task_status)
                nursery.cancel_scope.cancel()
            await self._summarize(archive)
            await archive.append_control(GatewayStopped(at=now(), reason="shutdown"))
        finally:
            self.notifier.close()
            await archive.aclose()

    async def _connect_worker(self, nursery: trio.Nursery, archive: Archive) -> StoreClient:
        """The journal and this process's protocol servers, joined by a socket pair: one
        process runs the same seam as a journal and its workers do (SPEC.md 16)."""
        journal_end, worker_end = trio.socket.socketpair()
        self.journal = Journal(archive)
        nursery.start_soon(self.journal.serve, trio.SocketStream(journal_end))
        store = StoreClient(trio.SocketStream(worker_end), Path(self.config.data_dir), "worker")
        await store.connect()
        nursery.start_soon(store.run)
        return store

    def _fit_descriptors(self) -> None:
        """Lower the session limits if together they would not fit the descriptors left
        (less FD_RESERVE): then no listener's connections can starve the others'."""
        available = descriptor_limit() - descriptors_in_use() - FD_RESERVE
        limiters = {
            str(protocol): (limiter, DESCRIPTORS_PER_CONNECTION[protocol])
            for protocol, limiter in self.limiters.items()
            if any(listener.protocol == protocol for listener in self.config.listeners)
        }
        for name, (configured, total) in fit_to_descriptors(limiters, available).items():
            logger.warning(
                "event=session-limit-lowered protocol=%s configured=%d limit=%d "
                "reason='too few file descriptors (raise LimitNOFILE)'",
                name,
                configured,
                total,
            )

    async def _summaries(self, archive: Archive) -> None:
        while True:
            await trio.sleep(SUMMARY_INTERVAL)
            await self._summarize(archive)

    async def _summarize(self, archive: Archive) -> None:
        for summary in self.tally.take():
            logger.info(
                "event=connections-summarized listener=%s seconds=%.0f refused=%d sessions=%d "
                "clients=%d",
                summary.listener,
                summary.seconds,
                summary.refused,
                summary.sessions,
                summary.clients,
            )
            try:
                await archive.append_control(summary, durable=False)
            except LogWriteError as exc:
                logger.error("event=audit-write-failed reason=%r", str(exc))

    async def _load_accounts(self, archive: Archive) -> Accounts:
        config = self.config
        accounts = Accounts(
            archive.data, archive.config.kdf, session_ttl=config.admin.session_hours * 3600
        )
        password, source = self.environ.get("GATEWAY_ADMIN_PASSWORD"), "environment"
        if password is None and config.admin.password_file:
            path = Path(config.admin.password_file)
            try:
                text = await trio.to_thread.run_sync(path.read_text, "utf-8")
            except OSError as exc:
                raise StartupError(f"admin.password_file {path}: {exc.strerror}") from None
            password, source = text.strip("\r\n"), "file"
        try:
            created, generated = await accounts.load_or_create(password)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        if created:
            source = "generated" if generated is not None else source
            await archive.append_control(AdminAccountCreated(at=now(), source=source))
            logger.info("event=admin-account-created source=%s", source)
        if generated is not None and self.announce_admin_password is not None:
            self.announce_admin_password(generated)
        return accounts

    def _load_tls(self, archive: Archive) -> TLSContextHolder:
        tls = self.config.tls
        if tls.certificate:
            cert, key = Path(tls.certificate), Path(tls.key)
        else:
            cert, key = archive.data.read_or_create_tls(
                lambda: make_self_signed(self.config.hostname)
            )
        try:
            holder = TLSContextHolder(cert, key)
        except (OSError, ValueError) as exc:
            raise StartupError(
                f"cannot load the TLS certificate {cert} and key {key}: {exc}"
            ) from None
        subject, fingerprint, expires = holder.summary()
        logger.info(
            "event=tls-certificate subject=%r sha256=%s expires=%s",
            subject,
            fingerprint,
            expires.date().isoformat(),
        )
        return holder

    async def _serve(self, hub: AuditHub, task_status: trio.TaskStatus[list[Listening]]) -> None:
        assert self.archive is not None
        assert self.tls is not None
        assert self.accounts is not None
        assert self.store is not None
        smtp = SMTPServer(self.config, self.store, self.tls, tally=self.tally, quiet=self.quiet)
        assert self.source_keys is not None
        pop3 = self.pop3_server = POP3Server(
            self.config,
            self.store,
            self.tls,
            source_keys=self.source_keys,
            tally=self.tally,
            quiet=self.quiet,
        )
        self.trusted[Protocol.POP3] = lambda peer: (
            pop3.logins.trust.known(peer) or pop3.proxy_logins.trust.known(peer)
        )
        service = AdminService(self.archive, self.accounts, self.config.mail_domain)
        admin = AdminServer(self, service, self.accounts, hub, self.config)
        handlers: dict[Protocol, Handler] = {
            Protocol.SMTP: smtp.handle,
            Protocol.POP3: pop3.handle,
            Protocol.ADMIN: admin.handle,
        }
        bound: list[tuple[ListenerConfig, list[trio.SocketListener]]] = []
        try:
            for listener in self.config.listeners:
                bound.append((listener, await _bind(listener)))
        except BaseException:
            for _listener, sockets in bound:
                for sock in sockets:
                    await sock.aclose()
            raise
        self.listening = [
            Listening(cfg.name, cfg.protocol, str(host), int(port), cfg.tls)
            for cfg, sockets in bound
            for sock in sockets
            for host, port in [sock.socket.getsockname()[:2]]
        ]
        for item in self.listening:
            logger.info(
                "event=listening name=%s protocol=%s address=%s port=%d tls=%s",
                item.name,
                item.protocol,
                item.address,
                item.port,
                item.tls,
            )
        try:
            await self._run_sessions(bound, handlers, task_status)
        finally:
            for _cfg, sockets in bound:
                for sock in sockets:
                    sock.socket.close()

    async def _run_sessions(
        self,
        bound: list[tuple[ListenerConfig, list[trio.SocketListener]]],
        handlers: dict[Protocol, Handler],
        task_status: trio.TaskStatus[list[Listening]],
    ) -> None:
        async with trio.open_nursery() as sessions:
            async with trio.open_nursery() as accepting:
                for cfg, sockets in bound:
                    for sock in sockets:
                        accepting.start_soon(
                            self._accept, sock, cfg, handlers[cfg.protocol], sessions
                        )
                self.notifier.notify("READY=1", f"STATUS=serving {len(self.listening)} listeners")
                task_status.started(self.listening)
                await self._wait_for_signals()
                self.notifier.notify("STOPPING=1")
                logger.info("event=stopping sessions=%d", self.sessions_active)
                accepting.cancel_scope.cancel()
            for _cfg, sockets in bound:
                for sock in sockets:
                    sock.socket.close()  # stop accepting: new clients get "connection refused"
            # Let sessions finish what they are doing, then cut the rest off.
            sessions.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace

    async def _wait_for_signals(self) -> None:
        while True:
            async with trio.open_nursery() as waiters:

                async def stop() -> None:
                    await self._stop.wait()
                    waiters.cancel_scope.cancel()

                async def reload() -> None:
                    await self._reload_requested.wait()
                    waiters.cancel_scope.cancel()

                waiters.start_soon(stop)
                waiters.start_soon(reload)
            if self._stop.is_set():
                return
            self._reload_requested = trio.Event()
            await self._reload()

    async def _reload(self) -> None:
        assert self.tls is not None
        self.notifier.reloading()
        try:
            await trio.to_thread.run_sync(self.tls.reload)
        except (OSError, ValueError) as exc:
            logger.error("event=reload-failed reason=%r (the previous certificate stays)", str(exc))
        else:
            subject, fingerprint, expires = self.tls.summary()
            logger.info(
                "event=reloaded subject=%r sha256=%s expires=%s",
                subject,
                fingerprint,
                expires.date().isoformat(),
            )
        self.notifier.notify("READY=1")

    async def _accept(
        self,
        listener: trio.SocketListener,
        cfg: ListenerConfig,
        handler: Handler,
        sessions: trio.Nursery,
    ) -> None:
        limiter = self.limiters[cfg.protocol]
        trusted = self.trusted.get(cfg.protocol, _nobody)
        busy = BUSY_REPLY.get(cfg.protocol, b"") if cfg.tls != TLSMode.IMPLICIT else b""
        while True:
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
            sessions.start_soon(self._session, stream, cfg, handler, peer, limiter)

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
                assert self.tls is not None
                ssl_stream = trio.SSLStream(stream, self.tls.context, server_side=True)
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    await ssl_stream.do_handshake()
                    wrapped = ssl_stream
                if wrapped is stream:
                    return
            await handler(wrapped, cfg, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.info(
                "event=session-dropped listener=%s client=%s reason=%r", cfg.name, peer, str(exc)
            )
        except Exception:
            # One bad session never takes the server down.
            logger.exception("event=session-failed listener=%s client=%s", cfg.name, peer)
        finally:
            limiter.release(peer)
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await trio.aclose_forcefully(wrapped)

    async def _maintenance(self, archive: Archive) -> None:
        while True:
            await trio.sleep(archive.config.maintenance_interval)
            reclaimed, deleted = await archive.maintain()
            if reclaimed or deleted:
                logger.info(
                    "event=compacted reclaimed_bytes=%d files_deleted=%d", reclaimed, deleted
                )


async def _bind(listener: ListenerConfig) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(listener.port, host=listener.address, backlog=None)
    except OSError as exc:
        raise StartupError(
            f"listener {listener.name}: cannot listen on {listener.address}:{listener.port}: "
            f"{exc.strerror or exc}"
        ) from None


def _nobody(_peer: str) -> bool:
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
