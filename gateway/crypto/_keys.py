"""Mailbox key pairs and the password-protected key file.

Theory of operation
-------------------
Every mailbox has one hybrid post-quantum key pair for RFC 9180 HPKE with the suite
ML-KEM-768 + X25519 / HKDF-SHA256 / AES-256-GCM (:data:`SUITE`). Mail is sealed to the public
key on arrival (:mod:`gateway.crypto._seal`); only the holder of the mailbox password can
recover the private key and read it back.

Raw formats::

    private key material (96 bytes) = ML-KEM-768 seed (64) || X25519 private key (32)
    public key           (1216 bytes) = ML-KEM-768 public key (1184) || X25519 public key (32)
    key_id               (16 bytes)   = SHA-256(public key)[:16]

The key file keeps the public key in the clear and the private key material wrapped::

    KEK     = Argon2id(password UTF-8, salt, KdfParams, length 32, ad "mag/keyfile/v1")
    AAD     = "mag/keyfile/v1" || mailbox_id || key_id || public key
    wrapped = AES-256-GCM(KEK, nonce, material, AAD)

The AAD binds the wrapped key to its mailbox and to its public key: a key file copied into
another mailbox, or a public key swapped under a wrapped private key, does not open.

On disk (:func:`encode_key_file`)::

    "MAGKEY1\\n" || msgpack(KeyFile) || SHA-256(msgpack(KeyFile))

The checksum is not a security measure (the GCM tag is); it tells a damaged file
(:class:`KeyFileCorrupt`, an incident) apart from a wrong password (:class:`WrongPassword`, a
typo), which GCM alone cannot do.

A password change (:func:`rewrap`) keeps the key pair, so every stored message stays
readable; only salt, nonce, KDF parameters and the wrapped bytes change.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ._errors import KeyFileCorrupt, WrongPassword

__all__ = [
    "DEFAULT_KDF",
    "ID_SIZE",
    "KEY_FILE_VERSION",
    "KEY_ID_SIZE",
    "MAX_ITERATIONS",
    "MAX_LANES",
    "MAX_MEMORY_KIB",
    "MAX_PASSWORD_BYTES",
    "MIN_ITERATIONS",
    "MIN_MEMORY_KIB",
    "PRIVATE_KEY_SIZE",
    "PUBLIC_KEY_SIZE",
    "SUITE",
    "KdfParams",
    "KeyFile",
    "MailboxPrivateKey",
    "MailboxPublicKey",
    "check_id",
    "create_mailbox_key",
    "decode_key_file",
    "encode_key_file",
    "rewrap",
    "unlock",
]

SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

ID_SIZE = 16  # mailbox and message ids are 16 raw bytes (32 hex characters elsewhere)
KEY_ID_SIZE = 16
_MLKEM_SEED_SIZE = 64  # FIPS 203 seed form (d || z): the compact, canonical private key
_MLKEM_PUBLIC_SIZE = 1184
_X25519_SIZE = 32
PRIVATE_KEY_SIZE = _MLKEM_SEED_SIZE + _X25519_SIZE  # 96
PUBLIC_KEY_SIZE = _MLKEM_PUBLIC_SIZE + _X25519_SIZE  # 1216

KEY_FILE_VERSION = 1
_MAGIC = b"MAGKEY1\n"
_DOMAIN = b"mag/keyfile/v1"
_CHECKSUM_SIZE = 32
_SALT_SIZE = 16
_NONCE_SIZE = 12  # AES-GCM's native nonce size; random is safe, one wrap per salt
_TAG_SIZE = 16
_KEK_SIZE = 32
# A version 1 key file is about 1.5 KB; anything far larger is not one, and refusing it
# early keeps a hostile file from making msgspec allocate.
_MAX_KEY_FILE_SIZE = 64 * 1024

# Passwords are generated (150 bits, see _password.py) but a user may choose one on a
# change; the cap keeps Argon2's input bounded and is far above any sane passphrase.
MAX_PASSWORD_BYTES = 1024

# Argon2 limits. RFC 9106 requires memory >= 8 * lanes KiB. The ceiling keeps a hostile or
# damaged key file or credentials file from tying up the machine: its parameters are read
# before anything else is checked, so a file asking for more is refused as corrupt before
# Argon2id runs (1 GiB, 16 passes, 16 lanes: 16, 5 and 4 times the defaults).
MAX_MEMORY_KIB = 1024 * 1024
MAX_ITERATIONS = 16
MAX_LANES = 16
# The floor for new wraps in production (OWASP's minimum for Argon2id: 19 MiB, 2 passes),
# which the configuration enforces (SPEC.md 5.1 and 10). KdfParams itself accepts less, so
# the test suite can run at 64 KiB and one pass, and so files made under an older, weaker
# configuration stay readable (a password change re-wraps them with the configured cost).
MIN_MEMORY_KIB = 19 * 1024
MIN_ITERATIONS = 2


class KdfParams(msgspec.Struct, frozen=True):
    """Argon2id cost parameters. The defaults are RFC 9106's second recommended option
    (64 MiB, 3 passes, 4 lanes): about 0.1 s on one server core pair, per unlock."""

    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 4

    def validate(self) -> None:
        """Raise ValueError unless every parameter is within the supported range (RFC 9106's
        minimum up to the ceiling): what any key file or stored hash must satisfy."""
        _check_int("lanes", self.lanes, 1, MAX_LANES)
        _check_int("iterations", self.iterations, 1, MAX_ITERATIONS)
        _check_int("memory_kib", self.memory_kib, 8 * self.lanes, MAX_MEMORY_KIB)

    def validate_for_production(self) -> None:
        """As :meth:`validate`, and at least the production floor (19 MiB, 2 passes): what
        the configuration accepts for new wraps."""
        self.validate()
        _check_int("memory_kib", self.memory_kib, MIN_MEMORY_KIB, MAX_MEMORY_KIB)
        _check_int("iterations", self.iterations, MIN_ITERATIONS, MAX_ITERATIONS)


DEFAULT_KDF = KdfParams()


class KeyFile(msgspec.Struct, frozen=True):
    """One mailbox's key file: the public key in the clear, the private key wrapped under a
    key derived from the mailbox password. Field sizes are fixed for version 1."""

    version: int
    mailbox_id: bytes
    key_id: bytes
    public_key: bytes
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    wrapped: bytes

    def __repr__(self) -> str:
        # The wrapped key is what an offline password guesser needs; keep it out of logs.
        return (
            f"KeyFile(version={self.version}, mailbox_id={self.mailbox_id.hex()}, "
            f"key_id={self.key_id.hex()}, kdf={self.kdf!r})"
        )


class _VersionOnly(msgspec.Struct):
    # Read first, so a file from a newer gateway says "version 2" rather than failing to
    # decode as version 1.
    version: int


_encoder = msgspec.msgpack.Encoder()
_version_decoder = msgspec.msgpack.Decoder(_VersionOnly)
_key_file_decoder = msgspec.msgpack.Decoder(KeyFile)


# -- key objects ---------------------------------------------------------------------------


class MailboxPublicKey:
    """A mailbox's public key: what the gateway seals incoming mail to."""

    __slots__ = ("_hpke", "_key_id", "_raw")

    def __init__(self, public_bytes: bytes) -> None:
        """Parse the 1216-byte raw public key; ValueError if it is malformed."""
        if not isinstance(public_bytes, bytes) or len(public_bytes) != PUBLIC_KEY_SIZE:
            raise ValueError(f"a mailbox public key is {PUBLIC_KEY_SIZE} bytes")
        mlkem_part = mlkem.MLKEM768PublicKey.from_public_bytes(public_bytes[:_MLKEM_PUBLIC_SIZE])
        x25519_part = x25519.X25519PublicKey.from_public_bytes(public_bytes[_MLKEM_PUBLIC_SIZE:])
        self._hpke = hpke.MLKEM768X25519PublicKey(mlkem_part, x25519_part)
        self._raw = public_bytes
        self._key_id = _key_id(public_bytes)

    @classmethod
    def from_key_file(cls, kf: KeyFile) -> MailboxPublicKey:
        """The public key of a key file; KeyFileCorrupt if the file is inconsistent."""
        _raise_if_invalid(kf)
        return cls(kf.public_key)

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PublicKey:
        return self._hpke

    @property
    def public_bytes(self) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MailboxPublicKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"MailboxPublicKey(key_id={self._key_id.hex()})"


