"""Security regressions of the admin API (issue 12), each named after the attack it covers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from gateway.client import AdminClient, TrustSettings, connect
from gateway.protocols import admin as api

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
