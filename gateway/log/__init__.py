"""The append-only segment logs: framing, files on disk, group commit.

This package is the only code that opens, writes, renames or fsyncs anything under the data
folder: ``_framing`` (pure bytes), ``_files`` (names and types), ``_scan`` (reading back),
``_segment_log`` (appending, recovery, compaction), ``_tree_file`` (each log's Merkle tree),
``_datadir`` (layout, lock, key files, and the calls the services open and read logs
through), ``_writer`` (group commit for trio), ``_commit_round`` (what a round does in its
thread)."""

from __future__ import annotations

from ._commit_round import Dependent, Written
from ._datadir import CONTROL_LOG_ID, DataDir, Opened
from ._files import (
    DEFAULT_SEGMENT_BYTES,
    REMOVED,
    AppendItem,
    Compaction,
    DataDirLocked,
    Location,
    LogCorrupt,
    LogRecord,
    LogWriteError,
    Recovery,
    StoreUnavailable,
    choose_files,
    fsync_dir,
    replace_file,
    segment_name,
)
from ._framing import (
    RECORD_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    FramingError,
    Gap,
    RecordHeader,
    RecordKind,
    SegmentHeader,
    decode_chunk_body,
    decode_gap,
    encode_chunk_body,
    encode_gap,
    encode_gap_body,
    encode_record,
    encode_record_parts,
    encode_segment_header,
    genesis_chain,
)
from ._recovery_point import (
    ARCHIVE_FOLDER,
    BASE_FILE,
    RECOVERY_FILE,
    RecoveryPoint,
    StaleRecoveryPoint,
    check_position,
    decode_recovery_point,
    encode_recovery_point,
    read_recovery_point,
    remove_recovery_point,
)
from ._scan import RecordReader, iter_log
from ._scan import scan_segment_header as read_segment_header
from ._segment_log import SegmentLog
from ._store_log import Place, RecordSource, StoreLog
from ._tree_file import TREE_FILE, read_tree, tree_hashes
from ._writer import LINGER, CommitGroup, LogWriter, StaleEpoch

__all__ = [
    "ARCHIVE_FOLDER",
    "BASE_FILE",
    "CONTROL_LOG_ID",
    "DEFAULT_SEGMENT_BYTES",
    "LINGER",
    "RECORD_OVERHEAD",
    "RECOVERY_FILE",
    "REMOVED",
    "SEGMENT_HEADER_SIZE",
    "TREE_FILE",
    "AppendItem",
    "CommitGroup",
    "Compaction",
    "DataDir",
    "DataDirLocked",
    "Dependent",
    "FramingError",
    "Gap",
    "Location",
    "LogCorrupt",
    "LogRecord",
    "LogWriteError",
    "LogWriter",
    "Opened",
    "Place",
    "RecordHeader",
    "RecordKind",
    "RecordReader",
    "RecordSource",
    "Recovery",
    "RecoveryPoint",
    "SegmentHeader",
    "SegmentLog",
    "StaleEpoch",
    "StaleRecoveryPoint",
    "StoreLog",
    "StoreUnavailable",
    "Written",
    "check_position",
    "choose_files",
    "decode_chunk_body",
    "decode_gap",
    "decode_recovery_point",
    "encode_chunk_body",
    "encode_gap",
    "encode_gap_body",
    "encode_record",
    "encode_record_parts",
    "encode_recovery_point",
    "encode_segment_header",
    "fsync_dir",
    "genesis_chain",
    "iter_log",
    "read_recovery_point",
    "read_segment_header",
    "read_tree",
    "remove_recovery_point",
    "replace_file",
    "segment_name",
    "tree_hashes",
]
