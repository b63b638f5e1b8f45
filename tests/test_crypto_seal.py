"""Sealing and opening of messages (gateway.crypto._seal)."""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.crypto import (
    MAX_META,
    PLAIN_CHUNK,
    MailboxPrivateKey,
    MessageCorrupt,
    MessageOpener,
    MessageSealer,
    SealedMessage,
    open_message,
)
from gateway.crypto._seal import _NONCE

MAILBOX = bytes.fromhex("a1" * 16)
OTHER_MAILBOX = bytes.fromhex("b2" * 16)
MESSAGE = bytes.fromhex("c3" * 16)
OTHER_MESSAGE = bytes.fromhex("d4" * 16)
META = b"\x81\xa4from\xa9a@example"

# A three-chunk message: (plaintext, ciphertext chunks, record).
Three = tuple[bytes, list[bytes], SealedMessage]


@pytest.fixture(scope="module")
def key() -> MailboxPrivateKey:
    return MailboxPrivateKey.generate()


@pytest.fixture(scope="module")
def other_key() -> MailboxPrivateKey:
    return MailboxPrivateKey.generate()


def seal(
    key: MailboxPrivateKey,
    plaintext: bytes,
    splits: Sequence[int] = (),
    *,
    mailbox_id: bytes = MAILBOX,
    message_id: bytes = MESSAGE,
    meta: bytes = META,
) -> tuple[list[bytes], SealedMessage]:
    """Seal ``plaintext`` fed in pieces of the given sizes, then the rest in one piece."""
    sealer = MessageSealer(key.public_key(), mailbox_id, message_id)
    chunks: list[bytes] = []
    pos = 0
    for size in splits:
        chunks += sealer.feed(plaintext[pos : pos + size])
        pos = min(pos + size, len(plaintext))
    chunks += sealer.feed(plaintext[pos:])
    last, sealed = sealer.finish(meta)
    chunks.append(last)
    return chunks, sealed


