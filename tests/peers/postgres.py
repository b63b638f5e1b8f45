"""Private PostgreSQL 15 clusters: the database of the gateway's fleet mode (nodes keeping their
logs in PostgreSQL), with streaming replication, failover and the faults a store must survive.

Theory of operation. Everything a cluster owns lives in one folder: ``data/`` (its data
directory, made by ``initdb``; ``peer.conf`` there holds this module's settings and is
included by ``postgresql.conf``), ``run/`` (``unix_socket_directories``), the log file
``postgres.log`` (the server's stderr, through ``pg_ctl -l``) and, with ``disk_size``,
``disk/`` (a size-limited tmpfs holding the ``gateway`` database's tablespace). Debian's
binaries are used directly from /usr/lib/postgresql/15/bin (initdb, pg_ctl, postgres,
pg_basebackup, psql): nothing of /etc/postgresql or pg_ctlcluster is read, and no system-wide
cluster needs to exist or run (tools/system-packages.sh installs the package without one).
Any number of clusters coexist, each on its own free port of 127.0.0.1.

Users. PostgreSQL refuses to run as root. When the tests run as root (as they do here), every
server-side program (initdb, pg_ctl and so the postmaster, pg_basebackup, psql) runs as
Debian's ``postgres`` system user (``subprocess`` with ``user=``/``group=``, supplementary
groups dropped), and the cluster's folder lives in ``/tmp/peer-NAME-*`` (linked from
``tmp_dir / NAME``): pytest's ``tmp_path`` sits under a 0700 folder the postgres user cannot
traverse. Run by another user, everything runs as that user, with no switch. The superuser
role is named after that operating-system user (``postgres``, or yours), which is what
``peer`` authentication over the socket wants; clients connect over TCP as the role
``gateway``, with a random password (SCRAM-SHA-256), to the database ``gateway`` it owns.

Durability is the point, so ``fsync``, ``full_page_writes`` and ``synchronous_commit`` stay
on. ``initdb --no-sync`` and ``pg_basebackup --no-sync`` skip only flushing the *new* files
before the server ever ran (they are in the page cache, which a killed server does not lose;
a crash of the whole machine is not what these clusters simulate), which saves about a second
per cluster. ``dynamic_shared_memory_type = mmap`` keeps dynamic shared memory in the data
directory, so a cluster killed with SIGKILL leaves nothing in /dev/shm.

Processes. ``pg_ctl start -w`` daemonizes the postmaster and returns once it accepts
connections. Every child of the postmaster is titled ``postgres: <cluster_name>: ...``
(``cluster_name`` is unique per cluster) and the postmaster's command line names its data
directory: that is how :meth:`PostgresServer.processes` finds exactly this cluster's
processes. Children are process-group leaders of their own (PostgreSQL calls ``setsid``), so
a signal to the postmaster's group would not reach them: :meth:`PostgresServer.kill9` stops the
postmaster (SIGSTOP: no more forks), then SIGKILLs every process of the cluster until none is
left.

Disk full. A tmpfs of ``disk_size`` bytes is mounted (root only) as the location of the
tablespace ``small``, the default tablespace of the database ``gateway`` from its creation:
every table, index, TOAST and temporary file of that database lives there, while the WAL and
the catalogs shared between databases stay on the real disk. :meth:`PostgresServer.fill_disk`
fills the tmpfs with a file of root's until not one page is left, so the next relation
extension fails with SQLSTATE 53100 (``could not extend file ...: No space left on device``),
an ERROR for that statement only: the server keeps running, and commits (WAL) still work.
:meth:`PostgresServer.free_disk` removes the file. A full data directory would be a different
test: a WAL write that cannot get space is a PANIC, and the server restarts in recovery.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .postfix import _reachable_by
from .tools import SBIN, free_port, live_processes, require

__all__ = [
    "PG_BIN",
    "PostgresError",
    "PostgresServer",
    "conninfo",
    "fleet_dsn",
    "open_private_postgres",
    "open_standby",
    "private_postgres",
    "with_standby",
]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"  # Debian's postgresql-common creates it; the server runs as it as root
HOST = "127.0.0.1"
DATABASE = "gateway"
ROLE = "gateway"
REPLICATION_ROLE = "replicator"
TABLESPACE = "small"  # on the tmpfs of ``disk_size``
LOG_TAIL = 6000  # characters of the log an error carries
START_TIMEOUT = 60.0  # crash recovery happens inside a start
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
KILL_TIMEOUT = 10.0
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; PostgreSQL adds "/.s.PGSQL.PORT" and a lock
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,30}")
_SETTING = re.compile(r"[a-z][a-z0-9_.]*")

# peer.conf: what every cluster of this module runs with; ``settings`` come after it.
_BASE_SETTINGS = {
    "listen_addresses": HOST,
    "max_connections": "50",
    "shared_buffers": "16MB",
    "huge_pages": "off",
    "dynamic_shared_memory_type": "mmap",  # in the data directory: nothing left in /dev/shm
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "on",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "wal_receiver_status_interval": "1s",
    "logging_collector": "off",
    "log_destination": "stderr",
    "log_line_prefix": "%m [%p] %q%u@%d/%a ",
    "lc_messages": "C",
    "timezone": "UTC",
}


class PostgresError(RuntimeError):
    """Something the private PostgreSQL did not do; the message carries its log."""


@dataclass(frozen=True)
class _Account:
    """Who the server-side programs run as: ``uid`` None is this process's own user."""

    name: str
    uid: int | None
    gid: int | None


