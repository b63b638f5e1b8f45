"""The PostgreSQL peer works before the gateway is involved: a private cluster serves psycopg over
TCP with SCRAM passwords; a synchronous standby holds every committed row, makes commits on the
primary wait while it is down, and takes over when the primary is killed; and the faults a
store must survive (a read-only database, dropped connections, a full disk) happen as
PostgreSQL reports them to a client."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import psycopg
import pytest
import trio
from psycopg import errors
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from . import (
    PostgresError,
    PostgresServer,
    fleet_dsn,
    open_private_postgres,
    private_postgres,
    with_standby,
)
from . import postgres as postgres_peer

pytestmark = pytest.mark.slow

MiB = 1 << 20


def _connect(dsn: str, application_name: str = "peer-test") -> psycopg.Connection[TupleRow]:
    dsn = make_conninfo(dsn, application_name=application_name, connect_timeout=10)
    return psycopg.connect(dsn, autocommit=True)


def _rows(server: PostgresServer, sql: str) -> list[TupleRow]:
    with _connect(server.dsn) as conn:
        return conn.execute(sql).fetchall()


def _round_trip(server: PostgresServer) -> list[TupleRow]:
    with _connect(server.dsn) as conn:
        conn.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes VALUES (%s, %s), (%s, %s)", (1, "één", 2, "two"))
        return conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()


async def test_primary_serves_psycopg_and_refuses_a_wrong_password(tmp_path: Path) -> None:
    async with open_private_postgres(tmp_path) as pg:
        rows = await trio.to_thread.run_sync(_round_trip, pg)
        assert rows == [(1, "één"), (2, "two")]
        # What the cluster runs with: loopback only, durable, UTF8.
        assert pg.psql("SHOW listen_addresses; SHOW fsync; SHOW server_encoding") == (
            "127.0.0.1\non\nUTF8"
        )
        assert pg.psql("SELECT count(*) FROM notes") == "2"  # psql: the superuser, by socket
        wrong = make_conninfo(pg.dsn, password="not-the-password")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            await trio.to_thread.run_sync(_connect, wrong)
        assert "password authentication failed" in pg.log_text()
        assert pg.pid() in pg.processes()
    assert pg.processes() == []
    assert "database system is shut down" in (tmp_path / "pg" / "postgres.log").read_text()


def test_start_failure_says_why(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(PostgresError, match=r"(?s)pg_ctl start exited 1.*log tail.*bind"),
            private_postgres(tmp_path, port=port),
        ):
            pass


def test_missing_binary_fails_never_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_peer, "PG_BIN", tmp_path / "no-such-postgresql")
    with (
        pytest.raises(pytest.fail.Exception, match=r"initdb is not installed.*install\.sh"),
        private_postgres(tmp_path),
    ):
        pass


def test_synchronous_standby_holds_commits_and_blocks_without_it(tmp_path: Path) -> None:
    with private_postgres(tmp_path) as pg, with_standby(pg, tmp_path) as standby:
        assert pg.replication() == {"standby": ("streaming", "sync")}
        with _connect(pg.dsn) as conn:
            conn.execute("CREATE TABLE log (seq integer PRIMARY KEY)")
            conn.execute("INSERT INTO log VALUES (1)")
        standby.wait_caught_up()
        assert _rows(standby, "SELECT seq FROM log") == [(1,)]
        with pytest.raises(errors.ReadOnlySqlTransaction):
            _rows(standby, "INSERT INTO log VALUES (99)")

        standby.stop()
        outcome: list[object] = []

        def commit() -> None:
            try:
                with _connect(pg.dsn) as conn:
                    conn.execute("INSERT INTO log VALUES (2)")
                outcome.append("committed")
            except Exception as exc:
                outcome.append(exc)

        writer = threading.Thread(target=commit, daemon=True)
        writer.start()
        writer.join(2.0)
        assert writer.is_alive(), f"a commit returned without its synchronous standby: {outcome}"
        assert outcome == []
        started = time.monotonic()
        standby.start()
        writer.join(30.0)
        assert not writer.is_alive()
        assert outcome == ["committed"]
        assert time.monotonic() - started < 10
        standby.wait_caught_up()
        assert _rows(standby, "SELECT seq FROM log ORDER BY seq") == [(1,), (2,)]


def test_failover_to_the_promoted_standby(tmp_path: Path) -> None:
    with private_postgres(tmp_path) as pg, with_standby(pg, tmp_path) as standby:
        with _connect(pg.dsn) as conn:
            conn.execute("CREATE TABLE log (seq integer PRIMARY KEY)")
            for seq in range(1, 21):
                conn.execute("INSERT INTO log VALUES (%s)", (seq,))  # each its own commit
        # libpq skips the read-only standby for the primary, whichever comes first.
        with _connect(fleet_dsn([standby, pg])) as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone() == (pg.port,)
        with _connect(fleet_dsn([standby, pg], target_session_attrs="any")) as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone() == (standby.port,)

        pg.kill9()
        assert pg.pid() is None
        assert pg.processes() == []
        with pytest.raises(psycopg.OperationalError):
            _connect(pg.dsn)
        standby.promote()
        assert not standby.is_standby
        # Every commit the primary acknowledged is there: the standby had flushed it.
        assert _rows(standby, "SELECT count(*), max(seq) FROM log") == [(20, 20)]
        with _connect(fleet_dsn([pg, standby])) as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone() == (standby.port,)
            conn.execute("INSERT INTO log VALUES (21)")
        assert _rows(standby, "SELECT count(*) FROM log") == [(21,)]


def test_faults_read_only_terminated_and_disk_full(tmp_path: Path) -> None:
    with private_postgres(tmp_path, disk_size=32 * MiB) as pg:
        with _connect(pg.dsn) as conn:
            conn.execute("CREATE TABLE blobs (id serial PRIMARY KEY, data bytea NOT NULL)")
            conn.execute("INSERT INTO blobs (data) VALUES ('small')")

            # A read-only database: open sessions too, from their next transaction.
            pg.make_read_only()
            with pytest.raises(errors.ReadOnlySqlTransaction) as refused:
                conn.execute("INSERT INTO blobs (data) VALUES ('refused')")
            assert refused.value.sqlstate == "25006"
            with _connect(pg.dsn) as fresh, pytest.raises(errors.ReadOnlySqlTransaction):
                fresh.execute("INSERT INTO blobs (data) VALUES ('refused')")
            pg.make_read_only(False)
            conn.execute("INSERT INTO blobs (data) VALUES ('accepted')")

            # Dropped connections: only the one named.
            with (
                _connect(pg.dsn, application_name="victim") as victim,
                _connect(pg.dsn, application_name="bystander") as bystander,
            ):
                assert pg.terminate_backends("victim") == 1
                with pytest.raises(psycopg.OperationalError):
                    victim.execute("SELECT 1")
                assert bystander.execute("SELECT 1").fetchone() == (1,)

            # A full disk: the statement fails, the server and the session go on.
            large = os.urandom(4 * MiB)  # incompressible: TOAST needs new pages for it
            with pg.disk_full():
                assert pg.disk_free() == 0
                with pytest.raises(errors.DiskFull) as full:
                    conn.execute("INSERT INTO blobs (data) VALUES (%s)", (large,))
                assert full.value.sqlstate == "53100"
                assert "No space left on device" in str(full.value)
                assert pg.pid() is not None
                assert conn.execute("SELECT count(*) FROM blobs").fetchone() == (2,)
                conn.execute("INSERT INTO blobs (data) VALUES ('')")  # WAL is elsewhere
            conn.execute("INSERT INTO blobs (data) VALUES (%s)", (large,))
            assert conn.execute("SELECT count(*) FROM blobs").fetchone() == (4,)
        assert pg.terminate_backends() == 0
