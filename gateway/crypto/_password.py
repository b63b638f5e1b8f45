"""Passwords: mailbox passwords generated once and shown once, and the admin password's hash.

Theory of operation
-------------------
The password is the only way to the mailbox private key, so it is generated rather than
chosen: 30 symbols drawn with :mod:`secrets` from a 32-symbol alphabet (5 bits each, 150
bits in all), in six groups of five joined by ``-`` so a person can read it out and type it
back. The alphabet is lowercase letters and digits without the look-alikes ``0 o 1 l`` (and
there is no uppercase, so no ``O`` or ``I``): what is written down is what is typed.

The admin password (which opens no key, only the API) is kept as an Argon2id hash: a random
16-byte salt, the cost parameters and 32 bytes of output, with its own associated data so a
hash can never stand in for a key-file KEK or the reverse.
"""

from __future__ import annotations

import hmac
import secrets

import msgspec

from ._keys import KdfParams, _password_bytes, argon2id

__all__ = ["PasswordHash", "check_password", "generate_password", "hash_password"]

_ADMIN_DOMAIN = b"mag/admin-password/v1"
_SALT_SIZE = 16
_HASH_SIZE = 32

_SYMBOLS = "23456789abcdefghijkmnpqrstuvwxyz"
_GROUPS = 6
_GROUP_SIZE = 5

assert len(_SYMBOLS) == len(set(_SYMBOLS)) == 32  # 5 bits per symbol


def generate_password() -> str:
    """A fresh random password such as ``k7m2q-9xw4t-...``: 150 bits of entropy."""
    return "-".join(
        "".join(secrets.choice(_SYMBOLS) for _ in range(_GROUP_SIZE)) for _ in range(_GROUPS)
    )


class PasswordHash(msgspec.Struct, frozen=True, kw_only=True):
    salt: bytes
    digest: bytes
    kdf: KdfParams

    def validate(self) -> None:
        """Raise ValueError unless sizes and KDF parameters are in range (a hash read from a
        file is checked before its Argon2id parameters are ever used)."""
        if len(self.salt) != _SALT_SIZE or len(self.digest) != _HASH_SIZE:
            raise ValueError(f"salt and digest must be {_SALT_SIZE} and {_HASH_SIZE} bytes")
        self.kdf.validate()


def _argon2(password: str, salt: bytes, kdf: KdfParams) -> bytes:
    kdf.validate()
    return argon2id(_password_bytes(password), salt, kdf, length=_HASH_SIZE, ad=_ADMIN_DOMAIN)


def hash_password(password: str, kdf: KdfParams) -> PasswordHash:
    """Argon2id of a password under a fresh salt. CPU-bound: call from a worker thread.
    Raises ValueError for an empty or over-long password."""
    salt = secrets.token_bytes(_SALT_SIZE)
    return PasswordHash(salt=salt, digest=_argon2(password, salt, kdf), kdf=kdf)


def check_password(password: str, stored: PasswordHash) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant-time compare)."""
    try:
        candidate = _argon2(password, stored.salt, stored.kdf)
    except (TypeError, ValueError):
        return False
    return hmac.compare_digest(candidate, stored.digest)
