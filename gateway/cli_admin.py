"""The admin commands of the command line: ``gateway mailbox|audit|admin|token|status ...``,
clients of the running gateway's admin API (SPEC.md 9 and 13).

Where to connect: ``--url``, else the admin listener of the configuration (``--config``,
``--data-dir`` as for ``serve``; the embedded default's otherwise). Whom to trust: the system
store plus the data folder's self-signed certificate, or ``--fingerprint``. Who logs in:
``GATEWAY_TOKEN``, else ``GATEWAY_ADMIN_PASSWORD``, else a prompt on the terminal.

Output is a table for people, or JSON (``--json``: one object per reply, one line per audit
record). A table never prints a control or bidirectional formatting character, whatever the
gateway sends (old data, another server): each is shown escaped (``\\x1b``, ``\\u202e``), so
a mailbox name cannot forge a row or hide its own text. Exit codes: 0 done; 2 usage or
configuration error; 3 the gateway cannot be reached; 4 login refused; 5 the gateway refused
the operation (the error code and message are printed).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import trio

from ._text import escape_unsafe
from .client import AdminClient, ClientError, TrustSettings, connect
from .config import ConfigError, Protocol, load_config
from .log import DataDir
from .protocols import admin as api
from .protocols.admin import ApiError

__all__ = ["run_admin_command"]

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_LOGIN, EXIT_REFUSED = 0, 2, 3, 4, 5


def run_admin_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        url, trust = _target(args)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        login = _login_request(environ)
        request = _request(args)
    except _Usage as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return trio.run(_run, args, url, trust, login, request)
    except ClientError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return EXIT_OK


class _Usage(Exception):
    pass


def _target(args: argparse.Namespace) -> tuple[str, TrustSettings]:
    config = load_config(args.config, data_dir=args.data_dir)
    url = args.url
    if url is None:
        listener = next((x for x in config.listeners if x.protocol == Protocol.ADMIN), None)
        if listener is None:
            raise ConfigError("the configuration has no admin listener; give --url")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listener.address, listener.address)  # noqa: S104
        if host == "127.0.0.1":
            host = "localhost"  # the self-signed certificate names localhost
        url = f"wss://{'[' + host + ']' if ':' in host else host}:{listener.port}/api"
    if args.fingerprint:
        return url, TrustSettings(fingerprint=args.fingerprint)
    if config.tls.certificate:
        return url, TrustSettings(cafile=config.tls.certificate)
    generated, _key = DataDir(Path(config.data_dir)).tls_certificate
    return url, TrustSettings(cafile=str(generated) if generated.exists() else None)


def _login_request(environ: Mapping[str, str]) -> api.Login:
    if token := environ.get("GATEWAY_TOKEN"):
        return api.Login(token=token)
    if password := environ.get("GATEWAY_ADMIN_PASSWORD"):
        return api.Login(password=password)
    if not sys.stdin.isatty():
        raise _Usage("set GATEWAY_TOKEN or GATEWAY_ADMIN_PASSWORD (no terminal to ask on)")
    return api.Login(password=getpass.getpass("admin password: "))


def _stdin_lines(count: int, prompts: list[str]) -> list[str]:
    if not sys.stdin.isatty():
        lines = [sys.stdin.readline().rstrip("\r\n") for _ in range(count)]
        return [line for line in lines if line]
    return [getpass.getpass(prompt) for prompt in prompts[:count]]


def _request(args: argparse.Namespace) -> api.Request | None:
    command, verb = args.command, getattr(args, "verb", None)
    match command, verb:
        case "mailbox", "list":
            return api.MailboxList()
        case "mailbox", "show":
            return api.MailboxGet(mailbox=args.mailbox)
        case "mailbox", "create":
            password = _stdin_lines(1, ["mailbox password: "])[0] if args.password_stdin else None
            return api.MailboxCreate(
                name=args.name, description=args.description, password=password
            )
        case "mailbox", "update":
            if args.name is None and args.description is None:
                raise _Usage("mailbox update needs --name or --description")
            return api.MailboxUpdate(
                mailbox=args.mailbox, name=args.name, description=args.description
            )
        case "mailbox", "suspend":
            return api.MailboxSuspend(mailbox=args.mailbox)
        case "mailbox", "activate":
            return api.MailboxActivate(mailbox=args.mailbox)
        case "mailbox", "passwd":
            lines = _stdin_lines(2, ["old mailbox password: "])
            if not lines:
                raise _Usage("mailbox passwd needs the old password")
            return api.MailboxPasswd(
                mailbox=args.mailbox,
                old_password=lines[0],
                new_password=lines[1] if len(lines) > 1 else None,
            )
        case "mailbox", "reset":
            if not args.yes:
                raise _Usage(
                    "mailbox reset makes every message stored so far unreadable, forever; "
                    "add --yes to go ahead"
                )
            return api.MailboxReset(mailbox=args.mailbox, confirm=True)
        case "mailbox", "delete":
            return api.MailboxDelete(mailbox=args.mailbox, purge=args.purge)
        case "mailbox", "purge-unreadable":
            return api.MailboxPurgeUnreadable(mailbox=args.mailbox)
        case "admin", "passwd":
            lines = _stdin_lines(2, ["old admin password: ", "new admin password: "])
            if len(lines) != 2:
                raise _Usage("admin passwd needs the old and the new password")
            return api.AdminPasswd(old_password=lines[0], new_password=lines[1])
        case "token", "create":
            return api.TokenCreate(name=args.name, expires_in_days=args.days)
        case "token", "list":
            return api.TokenList()
        case "token", "revoke":
            return api.TokenRevoke(token_id=args.token_id)
        case "status", _:
            return api.Status()
        case "audit", "tail":
            return None  # streamed: see _tail
    raise _Usage(f"unknown command {command} {verb}")


async def _run(
    args: argparse.Namespace,
    url: str,
    trust: TrustSettings,
    login: api.Login,
    request: api.Request | None,
) -> int:
    async with connect(url, trust) as client:
        try:
            await client.request(login)
        except ApiError as exc:
            print(escape_unsafe(f"gateway: login refused: {exc.message}"), file=sys.stderr)
            return EXIT_LOGIN
        try:
            if request is None:
                return await _tail(client, args)
            reply = await client.request(request)
        except ApiError as exc:
            print(escape_unsafe(f"gateway: {exc.code}: {exc.message}"), file=sys.stderr)
            return EXIT_REFUSED
        _print(reply, args.json)
        return EXIT_OK


async def _tail(client: AdminClient, args: argparse.Namespace) -> int:
    since = args.since
    if since is None:
        status = await client.request(api.Status())
        assert isinstance(status, api.StatusReply)
        since = max(0, status.control_seq - 20)
    await client.request(
        api.AuditSubscribe(
            since=since, mailbox=args.mailbox, types=tuple(args.type), follow=args.follow
        )
    )
    async for item in client.audit:
        if isinstance(item, api.AuditCaughtUp):
            if not args.follow:
                return EXIT_OK
            continue
        if isinstance(item, api.Audit):
            if args.json:
                print(msgspec.json.encode(item).decode(), flush=True)
            else:
                print(escape_unsafe(_audit_line(item)), flush=True)
    if client.closed is not None:
        print(
            escape_unsafe(f"gateway: the gateway closed the feed: {client.closed}"), file=sys.stderr
        )
        return EXIT_UNREACHABLE
    return EXIT_OK


def _audit_line(item: api.Audit) -> str:
    event = item.event or {}
    actor = event.get("actor", {})
    who = actor.get("kind", "")
    if actor.get("name"):
        who += f":{actor['name']}"
    if actor.get("address"):
        who += f"@{actor['address']}"
    skip = {"type", "at", "actor"}
    details = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    return (
        f"{item.seq:>8} {event.get('at', '')[:19]} {event.get('type', '?'):<20} {who:<22} {details}"
    )


# -- output --------------------------------------------------------------------------------


def _print(reply: api.Reply, as_json: bool) -> None:
    if as_json:
        data = msgspec.to_builtins(reply)
        data.pop("id", None)
        print(msgspec.json.encode(data).decode())
        return
    printer = _PRINTERS.get(type(reply))
    if printer is not None:
        printer(reply)
    else:
        print("done")


def _mailbox_rows(boxes: tuple[api.MailboxView, ...]) -> None:
    _table(
        [
            "id",
            "name",
            "status",
            "messages",
            "bytes",
            "unreadable",
            "last delivery",
            "last retrieval",
        ],
        [
            [
                m.mailbox_id,
                m.name,
                m.status + (" (damaged)" if m.damaged else ""),
                str(m.messages),
                str(m.bytes),
                f"{m.unreadable_messages} ({m.unreadable_bytes} bytes)"
                if m.unreadable_messages
                else "-",
                _when(m.last_delivery),
                _when(m.last_retrieval),
            ]
            for m in boxes
        ],
    )


def _mailbox_detail(box: api.MailboxView) -> None:
    for key, value in msgspec.to_builtins(box).items():
        _line(f"{key + ':':<16} {'' if value is None else value}")


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _line(text: str) -> None:
    """One line of a table or listing: nothing in it can move the cursor or reorder text."""
    print(escape_unsafe(text))


def _table(header: list[str], rows: list[list[str]]) -> None:
    cells = [[escape_unsafe(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(c) for c in column) for column in zip(*cells, strict=True)]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _once(label: str, secret: str) -> None:
    _line(f"{label} (shown once, store it now): {secret}")


def _print_created(reply: Any) -> None:
    _mailbox_detail(reply.mailbox)
    _once("password", reply.password)


def _print_reset(reply: Any) -> None:
    _mailbox_detail(reply.mailbox)
    _line(f"WARNING: {reply.warning}")
    _once("password", reply.password)


def _print_token(reply: Any) -> None:
    _line(f"token {reply.info.token_id} {reply.info.name!r}")
    _once("token", reply.token)


def _print_status(reply: Any) -> None:
    _line(f"gateway {reply.version} on {reply.hostname}, up {reply.uptime_seconds:.0f} s")
    if reply.certificate is not None:
        cert = reply.certificate
        _line(
            f"certificate: {cert.subject}, expires {_when(cert.expires_at)}, sha256 {cert.sha256}"
        )
    _line(f"sessions: {reply.sessions}, admin connections: {reply.admin_connections}")
    if reply.workers:
        _line(
            "workers: "
            + ", ".join(
                f"worker-{n} {'not running' if s is None else f'{s} sessions'}"
                for n, s in enumerate(reply.workers, 1)
            )
        )
    _line(f"storage: {reply.storage_bytes} bytes used, {reply.disk_free_bytes} bytes free")
    _table(
        ["listener", "protocol", "address", "port", "tls"],
        [[x.name, x.protocol, x.address, str(x.port), x.tls] for x in reply.listeners],
    )
    print()
    _mailbox_rows(reply.mailboxes)


_PRINTERS: dict[type, Callable[[Any], None]] = {
    api.Mailboxes: lambda r: _mailbox_rows(r.mailboxes),
    api.Mailbox: lambda r: _mailbox_detail(r.mailbox),
    api.MailboxCreated: _print_created,
    api.MailboxPasswordChanged: _print_created,
    api.MailboxPasswordReset: _print_reset,
    api.MailboxDeleted: lambda r: _line(
        f"deleted {r.mailbox_id} ({r.purged_messages} messages purged)"
    ),
    api.MailboxUnreadablePurged: lambda r: _line(
        f"purged {r.purged_messages} unreadable messages ({r.purged_bytes} bytes) "
        f"from {r.mailbox.mailbox_id}; {r.mailbox.messages} readable messages left"
    ),
    api.StatusReply: _print_status,
    api.TokenCreated: _print_token,
    api.Tokens: lambda r: _table(
        ["id", "name", "created", "expires"],
        [[t.token_id, t.name, _when(t.created_at), _when(t.expires_at)] for t in r.tokens],
    ),
}
