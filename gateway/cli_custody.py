"""``gateway custody`` and ``gateway proof``, read-only and safe while the gateway runs: the
custody report of a data folder (SPEC.md 8.2: the control log read from its files, from its
base when older history was archived, folded by ``custody.Custody``, printed as a table or as
JSON), and Merkle proofs against the journal's signed checkpoints (SPEC.md 8.1)."""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .cli_admin_args import duration
from .custody import Custody, MessageCustody
from .events import decode_control_event, now
from .log import (
    BASE_FILE,
    DataDir,
    LogCorrupt,
    RecordKind,
    StaleRecoveryPoint,
)
from .services.tree_heads import ProofError, consistency_proof, find_commit, inclusion_proof
from .tlog import Checkpoint, NoteError, NoteSigner, Verifier, open_note

__all__ = ["add_custody_command", "add_proof_command", "run_custody", "run_proof"]

EXIT_OK, EXIT_EXCEPTIONS, EXIT_USAGE = 0, 1, 2


def add_custody_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], default_data_dir: Path
) -> None:
    custody = commands.add_parser(
        "custody", help="account for every message: accepted, retrieved, deleted (read-only)"
    )
    custody.add_argument("--data-dir", type=Path, default=default_data_dir)
    custody.add_argument("--mailbox", help="only this mailbox")
    custody.add_argument("--since", help="only messages accepted from this time (RFC 3339)")
    custody.add_argument(
        "--waiting-over", type=duration, help="flag messages waiting longer (e.g. 2d, 6h)"
    )
    custody.add_argument(
        "--allowed-from",
        help="flag retrievals from addresses outside these networks (comma-separated CIDRs)",
    )
    custody.add_argument("--json", action="store_true", help="JSON for tools")


def run_custody(args: argparse.Namespace) -> int:
    try:
        since = _time(args.since) if args.since else None
        allowed = [
            ipaddress.ip_network(n.strip(), strict=False)
            for n in (args.allowed_from or "").split(",")
            if n.strip()
        ]
    except ValueError as exc:
        print(f"gateway custody: {exc}", file=sys.stderr)
        return EXIT_USAGE
    data = DataDir(args.data_dir)
    if not data.control_dir.is_dir():
        print(f"gateway custody: {args.data_dir} is not a data folder", file=sys.stderr)
        return EXIT_USAGE
    custody, history_from = Custody(), 0
    try:
        base = data.read_point(None, BASE_FILE)
        history_from = base.seq if base is not None else 0
        records = data.records(None, from_seq=history_from)
        for record in records:
            if record.kind == RecordKind.EVENT and (event := decode_control_event(record.body)):
                custody.apply(event)
    except (LogCorrupt, StaleRecoveryPoint, OSError) as exc:
        print(f"gateway custody: the control log cannot be read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    messages = sorted(
        custody.selected(args.mailbox, since), key=lambda m: (m.mailbox_id, m.accepted_at)
    )
    moment = now()
    exceptions = Custody.exceptions(
        messages, now=moment, max_waiting=args.waiting_over, allowed=allowed
    )
    totals = Custody.totals(messages)
    if args.json:
        report: dict[str, Any] = {
            "history_from": history_from,
            "generated_at": moment,
            "totals": totals,
            "before_history": len(custody.before_history),
            "exceptions": exceptions,
            "messages": messages,
        }
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        _print(messages, exceptions, totals, history_from, len(custody.before_history))
    return EXIT_EXCEPTIONS if exceptions else EXIT_OK


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _print(
    messages: list[MessageCustody],
    exceptions: list[Any],
    totals: Any,
    history_from: int,
    before: int,
) -> None:
    if history_from:
        print(f"history kept from control record {history_from} (older records were archived)")
    print(
        f"accepted {totals.accepted} = retrieved and deleted {totals.retrieved_and_deleted}"
        f" + waiting {totals.waiting} + deleted unretrieved {totals.deleted_unretrieved}"
    )
    if before:
        print(f"{before} message(s) retrieved or deleted were accepted before that history")
    header = ["mailbox", "message", "accepted", "origin", "from", "tls", "retrievals", "deleted"]
    rows = [
        [
            m.mailbox_id[:8],
            m.message_id,
            m.accepted_at.strftime("%Y-%m-%d %H:%M:%SZ"),
            m.origin or "?",
            m.client_address or "-",
            m.tls or "-",
            str(len(m.retrievals)),
            f"{m.deleted_by} {m.deleted_at:%Y-%m-%d %H:%M:%SZ}" if m.deleted_at else "-",
        ]
        for m in messages
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for item in exceptions:
        print(f"EXCEPTION {item.kind} {item.mailbox_id} {item.message_id}: {item.detail}")


def add_proof_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], default_data_dir: Path
) -> None:
    proof = commands.add_parser(
        "proof",
        help="an inclusion proof of a message's commit record, or a consistency proof (read-only)",
    )
    proof.add_argument("--data-dir", type=Path, default=default_data_dir)
    proof.add_argument("message_id", nargs="?", help="the message (its commit record)")
    proof.add_argument(
        "--mailbox",
        help="the mailbox whose copy, or whose log's checkpoints (else the control log's)",
    )
    proof.add_argument(
        "--consistency", nargs=2, type=int, metavar=("OLD", "NEW"), help="two checkpoint sizes"
    )


def run_proof(args: argparse.Namespace) -> int:
    if (args.message_id is None) == (args.consistency is None):
        print("gateway proof: give a MESSAGE_ID or --consistency OLD NEW", file=sys.stderr)
        return EXIT_USAGE
    data = DataDir(args.data_dir)
    try:
        return _proof(data, args)
    except (ProofError, NoteError) as exc:
        print(f"gateway proof: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (LogCorrupt, OSError) as exc:
        print(f"gateway proof: the control log cannot be read: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _proof(data: DataDir, args: argparse.Namespace) -> int:
    raw = data.read_signing_key()
    if raw is None:
        raise ProofError("no signing key: the gateway has not run on this data folder")
    key = Ed25519PrivateKey.from_private_bytes(raw)
    note = data.read_checkpoint()
    if note is None:
        raise ProofError("no checkpoint has been signed yet (the journal signs them, 8.1)")
    # The key's name is the checkpoint's origin: the first line of the latest one.
    origin = note.split(b"\n", 1)[0].decode()
    signer = NoteSigner(origin, key)
    verifier = Verifier.parse(signer.vkey())
    if args.consistency is not None:
        old, new = args.consistency
        if args.mailbox is not None:
            note = data.read_mailbox_checkpoint(args.mailbox)
            signed = Checkpoint.parse(open_note(note, verifier)).size if note else 0
        else:
            for size in (old, new):
                if data.read_checkpoint(size) is None:
                    raise ProofError(f"no checkpoint of size {size} was signed")
            signed = new
        hashes = consistency_proof(data, old, new, signed, args.mailbox)
        _emit({"old_size": old, "new_size": new, "hashes": _b64(hashes), "vkey": signer.vkey()})
        return EXIT_OK
    mailbox_id, seq, body = find_commit(data, args.message_id, args.mailbox)
    proof = inclusion_proof(data, verifier, mailbox_id, seq, body)
    _emit(
        {
            "index": proof.index,
            "leaf": base64.b64encode(proof.leaf).decode(),
            "hashes": _b64(proof.hashes),
            "message_id": args.message_id,
            "mailbox_id": proof.mailbox_id,
            "size": proof.size,
            "checkpoint": proof.note.decode(),
            "vkey": signer.vkey(),
        }
    )
    return EXIT_OK


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def _emit(item: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(item) + "\n")