class MailboxPrivateKey:
    """An unlocked mailbox private key. Lives in memory only while a session needs it."""

    __slots__ = ("_hpke", "_mlkem", "_public", "_x25519")

    def __init__(
        self, mlkem_key: mlkem.MLKEM768PrivateKey, x25519_key: x25519.X25519PrivateKey
    ) -> None:
        self._mlkem = mlkem_key
        self._x25519 = x25519_key
        self._hpke = hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
        self._public = MailboxPublicKey(
            mlkem_key.public_key().public_bytes_raw() + x25519_key.public_key().public_bytes_raw()
        )

    @classmethod
    def generate(cls) -> MailboxPrivateKey:
        return cls(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @classmethod
    def _from_material(cls, material: bytes) -> MailboxPrivateKey:
        return cls(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(material[:_MLKEM_SEED_SIZE]),
            x25519.X25519PrivateKey.from_private_bytes(material[_MLKEM_SEED_SIZE:]),
        )

    def _material(self) -> bytes:
        return self._mlkem.private_bytes_raw() + self._x25519.private_bytes_raw()

    @property
    def key_id(self) -> bytes:
        return self._public.key_id

    @property
    def hpke_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return self._hpke

    def public_key(self) -> MailboxPublicKey:
        return self._public

    def __repr__(self) -> str:
        return f"MailboxPrivateKey(key_id={self.key_id.hex()})"


# -- key file lifecycle --------------------------------------------------------------------


def create_mailbox_key(mailbox_id: bytes, password: str, kdf: KdfParams = DEFAULT_KDF) -> KeyFile:
    """Generate a fresh key pair for a mailbox and wrap it under ``password``."""
    check_id("mailbox_id", mailbox_id)
    password_bytes = _password_bytes(password)
    kdf.validate()
    key = MailboxPrivateKey.generate()
    return _wrap(key._material(), mailbox_id, key.public_key().public_bytes, password_bytes, kdf)


def unlock(kf: KeyFile, mailbox_id: bytes, password: str) -> MailboxPrivateKey:
    """Recover the private key. WrongPassword if the password does not open the file,
    KeyFileCorrupt if the file is damaged or belongs to another mailbox."""
    material = _unwrap(kf, mailbox_id, password)
    return _check_material(material, kf)


def rewrap(
    kf: KeyFile,
    mailbox_id: bytes,
    old_password: str,
    new_password: str,
    kdf: KdfParams | None = None,
) -> KeyFile:
    """The same key pair (same key_id) under a new password, with fresh salt and nonce;
    ``kdf`` None keeps the file's parameters. WrongPassword if ``old_password`` is wrong."""
    new_password_bytes = _password_bytes(new_password)
    new_kdf = kf.kdf if kdf is None else kdf
    new_kdf.validate()
    material = _unwrap(kf, mailbox_id, old_password)
    # Never re-wrap a pair that does not match: the new file would look healthy.
    _check_material(material, kf)
    return _wrap(material, mailbox_id, kf.public_key, new_password_bytes, new_kdf)


def encode_key_file(kf: KeyFile) -> bytes:
    """The on-disk form: magic, msgpack body, SHA-256 of the body."""
    problem = _key_file_problem(kf)
    if problem is not None:
        raise ValueError(f"refusing to encode an invalid key file: {problem}")
    body = _encoder.encode(kf)
    return _MAGIC + body + hashlib.sha256(body).digest()


def decode_key_file(data: bytes) -> KeyFile:
    """Parse and check a key file; KeyFileCorrupt, with the reason, if anything is off."""
    data = bytes(data)
    if len(data) > _MAX_KEY_FILE_SIZE:
        raise KeyFileCorrupt(f"key file is {len(data)} bytes, far larger than a key file")
    if len(data) < len(_MAGIC) + _CHECKSUM_SIZE + 1 and _MAGIC.startswith(data[: len(_MAGIC)]):
        raise KeyFileCorrupt(f"key file truncated ({len(data)} bytes)")
    if not data.startswith(_MAGIC):
        raise KeyFileCorrupt("not a gateway key file (bad magic)")
    body, checksum = data[len(_MAGIC) : -_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), checksum):
        raise KeyFileCorrupt("key file checksum mismatch: the file is damaged or truncated")
    try:
        version = _version_decoder.decode(body).version
    except msgspec.DecodeError as exc:
        raise KeyFileCorrupt(f"key file body does not decode: {exc}") from None
    if version != KEY_FILE_VERSION:
        raise KeyFileCorrupt(f"key file version {version} is not supported (expected 1)")
    try:
        kf = _key_file_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise KeyFileCorrupt(f"key file body does not decode: {exc}") from None
    _raise_if_invalid(kf)
    return kf


