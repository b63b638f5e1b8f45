"""The admin API end to end: a real gateway, a real TLS websocket, every operation and every
error path (SPEC.md 13)."""

from __future__ import annotations

import hashlib
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, wrap_client_stream

from gateway.client import AdminClient, ClientError, TrustSettings, connect
from gateway.config import AdminConfig
from gateway.crypto import WrongPassword
from gateway.log import RecordKind
from gateway.log._framing import encode_record_parts, genesis_chain
from gateway.protocols import admin as api
from gateway.protocols.admin import ApiError, ErrorCode
from gateway.servers.gateway import Gateway, Listening
from gateway.services.archive import CONTROL_LOG_ID
from gateway.services.tree_heads import load_signer

from .gateway_helpers import Running, make_config


@asynccontextmanager
async def admin(running: Running, *, login: bool = True) -> AsyncIterator[AdminClient]:
    async with connect(running.admin_url, TrustSettings(cafile=str(running.cafile))) as client:
        if login:
            await client.request(api.Login(password=running.admin_password))
        yield client


def fast_failures(running: Running) -> None:
    assert running.gateway.accounts is not None
    running.gateway.accounts.failure_delay = 0.01


async def _closed(client: AdminClient) -> None:
    """Wait until the gateway closes ``client``'s connection."""
    with trio.fail_after(10):
        async for _item in client.audit:
            pass


