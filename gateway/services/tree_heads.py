"""Signed checkpoints of the control log's Merkle tree (SPEC.md 8.1), made by the journal.

Theory of operation
-------------------
The control log's tree grows with every record (``ControlState.fold_record``); its head is
kept as a frontier, in the projection and so in the control log's recovery point.
:class:`CheckpointSigner` signs that head every ``[custody] checkpoint_interval`` seconds
when it moved, and at a clean stop: a C2SP checkpoint (origin, size, root) in a signed note,
with the Ed25519 key in ``<data>/custody/signing-key`` (made on the first start). Only
durable records are ever covered (``Archive.tree_head`` syncs the log first), so no crash
can make a later checkpoint disagree with an earlier one. Each checkpoint is kept in
``<data>/custody/checkpoints/<size>`` and ``custody/checkpoint`` (the latest), and recorded
in the control log (``CheckpointSigned``), so the audit feed carries it to witnesses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from ..events import CheckpointSigned, MessagesCommitted, decode_control_event, now
from ..log import DataDir, RecordKind, iter_log
from ..merkle import MerkleTree, leaf_hash, record_leaf
from ..tlog import Checkpoint, NoteSigner, Verifier, open_note
from .archive import CONTROL_LOG_ID, Archive

__all__ = [
    "CheckpointSigner",
    "InclusionProof",
    "ProofError",
    "consistency_proof",
    "control_origin",
    "control_tree",
    "inclusion_proof",
    "load_signer",
]

logger = logging.getLogger("gateway")


def control_origin(hostname: str) -> str:
    """The control log's checkpoint origin, also its key's name: unique to this gateway's
    host name, with nothing a key name may not hold."""
    name = "".join(c for c in hostname if not c.isspace() and c != "+") or "gateway"
    return f"{name}/gateway/control"


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

    @classmethod
    async def open(cls, archive: Archive, origin: str) -> CheckpointSigner:
        signer, made = await trio.to_thread.run_sync(load_signer, archive, origin)
        logger.info(
            "event=checkpoint-key vkey=%s created=%s", signer.vkey(), "true" if made else "false"
        )
        self = cls(archive, signer)
        latest = await trio.to_thread.run_sync(archive.data.read_checkpoint)
        if latest is not None:
            try:
                body = open_note(latest, Verifier.parse(signer.vkey()))
                self.signed_size = Checkpoint.parse(body).size
            except ValueError as exc:  # NoteError: not ours, or damaged; the next one replaces it
                logger.warning("event=checkpoint-unreadable reason=%r", str(exc))
        return self

    async def sign(self) -> bytes | None:
        """Sign the tree's head if it moved since the last checkpoint; the note, or None."""
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

    async def run(self, interval: float) -> None:
        """Sign every ``interval`` seconds (0: never here; the clean stop signs)."""
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            await self.sign()


class ProofError(Exception):
    """No proof can be made; the message says why."""


def control_tree(
    data: DataDir, size: int, message_id: str | None = None
) -> tuple[MerkleTree, tuple[int, bytes, str] | None]:
    """The tree of the control log's first ``size`` records, read from its files
    (blocking; 64 bytes a record), and the witness record of ``message_id`` among them
    (seq, leaf, mailbox)."""
    tree, found = MerkleTree(), None
    for record in iter_log(data.control_dir, CONTROL_LOG_ID, tail_ok=True):
        if record.seq >= size:
            break
        leaf = record_leaf(record.seq, record.kind, record.body)
        tree.append(leaf_hash(leaf))
        if found is None and message_id is not None and record.kind == RecordKind.EVENT:
            event = decode_control_event(record.body)
            if isinstance(event, MessagesCommitted):
                for commit in event.commits:
                    if commit.message_id == message_id:
                        found = (record.seq, leaf, commit.mailbox_id)
    if len(tree) < size:
        raise ProofError(f"the control log holds {len(tree)} records, not {size}")
    return tree, found


def consistency_proof(data: DataDir, old: int, new: int, signed: int) -> list[bytes]:
    """The proof that the tree of ``new`` records extends that of ``old`` (blocking), for
    ``new`` at most ``signed`` (the latest signed checkpoint's size)."""
    if not 0 < old <= new <= signed:
        raise ProofError(f"no proof from {old} to {new} (the latest checkpoint: {signed})")
    tree, _found = control_tree(data, new)
    return tree.consistency_proof(old, new)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    index: int  # the witness record's seq
    leaf: bytes
    hashes: list[bytes]
    mailbox_id: str
    size: int  # the checkpoint's
    note: bytes  # the signed checkpoint the proof is against


def inclusion_proof(data: DataDir, verifier: Verifier, message_id: str) -> InclusionProof:
    """The proof of a message's witness record against the latest checkpoint (blocking),
    which must be signed by ``verifier``'s key and be the head of the log's records."""
    note = data.read_checkpoint()
    if note is None:
        raise ProofError("no checkpoint has been signed yet")
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    tree, found = control_tree(data, checkpoint.size, message_id)
    if found is None:
        raise ProofError(f"no witness of message {message_id} in the checkpoint's records")
    if tree.root() != checkpoint.root:
        raise ProofError("the control log's records do not lead to the checkpoint's head")
    seq, leaf, mailbox_id = found
    return InclusionProof(seq, leaf, tree.inclusion_proof(seq), mailbox_id, checkpoint.size, note)
