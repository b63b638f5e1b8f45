"""The append-only segment logs: framing, files on disk, group commit."""

from __future__ import annotations

from ._disk import (
    DEFAULT_SEGMENT_BYTES,
    AppendItem,
    Compaction,
    DataDir,
    DataDirLocked,
    Location,
    LogCorrupt,
    LogRecord,
    LogWriteError,
    Recovery,
    SegmentLog,
    iter_log,
    segment_name,
)
from ._framing import (
    FramingError,
    Gap,
    RecordKind,
    decode_chunk_body,
    decode_gap,
    encode_chunk_body,
    genesis_chain,
)
from ._writer import LogWriter, StaleEpoch

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "AppendItem",
    "Compaction",
    "DataDir",
    "DataDirLocked",
    "FramingError",
    "Gap",
    "Location",
    "LogCorrupt",
    "LogRecord",
    "LogWriteError",
    "LogWriter",
    "RecordKind",
    "Recovery",
    "SegmentLog",
    "StaleEpoch",
    "decode_chunk_body",
    "decode_gap",
    "encode_chunk_body",
    "genesis_chain",
    "iter_log",
    "segment_name",
]
