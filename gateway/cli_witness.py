"""``gateway witness``: a witness of the journal's signed checkpoints (SPEC.md 8.3).

It keeps, in its state file, the verifier key it trusts and the last checkpoint it accepted
of every log (the control log's and each mailbox log's). It follows the audit feed, which
carries every checkpoint the journal signs (``CheckpointSigned``), and also asks for the
latest control-log checkpoint every ``--interval`` seconds (``checkpoint.latest``), so a
gateway that stops publishing is still watched. Each new checkpoint's signature is checked
with the key, and the consistency proof from the accepted one to it (``proof.consistency``)
is verified here (RFC 9162): only a history that extends the accepted one is accepted. A
checkpoint not signed by the key, of another origin, smaller than the accepted one, of the
same size with another head, or without a valid proof is a rewritten or forked history: the
witness says so on standard error and exits 1 at once. The state file is replaced whole
after each checkpoint accepted.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from .client import AdminClient
from .merkle import verify_consistency
from .protocols import admin as api
from .tlog import Checkpoint, NoteError, Verifier, open_note

__all__ = ["witness"]

EXIT_OK, EXIT_FORKED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
CONTROL = ""  # the control log's key among the logs watched


class Forked(Exception):
    """The gateway presented a history that does not extend the accepted one."""


class _Memory:
    """What the witness accepted, kept in its state file."""

    def __init__(self, path: Path, vkey: str, accepted: dict[str, str]) -> None:
        self.path, self.vkey, self.accepted = path, vkey, accepted
        self.verifier = Verifier.parse(vkey)
        self.lock = trio.Lock()

    def save(self) -> None:
        state: dict[str, Any] = {
            "vkey": self.vkey,
            "checkpoint": self.accepted.get(CONTROL, ""),
            "mailboxes": {k: v for k, v in self.accepted.items() if k != CONTROL},
        }
        temporary = self.path.with_name(self.path.name + ".new")
        with temporary.open("w") as out:
            json.dump(state, out)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self.path)


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
    accepted = {CONTROL: state.get("checkpoint") or ""} | dict(state.get("mailboxes") or {})
    memory = _Memory(state_path, vkey, {k: v for k, v in accepted.items() if v})
    try:
        await _poll(client, memory)
    except Forked as exc:
        return _forked(exc)
    if once:
        return EXIT_OK
    found: list[Forked] = []
    async with trio.open_nursery() as nursery:

        async def guarded(work: Callable[[], Awaitable[None]]) -> None:
            try:
                await work()
            except Forked as exc:
                found.append(exc)
            nursery.cancel_scope.cancel()  # a fork, or the feed ended

        nursery.start_soon(guarded, partial(_follow, client, memory))
        nursery.start_soon(guarded, partial(_poll_every, client, memory, interval))
    if found:
        return _forked(found[0])
    print(f"gateway witness: the gateway closed the feed: {client.closed}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _forked(exc: Forked) -> int:
    print(f"gateway witness: FORKED HISTORY: {exc}", file=sys.stderr)
    return EXIT_FORKED


async def _poll_every(client: AdminClient, memory: _Memory, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        await _poll(client, memory)


async def _poll(client: AdminClient, memory: _Memory) -> None:
    reply = await client.request(api.CheckpointLatest())
    assert isinstance(reply, api.CheckpointReply)
    if reply.note:
        await _consider(client, memory, CONTROL, reply.note)


async def _follow(client: AdminClient, memory: _Memory) -> None:
    """Every checkpoint the audit feed carries, as it is signed, until the feed ends."""
    await client.request(api.AuditSubscribe(types=("CheckpointSigned",), follow=True))
    print("gateway witness: following the audit feed", file=sys.stderr, flush=True)
    async for item in client.audit:
        if isinstance(item, api.Audit) and item.event is not None:
            event: dict[str, Any] = item.event
            note, log = event.get("note"), event.get("mailbox_id") or CONTROL
            if isinstance(note, str) and isinstance(log, str):
                await _consider(client, memory, log, note)


async def _consider(client: AdminClient, memory: _Memory, log: str, note: str) -> None:
    """Accept ``note`` as the latest checkpoint of ``log`` if it extends the accepted one."""
    async with memory.lock:
        accepted = memory.accepted.get(log, "")
        if note == accepted:
            return
        try:
            new = Checkpoint.parse(open_note(note.encode(), memory.verifier))
        except NoteError as exc:
            raise Forked(f"a checkpoint does not verify: {exc}") from None
        if accepted:
            old = Checkpoint.parse(open_note(accepted.encode(), memory.verifier))
            if not await _extends(client, log, old, new):
                return  # the accepted one, or an earlier state of it
        memory.accepted[log] = note
        await trio.to_thread.run_sync(memory.save)
        print(f"accepted {new.origin} size {new.size}", flush=True)


async def _extends(client: AdminClient, log: str, old: Checkpoint, new: Checkpoint) -> bool:
    """Whether ``new`` is newer than ``old``; raises Forked unless one of them extends the
    other (an older checkpoint may come late, from the feed: it must still be a prefix)."""
    if new.origin != old.origin:
        raise Forked(f"another log: {new.origin}, not {old.origin}")
    if new.size == old.size:
        if new.root != old.root:
            raise Forked(f"{new.origin}: two heads for the same {new.size} records")
        return False
    small, large = sorted((old, new), key=lambda c: c.size)
    request = api.ProofConsistency(old_size=small.size, new_size=large.size, mailbox_id=log)
    try:
        proof = await client.request(request)
    except api.ApiError as exc:
        if exc.code == api.ErrorCode.NO_SUCH_MAILBOX:
            # Deleted since it was signed: nothing left to prove against, nothing forked.
            print(f"gateway witness: {new.origin}: its mailbox is gone", file=sys.stderr)
            return False
        raise Forked(
            f"{new.origin}: no consistency proof from {small.size} to {large.size}: {exc.message}"
        ) from None
    assert isinstance(proof, api.ConsistencyProofReply)
    hashes = [base64.b64decode(h) for h in proof.hashes]
    if not verify_consistency(small.size, large.size, small.root, large.root, hashes):
        raise Forked(
            f"{new.origin}: size {large.size} does not extend size {small.size}: rewritten history"
        )
    return new.size > old.size


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return dict(data)
