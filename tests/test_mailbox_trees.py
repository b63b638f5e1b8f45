"""Every mailbox log is a Merkle tree, kept in its tree file (SPEC.md 8.1): the journal signs
its head; a message's commit record is proved against it and the proof checks out with the
independent verifier, for every message of a 10,000-message log; compaction keeps the hashes
of the records it removes, so proofs signed before it keep verifying and later heads stay
consistent with earlier ones; a tree file lost after a compaction is reported, not rebuilt
into another history; a crash's leftovers are cut or caught up on open."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import trio

from gateway.events import Envelope, now
from gateway.log import TREE_FILE, RecordKind, iter_log, read_tree
from gateway.merkle import MerkleTree, leaf_hash, tree_nodes, verify_consistency, verify_inclusion
from gateway.services.archive import Archive, StoreConfig
from gateway.services.tree_heads import (
    CheckpointSigner,
    InclusionProof,
    consistency_proof,
    control_origin,
    inclusion_proof,
)
from gateway.tlog import Checkpoint, Verifier, open_note
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF
from .test_tree_heads import VERIFIER, run

CONFIG = StoreConfig(kdf=FAST_KDF, segment_bytes=16 * 1024, compaction_grace=0.0)


async def store(archive: Archive, box: str, count: int, size: int = 2000) -> list[str]:
    ids: list[str] = []

    async def one(n: int) -> None:
        writer = archive.begin_message([box])
        await writer.write(b"Subject: %d\r\n\r\n" % n + os.urandom(size))
        ids.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[box])

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(one, n)
    return ids


async def prove(
    archive: Archive, signer: CheckpointSigner, box: str, message: str
) -> InclusionProof:
    seq, body = await archive.commit_record(box, message)
    verifier = Verifier.parse(signer.signer.vkey())
    return await trio.to_thread.run_sync(inclusion_proof, archive.data, verifier, box, seq, body)


def checks(proof: InclusionProof, vkey: str) -> bool:
    checkpoint = Checkpoint.parse(open_note(proof.note, Verifier.parse(vkey)))
    return checkpoint.size == proof.size and verify_inclusion(
        leaf_hash(proof.leaf), proof.index, proof.size, proof.hashes, checkpoint.root
    )


def proof_line(proof: InclusionProof) -> str:
    return json.dumps(
        {
            "index": proof.index,
            "leaf": base64.b64encode(proof.leaf).decode(),
            "hashes": [base64.b64encode(h).decode() for h in proof.hashes],
        }
    )


@pytest.mark.slow
async def test_every_message_of_a_10000_message_log_is_proved_independently(
    tmp_path: Path,
) -> None:
    archive = await Archive.open(tmp_path / "data", StoreConfig(kdf=FAST_KDF))
    try:
        box = (await archive.create_mailbox("ten thousand"))[0].mailbox_id
        for _ in range(10):
            await store(archive, box, 1000, size=100)
        signer = await CheckpointSigner.open(archive, control_origin("gateway.example"))
        await signer.sign()
        proofs = [await prove(archive, signer, box, m.message_id) for m in archive.messages(box)]
    finally:
        await archive.aclose()
    assert len(proofs) == 10_000 and len({p.note for p in proofs}) == 1
    (tmp_path / "checkpoint").write_bytes(proofs[0].note)
    (tmp_path / "proofs.jsonl").write_text("".join(proof_line(p) + "\n" for p in proofs))
    vkey = signer.signer.vkey()
    args = ("--vkey", vkey, "--checkpoint", tmp_path / "checkpoint", tmp_path / "proofs.jsonl")
    done = run(VERIFIER, "inclusion", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK 10000 inclusion proof(s)"
    checkpoint = Checkpoint.parse(open_note(proofs[0].note, Verifier.parse(vkey)))
    assert checkpoint.origin == f"gateway.example/gateway/mailbox/{box}"


async def test_compaction_keeps_the_tree_and_every_earlier_proof(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    try:
        box = (await archive.create_mailbox("compacted"))[0].mailbox_id
        ids = await store(archive, box, 30)
        signer = await CheckpointSigner.open(archive, control_origin("gateway.example"))
        await signer.sign()
        vkey = signer.signer.vkey()
        kept = sorted(ids)[-1]
        before = await prove(archive, signer, box, kept)
        assert checks(before, vkey)
        old_size = before.size

        gone = [m for m in ids if m != kept][:20]
        await archive.expunge(box, gone)
        assert await archive.compact(box, min_gain=0.01) > 0
        await archive.remove_retired(box)
        await store(archive, box, 5)
        await signer.sign()
        after = await prove(archive, signer, box, kept)
    finally:
        await archive.aclose()
    assert after.size > old_size and checks(after, vkey)
    # The proof made before the compaction is the one the file gives for that size still.
    tree = read_tree(data / "mailboxes" / box / "log")
    assert tree.inclusion_proof(before.index, old_size) == before.hashes
    old_root = Checkpoint.parse(open_note(before.note, Verifier.parse(vkey))).root
    new_root = Checkpoint.parse(open_note(after.note, Verifier.parse(vkey))).root
    hashes = consistency_proof(archive.data, old_size, after.size, after.size, box)
    assert verify_consistency(old_size, after.size, old_root, new_root, hashes)
    report = verify_data_dir(data)
    assert report.ok, [str(p) for p in report.problems]

    # The tree file lost: the removed records' hashes cannot come back; the next open
    # leaves the log without a tree, and verify reports the heads it signed as unbacked.
    (data / "mailboxes" / box / "log" / TREE_FILE).unlink()
    archive = await Archive.open(data, CONFIG)
    try:
        assert await archive.mailbox_tree_heads() == []
    finally:
        await archive.aclose()
    report = verify_data_dir(data)
    assert any("the tree file holds 0" in p.reason for p in report.problems), report.problems


async def test_a_tree_file_a_crash_left_behind_or_ahead_is_made_right_on_open(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    try:
        box = (await archive.create_mailbox("crashed"))[0].mailbox_id
        await store(archive, box, 6)
        ((_, size, root),) = await archive.mailbox_tree_heads()
    finally:
        await archive.aclose()
    path = data / "mailboxes" / box / "log" / TREE_FILE
    whole = path.read_bytes()
    assert len(whole) == tree_nodes(size) * 32
    for damaged in (whole[: tree_nodes(2) * 32 + 5], whole + os.urandom(32 * 3 + 7)):
        path.write_bytes(damaged)  # behind (a torn append), or ahead of the log
        archive = await Archive.open(data, CONFIG)
        try:
            await archive.all_opened()
            assert await archive.mailbox_tree_heads() == [(box, size, root)]
        finally:
            await archive.aclose()
        assert path.read_bytes() == whole
        assert verify_data_dir(data).ok


async def test_a_rewritten_mailbox_tree_fails_verify_against_its_signed_head(
    tmp_path: Path,
) -> None:
    """Whoever rewrites the leaf of a record compaction removed, and every hash above it (a
    consistent tree of another history), still fails: the checkpoint the control log
    recorded signed the old head."""
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    try:
        box = (await archive.create_mailbox("rewritten"))[0].mailbox_id
        ids = await store(archive, box, 20)
        signer = await CheckpointSigner.open(archive, control_origin("gateway.example"))
        await signer.sign()
        await archive.expunge(box, ids[:15])
        assert await archive.compact(box, min_gain=0.01) > 0
        await archive.remove_retired(box)
    finally:
        await archive.aclose()
    assert verify_data_dir(data).ok
    log_dir = data / "mailboxes" / box / "log"
    present = {r.seq for r in iter_log(log_dir, bytes.fromhex(box)) if r.kind != RecordKind.GAP}
    removed = next(seq for seq in range(len(read_tree(log_dir))) if seq not in present)
    tree = read_tree(log_dir)
    forged = MerkleTree()
    for seq in range(len(tree)):
        forged.append(leaf_hash(b"another history") if seq == removed else tree.leaf(seq))
    (log_dir / TREE_FILE).write_bytes(forged.hashes)
    report = verify_data_dir(data)
    assert [p.reason for p in report.problems if "rewritten history" in p.reason], report.problems
