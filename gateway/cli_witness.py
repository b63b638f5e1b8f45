"""``gateway witness``: a witness of the journal's signed checkpoints (SPEC.md 8.3).

It keeps, in its state file, the verifier key it trusts and the last checkpoint it accepted.
Every ``--interval`` seconds it asks the gateway for the latest checkpoint
(``checkpoint.latest``), checks its signature with that key, and asks for the consistency
proof from the accepted one to it (``proof.consistency``), which it verifies itself (RFC
9162): only a history that extends the accepted one is accepted. A checkpoint not signed by
the key, of another origin, smaller than the accepted one, of the same size with another
head, or without a valid proof is a rewritten or forked history: the witness says so on
standard error and exits 1 at once. The state file is replaced whole after each checkpoint
accepted.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import trio

from .client import AdminClient
from .merkle import verify_consistency
from .protocols import admin as api
from .tlog import Checkpoint, NoteError, Verifier, open_note

__all__ = ["witness"]

EXIT_OK, EXIT_FORKED, EXIT_USAGE = 0, 1, 2


class Forked(Exception):
    """The gateway presented a history that does not extend the accepted one."""


async def witness(
    client: AdminClient, state_path: Path, vkey: str | None, interval: float, once: bool
) -> int:
    state = _load(state_path)
    vkey = vkey or state.get("vkey")
    if not vkey:
        print(
            "gateway witness: give --vkey (the key `gateway status` shows) on the first run",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if state.get("vkey") not in (None, vkey):
        print("gateway witness: --vkey is not the key this state trusts", file=sys.stderr)
        return EXIT_USAGE
    verifier = Verifier.parse(vkey)
    while True:
        try:
            accepted = await _look(client, verifier, state.get("checkpoint", ""))
        except Forked as exc:
            print(f"gateway witness: FORKED HISTORY: {exc}", file=sys.stderr)
            return EXIT_FORKED
        if accepted is not None:
            state = {"vkey": vkey, "checkpoint": accepted}
            _save(state_path, state)
            checkpoint = Checkpoint.parse(open_note(accepted.encode(), verifier))
            print(f"accepted {checkpoint.origin} size {checkpoint.size}", flush=True)
        if once:
            return EXIT_OK
        await trio.sleep(interval)


async def _look(client: AdminClient, verifier: Verifier, accepted: str) -> str | None:
    """The latest checkpoint if it is new and extends ``accepted``; None if nothing new."""
    reply = await client.request(api.CheckpointLatest())
    assert isinstance(reply, api.CheckpointReply)
    if not reply.note or reply.note == accepted:
        return None
    try:
        new = Checkpoint.parse(open_note(reply.note.encode(), verifier))
    except NoteError as exc:
        raise Forked(f"the latest checkpoint does not verify: {exc}") from None
    if not accepted:
        return reply.note  # the first one: trusted as the start of what is watched
    old = Checkpoint.parse(open_note(accepted.encode(), verifier))
    if new.origin != old.origin:
        raise Forked(f"another log: {new.origin}, not {old.origin}")
    if new.size < old.size:
        raise Forked(f"the history shrank from {old.size} to {new.size} records")
    if new.size == old.size:
        if new.root != old.root:
            raise Forked(f"two heads for the same {new.size} records")
        return None
    try:
        proof = await client.request(api.ProofConsistency(old_size=old.size, new_size=new.size))
    except api.ApiError as exc:
        raise Forked(f"no consistency proof from {old.size} to {new.size}: {exc.message}") from None
    assert isinstance(proof, api.ConsistencyProofReply)
    hashes = [base64.b64decode(h) for h in proof.hashes]
    if not verify_consistency(old.size, new.size, old.root, new.root, hashes):
        raise Forked(f"size {new.size} does not extend size {old.size}: rewritten history")
    return reply.note


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _save(path: Path, state: dict[str, str]) -> None:
    temporary = path.with_name(path.name + ".new")
    with temporary.open("w") as out:
        json.dump(state, out)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
