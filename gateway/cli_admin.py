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
the operation (the error code and message are printed); 141 (128 + SIGPIPE, as a command killed
by it) standard output was closed before everything was printed (``gateway status | head``):
the command stops quietly, without a traceback.

A mailbox is named ``name [1a2b3c4d]`` (the first 8 hex characters of its id) in audit lines and
tables: two mailboxes may share a name.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import os
import sys
import typing
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import trio

from ._groups import leaves
from ._text import escape_unsafe
from .cli_witness import witness
from .client import AdminClient, ClientError, NotListening, TrustSettings, connect
from .config import ConfigError, Protocol, load_config
from .events import ControlEvent
from .log import DataDir
from .protocols import admin as api
from .protocols.admin import ApiError

__all__ = ["run_admin_command"]

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_LOGIN, EXIT_REFUSED = 0, 2, 3, 4, 5
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: what a shell shows for a command killed by it

# The types `audit tail --type` can name: every control-log event this version knows.
EVENT_TYPES = tuple(sorted(cls.__name__ for cls in typing.get_args(ControlEvent)))

SHORT_ID = 8  # hex characters of a mailbox id shown beside its name


def run_admin_command(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        url, trust, data_dir = _target(args)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        login = _login_from_environment(environ)
        request = _request(args)
    except _Usage as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        code = trio.run(_run, args, url, trust, login, request, data_dir)
        sys.stdout.flush()  # here, not at exit: a closed stdout is handled below
    except NotListening as exc:
        print(
            f"gateway: no gateway seems to be running at {exc.url} ({exc}).\n"
            "gateway: start it with `gateway serve` (as a service: `systemctl start gateway`), "
            "or name the right one with --url or --config.",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except ClientError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:
        return _stdout_closed()
    except BaseExceptionGroup as group:
        if all(isinstance(leaf, BrokenPipeError) for leaf in leaves(group)):
            return _stdout_closed()
        raise
    except KeyboardInterrupt:
        return EXIT_OK
    else:
        return code


def _stdout_closed() -> int:
    """Whoever read standard output stopped (``gateway status | head``): end quietly, as a
    command killed by SIGPIPE does. Standard output is pointed at /dev/null so that Python's
    own flush at exit does not complain about the same closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_STDOUT_CLOSED


class _Usage(Exception):
    pass


class _NoCredentials(Exception):
    pass


def _target(args: argparse.Namespace) -> tuple[str, TrustSettings, Path]:
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
    data_dir = Path(config.data_dir)
    if args.fingerprint:
        return url, TrustSettings(fingerprint=args.fingerprint), data_dir
    if config.tls.certificate:
        return url, TrustSettings(cafile=config.tls.certificate), data_dir
    generated, _key = DataDir(data_dir).tls_certificate
    return url, TrustSettings(cafile=str(generated) if generated.exists() else None), data_dir


def _login_from_environment(environ: Mapping[str, str]) -> api.Login | None:
    """The login the environment gives; None: ask on the terminal once connected (so a
    gateway that is not running is said before anyone types a password)."""
    if token := environ.get("GATEWAY_TOKEN"):
        return api.Login(token=token)
    if password := environ.get("GATEWAY_ADMIN_PASSWORD"):
        return api.Login(password=password)
    return None


def _ask_login(data_dir: Path) -> api.Login:
    """The admin password from the terminal. Raises _NoCredentials without one."""
    if not sys.stdin.isatty():
        raise _NoCredentials(_no_credentials(data_dir))
    return api.Login(password=getpass.getpass("admin password: "))


def _no_credentials(data_dir: Path) -> str:
    first_start = data_dir / "admin" / "initial-password"  # services.accounts, SPEC.md 13.2
    return (
        "gateway: not logged in (no terminal to ask on): set GATEWAY_TOKEN to an API token "
        "(made by `gateway token create NAME`), or GATEWAY_ADMIN_PASSWORD to the admin password.\n"
        "gateway: the first start shows the admin password once, on its terminal or, under "
        f"systemd or without a terminal, in {first_start} (readable by the gateway's user only)."
    )


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
            alarms = (args.max_waiting_age, args.max_waiting_bytes, args.expect_mail_every)
            if args.name is None and args.description is None and alarms == (None,) * 3:
                raise _Usage(
                    "mailbox update needs --name, --description, --max-waiting-age, "
                    "--max-waiting-bytes or --expect-mail-every"
                )
            return api.MailboxUpdate(
                mailbox=args.mailbox,
                name=args.name,
                description=args.description,
                max_waiting_age=args.max_waiting_age,
                max_waiting_bytes=args.max_waiting_bytes,
                expect_mail_every=args.expect_mail_every,
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
            _check_event_types(args.type)
            return None  # streamed: see _tail
        case "witness", None:
            return None  # a loop: see witness
    raise _Usage(f"unknown command {command} {verb}")


def _check_event_types(types: list[str]) -> None:
    """An unknown type would match nothing, silently: a usage error instead."""
    for name in types:
        if name in EVENT_TYPES:
            continue
        folded = {known.lower(): known for known in EVENT_TYPES}
        close = difflib.get_close_matches(name.lower(), list(folded), n=1)
        hint = f" (did you mean {folded[close[0]]}?)" if close else ""
        raise _Usage(
            escape_unsafe(f"unknown event type {name!r} for --type{hint}; ")
            + f"the event types are: {', '.join(EVENT_TYPES)}"
        )


async def _run(
    args: argparse.Namespace,
    url: str,
    trust: TrustSettings,
    login: api.Login | None,
    request: api.Request | None,
    data_dir: Path,
) -> int:
    async with connect(url, trust) as client:
        if login is None:
            try:
                login = _ask_login(data_dir)
            except _NoCredentials as exc:
                print(exc, file=sys.stderr)
                return EXIT_USAGE
        try:
            await client.request(login)
        except ApiError as exc:
            print(escape_unsafe(f"gateway: login refused: {exc.message}"), file=sys.stderr)
            return EXIT_LOGIN
        try:
            if request is None and args.command == "witness":
                return await witness(client, args.state, args.vkey, args.interval, args.once)
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
    names: dict[str, str] = {}  # mailbox id -> name, for the lines (kept up to date below)
    if not args.json:
        boxes = await client.request(api.MailboxList())
        assert isinstance(boxes, api.Mailboxes)
        names = {m.mailbox_id: m.name for m in boxes.mailboxes}
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
            if item.seq < since:
                continue  # a gateway that sends records before since (older versions did)
            if args.json:
                print(msgspec.json.encode(item).decode(), flush=True)
            else:
                _learn_name(item, names)
                print(escape_unsafe(_audit_line(item, names)), flush=True)
    if client.closed is not None:
        print(
            escape_unsafe(f"gateway: the gateway closed the feed: {client.closed}"), file=sys.stderr
        )
        return EXIT_UNREACHABLE
    return EXIT_OK


_NAMING_EVENTS = ("MailboxCreated", "MailboxUpdated")  # their ``name`` is the mailbox's


def _learn_name(item: api.Audit, names: dict[str, str]) -> None:
    event = item.event or {}
    if event.get("type") in _NAMING_EVENTS and isinstance(event.get("mailbox_id"), str):
        names[event["mailbox_id"]] = str(event.get("name", ""))


def _mailbox_label(mailbox_id: str, names: Mapping[str, str]) -> str:
    """``name [1a2b3c4d]``; the whole id when its name is not known (a mailbox deleted
    before the records shown), as given when it is not an id (a refused request's)."""
    name = names.get(mailbox_id)
    return mailbox_id if name is None else f"{name} [{mailbox_id[:SHORT_ID]}]"


def _audit_line(item: api.Audit, names: Mapping[str, str]) -> str:
    event = item.event or {}
    actor = event.get("actor", {})
    who = actor.get("kind", "")
    if actor.get("name"):
        who += f":{actor['name']}"
    if actor.get("address"):
        who += f"@{actor['address']}"
    skip = {"type", "at", "actor"}
    if event.get("type") in _NAMING_EVENTS:
        skip.add("name")  # shown in the label
    details = []
    for key, value in event.items():
        if key in skip:
            continue
        if key in ("mailbox_id", "log") and isinstance(value, str) and value in names:
            details.append(f"mailbox={_mailbox_label(value, names)}")
        elif key == "mailbox_ids" and isinstance(value, list):
            details.append("mailboxes=" + ", ".join(_mailbox_label(v, names) for v in value))
        else:
            details.append(f"{key}={value}")
    return (
        f"{item.seq:>8} {event.get('at', '')[:19]} {event.get('type', '?'):<20} {who:<22} "
        + " ".join(details)
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
            "alarms",
        ],
        [
            [
                m.mailbox_id,
                f"{m.name} [{m.mailbox_id[:SHORT_ID]}]",
                m.status + (" (damaged)" if m.damaged else ""),
                str(m.messages),
                str(m.bytes),
                f"{m.unreadable_messages} ({m.unreadable_bytes} bytes)"
                if m.unreadable_messages
                else "-",
                _when(m.last_delivery),
                _when(m.last_retrieval),
                ",".join(m.alarms) or "-",
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
    if reply.checkpoint_vkey:
        _line(f"checkpoint key: {reply.checkpoint_vkey}")
    _table(
        ["listener", "protocol", "address", "port", "tls"],
        [[x.name, x.protocol, x.address, str(x.port), x.tls] for x in reply.listeners],
    )
    print()
    _mailbox_rows(reply.mailboxes)


def _print_mailbox(reply: Any) -> None:
    box = reply.mailbox
    if reply.unchanged:  # mailbox.suspend / activate of a mailbox already so
        _line(f"mailbox {box.name} [{box.mailbox_id[:SHORT_ID]}] already was {box.status}")
    _mailbox_detail(box)


_PRINTERS: dict[type, Callable[[Any], None]] = {
    api.Mailboxes: lambda r: _mailbox_rows(r.mailboxes),
    api.Mailbox: _print_mailbox,
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
