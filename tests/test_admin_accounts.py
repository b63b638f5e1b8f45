"""The admin account, its API tokens and its sessions as projections of the control log
(SPEC.md 4.1, 13.2): they survive restarts as the log says, the log holds nothing that logs
anyone in, an earlier version's ``<data>/admin/credentials`` is migrated, and a change cut
short by a crash is settled by what the log says."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.client import AdminClient, TrustSettings, connect
from gateway.events import (
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
    decode_control_event,
    now,
)
from gateway.log import iter_log
from gateway.protocols import admin as api
from gateway.protocols.admin import ApiError, ErrorCode
from gateway.servers.gateway import Gateway, Listening
from gateway.services import accounts as accounts_module
from gateway.services.accounts import Accounts, LoginRefused
from gateway.services.admin_credentials import secret_sha256
from gateway.services.archive import CONTROL_LOG_ID, Archive, StoreConfig
from gateway.services.projection import AdminState, ControlState
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF
from .gateway_helpers import make_config

GOLDEN = Path(__file__).parent / "golden"


@dataclass
class Served:
    gateway: Gateway
    url: str
    trust: TrustSettings
    generated: str | None  # the first start's generated admin password
    stopped: trio.Event

    @property
    def accounts(self) -> Accounts:
        assert self.gateway.accounts is not None
        return self.gateway.accounts

    async def stop(self) -> None:
        self.gateway.request_shutdown()
        with trio.fail_after(30):
            await self.stopped.wait()


async def serve(nursery: trio.Nursery, data: Path, environ: dict[str, str] | None = None) -> Served:
    announced: list[str] = []
    gateway = Gateway(
        make_config(data), environ=environ or {}, announce_admin_password=announced.append
    )
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[list[Listening]]) -> None:
        try:
            await gateway.run(task_status=task_status)
        finally:
            stopped.set()

    listening: list[Listening] = await nursery.start(run)
    port = next(x.port for x in listening if x.name == "admin")
    trust = TrustSettings(cafile=str(data / "tls" / "cert.pem"))
    return Served(
        gateway, f"wss://localhost:{port}/api", trust, announced[0] if announced else None, stopped
    )


async def login(
    served: Served, *, password: str | None = None, token: str | None = None
) -> api.Session | str:
    """One login on a fresh connection: the session, or the error's code."""
    async with connect(served.url, served.trust) as client:
        try:
            session = await client.request(api.Login(password=password, token=token))
        except ApiError as error:
            return error.code
    assert isinstance(session, api.Session)
    return session


def refused(reply: api.Session | str) -> bool:
    return reply == ErrorCode.BAD_CREDENTIALS


async def session_token(client: AdminClient, password: str) -> str:
    session = await client.request(api.Login(password=password))
    assert isinstance(session, api.Session) and session.token is not None
    return session.token


def control_events(data: Path) -> list[object]:
    return [decode_control_event(r.body) for r in iter_log(data / "control", CONTROL_LOG_ID)]


def control_bytes(data: Path) -> bytes:
    return b"".join(r.body for r in iter_log(data / "control", CONTROL_LOG_ID))


# -- restarts ---------------------------------------------------------------------------------


def fast(served: Served) -> None:
    served.accounts.failure_delay = 0.01