def expected_chunks(size: int) -> int:
    return max(1, -(-size // PLAIN_CHUNK))


def mixed_bytes(size: int, seed: int) -> bytes:
    """Half incompressible, half text, so both zstd block kinds are exercised."""
    rng = random.Random(seed)
    text = b"Subject: quarterly report\r\nThe numbers are in. " * 64
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(rng.randrange(1, 20000))
        out += text[: rng.randrange(1, len(text))]
    return bytes(out[:size])


# -- round trips ---------------------------------------------------------------------------


def _plaintexts() -> st.SearchStrategy[bytes]:
    seeds = st.integers(0, 2**32)
    small = st.binary(max_size=300)
    repeated = st.builds(
        lambda b, n: b * n, st.binary(min_size=1, max_size=50), st.integers(1, 30000)
    )
    mixed = st.builds(mixed_bytes, st.integers(0, 400_000), seeds)
    parts = st.lists(st.one_of(small, repeated, mixed), max_size=5).map(b"".join)
    # Hypothesis favours small values; the last two branches make sure that messages of
    # more than three chunks, up to 1 MiB, come up in every run.
    large = st.builds(mixed_bytes, st.integers(3 * PLAIN_CHUNK, 1024 * 1024), seeds)
    large_repeated = st.builds(
        lambda b, n: (b * n)[: 1024 * 1024],
        st.binary(min_size=1, max_size=20),
        st.integers(3 * PLAIN_CHUNK, 1024 * 1024),
    )
    return st.one_of(st.binary(max_size=1000), parts, large, large_repeated)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    plaintext=_plaintexts(),
    splits=st.lists(
        st.one_of(st.just(0), st.integers(1, 100), st.integers(1, 2 * PLAIN_CHUNK)), max_size=12
    ),
)
def test_round_trip(key: MailboxPrivateKey, plaintext: bytes, splits: list[int]) -> None:
    chunks, sealed = seal(key, plaintext, splits)
    assert sealed.size == len(plaintext)
    assert sealed.chunk_count == len(chunks) == expected_chunks(len(plaintext))
    assert sealed.sealed_size == sum(len(c) for c in chunks)
    assert sealed.key_id == key.key_id

    opener = MessageOpener(key, MAILBOX, MESSAGE, sealed)
    pieces = [opener.open_chunk(c) for c in chunks]
    assert all(len(p) == PLAIN_CHUNK for p in pieces[:-1])
    assert len(pieces[-1]) <= PLAIN_CHUNK
    opener.finish()
    assert opener.meta() == META
    assert b"".join(pieces) == plaintext


def test_round_trip_over_four_chunks_in_odd_pieces(key: MailboxPrivateKey) -> None:
    plaintext = mixed_bytes(4 * PLAIN_CHUNK + 12345, seed=7)
    chunks, sealed = seal(key, plaintext, [0, 1, 0, 65536, PLAIN_CHUNK - 3, 3, 0, 700_000])
    assert len(chunks) == 5
    assert open_message(key, MAILBOX, MESSAGE, sealed, chunks) == (META, plaintext)


def test_feed_returns_chunks_as_they_complete(key: MailboxPrivateKey) -> None:
    sealer = MessageSealer(key.public_key(), MAILBOX, MESSAGE)
    assert sealer.feed(bytes(PLAIN_CHUNK)) == []  # full, but maybe the last one
    assert len(sealer.feed(b"x")) == 1  # now known not to be the last
    assert sealer.feed(b"") == []
    assert len(sealer.feed(bytes(3 * PLAIN_CHUNK))) == 3
    _, sealed = sealer.finish(b"")
    assert sealed.chunk_count == 5
    assert sealed.size == 4 * PLAIN_CHUNK + 1


def test_feed_accepts_any_bytes_like(key: MailboxPrivateKey) -> None:
    sealer = MessageSealer(key.public_key(), MAILBOX, MESSAGE)
    sealer.feed(b"bytes ")
    sealer.feed(bytearray(b"bytearray "))
    sealer.feed(memoryview(b"xxmemoryview ")[2:])
    last, sealed = sealer.finish(b"")
    assert open_message(key, MAILBOX, MESSAGE, sealed, [last]) == (
        b"",
        b"bytes bytearray memoryview ",
    )


def test_empty_message(key: MailboxPrivateKey) -> None:
    chunks, sealed = seal(key, b"")
    assert len(chunks) == 1
    assert sealed.chunk_count == 1
    assert sealed.size == 0
    assert open_message(key, MAILBOX, MESSAGE, sealed, chunks) == (META, b"")


def test_empty_meta(key: MailboxPrivateKey) -> None:
    chunks, sealed = seal(key, b"body", meta=b"")
    assert open_message(key, MAILBOX, MESSAGE, sealed, chunks) == (b"", b"body")


@pytest.mark.parametrize(
    ("size", "count"),
    [
        (1, 1),
        (PLAIN_CHUNK - 1, 1),
        (PLAIN_CHUNK, 1),
        (PLAIN_CHUNK + 1, 2),
        (2 * PLAIN_CHUNK - 1, 2),
        (2 * PLAIN_CHUNK, 2),
        (2 * PLAIN_CHUNK + 1, 3),
    ],
)
@pytest.mark.parametrize("piece", [None, 1000, PLAIN_CHUNK])
def test_chunk_boundaries(key: MailboxPrivateKey, size: int, count: int, piece: int | None) -> None:
    plaintext = mixed_bytes(size, seed=size)
    splits = [] if piece is None else [piece] * (size // piece)
    chunks, sealed = seal(key, plaintext, splits)
    assert sealed.chunk_count == len(chunks) == count
    assert open_message(key, MAILBOX, MESSAGE, sealed, chunks) == (META, plaintext)


def test_incompressible_chunks_stay_near_plain_size(key: MailboxPrivateKey) -> None:
    chunks, _ = seal(key, os.urandom(3 * PLAIN_CHUNK))
    for chunk in chunks:
        assert PLAIN_CHUNK < len(chunk) < PLAIN_CHUNK + 256


def test_meta_is_available_before_the_body(key: MailboxPrivateKey) -> None:
    _, sealed = seal(key, b"body" * 100_000)
    assert MessageOpener(key, MAILBOX, MESSAGE, sealed).meta() == META


def test_large_meta(key: MailboxPrivateKey) -> None:
    meta = os.urandom(1024 * 1024)
    chunks, sealed = seal(key, b"x", meta=meta)
    assert open_message(key, MAILBOX, MESSAGE, sealed, chunks) == (meta, b"x")


def test_meta_over_the_limit_is_refused(key: MailboxPrivateKey) -> None:
    sealer = MessageSealer(key.public_key(), MAILBOX, MESSAGE)
    with pytest.raises(ValueError, match="meta"):
        sealer.finish(bytes(MAX_META + 1))
    last, sealed = sealer.finish(b"ok")  # a refused finish leaves the sealer usable
    assert open_message(key, MAILBOX, MESSAGE, sealed, [last]) == (b"ok", b"")


def test_sealer_is_single_use(key: MailboxPrivateKey) -> None:
    sealer = MessageSealer(key.public_key(), MAILBOX, MESSAGE)
    sealer.feed(b"x")
    sealer.finish(b"")
    with pytest.raises(RuntimeError):
        sealer.feed(b"y")
    with pytest.raises(RuntimeError):
        sealer.finish(b"")


def test_opener_is_single_use(key: MailboxPrivateKey) -> None:
    chunks, sealed = seal(key, b"x")
    opener = MessageOpener(key, MAILBOX, MESSAGE, sealed)
    opener.open_chunk(chunks[0])
    opener.finish()
    assert opener.meta() == META
    with pytest.raises(RuntimeError):
        opener.finish()
    with pytest.raises(RuntimeError):
        opener.open_chunk(chunks[0])


def test_each_message_has_its_own_key(key: MailboxPrivateKey) -> None:
    first, sealed_first = seal(key, b"same body")
    second, sealed_second = seal(key, b"same body")
    assert first != second
    assert sealed_first.wrapped_key != sealed_second.wrapped_key


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(17)])
def test_ids_must_be_16_bytes(key: MailboxPrivateKey, bad: bytes) -> None:
    with pytest.raises(ValueError, match="mailbox_id"):
        MessageSealer(key.public_key(), bad, MESSAGE)
    with pytest.raises(ValueError, match="message_id"):
        MessageSealer(key.public_key(), MAILBOX, bad)
    _, sealed = seal(key, b"x")
    with pytest.raises(ValueError, match="mailbox_id"):
        MessageOpener(key, bad, MESSAGE, sealed)
    with pytest.raises(ValueError, match="message_id"):
        MessageOpener(key, MAILBOX, bad, sealed)


