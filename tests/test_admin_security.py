"""Security regressions of the admin API (issue 12), each named after the attack it covers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from gateway.client import AdminClient, TrustSettings, connect
from gateway.protocols import admin as api
from gateway.protocols.admin import ApiError, ErrorCode
from gateway.services.accounts import Accounts, Principal
from gateway.services.admin import AdminService
from gateway.services.archive import Archive

from .gateway_helpers import Running


@asynccontextmanager
async def admin(running: Running, login: api.Login | None = None) -> AsyncIterator[AdminClient]:
    async with connect(running.admin_url, TrustSettings(cafile=str(running.cafile))) as client:
        await client.request(login or api.Login(password=running.admin_password))
        yield client


async def feed_until_closed(client: AdminClient) -> list[api.Reply]:
    """Everything pushed to ``client`` until the gateway closes its connection."""
    items = []
    with trio.fail_after(10):
        async for item in client.audit:
            items.append(item)
    return items


def created_names(items: list[api.Reply]) -> list[str]:
    return [
        item.event["name"]
        for item in items
        if isinstance(item, api.Audit) and item.event and item.event["type"] == "MailboxCreated"
    ]


# -- item 9: a live audit subscription outlives its credential -----------------------------


@pytest.mark.parametrize("how", ["token-revoked", "logged-out-elsewhere", "admin-password-changed"])
async def test_audit_feed_stops_when_its_credential_is_revoked_elsewhere(
    running: Running, how: str
) -> None:
    """A token holder (or a stolen session) subscribed to the feed kept receiving every record
    after the admin revoked the token or logged the session out from another connection."""
    assert running.gateway.hub is not None
    async with admin(running) as owner:
        token_id = ""
        if how == "token-revoked":
            created = await owner.request(api.TokenCreate(name="auditor"))
            assert isinstance(created, api.TokenCreated)
            token_id = created.info.token_id
            login = api.Login(token=created.token)
        else:
            session = await owner.request(api.Login(password=running.admin_password))
            assert isinstance(session, api.Session) and session.token is not None
            login = api.Login(token=session.token)
        async with admin(running, login) as spy:
            await spy.request(api.AuditSubscribe(since=None))
            await owner.request(api.MailboxCreate(name="before"))
            with trio.fail_after(10):
                while "before" not in created_names([await spy.audit.receive()]):
                    pass

            if how == "token-revoked":
                await owner.request(api.TokenRevoke(token_id=token_id))
            elif how == "logged-out-elsewhere":
                await owner.request(api.Logout())
                await owner.request(api.Login(password=running.admin_password))
            else:
                await owner.request(
                    api.AdminPasswd(
                        old_password=running.admin_password, new_password="a new long password"
                    )
                )
            if how != "admin-password-changed":
                await owner.request(api.MailboxCreate(name="after"))

            items = await feed_until_closed(spy)
            assert created_names(items) == []
            assert spy.closed is not None and spy.closed.startswith("4001")
            assert "log in again" in spy.closed
    assert running.gateway.hub.subscribers == 0


async def test_audit_feed_stops_when_its_session_expires(running: Running) -> None:
    """An expired session's feed went on for as long as the client sent no request."""
    assert running.gateway.accounts is not None
    running.gateway.accounts.session_ttl = 0.5
    async with admin(running) as client:
        await client.request(api.AuditSubscribe(since=None))
        await feed_until_closed(client)
        assert client.closed is not None and client.closed.startswith("4001")


async def test_logout_on_the_same_connection_keeps_it_open(running: Running) -> None:
    async with admin(running) as client:
        await client.request(api.AuditSubscribe(since=None))
        await client.request(api.Logout())
        session = await client.request(api.Login(password=running.admin_password))
        assert isinstance(session, api.Session)
        assert isinstance(await client.request(api.MailboxList()), api.Mailboxes)


# -- item 23: mailbox.passwd is an unthrottled password oracle ------------------------------


async def test_mailbox_passwd_is_not_a_fast_password_oracle(
    archive: Archive, autojump_clock: trio.testing.MockClock
) -> None:
    """Any API token holder could try mailbox passwords through ``mailbox.passwd`` as fast as
    Argon2id runs: a wrong old password was answered at once, without limit."""
    service = AdminService(
        archive,
        Accounts(archive.data, archive.config.kdf),
        "localhost",
        failure_delay=2.0,
        max_failures=10,
    )
    target, password = await archive.create_mailbox("Target", "")
    other, other_password = await archive.create_mailbox("Other", "")
    thief = Principal(kind="token", name="stolen", token_id="00" * 8)

    async def passwd(mailbox_id: str, old_password: str) -> api.Reply:
        request = api.MailboxPasswd(mailbox=mailbox_id, old_password=old_password)
        return await service.handle(request, thief, "192.0.2.7")

    for attempt in range(10):
        started = trio.current_time()
        with pytest.raises(ApiError) as wrong:
            await passwd(target.mailbox_id, f"guess number {attempt}")
        assert wrong.value.code == ErrorCode.WRONG_PASSWORD
        assert trio.current_time() - started >= 2.0  # the POP3 login's failure delay

    # Locked out now, even with the right password (Argon2id does not even run).
    started = trio.current_time()
    with pytest.raises(ApiError) as locked:
        await passwd(target.mailbox_id, password)
    assert locked.value.code == ErrorCode.THROTTLED
    assert locked.value.retry_after is not None and 50 < locked.value.retry_after <= 60
    assert trio.current_time() - started >= 2.0
    # Per mailbox: another mailbox is not locked.
    changed = await passwd(other.mailbox_id, other_password)
    assert isinstance(changed, api.MailboxPasswordChanged)

    # After the lockout the right password works; one more failure would double it.
    await trio.sleep(60)
    changed = await passwd(target.mailbox_id, password)
    assert isinstance(changed, api.MailboxPasswordChanged)
    await archive.unlock(target.mailbox_id, changed.password)
