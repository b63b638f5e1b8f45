"""Mailbox key pairs, key files, passwords (gateway.crypto._keys and _password)."""

from __future__ import annotations

import hashlib
import os
import re
import threading

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.crypto import (
    PUBLIC_KEY_SIZE,
    CryptoError,
    KdfParams,
    KeyFile,
    KeyFileCorrupt,
    MailboxPrivateKey,
    MailboxPublicKey,
    WrongPassword,
    create_mailbox_key,
    decode_key_file,
    encode_key_file,
    generate_password,
    open_message,
    rewrap,
    seal_message,
    unlock,
)
from gateway.crypto._keys import _wrap

# Argon2 at its cheapest, so the tests measure logic, not the KDF.
FAST = KdfParams(memory_kib=1024, iterations=1, lanes=1)
MAILBOX = bytes.fromhex("a1" * 16)
OTHER_MAILBOX = bytes.fromhex("b2" * 16)
PASSWORD = "correct horse battery staple"
MAGIC = b"MAGKEY1\n"


@pytest.fixture(scope="module")
def key_file() -> KeyFile:
    return create_mailbox_key(MAILBOX, PASSWORD, FAST)


@pytest.fixture(scope="module")
def encoded(key_file: KeyFile) -> bytes:
    return encode_key_file(key_file)


def reframe(body: bytes) -> bytes:
    """A key file with a valid checksum around any body: reaches the checks after it."""
    return MAGIC + body + hashlib.sha256(body).digest()


def reframe_struct(kf: KeyFile) -> bytes:
    return reframe(msgspec.msgpack.encode(kf))


# -- round trips ---------------------------------------------------------------------------


def test_create_unlock_round_trip(key_file: KeyFile, encoded: bytes) -> None:
    assert encoded.startswith(MAGIC)
    decoded = decode_key_file(encoded)
    assert decoded == key_file
    assert decoded.version == 1
    assert decoded.mailbox_id == MAILBOX
    assert len(decoded.public_key) == PUBLIC_KEY_SIZE
    assert decoded.key_id == hashlib.sha256(decoded.public_key).digest()[:16]
    assert len(decoded.salt) == 16
    assert len(decoded.nonce) == 12
    assert decoded.kdf == FAST

    key = unlock(decoded, MAILBOX, PASSWORD)
    assert key.key_id == decoded.key_id
    assert key.public_key() == MailboxPublicKey.from_key_file(decoded)
    assert key.public_key().public_bytes == decoded.public_key

    # The unlocked key opens what was sealed to the file's public key.
    public = MailboxPublicKey.from_key_file(decoded)
    message_id = os.urandom(16)
    chunks, sealed = seal_message(public, MAILBOX, message_id, b"hello", b"meta")
    assert open_message(key, MAILBOX, message_id, sealed, chunks) == (b"meta", b"hello")


def test_default_kdf_round_trip() -> None:
    kf = create_mailbox_key(MAILBOX, PASSWORD)
    assert kf.kdf == KdfParams(memory_kib=65536, iterations=3, lanes=4)
    assert unlock(decode_key_file(encode_key_file(kf)), MAILBOX, PASSWORD).key_id == kf.key_id
    with pytest.raises(WrongPassword):
        unlock(kf, MAILBOX, PASSWORD + "!")


def test_each_key_is_fresh() -> None:
    first = create_mailbox_key(MAILBOX, PASSWORD, FAST)
    second = create_mailbox_key(MAILBOX, PASSWORD, FAST)
    assert first.key_id != second.key_id
    assert first.salt != second.salt


def test_wrong_password(key_file: KeyFile) -> None:
    for wrong in ("Correct horse battery staple", "x", PASSWORD + " ", "\u00e9" * 100):
        with pytest.raises(WrongPassword) as info:
            unlock(key_file, MAILBOX, wrong)
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__


def test_unicode_password_round_trip() -> None:
    password = "p\u00e4ssw\u00f6rd \U0001f511"
    kf = create_mailbox_key(MAILBOX, password, FAST)
    assert unlock(kf, MAILBOX, password).key_id == kf.key_id


