"""The one module that touches the data folder.

Theory of operation
-------------------
Everything here is blocking and runs in worker threads (``gateway.log._writer`` and the
services call it through ``trio.to_thread``). Nothing else in the gateway opens, renames or
fsyncs a file under the data folder.

Layout (SPEC.md, "On disk")::

    <data>/gateway.lock              flock: one gateway per data folder
    <data>/control/<seq>.seg          the control log
    <data>/mailboxes/<id>/key         the mailbox key file (replaced atomically)
    <data>/mailboxes/<id>/log/<seq>.seg

A :class:`SegmentLog` appends whole batches: every record of a batch is written with one
``write`` and made durable with one ``fdatasync`` (group commit). A new segment's header is
fsynced, and its directory too, before any record goes into it, so a segment that is not the
last one is always complete. On open, the last segment is checked record by record: a torn or
garbage tail (bytes after the last whole record that no later whole record follows) is cut off
and reported; anything else that does not check out raises :class:`LogCorrupt` with the file
and offset, and the log stays closed for writing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..ids import parse_mailbox_id
from ._framing import (
    RECORD_HEADER_SIZE,
    RECORD_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    FramingError,
    Gap,
    RecordHeader,
    RecordKind,
    SegmentHeader,
    chain_next,
    decode_gap,
    decode_record_header,
    decode_segment_header,
    encode_gap,
    encode_gap_body,
    encode_record_parts,
    encode_segment_header,
    genesis_chain,
    record_prefix,
    verify_record,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "REMOVED",
    "AppendItem",
    "Compaction",
    "DataDir",
    "DataDirLocked",
    "Location",
    "LogCorrupt",
    "LogRecord",
    "LogWriteError",
    "Recovery",
    "SegmentLog",
    "iter_log",
    "segment_name",
]

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"
REMOVED = -1  # the generation of a segment compaction removed whole
_STAGING_SUFFIX = ".new"
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
# How many sequence numbers past the last good record we search for when deciding whether
# bad bytes are a torn tail or damage in the middle of the log. A batch never holds more
# records than this many bytes of chunks could, so a whole record after damage is found.
_RESYNC_WINDOW = 4096
_READ_BLOCK = 1 << 20


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
    """A torn tail cut off when the log was opened."""

    path: Path
    offset: int
    dropped_bytes: int


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(slots=True)
class _Files:
    """Which segment files make up a log, given the compactions the control log confirms."""

    chosen: dict[int, tuple[int, Path]]  # first seq -> (generation, path), in order
    retired: list[Path]  # superseded or removed by a confirmed compaction: deleted after grace
    unconfirmed: list[Path]  # a compaction whose control event never became durable


def _choose_files(directory: Path, cuts: Mapping[int, int]) -> _Files:
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
    files = _Files({}, [], [])
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


# -- reading -------------------------------------------------------------------------------


def _read_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


@dataclass(slots=True)
class _SegmentScan:
    """The outcome of reading one segment from its header to its end."""

    header: SegmentHeader
    records: list[LogRecord]
    end_offset: int  # just after the last whole record
    end_chain: bytes
    next_seq: int
    error: str | None  # why reading stopped before the end of the file, if it did
    torn: bool  # the file ends inside a record: a write cut short (or still going on)
    file_size: int


def _scan_segment(
    path: Path,
    first_seq: int,
    log_id: bytes,
    expect_chain: bytes | None,
    *,
    keep_bodies: bool,
) -> _SegmentScan:
    """Check every record of one segment: CRC, sequence continuity, hash chain.

    Stops at the first record that does not check out and says why; the caller decides
    whether that is a torn tail or corruption.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        try:
            header = decode_segment_header(_read_exact(fd, SEGMENT_HEADER_SIZE, 0))
        except FramingError as exc:
            raise LogCorrupt(path, 0, str(exc)) from None
        if header.log_id != log_id:
            raise LogCorrupt(path, 0, "segment belongs to another log")
        if header.first_seq != first_seq:
            raise LogCorrupt(path, 0, "segment name does not match its first sequence number")
        if expect_chain is not None and header.prev_chain != expect_chain:
            raise LogCorrupt(path, 0, "chain broken between segments")
        chain = header.prev_chain
        seq = header.first_seq
        offset = SEGMENT_HEADER_SIZE
        records: list[LogRecord] = []
        error: str | None = None
        torn = False
        buf = b""
        buf_start = offset
        while offset < file_size:
            # Keep a window of the file in memory; records are at most MAX_BODY long.
            need = offset - buf_start + RECORD_HEADER_SIZE
            if need > len(buf):
                buf = _read_exact(fd, _READ_BLOCK, offset)
                buf_start = offset
            rel = offset - buf_start
            if len(buf) - rel < RECORD_HEADER_SIZE:
                error, torn = "torn record header", True
                break
            try:
                rh = decode_record_header(memoryview(buf)[rel:])
            except FramingError as exc:
                error = str(exc)
                break
            if len(buf) - rel < rh.size:
                buf = _read_exact(fd, max(_READ_BLOCK, rh.size), offset)
                buf_start = offset
                rel = 0
                if len(buf) < rh.size:
                    error, torn = "torn record", True
                    break
            raw = memoryview(buf)[rel : rel + rh.size]
            try:
                rh, body, stored_chain = verify_record(raw)
            except FramingError as exc:
                error = str(exc)
                break
            if rh.kind == RecordKind.GAP:
                try:
                    gap = decode_gap(body)
                except FramingError as exc:
                    error = str(exc)
                    break
                if gap.first_seq != seq or rh.seq != gap.last_seq:
                    error = f"gap record out of sequence (expected {seq})"
                    break
                # The chain value after a gap cannot be recomputed from the segment: it is
                # confirmed against the control log's compaction events by verify.
                chain = stored_chain
            else:
                if rh.seq != seq:
                    error = f"record sequence {rh.seq} where {seq} was expected"
                    break
                computed = chain_next(chain, record_prefix(raw, rh))
                if computed != stored_chain:
                    error = f"record {seq}: hash chain mismatch"
                    break
                chain = computed
            records.append(
                LogRecord(
                    seq=rh.seq,
                    kind=rh.kind,
                    body=bytes(body) if keep_bodies or rh.kind != RecordKind.CHUNK else b"",
                    chain=chain,
                    location=Location(first_seq, offset, rh.size, rh.seq),
                )
            )
            seq = rh.seq + 1
            offset += rh.size
        return _SegmentScan(header, records, offset, chain, seq, error, torn, file_size)
    finally:
        os.close(fd)


