"""Who may use the admin API: the admin account, API tokens, session tokens, login throttling.

Theory of operation
-------------------
The admin account, its password changes, its API tokens and its sessions are facts in the
control log (SPEC.md 4.1, 13.2), folded into :class:`~.projection.AdminState` by the
``ControlState.apply`` that replays the log at start and that ``gateway verify`` runs: a
session outlives a restart, a revoked token stays revoked and a logout stays a logout
because the log says so. Every change is appended (durably) before it counts.

The control log is kept forever and published to every audit subscriber, record bytes and
all, so nothing in it logs anyone in or helps guess a password:

* The admin password's Argon2id hash lives in ``<data>/admin/password`` (mode 0600) under a
  random ``credential_id`` the log names (``AdminAccountCreated``, ``AdminPasswordChanged``).
  A change is two-phase like a mailbox key change: the new file is staged beside the old,
  the event appended, the file renamed; :meth:`Accounts.load_or_create` settles a crash in
  between by the id the log names. Only the current hash exists; an append-only log could
  never forget an old one.
* A token is ``gwt_`` (API) or ``gws_`` (session) + ``<16 hex id>_<43 base64url secret>``
  (256 random bits). The log records its id, expiry and a digest keyed with the token key
  ``<data>/admin/token-key`` (32 random bytes, 0600): without the key a digest confirms
  nothing, and with it a 256-bit secret still cannot be found.

An ``<data>/admin/credentials`` file of an earlier version is taken into the log on the first
start (``AdminCredentialsMigrated``: the hash moves to ``<data>/admin/password``, the tokens'
SHA-256 digests are keyed, which the digest's definition allows) and then removed.

On first start the account is made with a password from ``GATEWAY_ADMIN_PASSWORD``, a file the
config names, or a fresh random one that the caller shows once: on a terminal, or where
standard output would reach a journal or a log, in ``<data>/admin/initial-password``
(:func:`write_initial_password`, mode 0600), which the first successful password login (or
password change) deletes. The same happens when the verifier the log names is missing: that
is how an operator resets a forgotten admin password (every token and session ends).

Failed logins are answered slowly (``failure_delay``) and counted per client address: after
``max_failures`` in a row an address is refused outright for a lockout that doubles with
every further failure (up to 15 minutes), so guessing the password over the API costs days
per million tries even before Argon2id. Every attempt is audited by the caller.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import trio

from ..crypto import KdfParams, PasswordHash, check_password, generate_password, hash_password
from ..events import (
    Actor,
    AdminAccountCreated,
    AdminCredentialsMigrated,
    AdminPasswordChanged,
    AdminSessionEnded,
    AdminSessionStarted,
    ApiTokenCreated,
    ApiTokenRecord,
    ApiTokenRevoked,
    ControlEvent,
    now,
)
from ..log import DataDir, LogWriteError
from .admin_credentials import (
    API,
    SESSION,
    TOKEN_KEY_BYTES,
    decode_legacy_credentials,
    decode_verifier,
    encode_verifier,
    new_id,
    new_secret,
    secret_sha256,
    token_digest,
    verifier_credential_id,
)
from .projection import AdminState, ApiToken
from .throttle import LoginThrottle

__all__ = [
    "Accounts",
    "LoginRefused",
    "Principal",
    "initial_password_path",
    "write_initial_password",
]

logger = logging.getLogger("gateway")

MIN_PASSWORD = 12

Append = Callable[[ControlEvent], Awaitable[None]]


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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection is logged in as: the admin (by password or session token) or an API
    token, and until when."""

    kind: str  # "admin" or "token"
    name: str  # "admin", or the token's name
    token_id: str = ""  # the API token's id
    session_id: str = ""  # the session's id (a password login, or its session token)
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
    """The admin account over its projection ``state`` (folded by whoever owns the control
    log) and ``append``, which appends an event durably and folds it."""

    data: DataDir
    kdf: KdfParams
    state: AdminState
    append: Append
    session_ttl: float = 8 * 3600.0
    failure_delay: float = 1.0
    max_failures: int = 5
    _key: bytes = field(default=b"", repr=False)
    _password: PasswordHash | None = field(default=None, repr=False)
    _throttle: LoginThrottle = field(default_factory=LoginThrottle)
    _lock: trio.Lock = field(default_factory=trio.Lock)
    # Set (and replaced) whenever a credential may have ended: a logout, a revoked token, a
    # password change. Connections wait on it to cut off what their login was allowed.
    _changed: trio.Event = field(default_factory=trio.Event)
    _initial_password_gone: bool = False  # initial-password removed (or never there)

    def __post_init__(self) -> None:
        self._throttle = LoginThrottle(max_failures=self.max_failures)

    # -- the account ---------------------------------------------------------------------------

    async def load_or_create(
        self, initial_password: str | None, source: str = "environment"
    ) -> tuple[bool, str | None]:
        """Load the account, after settling a password change cut short and migrating an
        earlier version's credentials file; or make it (first start, or its verifier gone):
        with ``initial_password`` if given (``source``: where it came from), else with a
        generated one. Returns (created, the generated password for the caller to print
        once, or None). Raises ValueError for a damaged or foreign file."""
        await self._load_token_key()
        await trio.to_thread.run_sync(self._settle_staged)
        state = self.state
        legacy = await trio.to_thread.run_sync(self.data.read_admin_credentials)
        if legacy is not None and state.credential_id:
            # Migrated already (a start cut short before the file went): the log decides.
            await trio.to_thread.run_sync(self.data.remove_admin_credentials)
            legacy = None
        if legacy is not None:
            await self._migrate(legacy)
            return False, None
        if state.credential_id:
            raw = await trio.to_thread.run_sync(self.data.read_admin_password)
            if raw is not None:
                path = self.data.admin_password_path
                self._password = decode_verifier(path, raw, state.credential_id)
                return False, None
        if state.created_at is not None:
            gone = self.data.admin_password_path if state.credential_id else self.data.admin_path
            logger.warning(
                "event=admin-account-recreated reason=%r",
                f"the admin password's verifier {gone} is missing: a new admin password is "
                "set, every API token and session ends",
            )
        return await self._create(initial_password, source)

    async def _load_token_key(self) -> None:
        key, made = await trio.to_thread.run_sync(
            self.data.read_or_create_admin_token_key, lambda: secrets.token_bytes(TOKEN_KEY_BYTES)
        )
        if len(key) != TOKEN_KEY_BYTES:
            raise ValueError(
                f"{self.data.admin_token_key_path}: not a token key ({len(key)} bytes, not "
                f"{TOKEN_KEY_BYTES}); remove it to make a new one (every API token and admin "
                "session then has to be made again)"
            )
        keyed = [t for t in self.state.tokens.values() if t.digest]
        if made and (keyed or self.state.sessions):
            logger.warning(
                "event=admin-token-key-created path=%s reason=%r",
                self.data.admin_token_key_path,
                f"the token key was missing: {len(keyed)} API token(s) and every admin session "
                "made before no longer log in; revoke them and make new ones",
            )
        self._key = key

    def _settle_staged(self) -> None:
        """A password change (or migration, or first start) cut short: the staged verifier
        is taken if the log names it, dropped otherwise."""
        staged = self.data.staged_admin_password()
        if staged is None:
            return
        named = verifier_credential_id(staged)
        if named and named == self.state.credential_id:
            self.data.commit_admin_password()
        else:
            self.data.discard_staged_admin_password()

    async def _create(self, initial_password: str | None, source: str) -> tuple[bool, str | None]:
        if initial_password is not None and len(initial_password) < MIN_PASSWORD:
            raise ValueError(f"the first admin password must be at least {MIN_PASSWORD} characters")
        password = generate_password() if initial_password is None else initial_password
        digest = await trio.to_thread.run_sync(hash_password, password, self.kdf)
        credential_id = new_id()
        event = AdminAccountCreated(
            at=now(),
            source="generated" if initial_password is None else source,
            credential_id=credential_id,
        )
        await self._replace_password(credential_id, digest, event)
        logger.info("event=admin-account-created source=%s", event.source)
        return True, password if initial_password is None else None

    async def _migrate(self, raw: bytes) -> None:
        """Take an earlier version's ``<data>/admin/credentials`` into the log, then remove it."""
        path = self.data.admin_path
        password, legacy = decode_legacy_credentials(path, raw)
        credential_id = new_id()
        tokens = tuple(
            ApiTokenRecord(
                token_id=token.token_id,
                name=token.name,
                created_at=token.created_at,
                expires_at=token.expires_at,
                digest=token_digest(self._key, API, token.token_id, token.digest),
            )
            for token in legacy
        )
        event = AdminCredentialsMigrated(at=now(), credential_id=credential_id, tokens=tokens)
        await self._replace_password(credential_id, password, event)
        await trio.to_thread.run_sync(self.data.remove_admin_credentials)
        logger.info("event=admin-credentials-migrated tokens=%d removed=%s", len(tokens), path.name)

    async def _replace_password(
        self, credential_id: str, password: PasswordHash, event: ControlEvent
    ) -> None:
        """Two-phase: stage the verifier, append ``event`` (which names it), commit. A crash
        (or an append whose outcome is unknown) leaves the staged file for the next start to
        settle by what the log says."""
        verifier = encode_verifier(credential_id, password)
        await trio.to_thread.run_sync(self.data.stage_admin_password, verifier)
        with trio.CancelScope(shield=True):  # one durable append and one rename
            try:
                await self.append(event)
            except LogWriteError:
                await trio.to_thread.run_sync(self.data.discard_staged_admin_password)
                raise
            self._password = password  # the log names it now: it is the password
            await trio.to_thread.run_sync(self.data.commit_admin_password)

    @property
    def password(self) -> PasswordHash:
        if self._password is None:
            raise RuntimeError("accounts not loaded")
        return self._password

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
        """Check the admin password; returns the principal and a new session token (its
        session durable in the control log). Raises LoginRefused (after ``failure_delay``)."""
        self._check_throttle(address)
        stored, credential_id = self.password, self.state.credential_id
        if not await trio.to_thread.run_sync(check_password, password, stored):
            raise await self._failed(address, "wrong password")
        self._throttle.succeeded(address)
        await self._remove_initial_password("the first admin login")
        return await self._new_session(credential_id, address)

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

    async def _new_session(self, credential_id: str, address: str) -> tuple[Principal, str]:
        session_id, secret = new_id(), new_secret()
        started = now()
        expires = started + timedelta(seconds=self.session_ttl)
        await self.append(
            AdminSessionStarted(
                at=started,
                actor=Actor(kind="admin", name="admin", address=address),
                session_id=session_id,
                expires_at=expires,
                credential_id=credential_id,
                digest=token_digest(self._key, SESSION, session_id, secret_sha256(secret)),
            )
        )
        if session_id not in self.state.sessions:
            raise LoginRefused("the admin password changed during the login")
        principal = Principal(kind="admin", name="admin", session_id=session_id, expires_at=expires)
        return principal, f"{SESSION}_{session_id}_{secret}"

    async def login_token(self, token: str, address: str) -> Principal:
        """A session token or an API token. Raises LoginRefused."""
        self._check_throttle(address)
        principal = self._lookup(token)
        if principal is None:
            raise await self._failed(address, "unknown, expired or revoked token")
        self._throttle.succeeded(address)
        return principal

    def _lookup(self, token: str) -> Principal | None:
        parts = token.split("_", 2)  # the secret is base64url: it may hold "_" itself
        if len(parts) != 3:
            return None
        kind, token_id, secret = parts
        stored: ApiToken | None = None
        if kind == SESSION:
            session = self.state.sessions.get(token_id)
            digest, expires = (session.digest, session.expires_at) if session else (b"", None)
        elif kind == API:
            stored = self.state.tokens.get(token_id)
            digest, expires = (stored.digest, stored.expires_at) if stored else (b"", None)
        else:
            return None
        # A token recorded without a digest (before its migration) has nothing to match.
        expected = token_digest(self._key, kind, token_id, secret_sha256(secret))
        if not digest or not hmac.compare_digest(expected, digest):
            return None
        if expires is not None and expires <= now():
            return None
        if stored is None:
            return Principal(kind="admin", name="admin", session_id=token_id, expires_at=expires)
        return Principal(kind="token", name=stored.name, token_id=token_id, expires_at=expires)

    def still_valid(self, principal: Principal) -> bool:
        """Whether a connection logged in as ``principal`` may go on (not expired, revoked
        or logged out)."""
        if principal.expires_at is not None and principal.expires_at <= now():
            return False
        if principal.session_id:
            return principal.session_id in self.state.sessions
        if principal.kind == "token":
            return principal.token_id in self.state.tokens
        return True

    async def logout(self, principal: Principal, address: str) -> None:
        """End ``principal``'s session, durably (an API token is only revoked, never logged
        out). Raises LogWriteError if the end could not be recorded."""
        if principal.session_id not in self.state.sessions:
            return
        await self.append(
            AdminSessionEnded(
                at=now(),
                actor=Actor(kind="admin", name="admin", address=address),
                session_id=principal.session_id,
                reason="logout",
            )
        )
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

    async def change_password(self, old_password: str, new_password: str, actor: Actor) -> bool:
        """Returns False (after ``failure_delay``) if ``old_password`` is wrong. Every session
        ends (``AdminPasswordChanged``): whoever had one logs in again with the new password."""
        if len(new_password) < MIN_PASSWORD:
            raise ValueError(f"the new admin password must be at least {MIN_PASSWORD} characters")
        async with self._lock:
            if not await trio.to_thread.run_sync(check_password, old_password, self.password):
                await trio.sleep(self.failure_delay)
                return False
            digest = await trio.to_thread.run_sync(hash_password, new_password, self.kdf)
            credential_id = new_id()
            event = AdminPasswordChanged(at=now(), actor=actor, credential_id=credential_id)
            await self._replace_password(credential_id, digest, event)
            self._credentials_changed()
        await self._remove_initial_password("an admin password change")
        return True

    async def create_token(
        self, name: str, expires_in_days: int | None, actor: Actor
    ) -> tuple[str, ApiToken]:
        if not name or len(name) > 100 or not name.isprintable():
            raise ValueError("a token name is 1 to 100 printable characters")
        if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
            raise ValueError("expires_in_days must be 1 to 3650")
        token_id, secret = new_id(), new_secret()
        created = now()
        await self.append(
            ApiTokenCreated(
                at=created,
                actor=actor,
                token_id=token_id,
                name=name,
                expires_at=None
                if expires_in_days is None
                else created + timedelta(days=expires_in_days),
                digest=token_digest(self._key, API, token_id, secret_sha256(secret)),
            )
        )
        return f"{API}_{token_id}_{secret}", self.state.tokens[token_id]

    def tokens(self) -> list[ApiToken]:
        return sorted(self.state.tokens.values(), key=lambda t: t.created_at)

    async def revoke_token(self, token_id: str, actor: Actor) -> bool:
        async with self._lock:
            if token_id not in self.state.tokens:
                return False
            await self.append(ApiTokenRevoked(at=now(), actor=actor, token_id=token_id))
            self._credentials_changed()
        return True
