"""The fleet store's schema in PostgreSQL (SPEC.md 17.2) and its versioning.

Theory of operation
-------------------
``gateway_schema`` holds one row per version applied. :func:`ensure_schema` takes a
transaction-scoped advisory lock (so two nodes starting at once migrate once), applies every
version above the database's in order, each in the same transaction, and refuses a database
whose version is newer than this code knows: an older node never writes into a schema it
does not understand. Every table is prefixed ``gateway_``, so the store can share a database.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["SCHEMA_VERSION", "SchemaError", "ensure_schema"]

SCHEMA_VERSION = 3
# pg_advisory_xact_lock key of schema changes: "gwschema" as a big-endian integer.
_SCHEMA_LOCK = int.from_bytes(b"gwschema", "big") - (1 << 63)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        # Each log's end: appends lock its row (SELECT ... FOR UPDATE), which serializes
        # appenders on every node, and continue the chain from it.
        # tree_size and frontier: the log's Merkle tree (8.1), which appends extend; a
        # tree_size other than next_seq: the log has no tree.
        """CREATE TABLE gateway_logs (
            log_id bytea PRIMARY KEY CHECK (octet_length(log_id) = 16),
            next_seq bigint NOT NULL CHECK (next_seq >= 0),
            chain bytea NOT NULL CHECK (octet_length(chain) = 32),
            tree_size bigint NOT NULL DEFAULT 0,
            frontier bytea NOT NULL DEFAULT ''::bytea
        )""",
        # The segments a log's records fall into, as in a data folder (SPEC.md 3.1): a
        # record belongs to the last segment whose first seq is at or before its own. The
        # chain before each one is what a segment file's header carries.
        """CREATE TABLE gateway_segments (
            log_id bytea NOT NULL REFERENCES gateway_logs ON DELETE CASCADE,
            first_seq bigint NOT NULL,
            generation integer NOT NULL,
            prev_chain bytea NOT NULL CHECK (octet_length(prev_chain) = 32),
            size bigint NOT NULL,
            PRIMARY KEY (log_id, first_seq)
        )""",
        # The records (SPEC.md 3.2), body and chain value as framed in a segment file.
        """CREATE TABLE gateway_records (
            log_id bytea NOT NULL REFERENCES gateway_logs ON DELETE CASCADE,
            seq bigint NOT NULL,
            kind smallint NOT NULL CHECK (kind IN (1, 2, 3)),
            body bytea NOT NULL,
            chain bytea NOT NULL CHECK (octet_length(chain) = 32),
            PRIMARY KEY (log_id, seq)
        )""",
        # Sealed chunks are compressed and encrypted already: store them as they are.
        "ALTER TABLE gateway_records ALTER COLUMN body SET STORAGE EXTERNAL",
        # Each log's Merkle tree (SPEC.md 8.1): its post-order hashes, 1,024 to a row.
        """CREATE TABLE gateway_trees (
            log_id bytea NOT NULL REFERENCES gateway_logs ON DELETE CASCADE,
            chunk bigint NOT NULL,
            hashes bytea NOT NULL,
            PRIMARY KEY (log_id, chunk)
        )""",
        # What a data folder keeps in files (key files, the admin password's hash, the
        # signing key, checkpoints), by their path in a data folder.
        """CREATE TABLE gateway_files (
            name text PRIMARY KEY,
            data bytea NOT NULL
        )""",
    ),
    2: (
        # A tree row is keyed by the index of its first hash, and an append adds a row of its
        # own instead of extending the last (which rewrote it whole, WAL and all): the rows
        # of version 1 held 1,024 hashes each, so row n starts at hash 1,024 n.
        # (Through negative keys: moved in one step, row 1 would meet row 1,024 still there.)
        "UPDATE gateway_trees SET chunk = -1 - chunk * 1024",
        "UPDATE gateway_trees SET chunk = -1 - chunk",
    ),
    3: (
        # Each journal process that appends (gateway/fleet/_writers.py): ended once a later
        # one of its node started and none of its server processes is left, so compaction
        # can drop the chunks it left that no commit names (a node killed mid-message).
        """CREATE TABLE gateway_writers (
            writer integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            node text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            ended_at timestamptz
        )""",
        # The writer of each record appended since (NULL: before version 3, or copied in by
        # gateway store migrate). No foreign key: it would cost every insert a lookup.
        "ALTER TABLE gateway_records ADD COLUMN writer integer",
    ),
}


class SchemaError(Exception):
    """The database's schema is not one this version can use."""


def ensure_schema(conn: psycopg.Connection[Any]) -> int:
    """Bring the database's schema to SCHEMA_VERSION (blocking); the version it had."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS gateway_schema ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM gateway_schema").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"the database's schema is version {found}; this gateway knows up to "
                f"{SCHEMA_VERSION}: upgrade the gateway"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO gateway_schema (version) VALUES (%s)", (version,))
    return found
