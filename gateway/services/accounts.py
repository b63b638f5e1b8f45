"""Who may use the admin API: the admin account, API tokens, session tokens, login throttling.

Theory of operation
-------------------
One admin account, whose password is kept as an Argon2id hash in ``<data>/admin/credentials``
(SPEC.md 13.2), beside the API tokens' SHA-256 digests. On first start the account is made
with a password from ``GATEWAY_ADMIN_PASSWORD``, a file the config names, or a fresh random one
that the caller shows once: on a terminal, or where standard output would reach a journal or a
log, in ``<data>/admin/initial-password`` (:func:`write_initial_password`, mode 0600), which
the first successful password login (or password change) deletes. The credentials file holds
no secret anyone can use: a hash to guess against (Argon2id makes that slow) and digests of
256-bit random tokens (which cannot be guessed).

Logging in with the password returns a session token: random, kept only in memory (as its
digest), valid for ``session_ttl`` seconds, gone on restart. API tokens are for scripts: made
and revoked through the API, optionally expiring, and survive restarts. A token is
``gwt_<16 hex id>_<43 base64url secret>``; the id finds it, the secret proves it.

Failed logins are answered slowly (``failure_delay``) and counted per client address: after
``max_failures`` in a row an address is refused outright for a lockout that doubles with
every further failure (up to 15 minutes), so guessing the password over the API costs days
per million tries even before Argon2id. Every attempt is audited by the caller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import trio

from ..crypto import KdfParams, PasswordHash, check_password, generate_password, hash_password
from ..events import now
from ..log import DataDir
from .throttle import LoginThrottle

__all__ = [
    "Accounts",
    "LoginRefused",
    "Principal",
    "StoredToken",
    "initial_password_path",
    "write_initial_password",
]

logger = logging.getLogger("gateway")

_FILE_VERSION = 1


def initial_password_path(data_root: Path) -> Path:
    """Where a generated first admin password is left when no terminal can show it."""
    return data_root / "admin" / "initial-password"


def write_initial_password(data_root: Path, password: str) -> Path:
    """Write the generated first admin password to a new file only the gateway's user can
    read (created exclusively, mode 0600, never through a symlink), durably; returns its
    path. A file left by an earlier first start (whose account is gone) is replaced."""
    path = initial_password_path(data_root)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        path.unlink()
        fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(password.encode() + b"\n")
        file.flush()
        os.fsync(file.fileno())
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


class StoredToken(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    name: str
    digest: bytes  # SHA-256 of the secret part
    created_at: datetime
    expires_at: datetime | None = None


class _Credentials(msgspec.Struct, kw_only=True):
    version: int = _FILE_VERSION
    password: PasswordHash
    tokens: list[StoredToken] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Credentials)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection is logged in as: the admin (by password or session token) or an API
    token, and until when."""

    kind: str  # "admin" or "token"
    name: str  # "admin", or the token's name
    token_id: str = ""  # the API token's id
    session_digest: bytes = b""  # the session token's digest
    expires_at: datetime | None = None

    @property
    def label(self) -> str:
        return "admin" if self.kind == "admin" else f"token:{self.name}"