async def test_sessions_and_tokens_survive_a_restart_as_the_log_says(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sessions were kept in memory only: a restart logged every admin out (and a consoles's
    stored session token stopped working). Now a session token works until its expiry across
    restarts, and a revocation, a logout and a password change stay what they were."""
    data = tmp_path / "data"
    first = await serve(nursery, data)
    password = first.generated
    assert password is not None
    fast(first)
    async with connect(first.url, first.trust) as client:
        kept = await session_token(client, password)
        made = await client.request(api.TokenCreate(name="nightly", expires_in_days=30))
        gone = await client.request(api.TokenCreate(name="gone"))
        assert isinstance(made, api.TokenCreated) and isinstance(gone, api.TokenCreated)
        await client.request(api.TokenRevoke(token_id=gone.info.token_id))
    async with connect(first.url, first.trust) as client:
        ended = await session_token(client, password)
        await client.request(api.Logout())
    await first.stop()

    second = await serve(nursery, data)
    fast(second)
    assert second.generated is None  # the same account
    session = await login(second, token=kept)
    assert isinstance(session, api.Session) and session.actor == "admin"
    by_token = await login(second, token=made.token)
    assert isinstance(by_token, api.Session) and by_token.actor == "token:nightly"
    assert refused(await login(second, token=gone.token))  # revoked stays revoked
    assert refused(await login(second, token=ended))  # a logout stays a logout
    async with connect(second.url, second.trust) as client:
        await client.request(api.Login(token=kept))
        tokens = await client.request(api.TokenList())
        assert isinstance(tokens, api.Tokens)
        assert [t.name for t in tokens.tokens] == ["nightly"]

    # Until its expiry, not after (the clock moved past the 8 hours of admin.session_hours).
    later = now() + timedelta(hours=8, minutes=1)
    monkeypatch.setattr(accounts_module, "now", lambda: later)
    assert refused(await login(second, token=kept))
    assert isinstance(await login(second, token=made.token), api.Session)
    monkeypatch.undo()

    # A password change ends the sessions, after a restart too.
    async with connect(second.url, second.trust) as client:
        await client.request(api.Login(token=kept))
        await client.request(
            api.AdminPasswd(old_password=password, new_password="the second admin password")
        )
    assert refused(await login(second, token=kept))
    await second.stop()

    third = await serve(nursery, data)
    fast(third)
    assert refused(await login(third, token=kept))
    assert refused(await login(third, password=password))
    assert isinstance(await login(third, password="the second admin password"), api.Session)
    assert isinstance(await login(third, token=made.token), api.Session)
    await third.stop()
    report = verify_data_dir(data)
    assert report.ok, [str(p) for p in report.problems]


async def test_control_log_and_audit_feed_hold_nothing_that_logs_in(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The control log is what the audit feed publishes, raw record bytes included: no
    password, no token or session secret, no Argon2id hash and no token key in it; the
    digests it does hold are keyed (an unkeyed SHA-256 of a secret is not among them)."""
    data = tmp_path / "data"
    served = await serve(nursery, data)
    assert served.generated is not None
    async with connect(served.url, served.trust) as client:
        session = await session_token(client, served.generated)
        made = await client.request(api.TokenCreate(name="script"))
        assert isinstance(made, api.TokenCreated)
        await client.request(
            api.AdminPasswd(old_password=served.generated, new_password="another admin password")
        )
    async with connect(served.url, served.trust) as client:
        subscribed = await client.request(api.Login(password="another admin password"))
        assert isinstance(subscribed, api.Session)
        await client.request(api.AuditSubscribe(since=0, follow=False))
        published = b""
        with trio.fail_after(10):
            async for item in client.audit:
                if isinstance(item, api.AuditCaughtUp):
                    break
                assert isinstance(item, api.Audit)
                published += item.record + json.dumps(item.event).encode()
    await served.stop()

    verifier = msgspec.msgpack.decode((data / "admin" / "password").read_bytes())
    key = (data / "admin" / "token-key").read_bytes()
    forbidden = {
        "generated password": served.generated.encode(),
        "chosen password": b"another admin password",
        "session secret": session.split("_", 2)[2].encode(),
        "second session secret": (subscribed.token or "").split("_", 2)[2].encode(),
        "token secret": made.token.split("_", 2)[2].encode(),
        "unkeyed token digest": secret_sha256(made.token.split("_", 2)[2]),
        "argon2id digest": verifier["password"]["digest"],
        "argon2id salt": verifier["password"]["salt"],
        "token key": key,
    }
    for where in (control_bytes(data), published):
        for what, value in forbidden.items():
            assert value not in where, what
    types = {type(e).__name__ for e in control_events(data)}
    assert {"AdminAccountCreated", "AdminSessionStarted", "ApiTokenCreated"} <= types
    assert "AdminPasswordChanged" in types


# -- the credentials file of earlier versions -------------------------------------------------


async def test_credentials_file_of_an_earlier_version_is_migrated(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """tests/golden/admin-v1: a data folder whose admin account (password changed once, one
    live token, one expired, one revoked) is in ``<data>/admin/credentials``, written by the
    version before this one. The first start takes it into the log, once."""
    manifest = json.loads((GOLDEN / "admin-v1.json").read_text())
    data = tmp_path / "data"
    shutil.copytree(GOLDEN / "admin-v1", data)
    served = await serve(nursery, data)
    fast(served)
    assert served.generated is None  # the account was kept, not made anew
    assert not (data / "admin" / "credentials").exists()
    session = await login(served, password=manifest["password"])
    assert isinstance(session, api.Session) and session.token is not None
    assert refused(await login(served, password=manifest["old_password"]))
    by_token = await login(served, token=manifest["token"])
    assert isinstance(by_token, api.Session) and by_token.actor == "token:nightly backup"
    assert refused(await login(served, token=manifest["expired_token"]))
    assert refused(await login(served, token=manifest["revoked_token"]))
    await served.stop()

    migrated = [e for e in control_events(data) if isinstance(e, AdminCredentialsMigrated)]
    assert len(migrated) == 1
    assert {t.token_id for t in migrated[0].tokens} == {
        manifest["token_id"],
        manifest["expired_token_id"],
    }
    # The legacy SHA-256 digests were keyed, not copied.
    legacy = msgspec.msgpack.decode((GOLDEN / "admin-v1" / "admin" / "credentials").read_bytes())
    for token in legacy["tokens"]:
        assert token["digest"] not in control_bytes(data)
    assert legacy["password"]["digest"] not in control_bytes(data)

    again = await serve(nursery, data)
    assert again.generated is None
    assert isinstance(await login(again, token=session.token), api.Session)
    assert isinstance(await login(again, token=manifest["token"]), api.Session)
    await again.stop()
    assert sum(isinstance(e, AdminCredentialsMigrated) for e in control_events(data)) == 1
    report = verify_data_dir(data)
    assert report.ok, [str(p) for p in report.problems]


# -- crashes between a verifier file and its event --------------------------------------------

ADMIN = Actor(kind="admin", name="admin")


def accounts_of(archive: Archive) -> Accounts:
    return Accounts(
        archive.data, FAST_KDF, archive.state.admin, archive.append_control, failure_delay=0
    )


@asynccontextmanager
async def opened(data: Path) -> AsyncIterator[tuple[Archive, Accounts]]:
    """The archive and its accounts, loaded (as a start does)."""
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
    try:
        yield archive, accounts_of(archive)
    finally:
        await archive.aclose()


async def test_password_change_cut_before_its_event_keeps_the_old_password(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with opened(data) as (archive, accounts):
        await accounts.load_or_create("the first password")
        # A new verifier was being staged when the process died, before its event.
        archive.data.stage_admin_password(b"half a verifier")
    async with opened(data) as (archive, accounts):
        assert await accounts.load_or_create(None) == (False, None)
        assert archive.data.staged_admin_password() is None
        await accounts.login_password("the first password", "192.0.2.1")


async def test_password_change_cut_after_its_event_takes_the_new_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    async with opened(data) as (archive, accounts):
        await accounts.load_or_create("the first password")
        # A change up to its durable event, without the rename that follows it.
        monkeypatch.setattr(archive.data, "commit_admin_password", lambda: None)
        assert await accounts.change_password("the first password", "the second password", ADMIN)
        assert archive.data.staged_admin_password() is not None
    async with opened(data) as (archive, accounts):
        await accounts.load_or_create(None)
        assert archive.data.staged_admin_password() is None
        await accounts.login_password("the second password", "192.0.2.1")
        with pytest.raises(LoginRefused):
            await accounts.login_password("the first password", "192.0.2.1")


async def test_migration_cut_after_its_event_is_not_repeated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    legacy = (GOLDEN / "admin-v1" / "admin" / "credentials").read_bytes()
    async with opened(data) as (archive, accounts):
        archive.data.admin_dir.mkdir(mode=0o700)
        archive.data.admin_path.write_bytes(legacy)
        await accounts.load_or_create(None)
        assert not archive.data.admin_path.exists()
        archive.data.admin_path.write_bytes(legacy)  # as if its removal never happened
    async with opened(data) as (archive, accounts):
        await accounts.load_or_create(None)
        assert not archive.data.admin_path.exists()
    assert sum(isinstance(e, AdminCredentialsMigrated) for e in control_events(data)) == 1


async def test_missing_verifier_makes_a_new_account_and_ends_every_token(tmp_path: Path) -> None:
    """How an operator resets a forgotten admin password: stop, remove <data>/admin/password,
    start with GATEWAY_ADMIN_PASSWORD. Every API token and session ends with it."""
    data = tmp_path / "data"
    async with opened(data) as (archive, accounts):
        await accounts.load_or_create("the forgotten password")
        token, _ = await accounts.create_token("script", None, ADMIN)
        _, session = await accounts.login_password("the forgotten password", "192.0.2.1")
        archive.data.admin_password_path.unlink()
    async with opened(data) as (archive, accounts):
        assert await accounts.load_or_create("a remembered password") == (True, None)
        await accounts.login_password("a remembered password", "192.0.2.1")
        for gone in (token, session):
            with pytest.raises(LoginRefused):
                await accounts.login_token(gone, "192.0.2.1")
    created = [e for e in control_events(data) if isinstance(e, AdminAccountCreated)]
    assert [e.source for e in created] == ["environment", "environment"]


async def test_verifier_of_another_credential_stops_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with opened(data) as (archive, accounts):
        await accounts.load_or_create("the first password")
        before = archive.data.admin_password_path.read_bytes()
        await accounts.change_password("the first password", "the second password", ADMIN)
        archive.data.admin_password_path.write_bytes(before)  # an old copy put back
    report = verify_data_dir(data)
    assert [p.where for p in report.problems] == ["admin"]
    async with opened(data) as (archive, accounts):
        with pytest.raises(ValueError, match="control log names"):
            await accounts.load_or_create(None)


# -- the fold ---------------------------------------------------------------------------------


def test_the_fold_ends_sessions_and_tokens_as_the_events_say() -> None:
    t0 = now()
    state = ControlState()

    def session(session_id: str, credential: str, at: int, hours: int = 8) -> AdminSessionStarted:
        return AdminSessionStarted(
            at=t0 + timedelta(hours=at),
            session_id=session_id,
            expires_at=t0 + timedelta(hours=at + hours),
            credential_id=credential,
            digest=b"d",
        )

    events: list[ControlEvent] = [
        AdminAccountCreated(at=t0, source="generated", credential_id="c1"),
        session("s1", "c1", 0, hours=1),
        session("s2", "c1", 0),
        ApiTokenCreated(at=t0, token_id="t1", name="one", digest=b"k"),
        ApiTokenCreated(at=t0, token_id="t2", name="two", digest=b"k"),
        ApiTokenRevoked(at=t0, token_id="t2"),
        session("s3", "c1", 2),  # s1 expired by then: folded away
        AdminSessionEnded(at=t0, session_id="s3", reason="logout"),
    ]
    for event in events:
        state.apply(event)
    admin: AdminState = state.admin
    assert set(admin.sessions) == {"s2"} and set(admin.tokens) == {"t1"}

    state.apply(AdminPasswordChanged(at=t0, credential_id="c2"))
    assert admin.credential_id == "c2" and not admin.sessions and set(admin.tokens) == {"t1"}
    state.apply(session("late", "c1", 3))  # opened with the old password: never starts
    assert not admin.sessions

    record = ApiTokenRecord(token_id="t9", name="nine", created_at=t0, digest=b"k")
    state.apply(AdminCredentialsMigrated(at=t0, credential_id="c3", tokens=(record,)))
    assert set(admin.tokens) == {"t9"} and admin.credential_id == "c3"
    state.apply(AdminAccountCreated(at=t0, source="environment", credential_id="c4"))
    assert not admin.tokens and not admin.sessions and admin.credential_id == "c4"


def test_verify_prints_no_secret(tmp_path: Path) -> None:
    """``gateway verify`` on a folder with every new event: exit 0, and nothing in its output
    that is a secret."""
    data = tmp_path / "data"

    async def build() -> list[str]:
        async with opened(data) as (_archive, accounts):
            await accounts.load_or_create("an admin password here")
            token, _ = await accounts.create_token("script", 1, ADMIN)
            principal, session = await accounts.login_password("an admin password here", "::1")
            await accounts.logout(principal, "::1")
            await accounts.change_password("an admin password here", "and another one", ADMIN)
            await accounts.revoke_token(token.split("_")[1], ADMIN)
            return [token.split("_", 2)[2], session.split("_", 2)[2]]

    secrets = trio.run(build)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "verify", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "OK"
    output = result.stdout + result.stderr
    for secret in ("an admin password here", "and another one", *secrets):
        assert secret not in output
