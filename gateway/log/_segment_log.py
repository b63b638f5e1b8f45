"""The writable segment log: append with group commit, recovery on open, compaction.

Theory of operation
-------------------
Everything here is blocking and runs in worker threads (``gateway.log._writer`` and the
services call it through ``trio.to_thread``).

A :class:`SegmentLog` appends whole batches: every record of a batch is written with one
``write`` and made durable with one ``fdatasync`` (group commit). A new segment's header is
fsynced, and its directory too, before any record goes into it, so a segment that is not the
last one is always complete. On open, the last segment is checked record by record: a torn or
garbage tail (bytes after the last whole record that no later whole record follows) is cut off
and reported; anything else that does not check out raises :class:`LogCorrupt` with the file
and offset, and the log stays closed for writing.

Every record is also a leaf of the log's Merkle tree, kept beside it in ``merkle-tree``
(``_tree_file``): written with each batch, cut back with it, synced before compaction or
archiving takes records away, and brought up to date on open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ._files import (
    DEFAULT_SEGMENT_BYTES,
    REMOVED,
    SEGMENT_SUFFIX,
    AppendItem,
    Compaction,
    Location,
    LogCorrupt,
    LogRecord,
    LogWriteError,
    Recovery,
    choose_files,
    fsync_dir,
    segment_name,
    write_all,
    write_new_file,
)
from ._framing import (
    RECORD_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    FramingError,
    Gap,
    RecordHeader,
    RecordKind,
    SegmentHeader,
    decode_gap,
    encode_gap,
    encode_record_parts,
    encode_segment_header,
    genesis_chain,
    verify_record,
)
from ._recovery_point import (
    ARCHIVE_FOLDER,
    BASE_FILE,
    RECOVERY_FILE,
    RecoveryPoint,
    check_position,
    write_recovery_point,
)
from ._scan import SegmentScan, iter_log, later_record_exists, read_exact, scan_segment
from ._tree_file import TreeFile, read_tree

_STAGING_SUFFIX = ".new"
# Where damaged bytes cut from the end of a log are kept (SPEC.md 6.3).
DAMAGED_FOLDER = "damaged"
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)


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
        tree: TreeFile | None,
        tree_missing: str = "",
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
        self._last_batch: tuple[int, bytes, int, int] | None = None
        self.written = 0  # bytes appended since the log was opened
        self.synced_seq = next_seq  # the records before it are durable
        # The log's Merkle tree (None, with the reason, when it cannot be known).
        self.tree = tree
        self.tree_missing = tree_missing

    # -- open and recover

    @classmethod
    def create(cls, directory: Path, log_id: bytes, *, segment_bytes: int) -> SegmentLog:
        directory.mkdir(mode=0o700, parents=True, exist_ok=False)  # SPEC.md 2: folders 0700
        fsync_dir(directory.parent)
        log = cls(
            directory,
            log_id,
            segment_bytes,
            {},
            0,
            genesis_chain(log_id),
            0,
            TreeFile.open(directory),
        )
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
        acknowledged: tuple[int, bytes] | None = None,
        resume: RecoveryPoint | None = None,
    ) -> tuple[SegmentLog, list[LogRecord], Recovery | None]:
        """Open for appending. Returns the log, every record with its body except chunk
        bodies (for the caller's projection), and what was done about its end, if anything.
        ``cuts``: the compactions the control log confirms (see ``choose_files``).
        ``acknowledged``: (seq, chain value) of the last record an independent witness (the
        control log) says was acknowledged; the log must reach it, with that chain value.
        Bad bytes at the end are cut as a torn tail only when they lie wholly after it;
        otherwise they are damage: moved aside into ``damaged/`` beside the segments, then
        cut, and reported as such. ``resume``: a recovery point to start from (only the
        records after it are read and returned); raises StaleRecoveryPoint, having changed
        nothing, when it does not match the log."""
        cuts = cuts or {}
        directory.chmod(0o700)  # folders made by versions that left them 0755 (SPEC.md 2)
        files = choose_files(directory, cuts)
        if not files.chosen:
            raise LogCorrupt(directory, 0, "no segment files")
        staged = [
            *directory.glob("*" + SEGMENT_SUFFIX + _STAGING_SUFFIX),
            *directory.glob(RECOVERY_FILE + _STAGING_SUFFIX),
            *directory.glob(BASE_FILE + _STAGING_SUFFIX),
        ]
        for stale in [*files.unconfirmed, *staged]:
            # A compaction whose control event never became durable (the older file holds
            # every record), or a segment or recovery point a crash left half made.
            stale.unlink()
        records: list[LogRecord] = []
        chain: bytes | None = genesis_chain(log_id)
        expect_seq = 0
        scan: SegmentScan | None = None
        path = directory
        chosen = list(files.chosen.items())
        start: tuple[int, int, bytes] | None = None
        if resume is not None:
            check_position(resume, files.chosen)
            chosen = [(f, g) for f, g in chosen if f >= resume.segment]
            chain, expect_seq = resume.chain, resume.segment
            start = (resume.offset, resume.seq, resume.chain)
        for i, (first, (_generation, path)) in enumerate(chosen):
            last = i == len(chosen) - 1
            if first != expect_seq:
                if first < expect_seq:
                    raise LogCorrupt(path, 0, f"segment overlaps records up to {expect_seq - 1}")
                if cuts.get(expect_seq) != REMOVED:
                    raise LogCorrupt(
                        path,
                        0,
                        f"records {expect_seq}..{first - 1} are missing "
                        "(no compaction removed them)",
                    )
                chain = None  # a segment removed by compaction; its header carries the chain
            begin = start if i == 0 else None
            scan = scan_segment(
                path, first, log_id, None if begin else chain, keep_bodies=False, start=begin
            )
            records.extend(scan.records)
            if scan.error is not None and (
                not last or later_record_exists(path, scan.end_offset, scan.next_seq)
            ):
                raise LogCorrupt(path, scan.end_offset, scan.error)
            chain = scan.end_chain
            expect_seq = scan.next_seq
        assert scan is not None
        recovery = _settle_end(path, scan, records, acknowledged)
        tree, tree_missing = _open_tree(directory, log_id, cuts, scan.next_seq)
        log = cls(
            directory,
            log_id,
            segment_bytes,
            files.chosen,
            scan.next_seq,
            scan.end_chain,
            scan.end_offset,
            tree,
            tree_missing,
        )
        return log, records, recovery

    # -- append

    @property
    def uncommitted(self) -> bool:
        """Never: what is appended is in the file at once (``sync`` makes it durable)."""
        return False

    def reserve(self) -> None:
        """Nothing to take: this process is the log's only writer (the data folder's lock)."""

    def catch_up(self) -> list[LogRecord]:
        """None: nobody else appends to a data folder's logs."""
        return []

    @property
    def segments(self) -> list[int]:
        return list(self._files)

    @property
    def tail_segment(self) -> int:
        return next(reversed(self._files))

    def generation(self, segment: int) -> int:
        return self._files[segment][0]

    def file_name(self, segment: int) -> str:
        """The name of the file that holds a segment now (compaction may change it; the
        superseded file stays for the grace period)."""
        return self._files[segment][1].name

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
            write_all(fd, encode_segment_header(SegmentHeader(self.log_id, first_seq, self.chain)))
            os.fsync(fd)
            os.rename(staging, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise
        fsync_dir(self.directory)
        self._tail_fd = fd
        self._files[first_seq] = (0, path)
        self._tail_size = SEGMENT_HEADER_SIZE

    def _tail(self) -> int:
        if self._tail_fd is None:
            _generation, path = self._files[self.tail_segment]
            self._tail_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        return self._tail_fd

    def append(
        self,
        items: Sequence[AppendItem],
        *,
        sync: bool = True,
        chains: list[bytes] | None = None,
        foreign: list[LogRecord] | None = None,
    ) -> list[Location]:
        """Frame, write and (if ``sync``) fdatasync a batch of records. If ``chains`` is
        given, each record's chain value is appended to it (the audit feed publishes them).
        ``foreign`` is never added to: nobody else appends to this log.

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
        self._last_batch = (start_seq, start_chain, start_segment, start_size)
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
                if self.tree is not None:
                    self.tree.stage(self.next_seq, kind, body)
                if chains is not None:
                    chains.append(self.chain)
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
            if self.tree is not None:
                self.tree.write()
            if sync:
                os.fdatasync(self._tail())
                self.synced_seq = self.next_seq
        except OSError as exc:
            self._undo(start_seq, start_chain, start_segment, start_size, exc)
            raise LogWriteError(os.strerror(exc.errno or errno.EIO)) from exc
        except Exception as exc:
            # A record that cannot be framed (too long), or anything unforeseen: nothing of
            # the batch may stay half applied.
            self._undo(start_seq, start_chain, start_segment, start_size, exc)
            raise LogWriteError(f"batch refused: {exc}") from exc
        return locations

    def recovery_point(self, state: bytes) -> RecoveryPoint:
        """A recovery point at the log's end as it is now, carrying ``state``. Call it only
        while no batch is being written (the commit group held) and after :meth:`sync`."""
        segment = self.tail_segment
        return RecoveryPoint(
            self.log_id,
            self.next_seq,
            segment,
            self.generation(segment),
            self._tail_size,
            self.chain,
            tuple((first, generation) for first, (generation, _path) in self._files.items()),
            state,
        )

    def tree_head(self) -> tuple[int, bytes] | None:
        """The head of the tree of the log's durable records (blocking): their count and
        root; None when the log has no tree (``tree_missing`` says why)."""
        if self.tree is None:
            return None
        size = self.synced_seq
        return size, read_tree(self.directory, size).root()

    def save_recovery_point(self, point: RecoveryPoint) -> int:
        """Write the recovery point beside the segments (atomically); returns its size."""
        return write_recovery_point(self.directory, point)

    def sync(self) -> None:
        """fdatasync what was appended. If that fails, the last batch is cut off again (as
        append does for its own errors) and LogWriteError is raised."""
        try:
            os.fdatasync(self._tail())
            self.synced_seq = self.next_seq
        except OSError as exc:
            if self._last_batch is not None:
                self._undo(*self._last_batch, exc)
            raise LogWriteError(os.strerror(exc.errno or errno.EIO)) from exc

    def _flush(self, pending: list[bytes]) -> None:
        """Write the pieces of a batch with as few system calls as the kernel allows."""
        fd = self._tail()
        for start in range(0, len(pending), _IOV_MAX):
            pieces = pending[start : start + _IOV_MAX]
            total = sum(len(p) for p in pieces)
            written = os.writev(fd, pieces)
            if written < total:  # rare on regular files; finish the rest plainly
                write_all(fd, memoryview(b"".join(pieces))[written:])
            self._tail_size += total
            self.written += total

    def _undo(self, seq: int, chain: bytes, segment: int, size: int, cause: Exception) -> None:
        self.next_seq, self.chain = seq, chain
        self.synced_seq = min(self.synced_seq, seq)
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
            if self.tree is not None:
                self.tree.cut(seq)
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
        scan = scan_segment(path, segment, self.log_id, None, keep_bodies=False)
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
        if self.tree is not None:
            self.tree.sync()  # from the cut on, the only place the dropped records' hashes are
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
            fsync_dir(self.directory)
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
        for path in choose_files(self.directory, cuts).retired:
            if path in live:
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime >= grace_seconds:
                    path.unlink()
                    removed.append(path)
        if removed:
            fsync_dir(self.directory)
        return removed

    # -- history

    def archive_history(self, point: RecoveryPoint, keep_bytes: int) -> list[Path]:
        """Move the sealed segments wholly before ``point`` (this log's recovery point, just
        saved) into ``archive/`` beside the others, all but the newest ``keep_bytes`` of them,
        having saved the point as this log's base: the start of its history from then on
        (SPEC.md 6.8). Returns the files moved."""
        sealed = [
            (first, path)
            for (first, (_generation, path)), following in zip(
                self._files.items(), list(self._files)[1:], strict=False
            )
            if following <= point.segment
        ]
        kept = 0
        while sealed and kept + sealed[-1][1].stat().st_size <= keep_bytes:
            kept += sealed.pop()[1].stat().st_size
        if not sealed:
            return []
        if self.tree is not None:
            self.tree.sync()  # the hashes of the records moved away stay here
        write_recovery_point(self.directory, point, name=BASE_FILE)
        folder = self.directory / ARCHIVE_FOLDER
        folder.mkdir(mode=0o700, exist_ok=True)
        moved = []
        for first, path in sealed:
            self.forget_segment(first)
            del self._files[first]
            target = folder / path.name
            os.rename(path, target)
            moved.append(target)
        fsync_dir(folder)
        fsync_dir(self.directory)
        return moved

    # -- read

    def read(self, location: Location) -> tuple[RecordHeader, bytes]:
        """Read one record back, checking its CRC (the chain is verify's job)."""
        fd = self._read_fd(location.segment)
        data = read_exact(fd, location.size, location.offset)
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
        if self.tree is not None:
            self.tree.close()
            self.tree = None
        with self._read_lock:
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()


def _settle_end(
    path: Path,
    scan: SegmentScan,
    records: list[LogRecord],
    acknowledged: tuple[int, bytes] | None,
) -> Recovery | None:
    """Decide what the end of a log is, against the witness of what was acknowledged, and
    act on it: nothing, a torn tail cut off, or damage moved aside and cut off."""
    ack_seq = acknowledged[0] if acknowledged is not None else -1
    if acknowledged is not None and ack_seq < scan.next_seq:
        witnessed = next((r for r in reversed(records) if r.seq == ack_seq), None)
        if witnessed is not None and witnessed.chain != acknowledged[1]:
            raise LogCorrupt(
                path,
                witnessed.location.offset,
                f"record {ack_seq} is not the one the control log witnessed (chain differs)",
            )
    bad_bytes = scan.file_size - scan.end_offset
    if scan.next_seq > ack_seq:
        if scan.error is None:
            return None
        # Bad bytes after every acknowledged record: a write a crash cut short.
        _truncate(path, scan.end_offset)
        return Recovery(path, scan.end_offset, bad_bytes)
    # The log ends before a record the witness says was acknowledged.
    if scan.error is None:
        damage = f"records {scan.next_seq}..{ack_seq} are missing from the end of the log"
    else:
        damage = f"record {scan.next_seq}: {scan.error}"
    moved_to = None
    if bad_bytes:
        moved_to = _move_aside(path, scan.end_offset)
        _truncate(path, scan.end_offset)
    return Recovery(
        path,
        scan.end_offset,
        bad_bytes,
        damage=damage,
        first_lost_seq=scan.next_seq,
        chain=scan.end_chain,
        moved_to=moved_to,
    )


_TREE_BATCH = 4096  # leaves written at a time while a tree file catches up


def _open_tree(
    directory: Path, log_id: bytes, cuts: Mapping[int, int], next_seq: int
) -> tuple[TreeFile | None, str]:
    """Open a log's tree file and make it the tree of its ``next_seq`` records: cut back
    to the log's end, or brought up to it from the records; None (and why) when records
    it lacks are gone."""
    tree = TreeFile.open(directory)
    try:
        if tree.size > next_seq:
            tree.cut(next_seq)
        missing = _catch_up(tree, directory, log_id, cuts, next_seq)
    except (OSError, LogCorrupt) as exc:
        missing = f"tree file not brought up to date: {exc}"
    if missing:
        tree.close()
        return None, missing
    return tree, ""


def _catch_up(
    tree: TreeFile, directory: Path, log_id: bytes, cuts: Mapping[int, int], next_seq: int
) -> str:
    """Add the records from the tree's size to ``next_seq`` to it; what is missing, if
    anything."""
    if tree.size >= next_seq:
        return ""
    expect = tree.size
    for record in iter_log(directory, log_id, cuts=cuts, from_seq=expect):
        if record.seq >= next_seq:
            break
        if record.kind == RecordKind.GAP:
            gap = decode_gap(record.body)
            if gap.last_seq < expect:
                continue
            first, last = gap.first_seq, gap.last_seq
        elif record.seq != expect:
            first, last = expect, record.seq - 1
        else:
            tree.stage(record.seq, record.kind, record.body)
            expect += 1
            if expect % _TREE_BATCH == 0:
                tree.write()
            continue
        return f"records {first}..{last} are gone and the tree file does not hold their hashes"
    tree.write()
    return ""


def _truncate(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(offset)
        os.fsync(f.fileno())


def _move_aside(path: Path, offset: int) -> Path:
    """Copy the bytes of ``path`` from ``offset`` on into ``damaged/<name>.<offset>`` beside
    it, durably, before they are cut from the log."""
    folder = path.parent / DAMAGED_FOLDER
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / f"{path.name}.{offset}"
    with open(path, "rb") as src:
        src.seek(offset)
        data = src.read()
    with contextlib.suppress(FileNotFoundError):
        target.unlink()  # a move an earlier open began and a crash cut short
    write_new_file(target, data)
    fsync_dir(path.parent)
    return target
