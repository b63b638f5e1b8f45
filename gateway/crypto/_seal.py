"""Sealing and opening of one message: compress, cut into chunks, encrypt (STREAM).

Theory of operation
-------------------
Each message gets a fresh random 32-byte data key, sealed to the mailbox public key with
HPKE (RFC 9180, base mode)::

    wrapped_key = HPKE.Seal(public key, info = "mag/msg-key/v1" || mailbox_id || message_id,
                            data key)

The body is compressed as ONE zstd frame, so the compressor's window spans the whole message,
but after every :data:`PLAIN_CHUNK` octets of plaintext the compressor is flushed to a block
boundary and everything it produced for that stretch is sealed as one ciphertext chunk. Chunk
``i`` therefore decompresses, given chunks ``0..i-1``, to exactly ``PLAIN_CHUNK`` octets; only
the final chunk may be shorter (and is empty for an empty message, which still has exactly
one chunk). Both sides hold one chunk at a time, whatever the message size.

Chunks are sealed with AES-256-GCM under the data key in the STREAM construction (Hoang,
Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its Nonce-Reuse
Misuse-Resistance", 2015)::

    nonce = domain (1) || 00 00 || counter (u64 big-endian) || last (1)
    AAD   = "mag/msg/v1" || mailbox_id || message_id

with domain 0x01 for body chunks and 0x02 for the envelope. The counter catches reordering
and dropped chunks, the last flag catches truncation at a chunk boundary, the fresh data key
per message catches chunks swapped in from another message, and the AAD (and the HPKE info)
catch a message filed under another mailbox or message id.

The envelope is sealed under the same key with nonce (0x02, 0, last)::

    envelope = AES-GCM(zstd(msgpack([size, SHA-256(plaintext), meta])))

It carries the caller's opaque ``meta`` and lets :meth:`MessageOpener.finish` check the whole
plaintext end to end. What a :class:`SealedMessage` keeps in the clear (key id, chunk count,
sizes) is only trusted after it has been checked against the sealed data.

Decompression is bounded: the key that authenticates a chunk is chosen by whoever sealed it,
and anyone holding the public key can seal, so a chunk could be a zstd bomb (an RLE block
expands 32768-fold). Output goes through a sink that refuses more than the chunk's expected
size, and the decoder's window is capped.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
from collections.abc import Iterable
from typing import IO, cast

import msgspec
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import MessageCorrupt
from ._keys import KEY_ID_SIZE, SUITE, MailboxPrivateKey, MailboxPublicKey, check_id

__all__ = [
    "MAX_META",
    "PLAIN_CHUNK",
    "MessageOpener",
    "MessageSealer",
    "PreparedKey",
    "SealedMessage",
    "open_message",
    "prepare_keys",
    "seal_message",
]

PLAIN_CHUNK = 256 * 1024  # plaintext octets per chunk: bounds memory on both sides
# The envelope metadata (sender, recipients, ...) is opened in one piece, so it is capped;
# a journal report with ten thousand recipients is well under one MiB.
MAX_META = 16 * 1024 * 1024

_DATA_KEY_BITS = 256
_DATA_KEY_SIZE = 32
_TAG_SIZE = 16
_DIGEST_SIZE = 32
_BODY = 0x01
_ENVELOPE = 0x02
_MESSAGE_DOMAIN = b"mag/msg/v1"
_KEY_DOMAIN = b"mag/msg-key/v1"
_NONCE = struct.Struct(">B2xQB")  # domain, two zero octets, counter, last flag: 12 octets
_LEVEL = 3
# zstd level 3 uses a 2 MiB window for a stream of unknown size; a hostile frame header may
# ask for up to 2 GiB, so cap what the decoder will allocate.
_MAX_WINDOW = 8 * 1024 * 1024
# The decoder's output buffer. It must exceed PLAIN_CHUNK by at least one zstd block (128
# KiB): then decoding a genuine chunk never fills it, so no output is left behind in the
# decoder when the chunk's input runs out (python-zstandard's stream_writer does not drain).
_WRITE_SIZE = 2 * PLAIN_CHUNK
# msgpack of [size, digest, meta] adds at most 1 + 9 + 34 + 5 octets to meta.
_ENVELOPE_LIMIT = MAX_META + 64


class SealedMessage(msgspec.Struct, frozen=True):
    """Everything besides the ciphertext chunks that is needed to open a message."""

    key_id: bytes  # the mailbox key the data key is sealed to
    wrapped_key: bytes  # HPKE encapsulation || sealed data key
    envelope: bytes  # sealed [size, SHA-256, meta]
    chunk_count: int
    size: int  # plaintext octets
    sealed_size: int  # sum of the ciphertext chunk lengths

    def __repr__(self) -> str:
        return (
            f"SealedMessage(key_id={self.key_id.hex()}, chunk_count={self.chunk_count}, "
            f"size={self.size}, sealed_size={self.sealed_size})"
        )


# Creating a zstd context costs more than compressing a 10 KiB message with it, so contexts
# are reused: each sealer takes one from this pool and gives it back when it finishes (an
# abandoned sealer's context is simply collected). A context serves one frame at a time;
# starting a new frame resets it, so reuse does not change a single output byte.
_pool: list[zstandard.ZstdCompressor] = []
_POOL_LIMIT = 64
_local = threading.local()


def _take_compressor() -> zstandard.ZstdCompressor:
    try:
        return _pool.pop()
    except IndexError:
        return zstandard.ZstdCompressor(level=_LEVEL)


def _give_back_compressor(context: zstandard.ZstdCompressor) -> None:
    if len(_pool) < _POOL_LIMIT:
        _pool.append(context)


def _envelope_compressor() -> zstandard.ZstdCompressor:
    context: zstandard.ZstdCompressor | None = getattr(_local, "envelope", None)
    if context is None:
        context = _local.envelope = zstandard.ZstdCompressor(level=_LEVEL)
    return context


class PreparedKey(msgspec.Struct, frozen=True):
    """A message's data key, made and sealed to the mailbox key ahead of the message.
    Secret: it never leaves memory (SPEC.md 5.3, "Prepared keys")."""

    key_id: bytes
    mailbox_id: bytes
    message_id: bytes
    data_key: bytes
    wrapped_key: bytes

    def __repr__(self) -> str:
        return f"PreparedKey(key_id={self.key_id.hex()}, message_id={self.message_id.hex()})"


def _prepare(public_key: MailboxPublicKey, mailbox_id: bytes, message_id: bytes) -> PreparedKey:
    data_key = AESGCM.generate_key(bit_length=_DATA_KEY_BITS)
    wrapped = SUITE.encrypt(
        data_key, public_key.hpke_key, info=_KEY_DOMAIN + mailbox_id + message_id
    )
    return PreparedKey(public_key.key_id, mailbox_id, message_id, data_key, wrapped)


def prepare_keys(public_key: MailboxPublicKey, mailbox_id: bytes, count: int) -> list[PreparedKey]:
    """Make ``count`` data keys for new messages of a mailbox, each with a fresh random message
    id, sealed to the mailbox key exactly as :class:`MessageSealer` would."""
    check_id("mailbox_id", mailbox_id)
    return [_prepare(public_key, mailbox_id, secrets.token_bytes(16)) for _ in range(count)]


def _check_meta(meta: bytes) -> None:
    if not isinstance(meta, bytes):
        raise TypeError("meta must be bytes")
    if len(meta) > MAX_META:
        raise ValueError(f"meta is {len(meta)} octets; at most {MAX_META} can be sealed")


class MessageSealer:
    """Seal one message as it arrives: :meth:`feed` any number of pieces, then
    :meth:`finish` (or its two halves: :meth:`finish_content`, which seals the final chunk,
    then :meth:`seal_envelope`, when the envelope is known only later). Not thread-safe; one
    message per instance."""

    __slots__ = (
        "_aad",
        "_aead",
        "_compressor",
        "_context",
        "_count",
        "_done",
        "_ended",
        "_fill",
        "_hash",
        "_key_id",
        "_pending",
        "_sealed_size",
        "_size",
        "_wrapped_key",
    )

    def __init__(
        self,
        public_key: MailboxPublicKey,
        mailbox_id: bytes,
        message_id: bytes,
        *,
        prepared: PreparedKey | None = None,
    ) -> None:
        """``prepared``: a data key made ahead by :func:`prepare_keys` for exactly this
        mailbox key and message id (the HPKE step is the costly part of sealing)."""
        check_id("mailbox_id", mailbox_id)
        check_id("message_id", message_id)
        if prepared is None:
            prepared = _prepare(public_key, mailbox_id, message_id)
        elif (prepared.key_id, prepared.mailbox_id, prepared.message_id) != (
            public_key.key_id,
            mailbox_id,
            message_id,
        ):
            raise ValueError("the prepared key belongs to another mailbox key or message")
        data_key = prepared.data_key
        self._wrapped_key = prepared.wrapped_key
        self._aead = AESGCM(data_key)
        self._aad = _MESSAGE_DOMAIN + mailbox_id + message_id
        self._key_id = public_key.key_id
        self._context = _take_compressor()
        self._compressor = self._context.compressobj()
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []  # compressor output for the open chunk
        self._fill = 0  # plaintext octets in the open chunk
        self._size = 0
        self._count = 0  # chunks sealed so far
        self._sealed_size = 0
        self._done = False  # no more content
        self._ended = False  # the envelope is sealed too

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add plaintext; return the ciphertext chunks completed by it, in order (usually
        none or one)."""
        if self._done:
            raise RuntimeError("this message is already finished")
        chunks: list[bytes] = []
        # The views are released on return, so a caller's bytearray is not left exported.
        with memoryview(data) as raw, raw.cast("B") as view:
            try:
                pos = 0
                while pos < len(view):
                    if self._fill == PLAIN_CHUNK:
                        # A full chunk is sealed only once more plaintext arrives: only then
                        # is it known not to be the last, and a message of exactly
                        # k * PLAIN_CHUNK octets has k chunks, not k + 1 with an empty one.
                        tail = self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                        chunks.append(self._seal_chunk(tail, last=False))
                    take = min(PLAIN_CHUNK - self._fill, len(view) - pos)
                    with view[pos : pos + take] as piece:
                        self._hash.update(piece)
                        produced = self._compressor.compress(piece)
                    if produced:
                        self._pending.append(produced)
                    self._fill += take
                    self._size += take
                    pos += take
            except BaseException:
                # The chunks sealed above are lost with the exception; the message cannot
                # be completed consistently any more.
                self._done = True
                raise
        return chunks

    def finish(self, meta: bytes) -> tuple[bytes, SealedMessage]:
        """Seal the final chunk and the envelope carrying ``meta``. Returns the final
        ciphertext chunk and the record needed to open the message."""
        _check_meta(meta)
        last = self.finish_content()
        return last, self.seal_envelope(meta)

    def finish_content(self) -> bytes:
        """Seal and return the final ciphertext chunk; no more content may follow."""
        if self._done:
            raise RuntimeError("this message is already finished")
        self._done = True
        last = self._seal_chunk(
            self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH), last=True
        )
        _give_back_compressor(self._context)
        return last

    def seal_envelope(self, meta: bytes) -> SealedMessage:
        """After :meth:`finish_content`: seal the envelope carrying ``meta``; the record
        needed to open the message."""
        if not self._done or self._ended:
            raise RuntimeError("seal_envelope comes once, after finish_content")
        _check_meta(meta)
        self._ended = True
        plain = _encoder.encode((self._size, self._hash.digest(), meta))
        # One-shot compression records the content size in the frame header, which the
        # opener checks before it lets the decoder allocate.
        compressed = _envelope_compressor().compress(plain)
        envelope = self._aead.encrypt(_NONCE.pack(_ENVELOPE, 0, True), compressed, self._aad)
        return SealedMessage(
            key_id=self._key_id,
            wrapped_key=self._wrapped_key,
            envelope=envelope,
            chunk_count=self._count,
            size=self._size,
            sealed_size=self._sealed_size,
        )

    def _seal_chunk(self, tail: bytes, *, last: bool) -> bytes:
        self._pending.append(tail)
        compressed = b"".join(self._pending)
        self._pending.clear()
        chunk = self._aead.encrypt(_NONCE.pack(_BODY, self._count, last), compressed, self._aad)
        self._count += 1
        self._sealed_size += len(chunk)
        self._fill = 0
        return chunk


