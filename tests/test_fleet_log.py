"""The group commit over the fleet store (SPEC.md 17.6) on a real PostgreSQL: concurrent
appends to several logs go out in few rounds, each one transaction, committed before anyone
is told; lazy appends commit too (no row lock is left behind); a database that refuses writes
(read-only, the connection cut mid-round) gives LogWriteError with nothing half written, and
the next round reconnects and continues the same chain."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from gateway.fleet import FleetLog, Round, RowLog, Session, ensure_schema
from gateway.log import CommitGroup, LogWriteError, LogWriter, RecordKind

from .peers import PostgresServer, with_standby
from .test_fleet_rows import chain_of

pytestmark = pytest.mark.slow


def connector(shared_postgres: PostgresServer, name: str) -> Any:
    return lambda: psycopg.connect(shared_postgres.dsn, application_name=name)


@contextmanager
def fleet_logs(
    shared_postgres: PostgresServer, count: int, name: str = "round"
) -> Iterator[list[FleetLog]]:
    """``count`` new logs on one round, their connections closed afterwards."""
    round_ = Round(connector(shared_postgres, name))
    with psycopg.connect(shared_postgres.dsn, autocommit=True) as reader:
        logs = []
        for _ in range(count):
            log_id = os.urandom(16)
            rows = RowLog(reader, log_id)
            rows.create()
            session = Session(lambda: reader)
            logs.append(
                FleetLog(
                    round_,
                    session,
                    log_id,
                    rows.end(),
                    segment_bytes=1 << 20,
                    segments=rows.segments(),
                    has_tree=True,
                )
            )
        try:
            yield logs
        finally:
            round_.close()


async def test_concurrent_appends_to_several_logs_commit_in_few_rounds(
    shared_postgres: PostgresServer,
) -> None:
    with fleet_logs(shared_postgres, 3) as logs:
        await concurrent_appends(logs)


async def concurrent_appends(logs: list[FleetLog]) -> None:
    group = CommitGroup()
    writers = [LogWriter(log, group) for log in logs]
    seen: list[list[int]] = [[], [], []]

    async def appender(n: int) -> None:
        which = n % 3
        items = [(RecordKind.EVENT, os.urandom(100)) for _ in range(1 + n % 3)]
        locations = await writers[which].append(items)
        seen[which] += [location.seq for location in locations]

    async with trio.open_nursery() as nursery:
        for n in range(90):
            nursery.start_soon(appender, n)
    for which, log in enumerate(logs):
        assert sorted(seen[which]) == list(range(log.next_seq))
        records = await trio.to_thread.run_sync(log.records)
        assert [r.seq for r in records] == sorted(seen[which])  # committed, every one
        chain_of(records, log.log_id)
        assert log.synced_seq == log.next_seq and not log.uncommitted
    assert writers[0].statistics()["batches"] < 30  # rounds carried many appends each


async def test_a_lazy_append_commits_and_leaves_no_lock(shared_postgres: PostgresServer) -> None:
    with fleet_logs(shared_postgres, 1) as (log,):
        await lazy_append(shared_postgres, log)


async def lazy_append(shared_postgres: PostgresServer, log: FleetLog) -> None:
    writer = LogWriter(log)
    await writer.append_lazily([(RecordKind.EVENT, b"audit")])
    assert not log.uncommitted

    def other_node_appends() -> int:
        with psycopg.connect(
            shared_postgres.dsn, autocommit=True, options="-c lock_timeout=2000"
        ) as conn:
            return RowLog(conn, log.log_id).append([(RecordKind.EVENT, b"x")], 1).first_seq

    assert await trio.to_thread.run_sync(other_node_appends) == 1


async def test_refused_writes_leave_nothing_and_the_next_round_goes_on(
    shared_postgres: PostgresServer,
) -> None:
    with fleet_logs(shared_postgres, 2, "refused") as (log, other):
        await refused_writes(shared_postgres, log, other)


async def refused_writes(shared_postgres: PostgresServer, log: FleetLog, other: FleetLog) -> None:
    writer = LogWriter(log)
    await writer.append([(RecordKind.EVENT, b"first")])

    await trio.to_thread.run_sync(shared_postgres.make_read_only)
    try:
        with pytest.raises(LogWriteError, match="read-only"):
            await writer.append([(RecordKind.EVENT, b"refused")])
    finally:
        await trio.to_thread.run_sync(shared_postgres.make_read_only, False)
    assert log.next_seq == 1 and not log.uncommitted

    # The round's connection ended while idle (a failover, a restart): noticed before it is
    # used, so the next round goes on a new one without failing.
    assert await trio.to_thread.run_sync(lambda: shared_postgres.terminate_backends("refused")) == 1
    await writer.append([(RecordKind.EVENT, b"second")])

    # Cut between a round's appends (to two logs) and its commit: rolled back whole, each
    # log's end where the round found it, and neither's records anywhere.
    def cut_before_commit() -> None:
        log.append([(RecordKind.EVENT, b"lost")], sync=False)
        other.append([(RecordKind.EVENT, b"lost too")], sync=False)
        assert log.uncommitted and log.next_seq == 3 and other.next_seq == 1
        assert shared_postgres.terminate_backends("refused") == 1
        with pytest.raises(LogWriteError, match="did not commit"):
            log.sync()
        with pytest.raises(LogWriteError, match="did not commit"):
            other.sync()
        assert log.next_seq == 2 and not log.uncommitted
        assert other.next_seq == 0 and other.records() == []
        # Cut after one log's append, before another's: the second must not open a new
        # connection and commit alone, as if the first's records were still there.
        log.append([(RecordKind.EVENT, b"lost again")], sync=False)
        assert shared_postgres.terminate_backends("refused") == 1
        with pytest.raises(LogWriteError):
            other.append([(RecordKind.EVENT, b"not alone")], sync=False)
        with pytest.raises(LogWriteError, match="did not commit"):
            log.sync()
        assert log.next_seq == 2 and other.next_seq == 0

    await trio.to_thread.run_sync(cut_before_commit)
    await writer.append([(RecordKind.EVENT, b"third")])
    records = await trio.to_thread.run_sync(log.records)
    assert [r.body for r in records] == [b"first", b"second", b"third"]
    chain_of(records, log.log_id)


def test_a_commit_cut_short_is_learnt_from_the_store(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """The connection dies during COMMIT, which had committed (locally, waiting for a
    synchronous standby that is down): the round learns from the store that it did, and
    says so; the records are there, once."""
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        ensure_schema(conn)
    with (
        with_standby(postgres, tmp_path / "standby", synchronous=True) as standby,
        fleet_logs(postgres, 1, "in-doubt") as (log,),
    ):
        log.append([(RecordKind.EVENT, b"first")])
        standby.stop()  # from here a COMMIT waits for the standby that is not there
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                log.append([(RecordKind.EVENT, b"in doubt")])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=commit)
        thread.start()
        with psycopg.connect(postgres.dsn, autocommit=True) as watcher:
            deadline = time.monotonic() + 30
            while not watcher.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'in-doubt' "
                "AND wait_event = 'SyncRep'"
            ).fetchone():
                assert time.monotonic() < deadline, "the commit never waited"
                time.sleep(0.02)
        postgres.terminate_backends("in-doubt")
        thread.join(timeout=60)
        assert outcome == [None], outcome
        assert [r.body for r in log.records()] == [b"first", b"in doubt"]
        assert log.next_seq == 2 and not log.uncommitted
        standby.start()