# -- helpers -------------------------------------------------------------------------------


def check_id(name: str, value: bytes) -> None:
    """Mailbox and message ids are exactly 16 raw bytes; ValueError otherwise."""
    if not isinstance(value, bytes) or len(value) != ID_SIZE:
        raise ValueError(f"{name} must be {ID_SIZE} bytes")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    # bool is an int to Python but never a sensible cost parameter.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"Argon2 {name} must be an integer in {low}..{high}, not {value!r}")


def _password_bytes(password: str) -> bytes:
    if not isinstance(password, str):
        raise TypeError("password must be a str")
    # UnicodeEncodeError (lone surrogates) is a ValueError, as the caller expects.
    encoded = password.encode("utf-8")
    if not 1 <= len(encoded) <= MAX_PASSWORD_BYTES:
        raise ValueError(f"a password is 1 to {MAX_PASSWORD_BYTES} bytes of UTF-8")
    return encoded


def _key_id(public_bytes: bytes) -> bytes:
    return hashlib.sha256(public_bytes).digest()[:KEY_ID_SIZE]


def _aad(mailbox_id: bytes, key_id: bytes, public_key: bytes) -> bytes:
    return _DOMAIN + mailbox_id + key_id + public_key


# One Argon2id at a time in this process. cryptography 50 (OpenSSL 4.0) hangs for good when
# two threads derive at once with lanes > 1 (seen with 2 to 4 lanes, 4 to 64 MiB, on 2 cores);
# with lanes > 1 one derivation already keeps the cores busy, so the lock costs no throughput.
_ARGON2_LOCK = threading.Lock()


