"""Mailbox keys, and the sealing and opening of messages. Pure functions: no I/O.

:mod:`._keys` holds the hybrid post-quantum key pair of each mailbox and its password-wrapped
key file, :mod:`._seal` seals each message to a mailbox key in chunks as it arrives, and
:mod:`._password` generates the passwords. Argon2id and large seals are CPU-bound: callers run
them in worker threads.
"""

from __future__ import annotations

from ._errors import CryptoError, KeyFileCorrupt, MessageCorrupt, WrongPassword
from ._keys import (
    DEFAULT_KDF,
    ID_SIZE,
    KEY_ID_SIZE,
    MAX_ITERATIONS,
    MAX_LANES,
    MAX_MEMORY_KIB,
    MAX_PASSWORD_BYTES,
    MIN_ITERATIONS,
    MIN_MEMORY_KIB,
    PRIVATE_KEY_SIZE,
    PUBLIC_KEY_SIZE,
    KdfParams,
    KeyFile,
    MailboxPrivateKey,
    MailboxPublicKey,
    create_mailbox_key,
    decode_key_file,
    encode_key_file,
    rewrap,
    unlock,
)
from ._password import PasswordHash, check_password, generate_password, hash_password
from ._seal import (
    MAX_META,
    PLAIN_CHUNK,
    MessageOpener,
    MessageSealer,
    PreparedKey,
    SealedMessage,
    open_message,
    prepare_keys,
    seal_message,
)

__all__ = [
    "DEFAULT_KDF",
    "ID_SIZE",
    "KEY_ID_SIZE",
    "MAX_ITERATIONS",
    "MAX_LANES",
    "MAX_MEMORY_KIB",
    "MAX_META",
    "MAX_PASSWORD_BYTES",
    "MIN_ITERATIONS",
    "MIN_MEMORY_KIB",
    "PLAIN_CHUNK",
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "CryptoError",
    "KdfParams",
    "KeyFile",
    "KeyFileCorrupt",
    "MailboxPrivateKey",
    "MailboxPublicKey",
    "MessageCorrupt",
    "MessageOpener",
    "MessageSealer",
    "PasswordHash",
    "PreparedKey",
    "SealedMessage",
    "WrongPassword",
    "check_password",
    "create_mailbox_key",
    "decode_key_file",
    "encode_key_file",
    "generate_password",
    "hash_password",
    "open_message",
    "prepare_keys",
    "rewrap",
    "seal_message",
    "unlock",
]
