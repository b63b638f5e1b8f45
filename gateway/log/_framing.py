"""Segment and record framing: pure bytes-to-bytes functions, no file access.

Theory of operation
-------------------
A log is a sequence of records numbered 0, 1, 2, ... and cut into segment files. Each segment
starts with a fixed header that names the log, the sequence number of its first record and the
chain value of the record before it, so every segment can be checked on its own once the chain
value at its start is known.

Every record is framed as::

    u32 body length | u8 kind | 3 zero bytes | u64 seq | u32 header CRC | body
        | 32-byte chain | u32 CRC-32

all little-endian. ``chain = SHA-256(previous chain || header || body)``: record i commits to
record i-1, so editing, dropping or reordering any record breaks the chain at exactly that
record. The CRCs (zlib's CRC-32) are the cheap first line. The header's own CRC guards the
length field: a damaged length is caught at once instead of making a reader swallow the rest
of the file, and it is what tells a *torn* tail (a valid header whose record the file ends
inside: a write cut short) from a *damaged* record, which is never mistaken for a tail. The
record CRC covers everything before it.

A GAP record stands where compaction removed records: its body names the first and last
sequence number it replaces and its chain field carries the chain value after the last removed
record, so the chain goes on verifiably (the control log keeps the same value, see SPEC.md).
"""

from __future__ import annotations

import enum
import hashlib
import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "MAX_BODY",
    "RECORD_OVERHEAD",
    "SEGMENT_HEADER_SIZE",
    "FramingError",
    "Gap",
    "RecordHeader",
    "RecordKind",
    "SegmentHeader",
    "chain_next",
    "decode_chunk_body",
    "decode_gap",
    "decode_record_header",
    "decode_segment_header",
    "encode_chunk_body",
    "encode_gap",
    "encode_gap_body",
    "encode_record",
    "encode_record_parts",
    "encode_segment_header",
    "genesis_chain",
    "record_prefix",
    "verify_record",
]

SEGMENT_MAGIC = b"MAGSEG1\n"
FORMAT_VERSION = 1
_SEGMENT_HEADER = struct.Struct("<8sI16sQ32s")  # magic, version, log id, first seq, prev chain
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size + 4  # + CRC-32 of the header

_RECORD_HEADER = struct.Struct("<IB3xQ")  # body length, kind, padding, seq
_HEADER_CRC = struct.Struct("<I")
RECORD_HEADER_SIZE = _RECORD_HEADER.size + _HEADER_CRC.size
_TRAILER = struct.Struct("<32sI")  # chain, CRC-32
RECORD_OVERHEAD = RECORD_HEADER_SIZE + _TRAILER.size

# The largest body the writer produces is a sealed chunk: 256 KiB of plaintext compressed (zstd
# can expand incompressible input by a few bytes per block) plus the GCM tag and the chunk
# header. Events are far smaller. Anything longer than this in a length field is corruption.
MAX_BODY = 1 << 20

_GAP = struct.Struct("<QQ")  # first removed seq, last removed seq


class FramingError(Exception):
    """Bytes that are not a valid segment header or record (torn, garbage or tampered)."""


class RecordKind(enum.IntEnum):
    EVENT = 1  # msgpack-encoded event from gateway.events
    CHUNK = 2  # a sealed message chunk: message id (16) | chunk index u32 | ciphertext
    GAP = 3  # records removed by compaction; see the module docstring


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    log_id: bytes
    first_seq: int
    prev_chain: bytes


@dataclass(frozen=True, slots=True)
class RecordHeader:
    body_len: int
    kind: int
    seq: int

    @property
    def size(self) -> int:
        """Bytes the whole framed record takes on disk."""
        return self.body_len + RECORD_OVERHEAD


@dataclass(frozen=True, slots=True)
class Gap:
    first_seq: int
    last_seq: int


def genesis_chain(log_id: bytes) -> bytes:
    """The chain value before record 0. Binding the log id means records cannot be moved from
    one mailbox's log to another's without breaking the chain."""
    return hashlib.sha256(b"mag/log/v1 genesis" + log_id).digest()


def chain_next(prev_chain: bytes, framed_prefix: bytes | memoryview) -> bytes:
    return hashlib.sha256(bytes(prev_chain) + bytes(framed_prefix)).digest()


def encode_segment_header(header: SegmentHeader) -> bytes:
    raw = _SEGMENT_HEADER.pack(
        SEGMENT_MAGIC, FORMAT_VERSION, header.log_id, header.first_seq, header.prev_chain
    )
    return raw + struct.pack("<I", zlib.crc32(raw))


def decode_segment_header(data: bytes) -> SegmentHeader:
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FramingError("segment header is truncated")
    raw = data[: _SEGMENT_HEADER.size]
    (crc,) = struct.unpack_from("<I", data, _SEGMENT_HEADER.size)
    if zlib.crc32(raw) != crc:
        raise FramingError("segment header checksum mismatch")
    magic, version, log_id, first_seq, prev_chain = _SEGMENT_HEADER.unpack(raw)
    if magic != SEGMENT_MAGIC or version != FORMAT_VERSION:
        raise FramingError("not a segment file of a known format version")
    return SegmentHeader(log_id=log_id, first_seq=first_seq, prev_chain=prev_chain)