def test_sealed_message_survives_msgpack(key: MailboxPrivateKey) -> None:
    chunks, sealed = seal(key, b"stored")
    again = msgspec.msgpack.decode(msgspec.msgpack.encode(sealed), type=SealedMessage)
    assert again == sealed
    assert open_message(key, MAILBOX, MESSAGE, again, chunks) == (META, b"stored")


def test_repr_is_short(key: MailboxPrivateKey) -> None:
    _, sealed = seal(key, b"x")
    assert sealed.wrapped_key[:8].hex() not in repr(sealed)
    assert len(repr(sealed)) < 200


# -- tampering -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three(key: MailboxPrivateKey) -> Three:
    plaintext = mixed_bytes(2 * PLAIN_CHUNK + 5000, seed=3)
    chunks, sealed = seal(key, plaintext)
    assert len(chunks) == 3
    return plaintext, chunks, sealed


def corrupt(
    key: MailboxPrivateKey,
    sealed: SealedMessage,
    chunks: Sequence[bytes],
    *,
    mailbox_id: bytes = MAILBOX,
    message_id: bytes = MESSAGE,
) -> MessageCorrupt:
    """Open the message expecting MessageCorrupt; return it."""
    with pytest.raises(MessageCorrupt) as info:
        open_body_first(key, mailbox_id, message_id, sealed, chunks)
    return info.value


