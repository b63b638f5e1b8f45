"""What the admin account keeps outside the control log, and the token digests it keeps in it
(SPEC.md 13.2). Pure functions on bytes; :mod:`.accounts` does the I/O through ``DataDir``.

* ``<data>/admin/password``: the Argon2id hash of the current admin password, under the
  random ``credential_id`` the control log names. Never in the log: the log is published to
  audit subscribers and kept forever, so a hash there could be guessed against offline for
  good, old passwords included.
* Token digests: ``HMAC-SHA256(token key, domain NUL kind NUL id NUL SHA-256(secret))``, which
  the log does record. Without the token key (``<data>/admin/token-key``) a digest confirms
  nothing; with it, a 256-bit secret still cannot be found. Over SHA-256 of the secret so
  that the SHA-256 digests of an earlier version's file can be keyed without their secrets.
* ``<data>/admin/credentials``: the account file of earlier versions, read once to migrate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime
from pathlib import Path

import msgspec

from ..crypto import PasswordHash

__all__ = [
    "API",
    "SESSION",
    "TOKEN_KEY_BYTES",
    "LegacyToken",
    "decode_legacy_credentials",
    "decode_verifier",
    "encode_verifier",
    "new_id",
    "new_secret",
    "secret_sha256",
    "token_digest",
    "verifier_credential_id",
]

API, SESSION = "gwt", "gws"  # token prefixes, and the kinds their digests are bound to
TOKEN_KEY_BYTES = 32
_DIGEST_DOMAIN = b"mag/admin-token/v1"
_VERIFIER_VERSION = 1


def new_id() -> str:
    """16 random hex characters: the id of a verifier (no function of its password), a session
    or a token."""
    return secrets.token_hex(8)


def new_secret() -> str:
    """A token's secret part: 256 random bits, 43 base64url characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def secret_sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def token_digest(key: bytes, kind: str, token_id: str, secret_sha256: bytes) -> bytes:
    """The digest the control log keeps of a token of ``kind`` (API or SESSION)."""
    message = b"\0".join((_DIGEST_DOMAIN, kind.encode(), token_id.encode(), secret_sha256))
    return hmac.new(key, message, hashlib.sha256).digest()


class _Verifier(msgspec.Struct, frozen=True, kw_only=True):
    version: int = _VERIFIER_VERSION
    credential_id: str
    password: PasswordHash


class LegacyToken(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    name: str
    digest: bytes  # SHA-256 of the secret part
    created_at: datetime
    expires_at: datetime | None = None


class _LegacyCredentials(msgspec.Struct, kw_only=True):
    version: int = 1
    password: PasswordHash
    tokens: list[LegacyToken] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_verifier_decoder = msgspec.msgpack.Decoder(_Verifier)
_legacy_decoder = msgspec.msgpack.Decoder(_LegacyCredentials)


def encode_verifier(credential_id: str, password: PasswordHash) -> bytes:
    return _encoder.encode(_Verifier(credential_id=credential_id, password=password))


def verifier_credential_id(raw: bytes) -> str | None:
    """The credential id a verifier file is for (None if unreadable): what ``gateway verify``
    checks against the log without looking at the hash."""
    try:
        return _verifier_decoder.decode(raw).credential_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def decode_verifier(path: Path, raw: bytes, credential_id: str) -> PasswordHash:
    """The hash in the verifier file at ``path``, which must be ``credential_id``'s and
    within the KDF ceiling (checked before any Argon2id). Raises ValueError."""
    try:
        verifier = _verifier_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: unreadable: {exc}") from None
    if verifier.credential_id != credential_id:
        raise ValueError(
            f"{path} holds verifier {verifier.credential_id!r} but the control log names "
            f"{credential_id!r} (a file from another time or another data folder); remove it "
            "and start again to set a new admin password"
        )
    return _validated(path, verifier.password)


def decode_legacy_credentials(path: Path, raw: bytes) -> tuple[PasswordHash, list[LegacyToken]]:
    """An earlier version's account file: its hash (checked as a verifier's) and tokens.
    Raises ValueError."""
    try:
        credentials = _legacy_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path}: unreadable: {exc}") from None
    return _validated(path, credentials.password), credentials.tokens


def _validated(path: Path, password: PasswordHash) -> PasswordHash:
    try:
        password.validate()
    except ValueError as exc:
        # Before any Argon2id: a file asking for 4 GiB must not get it.
        raise ValueError(f"{path}: refused as damaged or tampered with: {exc}") from None
    return password