class MessageOpener:
    """Open one sealed message: :meth:`meta` at any time, :meth:`open_chunk` for each
    ciphertext chunk in order, then :meth:`finish`, which is what vouches for the whole.
    Plaintext handed out before :meth:`finish` returns is not yet known to be complete.

    Any failure raises :class:`MessageCorrupt` and leaves the opener unusable."""

    __slots__ = (
        "_aad",
        "_aead",
        "_decoder",
        "_envelope",
        "_failed",
        "_finished",
        "_hash",
        "_next",
        "_opened_size",
        "_sealed",
        "_sealed_seen",
        "_sink",
    )

    def __init__(
        self,
        private_key: MailboxPrivateKey,
        mailbox_id: bytes,
        message_id: bytes,
        sealed: SealedMessage,
    ) -> None:
        check_id("mailbox_id", mailbox_id)
        check_id("message_id", message_id)
        problem = _sealed_problem(sealed)
        if problem is not None:
            raise MessageCorrupt(problem)
        if not hmac.compare_digest(sealed.key_id, private_key.key_id):
            raise MessageCorrupt(
                f"message is sealed to key {sealed.key_id.hex()}, "
                f"not to this mailbox key {private_key.key_id.hex()}"
            )
        try:
            data_key = SUITE.decrypt(
                sealed.wrapped_key,
                private_key.hpke_key,
                info=_KEY_DOMAIN + mailbox_id + message_id,
            )
        except (InvalidTag, ValueError):
            raise MessageCorrupt(
                "message key does not open: damaged, or filed under another mailbox or message id"
            ) from None
        if len(data_key) != _DATA_KEY_SIZE:
            raise MessageCorrupt(f"message key is {len(data_key)} octets, not {_DATA_KEY_SIZE}")
        self._sealed = sealed
        self._aead = AESGCM(data_key)
        self._aad = _MESSAGE_DOMAIN + mailbox_id + message_id
        self._sink = _BoundedSink()
        self._decoder = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).stream_writer(
            cast(IO[bytes], self._sink), write_size=_WRITE_SIZE
        )
        self._hash = hashlib.sha256()
        self._envelope: tuple[int, bytes, bytes] | None = None
        self._next = 0  # index of the next chunk expected
        self._opened_size = 0
        self._sealed_seen = 0
        self._failed = False
        self._finished = False

    def meta(self) -> bytes:
        """The caller's ``meta`` from the sealed envelope."""
        return self._open_envelope()[2]

    def open_chunk(self, ct: bytes) -> bytes:
        """Open the next chunk; returns its plaintext (at most PLAIN_CHUNK octets)."""
        self._check_usable()
        index = self._next
        count = self._sealed.chunk_count
        if index >= count:
            raise self._corrupt(f"chunk {index}: the message has only {count} chunks")
        last = index == count - 1
        try:
            compressed = self._aead.decrypt(_NONCE.pack(_BODY, index, last), ct, self._aad)
        except InvalidTag:
            hint = "is not the final chunk" if last else "belongs elsewhere"
            raise self._corrupt(
                f"chunk {index} of {count}: authentication failed "
                f"(damaged, out of order, from another message, or {hint})"
            ) from None
        expected = PLAIN_CHUNK if not last else self._sealed.size - index * PLAIN_CHUNK
        self._sink.limit = expected
        try:
            self._decoder.write(compressed)
        except _Overflow:
            raise self._corrupt(
                f"chunk {index}: decompresses to more than {expected} octets"
            ) from None
        except zstandard.ZstdError as exc:
            raise self._corrupt(f"chunk {index}: invalid compressed data ({exc})") from None
        piece = self._sink.take()
        if len(piece) != expected:
            raise self._corrupt(
                f"chunk {index}: decompresses to {len(piece)} octets, expected {expected}"
            )
        self._hash.update(piece)
        self._next += 1
        self._opened_size += len(piece)
        self._sealed_seen += len(ct)
        return piece

    def finish(self) -> None:
        """Check that the message was opened completely and exactly as it was sealed."""
        self._check_usable()
        count = self._sealed.chunk_count
        if self._next != count:
            raise self._corrupt(
                f"chunk {self._next}: missing; {self._next} of {count} chunks were opened"
            )
        size, digest, _meta = self._open_envelope()
        if self._opened_size != size:
            raise self._corrupt(
                f"chunk {count - 1}: message opened to {self._opened_size} octets, "
                f"the envelope records {size}"
            )
        if not hmac.compare_digest(self._hash.digest(), digest):
            raise self._corrupt(f"chunk {count - 1}: SHA-256 of the plaintext does not match")
        if self._sealed_seen != self._sealed.sealed_size:
            raise self._corrupt(
                f"chunk {count - 1}: ciphertext totals {self._sealed_seen} octets, "
                f"the record says {self._sealed.sealed_size}"
            )
        self._finished = True

    def _open_envelope(self) -> tuple[int, bytes, bytes]:
        if self._envelope is not None:
            return self._envelope
        if self._failed:
            raise MessageCorrupt("this message already failed to open")
        try:
            compressed = self._aead.decrypt(
                _NONCE.pack(_ENVELOPE, 0, True), self._sealed.envelope, self._aad
            )
        except InvalidTag:
            raise self._corrupt("envelope: authentication failed") from None
        try:
            # A one-shot frame states its size; checking it first bounds the allocation.
            declared = zstandard.frame_content_size(compressed)
            if not 0 <= declared <= _ENVELOPE_LIMIT:
                raise self._corrupt(f"envelope: declared size {declared} is out of range")
            plain = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW).decompress(
                compressed, allow_extra_data=False
            )
            size, digest, meta = _envelope_decoder.decode(plain)
        except (zstandard.ZstdError, msgspec.DecodeError) as exc:
            raise self._corrupt(f"envelope: does not decode ({exc})") from None
        if len(digest) != _DIGEST_SIZE or size != self._sealed.size:
            raise self._corrupt(
                f"envelope: records {size} octets, the message record says {self._sealed.size}"
            )
        self._envelope = (size, digest, meta)
        return self._envelope

    def _check_usable(self) -> None:
        if self._finished:
            raise RuntimeError("this message is already finished")
        if self._failed:
            raise MessageCorrupt(f"chunk {self._next}: this message already failed to open")

    def _corrupt(self, message: str) -> MessageCorrupt:
        self._failed = True
        return MessageCorrupt(message)