def test_rewrap_keeps_the_key_pair(key_file: KeyFile) -> None:
    public = MailboxPublicKey.from_key_file(key_file)
    message_id = os.urandom(16)
    chunks, sealed = seal_message(public, MAILBOX, message_id, b"old mail" * 1000, b"env")

    new_password = generate_password()
    new_file = rewrap(key_file, MAILBOX, PASSWORD, new_password)
    assert new_file.key_id == key_file.key_id
    assert new_file.public_key == key_file.public_key
    assert new_file.kdf == key_file.kdf
    assert new_file.salt != key_file.salt
    assert new_file.nonce != key_file.nonce
    assert new_file.wrapped != key_file.wrapped

    new_file = decode_key_file(encode_key_file(new_file))
    key = unlock(new_file, MAILBOX, new_password)
    assert open_message(key, MAILBOX, message_id, sealed, chunks) == (b"env", b"old mail" * 1000)
    with pytest.raises(WrongPassword):
        unlock(new_file, MAILBOX, PASSWORD)
    # The old file still opens with the old password: rewrap is not an in-place change.
    assert unlock(key_file, MAILBOX, PASSWORD).key_id == key_file.key_id


def test_rewrap_with_new_kdf(key_file: KeyFile) -> None:
    stronger = KdfParams(memory_kib=2048, iterations=2, lanes=2)
    new_file = rewrap(key_file, MAILBOX, PASSWORD, "new", stronger)
    assert new_file.kdf == stronger
    assert unlock(new_file, MAILBOX, "new").key_id == key_file.key_id


def test_rewrap_with_wrong_old_password(key_file: KeyFile) -> None:
    with pytest.raises(WrongPassword):
        rewrap(key_file, MAILBOX, "not it", "new")


def test_rewrap_into_another_mailbox_is_refused(key_file: KeyFile) -> None:
    with pytest.raises(KeyFileCorrupt):
        rewrap(key_file, OTHER_MAILBOX, PASSWORD, "new")


# -- binding to mailbox and public key -----------------------------------------------------


def test_unlock_with_another_mailbox_id(key_file: KeyFile) -> None:
    with pytest.raises(KeyFileCorrupt, match="belongs to mailbox"):
        unlock(key_file, OTHER_MAILBOX, PASSWORD)


def test_key_file_moved_to_another_mailbox_does_not_open(key_file: KeyFile) -> None:
    # Someone edits the mailbox id inside the file and fixes the checksum: the AAD still
    # names the original mailbox, so GCM refuses.
    moved = decode_key_file(
        reframe_struct(msgspec.structs.replace(key_file, mailbox_id=OTHER_MAILBOX))
    )
    with pytest.raises(WrongPassword):
        unlock(moved, OTHER_MAILBOX, PASSWORD)


def test_public_key_swap_does_not_open(key_file: KeyFile) -> None:
    # An attacker who can write the key file puts their own public key in (so mail would be
    # sealed to them) and keeps the victim's wrapped private key: the file must not unlock.
    attacker = MailboxPrivateKey.generate().public_key()
    swapped = msgspec.structs.replace(
        key_file, public_key=attacker.public_bytes, key_id=attacker.key_id
    )
    with pytest.raises(WrongPassword):
        unlock(decode_key_file(reframe_struct(swapped)), MAILBOX, PASSWORD)


# -- corruption ----------------------------------------------------------------------------


def test_every_single_byte_flip_is_detected(encoded: bytes) -> None:
    assert 1400 < len(encoded) < 1700
    for offset in range(len(encoded)):
        for mask in (0x01, 0x80):
            damaged = bytearray(encoded)
            damaged[offset] ^= mask
            with pytest.raises(KeyFileCorrupt):
                decode_key_file(bytes(damaged))


def test_every_truncation_is_detected(encoded: bytes) -> None:
    for length in range(len(encoded)):
        with pytest.raises(KeyFileCorrupt):
            decode_key_file(encoded[:length])


def test_trailing_bytes_are_detected(encoded: bytes) -> None:
    with pytest.raises(KeyFileCorrupt):
        decode_key_file(encoded + b"\n")


