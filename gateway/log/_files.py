"""The log's files: names, the types that describe them, and which segment files make up a log.

The ``gateway.log`` package is the only code that touches the data folder (``_files``,
``_scan``, ``_segment_log`` and ``_datadir`` between them); everything here is blocking and
runs in worker threads.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._framing import (
    Gap,
    RecordKind,
)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"
REMOVED = -1  # the generation of a segment compaction removed whole


class LogCorrupt(Exception):
    """A log that does not check out anywhere but a torn tail. Never repaired automatically."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class LogWriteError(Exception):
    """An append that did not become durable (disk full, I/O error). Nothing of the batch is
    visible afterwards."""


class StoreUnavailable(LogWriteError):
    """The store could not be reached or refused the call (a fleet store's database down,
    read-only after a failover, out of space): nothing was changed by it; try again later."""


class DataDirLocked(Exception):
    """Another gateway process holds the data folder."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a record lives: the segment (by its first seq), the byte offset, the framed size,
    and the record's sequence number."""

    segment: int
    offset: int
    size: int
    seq: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening a log found at its end and did about it.

    A torn tail (``damage`` empty): bytes after the last whole record that hold nothing
    acknowledged, cut off. Damage (``damage`` says what): the end of the log was bad or
    missing where records had been acknowledged; the bad bytes (if any) were moved to
    ``moved_to`` before the cut, never discarded, and the log continues from record
    ``first_lost_seq - 1`` whose chain value is ``chain``."""

    path: Path
    offset: int
    dropped_bytes: int
    damage: str = ""
    first_lost_seq: int = 0
    chain: bytes = b""
    moved_to: Path | None = None


@dataclass(frozen=True, slots=True)
class LogRecord:
    seq: int
    kind: int
    body: bytes
    chain: bytes
    location: Location


# A record to append: its kind and body. The body may be a function of the sequence number the
# record gets, for records that name their neighbours (a message's commit names its chunks).
@dataclass(frozen=True, slots=True)
class Compaction:
    """A compacted segment written beside the original, not yet in place."""

    segment: int
    generation: int  # of the new file; REMOVED when the whole segment goes
    gaps: list[tuple[Gap, bytes]]  # each removed run, with the chain value after it
    old_path: Path
    new_path: Path | None  # None: every record goes, the segment is removed
    moved: dict[int, Location]  # seq -> new location of each kept record
    bytes_before: int
    bytes_after: int
    dropped_bytes: int


AppendItem = tuple[RecordKind, bytes | Callable[[int], bytes]]


def segment_name(first_seq: int, generation: int = 0) -> str:
    """``<first seq>.seg``; a compacted copy is ``<first seq>.g<generation>.seg``."""
    if generation == 0:
        return f"{first_seq:020d}{SEGMENT_SUFFIX}"
    return f"{first_seq:020d}.g{generation}{SEGMENT_SUFFIX}"


_SEGMENT_FILE = re.compile(r"(\d{20})(?:\.g([1-9]\d{0,8}))?\.seg")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (0600, it must not exist) holding ``data``, durably: the file and its
    folder are fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` (0600) with ``data`` atomically and durably: written whole as
    ``<name>.new``, fsynced, renamed over it, the folder fsynced. A crash leaves the old file
    or the new one, and perhaps a ``.new`` that the next replace (or open) removes."""
    staged = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    write_new_file(staged, data)
    os.replace(staged, path)
    fsync_dir(path.parent)


@dataclass(slots=True)
class SegmentFiles:
    """Which segment files make up a log, given the compactions the control log confirms."""

    chosen: dict[int, tuple[int, Path]]  # first seq -> (generation, path), in order
    retired: list[Path]  # superseded or removed by a confirmed compaction: deleted after grace
    unconfirmed: list[Path]  # a compaction whose control event never became durable


def choose_files(directory: Path, cuts: Mapping[int, int]) -> SegmentFiles:
    """Pick one file per segment. ``cuts`` maps a segment's first seq to the generation the
    control log confirms for it (REMOVED for a removed segment; absent means 0).

    A newer generation than confirmed is a compaction cut short (or a copy of the folder
    that caught the new file but not the control event): the older file still holds every
    record, so it is the one used. An older generation than confirmed is kept for the grace
    period (``Archive`` deletes it later), which is what makes a copy taken with ``cp -a``
    while compaction runs consistent: whichever control log it caught, the files it needs
    are there.
    """
    found: dict[int, dict[int, Path]] = {}
    for entry in os.scandir(directory):
        match = _SEGMENT_FILE.fullmatch(entry.name)
        if match:
            first, generation = int(match.group(1)), int(match.group(2) or 0)
            found.setdefault(first, {})[generation] = Path(entry.path)
    files = SegmentFiles({}, [], [])
    for first in sorted(found):
        generations = found[first]
        confirmed = cuts.get(first, 0)
        if confirmed == REMOVED:
            files.retired.extend(generations.values())
            continue
        usable = [g for g in generations if g <= confirmed]
        files.unconfirmed.extend(p for g, p in generations.items() if g > confirmed)
        if not usable:
            continue
        best = max(usable)
        files.chosen[first] = (best, generations[best])
        files.retired.extend(p for g, p in generations.items() if g < best)
    return files
