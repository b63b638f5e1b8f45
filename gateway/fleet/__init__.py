"""Fleet mode (SPEC.md 17): the logs, key files and custody of a gateway as rows of a
PostgreSQL database that several gateway nodes share. ``_schema`` (the tables and their
versions), ``_rows`` (a log as rows: appends serialized across nodes, the same records and
chain values as a segment log), ``_row_compaction`` (compaction over rows), ``_tree_rows``
(each log's Merkle tree), ``_round`` (the transaction of a group-commit round), ``_fleet_log``
(a row log under the group commit), ``_coordination`` (maildrop and housekeeping locks, and
wake-ups, across nodes), ``_writers`` (which node process wrote a chunk, and whether it is
gone), ``_files`` (what a data folder keeps in files), ``_migrate`` (a data folder copied in
and out), ``_store`` (a node's data folder in fleet mode)."""

from __future__ import annotations

from ._coordination import MaildropLocks, listen, moved_logs
from ._files import FleetFiles
from ._fleet_log import FleetLog
from ._migrate import (
    Migrated,
    MigrateError,
    copy_log_out,
    copy_out,
    migrate_in,
    migrate_out,
    snapshot,
)
from ._round import Round
from ._row_compaction import RowCompaction, apply_cut, plan_compaction
from ._rows import Appended, RowLog, segment_files
from ._schema import SCHEMA_VERSION, SchemaError, ensure_schema
from ._session import Session
from ._store import FleetDataDir
from ._writers import Writer, retire_node, writers

__all__ = [
    "SCHEMA_VERSION",
    "Appended",
    "FleetDataDir",
    "FleetFiles",
    "FleetLog",
    "MaildropLocks",
    "MigrateError",
    "Migrated",
    "Round",
    "RowCompaction",
    "RowLog",
    "SchemaError",
    "Session",
    "Writer",
    "apply_cut",
    "copy_log_out",
    "copy_out",
    "ensure_schema",
    "listen",
    "migrate_in",
    "migrate_out",
    "moved_logs",
    "plan_compaction",
    "retire_node",
    "segment_files",
    "snapshot",
    "writers",
]