def test_messages_say_what_is_wrong(encoded: bytes, key_file: KeyFile) -> None:
    with pytest.raises(KeyFileCorrupt, match="magic"):
        decode_key_file(b"-----BEGIN PRIVATE KEY-----\n" + encoded)
    with pytest.raises(KeyFileCorrupt, match="checksum"):
        decode_key_file(encoded[:-1] + bytes([encoded[-1] ^ 1]))
    with pytest.raises(KeyFileCorrupt, match="truncated"):
        decode_key_file(MAGIC[:5])
    with pytest.raises(KeyFileCorrupt, match="does not decode"):
        decode_key_file(reframe(b"\xc1 not msgpack"))
    with pytest.raises(KeyFileCorrupt, match="version 2"):
        decode_key_file(reframe(msgspec.msgpack.encode({"version": 2, "future": "field"})))
    with pytest.raises(KeyFileCorrupt, match="version 2"):
        decode_key_file(reframe_struct(msgspec.structs.replace(key_file, version=2)))
    with pytest.raises(KeyFileCorrupt, match="salt"):
        decode_key_file(reframe_struct(msgspec.structs.replace(key_file, salt=b"short")))
    with pytest.raises(KeyFileCorrupt, match="key_id"):
        decode_key_file(reframe_struct(msgspec.structs.replace(key_file, key_id=bytes(16))))
    bad_kdf = KdfParams(memory_kib=1024, iterations=0, lanes=1)
    with pytest.raises(KeyFileCorrupt, match="KDF"):
        decode_key_file(reframe_struct(msgspec.structs.replace(key_file, kdf=bad_kdf)))


def test_corrupt_is_not_wrong_password() -> None:
    # The whole point of the checksum: callers tell users "wrong password" only when it is.
    assert not issubclass(KeyFileCorrupt, WrongPassword)
    assert not issubclass(WrongPassword, KeyFileCorrupt)
    assert issubclass(KeyFileCorrupt, CryptoError)
    assert issubclass(WrongPassword, CryptoError)


