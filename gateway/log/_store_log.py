"""What the services need of a log, whichever store keeps it (SPEC.md 17.6): a segment log in
a data folder (``SegmentLog``), or, in fleet mode, rows of the fleet store. The services name
this protocol, never the segment log, so the fleet store can answer the same calls."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ._commit_round import AppendLog
from ._files import Compaction, Location, LogRecord
from ._framing import RecordHeader
from ._recovery_point import RecoveryPoint

__all__ = ["Place", "RecordSource", "StoreLog"]

# Where a record is, as an index says: its segment file, offset and framed size.
Place = tuple[str, int, int]


class StoreLog(AppendLog, Protocol):
    @property
    def chain(self) -> bytes: ...

    @property
    def written(self) -> int:
        """Bytes appended since the log was opened (recovery points are due by it)."""

    @property
    def directory(self) -> Path:
        """Where the log is, as errors name it."""

    @property
    def segments(self) -> list[int]: ...

    @property
    def tree_missing(self) -> str:
        """Why the log has no Merkle tree; empty when it has one."""

    def read(self, location: Location) -> tuple[RecordHeader, bytes]: ...

    def file_name(self, segment: int) -> str: ...

    def tree_head(self) -> tuple[int, bytes] | None: ...

    def recovery_point(self, state: bytes) -> RecoveryPoint: ...

    def save_recovery_point(self, point: RecoveryPoint) -> int: ...

    def plan_compaction(
        self, segment: int, keep: Callable[[LogRecord], bool]
    ) -> Compaction | None: ...

    def apply_compaction(self, compaction: Compaction) -> None: ...

    def discard_compaction(self, compaction: Compaction) -> None: ...

    def remove_retired(self, cuts: Mapping[int, int], grace_seconds: float) -> list[Path]: ...

    def archive_history(self, point: RecoveryPoint, keep_bytes: int) -> list[Path]: ...

    def close(self) -> None: ...


class RecordSource(Protocol):
    """Reads single records of one log where an index says they are (a protocol worker's
    reader, SPEC.md 16): a segment file and offset, or in the fleet store a row by seq."""

    @property
    def directory(self) -> Path:
        """Where the log is, as errors name it."""

    def read(self, file: str, offset: int, size: int) -> tuple[RecordHeader, bytes]: ...

    def read_many(self, places: Sequence[Place]) -> list[tuple[RecordHeader, bytes]]:
        """Several records (file, offset, size each), in the order asked: a message's
        commit record and chunks in one call (in the fleet store, one query)."""

    def close(self) -> None: ...
