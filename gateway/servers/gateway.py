"""The gateway's processes: the journal (the archive, its maintenance, the admin API and the
workers' connections), the protocol workers (SMTP and POP3 listeners, TLS, sealing and
opening), or both in one process (SPEC.md 12.1, 16).

Theory of operation
-------------------
:meth:`Gateway.run` in role ``all`` (one process) or ``journal`` opens the data folder
(recovering it), loads or makes the certificate and the proxy's source-key secret, and binds
its listeners (a listener that cannot bind stops start-up with a message naming its
address); in role ``worker`` it takes the listening sockets the supervisor bound and the
journal's connection instead. Then it tells systemd (or the supervisor) it is ready and
serves. Sessions run in their own nursery so that shutdown can stop accepting first: on
:meth:`request_shutdown` (SIGTERM, SIGINT) the listening sockets close, sessions get
``shutdown_grace`` seconds to finish, the rest are cancelled, and the journal appends
``GatewayStopped`` before the process exits 0. :meth:`request_reload` (SIGHUP) loads the
certificate again; sessions keep theirs. With ``[tls.acme]`` the journal also answers http-01
challenges and keeps a certificate from the ACME CA (``services.acme``): once a new one is in
the data folder it serves it and pushes ``certificatechanged`` to every worker, which loads
the same file (SPEC.md 12.4). A worker whose journal connection is lost stops at once (nothing
more can be acknowledged) and its supervisor starts another.

Connections count against their protocol's limits from accept (``servers.listeners``). The
limits are lowered at start-up if together they would not fit the process's descriptors.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from .. import __version__
from ..config import Config, Protocol
from ..events import GatewayStarted, GatewayStopped, now
from ..log import DataDir, DataDirLocked, LogWriteError
from ..services.accounts import Accounts
from ..services.admin import AdminService
from ..services.alarms import Alarms
from ..services.archive import Archive, store_config
from ..services.audit import AuditHub
from ..services.keyforge import KeyForge
from ..services.metrics import Metrics
from ..services.source_keys import SourceKeyError, SourceKeys, load_source_keys
from ..services.tree_heads import CheckpointSigner, control_origin
from ..store import Journal, StoreClient
from ..tls import TLSContextHolder
from .acme_http import bind_acme_http, serve_acme_http
from .admin import AdminServer
from .certificates import Certificates
from .journal_socket import JournalLost, connect_journal, serve_workers
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
from .listeners import DESCRIPTORS_PER_CONNECTION, Acceptor, Handler
from .load import WorkerLoads
from .monitoring import Monitoring
from .notify import SystemdNotifier, wait_any
from .pop3 import POP3Server
from .smtp import SMTPServer
from .sockets import Bound, Listening, StartupError, adopt, bind

__all__ = ["Gateway", "JournalLost", "Listening", "Role", "SessionLimiter", "StartupError"]

logger = logging.getLogger("gateway")

# How long a starting journal waits for the data folder's lock (see _open_archive).
LOCK_WAIT = 5.0
CHECKPOINT_INTERVAL = 5.0  # seconds between looks for logs due a recovery point (SPEC.md 6.7)


class Role(enum.StrEnum):
    ALL = "all"  # one process: the journal and the protocol servers, joined by a socket pair
    JOURNAL = "journal"
    WORKER = "worker"


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        announce_admin_password: Callable[[str], None] | None = None,
        role: Role = Role.ALL,
        journal_socket: Path | None = None,
        inherited: Mapping[str, Sequence[int]] | None = None,
        name: str = "gateway",
        on_ready: Callable[[], None] | None = None,
        loads: WorkerLoads | None = None,
    ) -> None:
        """``environ`` (default: the process's) may hold GATEWAY_ADMIN_PASSWORD for the first
        start; ``announce_admin_password`` is handed a generated first admin password, once
        (the command line prints it; it is never logged). A journal serves workers on
        ``journal_socket``, where a worker reaches it; a worker serves the listening sockets
        ``inherited`` (listener name -> descriptors), sharing them with the other workers
        whose sessions ``loads`` counts (a journal reads them for status). ``on_ready`` is
        called once serving."""
        self.config = config
        self.role = role
        self.journal_socket = journal_socket
        self.inherited = inherited
        self.name = name
        self.on_ready = on_ready
        self.environ = os.environ if environ is None else environ
        self.announce_admin_password = announce_admin_password
        self.archive: Archive | None = None
        self.journal: Journal | None = None
        self.metrics: Metrics | None = None  # the journal's (SPEC.md 13.7)
        # The journal's checkpoint signer and its verifier key (SPEC.md 8.1).
        self.checkpoints: CheckpointSigner | None = None
        self.checkpoint_vkey = ""
        self.store: StoreClient | None = None  # the protocol servers' view of the archive
        self.accounts: Accounts | None = None
        self.hub: AuditHub | None = None
        self.pop3_server: POP3Server | None = None
        self.tls: TLSContextHolder | None = None
        self.certificates = Certificates(config)
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
        # With other workers on the same listening sockets, a busier worker lets a less
        # busy one take a new connection first.
        self.loads = loads
        self.acceptor = Acceptor(
            self.limiters, self.tally, self._tls, loads=loads if role == Role.WORKER else None
        )
        # Whether a client address may use its protocol's reserve of sessions.
        self.trusted = self.acceptor.trusted
        self.quiet = AuditRate()  # quiet sessions' own records, SMTP and POP3 together
        self.listening: list[Listening] = []
        self.notifier = SystemdNotifier.from_environment()
        self._stop = trio.Event()
        self._reload_requested = trio.Event()
        self._certificate_changed = trio.Event()  # a worker: the journal has a new one
        self.started_at = now()

    @property
    def sessions_active(self) -> int:
        """SMTP and POP3 sessions open now: this process's, and every worker's for a journal
        under a supervisor."""
        workers = self.worker_sessions()
        return self.acceptor.sessions_active + sum(n for n in workers if n is not None)

    def worker_sessions(self) -> list[int | None]:
        """For a journal under a supervisor: each worker's sessions (None: not running)."""
        if self.loads is None or self.role != Role.JOURNAL:
            return []
        return self.loads.sessions()

    def _tls(self) -> TLSContextHolder:
        assert self.tls is not None
        return self.tls

    def request_shutdown(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def request_certificate_reload(self) -> None:
        """A worker: the journal put a new certificate from the ACME CA in the data folder."""
        self._certificate_changed.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[Listening]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            if self.role == Role.WORKER:
                await self._run_worker(task_status)
            else:
                await self._run_journal(task_status)
        finally:
            self.notifier.close()

    async def _run_journal(self, task_status: trio.TaskStatus[list[Listening]]) -> None:
        config = self.config
        archive = await self._open_archive()
        self.archive = archive
        try:
            self.tls = await trio.to_thread.run_sync(self.certificates.load, archive)
            await self._load_source_keys()
            hub = self.hub = AuditHub(archive, queue_size=config.admin.audit_queue)
            metrics = self.metrics = Metrics({c.name: str(c.protocol) for c in config.listeners})
            archive.observe_control(metrics.observe_control)
            archive.commit_group.on_round = metrics.observe_round
            await archive.append_control(
                GatewayStarted(at=now(), version=__version__, node=self._node())
            )
            self.accounts = await self._load_accounts(archive)
            signer = await CheckpointSigner.open(archive, control_origin(config.hostname))
            self.checkpoints, self.checkpoint_vkey = signer, signer.signer.vkey()
            journal = self.journal = Journal(archive)
            async with trio.open_nursery() as nursery:
                # Served meanwhile: a request for a mailbox not open yet waits for it.
                nursery.start_soon(archive.open_mailboxes)
                if self.role == Role.ALL:
                    forge = KeyForge()
                    await nursery.start(forge.run)
                    archive.key_forge = forge
                    self.store = await self._join(nursery, journal)
                    self.store.key_forge = forge
                else:
                    assert self.journal_socket is not None
                    await nursery.start(serve_workers, journal, self.journal_socket)
                if config.tls.acme.directory:
                    await self._start_acme(nursery, archive, journal)
                nursery.start_soon(self._maintenance, archive)
                if archive.shared:
                    nursery.start_soon(archive.follow_others)
                alarms = Alarms(archive, config.alarms, config.store.min_free_bytes)
                nursery.start_soon(alarms.run)
                nursery.start_soon(signer.run, config.custody.checkpoint_interval)
                nursery.start_soon(self._checkpoints, archive)
                nursery.start_soon(self.notifier.watchdog)
                nursery.start_soon(hub.run)
                nursery.start_soon(self._summaries, archive)
                self._fit_descriptors()
                await self._serve(task_status)
                nursery.cancel_scope.cancel()
            await self._summarize(archive)
            try:
                await signer.sign()  # what this run wrote, up to its stop
            except (LogWriteError, OSError) as exc:
                logger.error("event=checkpoint-failed reason=%r", str(exc))
            await archive.append_control(
                GatewayStopped(at=now(), reason="shutdown", node=self._node())
            )
        finally:
            await archive.aclose()

    def _node(self) -> str:
        """This node's name among a fleet's (SPEC.md 17.5)."""
        return self.config.store.node or socket.gethostname()

    async def _open_archive(self) -> Archive:
        """Open the data folder. A journal its supervisor restarts may find the one before
        it still letting go of the folder (it exits at once when its lifeline ends, but not
        in no time): it waits a few seconds for the lock before it gives up."""
        config = self.config
        deadline = trio.current_time() + (LOCK_WAIT if self.role == Role.JOURNAL else 0)
        while True:
            data = await trio.to_thread.run_sync(self._data)
            try:
                return await Archive.open(data, store_config(config), mailboxes_later=True)
            except DataDirLocked:
                data.unlock()  # a fleet store's connections go with it
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)

    def _data(self) -> DataDir:
        """The data folder, or with ``[store] backend = "postgresql"`` the fleet store's
        (SPEC.md 17.6; blocking: it connects). The DSN is never logged."""
        root = Path(self.config.data_dir)
        if self.config.store.backend != "postgresql":
            return DataDir(root)
        import psycopg  # noqa: PLC0415 (lazily: only in fleet mode)

        from ..fleet import FleetDataDir, SchemaError  # noqa: PLC0415

        dsn = self.environ.get("GATEWAY_STORE_DSN") or self.config.store.dsn
        if not dsn:
            raise StartupError("store.backend is postgresql: set store.dsn or $GATEWAY_STORE_DSN")
        try:
            return FleetDataDir(
                root,
                dsn,
                application_name=f"gateway-{self.name}",
                node=self._node(),
            )
        except (psycopg.Error, SchemaError) as exc:  # libpq's messages name no password
            raise StartupError(f"the fleet store cannot be opened: {exc}") from None

    async def _run_worker(self, task_status: trio.TaskStatus[list[Listening]]) -> None:
        """A protocol worker: the journal bound the data folder; this process only reads the
        certificate and the source-key secret it made, and asks the journal for the rest."""
        assert self.journal_socket is not None
        stream = await connect_journal(self.journal_socket)
        store = self.store = StoreClient(
            stream, await trio.to_thread.run_sync(self._data), self.name
        )
        try:
            await store.connect()
        except (LogWriteError, OSError) as exc:
            await trio.aclose_forcefully(stream)
            raise JournalLost(str(exc)) from None
        # Once the journal serves, the certificate and the secret it makes on a first start
        # are there. A newer certificate the journal gets from the ACME CA is pushed.
        store.on_certificate_changed = self.request_certificate_reload
        self.tls = await trio.to_thread.run_sync(self.certificates.load, None)
        await self._load_source_keys()
        lost = False
        async with trio.open_nursery() as nursery:

            async def follow_journal() -> None:
                nonlocal lost
                await store.run()
                lost = True
                nursery.cancel_scope.cancel()  # acknowledge nothing more: stop at once

            nursery.start_soon(follow_journal)
            nursery.start_soon(self._follow_certificate)
            nursery.start_soon(self._summaries, store)
            self._fit_descriptors()
            await self._serve(task_status)
            await self._summarize(store)
            nursery.cancel_scope.cancel()
        if lost:
            raise JournalLost("the journal connection was lost")

    async def _load_source_keys(self) -> None:
        try:
            self.source_keys = await trio.to_thread.run_sync(
                load_source_keys, self.config.source_key_path()
            )
        except SourceKeyError as exc:
            raise StartupError(str(exc)) from None

    async def _join(self, nursery: trio.Nursery, journal: Journal) -> StoreClient:
        """The journal and this process's protocol servers, joined by a socket pair: one
        process runs the same seam as a journal and its workers do (SPEC.md 16)."""
        journal_end, worker_end = trio.socket.socketpair()
        nursery.start_soon(journal.serve, trio.SocketStream(journal_end))
        assert self.archive is not None
        store = StoreClient(trio.SocketStream(worker_end), self.archive.data, self.name)
        await store.connect()
        nursery.start_soon(store.run)
        return store

    def _fit_descriptors(self) -> None:
        """Lower the session limits if together they would not fit the descriptors left
        (less FD_RESERVE): then no listener's connections can starve the others'."""
        available = descriptor_limit() - descriptors_in_use() - FD_RESERVE
        served = {
            Role.ALL: set(Protocol),
            Role.JOURNAL: {Protocol.ADMIN},
            Role.WORKER: {Protocol.SMTP, Protocol.POP3},
        }[self.role]
        limiters = {
            str(protocol): (limiter, DESCRIPTORS_PER_CONNECTION[protocol])
            for protocol, limiter in self.limiters.items()
            if protocol in served
            and any(listener.protocol == protocol for listener in self.config.listeners)
        }
        for name, (configured, total) in fit_to_descriptors(limiters, available).items():
            logger.warning(
                "event=session-limit-lowered protocol=%s configured=%d limit=%d "
                "reason='too few file descriptors (raise LimitNOFILE)'",
                name,
                configured,
                total,
            )

    async def _summaries(self, sink: Archive | StoreClient) -> None:
        while True:
            await trio.sleep(SUMMARY_INTERVAL)
            await self._summarize(sink)

    async def _summarize(self, sink: Archive | StoreClient) -> None:
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
                await sink.append_control(summary, durable=False)
            except LogWriteError as exc:
                logger.error("event=audit-write-failed reason=%r", str(exc))

    async def _load_accounts(self, archive: Archive) -> Accounts:
        config = self.config
        accounts = Accounts(
            archive.data,
            archive.config.kdf,
            archive.state.admin,
            archive.append_control,
            session_ttl=config.admin.session_hours * 3600,
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
            _created, generated = await accounts.load_or_create(password, source)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        if generated is not None and self.announce_admin_password is not None:
            self.announce_admin_password(generated)
        return accounts

    async def _start_acme(self, nursery: trio.Nursery, archive: Archive, journal: Journal) -> None:
        """The certificate from the ACME CA (SPEC.md 12.4): the http-01 responder, bound
        before the gateway says it serves, and the service that obtains and renews."""
        from ..services.acme import AcmeService  # noqa: PLC0415 (lazily: only with [tls.acme])

        assert self.tls is not None
        acme = AcmeService(
            self.config,
            archive.data.root,
            self.tls,
            archive.append_control,
            journal.certificate_changed,
        )
        listeners = await bind_acme_http(self.config.tls.acme)
        nursery.start_soon(serve_acme_http, listeners, acme.tokens.get)
        nursery.start_soon(acme.run)

    async def _serve(self, task_status: trio.TaskStatus[list[Listening]]) -> None:
        handlers: dict[Protocol, Handler] = {}
        if self.role != Role.JOURNAL:
            handlers.update(self._protocol_handlers())
        if self.role != Role.WORKER:
            assert self.archive is not None
            assert self.accounts is not None
            assert self.hub is not None
            service = AdminService(self.archive, self.accounts, self.config.mail_domain)
            service.checkpoints = self.checkpoints
            assert self.metrics is not None
            monitoring = Monitoring(self, self.archive, self.accounts, self.metrics)
            admin = AdminServer(self, service, self.accounts, self.hub, self.config, monitoring)
            handlers[Protocol.ADMIN] = admin.handle
        configs = [cfg for cfg in self.config.listeners if cfg.protocol in handlers]
        if self.inherited is not None:
            bound = [adopt(cfg, self.inherited.get(cfg.name, ())) for cfg in configs]
        else:
            bound = await bind(configs)
        self.listening = [item for b in bound for item in b.announce()]
        try:
            await self._run_sessions(bound, handlers, task_status)
        finally:
            for listener in bound:
                listener.close()

    def _protocol_handlers(self) -> dict[Protocol, Handler]:
        assert self.store is not None
        assert self.tls is not None
        assert self.source_keys is not None
        smtp = SMTPServer(self.config, self.store, self.tls, tally=self.tally, quiet=self.quiet)
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
        return {Protocol.SMTP: smtp.handle, Protocol.POP3: pop3.handle}

    async def _run_sessions(
        self,
        bound: list[Bound],
        handlers: dict[Protocol, Handler],
        task_status: trio.TaskStatus[list[Listening]],
    ) -> None:
        async with trio.open_nursery() as sessions:
            async with trio.open_nursery() as accepting:
                for item in bound:
                    for sock in item.sockets:
                        accepting.start_soon(
                            self.acceptor.accept,
                            sock,
                            item.config,
                            handlers[item.config.protocol],
                            sessions,
                        )
                self.notifier.notify("READY=1", f"STATUS=serving {len(self.listening)} listeners")
                if self.on_ready is not None:
                    self.on_ready()
                task_status.started(self.listening)
                await self._wait_for_signals()
                if self.role == Role.JOURNAL and self.journal is not None:
                    # SIGTERM may reach every process at once (a terminal's ^C, systemd's
                    # control group): the workers drain first, still committing through us.
                    with trio.move_on_after(self.config.shutdown_grace + 5):
                        await self.journal.wait_for_workers_gone()
                self.notifier.notify("STOPPING=1")
                logger.info("event=stopping sessions=%d", self.sessions_active)
                accepting.cancel_scope.cancel()
            for listener in bound:
                listener.close()  # stop accepting: new clients get "connection refused"
            # Let sessions finish what they are doing, then cut the rest off.
            sessions.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace

    async def _wait_for_signals(self) -> None:
        while True:
            await wait_any(self._stop, self._reload_requested)
            if self._stop.is_set():
                return
            self._reload_requested = trio.Event()
            await self._reload()

    async def _reload(self) -> None:
        self.notifier.reloading()
        assert self.tls is not None
        await self.certificates.reload(self.tls, "reloaded")
        self.notifier.notify("READY=1")

    async def _follow_certificate(self) -> None:
        """A worker: load the certificate again whenever the journal says it has a new one."""
        while True:
            await self._certificate_changed.wait()
            self._certificate_changed = trio.Event()
            assert self.tls is not None
            await self.certificates.reload(self.tls, "certificate-changed")

    async def _checkpoints(self, archive: Archive) -> None:
        """Recovery points for the logs that grew enough (SPEC.md 6.7): a restart after a
        crash reads at most that much of each log again."""
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            try:
                made = await archive.checkpoint()
            except LogWriteError as exc:  # a fleet store away (SPEC.md 17.7): the next time
                logger.warning("event=recovery-points-failed reason=%r", str(exc))
                continue
            if made:
                logger.debug("event=checkpoint recovery_points=%d", made)

    async def _maintenance(self, archive: Archive) -> None:
        while True:
            await trio.sleep(archive.config.maintenance_interval)
            try:
                if not await archive.housekeeping():  # another node of the fleet does it
                    continue
                reclaimed, deleted = await archive.maintain()
            except LogWriteError as exc:  # a fleet store away (SPEC.md 17.7): the next pass
                logger.warning("event=maintenance-failed reason=%r", str(exc))
                continue
            if reclaimed or deleted:
                logger.info(
                    "event=compacted reclaimed_bytes=%d files_deleted=%d", reclaimed, deleted
                )