def _pack_record_header(body_len: int, kind: int, seq: int) -> bytes:
    raw = _RECORD_HEADER.pack(body_len, kind, seq)
    return raw + _HEADER_CRC.pack(zlib.crc32(raw))


def encode_record_parts(
    kind: RecordKind, seq: int, body: bytes, prev_chain: bytes
) -> tuple[bytes, bytes, bytes]:
    """Frame one record without copying its body: returns (header, trailer, chain value);
    the record is header + body + trailer. Hash and CRC run over the pieces in place."""
    if len(body) > MAX_BODY:
        raise ValueError(f"record body of {len(body)} bytes exceeds {MAX_BODY}")
    header = _pack_record_header(len(body), kind, seq)
    digest = hashlib.sha256(prev_chain)
    digest.update(header)
    digest.update(body)
    chain = digest.digest()
    crc = zlib.crc32(chain, zlib.crc32(body, zlib.crc32(header)))
    return header, chain + struct.pack("<I", crc), chain


def encode_record(
    kind: RecordKind, seq: int, body: bytes, prev_chain: bytes
) -> tuple[bytes, bytes]:
    """Frame one record; returns (record bytes, its chain value)."""
    header, trailer, chain = encode_record_parts(kind, seq, body, prev_chain)
    return header + body + trailer, chain


def decode_record_header(data: bytes | memoryview) -> RecordHeader:
    """Parse the fixed header at the start of ``data`` (at least RECORD_HEADER_SIZE bytes)."""
    if len(data) < RECORD_HEADER_SIZE:
        raise FramingError("record header is truncated")
    body_len, kind, seq = _RECORD_HEADER.unpack_from(data)
    (crc,) = _HEADER_CRC.unpack_from(data, _RECORD_HEADER.size)
    if zlib.crc32(memoryview(data)[: _RECORD_HEADER.size]) != crc:
        raise FramingError("record header checksum mismatch")
    if body_len > MAX_BODY:
        raise FramingError(f"record length {body_len} exceeds the maximum {MAX_BODY}")
    if kind not in _KINDS:
        raise FramingError(f"unknown record kind {kind}")
    return RecordHeader(body_len=body_len, kind=kind, seq=seq)


_KINDS = frozenset(int(k) for k in RecordKind)


def verify_record(data: bytes | memoryview) -> tuple[RecordHeader, memoryview, bytes]:
    """Check one whole framed record (exactly its bytes) against its CRC.

    Returns (header, body, stored chain). The chain itself is checked by the caller, who
    knows the previous value.
    """
    view = memoryview(data)
    if len(view) < RECORD_OVERHEAD:
        raise FramingError("record is truncated")
    header = decode_record_header(view)
    if len(view) != header.size:
        raise FramingError("record is truncated")
    chain, crc = _TRAILER.unpack_from(view, header.size - _TRAILER.size)
    if zlib.crc32(view[: header.size - 4]) != crc:
        raise FramingError(f"record {header.seq}: checksum mismatch")
    body = view[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + header.body_len]
    return header, body, chain


def record_prefix(data: bytes | memoryview, header: RecordHeader) -> memoryview:
    """The bytes the chain hashes: header and body, without the trailer."""
    return memoryview(data)[: RECORD_HEADER_SIZE + header.body_len]


def encode_gap(gap: Gap, chain_after: bytes) -> tuple[bytes, bytes]:
    """A GAP record in place of records first_seq..last_seq. Its own seq is last_seq, its chain
    field the chain after last_seq (as it was before the records were removed)."""
    body = encode_gap_body(gap)
    framed = _pack_record_header(len(body), RecordKind.GAP, gap.last_seq) + body + chain_after
    return framed + struct.pack("<I", zlib.crc32(framed)), chain_after


def encode_gap_body(gap: Gap) -> bytes:
    return _GAP.pack(gap.first_seq, gap.last_seq)


def decode_gap(body: bytes | memoryview) -> Gap:
    if len(body) != _GAP.size:
        raise FramingError("gap record of the wrong length")
    first, last = _GAP.unpack(body)
    if first > last:
        raise FramingError("gap record with first > last")
    return Gap(first_seq=first, last_seq=last)


_CHUNK_HEAD = struct.Struct("<16sI")  # message id, chunk index


def encode_chunk_body(message_id: bytes, index: int, ciphertext: bytes) -> bytes:
    return _CHUNK_HEAD.pack(message_id, index) + ciphertext


def decode_chunk_body(body: bytes | memoryview) -> tuple[bytes, int, memoryview]:
    """Returns (message id, chunk index, ciphertext)."""
    if len(body) < _CHUNK_HEAD.size:
        raise FramingError("chunk record too short")
    message_id, index = _CHUNK_HEAD.unpack_from(body)
    return message_id, index, memoryview(body)[_CHUNK_HEAD.size :]
