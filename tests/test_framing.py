"""Record and segment framing: round trips, and any bytes at all either parse or raise
FramingError (never another exception)."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.log._framing import (
    MAX_BODY,
    RECORD_OVERHEAD,
    FramingError,
    Gap,
    RecordKind,
    SegmentHeader,
    chain_next,
    decode_chunk_body,
    decode_gap,
    decode_segment_header,
    encode_chunk_body,
    encode_gap,
    encode_record,
    encode_segment_header,
    genesis_chain,
    record_prefix,
    verify_record,
)

kinds = st.sampled_from([RecordKind.EVENT, RecordKind.CHUNK])
chains = st.binary(min_size=32, max_size=32)


@given(kinds, st.integers(0, 2**64 - 1), st.binary(max_size=5000), chains)
def test_record_round_trip(kind: RecordKind, seq: int, body: bytes, prev: bytes) -> None:
    framed, chain = encode_record(kind, seq, body, prev)
    assert len(framed) == len(body) + RECORD_OVERHEAD
    header, got_body, stored = verify_record(framed)
    assert (header.kind, header.seq, bytes(got_body), stored) == (kind, seq, body, chain)
    assert chain_next(prev, record_prefix(framed, header)) == chain


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_framing_error(data: bytes) -> None:
    with contextlib.suppress(FramingError):
        verify_record(data)
    with contextlib.suppress(FramingError):
        decode_segment_header(data)
    with contextlib.suppress(FramingError):
        decode_gap(data)
    with contextlib.suppress(FramingError):
        decode_chunk_body(data)


@given(kinds, st.integers(0, 2**32), st.binary(max_size=200), chains, st.data())
def test_any_damage_to_a_record_is_detected(
    kind: RecordKind, seq: int, body: bytes, prev: bytes, data: st.DataObject
) -> None:
    framed, _chain = encode_record(kind, seq, body, prev)
    position = data.draw(st.integers(0, len(framed) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(framed)
    damaged[position] ^= flip
    try:
        verify_record(bytes(damaged))
    except FramingError:
        return
    raise AssertionError(f"damage at {position} went unnoticed")


def test_a_length_beyond_the_maximum_is_refused_before_reading() -> None:
    raw = struct.pack("<IB3xQ", MAX_BODY + 1, RecordKind.EVENT, 0)
    header = raw + struct.pack("<I", zlib.crc32(raw))  # a well-formed header, too long
    with pytest.raises(FramingError, match="exceeds"):
        verify_record(header + bytes(RECORD_OVERHEAD))


@given(st.binary(min_size=16, max_size=16), st.integers(0, 2**64 - 1), chains)
def test_segment_header_round_trip(log_id: bytes, first: int, prev: bytes) -> None:
    header = SegmentHeader(log_id, first, prev)
    assert decode_segment_header(encode_segment_header(header)) == header


@given(st.integers(0, 2**40), st.integers(0, 2**20), chains)
def test_gap_round_trip(first: int, length: int, chain: bytes) -> None:
    framed, stored = encode_gap(Gap(first, first + length), chain)
    header, body, chain_field = verify_record(framed)
    assert header.kind == RecordKind.GAP and header.seq == first + length
    assert decode_gap(body) == Gap(first, first + length)
    assert chain_field == stored == chain


@given(st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1), st.binary(max_size=100))
def test_chunk_body_round_trip(message_id: bytes, index: int, ciphertext: bytes) -> None:
    mid, got_index, got = decode_chunk_body(encode_chunk_body(message_id, index, ciphertext))
    assert (mid, got_index, bytes(got)) == (message_id, index, ciphertext)


def test_genesis_binds_the_log_id() -> None:
    assert genesis_chain(bytes(16)) != genesis_chain(b"\x01" + bytes(15))
