"""Signed checkpoints of the logs' Merkle trees (SPEC.md 8.1), made by the journal, and the
proofs against them.

Theory of operation
-------------------
Every log's tree grows with its records; each log keeps it in a file beside its segments
(``gateway.log``), which every head and proof is read from.
:class:`CheckpointSigner` signs each head that moved every ``[custody]
checkpoint_interval`` seconds, and at a clean stop: a C2SP checkpoint (origin, size, root)
in a signed note, with the Ed25519 key in ``<data>/custody/signing-key`` (made on the first
start). The mailbox logs' come first, each recorded in the control log
(``CheckpointSigned`` with its mailbox), then the control log's, which so covers theirs.
Only durable records are ever covered (a mailbox log's synced records; the control log is
synced first), so no crash can make a later checkpoint disagree with an earlier one. The
control log's are kept in ``<data>/custody/checkpoints/<size>`` and ``custody/checkpoint``
(the latest), a mailbox log's latest in ``custody/mailboxes/<id>``, and every one is in the
control log, so the audit feed carries them to witnesses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from ..events import (
    CheckpointSigned,
    CommitWitness,
    MessagesCommitted,
    decode_control_event,
    now,
)
from ..log import DataDir, LogWriteError, RecordKind
from ..merkle import MerkleTree, leaf_hash, record_leaf
from ..tlog import Checkpoint, NoteSigner, Verifier, open_note
from .archive import Archive

__all__ = [
    "CheckpointSigner",
    "InclusionProof",
    "ProofError",
    "consistency_proof",
    "control_origin",
    "find_commit",
    "inclusion_proof",
    "load_signer",
    "mailbox_origin",
    "read_log_tree",
]

logger = logging.getLogger("gateway")


def control_origin(hostname: str) -> str:
    """The control log's checkpoint origin, also its key's name: unique to this gateway's
    host name, with nothing a key name may not hold."""
    name = "".join(c for c in hostname if not c.isspace() and c != "+") or "gateway"
    return f"{name}/gateway/control"


def mailbox_origin(key_name: str, mailbox_id: str) -> str:
    """A mailbox log's checkpoint origin, beside the control log's (the key's name)."""
    return f"{key_name.removesuffix('/control')}/mailbox/{mailbox_id}"


def _new_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )


def load_signer(archive: Archive, origin: str) -> tuple[NoteSigner, bool]:
    """The signer of the data folder's checkpoints (blocking: reads or makes its key)."""
    raw, made = archive.data.read_or_create_signing_key(_new_key)
    return NoteSigner(origin, Ed25519PrivateKey.from_private_bytes(raw)), made


class CheckpointSigner:
    def __init__(self, archive: Archive, signer: NoteSigner) -> None:
        self.archive = archive
        self.signer = signer
        self.signed_size = 0  # the size of the newest checkpoint made
        self.mailboxes_signed: dict[str, int] = {}  # the same, per mailbox log

    @classmethod
    async def open(cls, archive: Archive, origin: str) -> CheckpointSigner:
        signer, made = await trio.to_thread.run_sync(load_signer, archive, origin)
        logger.info(
            "event=checkpoint-key vkey=%s created=%s", signer.vkey(), "true" if made else "false"
        )
        self = cls(archive, signer)
        await self.refresh()
        return self

    async def refresh(self) -> None:
        """Start again from the checkpoints kept (another node of a fleet may have signed
        since this one last did)."""
        self.signed_size, self.mailboxes_signed = 0, {}
        latest = await trio.to_thread.run_sync(self.archive.data.read_checkpoint)
        if latest is not None:
            try:
                body = open_note(latest, Verifier.parse(self.signer.vkey()))
                self.signed_size = Checkpoint.parse(body).size
            except ValueError as exc:  # NoteError: not ours, or damaged; the next one replaces it
                logger.warning("event=checkpoint-unreadable reason=%r", str(exc))

    async def sign(self) -> bytes | None:
        """Sign each mailbox log's tree head that moved since its last checkpoint, then the
        control log's; the control log's note, or None when it did not move."""
        await self._sign_mailboxes()
        size, root = await self.archive.tree_head()
        if size <= self.signed_size:
            return None  # not moved (or the tree is not known: size -1)
        origin = self.signer.name
        note = self.signer.sign(Checkpoint(origin, size, root).body())
        await trio.to_thread.run_sync(self.archive.data.save_checkpoint, size, note)
        await self.archive.append_control(
            CheckpointSigned(at=now(), origin=origin, size=size, root=root, note=note.decode())
        )
        # Its own record alone does not call for another checkpoint.
        self.signed_size = size + 1
        logger.info("event=checkpoint-signed origin=%s size=%d", origin, size)
        return note

    async def _sign_mailboxes(self) -> None:
        heads = await self.archive.mailbox_tree_heads()
        unknown = [box_id for box_id, _size, _root in heads if box_id not in self.mailboxes_signed]
        if unknown:
            self.mailboxes_signed |= await trio.to_thread.run_sync(self._signed_sizes, unknown)
        moved = [head for head in heads if head[1] > self.mailboxes_signed[head[0]]]
        if not moved:
            return

        def sign() -> list[CheckpointSigned]:
            """Sign each (about 50 us of Ed25519 each: off the event loop)."""
            signed = []
            for box_id, size, root in moved:
                origin = mailbox_origin(self.signer.name, box_id)
                note = self.signer.sign(Checkpoint(origin, size, root).body()).decode()
                signed.append(
                    CheckpointSigned(
                        at=now(), origin=origin, size=size, root=root, note=note, mailbox_id=box_id
                    )
                )
            return signed

        signed = await trio.to_thread.run_sync(sign)

        def save() -> None:
            for event in signed:
                self.archive.data.save_mailbox_checkpoint(event.mailbox_id, event.note.encode())

        # One batch, durable with the control log's own checkpoint, which is signed next;
        # then the files (a crash between: the next run signs the same heads again).
        await self.archive.append_control(signed, durable=False)
        await trio.to_thread.run_sync(save)
        for event in signed:
            self.mailboxes_signed[event.mailbox_id] = event.size
        logger.info("event=checkpoint-signed mailboxes=%d", len(signed))

    def _signed_sizes(self, mailbox_ids: list[str]) -> dict[str, int]:
        """The size of each mailbox log's latest checkpoint kept (0: none, or unreadable)."""
        verifier, sizes = Verifier.parse(self.signer.vkey()), {}
        for box_id in mailbox_ids:
            note = self.archive.data.read_mailbox_checkpoint(box_id)
            try:
                sizes[box_id] = Checkpoint.parse(open_note(note, verifier)).size if note else 0
            except ValueError:  # NoteError: damaged; the next one replaces it
                sizes[box_id] = 0
        return sizes

    async def run(self, interval: float) -> None:
        """Sign every ``interval`` seconds (0: never here; the clean stop signs); on a fleet
        store, only while this node does the housekeeping (SPEC.md 17.5)."""
        if interval <= 0:
            return
        signing = True  # as of open(): what is kept is what this node starts from
        while True:
            await trio.sleep(interval)
            try:
                if not await self.archive.housekeeping():
                    signing = False
                    continue
                if not signing:  # another node signed meanwhile
                    await self.refresh()
                    signing = True
                await self.sign()
            except (LogWriteError, OSError) as exc:  # a full disk, a fleet store away: later
                logger.error("event=checkpoint-failed reason=%r", str(exc))