def argon2id(secret: bytes, salt: bytes, kdf: KdfParams, *, length: int, ad: bytes) -> bytes:
    """Argon2id with the given cost parameters; ``ad`` separates the uses (key-file KEKs,
    the admin password's hash) so one output can never stand in for another. Serialized
    process-wide (see ``_ARGON2_LOCK``)."""
    with _ARGON2_LOCK:
        return _argon2id(secret, salt, kdf, length, ad)


def _argon2id(secret: bytes, salt: bytes, kdf: KdfParams, length: int, ad: bytes) -> bytes:
    return Argon2id(
        salt=salt,
        length=length,
        iterations=kdf.iterations,
        lanes=kdf.lanes,
        memory_cost=kdf.memory_kib,
        ad=ad,
    ).derive(secret)


def _kek(password_bytes: bytes, salt: bytes, kdf: KdfParams) -> bytes:
    return argon2id(password_bytes, salt, kdf, length=_KEK_SIZE, ad=_DOMAIN)


def _wrap(
    material: bytes, mailbox_id: bytes, public_key: bytes, password_bytes: bytes, kdf: KdfParams
) -> KeyFile:
    key_id = _key_id(public_key)
    salt = os.urandom(_SALT_SIZE)
    nonce = os.urandom(_NONCE_SIZE)
    kek = _kek(password_bytes, salt, kdf)
    wrapped = AESGCM(kek).encrypt(nonce, material, _aad(mailbox_id, key_id, public_key))
    return KeyFile(
        version=KEY_FILE_VERSION,
        mailbox_id=mailbox_id,
        key_id=key_id,
        public_key=public_key,
        kdf=kdf,
        salt=salt,
        nonce=nonce,
        wrapped=wrapped,
    )


