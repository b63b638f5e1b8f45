"""Security regressions of the admin API (issue 12), each named after the attack it covers."""

from __future__ import annotations

import io
import logging
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway import cli, cli_admin
from gateway._text import first_unsafe
from gateway.client import AdminClient, TrustSettings, connect
from gateway.protocols import admin as api
from gateway.protocols.admin import ApiError, ErrorCode
from gateway.servers.gateway import Gateway, Listening
from gateway.services._common import InvalidValue
from gateway.services.accounts import Accounts, Principal
from gateway.services.admin import AdminService
from gateway.services.archive import Archive

from .gateway_helpers import Running, make_config


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
        Accounts(archive.data, archive.config.kdf, archive.state.admin, archive.append_control),
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


# -- item 12: mailbox names that spoof the command line's table -----------------------------

SPOOFING = [
    "\n",  # a forged table row
    "\r",  # overwrites the line
    "\x1b",  # ESC: terminal control sequences
    "\x7f",  # DEL
    "\x85",  # NEL, a C1 line break
    "\x9b",  # CSI, the C1 form of ESC [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE: "Trojan Source", CVE-2021-42574
    "\u202a",
    "\u2066",
    "\u2069",
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u061c",  # ARABIC LETTER MARK
    "\u2028",  # LINE SEPARATOR
    "\u2029",  # PARAGRAPH SEPARATOR
]


@pytest.mark.parametrize("char", SPOOFING, ids=[f"U+{ord(c):04X}" for c in SPOOFING])
async def test_mailbox_name_with_spoofing_characters_is_refused(
    archive: Archive, char: str
) -> None:
    """A name such as ``"ok\\n<id>  CEO  active ..."`` or ``"\\u202etxt.exe"`` forged rows and
    reordered text in ``gateway mailbox list``."""
    with pytest.raises(InvalidValue, match="must not contain"):
        await archive.create_mailbox(f"Sales{char}EU")
    with pytest.raises(InvalidValue, match="must not contain"):
        await archive.create_mailbox("Sales", f"journal{char}copy" if char not in "\n" else "\r")
    info, _password = await archive.create_mailbox("Sales", "journal")
    with pytest.raises(InvalidValue, match="must not contain"):
        await archive.update_mailbox(info.mailbox_id, name=f"Sales{char}")
    assert archive.mailbox(info.mailbox_id).name == "Sales"


async def test_names_take_no_tab_and_descriptions_keep_tabs_and_newlines(
    archive: Archive,
) -> None:
    with pytest.raises(InvalidValue):
        await archive.create_mailbox("Sales\tEU")
    info, _password = await archive.create_mailbox(
        "Ventes \u00e9t\u00e9 \u65e5\u672c \U0001f4e7", "line one\n\tline two"
    )
    assert archive.mailbox(info.mailbox_id).description == "line one\n\tline two"


async def test_spoofing_name_through_the_api_is_invalid(running: Running) -> None:
    async with admin(running) as client:
        for name in ("a\nb", "\u202eevil", "x\x85y"):
            with pytest.raises(ApiError) as refused:
                await client.request(api.MailboxCreate(name=name))
            assert refused.value.code == ErrorCode.INVALID


def test_cli_table_never_prints_raw_controls_even_from_old_data(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Data stored before the check (or sent by another server) is shown escaped: one
    mailbox is one line, and nothing in it reaches the terminal as a control."""
    moment = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    forged = "Legal\n" + "f" * 32 + "  CEO private  active\x1b[2J\u202eexe.txt\x85\x7f\u2028"
    view = api.MailboxView(
        mailbox_id="e" * 32,
        address=f"mbx-{'e' * 32}@localhost",
        name=forged,
        description="two\nlines\tand\u202e",
        status="active",
        messages=1,
        bytes=10,
        created_at=moment,
        updated_at=moment,
    )
    cli_admin._print(api.Mailboxes(mailboxes=(view,)), as_json=False)
    table = capsys.readouterr().out
    assert len(table.splitlines()) == 2  # the header and one row
    cli_admin._print(api.Mailbox(mailbox=view), as_json=False)
    detail = capsys.readouterr().out
    assert len(detail.splitlines()) == len(api.MailboxView.__struct_fields__)
    for output in (table, detail):
        body = output.replace("\n", "")  # the line ends print itself adds
        assert first_unsafe(body) is None, repr(body)
    assert "Legal\\x0a" in table and "\\u202eexe.txt" in table
    assert "two\\x0alines\\x09and\\u202e" in detail


# -- item 24: the generated first admin password goes to the journal ------------------------

PASSWORD = "k7m2q-9xw4t-abcde-fghij-kmnpq-rstuv"


class Output(io.StringIO):
    """Standard output that is, or is not, a terminal."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("environ", "tty"),
    [
        ({"INVOCATION_ID": "5e1f00d5"}, True),
        ({"JOURNAL_STREAM": "8:12345"}, True),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, True),
        ({}, False),  # a pipe or a file: docker logs, nohup.out, a log collector
    ],
    ids=["INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "not-a-terminal"],
)
def test_generated_admin_password_stays_out_of_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, environ: dict[str, str], tty: bool
) -> None:
    """Under the shipped systemd unit, standard output is the journal: the password printed
    "once" was kept there for anyone in group adm or systemd-journal to read."""
    out = Output(tty)
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        cli.admin_password_announcer(tmp_path, environ, out)(PASSWORD)
    assert PASSWORD not in out.getvalue()
    assert PASSWORD not in caplog.text
    path = tmp_path / "admin" / "initial-password"
    assert path.read_text() == PASSWORD + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"path={path}" in caplog.text  # where it is, never what it is


def test_generated_admin_password_on_a_terminal_is_printed_not_filed(tmp_path: Path) -> None:
    out = Output(tty=True)
    cli.admin_password_announcer(tmp_path, {}, out)(PASSWORD)
    assert PASSWORD in out.getvalue()
    assert not (tmp_path / "admin" / "initial-password").exists()


def test_initial_password_file_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    """A link left at the file's path must not make the gateway write the password through
    it (to a world-readable place) or over another file."""
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    (tmp_path / "admin").mkdir()
    (tmp_path / "admin" / "initial-password").symlink_to(target)
    cli.admin_password_announcer(tmp_path, {"INVOCATION_ID": "1"}, Output(False))(PASSWORD)
    path = tmp_path / "admin" / "initial-password"
    assert not path.is_symlink() and path.read_text() == PASSWORD + "\n"
    assert target.read_text() == "untouched\n"


async def test_first_admin_login_deletes_the_initial_password_file(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    data = tmp_path / "data"
    announce = cli.admin_password_announcer(data, {"INVOCATION_ID": "1"}, Output(False))
    gateway = Gateway(make_config(data), environ={}, announce_admin_password=announce)
    listening: list[Listening] = await nursery.start(gateway.run)
    assert gateway.accounts is not None
    gateway.accounts.failure_delay = 0.01
    path = data / "admin" / "initial-password"
    password = path.read_text().strip()
    url = f"wss://localhost:{next(x.port for x in listening if x.name == 'admin')}/api"
    async with connect(url, TrustSettings(cafile=str(data / "tls" / "cert.pem"))) as client:
        with pytest.raises(ApiError):
            await client.request(api.Login(password="not the password at all"))
        assert path.exists()  # a failed login proves nothing
        await client.request(api.Login(password=password))
        assert not path.exists()
    gateway.request_shutdown()
