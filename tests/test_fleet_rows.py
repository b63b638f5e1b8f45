"""A log as rows of the fleet store (SPEC.md 17.2), on a real PostgreSQL: the same records and
chain values as a segment log, written back byte for byte; appends from two nodes at once
stay one chain, each node told exactly the records the other appended; a batch that fails
leaves nothing; the schema migrates once and refuses a newer one."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.fleet import (
    SCHEMA_VERSION,
    FleetFiles,
    MaildropLocks,
    RowLog,
    SchemaError,
    Session,
    apply_cut,
    copy_log_out,
    ensure_schema,
    listen,
    moved_logs,
    plan_compaction,
    segment_files,
    snapshot,
)
from gateway.log import (
    REMOVED,
    DataDir,
    LogRecord,
    RecordKind,
    SegmentLog,
    choose_files,
    encode_record_parts,
    genesis_chain,
    iter_log,
)
from gateway.merkle import MerkleTree, leaf_hash, record_leaf, verify_inclusion

from .peers import PostgresServer

pytestmark = pytest.mark.slow

LOG_ID = bytes.fromhex("0123456789abcdef0123456789abcdef")


def connect(shared_postgres: PostgresServer, name: str = "test") -> psycopg.Connection[Any]:
    return psycopg.connect(shared_postgres.dsn, autocommit=True, application_name=name)


def fresh_log(conn: psycopg.Connection[Any], segment_bytes: int = 64 * 1024) -> RowLog:
    log_id = os.urandom(16)
    log = RowLog(conn, log_id, segment_bytes=segment_bytes)
    log.create()
    return log


def items(n: int, size: int = 3000) -> list[tuple[RecordKind, bytes]]:
    return [
        (RecordKind.CHUNK if i % 3 else RecordKind.EVENT, os.urandom(size + i % 7))
        for i in range(n)
    ]


def chain_of(records: list[LogRecord], log_id: bytes) -> None:
    """Every record follows the one before it, from the genesis value."""
    chain = genesis_chain(log_id)
    for expected, record in enumerate(records):
        assert record.seq == expected
        _header, _trailer, chain = encode_record_parts(
            RecordKind(record.kind), record.seq, record.body, chain
        )
        assert chain == record.chain, f"record {record.seq}"


def test_the_same_records_as_a_segment_log_byte_for_byte(
    shared_postgres: PostgresServer, tmp_path: Path
) -> None:
    batches = [items(n) for n in (5, 40, 1, 60)]
    with connect(shared_postgres) as conn:
        rows = fresh_log(conn)
        local = SegmentLog.create(tmp_path / "log", rows.log_id, segment_bytes=64 * 1024)
        known = 0
        for batch in batches:
            appended = rows.append(batch, known)
            assert appended.foreign == [] and appended.first_seq == known
            chains: list[bytes] = []
            local.append(batch, chains=chains)
            assert appended.chains == chains  # the same chain values
            known += len(batch)
        local.close()
        assert rows.end() == (known, chains[-1])
        files = dict(segment_files(rows))
    on_disk = {p.name: p.read_bytes() for p in (tmp_path / "log").glob("*.seg")}
    assert len(on_disk) > 2 and files == on_disk  # the same segments, byte for byte


def test_two_nodes_appending_at_once_make_one_chain(shared_postgres: PostgresServer) -> None:
    with connect(shared_postgres) as setup:
        log_id = fresh_log(setup).log_id
    seen: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def node(name: str) -> None:
        try:
            with connect(shared_postgres) as conn:
                log, known = RowLog(conn, log_id), 0
                for _ in range(30):
                    batch = items(3, size=200)
                    appended = log.append(batch, known)
                    seen[name] += [r.seq for r in appended.foreign]
                    seen[name] += range(appended.first_seq, appended.first_seq + len(batch))
                    known = appended.first_seq + len(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(name,)) for name in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    with connect(shared_postgres) as conn:
        records = list(RowLog(conn, log_id).records())
    assert len(records) == 180
    chain_of(records, log_id)
    # Each node was told every record exactly once, in order: its own and the other's
    # (up to its last append).
    for name, seqs in seen.items():
        assert seqs == list(range(len(seqs))), name


def test_a_batch_that_fails_leaves_nothing(shared_postgres: PostgresServer) -> None:
    with connect(shared_postgres) as conn:
        log = fresh_log(conn)
        log.append(items(4), 0)
        before = log.end()

        def refuse(seq: int) -> bytes:
            raise RuntimeError(f"no body for {seq}")

        with pytest.raises(RuntimeError, match="no body for 6"):
            log.append([*items(2), (RecordKind.EVENT, refuse)], 4)
        assert log.end() == before
        assert [r.seq for r in log.records()] == [0, 1, 2, 3]
        with pytest.raises(Exception, match="ends at 4, before record 9"):
            log.append(items(1), 9)


def test_the_schema_is_made_once_and_a_newer_one_is_refused(
    shared_postgres: PostgresServer,
) -> None:
    with connect(shared_postgres) as conn:
        assert ensure_schema(conn) == SCHEMA_VERSION  # already there: nothing to do
        conn.execute("INSERT INTO gateway_schema (version) VALUES (99)")
        try:
            with pytest.raises(SchemaError, match="version 99"):
                ensure_schema(conn)
        finally:
            conn.execute("DELETE FROM gateway_schema WHERE version = 99")


def test_version_2_keys_tree_rows_by_their_first_hash(postgres: PostgresServer) -> None:
    """A tree written in version 1's layout (1,024 hashes a row, keyed by the row's number)
    reads the same after the migrations to versions 2 and 3, and appends go on from it."""
    with connect(postgres) as conn:
        ensure_schema(conn)
        log = fresh_log(conn)
        for _ in range(12):  # 12 appends of 100: 2,391 hashes, a dozen rows
            log.append(items(100, size=20), log.end()[0])
        head = log.tree_head()
        hashes = b"".join(
            bytes(h)
            for (h,) in conn.execute(
                "SELECT hashes FROM gateway_trees WHERE log_id = %s ORDER BY chunk",
                (log.log_id,),
            )
        )
        with conn.transaction():  # as version 1 kept it
            conn.execute("DELETE FROM gateway_trees WHERE log_id = %s", (log.log_id,))
            for n in range(0, len(hashes), 1024 * 32):
                conn.execute(
                    "INSERT INTO gateway_trees (log_id, chunk, hashes) VALUES (%s, %s, %s)",
                    (log.log_id, n // (1024 * 32), hashes[n : n + 1024 * 32]),
                )
            conn.execute("DELETE FROM gateway_schema WHERE version >= 2")
            conn.execute("DROP TABLE gateway_writers")  # and as version 3 found it
            conn.execute("ALTER TABLE gateway_records DROP COLUMN writer")
        assert ensure_schema(conn) == 1
        assert log.tree_head() == head
        tree = log.tree(1200)
        assert tree.root() == MerkleTree.view(hashes, 1200).root()
        log.append(items(5, size=20), 1200)
        grown = log.tree_head()
        assert grown is not None and grown[0] == 1205


def test_a_maildrop_lock_holds_across_nodes_and_dies_with_its_holder(
    shared_postgres: PostgresServer,
) -> None:
    box = "0f" * 16
    with connect(shared_postgres, "holder") as a_conn, connect(shared_postgres) as b_conn:
        a, b = MaildropLocks(a_conn), MaildropLocks(b_conn)
        assert a.acquire(box)
        assert not b.acquire(box)  # [IN-USE] on the other node
        assert b.acquire("1f" * 16)  # another mailbox is free
        a.release(box)
        assert b.acquire(box)
        b.release(box)
        assert a.acquire(box)
        # The holder's session ends (a node killed, its connection cut): the lock goes too.
        assert shared_postgres.terminate_backends(application_name="holder") == 1
        with connect(shared_postgres) as c_conn:
            locks, deadline = MaildropLocks(c_conn), time.monotonic() + 10
            while not locks.acquire(box):  # the killed session's backend is on its way out
                assert time.monotonic() < deadline, "the dead node's lock outlived it"
                time.sleep(0.05)


def test_every_node_is_woken_by_appends_and_never_by_a_rolled_back_batch(
    shared_postgres: PostgresServer,
) -> None:
    with connect(shared_postgres) as writer_conn, connect(shared_postgres) as listener_conn:
        listen(listener_conn)
        log = fresh_log(writer_conn)
        assert moved_logs(listener_conn, 0.2) == {}
        log.append(items(3), 0)
        log.append(items(2), 3)
        # Each commit is a notice of its own; the second may reach the socket a moment later.
        moved: dict[bytes, int] = {}
        deadline = time.monotonic() + 5.0
        while moved.get(log.log_id) != 5 and time.monotonic() < deadline:
            for log_id, end in moved_logs(listener_conn, 0.5).items():
                moved[log_id] = max(end, moved.get(log_id, 0))
        assert moved == {log.log_id: 5}

        def refuse(seq: int) -> bytes:
            raise RuntimeError("no body")

        with pytest.raises(RuntimeError):
            log.append([(RecordKind.EVENT, refuse)], 5)
        assert moved_logs(listener_conn, 0.5) == {}


def test_compaction_cuts_rows_as_a_segment_log_cuts_files(
    shared_postgres: PostgresServer, tmp_path: Path
) -> None:
    """The same records compacted the same way in both stores: the same cuts (what
    LogCompacted records), and the rows written back are the compacted files byte for byte;
    a cut made again (a crash before it was known to be made) changes nothing; a segment
    of which nothing is kept goes whole."""
    batch = items(90, size=2000)
    with connect(shared_postgres) as conn:
        rows = fresh_log(conn, segment_bytes=64 * 1024)
        local = SegmentLog.create(tmp_path / "log", rows.log_id, segment_bytes=64 * 1024)
        rows.append(batch, 0)
        local.append(batch)
        segments = local.segments
        assert len(segments) >= 3

        def drop_every_third(record: LogRecord) -> bool:
            return record.seq % 3 != 0

        def drop_all(record: LogRecord) -> bool:
            return False

        for segment, keep in ((segments[0], drop_every_third), (segments[1], drop_all)):
            planned = plan_compaction(rows, segment, keep)
            compaction = local.plan_compaction(segment, keep)
            assert planned is not None and compaction is not None
            assert planned.generation == compaction.generation
            assert planned.gaps == compaction.gaps
            assert planned.bytes_before == compaction.bytes_before
            assert planned.bytes_after == compaction.bytes_after
            local.apply_compaction(compaction)
            apply_cut(rows, planned.segment, planned.generation, planned.gaps)
            apply_cut(rows, planned.segment, planned.generation, planned.gaps)  # idempotent
        local.close()
        cuts = {segments[0]: 1, segments[1]: REMOVED}
        chosen = choose_files(tmp_path / "log", cuts).chosen
        on_disk = {path.name: path.read_bytes() for _generation, path in chosen.values()}
        assert dict(segment_files(rows)) == on_disk
        # The rows read back as the compacted log: GAP records where runs went.
        kinds = [r.kind for r in rows.records(segments[0], segments[1])]
        assert kinds.count(RecordKind.GAP) == sum(
            1 for r in range(segments[0], segments[1]) if r % 3 == 0
        )
        assert not list(rows.records(segments[1], segments[2]))


def test_the_tree_grows_with_the_rows_and_outlives_a_compaction(
    shared_postgres: PostgresServer,
) -> None:
    """Each append extends the log's Merkle tree in its own transaction (two nodes at once
    included); heads and proofs read a few rows; a compaction leaves every leaf."""
    with connect(shared_postgres) as a_conn, connect(shared_postgres) as b_conn:
        a = fresh_log(a_conn, segment_bytes=16 * 1024)
        b = RowLog(b_conn, a.log_id, segment_bytes=16 * 1024)
        known_a = known_b = 0
        for n in range(20):
            if n % 2:
                known_a = a.append(items(3, 500), known_a).first_seq + 3
            else:
                known_b = b.append(items(2, 500), known_b).first_seq + 2
        records = list(a.records())
        expected = MerkleTree()
        for record in records:
            expected.append(leaf_hash(record_leaf(record.seq, record.kind, record.body)))
        assert a.tree_head() == (len(records), expected.root())
        tree = a.tree(len(records))
        for index in (0, 7, len(records) - 1):
            proof = tree.inclusion_proof(index)
            assert proof == expected.inclusion_proof(index)
            assert verify_inclusion(
                expected.leaf(index), index, len(records), proof, expected.root()
            )

        segment = plan_compaction(a, 0, lambda record: record.seq % 2 == 1)
        assert segment is not None
        apply_cut(a, segment.segment, segment.generation, segment.gaps)
        assert a.tree_head() == (len(records), expected.root())
        assert a.tree(len(records)).leaf(0) == expected.leaf(0)  # a removed record's leaf


def test_files_change_whole_in_two_halves_and_are_made_once(
    shared_postgres: PostgresServer,
) -> None:
    box = "2a" * 16
    with connect(shared_postgres) as a_conn, connect(shared_postgres) as b_conn:
        a, b = FleetFiles(Session(lambda: a_conn)), FleetFiles(Session(lambda: b_conn))
        with pytest.raises(FileNotFoundError):
            a.read_key_file(box)
        a.write(f"mailboxes/{box}/key", b"old")
        a.stage_key_file(box, b"new")
        assert b.read_key_file(box) == b"old" and b.staged_key_file(box) == b"new"
        b.commit_key_file(box)
        assert a.read_key_file(box) == b"new" and a.staged_key_file(box) is None
        made = [a.read_or_create_signing_key(lambda: b"A" * 32)]
        made.append(b.read_or_create_signing_key(lambda: b"B" * 32))
        assert made == [(b"A" * 32, True), (b"A" * 32, False)]  # one key for every node
        a.save_checkpoint(5, b"five")
        a.save_checkpoint(9, b"nine")
        assert b.checkpoint_sizes() == [5, 9] and b.read_checkpoint() == b"nine"
        assert b.read_checkpoint(5) == b"five"
        with pytest.raises(ValueError, match="mailbox id"):
            a.save_mailbox_checkpoint("../../etc", b"x")


def test_a_snapshot_copies_every_log_as_it_was_when_it_began(
    shared_postgres: PostgresServer, tmp_path: Path
) -> None:
    """What `verify --dsn` and `store migrate --out` read through: records another node
    commits meanwhile are not in the copy, however late each log is copied."""
    with connect(shared_postgres) as writer, connect(shared_postgres) as reader:
        log = fresh_log(writer)
        log.append(items(3), 0)

        def copied(folder: Path) -> list[int]:
            data = DataDir(folder)
            copy_log_out(reader, data, log.log_id)
            records = iter_log(data.mailbox_log_dir(log.log_id.hex()), log.log_id)
            return [r.seq for r in records]

        with snapshot(reader):
            reader.execute("SELECT 1")  # the snapshot is taken at the first statement
            log.append(items(2), 3)  # committed while the copy runs
            assert copied(tmp_path / "during") == [0, 1, 2]
        assert reader.isolation_level is None and reader.read_only is None
        assert copied(tmp_path / "after") == [0, 1, 2, 3, 4]