def test_wrapped_key_for_another_public_key_is_corrupt(key_file: KeyFile) -> None:
    # A key file whose wrapped private key does not match its public key (made by a buggy
    # or hostile writer who knew the password) is corrupt, not a wrong password.
    other = create_mailbox_key(MAILBOX, PASSWORD, FAST)
    material = unlock(other, MAILBOX, PASSWORD)._material()
    mismatched = _wrap(material, MAILBOX, key_file.public_key, PASSWORD.encode(), FAST)
    with pytest.raises(KeyFileCorrupt, match="does not match"):
        unlock(mismatched, MAILBOX, PASSWORD)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    with pytest.raises(KeyFileCorrupt):
        decode_key_file(data)
    with pytest.raises(KeyFileCorrupt):
        decode_key_file(MAGIC + data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_arbitrary_body_with_valid_checksum(body: bytes) -> None:
    with pytest.raises(KeyFileCorrupt):
        decode_key_file(reframe(body))


# -- argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize("password", ["", "x" * 1025, "\u00e9" * 513, "\ud800"])
def test_bad_passwords_are_refused(password: str) -> None:
    with pytest.raises(ValueError, match=r"password|surrogate"):
        create_mailbox_key(MAILBOX, password, FAST)


def test_bad_passwords_are_refused_everywhere(key_file: KeyFile) -> None:
    with pytest.raises(ValueError, match="password"):
        unlock(key_file, MAILBOX, "")
    with pytest.raises(ValueError, match="password"):
        rewrap(key_file, MAILBOX, PASSWORD, "")
    with pytest.raises(ValueError, match="password"):
        rewrap(key_file, MAILBOX, "y" * 2000, "new")


def test_longest_password() -> None:
    password = "\u00e9" * 512  # 1024 bytes of UTF-8
    kf = create_mailbox_key(MAILBOX, password, FAST)
    assert unlock(kf, MAILBOX, password).key_id == kf.key_id


@pytest.mark.parametrize(
    "kdf",
    [
        KdfParams(memory_kib=7, iterations=1, lanes=1),
        KdfParams(memory_kib=31, iterations=1, lanes=4),
        KdfParams(memory_kib=1024 * 1024 + 1, iterations=1, lanes=1),
        KdfParams(memory_kib=1024, iterations=0, lanes=1),
        KdfParams(memory_kib=1024, iterations=17, lanes=1),
        KdfParams(memory_kib=1024, iterations=1, lanes=0),
        KdfParams(memory_kib=1024, iterations=1, lanes=17),
        KdfParams(memory_kib=1024, iterations=True, lanes=1),
    ],
)
def test_bad_kdf_params_are_refused(kdf: KdfParams, key_file: KeyFile) -> None:
    with pytest.raises(ValueError, match="Argon2"):
        kdf.validate()
    with pytest.raises(ValueError, match="Argon2"):
        create_mailbox_key(MAILBOX, PASSWORD, kdf)
    with pytest.raises(ValueError, match="Argon2"):
        rewrap(key_file, MAILBOX, PASSWORD, "new", kdf)


def test_kdf_bounds_are_inclusive() -> None:
    KdfParams(memory_kib=8, iterations=1, lanes=1).validate()
    KdfParams(memory_kib=1024 * 1024, iterations=16, lanes=16).validate()
    KdfParams(memory_kib=8 * 16, iterations=1, lanes=16).validate()


@pytest.mark.parametrize("mailbox_id", [b"", bytes(15), bytes(17), "a1" * 16])
def test_bad_mailbox_ids_are_refused(mailbox_id: bytes, key_file: KeyFile) -> None:
    with pytest.raises(ValueError, match="mailbox_id"):
        create_mailbox_key(mailbox_id, PASSWORD, FAST)
    with pytest.raises(ValueError, match="mailbox_id"):
        unlock(key_file, mailbox_id, PASSWORD)


def test_encode_refuses_an_invalid_key_file(key_file: KeyFile) -> None:
    with pytest.raises(ValueError, match="nonce"):
        encode_key_file(msgspec.structs.replace(key_file, nonce=b""))


def test_public_key_parsing() -> None:
    with pytest.raises(ValueError, match="1216"):
        MailboxPublicKey(bytes(100))
    key = MailboxPrivateKey.generate().public_key()
    assert MailboxPublicKey(key.public_bytes) == key
    assert hash(MailboxPublicKey(key.public_bytes)) == hash(key)


# -- no key bytes in reprs -----------------------------------------------------------------


def test_reprs_hold_no_key_material(key_file: KeyFile) -> None:
    key = unlock(key_file, MAILBOX, PASSWORD)
    material = key._material()
    for text in (repr(key), repr(key.public_key()), repr(key_file), str(key_file)):
        assert key_file.key_id.hex() in text
        for secret in (material, material[:16], material[64:80], key_file.wrapped):
            assert secret.hex() not in text
            assert repr(secret)[2:-1] not in text
        assert key_file.public_key[:16].hex() not in text


# -- passwords -----------------------------------------------------------------------------

PASSWORD_FORMAT = re.compile(r"[2-9a-kmnp-z]{5}(-[2-9a-kmnp-z]{5}){5}")


def test_generated_password_format() -> None:
    passwords = {generate_password() for _ in range(1000)}
    assert len(passwords) == 1000
    for password in passwords:
        assert PASSWORD_FORMAT.fullmatch(password), password
        assert not set(password) & set("0O1lI")
    # Every symbol of the 32 shows up in 30,000 draws (each is missing with p ~ 1e-400).
    assert len(set("".join(passwords).replace("-", ""))) == 32


def test_generated_password_unlocks() -> None:
    password = generate_password()
    kf = create_mailbox_key(MAILBOX, password, FAST)
    assert unlock(kf, MAILBOX, password).key_id == kf.key_id


def test_concurrent_argon2_with_several_lanes_does_not_hang() -> None:
    """cryptography 50 hangs when two threads run Argon2id with lanes > 1 at once; the
    gateway serializes its derivations. Four threads, four lanes, each must finish."""
    kdf = KdfParams(memory_kib=4096, iterations=1, lanes=4)
    mailbox = bytes(range(16))
    key = create_mailbox_key(mailbox, "a password for four lanes", kdf)
    done: list[int] = []

    def work(i: int) -> None:
        unlock(key, mailbox, "a password for four lanes")
        done.append(i)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(done) == [0, 1, 2, 3]