def _later_record_exists(path: Path, offset: int, next_seq: int) -> bool:
    """Is there a whole, CRC-valid record with a higher sequence number after ``offset``?

    If so, the bad bytes at ``offset`` are damage in the middle of the log, not a torn tail.
    Searched by the byte pattern of the next few sequence numbers, so this is cheap.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    for seq in range(next_seq, next_seq + _RESYNC_WINDOW):
        pattern = struct.pack("<Q", seq)
        start = 0
        while True:
            hit = data.find(pattern, start)
            if hit < 0:
                break
            record_start = hit - 8
            start = hit + 1
            if record_start < 0:
                continue
            try:
                rh = decode_record_header(memoryview(data)[record_start:])
                verify_record(memoryview(data)[record_start : record_start + rh.size])
            except (FramingError, struct.error):
                continue
            return True
    return False


def iter_log(
    directory: Path,
    log_id: bytes,
    *,
    cuts: Mapping[int, int] | None = None,
    keep_bodies: bool = True,
    tail_ok: bool = True,
    on_torn_tail: Callable[[Path, int, int], None] | None = None,
) -> Iterator[LogRecord]:
    """Read a whole log, checking every record; read-only, safe while the gateway writes.

    Raises LogCorrupt at the first problem. A torn tail on the last segment (the file ends
    inside a record: a write in progress, or one cut short by a crash, which the next open
    cuts off) ends the iteration when ``tail_ok``, reported to ``on_torn_tail(path, offset,
    bytes)``. A *whole* record that does not check out is never a tail in progress (a reader
    sees a file's bytes only up to its size, and records are written before the size grows),
    so it is always LogCorrupt, even at the very end.
    Segments missing from the sequence (removed by compaction) are yielded as a GAP record
    whose chain is the next segment's starting chain; verify confirms it against the control
    log.
    """
    chosen = _choose_files(directory, cuts or {}).chosen
    chain: bytes | None = genesis_chain(log_id)
    expect_seq = 0
    for i, (first, (_generation, path)) in enumerate(chosen.items()):
        if first != expect_seq:
            if first < expect_seq:
                raise LogCorrupt(path, 0, f"segment overlaps records up to {expect_seq - 1}")
            header = _scan_segment_header(path)
            yield LogRecord(
                seq=first - 1,
                kind=RecordKind.GAP,
                body=encode_gap_body(Gap(expect_seq, first - 1)),
                chain=header.prev_chain,
                location=Location(first, 0, 0, first - 1),
            )
            chain = None  # trusted from the header; confirmed by verify
        scan = _scan_segment(path, first, log_id, chain, keep_bodies=keep_bodies)
        yield from scan.records
        if scan.error is not None:
            last = i == len(chosen) - 1
            if not (last and tail_ok and scan.torn) or _later_record_exists(
                path, scan.end_offset, scan.next_seq
            ):
                raise LogCorrupt(path, scan.end_offset, scan.error)
            if on_torn_tail is not None:
                on_torn_tail(path, scan.end_offset, scan.file_size - scan.end_offset)
            return
        chain = scan.end_chain
        expect_seq = scan.next_seq


def _scan_segment_header(path: Path) -> SegmentHeader:
    with open(path, "rb") as f:
        try:
            return decode_segment_header(f.read(SEGMENT_HEADER_SIZE))
        except FramingError as exc:
            raise LogCorrupt(path, 0, str(exc)) from None


# -- the writable log ----------------------------------------------------------------------


class SegmentLog:
    """One append-only log in one directory. Appends are serialized by the caller (one
    flusher per log); reads may come from any thread at any time."""

    def __init__(
        self,
        directory: Path,
        log_id: bytes,
        segment_bytes: int,
        files: dict[int, tuple[int, Path]],
        next_seq: int,
        chain: bytes,
        tail_size: int,
    ) -> None:
        self.directory = directory
        self.log_id = log_id
        self.segment_bytes = segment_bytes
        self._files = files  # first seq -> (generation, path), oldest first
        self.next_seq = next_seq
        self.chain = chain
        self._tail_size = tail_size
        self._tail_fd: int | None = None
        self._read_fds: dict[int, int] = {}
        self._read_lock = threading.Lock()
        self._broken: str | None = None

    # -- open and recover

    @classmethod
    def create(cls, directory: Path, log_id: bytes, *, segment_bytes: int) -> SegmentLog:
        directory.mkdir(parents=True, exist_ok=False)
        _fsync_dir(directory.parent)
        log = cls(directory, log_id, segment_bytes, {}, 0, genesis_chain(log_id), 0)
        log._start_segment(0)
        return log

    @classmethod
    def open(
        cls,
        directory: Path,
        log_id: bytes,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        cuts: Mapping[int, int] | None = None,
    ) -> tuple[SegmentLog, list[LogRecord], Recovery | None]:
        """Open for appending. Returns the log, every record with its body except chunk
        bodies (for the caller's projection), and the tail that was cut off, if any.
        ``cuts``: the compactions the control log confirms (see ``_choose_files``)."""
        files = _choose_files(directory, cuts or {})
        if not files.chosen:
            raise LogCorrupt(directory, 0, "no segment files")
        for stale in [*files.unconfirmed, *directory.glob("*" + SEGMENT_SUFFIX + _STAGING_SUFFIX)]:
            # A compaction whose control event never became durable: the older file holds
            # every record, this one is a leftover.
            stale.unlink()
        records: list[LogRecord] = []
        recovery: Recovery | None = None
        chain: bytes | None = genesis_chain(log_id)
        expect_seq = 0
        scan: _SegmentScan | None = None
        for i, (first, (_generation, path)) in enumerate(files.chosen.items()):
            last = i == len(files.chosen) - 1
            if first != expect_seq:
                if first < expect_seq:
                    raise LogCorrupt(path, 0, f"segment overlaps records up to {expect_seq - 1}")
                chain = None  # a segment removed by compaction; its header carries the chain
            scan = _scan_segment(path, first, log_id, chain, keep_bodies=False)
            records.extend(scan.records)
            if scan.error is not None:
                if not last or _later_record_exists(path, scan.end_offset, scan.next_seq):
                    raise LogCorrupt(path, scan.end_offset, scan.error)
                recovery = Recovery(path, scan.end_offset, scan.file_size - scan.end_offset)
                with open(path, "r+b") as f:
                    f.truncate(scan.end_offset)
                    os.fsync(f.fileno())
            chain = scan.end_chain
            expect_seq = scan.next_seq
        assert scan is not None
        log = cls(
            directory,
            log_id,
            segment_bytes,
            files.chosen,
            scan.next_seq,
            scan.end_chain,
            scan.end_offset,
        )
        return log, records, recovery

    # -- append

    @property
    def segments(self) -> list[int]:
        return list(self._files)

    @property
    def tail_segment(self) -> int:
        return next(reversed(self._files))

    def generation(self, segment: int) -> int:
        return self._files[segment][0]

    def _start_segment(self, first_seq: int) -> None:
        if self._tail_fd is not None:
            os.fdatasync(self._tail_fd)
            os.close(self._tail_fd)
            self._tail_fd = None
        # The segment appears under its name only with its header complete and durable, so
        # neither a crash nor a copy of the folder ever finds a segment without a header.
        path = self.directory / segment_name(first_seq)
        staging = path.with_name(path.name + _STAGING_SUFFIX)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, encode_segment_header(SegmentHeader(self.log_id, first_seq, self.chain)))
            os.fsync(fd)
            os.rename(staging, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise
        _fsync_dir(self.directory)
        self._tail_fd = fd
        self._files[first_seq] = (0, path)
        self._tail_size = SEGMENT_HEADER_SIZE

    def _tail(self) -> int:
        if self._tail_fd is None:
            _generation, path = self._files[self.tail_segment]
            self._tail_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return self._tail_fd

    def append(self, items: Sequence[AppendItem], *, sync: bool = True) -> list[Location]:
        """Frame, write and (if ``sync``) fdatasync a batch of records.

        All or nothing: on any error the segment is cut back to where the batch began and
        LogWriteError is raised. If even that fails, the log refuses further appends until it
        is opened again (which recovers from what is really on disk).
        """
        if self._broken is not None:
            raise LogWriteError(
                f"log is closed for writing after an earlier failure: {self._broken}"
            )
        start_seq, start_chain = self.next_seq, self.chain
        start_segment, start_size = self.tail_segment, self._tail_size
        locations: list[Location] = []
        try:
            pending: list[bytes] = []
            pending_size = 0
            for kind, body_or_builder in items:
                body = (
                    body_or_builder(self.next_seq) if callable(body_or_builder) else body_or_builder
                )
                size = len(body) + RECORD_OVERHEAD
                if (
                    self._tail_size + pending_size + size > self.segment_bytes
                    and self._tail_size + pending_size > SEGMENT_HEADER_SIZE
                ):
                    self._flush(pending)
                    pending, pending_size = [], 0
                    self._start_segment(self.next_seq)
                header, trailer, self.chain = encode_record_parts(
                    kind, self.next_seq, body, self.chain
                )
                framed_size = len(header) + len(body) + len(trailer)
                locations.append(
                    Location(
                        self.tail_segment,
                        self._tail_size + pending_size,
                        framed_size,
                        self.next_seq,
                    )
                )
                pending += (header, body, trailer)
                pending_size += framed_size
                self.next_seq += 1
            self._flush(pending)
            if sync:
                os.fdatasync(self._tail())
        except OSError as exc:
            self._undo(start_seq, start_chain, start_segment, start_size, exc)
            raise LogWriteError(os.strerror(exc.errno or errno.EIO)) from exc
        except Exception as exc:
            # A record that cannot be framed (too long), or anything unforeseen: nothing of
            # the batch may stay half applied.
            self._undo(start_seq, start_chain, start_segment, start_size, exc)
            raise LogWriteError(f"batch refused: {exc}") from exc
        return locations

    def _flush(self, pending: list[bytes]) -> None:
        """Write the pieces of a batch with as few system calls as the kernel allows."""
        fd = self._tail()
        for start in range(0, len(pending), _IOV_MAX):
            pieces = pending[start : start + _IOV_MAX]
            total = sum(len(p) for p in pieces)
            written = os.writev(fd, pieces)
            if written < total:  # rare on regular files; finish the rest plainly
                _write_all(fd, memoryview(b"".join(pieces))[written:])
            self._tail_size += total

    def _undo(self, seq: int, chain: bytes, segment: int, size: int, cause: Exception) -> None:
        self.next_seq, self.chain = seq, chain
        try:
            if self._tail_fd is not None:
                os.close(self._tail_fd)
                self._tail_fd = None
            # Segments started during the failed batch hold nothing acknowledged.
            while self.tail_segment != segment:
                _generation, dead = self._files.pop(self.tail_segment)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(dead)
            _generation, path = self._files[segment]
            with open(path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())
            self._tail_size = size
        except OSError as exc:
            self._broken = f"{cause}; undo failed: {exc}"

    # -- compaction

    def plan_compaction(self, segment: int, keep: Callable[[LogRecord], bool]) -> Compaction | None:
        """Write a compacted copy of a sealed segment beside it, holding only the records
        ``keep`` accepts and GAP records for the runs it drops. Nothing is replaced yet: the
        caller records the cut in the control log, then calls :meth:`apply_compaction`.
        Returns None when there is nothing to drop."""
        if segment == self.tail_segment:
            raise ValueError("the segment being appended to is never compacted")
        generation, path = self._files[segment]
        scan = _scan_segment(path, segment, self.log_id, None, keep_bodies=False)
        if scan.error is not None:
            raise LogCorrupt(path, scan.end_offset, scan.error)
        out: list[tuple[LogRecord | None, Gap, bytes]] = []  # kept record, or a gap to write
        run: list[LogRecord] = []
        dropped_bytes = 0
        kept: list[LogRecord] = []

        def close_run() -> None:
            if run:
                out.append((None, Gap(run[0].seq, run[-1].seq), run[-1].chain))
                run.clear()

        for record in scan.records:
            if record.kind == RecordKind.GAP or keep(record):
                close_run()
                out.append((record, Gap(0, 0), b""))
                if record.kind != RecordKind.GAP:
                    kept.append(record)
            else:
                run.append(record)
                dropped_bytes += record.location.size
        close_run()
        if dropped_bytes == 0:
            return None
        gaps = [(gap, chain) for record, gap, chain in out if record is None]
        if not kept:
            return Compaction(
                segment, REMOVED, gaps, path, None, {}, scan.file_size, 0, dropped_bytes
            )
        new_generation = generation + 1
        new_path = self.directory / segment_name(segment, new_generation)
        with contextlib.suppress(FileNotFoundError):
            new_path.unlink()  # a leftover of an earlier attempt that was never confirmed
        moved: dict[int, Location] = {}
        try:
            with open(path, "rb") as src, open(new_path, "xb") as dst:
                dst.write(encode_segment_header(scan.header))
                offset = SEGMENT_HEADER_SIZE
                for entry, gap, chain in out:
                    if entry is None:
                        framed, _ = encode_gap(gap, chain)
                    else:
                        src.seek(entry.location.offset)
                        framed = src.read(entry.location.size)
                        moved[entry.seq] = Location(segment, offset, len(framed), entry.seq)
                    dst.write(framed)
                    offset += len(framed)
                dst.flush()
                os.fsync(dst.fileno())
            _fsync_dir(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                new_path.unlink()
            raise LogWriteError(
                f"compacted copy not written: {os.strerror(exc.errno or errno.EIO)}"
            ) from exc
        return Compaction(
            segment,
            new_generation,
            gaps,
            path,
            new_path,
            moved,
            scan.file_size,
            offset,
            dropped_bytes,
        )

    def apply_compaction(self, compaction: Compaction) -> None:
        """Switch to the compacted file (or drop the segment), once the control log confirms
        the compaction. The superseded file stays for the grace period (its modification
        time is set to now to start it): a copy of the data folder taken meanwhile that
        caught an older control log still finds every record it needs."""
        if compaction.new_path is None:
            del self._files[compaction.segment]
        else:
            self._files[compaction.segment] = (compaction.generation, compaction.new_path)
        os.utime(compaction.old_path)
        self.forget_segment(compaction.segment)

    def discard_compaction(self, compaction: Compaction) -> None:
        if compaction.new_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(compaction.new_path)

    def remove_retired(self, cuts: Mapping[int, int], grace_seconds: float) -> list[Path]:
        """Delete superseded segment files whose grace period has passed."""
        now = time.time()
        removed = []
        live = {path for _generation, path in self._files.values()}
        for path in _choose_files(self.directory, cuts).retired:
            if path in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= grace_seconds:
                    path.unlink()
                    removed.append(path)
        if removed:
            _fsync_dir(self.directory)
        return removed

    # -- read

    def read(self, location: Location) -> tuple[RecordHeader, bytes]:
        """Read one record back, checking its CRC (the chain is verify's job)."""
        fd = self._read_fd(location.segment)
        data = _read_exact(fd, location.size, location.offset)
        try:
            header, body, _chain = verify_record(data)
        except FramingError as exc:
            _generation, path = self._files[location.segment]
            raise LogCorrupt(path, location.offset, str(exc)) from None
        return header, bytes(body)

    def _read_fd(self, segment: int) -> int:
        with self._read_lock:
            fd = self._read_fds.get(segment)
            if fd is None:
                fd = os.open(self._files[segment][1], os.O_RDONLY)
                self._read_fds[segment] = fd
            return fd

    def forget_segment(self, segment: int) -> None:
        """Drop a cached read descriptor after compaction replaced or removed the file."""
        with self._read_lock:
            fd = self._read_fds.pop(segment, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        if self._tail_fd is not None:
            os.close(self._tail_fd)
            self._tail_fd = None
        with self._read_lock:
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()


# -- the data folder -----------------------------------------------------------------------


class DataDir:
    """Paths and whole-file operations under the data folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_fd: int | None = None

    @property
    def control_dir(self) -> Path:
        return self.root / "control"

    @property
    def mailboxes_dir(self) -> Path:
        return self.root / "mailboxes"

    def mailbox_dir(self, mailbox_id: str) -> Path:
        # parse_mailbox_id is the gate: nothing but 32 hex characters ever becomes a path.
        return self.mailboxes_dir / parse_mailbox_id(mailbox_id)

    def mailbox_log_dir(self, mailbox_id: str) -> Path:
        return self.mailbox_dir(mailbox_id) / "log"

    def key_path(self, mailbox_id: str) -> Path:
        return self.mailbox_dir(mailbox_id) / "key"

    def ensure(self) -> None:
        for path in (self.root, self.mailboxes_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def lock(self) -> None:
        """Hold an exclusive lock on the data folder for the life of the process."""
        self.ensure()
        fd = os.open(self.root / "gateway.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLocked(
                f"another gateway process is using the data folder {self.root}"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def list_mailbox_ids(self) -> list[str]:
        if not self.mailboxes_dir.is_dir():
            return []
        ids = []
        for entry in os.scandir(self.mailboxes_dir):
            try:
                ids.append(parse_mailbox_id(entry.name))
            except ValueError:
                continue
        return sorted(ids)

    def create_mailbox(
        self, mailbox_id: str, key_file: bytes, log_id: bytes, *, segment_bytes: int
    ) -> SegmentLog:
        """Create the mailbox folder, its key file and an empty log, all durable."""
        directory = self.mailbox_dir(mailbox_id)
        directory.mkdir(mode=0o700)
        _fsync_dir(self.mailboxes_dir)
        self._write_new(directory / "key", key_file)
        return SegmentLog.create(directory / "log", log_id, segment_bytes=segment_bytes)

    def read_key_file(self, mailbox_id: str) -> bytes:
        return self.key_path(mailbox_id).read_bytes()

    def stage_key_file(self, mailbox_id: str, key_file: bytes) -> None:
        """First half of a key change: the new key file sits beside the old one, durable."""
        staged = self.key_path(mailbox_id).with_name("key.new")
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        self._write_new(staged, key_file)

    def commit_key_file(self, mailbox_id: str) -> None:
        """Second half, once the control log records the change: rename over the old."""
        path = self.key_path(mailbox_id)
        os.replace(path.with_name("key.new"), path)
        _fsync_dir(path.parent)

    def staged_key_file(self, mailbox_id: str) -> bytes | None:
        try:
            return self.key_path(mailbox_id).with_name("key.new").read_bytes()
        except FileNotFoundError:
            return None

    def discard_staged_key_file(self, mailbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.key_path(mailbox_id).with_name("key.new").unlink()

    def remove_mailbox(self, mailbox_id: str) -> None:
        """Delete a mailbox's folder (after MailboxDeleted is durable in the control log)."""
        directory = self.mailbox_dir(mailbox_id)
        for root, dirs, files in os.walk(directory, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                os.rmdir(os.path.join(root, name))
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(directory)
        _fsync_dir(self.mailboxes_dir)

    @staticmethod
    def _write_new(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(path.parent)
