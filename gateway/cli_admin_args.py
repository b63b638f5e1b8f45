"""The command line of the admin client (``gateway mailbox|audit|admin|token|status``, SPEC.md
13): its arguments only, so that ``gateway serve`` parses its own without loading the client."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["ADMIN_COMMANDS", "add_admin_commands", "duration", "octets"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``30m``, ``6h``, ``2d``; ``off`` is 0 and ``default`` -1
    (the configuration's value, as the API takes it)."""
    text = text.strip().lower()
    if text in ("off", "default"):
        return 0.0 if text == "off" else -1.0
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 90s, 30m, 6h, 2d)"
        ) from None
    if not 0 <= value < 1e12:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    return value


def octets(text: str) -> int:
    """Octets, ``off`` (0) or ``default`` (-1)."""
    text = text.strip().lower()
    if text in ("off", "default"):
        return 0 if text == "off" else -1
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number of octets: {text!r}")
    return int(text)


ADMIN_COMMANDS = ("mailbox", "audit", "admin", "token", "status", "witness")


def add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="wss://host:port/api (default: from the configuration)")
    common.add_argument("--config", type=Path, help="TOML configuration, as for serve")
    common.add_argument("--data-dir", type=Path, help="data folder, as for serve")
    common.add_argument("--fingerprint", help="trust the certificate with this SHA-256")
    common.add_argument("--json", action="store_true", help="JSON output for scripts")

    mailbox = commands.add_parser("mailbox", help="manage mailboxes (admin API)")
    verbs = mailbox.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", parents=[common], help="all mailboxes")
    for verb, text in [
        ("show", "one mailbox"),
        ("suspend", "stop accepting mail (retrieval goes on)"),
        ("activate", "accept mail again"),
        ("purge-unreadable", "expunge the messages a reset made unreadable (retired key)"),
    ]:
        verbs.add_parser(verb, parents=[common], help=text).add_argument("mailbox")
    create = verbs.add_parser("create", parents=[common], help="a new mailbox")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    update = verbs.add_parser(
        "update", parents=[common], help="rename, describe, set its backlog alarms"
    )
    update.add_argument("mailbox")
    update.add_argument("--name")
    update.add_argument("--description")
    # Backlog alarms (SPEC.md 13.8): a duration (90s, 30m, 6h, 2d), "off", or "default".
    update.add_argument("--max-waiting-age", metavar="DURATION", type=duration)
    update.add_argument("--max-waiting-bytes", metavar="OCTETS|off|default", type=octets)
    update.add_argument("--expect-mail-every", metavar="DURATION", type=duration)
    passwd = verbs.add_parser(
        "passwd",
        parents=[common],
        help="new password, old one needed (mail stays readable); "
        "stdin: old password, then optionally the new one",
    )
    passwd.add_argument("mailbox")
    reset = verbs.add_parser(
        "reset", parents=[common], help="new key: mail stored so far becomes UNREADABLE"
    )
    reset.add_argument("mailbox")
    reset.add_argument("--yes", action="store_true", help="confirm the loss")
    delete = verbs.add_parser("delete", parents=[common], help="delete a suspended mailbox")
    delete.add_argument("mailbox")
    delete.add_argument("--purge", action="store_true", help="also discard its messages")

    audit = commands.add_parser("audit", help="the audit feed (admin API)")
    audit_verbs = audit.add_subparsers(dest="verb", required=True)
    tail = audit_verbs.add_parser("tail", parents=[common], help="print audit records")
    tail.add_argument("--since", type=int, help="from this sequence number (default: last 20)")
    tail.add_argument("--follow", action="store_true", help="keep printing new records")
    tail.add_argument("--mailbox")
    tail.add_argument("--type", action="append", default=[], help="event type (repeatable)")

    witness = commands.add_parser(
        "witness",
        parents=[common],
        help="check every new signed checkpoint extends the last one accepted (SPEC 8.3)",
    )
    witness.add_argument("--state", type=Path, required=True, help="the witness's memory")
    witness.add_argument("--vkey", help="the checkpoints' verifier key (else the state's)")
    witness.add_argument("--interval", type=float, default=60.0, help="seconds between looks")
    witness.add_argument("--once", action="store_true", help="look once, then exit")

    admin = commands.add_parser("admin", help="the admin account")
    admin_verbs = admin.add_subparsers(dest="verb", required=True)
    admin_verbs.add_parser(
        "passwd", parents=[common], help="change it (stdin: old, then new password)"
    )

    token = commands.add_parser("token", help="API tokens for scripts")
    token_verbs = token.add_subparsers(dest="verb", required=True)
    token_create = token_verbs.add_parser("create", parents=[common], help="a new token")
    token_create.add_argument("name")
    token_create.add_argument("--days", type=int, help="expires after this many days")
    token_verbs.add_parser("list", parents=[common], help="all tokens")
    token_verbs.add_parser("revoke", parents=[common], help="revoke one").add_argument("token_id")

    commands.add_parser("status", parents=[common], help="the gateway's status")