def open_body_first(
    key: MailboxPrivateKey,
    mailbox_id: bytes,
    message_id: bytes,
    sealed: SealedMessage,
    chunks: Sequence[bytes],
) -> None:
    # open_message reads the envelope first, which catches most forgeries of the record
    # before any chunk is looked at; this order shows what the chunk checks catch alone.
    opener = MessageOpener(key, mailbox_id, message_id, sealed)
    for chunk in chunks:
        opener.open_chunk(chunk)
    opener.finish()
    opener.meta()


def test_untouched_message_opens(key: MailboxPrivateKey, three: Three) -> None:
    plaintext, chunks, sealed = three
    assert open_message(key, MAILBOX, MESSAGE, sealed, chunks) == (META, plaintext)


@pytest.mark.parametrize("index", [0, 1, 2])
@pytest.mark.parametrize("where", [0, 11, 12, "middle", -17, -16, -1])
def test_flipped_byte_in_a_chunk(
    key: MailboxPrivateKey,
    three: Three,
    index: int,
    where: int | str,
) -> None:
    _, chunks, sealed = three
    damaged = bytearray(chunks[index])
    offset = len(damaged) // 2 if where == "middle" else int(where)
    damaged[offset] ^= 0x40
    tampered = [*chunks]
    tampered[index] = bytes(damaged)
    assert f"chunk {index}" in str(corrupt(key, sealed, tampered))