def seal_message(
    public_key: MailboxPublicKey,
    mailbox_id: bytes,
    message_id: bytes,
    plaintext: bytes,
    meta: bytes,
) -> tuple[list[bytes], SealedMessage]:
    """Seal a message held in memory at once; returns (ciphertext chunks, record)."""
    sealer = MessageSealer(public_key, mailbox_id, message_id)
    chunks = sealer.feed(plaintext)
    last, sealed = sealer.finish(meta)
    chunks.append(last)
    return chunks, sealed


def open_message(
    private_key: MailboxPrivateKey,
    mailbox_id: bytes,
    message_id: bytes,
    sealed: SealedMessage,
    chunks: Iterable[bytes],
) -> tuple[bytes, bytes]:
    """Open a whole message at once; returns (meta, plaintext)."""
    opener = MessageOpener(private_key, mailbox_id, message_id, sealed)
    meta = opener.meta()
    plaintext = b"".join([opener.open_chunk(chunk) for chunk in chunks])
    opener.finish()
    return meta, plaintext


# -- internals -----------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(tuple[int, bytes, bytes])


class _Overflow(Exception):
    """Raised by the sink, through the zstd decoder, when a chunk expands too far."""


class _BoundedSink:
    """The file a zstd stream_writer writes decompressed output to: keeps at most ``limit``
    octets and stops the decoder with _Overflow beyond that."""

    __slots__ = ("_parts", "_size", "limit")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.limit = 0

    def write(self, data: bytes) -> int:
        self._size += len(data)
        if self._size > self.limit:
            self._parts.clear()
            raise _Overflow
        self._parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return data


def _chunks_for(size: int) -> int:
    # An empty message still has one (final, empty) chunk.
    return max(1, -(-size // PLAIN_CHUNK))


def _sealed_problem(sealed: SealedMessage) -> str | None:
    """What is inconsistent in a SealedMessage, before any key is used; None if nothing."""
    for name in ("key_id", "wrapped_key", "envelope"):
        if not isinstance(getattr(sealed, name), bytes):
            return f"message record field {name} must be bytes"
    for name in ("chunk_count", "size", "sealed_size"):
        value = getattr(sealed, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"message record field {name} must be a non-negative integer"
    if len(sealed.key_id) != KEY_ID_SIZE:
        return f"message record key_id must be {KEY_ID_SIZE} octets"
    if len(sealed.envelope) < _TAG_SIZE:
        return "message record envelope is truncated"
    if sealed.chunk_count != _chunks_for(sealed.size):
        return (
            f"message record has {sealed.chunk_count} chunks, "
            f"but {sealed.size} octets take {_chunks_for(sealed.size)}"
        )
    if sealed.sealed_size < _TAG_SIZE * sealed.chunk_count:
        return f"message record sealed_size {sealed.sealed_size} is too small"
    return None