class LoginRefused(Exception):
    """A login failed. ``throttled`` with ``retry_after`` when the address is locked out."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(slots=True)
class Accounts:
    data: DataDir
    kdf: KdfParams
    session_ttl: float = 8 * 3600.0
    failure_delay: float = 1.0
    max_failures: int = 5
    _credentials: _Credentials | None = None
    _sessions: dict[bytes, Principal] = field(default_factory=dict)
    _throttle: LoginThrottle = field(default_factory=LoginThrottle)
    _lock: trio.Lock = field(default_factory=trio.Lock)
    # Set (and replaced) whenever a credential may have ended: a logout, a revoked token, a
    # password change. Connections wait on it to cut off what their login was allowed.
    _changed: trio.Event = field(default_factory=trio.Event)
    _initial_password_gone: bool = False  # initial-password removed (or never there)

    def __post_init__(self) -> None:
        self._throttle = LoginThrottle(max_failures=self.max_failures)

    # -- the account ---------------------------------------------------------------------------

    async def load_or_create(self, initial_password: str | None) -> tuple[bool, str | None]:
        """Load the account, or make it on first start: with ``initial_password`` if given,
        else with a generated one. Returns (created, the generated password for the caller
        to print once, or None)."""
        raw = await trio.to_thread.run_sync(self.data.read_admin_credentials)
        if raw is not None:
            try:
                credentials = _decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ValueError(f"{self.data.admin_path}: unreadable: {exc}") from None
            try:
                credentials.password.validate()
            except ValueError as exc:
                # Before any Argon2id: a file asking for 4 GiB must not get it.
                raise ValueError(
                    f"{self.data.admin_path}: refused as damaged or tampered with: {exc}"
                ) from None
            self._credentials = credentials
            return False, None
        if initial_password is not None and len(initial_password) < 12:
            raise ValueError("the first admin password must be at least 12 characters")
        password = generate_password() if initial_password is None else initial_password
        digest = await trio.to_thread.run_sync(hash_password, password, self.kdf)
        await self._save(_Credentials(password=digest))
        return True, password if initial_password is None else None

    async def _save(self, credentials: _Credentials) -> None:
        data = _encoder.encode(credentials)
        await trio.to_thread.run_sync(self.data.write_admin_credentials, data)
        self._credentials = credentials

    @property
    def credentials(self) -> _Credentials:
        if self._credentials is None:
            raise RuntimeError("accounts not loaded")
        return self._credentials

    # -- logging in ----------------------------------------------------------------------------

    def _check_throttle(self, address: str) -> None:
        wait = self._throttle.wait(address)
        if wait is not None:
            raise LoginRefused(
                f"too many failed logins from {address}: try again in {wait:.0f} s",
                retry_after=round(wait, 1),
            )

    async def _failed(self, address: str, reason: str) -> LoginRefused:
        self._throttle.failed(address)
        await trio.sleep(self.failure_delay)
        return LoginRefused(reason)

    async def login_password(self, password: str, address: str) -> tuple[Principal, str]:
        """Check the admin password; returns the principal and a new session token. Raises
        LoginRefused (after ``failure_delay``)."""
        self._check_throttle(address)
        stored = self.credentials.password
        if not await trio.to_thread.run_sync(check_password, password, stored):
            raise await self._failed(address, "wrong password")
        self._throttle.succeeded(address)
        await self._remove_initial_password("the first admin login")
        return self._new_session()

    async def _remove_initial_password(self, why: str) -> None:
        """The admin has the password now: the file that carried it goes."""
        if self._initial_password_gone:
            return
        self._initial_password_gone = True
        path = initial_password_path(self.data.root)
        try:
            await trio.to_thread.run_sync(path.unlink)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.error("event=admin-password-file-not-removed path=%s reason=%r", path, str(exc))
            return
        logger.info("event=admin-password-file-removed path=%s after=%r", path, why)

    def _new_session(self) -> tuple[Principal, str]:
        token = "gws_" + _b64(secrets.token_bytes(32))
        digest = hashlib.sha256(token.encode()).digest()
        principal = Principal(
            kind="admin",
            name="admin",
            session_digest=digest,
            expires_at=now() + timedelta(seconds=self.session_ttl),
        )
        self._expire_sessions()
        self._sessions[digest] = principal
        return principal, token

    def _expire_sessions(self) -> None:
        moment = now()
        for digest, principal in list(self._sessions.items()):
            if principal.expires_at is not None and principal.expires_at <= moment:
                del self._sessions[digest]

    async def login_token(self, token: str, address: str) -> Principal:
        """A session token or an API token. Raises LoginRefused."""
        self._check_throttle(address)
        principal = self._lookup(token)
        if principal is None:
            raise await self._failed(address, "unknown, expired or revoked token")
        self._throttle.succeeded(address)
        return principal

    def _lookup(self, token: str) -> Principal | None:
        if token.startswith("gws_"):
            self._expire_sessions()
            return self._sessions.get(hashlib.sha256(token.encode()).digest())
        parts = token.split("_", 2)  # the secret is base64url: it may hold "_" itself
        if len(parts) != 3 or parts[0] != "gwt":
            return None
        _prefix, token_id, secret = parts
        for stored in self.credentials.tokens:
            if stored.token_id == token_id:
                digest = hashlib.sha256(secret.encode()).digest()
                if not hmac.compare_digest(digest, stored.digest):
                    return None
                if stored.expires_at is not None and stored.expires_at <= now():
                    return None
                return Principal(
                    kind="token",
                    name=stored.name,
                    token_id=stored.token_id,
                    expires_at=stored.expires_at,
                )
        return None

    def still_valid(self, principal: Principal) -> bool:
        """Whether a connection logged in as ``principal`` may go on (not expired, revoked
        or logged out)."""
        if principal.expires_at is not None and principal.expires_at <= now():
            return False
        if principal.session_digest:
            return principal.session_digest in self._sessions
        if principal.kind == "token":
            return any(t.token_id == principal.token_id for t in self.credentials.tokens)
        return True

    def logout(self, principal: Principal) -> None:
        if self._sessions.pop(principal.session_digest, None) is not None:
            self._credentials_changed()

    async def wait_ended(self, principal: Principal) -> None:
        """Return as soon as ``principal`` may no longer be used: it expired, its token was
        revoked, its session logged out or ended by an admin password change. What a
        connection was allowed under it (live audit subscriptions) ends then, not at the
        connection's next request."""
        while self.still_valid(principal):
            changed = self._changed
            left = math.inf
            if principal.expires_at is not None:
                # Wall-clock expiry, slept in trio time: a few ms late at worst.
                left = max(0.0, (principal.expires_at - now()).total_seconds()) + 0.005
            with trio.move_on_after(left):
                await changed.wait()

    def _credentials_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- changes -------------------------------------------------------------------------------

    async def change_password(self, old_password: str, new_password: str) -> bool:
        """Returns False (after ``failure_delay``) if ``old_password`` is wrong. Every session
        token ends: whoever had one logs in again with the new password."""
        if len(new_password) < 12:
            raise ValueError("the new admin password must be at least 12 characters")
        async with self._lock:
            current = self.credentials
            if not await trio.to_thread.run_sync(check_password, old_password, current.password):
                await trio.sleep(self.failure_delay)
                return False
            digest = await trio.to_thread.run_sync(hash_password, new_password, self.kdf)
            await self._save(_Credentials(password=digest, tokens=list(current.tokens)))
            self._sessions.clear()
            self._credentials_changed()
        await self._remove_initial_password("an admin password change")
        return True

    async def create_token(self, name: str, expires_in_days: int | None) -> tuple[str, StoredToken]:
        if not name or len(name) > 100 or not name.isprintable():
            raise ValueError("a token name is 1 to 100 printable characters")
        if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
            raise ValueError("expires_in_days must be 1 to 3650")
        token_id = secrets.token_hex(8)
        secret = _b64(secrets.token_bytes(32))
        created = now()
        stored = StoredToken(
            token_id=token_id,
            name=name,
            digest=hashlib.sha256(secret.encode()).digest(),
            created_at=created,
            expires_at=None
            if expires_in_days is None
            else created + timedelta(days=expires_in_days),
        )
        async with self._lock:
            current = self.credentials
            await self._save(
                _Credentials(password=current.password, tokens=[*current.tokens, stored])
            )
        return f"gwt_{token_id}_{secret}", stored

    def tokens(self) -> list[StoredToken]:
        return list(self.credentials.tokens)

    async def revoke_token(self, token_id: str) -> bool:
        async with self._lock:
            current = self.credentials
            kept = [t for t in current.tokens if t.token_id != token_id]
            if len(kept) == len(current.tokens):
                return False
            await self._save(_Credentials(password=current.password, tokens=kept))
            self._credentials_changed()
        return True


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