def _unwrap(kf: KeyFile, mailbox_id: bytes, password: str) -> bytes:
    """The 96 bytes of private key material. Python cannot wipe ``bytes``; callers keep the
    result for as short a time as they can."""
    password_bytes = _password_bytes(password)
    check_id("mailbox_id", mailbox_id)
    _raise_if_invalid(kf)
    # Public information, so checking it before Argon2 leaks nothing about the password.
    if not hmac.compare_digest(kf.mailbox_id, mailbox_id):
        raise KeyFileCorrupt(
            f"key file belongs to mailbox {kf.mailbox_id.hex()}, not {mailbox_id.hex()}"
        )
    # From here the work is the same whether the password is right or wrong: Argon2 always
    # runs in full, and GCM's verdict is the only branch.
    kek = _kek(password_bytes, kf.salt, kf.kdf)
    try:
        return AESGCM(kek).decrypt(kf.nonce, kf.wrapped, _aad(mailbox_id, kf.key_id, kf.public_key))
    except InvalidTag:
        raise WrongPassword("wrong password for this mailbox key") from None


def _check_material(material: bytes, kf: KeyFile) -> MailboxPrivateKey:
    if len(material) != PRIVATE_KEY_SIZE:
        raise KeyFileCorrupt(f"wrapped key is {len(material)} bytes, not {PRIVATE_KEY_SIZE}")
    key = MailboxPrivateKey._from_material(material)
    if not hmac.compare_digest(key.public_key().public_bytes, kf.public_key):
        raise KeyFileCorrupt("the wrapped private key does not match the file's public key")
    return key


def _raise_if_invalid(kf: KeyFile) -> None:
    problem = _key_file_problem(kf)
    if problem is not None:
        raise KeyFileCorrupt(problem)


def _key_file_problem(kf: KeyFile) -> str | None:
    """What is structurally wrong with a key file, or None. Cheap: no Argon2, no GCM."""
    if kf.version != KEY_FILE_VERSION:
        return f"key file version {kf.version} is not supported (expected 1)"
    sizes = (
        ("mailbox_id", kf.mailbox_id, ID_SIZE),
        ("key_id", kf.key_id, KEY_ID_SIZE),
        ("public_key", kf.public_key, PUBLIC_KEY_SIZE),
        ("salt", kf.salt, _SALT_SIZE),
        ("nonce", kf.nonce, _NONCE_SIZE),
        ("wrapped", kf.wrapped, PRIVATE_KEY_SIZE + _TAG_SIZE),
    )
    for name, value, size in sizes:
        if not isinstance(value, bytes) or len(value) != size:
            return f"key file field {name} must be {size} bytes"
    if not isinstance(kf.kdf, KdfParams):
        return "key file KDF parameters are missing"
    try:
        kf.kdf.validate()
    except ValueError as exc:
        return f"key file KDF parameters out of range: {exc}"
    if not hmac.compare_digest(_key_id(kf.public_key), kf.key_id):
        return "key file key_id does not match its public key"
    try:
        MailboxPublicKey(kf.public_key)
    except ValueError:
        return "key file public key is not a valid ML-KEM-768 + X25519 key"
    return None
