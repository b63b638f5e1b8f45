"""Reading logs back: checking every record of a segment, telling torn tails from damage,
and walking a whole log read-only (what ``gateway verify`` and recovery on open build on)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._files import Location, LogCorrupt, LogRecord, choose_files
from ._framing import (
    RECORD_HEADER_SIZE,
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
    encode_gap_body,
    genesis_chain,
    record_prefix,
    verify_record,
)

# How many sequence numbers past the last good record we search for when deciding whether
# bad bytes are a torn tail or damage in the middle of the log. A batch never holds more
# records than this many bytes of chunks could, so a whole record after damage is found.
_RESYNC_WINDOW = 4096
_READ_BLOCK = 1 << 20


def read_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


@dataclass(slots=True)
class SegmentScan:
    """The outcome of reading one segment from its header to its end."""

    header: SegmentHeader
    records: list[LogRecord]
    end_offset: int  # just after the last whole record
    end_chain: bytes
    next_seq: int
    error: str | None  # why reading stopped before the end of the file, if it did
    torn: bool  # the file ends inside a record: a write cut short (or still going on)
    file_size: int


def scan_segment(
    path: Path,
    first_seq: int,
    log_id: bytes,
    expect_chain: bytes | None,
    *,
    keep_bodies: bool,
    start: tuple[int, int, bytes] | None = None,
) -> SegmentScan:
    """Check every record of one segment: CRC, sequence continuity, hash chain. ``start``
    (offset, seq, chain value before it): begin there instead of after the header (a
    recovery point vouches for what comes before).

    Stops at the first record that does not check out and says why; the caller decides
    whether that is a torn tail or corruption.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        try:
            header = decode_segment_header(read_exact(fd, SEGMENT_HEADER_SIZE, 0))
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
        if start is not None:
            offset, seq, chain = start
        records: list[LogRecord] = []
        error: str | None = None
        torn = False
        buf = b""
        buf_start = offset
        while offset < file_size:
            # Keep a window of the file in memory; records are at most MAX_BODY long.
            need = offset - buf_start + RECORD_HEADER_SIZE
            if need > len(buf):
                buf = read_exact(fd, _READ_BLOCK, offset)
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
                buf = read_exact(fd, max(_READ_BLOCK, rh.size), offset)
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
        return SegmentScan(header, records, offset, chain, seq, error, torn, file_size)
    finally:
        os.close(fd)


def later_record_exists(path: Path, offset: int, next_seq: int) -> bool:
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
    from_seq: int = 0,
) -> Iterator[LogRecord]:
    """Read a whole log, checking every record; read-only, safe while the gateway writes.
    With ``from_seq``, segments wholly before it are skipped (the first one read starts from
    the chain value in its header) and records before it are not yielded.

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
    chosen = list(choose_files(directory, cuts or {}).chosen.items())
    if not chosen:
        raise LogCorrupt(directory, 0, "no segment files")
    chain: bytes | None = genesis_chain(log_id)
    expect_seq = 0
    start = max((i for i, (first, _file) in enumerate(chosen) if first <= from_seq), default=0)
    if start:
        chosen = chosen[start:]
        expect_seq, (_generation, path) = chosen[0]
        chain = scan_segment_header(path).prev_chain
    for i, (first, (_generation, path)) in enumerate(chosen):
        if first != expect_seq:
            if first < expect_seq:
                raise LogCorrupt(path, 0, f"segment overlaps records up to {expect_seq - 1}")
            header = scan_segment_header(path)
            yield LogRecord(
                seq=first - 1,
                kind=RecordKind.GAP,
                body=encode_gap_body(Gap(expect_seq, first - 1)),
                chain=header.prev_chain,
                location=Location(first, 0, 0, first - 1),
            )
            chain = None  # trusted from the header; confirmed by verify
        scan = scan_segment(path, first, log_id, chain, keep_bodies=keep_bodies)
        yield from (record for record in scan.records if record.seq >= from_seq)
        if scan.error is not None:
            last = i == len(chosen) - 1
            if not (last and tail_ok and scan.torn) or later_record_exists(
                path, scan.end_offset, scan.next_seq
            ):
                raise LogCorrupt(path, scan.end_offset, scan.error)
            if on_torn_tail is not None:
                on_torn_tail(path, scan.end_offset, scan.file_size - scan.end_offset)
            return
        chain = scan.end_chain
        expect_seq = scan.next_seq


def scan_segment_header(path: Path) -> SegmentHeader:
    with open(path, "rb") as f:
        try:
            return decode_segment_header(f.read(SEGMENT_HEADER_SIZE))
        except FramingError as exc:
            raise LogCorrupt(path, 0, str(exc)) from None


class RecordReader:
    """Reads single records of one log by file name and offset, read-only, from any process
    (a protocol worker serving messages the journal listed). Each record's CRC is checked;
    the chain is verify's job. Descriptors are kept open until :meth:`close`: a segment file
    superseded by compaction stays readable through them, and stays on disk for the grace
    period anyway."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[str, int] = {}

    def read(self, file: str, offset: int, size: int) -> tuple[RecordHeader, bytes]:
        if "/" in file or not file.endswith(".seg"):
            raise LogCorrupt(self.directory, offset, f"not a segment file name: {file!r}")
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(self.directory / file, os.O_RDONLY)
        data = read_exact(fd, size, offset)
        try:
            header, body, _chain = verify_record(data)
        except FramingError as exc:
            raise LogCorrupt(self.directory / file, offset, str(exc)) from None
        return header, bytes(body)

    def read_many(self, places: Sequence[tuple[str, int, int]]) -> list[tuple[RecordHeader, bytes]]:
        return [self.read(*place) for place in places]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