def deliver(port: int, address: str, body: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> None:
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.sendmail("sender@example.org", [address], body)


async def test_mailbox_lifecycle_through_the_api(running: Running) -> None:
    async with admin(running) as client:
        created = await client.request(api.MailboxCreate(name="Sales", description="journal"))
        assert isinstance(created, api.MailboxCreated)
        box = created.mailbox
        assert box.status == "active" and box.messages == 0
        assert box.address == f"mbx-{box.mailbox_id}@localhost"
        assert len(created.password) == 35  # generated: six groups of five

        listed = await client.request(api.MailboxList())
        assert isinstance(listed, api.Mailboxes)
        assert [m.mailbox_id for m in listed.mailboxes] == [box.mailbox_id]

        await trio.to_thread.run_sync(deliver, running.port("smtp"), box.address)
        got = await client.request(api.MailboxGet(mailbox=box.address))  # by address too
        assert isinstance(got, api.Mailbox)
        assert got.mailbox.messages == 1 and got.mailbox.bytes > 0
        assert got.mailbox.last_delivery is not None

        updated = await client.request(
            api.MailboxUpdate(mailbox=box.mailbox_id, name="Sales EU", description="d2")
        )
        assert isinstance(updated, api.Mailbox)
        assert (updated.mailbox.name, updated.mailbox.description) == ("Sales EU", "d2")

        # Change password: the old one is needed, mail stays readable.
        with pytest.raises(ApiError) as wrong:
            await client.request(
                api.MailboxPasswd(mailbox=box.mailbox_id, old_password="not-the-password")
            )
        assert wrong.value.code == ErrorCode.WRONG_PASSWORD
        changed = await client.request(
            api.MailboxPasswd(mailbox=box.mailbox_id, old_password=created.password)
        )
        assert isinstance(changed, api.MailboxPasswordChanged)
        key = await running.archive.unlock(box.mailbox_id, changed.password)
        message = running.archive.messages(box.mailbox_id)[0]
        body = b"".join(
            [p async for p in running.archive.read_message(box.mailbox_id, message.message_id, key)]
        )
        assert body.endswith(b"hello\r\n")
        with pytest.raises(WrongPassword):
            await running.archive.unlock(box.mailbox_id, created.password)

        # Delete refuses an active mailbox, then one with messages unless purging.
        with pytest.raises(ApiError) as active:
            await client.request(api.MailboxDelete(mailbox=box.mailbox_id))
        assert active.value.code == ErrorCode.CONFLICT
        assert "suspended" in active.value.message

        suspended = await client.request(api.MailboxSuspend(mailbox=box.mailbox_id))
        assert isinstance(suspended, api.Mailbox) and suspended.mailbox.status == "suspended"
        activated = await client.request(api.MailboxActivate(mailbox=box.mailbox_id))
        assert isinstance(activated, api.Mailbox) and activated.mailbox.status == "active"
        await client.request(api.MailboxSuspend(mailbox=box.mailbox_id))

        # Reset: needs confirm; says plainly how much became unreadable.
        with pytest.raises(ApiError) as unconfirmed:
            await client.request(api.MailboxReset(mailbox=box.mailbox_id))
        assert unconfirmed.value.code == ErrorCode.BAD_REQUEST
        assert "unreadable" in unconfirmed.value.message
        reset = await client.request(api.MailboxReset(mailbox=box.mailbox_id, confirm=True))
        assert isinstance(reset, api.MailboxPasswordReset)
        assert reset.unreadable_messages == 1 and reset.unreadable_bytes == message.size
        assert "never be decrypted" in reset.warning

        with pytest.raises(ApiError) as holds:
            await client.request(api.MailboxDelete(mailbox=box.mailbox_id))
        assert holds.value.code == ErrorCode.CONFLICT and "purge" in holds.value.message
        deleted = await client.request(api.MailboxDelete(mailbox=box.mailbox_id, purge=True))
        assert isinstance(deleted, api.MailboxDeleted) and deleted.purged_messages == 1

        with pytest.raises(ApiError) as gone:
            await client.request(api.MailboxGet(mailbox=box.mailbox_id))
        assert gone.value.code == ErrorCode.NO_SUCH_MAILBOX


async def test_given_passwords_and_bad_values(running: Running) -> None:
    async with admin(running) as client:
        created = await client.request(
            api.MailboxCreate(name="Given", password="correct horse battery staple")
        )
        assert isinstance(created, api.MailboxCreated)
        assert created.password == "correct horse battery staple"
        await running.archive.unlock(created.mailbox.mailbox_id, created.password)
        for request in (
            api.MailboxCreate(name="Short", password="short"),
            api.MailboxCreate(name=" "),
            api.MailboxCreate(name="x" * 201),
            api.MailboxCreate(name="bell\x07"),
            api.MailboxUpdate(mailbox=created.mailbox.mailbox_id, name=""),
        ):
            with pytest.raises(ApiError) as refused:
                await client.request(request)
            assert refused.value.code == ErrorCode.INVALID, request
        for mailbox in ("nope", "0" * 32, "f" * 32, "mbx-../../etc@localhost"):
            with pytest.raises(ApiError) as unknown:
                await client.request(api.MailboxGet(mailbox=mailbox))
            assert unknown.value.code == ErrorCode.NO_SUCH_MAILBOX


async def test_status(running: Running) -> None:
    async with admin(running) as client:
        await client.request(api.MailboxCreate(name="A"))
        status = await client.request(api.Status())
        assert isinstance(status, api.StatusReply)
        assert {x.name for x in status.listeners} == {"smtp", "smtps", "pop3", "pop3s", "admin"}
        assert status.certificate is not None
        der = ssl.PEM_cert_to_DER_cert(running.cafile.read_text())
        assert status.certificate.sha256.replace(":", "").lower() == hashlib.sha256(der).hexdigest()
        assert status.storage_bytes > 0 and status.disk_free_bytes > 0
        assert status.admin_connections == 1
        assert status.uptime_seconds >= 0
        assert [m.name for m in status.mailboxes] == ["A"]
        assert status.control_seq == running.archive.next_control_seq
        # The checkpoint key (SPEC.md 8.1): the one in the data folder signs.
        signer, made = load_signer(running.archive, status.checkpoint_vkey.split("+")[0])
        assert not made and signer.vkey() == status.checkpoint_vkey


async def test_protocol_errors_are_replies(running: Running) -> None:
    async with admin(running, login=False) as client:
        for raw, code in [
            ("not json", ErrorCode.MALFORMED),
            ("[1, 2]", ErrorCode.MALFORMED),
            ('{"id": 7}', ErrorCode.BAD_REQUEST),
            ('{"id": 8, "op": "mailbox.explode"}', ErrorCode.UNKNOWN_OP),
            ('{"id": 9, "op": "mailbox.list"}', ErrorCode.UNAUTHENTICATED),
            ('{"id": 10, "op": "login", "password": 5}', ErrorCode.BAD_REQUEST),
            ('{"id": 11, "op": "login"}', ErrorCode.BAD_REQUEST),
        ]:
            await client.send_raw(raw)
            with trio.fail_after(5):
                reply = await client.audit.receive()  # unsolicited: no request id of ours
            assert isinstance(reply, api.ErrorReply), raw
            assert reply.code == code, (raw, reply)
            if raw.startswith('{"id"'):
                assert reply.id == int(raw.split(":")[1].split(",")[0].strip(" }"))
        # Still connected and usable after all that.
        session = await client.request(api.Login(password=running.admin_password))
        assert isinstance(session, api.Session)
        mailbox_list = await client.request(api.MailboxList())
        assert isinstance(mailbox_list, api.Mailboxes)


async def test_oversized_frame_closes_with_1009(running: Running) -> None:
    async with admin(running) as client:
        await client.send_raw('{"op": "mailbox.list", "pad": "' + "x" * 300_000 + '"}')
        with pytest.raises(ClientError):
            await client.request(api.MailboxList())
        assert client.closed is not None and client.closed.startswith("1009")


async def test_logins_tokens_and_expiry(running: Running) -> None:
    fast_failures(running)
    async with admin(running, login=False) as client:
        with pytest.raises(ApiError) as bad:
            await client.request(api.Login(password="wrong password!"))
        assert bad.value.code == ErrorCode.BAD_CREDENTIALS
        with pytest.raises(ApiError) as bad_token:
            await client.request(api.Login(token="gwt_0000000000000000_nope"))
        assert bad_token.value.code == ErrorCode.BAD_CREDENTIALS

        session = await client.request(api.Login(password=running.admin_password))
        assert isinstance(session, api.Session) and session.token is not None
        created = await client.request(api.TokenCreate(name="backup script", expires_in_days=30))
        assert isinstance(created, api.TokenCreated)
        tokens = await client.request(api.TokenList())
        assert isinstance(tokens, api.Tokens)
        assert [t.name for t in tokens.tokens] == ["backup script"]
        # Neither the control log nor the admin files keep a token or the password.
        await running.archive.sync_control()
        kept = b"".join(r.body for r in running.archive.read_control())
        kept += b"".join(p.read_bytes() for p in running.archive.data.admin_dir.iterdir())
        for secret in (created.token, session.token):
            assert secret.split("_", 2)[2].encode() not in kept
        assert running.admin_password.encode() not in kept

    # The API token and the session token both log in from another connection.
    async with admin(running, login=False) as other:
        by_token = await other.request(api.Login(token=created.token))
        assert isinstance(by_token, api.Session) and by_token.actor == "token:backup script"
        await other.request(api.MailboxList())
        async with admin(running, login=False) as third:
            await third.request(api.Login(token=session.token))
            await third.request(api.MailboxList())
            async with admin(running) as revoker:
                await revoker.request(api.TokenRevoke(token_id=created.info.token_id))
                with pytest.raises(ApiError) as no_such:
                    await revoker.request(api.TokenRevoke(token_id=created.info.token_id))
                assert no_such.value.code == ErrorCode.NO_SUCH_TOKEN
            # Revoked: the connection using it is closed (4001), or refused if it asks first.
            with pytest.raises((ApiError, ClientError)) as revoked:
                await other.request(api.MailboxList())
            if isinstance(revoked.value, ApiError):
                assert revoked.value.code == ErrorCode.UNAUTHENTICATED
            await _closed(other)
            assert other.closed is not None and other.closed.startswith("4001")
            # Logout ends the session token everywhere.
            await third.request(api.Logout())
            with pytest.raises(ApiError) as logged_out:
                await third.request(api.MailboxList())
            assert logged_out.value.code == ErrorCode.UNAUTHENTICATED

    # An expired session token.
    assert running.gateway.accounts is not None
    running.gateway.accounts.session_ttl = 0.3
    async with admin(running) as short:
        await _closed(short)  # at expiry, without a request
        assert short.closed is not None and short.closed.startswith("4001")
        assert "log in again" in short.closed


async def test_failed_logins_are_throttled_and_audited(running: Running) -> None:
    fast_failures(running)
    async with admin(running, login=False) as client:
        for _ in range(5):
            with pytest.raises(ApiError) as bad:
                await client.request(api.Login(password="guess guess guess"))
            assert bad.value.code == ErrorCode.BAD_CREDENTIALS
        # Locked out now, even with the right password.
        with pytest.raises(ApiError) as throttled:
            await client.request(api.Login(password=running.admin_password))
        assert throttled.value.code == ErrorCode.THROTTLED
        assert throttled.value.retry_after is not None and throttled.value.retry_after > 20
    await running.archive.sync_control()
    events = [msgspec.msgpack.decode(r.body) for r in running.archive.read_control()]
    failures = [e for e in events if e["type"] == "AdminLogin" and not e["success"]]
    assert len(failures) == 6
    assert all(e["actor"]["address"] == "127.0.0.1" for e in failures)
    raw = b"".join(r.body for r in running.archive.read_control())
    assert b"guess guess" not in raw and running.admin_password.encode() not in raw


async def test_admin_password_change(running: Running) -> None:
    fast_failures(running)
    async with admin(running) as client:
        with pytest.raises(ApiError) as wrong:
            await client.request(
                api.AdminPasswd(old_password="nope nope nope", new_password="a new long password")
            )
        assert wrong.value.code == ErrorCode.BAD_CREDENTIALS
        with pytest.raises(ApiError) as short:
            await client.request(
                api.AdminPasswd(old_password=running.admin_password, new_password="short")
            )
        assert short.value.code == ErrorCode.INVALID
        await client.request(
            api.AdminPasswd(old_password=running.admin_password, new_password="a new long password")
        )
        # Sessions end with the old password: this one too, right after the reply.
        await _closed(client)
        assert client.closed is not None and client.closed.startswith("4001")
    async with admin(running, login=False) as again:
        with pytest.raises(ApiError):
            await again.request(api.Login(password=running.admin_password))
        await again.request(api.Login(password="a new long password"))


async def test_wrong_origin_is_refused(running: Running) -> None:
    trust = TrustSettings(cafile=str(running.cafile))
    with pytest.raises(ClientError, match="403"):
        async with connect(running.admin_url, trust, origin="https://evil.example"):
            pass
    port = running.port("admin")
    async with connect(
        running.admin_url,
        TrustSettings(cafile=str(running.cafile)),
        origin=f"https://localhost:{port}",
    ) as client:
        await client.request(api.Login(password=running.admin_password))


async def test_certificate_fingerprint_pinning(running: Running) -> None:
    der = ssl.PEM_cert_to_DER_cert(running.cafile.read_text())
    good = hashlib.sha256(der).hexdigest()
    async with connect(running.admin_url, TrustSettings(fingerprint=good)) as client:
        await client.request(api.Login(password=running.admin_password))
    with pytest.raises(ClientError, match="fingerprint"):
        async with connect(running.admin_url, TrustSettings(fingerprint="00" * 32)):
            pass
    with pytest.raises(ClientError, match="cannot connect"):
        async with connect(running.admin_url, TrustSettings()):  # system store: untrusted
            pass


async def _http(running: Running, request: bytes) -> bytes:
    stream = await trio.open_ssl_over_tcp_stream(
        "localhost", running.port("admin"), ssl_context=running.context()
    )
    response = b""
    try:
        await stream.send_all(request)
        with trio.fail_after(5):
            while data := await stream.receive_some():
                response += data
    finally:
        await trio.aclose_forcefully(stream)
    return response


async def test_console_files_and_http_errors(running: Running) -> None:
    page = await _http(running, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-security-policy: default-src 'none'" in head.lower()
    assert b"x-frame-options: deny" in head.lower()
    assert b"<html" in body.lower()
    for path in (b"/console.js", b"/console.css"):
        response = await _http(running, b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200")
    assert (await _http(running, b"GET /etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
        b"HTTP/1.1 404"
    )
    assert (await _http(running, b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 405")
    assert (await _http(running, b"\x16garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")


async def _control_chain_check(records: list[api.Audit], running: Running) -> None:
    """Recompute the chain from the records' bytes as a remote auditor would."""
    chain = genesis_chain(CONTROL_LOG_ID)
    by_seq = {r.seq: r for r in records}
    for record in running.archive.read_control():
        if record.seq in by_seq:
            audit = by_seq[record.seq]
            _h, _t, expected = encode_record_parts(RecordKind.EVENT, audit.seq, audit.record, chain)
            assert expected.hex() == audit.chain
        chain = record.chain


async def test_audit_feed_history_then_live_with_filters(running: Running) -> None:
    async with admin(running) as client:
        first = await client.request(api.MailboxCreate(name="First"))
        assert isinstance(first, api.MailboxCreated)
        subscribed = await client.request(api.AuditSubscribe(since=0))
        assert isinstance(subscribed, api.Subscribed)
        history: list[api.Audit] = []
        with trio.fail_after(10):
            async for item in client.audit:
                if isinstance(item, api.AuditCaughtUp):
                    assert item.next_seq == subscribed.next_seq
                    break
                assert isinstance(item, api.Audit)
                history.append(item)
        assert [r.seq for r in history] == list(range(len(history)))
        types = [r.event["type"] for r in history if r.event]
        assert types[:4] == [
            "GatewayStarted",
            "AdminAccountCreated",
            "AdminSessionStarted",
            "AdminLogin",
        ]
        assert "MailboxCreated" in types
        await _control_chain_check(history, running)

        # Live: a delivery shows up without asking.
        await trio.to_thread.run_sync(deliver, running.port("smtp"), first.mailbox.address)
        with trio.fail_after(10):
            async for item in client.audit:
                assert isinstance(item, api.Audit)
                assert item.seq >= subscribed.next_seq
                if item.event and item.event["type"] == "MessageAccepted":
                    assert item.event["mailbox_ids"] == [first.mailbox.mailbox_id]
                    break

    # Filters: one mailbox, some types; "now" (since=None) has no history.
    async with admin(running) as client:
        second = await client.request(api.MailboxCreate(name="Second"))
        assert isinstance(second, api.MailboxCreated)
        one = await client.request(
            api.AuditSubscribe(
                since=0, mailbox=second.mailbox.mailbox_id, types=("MailboxUpdated",)
            )
        )
        every = await client.request(api.AuditSubscribe(since=None, types=("MailboxUpdated",)))
        assert isinstance(one, api.Subscribed) and isinstance(every, api.Subscribed)
        await client.request(api.MailboxSuspend(mailbox=first.mailbox.mailbox_id))
        await client.request(api.MailboxSuspend(mailbox=second.mailbox.mailbox_id))
        seen: list[tuple[int, str]] = []
        with trio.fail_after(10):
            async for item in client.audit:
                if isinstance(item, api.Audit):
                    assert item.event is not None and item.event["type"] == "MailboxUpdated"
                    seen.append((item.subscription, item.event["mailbox_id"]))
                if len(seen) == 3:
                    break
        first_id, second_id = first.mailbox.mailbox_id, second.mailbox.mailbox_id
        assert sorted(seen) == sorted(
            [
                (one.subscription, second_id),
                (every.subscription, first_id),
                (every.subscription, second_id),
            ]
        )


async def test_audit_follow_false_ends_after_history(running: Running) -> None:
    async with admin(running) as client:
        await client.request(api.AuditSubscribe(since=0, follow=False))
        items = []
        with trio.fail_after(10):
            async for item in client.audit:
                items.append(item)
                if isinstance(item, api.AuditCaughtUp):
                    break
        assert len(items) >= 3
        await client.request(api.MailboxCreate(name="After"))
        with trio.move_on_after(1):
            extra = await client.audit.receive()
            raise AssertionError(f"nothing more expected, got {extra}")


@pytest.mark.slow
async def test_slow_subscriber_is_dropped_while_intake_runs(running: Running) -> None:
    """20 SMTP clients deliver at full rate; an audit subscriber that stops reading is
    disconnected with a reason, intake never waits for it, and every delivery is stored."""
    hub = running.gateway.hub
    assert hub is not None
    hub.queue_size = 200
    async with admin(running) as client:
        created = await client.request(api.MailboxCreate(name="Busy"))
        assert isinstance(created, api.MailboxCreated)
    address = created.mailbox.address
    sent: list[int] = []  # list.append is atomic across the sender threads
    stop = trio.Event()

    def sender() -> None:
        with smtplib.SMTP("127.0.0.1", running.port("smtp")) as smtp:
            while not stop.is_set():
                smtp.sendmail("a@example.org", [address], b"Subject: x\r\n\r\n" + b"y" * 2000)
                sent.append(1)

    tcp = await trio.open_tcp_stream("127.0.0.1", running.port("admin"))
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fill up sooner
    stream = trio.SSLStream(tcp, running.context(), server_hostname="localhost")
    try:
        async with trio.open_nursery() as ws_nursery:
            stalled = await wrap_client_stream(
                ws_nursery, stream, "localhost", "/api", message_queue_size=1
            )
            # Log in and subscribe, then never read again.
            login = api.Login(id=1, password=running.admin_password)
            await stalled.send_message(api.encode_request(login))
            await stalled.send_message(api.encode_request(api.AuditSubscribe(id=2, since=None)))
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(trio.to_thread.run_sync, sender)
                with trio.fail_after(120):
                    while hub.dropped == 0:  # noqa: ASYNC110 - the hub has no event for this
                        await trio.sleep(0.1)
                stop.set()
            reason = None
            with trio.fail_after(30):
                try:
                    while True:
                        await stalled.get_message()
                except ConnectionClosed as closed:
                    reason = closed.reason
            assert reason is not None and reason.code == 4000
            assert reason.reason is not None and "fell behind" in reason.reason
            ws_nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
    stored = len(running.archive.messages(created.mailbox.mailbox_id))
    # Each message is at least two control records (its witness, MessageAccepted): the
    # subscriber's 200 fell behind within about 100 messages, and intake went on past them.
    assert stored == len(sent) and len(sent) > 100


async def test_rapid_resubscribing_keeps_the_connection(running: Running) -> None:
    """Unsubscribing while history is being sent must not cut a send in half (which would
    break the TLS stream): the console does this whenever its filters change."""
    async with admin(running) as client:
        for _ in range(30):
            subscribed = await client.request(api.AuditSubscribe(since=0))
            assert isinstance(subscribed, api.Subscribed)
            await client.request(api.AuditUnsubscribe(subscription=subscribed.subscription))
        status = await client.request(api.Status())
        assert isinstance(status, api.StatusReply)
        with pytest.raises(ApiError) as unknown:
            await client.request(api.AuditUnsubscribe(subscription=999))
        assert unknown.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("source", ["environment", "file"])
async def test_first_admin_password_from_environment_or_file(
    tmp_path: Path, nursery: trio.Nursery, source: str
) -> None:
    config = make_config(tmp_path / "data")
    environ = {}
    if source == "environment":
        environ["GATEWAY_ADMIN_PASSWORD"] = "from the environment"
    else:
        (tmp_path / "pw").write_text("from a file here\n")
        config = msgspec.structs.replace(
            config, admin=AdminConfig(password_file=str(tmp_path / "pw"))
        )
    announced: list[str] = []
    gateway = Gateway(config, environ=environ, announce_admin_password=announced.append)
    listening: list[Listening] = await nursery.start(gateway.run)
    assert announced == []  # nothing generated, nothing printed
    port = next(x.port for x in listening if x.name == "admin")
    password = "from the environment" if source == "environment" else "from a file here"
    trust = TrustSettings(cafile=str(tmp_path / "data" / "tls" / "cert.pem"))
    async with connect(f"wss://localhost:{port}/api", trust) as client:
        session = await client.request(api.Login(password=password))
        assert isinstance(session, api.Session)
    gateway.request_shutdown()