class ProofError(Exception):
    """No proof can be made; the message says why."""


def read_log_tree(data: DataDir, mailbox_id: str | None, size: int) -> MerkleTree:
    """The tree of a log's first ``size`` records (the control log's, or ``mailbox_id``'s),
    from its tree file (blocking)."""
    where = "the control log" if mailbox_id is None else f"mailbox {mailbox_id}'s log"
    try:
        return data.log_tree(mailbox_id, size)
    except FileNotFoundError:
        raise ProofError(f"{where} has no tree file (the next start builds it)") from None
    except ValueError as exc:
        raise ProofError(f"{where}: {exc}") from None


def consistency_proof(
    data: DataDir, old: int, new: int, signed: int, mailbox_id: str | None = None
) -> list[bytes]:
    """The proof that a log's tree of ``new`` records extends that of ``old`` (blocking):
    the control log's, or ``mailbox_id``'s; ``new`` at most ``signed`` (its latest signed
    checkpoint's size)."""
    if not 0 < old <= new <= signed:
        raise ProofError(f"no proof from {old} to {new} (the latest checkpoint: {signed})")
    return read_log_tree(data, mailbox_id, new).consistency_proof(old, new)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    index: int  # the commit record's seq in its mailbox log
    leaf: bytes
    hashes: list[bytes]
    mailbox_id: str
    size: int  # the checkpoint's
    note: bytes  # the mailbox log's signed checkpoint the proof is against


def inclusion_proof(
    data: DataDir, verifier: Verifier, mailbox_id: str, seq: int, body: bytes
) -> InclusionProof:
    """The proof of a mailbox log's record ``seq`` (an event whose body is ``body``: a
    message's commit record) against that log's latest checkpoint (blocking), which must
    be signed by ``verifier``'s key and be the head of the log's tree."""
    note = data.read_mailbox_checkpoint(mailbox_id)
    if note is None:
        raise ProofError(f"no checkpoint of mailbox {mailbox_id}'s log has been signed yet")
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if checkpoint.size <= seq:
        raise ProofError(
            f"record {seq} of mailbox {mailbox_id} came after its latest checkpoint "
            f"({checkpoint.size} records): the next one covers it"
        )
    tree = read_log_tree(data, mailbox_id, checkpoint.size)
    if tree.root() != checkpoint.root:
        raise ProofError(f"mailbox {mailbox_id}'s tree does not lead to its checkpoint's head")
    leaf = record_leaf(seq, RecordKind.EVENT, body)
    if tree.leaf(seq) != leaf_hash(leaf):
        raise ProofError(f"record {seq} of mailbox {mailbox_id} is not the leaf its tree holds")
    return InclusionProof(seq, leaf, tree.inclusion_proof(seq), mailbox_id, checkpoint.size, note)


def find_commit(data: DataDir, message_id: str, mailbox_id: str | None) -> tuple[str, int, bytes]:
    """A message's commit record, read from the files (blocking): its mailbox, seq and
    body, found through its witness in the control log (which is read up to it)."""
    for record in data.records(None):
        if record.kind != RecordKind.EVENT or message_id.encode() not in record.body:
            continue
        event = decode_control_event(record.body)
        if not isinstance(event, MessagesCommitted):
            continue
        for commit in event.commits:
            if commit.message_id == message_id and mailbox_id in (None, commit.mailbox_id):
                return commit.mailbox_id, commit.seq, _record_body(data, commit)
    raise ProofError(f"no witness of message {message_id} in the control log")


def _record_body(data: DataDir, commit: CommitWitness) -> bytes:
    for record in data.records(commit.mailbox_id, from_seq=commit.seq):
        if record.seq == commit.seq and record.kind == RecordKind.EVENT:
            return record.body
        break
    raise ProofError(
        f"the commit record of message {commit.message_id} is gone from mailbox "
        f"{commit.mailbox_id}'s log (compacted after an expunge)"
    )