def test_truncated_chunk(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    for cut in (0, 1, 15, 16, len(chunks[1]) - 1):
        assert "chunk 1" in str(corrupt(key, sealed, [chunks[0], chunks[1][:cut], chunks[2]]))


def test_dropped_last_chunk(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    assert "chunk 2" in str(corrupt(key, sealed, chunks[:2]))


def test_dropped_middle_chunk(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    assert "chunk 1" in str(corrupt(key, sealed, [chunks[0], chunks[2]]))


def test_truncation_with_a_forged_record(key: MailboxPrivateKey, three: Three) -> None:
    # Cut at a chunk boundary and make the clear-text record agree: the chunk now claimed
    # to be final was sealed as not final.
    _, chunks, sealed = three
    forged = msgspec.structs.replace(
        sealed,
        chunk_count=2,
        size=2 * PLAIN_CHUNK,
        sealed_size=len(chunks[0]) + len(chunks[1]),
    )
    assert "chunk 1" in str(corrupt(key, forged, chunks[:2]))


def test_reordered_chunks(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    assert "chunk 0" in str(corrupt(key, sealed, [chunks[1], chunks[0], chunks[2]]))
    assert "chunk 1" in str(corrupt(key, sealed, [chunks[0], chunks[2], chunks[1]]))


def test_repeated_and_extra_chunks(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    assert "chunk 1" in str(corrupt(key, sealed, [chunks[0], chunks[0], chunks[2]]))
    assert "chunk 3" in str(corrupt(key, sealed, [*chunks, chunks[2]]))


def test_chunk_from_another_message_with_the_same_key(key: MailboxPrivateKey, three: Three) -> None:
    plaintext, chunks, sealed = three
    # Same mailbox, same key, same message id even, same plaintext: only the data key differs.
    others, _ = seal(key, plaintext)
    for index in range(3):
        tampered = [*chunks]
        tampered[index] = others[index]
        assert f"chunk {index}" in str(corrupt(key, sealed, tampered))


def test_wrapped_key_swapped_between_messages(key: MailboxPrivateKey) -> None:
    chunks, sealed = seal(key, b"first", message_id=MESSAGE)
    other_chunks, other = seal(key, b"second", message_id=OTHER_MESSAGE)
    # The other message's key, wholesale, under this message's id: HPKE's info refuses.
    swapped = msgspec.structs.replace(sealed, wrapped_key=other.wrapped_key)
    assert "message key" in str(corrupt(key, swapped, other_chunks))
    assert "message key" in str(corrupt(key, swapped, chunks))


def test_envelope_swapped_between_messages(key: MailboxPrivateKey) -> None:
    chunks, sealed = seal(key, b"first")
    _, other = seal(key, b"first")
    swapped = msgspec.structs.replace(sealed, envelope=other.envelope)
    assert "envelope" in str(corrupt(key, swapped, chunks))


def test_flipped_byte_in_wrapped_key_or_envelope(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    for field in ("wrapped_key", "envelope"):
        value = getattr(sealed, field)
        for offset in (0, len(value) // 2, len(value) - 1):
            damaged = bytearray(value)
            damaged[offset] ^= 1
            corrupt(key, msgspec.structs.replace(sealed, **{field: bytes(damaged)}), chunks)


@pytest.mark.parametrize(
    "change",
    [
        {"chunk_count": 2},
        {"chunk_count": 4},
        {"size": 2 * PLAIN_CHUNK + 4999},
        {"size": 2 * PLAIN_CHUNK + 5001},
        {"sealed_size": -1},
        {"sealed_size": 0},
        {"key_id": bytes(16)},
        {"key_id": b"short"},
        {"envelope": b""},
    ],
)
def test_forged_record_fields(
    key: MailboxPrivateKey, three: Three, change: dict[str, object]
) -> None:
    _, chunks, sealed = three
    corrupt(key, msgspec.structs.replace(sealed, **change), chunks)


def test_sealed_size_must_match(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    forged = msgspec.structs.replace(sealed, sealed_size=sealed.sealed_size + 1)
    assert "chunk 2" in str(corrupt(key, forged, chunks))


def test_wrong_mailbox_or_message_id(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    corrupt(key, sealed, chunks, mailbox_id=OTHER_MAILBOX)
    corrupt(key, sealed, chunks, message_id=OTHER_MESSAGE)


def test_wrong_private_key(
    key: MailboxPrivateKey,
    other_key: MailboxPrivateKey,
    three: Three,
) -> None:
    _, chunks, sealed = three
    assert "sealed to key" in str(corrupt(other_key, sealed, chunks))
    # Even with the key id forged to match, the HPKE decapsulation fails.
    forged = msgspec.structs.replace(sealed, key_id=other_key.key_id)
    assert "message key" in str(corrupt(other_key, forged, chunks))


def test_opener_stays_failed(key: MailboxPrivateKey, three: Three) -> None:
    _, chunks, sealed = three
    opener = MessageOpener(key, MAILBOX, MESSAGE, sealed)
    with pytest.raises(MessageCorrupt):
        opener.open_chunk(chunks[1])
    with pytest.raises(MessageCorrupt):
        opener.open_chunk(chunks[0])  # the right chunk, but too late
    with pytest.raises(MessageCorrupt):
        opener.finish()
    with pytest.raises(MessageCorrupt):
        opener.meta()


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_damage_is_message_corrupt(
    key: MailboxPrivateKey, three: Three, data: st.DataObject
) -> None:
    _, chunks, sealed = three
    tampered = [*chunks]
    index = data.draw(st.integers(0, len(chunks) - 1))
    chunk = bytearray(tampered[index])
    action = data.draw(st.sampled_from(["flip", "replace", "insert", "delete"]))
    offset = data.draw(st.integers(0, len(chunk) - 1))
    if action == "flip":
        chunk[offset] ^= data.draw(st.integers(1, 255))
    elif action == "replace":
        chunk[offset:] = data.draw(st.binary(max_size=64))
    elif action == "insert":
        chunk[offset:offset] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del chunk[offset : offset + data.draw(st.integers(1, 64))]
    tampered[index] = bytes(chunk)
    corrupt(key, sealed, tampered)


# -- hostile sealers -----------------------------------------------------------------------


def test_zstd_bomb_is_refused(key: MailboxPrivateKey) -> None:
    # Anyone with the public key can seal, so a validly authenticated chunk may still be a
    # decompression bomb: 256 MiB of zeros is about 8 KB of zstd.
    sealer = MessageSealer(key.public_key(), MAILBOX, MESSAGE)
    _, sealed = sealer.finish(b"")
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    bomb = bytearray()
    for _ in range(256):
        bomb += compressor.compress(bytes(1024 * 1024))
    bomb += compressor.flush()
    assert len(bomb) < 20_000
    chunk = sealer._aead.encrypt(_NONCE.pack(0x01, 0, True), bytes(bomb), sealer._aad)
    forged = msgspec.structs.replace(sealed, size=PLAIN_CHUNK, sealed_size=len(chunk))

    opener = MessageOpener(key, MAILBOX, MESSAGE, forged)
    tracemalloc.start()
    try:
        with pytest.raises(MessageCorrupt, match="chunk 0: decompresses to more than"):
            opener.open_chunk(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_short_non_final_chunk_is_refused(key: MailboxPrivateKey) -> None:
    # A hostile sealer flushes early: chunk 0 then holds fewer than PLAIN_CHUNK octets.
    sealer = MessageSealer(key.public_key(), MAILBOX, MESSAGE)
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    first = compressor.compress(b"a" * 100) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    second = compressor.compress(b"b" * (PLAIN_CHUNK + 1 - 100)) + compressor.flush()
    chunks = [
        sealer._aead.encrypt(_NONCE.pack(0x01, 0, False), first, sealer._aad),
        sealer._aead.encrypt(_NONCE.pack(0x01, 1, True), second, sealer._aad),
    ]
    _, sealed = sealer.finish(b"")
    forged = msgspec.structs.replace(
        sealed, chunk_count=2, size=PLAIN_CHUNK + 1, sealed_size=sum(map(len, chunks))
    )
    assert "chunk 0: decompresses to 100 octets" in str(corrupt(key, forged, chunks))


def test_envelope_size_must_match_record(key: MailboxPrivateKey) -> None:
    _, sealed = seal(key, b"")
    forged = msgspec.structs.replace(sealed, size=1)
    opener = MessageOpener(key, MAILBOX, MESSAGE, forged)
    with pytest.raises(MessageCorrupt, match="envelope"):
        opener.meta()


# -- memory --------------------------------------------------------------------------------

BIG = 100 * 1024 * 1024
PIECE = 64 * 1024


def pieces(seed: int) -> Iterator[bytes]:
    """100 MiB of mail-like data, 64 KiB at a time, never all in memory."""
    rng = random.Random(seed)
    text = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n" * 600
    for index in range(BIG // PIECE):
        if index % 2:
            yield rng.randbytes(PIECE)
        else:
            yield text[: PIECE // 2] + rng.randbytes(PIECE // 2)


@pytest.mark.slow
def test_memory_stays_bounded_for_100_mib(key: MailboxPrivateKey, tmp_path: Path) -> None:
    limit = 8 * 1024 * 1024
    store = tmp_path / "chunks"
    lengths: list[int] = []
    expected = hashlib.sha256()

    tracemalloc.start()
    try:
        with store.open("wb", buffering=0) as out:
            sealer = MessageSealer(key.public_key(), MAILBOX, MESSAGE)
            for piece in pieces(seed=100):
                expected.update(piece)
                for chunk in sealer.feed(piece):
                    lengths.append(len(chunk))
                    out.write(chunk)
            last, sealed = sealer.finish(META)
            lengths.append(len(last))
            out.write(last)
            del sealer, last
        _, seal_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        got = hashlib.sha256()
        with store.open("rb", buffering=0) as source:
            opener = MessageOpener(key, MAILBOX, MESSAGE, sealed)
            assert opener.meta() == META
            for length in lengths:
                got.update(opener.open_chunk(source.read(length)))
            opener.finish()
        _, open_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert sealed.size == BIG
    assert sealed.chunk_count == len(lengths) == BIG // PLAIN_CHUNK
    assert got.digest() == expected.digest()
    assert seal_peak < limit, seal_peak
    assert open_peak < limit, open_peak