def _account() -> _Account:
    if os.geteuid() != 0:
        return _Account(pwd.getpwuid(os.geteuid()).pw_name, None, None)
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(
            f"user {SERVER_USER!r} does not exist: run `make test` (it installs the test "
            "peers, postgresql among them)"
        ) from None
    return _Account(SERVER_USER, entry.pw_uid, entry.pw_gid)


def _binary(name: str) -> str:
    """The full path of a PostgreSQL 15 program, or fail the test (never skip)."""
    return require(str(PG_BIN / name))


@dataclass(eq=False)
class PostgresServer:
    """A private PostgreSQL cluster (a primary or a standby). Every method blocks: from trio,
    call them with ``trio.to_thread.run_sync``.

    Clients connect with :attr:`dsn` (libpq conninfo: role ``gateway``, database ``gateway``,
    TCP on 127.0.0.1). :meth:`psql` runs SQL as the superuser over the Unix socket."""

    name: str
    root: Path
    data_dir: Path
    socket_dir: Path
    log_file: Path
    cluster_name: str  # unique: the process titles carry it
    port: int
    password: str  # of the role ``gateway``
    replication_password: str  # of the role ``replicator`` (REPLICATION LOGIN)
    settings: dict[str, str]
    account: _Account
    host: str = HOST
    user: str = ROLE
    dbname: str = DATABASE
    disk_dir: Path | None = None  # the tmpfs of the tablespace ``small`` (disk_size)
    disk_size: int | None = None
    primary: PostgresServer | None = None  # what a standby streams from (its creator)
    standbys: list[PostgresServer] = field(default_factory=list)
    synchronous_names: list[str] = field(default_factory=list)  # synchronous_standby_names
    slot: str | None = None  # a standby's replication slot on its primary

    @property
    def superuser(self) -> str:
        return self.account.name

    @property
    def dsn(self) -> str:
        """libpq conninfo for the role ``gateway`` on this cluster alone."""
        return conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
        )

    @property
    def is_standby(self) -> bool:
        """Whether it is (still) in standby mode: ``standby.signal`` goes at promotion."""
        return (self.data_dir / "standby.signal").exists()

    # -- processes -------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The postmaster's process id, None when it is not running (no ``postmaster.pid``,
        or that process is gone, a zombie or another program)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if self._is_postmaster(pid) else None

    def processes(self) -> list[int]:
        """Every live process of this cluster: the postmaster and its children."""
        title = f"postgres: {self.cluster_name}: ".encode()
        return [
            pid
            for pid, cmdline in live_processes()
            if cmdline.startswith(title) or self._postmaster_cmdline(cmdline)
        ]

    def _is_postmaster(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return self._postmaster_cmdline(cmdline)

    def _postmaster_cmdline(self, cmdline: bytes) -> bool:
        # pg_ctl runs ``exec "PG_BIN/postgres" -D "DATA"`` through /bin/sh; a child just
        # forked still carries the same command line until it sets its title.
        argv = cmdline.split(b"\0")
        return (
            len(argv) >= 3
            and argv[0] == str(PG_BIN / "postgres").encode()
            and b"-D" in argv
            and str(self.data_dir).encode() in argv
        )

    def start(self) -> None:
        """Start the cluster (again, after :meth:`stop` or :meth:`kill9`); returns once it
        accepts connections (after crash recovery, for a killed one). PostgresError with
        the log's tail when it does not start."""
        if self.pid() is not None:
            raise PostgresError(self._explain("start: it is running already"))
        self._discard_stale_lock()
        done = self._run(
            [
                _binary("pg_ctl"),
                "start",
                "--wait",
                f"--timeout={int(START_TIMEOUT)}",
                "--silent",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
            ],
            check=False,
            timeout=START_TIMEOUT + 10,
        )
        if done.returncode != 0 or self.pid() is None:
            output = (done.stdout + done.stderr).strip()
            self.kill9()  # a postmaster that never got ready must not linger
            raise PostgresError(self._explain(f"pg_ctl start exited {done.returncode}: {output}"))

    def stop(self) -> None:
        """A fast shutdown (``pg_ctl stop -m fast``: clients are disconnected, a shutdown
        checkpoint is written); anything of the cluster still alive then is killed."""
        if self.pid() is not None:
            self._run(
                [
                    _binary("pg_ctl"),
                    "stop",
                    "--wait",
                    f"--timeout={int(STOP_TIMEOUT)}",
                    "--silent",
                    "-m",
                    "fast",
                    "-D",
                    str(self.data_dir),
                ],
                check=False,
                timeout=STOP_TIMEOUT + 10,
            )
        self.kill9()

    def kill9(self) -> None:
        """SIGKILL the postmaster and every child, as a crash would: nothing of the cluster
        keeps serving (the port refuses connections once this returns). A later
        :meth:`start` runs crash recovery."""
        master = self.pid()
        if master is not None:
            with suppress(ProcessLookupError):
                os.kill(master, signal.SIGSTOP)  # no new children from here on
        deadline = time.monotonic() + KILL_TIMEOUT
        while left := self.processes():
            for pid in left:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise PostgresError(self._explain(f"processes {left} survive SIGKILL"))
            time.sleep(0.01)

    def _discard_stale_lock(self) -> None:
        """Remove a ``postmaster.pid`` whose server is gone (killed), and the System V
        shared memory segment it names when nothing is attached to it, and the socket's lock
        file. The killed postmaster may stay a zombie for seconds (our PID 1 reaps late),
        and PostgreSQL refuses to start while the pid in either lock file exists."""
        lock = self.data_dir / "postmaster.pid"
        try:
            lines = lock.read_text().splitlines()
        except FileNotFoundError:
            return
        if len(lines) >= 7 and len(fields := lines[6].split()) == 2:
            _remove_shm_if_unused(fields[1])
        socket = self.socket_dir / f".s.PGSQL.{self.port}"
        for stale in (Path(f"{socket}.lock"), socket, lock):
            stale.unlink(missing_ok=True)

    # -- SQL as the superuser --------------------------------------------------------------

    def psql(self, sql: str, *, dbname: str = DATABASE) -> str:
        """Run ``sql`` (any number of statements, each on its own: ALTER SYSTEM works) with
        psql as the superuser over the Unix socket; its output, unaligned, tuples only
        (``-At``: columns split by ``|``, one row a line), without the last line end.
        PostgresError on the first error."""
        done = self._run(
            [
                _binary("psql"),
                "--no-psqlrc",
                "--quiet",
                "--no-align",
                "--tuples-only",
                "--set=ON_ERROR_STOP=1",
                "--host",
                str(self.socket_dir),
                "--port",
                str(self.port),
                "--username",
                self.superuser,
                "--dbname",
                dbname,
                "--file=-",
            ],
            stdin=sql,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresError(
                self._explain(f"psql exited {done.returncode} for {sql!r}: {done.stderr}")
            )
        return done.stdout.removesuffix("\n")

    def set(self, setting: str, value: str | int | bool | None) -> None:
        """``ALTER SYSTEM SET setting = value`` (None: ``RESET``), then :meth:`reload`. Only
        settings a reload applies take effect (``pending_restart`` in pg_settings tells)."""
        if not _SETTING.fullmatch(setting):
            raise ValueError(f"not a setting name: {setting!r}")
        if value is None:
            self.psql(f"ALTER SYSTEM RESET {setting}")
        else:
            self.psql(f"ALTER SYSTEM SET {setting} = {_literal(_setting_text(value))}")
        self.reload()

    def reload(self) -> None:
        """``pg_reload_conf()``, returning once the postmaster has read the files again, so
        every connection made from then on has the new values (an open session takes them
        before its next command)."""
        before = self.psql("SELECT pg_conf_load_time()")
        self.psql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while self.psql("SELECT pg_conf_load_time()") == before:
            if time.monotonic() > deadline:
                raise PostgresError(self._explain("the configuration was not reloaded"))
            time.sleep(0.01)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- faults ------------------------------------------------------------------------------

    def make_read_only(self, read_only: bool = True) -> None:
        """``default_transaction_read_only = on`` for every session (``ALTER SYSTEM``, then
        reload): writes fail with SQLSTATE 25006 (read_only_sql_transaction), as on a
        standby; open sessions too, from their next transaction. ``False`` undoes it. A
        client may still ``SET default_transaction_read_only = off`` for itself: this is a
        refusing database, not a security boundary."""
        self.set("default_transaction_read_only", "on" if read_only else None)

    def terminate_backends(self, application_name: str | None = None) -> int:
        """``pg_terminate_backend`` every client connection (walsenders and the cluster's own
        processes are left alone), or only those whose ``application_name`` is this; returns
        once they are gone (up to 5 s each), with how many there were. The clients' next
        command fails (psycopg: OperationalError)."""
        where = "backend_type = 'client backend' AND pid <> pg_backend_pid()"
        if application_name is not None:
            where += f" AND application_name = {_literal(application_name)}"
        out = self.psql(
            f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
            f" FROM pg_stat_activity WHERE {where}",
            dbname="postgres",
        )
        return int(out)

    def fill_disk(self) -> int:
        """Fill the tmpfs of the ``gateway`` database (``disk_size``) until not one page is
        free, with a file of its own; how many bytes were free before. Inserts that need a
        new page then fail with SQLSTATE 53100 (disk_full); the server keeps running."""
        disk = self._disk()
        free_before = self.disk_free()
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = 1 << 20
            zeros = bytes(chunk)
            while chunk >= 512:
                try:
                    os.write(fd, zeros[:chunk])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
        finally:
            os.close(fd)
        return free_before

    def free_disk(self) -> None:
        """Remove what :meth:`fill_disk` wrote."""
        (self._disk() / "filler").unlink(missing_ok=True)

    @contextmanager
    def disk_full(self) -> Iterator[None]:
        """:meth:`fill_disk` for the block, :meth:`free_disk` after it."""
        self.fill_disk()
        try:
            yield
        finally:
            self.free_disk()

    def disk_free(self) -> int:
        """Bytes free on the tmpfs of the ``gateway`` database."""
        info = os.statvfs(self._disk())
        return info.f_bavail * info.f_frsize

    def _disk(self) -> Path:
        if self.disk_dir is None:
            raise PostgresError(f"{self.name}: no disk_size given, so no disk to fill")
        return self.disk_dir

    # -- replication -------------------------------------------------------------------------

    def promote(self) -> None:
        """``pg_ctl promote`` a standby; returns once it accepts writes."""
        if not self.is_standby:
            raise PostgresError(self._explain("promote: not a standby"))
        done = self._run(
            [
                _binary("pg_ctl"),
                "promote",
                "--wait",
                f"--timeout={int(START_TIMEOUT)}",
                "--silent",
                "-D",
                str(self.data_dir),
            ],
            check=False,
            timeout=START_TIMEOUT + 10,
        )
        if done.returncode != 0:
            raise PostgresError(
                self._explain(f"pg_ctl promote exited {done.returncode}: {done.stderr}")
            )
        deadline = time.monotonic() + START_TIMEOUT
        while self.psql("SELECT pg_is_in_recovery()") != "f":
            if time.monotonic() > deadline:
                raise PostgresError(self._explain("still in recovery after promote"))
            time.sleep(0.02)
        # A transaction id can only be had where writes are accepted.
        self.psql("SET default_transaction_read_only = off; SELECT pg_current_xact_id()")

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """On a standby: wait until it has replayed all the WAL its primary had written
        when called (with ``synchronous_commit = on`` a commit waits for the standby's
        flush, not its replay: a read there right after may not see it yet)."""
        if self.primary is None:
            raise PostgresError(f"{self.name}: not a standby")
        target = self.primary.psql("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        query = f"SELECT pg_last_wal_replay_lsn() >= {_literal(target)}::pg_lsn"
        while self.psql(query) != "t":
            if time.monotonic() > deadline:
                raise PostgresError(self._explain(f"not replayed up to {target} in {timeout} s"))
            time.sleep(0.02)

    def replication(self) -> dict[str, tuple[str, str]]:
        """On a primary: ``pg_stat_replication`` as application_name -> (state,
        sync_state)."""
        out = self.psql(
            "SELECT application_name, state, sync_state FROM pg_stat_replication",
            dbname="postgres",
        )
        rows = [line.split("|") for line in out.splitlines() if line]
        return {name: (state, sync) for name, state, sync in rows}

    def _set_synchronous(self) -> None:
        names = ", ".join(f'"{name}"' for name in self.synchronous_names)
        self.set("synchronous_standby_names", names or None)

    # -- internals ---------------------------------------------------------------------------

    def _run(
        self,
        argv: list[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return _run_as(
            self.account, argv, cwd=self.root, stdin=stdin, env=env, check=check, timeout=timeout
        )

    def _write_conf(self, extra: Mapping[str, str] | None = None) -> None:
        values = {
            **_BASE_SETTINGS,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "cluster_name": self.cluster_name,
            **self.settings,
            **(extra or {}),
        }
        lines = [
            "# A private test cluster (tests/peers/postgres.py), written at every setup.\n",
            *(f"{key} = {_literal(value)}\n" for key, value in values.items()),
        ]
        conf = self.data_dir / "peer.conf"
        conf.write_text("".join(lines))
        _chown(conf, self.account)

    def _explain(self, what: str) -> str:
        tail = self.log_text()[-LOG_TAIL:]
        return f"private PostgreSQL {self.name} ({self.data_dir}): {what}\n--- log tail ---\n{tail}"


def conninfo(**values: str | int) -> str:
    """A libpq conninfo string (``key=value`` separated by spaces, values quoted when they
    must be)."""
    parts = []
    for key, value in values.items():
        text = str(value)
        if not text or re.search(r"[\s'\\]", text):
            text = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def fleet_dsn(
    servers: Sequence[PostgresServer],
    *,
    target_session_attrs: str = "read-write",
    connect_timeout: int | None = None,
) -> str:
    """One conninfo naming every cluster (``host=127.0.0.1,127.0.0.1 port=P1,P2 ...``):
    libpq tries them in order and keeps the first whose session matches
    ``target_session_attrs`` (``read-write``: the primary, whichever that is now;
    ``any``, ``read-only``, ``primary``, ``standby``, ``prefer-standby``). A host that refuses
    connections is skipped at once; ``connect_timeout`` (seconds, per host) bounds one
    that does not answer. They must share role, password and database (a standby and its
    primary do)."""
    if not servers:
        raise ValueError("fleet_dsn: no servers")
    first = servers[0]
    if any(
        (s.user, s.password, s.dbname) != (first.user, first.password, first.dbname)
        for s in servers
    ):
        raise ValueError("fleet_dsn: the servers differ in user, password or database")
    values: dict[str, str | int] = {
        "host": ",".join(s.host for s in servers),
        "port": ",".join(str(s.port) for s in servers),
        "user": first.user,
        "password": first.password,
        "dbname": first.dbname,
        "target_session_attrs": target_session_attrs,
    }
    if connect_timeout is not None:
        values["connect_timeout"] = connect_timeout
    return conninfo(**values)


@contextmanager
def private_postgres(
    tmp_dir: Path,
    *,
    port: int | None = None,
    name: str = "pg",
    settings: Mapping[str, str] | None = None,
    disk_size: int | None = None,
) -> Iterator[PostgresServer]:
    """Run a private PostgreSQL 15 cluster in ``tmp_dir / name`` until the block ends.

    ``port`` None picks a free one. ``settings`` are extra postgresql.conf parameters
    (``name: value``), applied after this module's own (see ``_BASE_SETTINGS``).
    ``disk_size`` (bytes, root only) puts the database ``gateway`` on a tmpfs of that size
    (a tablespace; 16 MiB at least: a fresh database takes about 8), for
    :meth:`PostgresServer.fill_disk`. ``name`` lets several clusters share a ``tmp_dir``.

    initdb (UTF8, locale C, ``--auth-local=peer``, ``--auth-host=scram-sha-256``), start,
    then the roles ``gateway`` (LOGIN, random password, owner of the database ``gateway``)
    and ``replicator`` (REPLICATION LOGIN). At the end every process of the cluster is
    stopped (killed if need be) and the tmpfs unmounted, also when the block raises."""
    for program in ("initdb", "pg_ctl", "postgres", "psql"):
        _binary(program)
    account = _account()
    if disk_size is not None and os.geteuid() != 0:
        raise PostgresError("disk_size needs root: it mounts a tmpfs")
    with _cluster_root(tmp_dir, name, account) as root:
        server = PostgresServer(
            name=name,
            root=root,
            data_dir=root / "data",
            socket_dir=root / "run",
            log_file=root / "postgres.log",
            cluster_name=f"peer-{name}-{secrets.token_hex(4)}",
            port=port or free_port(HOST),
            password=secrets.token_hex(16),
            replication_password=secrets.token_hex(16),
            settings=dict(settings or {}),
            account=account,
            disk_dir=root / "disk" if disk_size is not None else None,
            disk_size=disk_size,
        )
        _prepare_folders(server)
        with _tmpfs(server):
            try:
                _initdb(server)
                server.start()
                _create_roles(server)
                yield server
            finally:
                _teardown(server)


@contextmanager
def with_standby(
    primary: PostgresServer,
    tmp_dir: Path,
    *,
    synchronous: bool = True,
    name: str = "standby",
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
) -> Iterator[PostgresServer]:
    """A streaming-replication standby of ``primary`` in ``tmp_dir / name``, until the block
    ends.

    ``pg_basebackup -X stream -c fast`` as the role ``replicator`` into a new data directory,
    with a physical replication slot on the primary (the standby's WAL is kept while it is
    down); ``primary_conninfo`` names the primary over TCP with ``application_name`` =
    ``name``. A primary with ``disk_size`` gets a tmpfs of the same size mapped for the
    standby's copy of the tablespace (``--tablespace-mapping``). ``settings`` default to the
    primary's.

    ``synchronous``: ``name`` joins the primary's ``synchronous_standby_names`` (FIRST 1
    of them, in order) with ``synchronous_commit = on``: a commit on the primary returns only
    once this standby has flushed its WAL. Returns once ``pg_stat_replication`` on the
    primary shows it ``streaming`` (and ``sync``). At the end it leaves
    ``synchronous_standby_names`` (when the primary runs), is stopped, its tmpfs unmounted and
    its slot dropped (best effort)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"standby name {name!r}: letters, digits, '_' and '-' only")
    if primary.is_standby:
        raise PostgresError(f"{primary.name} is a standby itself: no cascading here")
    if any(s.name == name for s in primary.standbys):
        raise ValueError(f"{primary.name} has a standby named {name!r} already")
    _binary("pg_basebackup")
    account = primary.account
    with _cluster_root(tmp_dir, name, account) as root:
        standby = PostgresServer(
            name=name,
            root=root,
            data_dir=root / "data",
            socket_dir=root / "run",
            log_file=root / "postgres.log",
            cluster_name=f"peer-{name}-{secrets.token_hex(4)}",
            port=port or free_port(HOST),
            password=primary.password,
            replication_password=primary.replication_password,
            settings=dict(settings if settings is not None else primary.settings),
            account=account,
            disk_dir=root / "disk" if primary.disk_dir is not None else None,
            disk_size=primary.disk_size,
            primary=primary,
            slot=re.sub(r"[^a-z0-9_]", "_", f"{name}_{secrets.token_hex(3)}".lower()),
        )
        _prepare_folders(standby)
        primary.standbys.append(standby)
        try:
            with _tmpfs(standby):
                try:
                    _basebackup(primary, standby)
                    standby.start()
                    if synchronous:
                        primary.synchronous_names.append(name)
                        primary.set("synchronous_commit", "on")
                        primary._set_synchronous()
                    _wait_streaming(primary, standby, synchronous)
                    yield standby
                finally:
                    if name in primary.synchronous_names:
                        primary.synchronous_names.remove(name)
                        if primary.pid() is not None and not primary.is_standby:
                            with suppress(PostgresError):
                                primary._set_synchronous()
                    _teardown(standby)
        finally:
            primary.standbys.remove(standby)
            _drop_slot(primary, standby)


@asynccontextmanager
async def open_private_postgres(
    tmp_dir: Path,
    *,
    port: int | None = None,
    name: str = "pg",
    settings: Mapping[str, str] | None = None,
    disk_size: int | None = None,
) -> AsyncIterator[PostgresServer]:
    """:func:`private_postgres` for trio: start and stop run in a worker thread."""
    manager = private_postgres(
        tmp_dir, port=port, name=name, settings=settings, disk_size=disk_size
    )
    server = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)


@asynccontextmanager
async def open_standby(
    primary: PostgresServer,
    tmp_dir: Path,
    *,
    synchronous: bool = True,
    name: str = "standby",
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[PostgresServer]:
    """:func:`with_standby` for trio: start and stop run in a worker thread."""
    manager = with_standby(
        primary, tmp_dir, synchronous=synchronous, name=name, port=port, settings=settings
    )
    server = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)


# -- setting up ---------------------------------------------------------------------------------


@contextmanager
def _cluster_root(tmp_dir: Path, name: str, account: _Account) -> Iterator[Path]:
    """The cluster's folder, ``tmp_dir / name``, mode 0755, for the block. When the server's
    user cannot traverse ``tmp_dir`` (pytest's tmp_path sits under a 0700 folder), or the
    socket's path would be too long for ``sun_path``, the folder is made under /tmp instead
    and linked from ``tmp_dir / name``; at the end the link is replaced by a folder holding a
    copy of the log, and the /tmp folder is removed."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"cluster name {name!r}: letters, digits, '_' and '-' only")
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    reachable = account.uid is None or _reachable_by(account.name, tmp_dir)
    socket_path = tmp_dir / name / "run" / ".s.PGSQL.65535.lock"
    if reachable and len(str(socket_path)) <= SOCKET_PATH_MAX:
        root = tmp_dir / name
        root.mkdir()
        elsewhere = False
    else:
        root = Path(tempfile.mkdtemp(prefix=f"peer-{name}-", dir="/tmp"))
        (tmp_dir / name).symlink_to(root)
        elsewhere = True
    try:
        root.chmod(0o755)
        yield root
    finally:
        if elsewhere:
            with suppress(OSError):
                (tmp_dir / name).unlink()
                (tmp_dir / name).mkdir()
                shutil.copy(root / "postgres.log", tmp_dir / name / "postgres.log")
            shutil.rmtree(root, ignore_errors=True)


def _prepare_folders(server: PostgresServer) -> None:
    for folder, mode in ((server.data_dir, 0o700), (server.socket_dir, 0o755)):
        folder.mkdir(mode=mode)
        folder.chmod(mode)
        _chown(folder, server.account)
    server.log_file.touch(mode=0o644)
    _chown(server.log_file, server.account)
    if server.disk_dir is not None:
        server.disk_dir.mkdir(mode=0o700)


@contextmanager
def _tmpfs(server: PostgresServer) -> Iterator[None]:
    """The tmpfs of ``disk_size`` at ``disk_dir`` for the block (nothing without one)."""
    if server.disk_dir is None or server.disk_size is None:
        yield
        return
    options = f"size={server.disk_size},mode=0700"
    if server.account.uid is not None:
        options += f",uid={server.account.uid},gid={server.account.gid}"
    done = subprocess.run(
        [
            require("mount"),
            "-t",
            "tmpfs",
            "-o",
            options,
            f"peer-{server.cluster_name}",
            str(server.disk_dir),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT,
    )
    if done.returncode != 0:
        raise PostgresError(f"mount -t tmpfs at {server.disk_dir}: {done.stderr.strip()}")
    try:
        yield
    finally:
        _unmount(server.disk_dir)


def _unmount(path: Path) -> None:
    for argv in (["umount", str(path)], ["umount", "--lazy", str(path)]):
        done = subprocess.run(
            [require(argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT,
        )
        if done.returncode == 0:
            return
    raise PostgresError(f"umount {path}: {done.stderr.strip()}")


def _initdb(server: PostgresServer) -> None:
    done = server._run(
        [
            _binary("initdb"),
            "--pgdata",
            str(server.data_dir),
            "--username",
            server.superuser,
            "--encoding=UTF8",
            "--locale=C",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "--no-instructions",
        ],
        check=False,
    )
    if done.returncode != 0:
        raise PostgresError(f"initdb {server.data_dir} exited {done.returncode}:\n{done.stderr}")
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write("\n# tests/peers/postgres.py\ninclude 'peer.conf'\n")
    server._write_conf()


def _create_roles(server: PostgresServer) -> None:
    tablespace = ""
    sql = [
        f"CREATE ROLE {ROLE} LOGIN PASSWORD {_literal(server.password)}",
        f"CREATE ROLE {REPLICATION_ROLE} REPLICATION LOGIN"
        f" PASSWORD {_literal(server.replication_password)}",
    ]
    if server.disk_dir is not None:
        sql.append(
            f"CREATE TABLESPACE {TABLESPACE} OWNER {ROLE} LOCATION {_literal(str(server.disk_dir))}"
        )
        tablespace = f" TABLESPACE {TABLESPACE}"
    sql.append(f"CREATE DATABASE {DATABASE} OWNER {ROLE}{tablespace}")
    server.psql(";\n".join(sql) + ";\n", dbname="postgres")


def _basebackup(primary: PostgresServer, standby: PostgresServer) -> None:
    assert standby.slot is not None
    primary.psql(
        f"SELECT pg_create_physical_replication_slot({_literal(standby.slot)})", dbname="postgres"
    )
    argv = [
        _binary("pg_basebackup"),
        "--pgdata",
        str(standby.data_dir),
        "--host",
        primary.host,
        "--port",
        str(primary.port),
        "--username",
        REPLICATION_ROLE,
        "--no-password",
        "--wal-method=stream",
        "--slot",
        standby.slot,
        "--checkpoint=fast",
        "--no-sync",
    ]
    if primary.disk_dir is not None and standby.disk_dir is not None:
        argv.append(f"--tablespace-mapping={primary.disk_dir}={standby.disk_dir}")
    done = standby._run(
        argv, env={"PGPASSWORD": primary.replication_password}, check=False, timeout=300
    )
    if done.returncode != 0:
        raise PostgresError(
            primary._explain(f"pg_basebackup exited {done.returncode}:\n{done.stderr}")
        )
    # The copy carries the primary's postgresql.auto.conf: a promoted standby must not wait
    # for synchronous standbys of the old primary.
    auto = standby.data_dir / "postgresql.auto.conf"
    kept = [
        line
        for line in auto.read_text().splitlines(keepends=True)
        if not line.startswith("synchronous_standby_names")
    ]
    auto.write_text("".join(kept))
    primary_conninfo = conninfo(
        host=primary.host,
        port=primary.port,
        user=REPLICATION_ROLE,
        password=primary.replication_password,
        application_name=standby.name,
    )
    standby._write_conf({"primary_conninfo": primary_conninfo, "primary_slot_name": standby.slot})
    signal_file = standby.data_dir / "standby.signal"
    signal_file.touch(mode=0o600)
    _chown(signal_file, standby.account)


def _wait_streaming(primary: PostgresServer, standby: PostgresServer, synchronous: bool) -> None:
    wanted = ("streaming", "sync" if synchronous else "async")
    deadline = time.monotonic() + START_TIMEOUT
    while (seen := primary.replication().get(standby.name)) != wanted:
        if time.monotonic() > deadline:
            raise PostgresError(
                standby._explain(f"pg_stat_replication on the primary: {seen}, not {wanted}")
            )
        time.sleep(0.02)


def _drop_slot(primary: PostgresServer, standby: PostgresServer) -> None:
    """Drop the standby's slot on its primary, best effort: a slot stays active a moment
    after its walsender's standby went, and a primary that is down keeps it."""
    deadline = time.monotonic() + 3.0
    while primary.pid() is not None and not primary.is_standby:
        try:
            primary.psql(
                f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                f" WHERE slot_name = {_literal(standby.slot or '')}",
                dbname="postgres",
            )
        except PostgresError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        else:
            return


def _teardown(server: PostgresServer) -> None:
    """Stop the cluster, kill what is left, and forget its System V segment."""
    try:
        server.stop()
    except PostgresError:
        server.kill9()
    server._discard_stale_lock()


# -- helpers ------------------------------------------------------------------------------------


def _run_as(
    account: _Account,
    argv: list[str],
    *,
    cwd: Path,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the server's user, in a clean environment (no PG*
    variables of the caller; HOME in the cluster's folder, so no ~/.pgpass is read)."""
    environment = {
        "PATH": f"{PG_BIN}:{SBIN}",
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        **(env or {}),
    }
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=environment,
            user=account.uid,  # None: no switch (not root)
            group=account.gid,
            extra_groups=[] if account.uid is not None else None,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"{' '.join(argv)}: no end after {timeout} s: {exc.stderr!r}") from None
    if check and done.returncode != 0:
        raise PostgresError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")
    return done


def _chown(path: Path, account: _Account) -> None:
    if account.uid is not None and account.gid is not None:
        os.chown(path, account.uid, account.gid)


def _literal(value: str) -> str:
    """A single-quoted SQL (and postgresql.conf) string literal."""
    return "'" + value.replace("'", "''") + "'"


def _setting_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _remove_shm_if_unused(shmid: str) -> None:
    """``ipcrm -m`` a System V segment nothing is attached to (a killed cluster's)."""
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return
    for row in rows:
        columns = row.split()
        # key shmid perms size cpid lpid nattch ...
        if len(columns) > 6 and columns[1] == shmid and columns[6] == "0":
            with suppress(OSError, ValueError):
                subprocess.run(
                    [shutil.which("ipcrm", path=SBIN) or "ipcrm", "-m", shmid],
                    capture_output=True,
                    check=False,
                    timeout=10,
                )
